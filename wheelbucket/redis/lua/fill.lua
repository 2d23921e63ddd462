-- Record a new task of the group: held by member `own`, or queued for any
-- member when `own` is empty.
-- ARGV: P id tok own typ delay_us span_us ex data limit
-- Returns {status, tok, due, dl}: 1 recorded; 0 the id is live (the fields
-- are the live task's, so a retried call can tell its own record); -1 the
-- group is at its limit.
local P, id, tok, own = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = KEYS[2]
local cur = redis.call('HMGET', key, 'tok', 'due', 'dl')
if cur[1] then return {0, cur[1], cur[2] or '0', cur[3] or '0'} end
local limit = tonumber(ARGV[10])
if limit > 0 and redis.call('SCARD', P .. 'ids') >= limit then return {-1, '', '0', '0'} end
local now = now_us()
local due = num(now + tonumber(ARGV[6]))
local dl = num(now + tonumber(ARGV[7]))
-- ra and ls keep the durations it was filled with: reset's defaults.
redis.call('HSET', key, 'tok', tok, 'own', own, 'typ', ARGV[5], 'due', due, 'dl', dl,
           'ex', ARGV[8], 'd', ARGV[9], 'ra', ARGV[6], 'ls', ARGV[7])
redis.call('SADD', P .. 'ids', id)
redis.call('SADD', P .. 'exs', ARGV[8])
if own == '' then
  local q = P .. 'q:' .. ARGV[8]
  redis.call('ZADD', q, due, id)
  -- Wake the group only for a new head: behind an older head, every member
  -- with room was woken already, and every full one waits for room.
  if redis.call('ZRANK', q, id) == 0 then redis.call('PUBLISH', P .. 'wake', '') end
else
  redis.call('SADD', P .. 'by:' .. own, id)
end
return {1, tok, due, dl}
