-- Putting a message a worker took back on its queue, as kombu's restore does, but only if
-- it is still in that worker's hands as it was read: one acknowledged (or put back by
-- anyone else) meanwhile is left alone, so no message is queued twice.
-- KEYS[1] kombu's unacked hash, KEYS[2] its index, KEYS[3] the queue's list.
-- ARGV[1] the delivery tag, ARGV[2] its unacked entry as read, ARGV[3] the message to queue.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
-- The right end: workers take from it, so the message, already overdue, goes next.
redis.call('RPUSH', KEYS[3], ARGV[3])
return 1
