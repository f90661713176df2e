-- KEYS[1] the states hash; ARGV[1] slug, ARGV[2] the state read ('' = none), ARGV[3] the
-- new state ('' = delete it). Writes it only if nobody changed the state since it was
-- read; returns 1 then.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (current or '') ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return 1
