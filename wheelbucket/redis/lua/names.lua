-- The executor names of the group's members: register this member's, or
-- read those of the live members.
-- ARGV: P me mode dead_after_us names
--   mode 'set': `names` (space-separated; '' is the default executor) are
--   what `me` runs. Returns 1.
--   mode 'get': returns the names strings of the members whose heartbeat is
--   younger than dead_after_us; entries of members that left the group are
--   deleted.
local P, me, mode = ARGV[1], ARGV[2], ARGV[3]
local h = P .. 'exn'
if mode == 'set' then
  redis.call('HSET', h, me, ARGV[5])
  return 1
end
local oldest = now_us() - tonumber(ARGV[4])
local all = redis.call('HGETALL', h)
local out = {}
for i = 1, #all, 2 do
  local beat = redis.call('ZSCORE', P .. 'm', all[i])
  if not beat then
    redis.call('HDEL', h, all[i])
  elseif tonumber(beat) >= oldest then
    out[#out + 1] = all[i + 1]
  end
end
return out
