-- A member leaves the group, if it holds no task any more.
-- ARGV: P me
-- Returns 1 when it left, 0 when it still holds tasks.
local P, me = ARGV[1], ARGV[2]
if redis.call('SCARD', P .. 'by:' .. me) == 0 then
  redis.call('ZREM', P .. 'm', me)
  redis.call('DEL', P .. 'ctl:' .. me, P .. 'by:' .. me, KEYS[1])
  return 1
end
return 0
