-- KEYS[1] open deliveries; ARGV[1] open-delivery member, ARGV[2] the score the recovery
-- sweep read, ARGV[3] the new score. Moves the sweep's next look at a delivery only if
-- nothing moved it since the sweep read it: a worker's claim or record did, which is
-- progress, and its moment stands. Returns 1 when moved.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
