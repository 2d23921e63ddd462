-- One step of `me`'s workers: tasks that ended there leave the group, and
-- tasks about to start there are recorded as started (before on_execute).
-- KEYS: the epoch, then the record t:<id> of each task below, in order.
-- ARGV: P me ledger_maxlen R, then R releases "<#id> <#tok> <id><tok><ending>",
-- then the starts "<#id> <id><tok>" (#: length in bytes).
-- A release: ending '' writes no ledger entry; 'exhausted:<mark>' (mark
-- 'started': it had started on a member that died; 'queued': its life span
-- ran out in the queue) is counted in wb:{G}:counts and its ledger entry
-- gets the field <mark> = 1. Status 1: released (run the hook); 0: taken
-- away from `me` (no hook); -1: unknown to Redis.
-- A start: from then on a reaper treats the task as started (never run
-- again); a held task without this mark never started and goes back to the
-- queue. Status 1: recorded (start it); 0: taken from `me` (drained, or
-- reaped: do not start it); -1: no record and no revocation (Redis lost
-- it: start it; the pump records it again, started).
-- Returns the statuses, releases first.
local P, me = ARGV[1], ARGV[2]
local maxlen, nrel = tonumber(ARGV[3]), tonumber(ARGV[4])
local ctl = P .. 'ctl:' .. me
local out = {}
-- The released tasks, deleted together at the end.
local gone, gone_keys, released = {}, {}, {}
for i = 1, #ARGV - 4 do
  local s, key = ARGV[i + 4], KEYS[i + 1]
  local id, tok, rest
  if i <= nrel then
    local li, lt, p = string.match(s, '^(%d+) (%d+) ()')
    li, lt = tonumber(li), tonumber(lt)
    id, tok, rest = string.sub(s, p, p + li - 1), string.sub(s, p + li, p + li + lt - 1),
                    string.sub(s, p + li + lt)
  else
    local li, p = string.match(s, '^(%d+) ()')
    li = tonumber(li)
    id, tok = string.sub(s, p, p + li - 1), string.sub(s, p + li)
  end
  local f = redis.call('HMGET', key, 'tok', 'own')
  if released[key] then
    out[i] = -1  -- released earlier in this step (deleted below)
  elseif f[1] == tok then
    if f[2] ~= me then
      out[i] = 0
    elseif i > nrel then
      redis.call('HSET', key, 'st', '1')
      out[i] = 1
    else
      gone[#gone + 1], gone_keys[#gone_keys + 1], released[key] = id, key, true
      local ending, mark = string.match(rest, '^([^:]*):?(.*)$')
      if mark ~= '' then redis.call('HINCRBY', P .. 'counts', mark, 1) end
      if maxlen > 0 and ending ~= '' then
        if mark ~= '' then
          redis.call('XADD', P .. 'ledger', 'MAXLEN', '~', maxlen, '*',
                     'id', id, 'end', ending, 'by', me, mark, '1')
        else
          redis.call('XADD', P .. 'ledger', 'MAXLEN', '~', maxlen, '*',
                     'id', id, 'end', ending, 'by', me)
        end
      end
      out[i] = 1
    end
  elseif i <= nrel then
    if redis.call('LREM', ctl, 1, tok .. ' ' .. id) > 0 then out[i] = 0 else out[i] = -1 end
  elseif f[1] or redis.call('LPOS', ctl, tok .. ' ' .. id) then
    out[i] = 0
  else
    out[i] = -1
  end
end
if #gone > 0 then
  redis.call('DEL', unpack(gone_keys))
  redis.call('SREM', P .. 'ids', unpack(gone))
  redis.call('SREM', P .. 'by:' .. me, unpack(gone))
end
return out
