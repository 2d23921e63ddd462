-- Tasks held by `me` are about to start: record it, before their on_execute
-- runs. From then on a reaper treats them as started (never run again); a
-- held task without this mark never started and goes back to the queue.
-- KEYS: the epoch key, then the record of each task.
-- ARGV: P me, then id tok for each task.
-- Returns one status per task: 1 recorded (start it); 0 taken from `me`
-- (drained, or reaped: do not start it); -1 no record and no revocation
-- (Redis lost it: start it; the pump records it again, started).
local P, me = ARGV[1], ARGV[2]
local ctl = P .. 'ctl:' .. me
local out = {}
for i = 2, #KEYS do
  local id, tok = ARGV[2 * i - 1], ARGV[2 * i]
  local f = redis.call('HMGET', KEYS[i], 'tok', 'own')
  if f[1] == tok then
    if f[2] == me then
      redis.call('HSET', KEYS[i], 'st', '1')
      out[i - 1] = 1
    else
      out[i - 1] = 0
    end
  elseif f[1] or redis.call('LPOS', ctl, tok .. ' ' .. id) then
    out[i - 1] = 0
  else
    out[i - 1] = -1
  end
end
return out
