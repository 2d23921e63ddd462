-- Take the tasks of dead members (last heartbeat too old) and queue them
-- again. One that may have started (its start recorded: 'st') is queued
-- doomed: whoever claims one ends it EXHAUSTED without running it. One that
-- never started goes back in line at its due time and runs elsewhere.
-- ARGV: P me dead_after_us batch ttl, and the gate's three (gate.lua)
-- Returns {tasks requeued, members gone from the group, of the tasks
-- requeued those that never started, run_id ('' if known: gate.lua)}.
local P, me = ARGV[1], ARGV[2]
local now = now_us()
-- Redis is another server process (gate.lua): its registry may be old, and
-- a member reaped now would not be waited for; its ghosts would be queued.
local run, at, open = incarnation(now)
if not gate_open(now, at, open) then return {0, {}, 0, run_reply(run)} end
local dead = redis.call('ZRANGEBYSCORE', P .. 'm', '-inf', num(now - tonumber(ARGV[3])),
                        'LIMIT', 0, 16)
local batch = tonumber(ARGV[4])
local reaped = 0
local unstarted = 0
local gone = {}
for _, m in ipairs(dead) do
  if m ~= me and batch > 0 then
    local by = P .. 'by:' .. m
    local ids = redis.call('SPOP', by, batch)
    for _, id in ipairs(ids) do
      local key = P .. 't:' .. id
      local f = redis.call('HMGET', key, 'tok', 'own', 'ex', 'st', 'doom', 'due')
      if f[1] and f[2] == m then
        if f[4] == '1' or f[5] == '1' then
          -- Its start was recorded (step.lua): it may have run, so at most once.
          redis.call('HSET', key, 'own', '', 'doom', '1')
          redis.call('ZADD', P .. 'q:' .. f[3], 0, id)
        else
          -- It never started: back in line at its due time, to run elsewhere.
          redis.call('HSET', key, 'own', '')
          redis.call('ZADD', P .. 'q:' .. f[3], f[6] or '0', id)
          unstarted = unstarted + 1
        end
        redis.call('RPUSH', P .. 'ctl:' .. m, f[1] .. ' ' .. id)
        reaped = reaped + 1
      end
    end
    batch = batch - #ids
    if redis.call('SCARD', by) == 0 then
      redis.call('ZREM', P .. 'm', m)
      redis.call('EXPIRE', P .. 'ctl:' .. m, tonumber(ARGV[5]))
      redis.call('EXPIRE', P .. 'ep:' .. m, tonumber(ARGV[5]))
      gone[#gone + 1] = m
    end
  end
end
if reaped > 0 then redis.call('PUBLISH', P .. 'wake', '') end
return {reaped, gone, unstarted, run_reply(run)}
