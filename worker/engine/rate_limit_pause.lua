-- KEYS[1] the key's pause, KEYS[2] its strikes (429s with no wait named, while they keep
-- coming). ARGV[1] the seconds PagerDuty asked for ('' when it named none), ARGV[2] the
-- caller's time, ARGV[3] the first backoff, ARGV[4] the longest.
-- With no wait named, the pause doubles with each pause that ends in another 429 within
-- twice its length (PagerDuty throttles dynamically and asks for a backoff; a pause of a
-- second each time would keep it throttled), and starts again from the first once they
-- stop. A 429 that comes while a pause is in force (a request already on its way when the
-- pause began) is no new strike: it answers the rest of that pause.
-- Only ever lengthens a pause: a shorter Retry-After seen later never cuts a longer one
-- short. Returns the pause this 429 asked for, in seconds.
local now = tonumber(ARGV[2])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local seconds
if ARGV[1] == '' then
  if current > now then return tostring(current - now) end
  local strikes = redis.call('INCR', KEYS[2])
  seconds = math.min(tonumber(ARGV[4]), tonumber(ARGV[3]) * 2 ^ (strikes - 1))
  redis.call('PEXPIRE', KEYS[2], math.ceil(seconds * 2000) + 1000)
else
  seconds = tonumber(ARGV[1])
end
seconds = math.max(0.05, seconds)
local until_ = now + seconds
if current < until_ then
  redis.call('SET', KEYS[1], string.format('%.6f', until_), 'PX', math.ceil(seconds * 1000) + 1)
end
return tostring(seconds)
