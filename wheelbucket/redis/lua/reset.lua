-- Move the timers of a task waiting in the group's queue (SPEC, reset). A
-- held task is only reported: its timers live in its holder's memory.
-- ARGV: P me id delay_us span_us (-1: the duration it was filled with)
-- Returns {status, owner, delay, span, due, dl}. Status 1: moved (due and dl
-- are the new times); 0: unknown; 2: held by `me`; 3: held by `owner`;
-- 4: doomed (taken from a dead member); 5: its life span is over (it ends
-- EXHAUSTED where it is claimed); 6: run_after for an IMMEDIATE task; 7: a
-- life span not longer than the run-after (delay and span are the values
-- used). Only status 1 changes anything.
local P, me, id = ARGV[1], ARGV[2], ARGV[3]
local key = KEYS[2]
local f = redis.call('HMGET', key, 'tok', 'own', 'typ', 'due', 'dl', 'ex', 'doom', 'ra', 'ls')
if not f[1] then return {0, '', '0', '0', '0', '0'} end
local own = f[2]
if own == me then return {2, own, '0', '0', '0', '0'} end
if own ~= '' then return {3, own, '0', '0', '0', '0'} end
if f[7] == '1' then return {4, '', '0', '0', '0', '0'} end
local now = now_us()
local due, dl = tonumber(f[4]), tonumber(f[5])
if dl <= now then return {5, '', '0', '0', f[4], f[5]} end
local delay, span = tonumber(ARGV[4]), tonumber(ARGV[5])
-- A record without ra/ls (written by an older version) keeps its current times.
if span < 0 then span = tonumber(f[9] or '') or (dl - now) end
if f[3] == 't' then
  if delay < 0 then delay = tonumber(f[8] or '') or math.max(0, due - now) end
  if span <= delay then return {7, '', num(delay), num(span), f[4], f[5]} end
  due = now + delay
  local q = P .. 'q:' .. f[6]
  redis.call('ZADD', q, num(due), id)
  -- Moved to the head of its queue: the members plan their next claim anew.
  if redis.call('ZRANK', q, id) == 0 then redis.call('PUBLISH', P .. 'wake', '') end
elseif delay >= 0 then
  return {6, '', num(delay), num(span), f[4], f[5]}
end
dl = now + span
redis.call('HSET', key, 'due', num(due), 'dl', num(dl))
return {1, '', num(math.max(delay, 0)), num(span), num(due), num(dl)}
