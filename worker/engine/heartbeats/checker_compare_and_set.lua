-- KEYS[1] the states hash, KEYS[2] the failures reported and not yet taken in (hash: slug
-- -> {id, ...}), KEYS[3] the newest heartbeat of each service, KEYS[4] the service's runs
-- in progress. ARGV[1] slug, ARGV[2] the state read ('' = none), ARGV[3] the new state
-- ('' = forget the service), ARGV[4] the id of the reported failure this check took in
-- ('' = none).
-- Writes the state only if nobody changed it since it was read, and returns 1 then. With
-- it, in the same step: the failure taken in is deleted, unless a newer one replaced it
-- meanwhile (that one is left for the next check); a service forgotten loses its last
-- report, its unfinished runs and any failure not taken in, so added back it starts new.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (current or '') ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('DEL', KEYS[4])
  return 1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[4] ~= '' then
  local failed = redis.call('HGET', KEYS[2], ARGV[1])
  if failed and cjson.decode(failed)['id'] == ARGV[4] then redis.call('HDEL', KEYS[2], ARGV[1]) end
end
return 1
