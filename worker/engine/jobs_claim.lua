-- KEYS[1] job hash, KEYS[2] the claim (a lock, see lock.py), KEYS[3] open deliveries;
-- ARGV[1] channel, ARGV[2] token, ARGV[3] claim ttl (ms), ARGV[4] stall deadline, ARGV[5]
-- open-delivery member. Returns {state or '', attempts so far, 1 if claimed}: the start of
-- a delivery in one round trip. A final state is never claimed; a claimed delivery's
-- stall deadline moves on, so the recovery sweep leaves it alone while it is worked on.
local found = redis.call('HMGET', KEYS[1], 'state:' .. ARGV[1], 'attempts:' .. ARGV[1])
local state = found[1] or ''
local attempts = tonumber(found[2]) or 0
if state == 'delivered' or state == 'dead' then return {state, attempts, 0} end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {state, attempts, 0}
end
redis.call('ZADD', KEYS[3], 'XX', ARGV[4], ARGV[5])
return {state, attempts, 1}
