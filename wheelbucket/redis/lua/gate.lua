-- The incarnation gate (gate.py; docs/shared.md, Failures), put in front of
-- claim.lua, heartbeat.lua and reap.lua. After Redis became another server
-- process (a restart, from a snapshot or not, or a promoted replica: a new
-- run_id), no member claims or reaps until every member in the registry has
-- checked its epoch on it (its heartbeat, after reconciling) and `hold_us`
-- has passed, or until `dead_us` has passed since a script first saw it.
-- The last three ARGV of those scripts: the run_id the caller knows, its
-- dead_after and its hold, in µs (gate.py).
-- KEYS[2] wb:{G}:run HASH: id (the run_id the group last ran on), at (when a
-- script first saw it: µs of the server's clock), open ('0': not every
-- member confirmed, '1': every member did or dead_us passed, 'new': open
-- from the start) and ok:<member> (that member checked its epoch on id).
-- KEYS[3]: wb:{G}:m.
local G_KNOWN = ARGV[#ARGV - 2]
local G_DEAD, G_HOLD = tonumber(ARGV[#ARGV - 1]), tonumber(ARGV[#ARGV])
local function run_id()
  local info = redis.pcall('INFO', 'server')
  -- Refused (an ACL without INFO): '?', a server that never changes: no gate.
  if type(info) ~= 'string' then return '?' end
  return string.match(info, 'run_id:(%w+)') or '?'
end
-- {run_id, when first seen, open}: recorded anew when the server is another.
local function incarnation(now)
  local run = run_id()
  local f = redis.call('HMGET', KEYS[2], 'id', 'at', 'open')
  if f[1] == run then return run, tonumber(f[2]), f[3] end
  redis.call('DEL', KEYS[2])
  -- No record at all: a new group, or Redis lost everything (a member's first
  -- heartbeat writes the record, before it can fill): no ghosts can come back.
  local open = '0'
  if not f[1] then open = 'new' end
  redis.call('HSET', KEYS[2], 'id', run, 'at', num(now), 'open', open)
  return run, now, open
end
-- May this member claim or reap? Records when every member has confirmed.
-- The hold is the caller's own (2 of its heartbeats): checked on every call,
-- so that a member with a shorter one cannot open the gate for it.
local function gate_open(now, at, open)
  if open == 'new' then return true end
  local age = now - at
  if age >= G_DEAD then
    if open ~= '1' then redis.call('HSET', KEYS[2], 'open', '1') end
    return true
  end
  if age < G_HOLD then return false end
  if open == '1' then return true end
  for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    if redis.call('HEXISTS', KEYS[2], 'ok:' .. m) == 0 then return false end
  end
  redis.call('HSET', KEYS[2], 'open', '1')
  return true
end
-- The reply's last element: the server's run_id, '' if the caller knows it.
local function run_reply(run)
  if run == G_KNOWN then return '' end
  return run
end
