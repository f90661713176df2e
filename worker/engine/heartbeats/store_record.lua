-- KEYS[1] the service's heartbeats (sorted set), KEYS[2] newest heartbeat of each service.
-- ARGV[1] slug, ARGV[2] time ('' = now, Redis clock), ARGV[3] status, ARGV[4] how many to
-- keep, ARGV[5] the furthest ahead of now a time may be, ARGV[6] a random suffix (two
-- heartbeats in the same microsecond both count), ARGV[7] the set's ttl (s).
-- Returns {1, time} when stored, {0, now} for a time too far in the future.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local at = now
if ARGV[2] ~= '' then
  at = tonumber(ARGV[2])
  if at > now + tonumber(ARGV[5]) then return {0, tostring(now)} end
end
if ARGV[3] == 'up' then
  redis.call('ZADD', KEYS[1], at, string.format('%.6f', at) .. ':' .. ARGV[6])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[4]) - 1)
  redis.call('EXPIRE', KEYS[1], ARGV[7])
end
local prev = redis.call('HGET', KEYS[2], ARGV[1])
if (not prev) or cjson.decode(prev)['at'] <= at then
  redis.call('HSET', KEYS[2], ARGV[1], cjson.encode({at = at, status = ARGV[3]}))
end
return {1, string.format('%.6f', at)}
