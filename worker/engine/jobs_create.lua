-- Accepting a job, in one step: claim its idempotency id, write its record, index its
-- deliveries as open and push their messages onto the queues. Either all of it happens
-- or (for a duplicate, or a record that already exists) none of it.
-- KEYS[1] job hash, KEYS[2] open deliveries, KEYS[3] idempotency key, KEYS[4] the
-- incident's newest event (a job id), KEYS[5..4+n] the queue of each delivery.
-- ARGV[1] job id, ARGV[2] job ttl, ARGV[3] stall deadline, ARGV[4] idempotency: 'claim',
-- 'reassign' or '' (none), ARGV[5] idempotency ttl, ARGV[6] the incident key's ttl, ''
-- when the job is no PagerDuty event, ARGV[7] n, ARGV[8..7+n] open-delivery members, ARGV[8+n..7+2n] messages, then
-- field, value, ... of the record.
-- Returns {1} when accepted, {0} when the record exists (a redelivered `notify`), {2,
-- first job id} for a duplicate idempotency id.
local job_id = ARGV[1]
if ARGV[4] == 'claim' then
  if not redis.call('SET', KEYS[3], job_id, 'NX', 'EX', ARGV[5]) then
    local first = redis.call('GET', KEYS[3])
    if first and first ~= job_id then return {2, first} end
  end
elseif ARGV[4] == 'reassign' then
  redis.call('SET', KEYS[3], job_id, 'EX', ARGV[5])
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local n = tonumber(ARGV[7])
redis.call('HSET', KEYS[1], unpack(ARGV, 8 + 2 * n))
redis.call('EXPIRE', KEYS[1], ARGV[2])
for i = 1, n do
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[7 + i])
  redis.call('LPUSH', KEYS[4 + i], ARGV[7 + n + i])
end
if ARGV[6] ~= '' then
  -- This event goes out after the one queued before it for the same incident.
  local before = redis.call('GET', KEYS[4])
  if before then redis.call('HSET', KEYS[1], 'after', before) end
  redis.call('SET', KEYS[4], job_id, 'EX', ARGV[6])
end
return {1}
