-- Which of the task ids ARGV[2..] the broker holds: a message on the queue KEYS[1], or one
-- a worker has taken and not acknowledged (kombu's unacked hash, KEYS[2]). One atomic
-- look, so a message kombu moves between the two is seen in one of them.
-- ARGV[1] the longest list (and hash) read. Returns false when either is longer (cannot
-- tell), else the ids found.
local limit = tonumber(ARGV[1])
if redis.call('LLEN', KEYS[1]) > limit or redis.call('HLEN', KEYS[2]) > limit then
  return false
end
local wanted = {}
for i = 2, #ARGV do wanted[ARGV[i]] = true end
local found = {}
local function look(items)
  for _, item in ipairs(items) do
    -- The first "id" key is the task id in the headers: the body before it is base64,
    -- and the other ids (root_id, parent_id, correlation_id) end in "_id".
    local id = string.match(item, '"id": "([^"]*)"')
    if id and wanted[id] then
      found[#found + 1] = id
      wanted[id] = nil
    end
  end
end
look(redis.call('LRANGE', KEYS[1], 0, -1))
look(redis.call('HVALS', KEYS[2]))
return found
