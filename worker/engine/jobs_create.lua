-- KEYS[1] job hash, KEYS[2] open deliveries; ARGV[1] ttl, ARGV[2] stall deadline, ARGV[3]
-- n, ARGV[4..3+n] open-delivery members, then field, value, ... Creates the record and
-- indexes its deliveries unless the record exists. Returns 1 when created: one round trip
-- for intake, and a redelivered `notify` never overwrites the record its first run made.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 4 + n))
redis.call('EXPIRE', KEYS[1], ARGV[1])
for i = 4, 3 + n do redis.call('ZADD', KEYS[2], ARGV[2], ARGV[i]) end
return 1
