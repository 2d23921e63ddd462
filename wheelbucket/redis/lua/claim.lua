-- One round of a member's pump: take up to `n` due tasks of its executors,
-- and read the revocations (tasks taken away from it) waiting for it.
-- ARGV: P me n lookahead_us nctl least ex... and the gate's three (gate.lua)
-- (least: what this member's epoch must be at least; behind it, Redis lost
-- writes: epoch.py)
-- Returns {now, the earliest due time left in its queues (-1: none left),
-- the revocation entries "tok id", the tasks taken, flat, each as
-- id tok typ due dl ex data doom ra ls, behind, run_id ('' if known_run)}.
-- behind 1: nothing was taken until `me` heartbeats (and reconciles).
local P, me = ARGV[1], ARGV[2]
local n = tonumber(ARGV[3])
-- Rolled back: take nothing (ghosts of tasks that ended) before reconciling.
local behind = 0
if epoch < tonumber(ARGV[6]) then n, behind = 0, 1 end
local now = now_us()
-- Redis is another server process (gate.lua): take nothing before every
-- member has reconciled, which `me` does at its heartbeat.
local run, at, open = incarnation(now)
if not gate_open(now, at, open) then
  n = 0
  if redis.call('HEXISTS', KEYS[2], 'ok:' .. me) == 0 then behind = 1 end
end
local horizon = num(now + tonumber(ARGV[4]))
local ctl = redis.call('LRANGE', P .. 'ctl:' .. me, 0, tonumber(ARGV[5]) - 1)
local out = {}
local taken = {}
local nxt = -1
for i = 7, #ARGV - 3 do
  local ex = ARGV[i]
  local q = P .. 'q:' .. ex
  if n > 0 then
    local ids = redis.call('ZRANGEBYSCORE', q, '-inf', horizon, 'LIMIT', 0, n)
    -- They are the first #ids of the queue: all leave it (those not taken
    -- below are ghosts: ended, or held already).
    if #ids > 0 then redis.call('ZREMRANGEBYRANK', q, 0, #ids - 1) end
    for _, id in ipairs(ids) do
      local key = P .. 't:' .. id
      local f = redis.call('HMGET', key, 'tok', 'typ', 'due', 'dl', 'd', 'doom', 'own', 'ra', 'ls')
      if f[1] and f[7] == '' then
        redis.call('HSET', key, 'own', me)
        taken[#taken + 1] = id
        local k = #out
        out[k + 1] = id
        out[k + 2] = f[1]
        out[k + 3] = f[2]
        out[k + 4] = f[3]
        out[k + 5] = f[4]
        out[k + 6] = ex
        out[k + 7] = f[5] or ''
        out[k + 8] = f[6] or ''
        out[k + 9] = f[8] or ''
        out[k + 10] = f[9] or ''
        n = n - 1
      end
    end
  end
  local first = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
  if first[2] then
    local s = tonumber(first[2])
    if nxt < 0 or s < nxt then nxt = s end
  end
end
-- In parts: unpack() takes a few thousand values at most.
for i = 1, #taken, 1000 do
  redis.call('SADD', P .. 'by:' .. me, unpack(taken, i, math.min(i + 999, #taken)))
end
return {num(now), num(nxt), ctl, out, behind, run_reply(run)}
