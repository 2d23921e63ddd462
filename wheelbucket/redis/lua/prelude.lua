-- Helpers put in front of the scripts that read the server's clock.
-- Times are whole microseconds of the Redis server's clock (TIME); num()
-- formats one without an exponent, as Lua numbers are doubles.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function num(x) return string.format('%.0f', x) end
-- KEYS[1] of every script is the calling member's epoch wb:{G}:ep:<member>
-- (KEYS[2], where there is one, the task's record): the count of its script
-- calls. A member that finds it behind the calls it saw answered knows Redis
-- lost writes it relied on (a rollback: docs/shared.md, Failures).
local epoch = redis.call('INCR', KEYS[1])
