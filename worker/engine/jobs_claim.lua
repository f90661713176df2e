-- KEYS[1] job hash, KEYS[2] the claim (a lock, see lock.py), KEYS[3] open deliveries;
-- ARGV[1] channel, ARGV[2] token, ARGV[3] claim ttl (ms), ARGV[4] the recovery sweep's
-- next look (for a page, once the claim has lapsed), ARGV[5] open-delivery member,
-- ARGV[6] the job-hash key prefix, or '' when this channel keeps no order, ARGV[7] now.
-- Returns {state or '', attempts so far, 1 if claimed, the state of the event queued
-- before this one for the same incident while it is not final, else ''[, when that event
-- is next due]}: the start of a delivery in one round trip. A final state is never
-- claimed, nor a delivery whose predecessor is still on its way (events for one incident
-- go out in the order queued).
-- A claimed delivery is marked as taken ('taken:<channel>' = token and when) until the
-- record of its attempt clears the mark: one still marked at the sweep's next look, its
-- claim lapsed, was abandoned mid-attempt (its worker died). The claim also clears the
-- mark of the worker that held its message through a countdown ('held:<channel>').
local found = redis.call('HMGET', KEYS[1], 'state:' .. ARGV[1], 'attempts:' .. ARGV[1], 'after')
local state = found[1] or ''
local attempts = tonumber(found[2]) or 0
if state == 'delivered' or state == 'dead' then return {state, attempts, 0, ''} end
if ARGV[6] ~= '' and found[3] then
  -- The predecessor's record is read by its id (a key this script is not handed; the
  -- service runs on one Redis, or a Sentinel-watched one, never a cluster).
  local before = redis.call('HMGET', ARGV[6] .. found[3], 'state:' .. ARGV[1], 'due:' .. ARGV[1])
  if before[1] and before[1] ~= 'delivered' and before[1] ~= 'dead' then
    return {state, attempts, 0, before[1], before[2] or ''}
  end
end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {state, attempts, 0, ''}
end
if found[1] then  -- not on a record that has expired: that would make one with no TTL
  redis.call('HSET', KEYS[1], 'taken:' .. ARGV[1], ARGV[2] .. ' ' .. ARGV[7])
  -- Its message is out of the hands that held it through a countdown (jobs_hold.lua).
  redis.call('HDEL', KEYS[1], 'held:' .. ARGV[1])
end
redis.call('ZADD', KEYS[3], 'XX', ARGV[4], ARGV[5])
return {state, attempts, 1, ''}
