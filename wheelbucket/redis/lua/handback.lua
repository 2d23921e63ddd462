-- A closing member hands the tasks it holds and never started back to the
-- group's queue, where another member claims them (their life span still
-- counts from their fill).
-- KEYS: the epoch key, then the record of each task.
-- ARGV: P me, then id tok delay_us span_us for each task: a task reset on
-- `me` gets its due time now + delay_us and its deadline now + span_us
-- (-1: keep the record's, as for a task never reset there).
-- Returns one status per task: 1 handed back; 0 it may have started here
-- (release it instead); -1 `me` does not hold it (any more).
local P, me = ARGV[1], ARGV[2]
local by = P .. 'by:' .. me
local now = now_us()
local out = {}
local moved = 0
for i = 2, #KEYS do
  local a = 4 * i - 5
  local id, tok = ARGV[a], ARGV[a + 1]
  local delay, span = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local f = redis.call('HMGET', KEYS[i], 'tok', 'own', 'ex', 'due', 'doom', 'st')
  if f[1] ~= tok or f[2] ~= me then
    out[i - 1] = -1
  elseif f[6] == '1' then
    out[i - 1] = 0
  else
    local score = f[4]
    if delay >= 0 then
      score = num(now + delay)
      redis.call('HSET', KEYS[i], 'due', score)
    end
    if span >= 0 then redis.call('HSET', KEYS[i], 'dl', num(now + span)) end
    redis.call('HSET', KEYS[i], 'own', '')
    redis.call('SREM', by, id)
    if f[5] == '1' then score = '0' end
    redis.call('ZADD', P .. 'q:' .. f[3], score, id)
    out[i - 1] = 1
    moved = moved + 1
  end
end
if moved > 0 then redis.call('PUBLISH', P .. 'wake', '') end
return out
