-- Record many new tasks of the group in one atomic step: fill.lua for each,
-- in order (a later task with the id of an earlier one finds it live).
-- KEYS: (the epoch) then t:<id> of each task, in order
-- ARGV: P me limit, then one per task, packed (fewer arguments cost the
-- client much less to send): "<#id> <#tok> <here 1/0> <typ> <delay_us>
-- <span_us> <#ex> " then id, tok, ex and the data, back to back (#: length in
-- bytes).
-- Returns, flat, 4 per task as fill.lua: status tok due dl. The group is
-- woken once, if any queued task became the head of its queue.
local P, me, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ids = P .. 'ids'
local live = 0
if limit > 0 then live = redis.call('SCARD', ids) end
local now = now_us()
local out = {}
-- Added together at the end: the new ids, those held here, and per
-- executor name its queue's new (due, id) pairs.
local added, held, queued = {}, {}, {}
local new, names = {}, {}
local wake = false
for i = 1, #ARGV - 3 do
  local s = ARGV[i + 3]
  local li, lt, here, typ, delay, span, le, p =
    string.match(s, '^(%d+) (%d+) ([01]) (%a) (%d+) (%d+) (%d+) ()')
  li, lt, le = tonumber(li), tonumber(lt), tonumber(le)
  local id = string.sub(s, p, p + li - 1)
  local tok = string.sub(s, p + li, p + li + lt - 1)
  local ex = string.sub(s, p + li + lt, p + li + lt + le - 1)
  local key = KEYS[i + 1]
  local cur = redis.call('HMGET', key, 'tok', 'due', 'dl')
  local k = #out
  if cur[1] then
    out[k + 1], out[k + 2], out[k + 3], out[k + 4] = 0, cur[1], cur[2] or '0', cur[3] or '0'
  elseif limit > 0 and live >= limit then
    out[k + 1], out[k + 2], out[k + 3], out[k + 4] = -1, '', '0', '0'
  else
    local due = num(now + tonumber(delay))
    local dl = num(now + tonumber(span))
    local own = ''
    if here == '1' then own = me end
    -- ra and ls keep the durations it was filled with: reset's defaults.
    redis.call('HSET', key, 'tok', tok, 'own', own, 'typ', typ, 'due', due, 'dl', dl,
               'ex', ex, 'd', string.sub(s, p + li + lt + le), 'ra', delay, 'ls', span)
    added[#added + 1], new[id], names[ex] = id, true, true
    if own == '' then
      local z = queued[ex]
      if not z then
        z = {}
        queued[ex] = z
      end
      z[#z + 1], z[#z + 2] = due, id
    else
      held[#held + 1] = id
    end
    live = live + 1
    out[k + 1], out[k + 2], out[k + 3], out[k + 4] = 1, tok, due, dl
  end
end
if #added > 0 then redis.call('SADD', ids, unpack(added)) end
if #held > 0 then redis.call('SADD', P .. 'by:' .. me, unpack(held)) end
for ex in pairs(names) do redis.call('SADD', P .. 'exs', ex) end
for ex, z in pairs(queued) do
  local q = P .. 'q:' .. ex
  redis.call('ZADD', q, unpack(z))
  -- A new task at the head of its queue is news for the members.
  if not wake and new[redis.call('ZRANGE', q, 0, 0)[1]] then wake = true end
end
if wake then redis.call('PUBLISH', P .. 'wake', '') end
return out
