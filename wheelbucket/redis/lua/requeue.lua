-- Hand a task `me` holds back to the group's queue (it did not fit here, or
-- its fill broke before it reached the local bucket).
-- ARGV: P me id tok ('' = whatever token)
-- Returns 1 when requeued, 0 when `me` does not hold it.
local P, me, id = ARGV[1], ARGV[2], ARGV[3]
local key = KEYS[2]
local f = redis.call('HMGET', key, 'tok', 'own', 'ex', 'due', 'doom')
if not f[1] or f[2] ~= me or (ARGV[4] ~= '' and f[1] ~= ARGV[4]) then return 0 end
redis.call('HSET', key, 'own', '')
redis.call('SREM', P .. 'by:' .. me, id)
local score = f[4]
if f[5] == '1' then score = '0' end
redis.call('ZADD', P .. 'q:' .. f[3], score, id)
redis.call('PUBLISH', P .. 'wake', '')
return 1
