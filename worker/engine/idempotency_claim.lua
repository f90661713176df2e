-- KEYS[1] the idempotency id's key; ARGV[1] this job's id, ARGV[2] ttl (s). Returns false
-- when this job is the first to claim the id, else the id of the job that was.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
