-- A member's heartbeat; also reads the group's nonce, created when missing,
-- and checks the member's epoch on the server's incarnation (gate.lua).
-- ARGV: P me fresh_nonce least, and the gate's three (gate.lua) (least: what
-- this member's epoch must be at least; behind it, Redis lost writes: epoch.py)
-- Returns {now, nonce, was_member, epoch, run_id ('' if known_run)}:
-- was_member 0 means the group had presumed `me` dead (or never knew it).
local P, me = ARGV[1], ARGV[2]
local now = now_us()
local run, at, open = incarnation(now)
if epoch < tonumber(ARGV[4]) then
  -- Rolled back: `me` confirms once it has reconciled (its next heartbeat),
  -- and a gate that opened without it waits for that (up to dead_us).
  redis.call('HDEL', KEYS[2], 'ok:' .. me)
  if open == '1' and now - at < G_DEAD then
    redis.call('HSET', KEYS[2], 'open', '0')
  end
elseif now - at < G_DEAD then
  redis.call('HSET', KEYS[2], 'ok:' .. me, '1')
end
local was = redis.call('ZSCORE', KEYS[3], me)
redis.call('ZADD', KEYS[3], num(now), me)
-- Back after being presumed dead: keep the revocation list and the epoch
-- (KEYS[1]) that the reaper set to expire (an epoch key gone would look
-- like a rollback).
if not was then
  redis.call('PERSIST', P .. 'ctl:' .. me)
  redis.call('PERSIST', KEYS[1])
end
local nonce = redis.call('HGET', P .. 'meta', 'nonce')
if not nonce then
  nonce = ARGV[3]
  redis.call('HSET', P .. 'meta', 'nonce', nonce)
end
local w = 0
if was then w = 1 end
return {num(now), nonce, w, epoch, run_reply(run)}
