-- KEYS[1] job hash; ARGV[1] channel, ARGV[2] the worker holding the delivery's message
-- until its countdown runs out ('<boot> <hostname>', worker/engine/workers.py).
-- Marks the open delivery as held ('held:<channel>'); the claim of its attempt clears the
-- mark. Returns 1 when marked: not on a record that has expired (that would make a hash
-- with no TTL), nor on a final delivery.
local state = redis.call('HGET', KEYS[1], 'state:' .. ARGV[1])
if not state or state == 'delivered' or state == 'dead' then return 0 end
redis.call('HSET', KEYS[1], 'held:' .. ARGV[1], ARGV[2])
return 1
