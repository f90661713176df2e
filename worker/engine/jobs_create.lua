-- Accepting a job, in one step: claim its idempotency id, write its record, index it
-- among recent jobs and its deliveries as open, and push their messages onto the queues.
-- Either all of it happens or (for a duplicate, or a record that already exists) none of
-- it: a duplicate leaves only a note of whose copy it is, so its id still answers.
-- KEYS[1] job hash, KEYS[2] open deliveries, KEYS[3] idempotency key, KEYS[4] the
-- incident's newest event (a job id), KEYS[5] this id's duplicate note, KEYS[6] recent
-- jobs, KEYS[7] the counters (worker/engine/stats.py), KEYS[8..7+n] the queue of each
-- delivery, KEYS[8+n..] the open-since index of each channel this job is late on while
-- its delivery there is not final (a notification's: not an acknowledge, resolve or canary).
-- ARGV[1] job id, ARGV[2] job ttl, ARGV[3] idempotency: 'claim', 'reassign' or '' (none),
-- ARGV[4] idempotency ttl, ARGV[5] the incident key's ttl, '' when the job is no
-- PagerDuty event, ARGV[6] now, ARGV[7] most recent jobs kept ('0': not listed), ARGV[8]
-- the counter of accepted jobs, ARGV[9] that of duplicates ('': not counted), ARGV[10] n,
-- ARGV[11..10+n] open-delivery members, ARGV[11+n..10+2n] their first deadlines,
-- ARGV[11+2n..10+3n] messages, then field, value, ... of the record.
-- Returns {1} when accepted, {0} when the record exists (a redelivered `notify`), {2,
-- first job id} for a duplicate idempotency id.
local job_id = ARGV[1]
-- First: a message delivered again must not claim an idempotency id of its own.
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
if ARGV[3] == 'claim' then
  if not redis.call('SET', KEYS[3], job_id, 'NX', 'EX', ARGV[4]) then
    local first = redis.call('GET', KEYS[3])
    if first and first ~= job_id then
      redis.call('SET', KEYS[5], first, 'EX', ARGV[2])
      if ARGV[9] ~= '' then redis.call('HINCRBYFLOAT', KEYS[7], ARGV[9], 1) end
      return {2, first}
    end
  end
elseif ARGV[3] == 'reassign' then
  redis.call('SET', KEYS[3], job_id, 'EX', ARGV[4])
end
local n = tonumber(ARGV[10])
redis.call('HSET', KEYS[1], unpack(ARGV, 11 + 3 * n))
redis.call('EXPIRE', KEYS[1], ARGV[2])
for i = 1, n do
  redis.call('ZADD', KEYS[2], ARGV[10 + n + i], ARGV[10 + i])
  redis.call('LPUSH', KEYS[7 + i], ARGV[10 + 2 * n + i])
end
if #KEYS > 7 + n then
  -- Redis's clock, which the reader compares with: a producer's may be off.
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  for i = 8 + n, #KEYS do redis.call('ZADD', KEYS[i], now, job_id) end
end
if ARGV[8] ~= '' then redis.call('HINCRBYFLOAT', KEYS[7], ARGV[8], 1) end
if ARGV[7] ~= '0' then
  redis.call('ZADD', KEYS[6], ARGV[6], job_id)
  -- Bounded by count; records that expired sooner are skipped by the reader.
  redis.call('ZREMRANGEBYRANK', KEYS[6], 0, -tonumber(ARGV[7]) - 1)
end
if ARGV[5] ~= '' then
  -- This event goes out after the one queued before it for the same incident.
  local before = redis.call('GET', KEYS[4])
  if before then redis.call('HSET', KEYS[1], 'after', before) end
  redis.call('SET', KEYS[4], job_id, 'EX', ARGV[5])
end
return {1}
