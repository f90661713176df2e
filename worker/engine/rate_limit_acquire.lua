-- KEYS[1] window, KEYS[2] the key's pause; ARGV: window seconds, limit, member, the
-- caller's time. Returns {1}, {0, wait for the window} or {2, rest of the pause}. The
-- pause is checked here, in the same round trip, against the caller's clock (the clock
-- that wrote it, in rate_limit_pause.lua).
local paused = redis.call('GET', KEYS[2])
if paused and tonumber(paused) > tonumber(ARGV[4]) then
  return {2, tostring(tonumber(paused) - tonumber(ARGV[4]))}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 5000)
  return {1}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tostring(tonumber(oldest[2]) + window - now)}
