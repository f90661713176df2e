-- One ping of a service: a heartbeat ('up' or 'fail'), the start of a run ('start'), or
-- a message that changes nothing ('log'). Every ping is also kept in the service's log.
-- KEYS[1] the service's up heartbeats (sorted set), KEYS[2] newest heartbeat of each
-- service, KEYS[3] the service's log (list, newest first), KEYS[4] its runs in progress
-- (hash: run id -> start), KEYS[5] the rate window the ping was admitted through, KEYS[6]
-- the counters (worker/engine/stats.py), KEYS[7] the failures reported and not yet taken
-- in by a check (hash: slug -> {id, at, via, body}).
-- ARGV[1] slug, ARGV[2] time ('' = now, Redis clock), ARGV[3] kind, ARGV[4] how many
-- heartbeats to keep, ARGV[5] the furthest ahead of now a time may be, ARGV[6] a random
-- suffix (two heartbeats in the same microsecond both count), ARGV[7] the heartbeats'
-- ttl (s), ARGV[8] how the ping arrived ('' none), ARGV[9] its body ('' none), ARGV[10]
-- the run id ('' for runs without one), ARGV[11] log entries kept, ARGV[12] the log's
-- and the runs' ttl (s), ARGV[13] the rate window's member for this ping ('' when no rate
-- applies): it runs right after the window's acquire, in the same pipeline; ARGV[14] the
-- counter of pings of this kind, ARGV[15] what a failure's page may quote of its body ('' none).
-- Returns {1, time} when stored, {0, now} for a time too far in the future, {2} when the
-- rate window refused the ping (nothing stored).
if ARGV[13] ~= '' and not redis.call('ZSCORE', KEYS[5], ARGV[13]) then return {2} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local at = now
if ARGV[2] ~= '' then
  at = tonumber(ARGV[2])
  if at > now + tonumber(ARGV[5]) then return {0, tostring(now)} end
  -- A sender's clock a little ahead: counted from now. Kept as sent, it would keep the
  -- service alive up to that far past its death, and as the newest heartbeat it would
  -- outrank every report that follows (a DOWN sent a minute later would be ignored).
  if at > now then at = now end
end
local kind = ARGV[3]
if kind == 'up' then
  redis.call('ZADD', KEYS[1], at, string.format('%.6f', at) .. ':' .. ARGV[6])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[4]) - 1)
  redis.call('EXPIRE', KEYS[1], ARGV[7])
end
if kind == 'up' or kind == 'fail' then
  local prev = redis.call('HGET', KEYS[2], ARGV[1])
  if (not prev) or cjson.decode(prev)['at'] <= at then
    redis.call('HSET', KEYS[2], ARGV[1], cjson.encode({at = at, status = kind}))
  end
  if kind == 'fail' then
    -- Kept until a check takes it in (checker_compare_and_set.lua deletes it then, if it is
    -- still this one): the newest heartbeat alone lost a failure followed by a success
    -- before the check, and nobody was paged. Each newer failure replaces the last (a new id), so
    -- one that arrives while a check is running is left for the next.
    -- An older one (a late report, dated before it) never replaces it.
    local kept = redis.call('HGET', KEYS[7], ARGV[1])
    if (not kept) or cjson.decode(kept)['at'] <= at then
      local failure = {id = string.format('%.6f', at) .. ':' .. ARGV[6], at = at}
      if ARGV[8] ~= '' then failure['via'] = ARGV[8] end
      if ARGV[15] ~= '' then failure['body'] = ARGV[15] end
      redis.call('HSET', KEYS[7], ARGV[1], cjson.encode(failure))
    end
  end
  -- The run it finishes, if one was started; and any run started before that one, which
  -- crashed without a word (as Healthchecks, where a new start replaces the last): left,
  -- its start would keep "ran too long" open through every run that finishes after it.
  local started = redis.call('HGET', KEYS[4], ARGV[10])
  redis.call('HDEL', KEYS[4], ARGV[10])
  if started then
    local runs = redis.call('HGETALL', KEYS[4])
    for i = 1, #runs, 2 do
      if tonumber(runs[i + 1]) < tonumber(started) then redis.call('HDEL', KEYS[4], runs[i]) end
    end
  end
elseif kind == 'start' then
  redis.call('HSET', KEYS[4], ARGV[10], string.format('%.6f', at))
  redis.call('EXPIRE', KEYS[4], ARGV[12])
end
local entry = {at = at, kind = kind}
if ARGV[8] ~= '' then entry['via'] = ARGV[8] end
if ARGV[9] ~= '' then entry['body'] = ARGV[9] end
if ARGV[10] ~= '' then entry['rid'] = ARGV[10] end
redis.call('LPUSH', KEYS[3], cjson.encode(entry))
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[11]) - 1)
redis.call('EXPIRE', KEYS[3], ARGV[12])
redis.call('HINCRBYFLOAT', KEYS[6], ARGV[14], 1)
return {1, string.format('%.6f', at)}
