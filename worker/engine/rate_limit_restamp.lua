-- KEYS[1] window; ARGV[1] member: move the member's time to now (never backwards).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
return redis.call('ZADD', KEYS[1], 'XX', 'GT', now, ARGV[1])
