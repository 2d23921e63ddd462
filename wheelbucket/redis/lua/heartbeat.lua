-- A member's heartbeat; also reads the group's nonce, created when missing.
-- ARGV: P me fresh_nonce
-- Returns {now, nonce, was_member}: was_member 0 means the group had
-- presumed `me` dead (or never knew it).
local P, me = ARGV[1], ARGV[2]
local now = now_us()
local was = redis.call('ZSCORE', P .. 'm', me)
redis.call('ZADD', P .. 'm', num(now), me)
-- Back after being presumed dead: keep the revocation list the reaper set to expire.
if not was then redis.call('PERSIST', P .. 'ctl:' .. me) end
local nonce = redis.call('HGET', P .. 'meta', 'nonce')
if not nonce then
  nonce = ARGV[3]
  redis.call('HSET', P .. 'meta', 'nonce', nonce)
end
local w = 0
if was then w = 1 end
return {num(now), nonce, w, epoch}
