-- A task held by `me` ended there: take it out of the group.
-- ARGV: P me id tok ending ledger_maxlen (ending '' writes no ledger entry)
-- Returns 1: released (run the hook); 0: taken away from `me` (no hook);
-- -1: unknown to Redis.
local P, me, id, tok = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = P .. 't:' .. id
local f = redis.call('HMGET', key, 'tok', 'own')
if f[1] == tok then
  if f[2] ~= me then return 0 end
  redis.call('DEL', key)
  redis.call('SREM', P .. 'ids', id)
  redis.call('SREM', P .. 'by:' .. me, id)
  local maxlen = tonumber(ARGV[6])
  if maxlen > 0 and ARGV[5] ~= '' then
    redis.call('XADD', P .. 'ledger', 'MAXLEN', '~', maxlen, '*',
               'id', id, 'end', ARGV[5], 'by', me)
  end
  return 1
end
if redis.call('LREM', P .. 'ctl:' .. me, 1, tok .. ' ' .. id) > 0 then return 0 end
return -1
