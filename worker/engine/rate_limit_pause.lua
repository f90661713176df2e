-- KEYS[1] the key's pause; ARGV[1] until (epoch seconds), ARGV[2] its ttl (ms). Only ever
-- lengthens a pause: a shorter Retry-After seen later never cuts a longer one short.
local current = redis.call('GET', KEYS[1])
if (not current) or tonumber(current) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
