-- A task held by `me` ended there: take it out of the group.
-- ARGV: P me id tok ending ledger_maxlen (ending '' writes no ledger entry)
-- An ending 'exhausted:<mark>' (mark 'started': it had started on a member
-- that died; 'queued': its life span ran out in the queue) is counted in
-- wb:{G}:counts and its ledger entry gets the field <mark> = 1.
-- Returns 1: released (run the hook); 0: taken away from `me` (no hook);
-- -1: unknown to Redis.
local P, me, id, tok = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = KEYS[2]
local f = redis.call('HMGET', key, 'tok', 'own')
if f[1] == tok then
  if f[2] ~= me then return 0 end
  redis.call('DEL', key)
  redis.call('SREM', P .. 'ids', id)
  redis.call('SREM', P .. 'by:' .. me, id)
  local ending, mark = string.match(ARGV[5], '^([^:]*):?(.*)$')
  if mark ~= '' then redis.call('HINCRBY', P .. 'counts', mark, 1) end
  local maxlen = tonumber(ARGV[6])
  if maxlen > 0 and ending ~= '' then
    if mark ~= '' then
      redis.call('XADD', P .. 'ledger', 'MAXLEN', '~', maxlen, '*',
                 'id', id, 'end', ending, 'by', me, mark, '1')
    else
      redis.call('XADD', P .. 'ledger', 'MAXLEN', '~', maxlen, '*',
                 'id', id, 'end', ending, 'by', me)
    end
  end
  return 1
end
if redis.call('LREM', P .. 'ctl:' .. me, 1, tok .. ' ' .. id) > 0 then return 0 end
return -1
