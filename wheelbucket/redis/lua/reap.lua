-- Take the tasks of dead members (last heartbeat too old) and queue them
-- doomed: whoever claims one ends it EXHAUSTED without running it.
-- ARGV: P me dead_after_us batch ttl
-- Returns {tasks requeued as doomed, members gone from the group}.
local P, me = ARGV[1], ARGV[2]
local now = now_us()
local dead = redis.call('ZRANGEBYSCORE', P .. 'm', '-inf', num(now - tonumber(ARGV[3])),
                        'LIMIT', 0, 16)
local batch = tonumber(ARGV[4])
local reaped = 0
local gone = {}
for _, m in ipairs(dead) do
  if m ~= me and batch > 0 then
    local by = P .. 'by:' .. m
    local ids = redis.call('SPOP', by, batch)
    for _, id in ipairs(ids) do
      local key = P .. 't:' .. id
      local f = redis.call('HMGET', key, 'tok', 'own', 'ex')
      if f[1] and f[2] == m then
        redis.call('HSET', key, 'own', '', 'doom', '1')
        redis.call('ZADD', P .. 'q:' .. f[3], 0, id)
        redis.call('RPUSH', P .. 'ctl:' .. m, f[1] .. ' ' .. id)
        reaped = reaped + 1
      end
    end
    batch = batch - #ids
    if redis.call('SCARD', by) == 0 then
      redis.call('ZREM', P .. 'm', m)
      redis.call('EXPIRE', P .. 'ctl:' .. m, tonumber(ARGV[5]))
      gone[#gone + 1] = m
    end
  end
end
if reaped > 0 then redis.call('PUBLISH', P .. 'wake', '') end
return {reaped, gone}
