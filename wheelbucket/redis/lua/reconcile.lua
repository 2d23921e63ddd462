-- After a rollback (Redis lost writes `me` had seen answered): put the group
-- back in line with what `me` knows, entry by entry.
-- ARGV: P me, then triples: mode id tok. Modes:
--   e  the task ended here (or was taken from here): a record with its token
--      is a ghost brought back by the rollback; delete it. If another member
--      claimed it since, that member is told, as by a drain.
--   h  `me` holds the task: its record must say so. Take it back from the
--      queue, or from a member that claimed it since (who is told).
--   x  a record `me` holds in Redis but neither holds nor remembers: it may
--      have ended here before what `me` remembers; delete it.
-- Returns one code per entry. e: 0 nothing, 1 deleted, 2 deleted and taken
-- from another member (it may run there too). h: 0 in order, 1 taken back
-- from the queue, 2 taken back from another member (it may run there too),
-- 3 no record (record it again), 4 another task has the id. x: 0 / 1.
local P, me = ARGV[1], ARGV[2]
local out = {}
local function unlink(key, id, f)
  if f[2] == '' then
    redis.call('ZREM', P .. 'q:' .. f[3], id)
  else
    redis.call('SREM', P .. 'by:' .. f[2], id)
    if f[2] ~= me then
      redis.call('RPUSH', P .. 'ctl:' .. f[2], f[1] .. ' ' .. id)
      redis.call('PUBLISH', P .. 'wake:' .. f[2], '')
      return 2
    end
  end
  return 1
end
for i = 3, #ARGV, 3 do
  local mode, id, tok = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = P .. 't:' .. id
  local f = redis.call('HMGET', key, 'tok', 'own', 'ex')
  local code = 0
  if mode == 'e' then
    if f[1] == tok then
      code = unlink(key, id, f)
      redis.call('DEL', key)
      redis.call('SREM', P .. 'ids', id)
    end
  elseif mode == 'h' then
    if not f[1] then
      code = 3
    elseif f[1] ~= tok then
      code = 4
    elseif f[2] ~= me then
      code = unlink(key, id, f)
      redis.call('HSET', key, 'own', me)
      redis.call('SADD', P .. 'by:' .. me, id)
    end
  elseif f[1] and f[2] == me then
    redis.call('DEL', key)
    redis.call('SREM', P .. 'ids', id)
    redis.call('SREM', P .. 'by:' .. me, id)
    code = 1
  end
  out[#out + 1] = code
end
return out
