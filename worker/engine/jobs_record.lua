-- Everything a delivery step writes, in one round trip.
-- KEYS[1] job hash, KEYS[2] attempts list, KEYS[3] open deliveries, KEYS[4] the claim,
-- KEYS[5] the counters (worker/engine/stats.py), KEYS[6] the channel's open-since index.
-- ARGV[1] channel, ARGV[2] ttl, ARGV[3] '1' to count this as an attempt, ARGV[4] the
-- attempt entry as JSON without its opening brace, ARGV[5] open-delivery member, ARGV[6]
-- the new stall deadline ('' closes the delivery, '-' leaves it), ARGV[7] the claim's token
-- to release ('' for none; its attempt's 'taken' mark is cleared with it), ARGV[8] m,
-- ARGV[9..8+2m] counter, amount, ..., then fields to set on the job, as field, value, ...
-- Returns the attempt's number (0 when it is not counted).
local attempt = 0
local shown = 'null'
if ARGV[3] == '1' then
  attempt = redis.call('HINCRBY', KEYS[1], 'attempts:' .. ARGV[1], 1)
  shown = tostring(attempt)
end
redis.call('RPUSH', KEYS[2], '{"attempt": ' .. shown .. ', ' .. ARGV[4])
redis.call('LTRIM', KEYS[2], -1000, -1)
redis.call('EXPIRE', KEYS[2], ARGV[2])
local m = tonumber(ARGV[8])
for i = 0, m - 1 do
  redis.call('HINCRBYFLOAT', KEYS[5], ARGV[9 + 2 * i], ARGV[10 + 2 * i])
end
local first_field = 9 + 2 * m
if #ARGV > first_field then
  redis.call('HSET', KEYS[1], unpack(ARGV, first_field))
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
if ARGV[6] == '' then
  redis.call('ZREM', KEYS[3], ARGV[5])
  redis.call('ZREM', KEYS[6], string.sub(ARGV[5], 1, #ARGV[5] - #ARGV[1] - 1))
elseif ARGV[6] ~= '-' then
  redis.call('ZADD', KEYS[3], 'XX', ARGV[6], ARGV[5])
end
if ARGV[7] ~= '' then
  if redis.call('GET', KEYS[4]) == ARGV[7] then redis.call('DEL', KEYS[4]) end
  -- Even after the claim lapsed: this attempt did end. Another claim's mark stays.
  local taken = redis.call('HGET', KEYS[1], 'taken:' .. ARGV[1])
  if taken and string.sub(taken, 1, #ARGV[7] + 1) == ARGV[7] .. ' ' then
    redis.call('HDEL', KEYS[1], 'taken:' .. ARGV[1])
  end
end
return attempt
