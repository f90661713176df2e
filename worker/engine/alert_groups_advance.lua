-- KEYS[1] a group's hash. ARGV: [1] the state its webhook says (its firing alerts, or its
-- resolution), [2] the prefix of the ids its notifications take, [3] 1 for a firing,
-- [4] the team the firing would open its incident for ("" for none), [5] the firing's
-- priority rank, [6] seconds to keep the hash, [7] the latest start of a firing's
-- alerts, or the latest end of a resolution's (epoch seconds; '' when not known).
-- A state other than the last moves the group on: a new id, never used before for the
-- group (a counter), so a return to an earlier set of alerts is news again. The same state
-- again (a repeat, the other Alertmanager of an HA pair) gets the same id, which intake
-- takes for a copy. A firing after a resolution opens a new incident: the last one's team,
-- priority and destinations are forgotten. A firing fixes its incident's team when the
-- incident opens, and raises its priority, never lowers it, while it is open.
-- Returns the hash (and 'stale' for a late copy of an earlier resolution).
local key = KEYS[1]
local was = redis.call('HGET', key, 'state')
local resolved = function(state) return state and string.sub(state, 1, 9) == 'resolved:' end
-- A resolution whose alerts all ended before the firing in force began (ARGV[7]: the
-- latest end, against the latest start the firing noted) is a late copy (the other
-- Alertmanager's, a retry) of one before it: resolving on it would close a new incident.
if resolved(ARGV[1]) and was and not resolved(was) and ARGV[7] ~= '' then
  local since = tonumber(redis.call('HGET', key, 'since') or '')
  if since and tonumber(ARGV[7]) <= since then
    redis.call('EXPIRE', key, ARGV[6])
    local held = redis.call('HGETALL', key)
    table.insert(held, 'stale')
    table.insert(held, '1')
    return held
  end
end
-- A resolution after a resolution is the same word (the other Alertmanager of an HA pair
-- may hold another set of resolved alerts, or other ends): its resolve is sent once.
if was ~= ARGV[1] and not (resolved(was) and resolved(ARGV[1])) then
  if ARGV[3] == '1' and resolved(was) then
    for _, field in ipairs(redis.call('HKEYS', key)) do
      if field == 'team' or field == 'rank' or field == 'paged' or string.sub(field, 1, 5) == 'mail:' then
        redis.call('HDEL', key, field)
      end
    end
  end
  local n = redis.call('HINCRBY', key, 'n', 1)
  redis.call('HSET', key, 'state', ARGV[1], 'id', ARGV[2] .. '#' .. n)
  if ARGV[3] == '1' then
    if ARGV[7] ~= '' then redis.call('HSET', key, 'since', ARGV[7]) else redis.call('HDEL', key, 'since') end
  end
end
if ARGV[3] == '1' then
  redis.call('HSETNX', key, 'team', ARGV[4])
  local worst = tonumber(redis.call('HGET', key, 'rank') or '-1')
  if tonumber(ARGV[5]) > worst then redis.call('HSET', key, 'rank', ARGV[5]) end
end
redis.call('EXPIRE', key, ARGV[6])
return redis.call('HGETALL', key)
