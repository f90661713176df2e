-- KEYS[1] a key; ARGV[1] the value its owner wrote. Deletes the key only if it still holds
-- that value: a lock that expired and was taken by someone else is left to them.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
