-- Record again a task `me` holds, after Redis lost the group.
-- ARGV: P me id tok typ due dl ex data ra ls ('' when unknown)
-- Returns 1 when the record is (now) ours, 0 when another task took the id.
local P, me, id = ARGV[1], ARGV[2], ARGV[3]
local key = KEYS[2]
local cur = redis.call('HGET', key, 'tok')
if cur then
  if cur == ARGV[4] then return 1 end
  return 0
end
redis.call('HSET', key, 'tok', ARGV[4], 'own', me, 'typ', ARGV[5], 'due', ARGV[6],
           'dl', ARGV[7], 'ex', ARGV[8], 'd', ARGV[9], 'ra', ARGV[10], 'ls', ARGV[11])
redis.call('SADD', P .. 'ids', id)
redis.call('SADD', P .. 'by:' .. me, id)
return 1
