-- Drain a task wherever it is: queued, or held by a member (who is told
-- through its revocation list).
-- ARGV: P me id ledger_maxlen force
-- Returns {0, ''}: unknown; {2, me}: held by the caller, who drains it
-- locally (unless `force` is '1'); {1, owner}: drained (owner '' when it
-- was queued).
local P, me, id = ARGV[1], ARGV[2], ARGV[3]
local key = KEYS[2]
local f = redis.call('HMGET', key, 'tok', 'own', 'ex')
if not f[1] then return {0, ''} end
local own = f[2]
if own == me and ARGV[5] ~= '1' then return {2, own} end
redis.call('DEL', key)
redis.call('SREM', P .. 'ids', id)
if own == '' then
  redis.call('ZREM', P .. 'q:' .. f[3], id)
else
  redis.call('SREM', P .. 'by:' .. own, id)
  if own ~= me then
    redis.call('RPUSH', P .. 'ctl:' .. own, f[1] .. ' ' .. id)
    redis.call('PUBLISH', P .. 'wake:' .. own, '')
  end
end
local maxlen = tonumber(ARGV[4])
if maxlen > 0 then
  redis.call('XADD', P .. 'ledger', 'MAXLEN', '~', maxlen, '*',
             'id', id, 'end', 'drained', 'by', me)
end
return {1, own}
