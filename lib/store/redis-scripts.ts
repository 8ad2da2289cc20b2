import { createHash } from 'node:crypto'

// The Lua scripts of the Redis store: each one round trip, atomic, and the
// Redis counterpart of one MemoryStore method. Times that decide freshness
// come from Redis' own clock (TIME), so that the gateways' clocks need not
// agree. Redis 5 or later (scripts replicate their effects).

export interface Script { readonly source: string, readonly sha: string }

function script (source: string): Script {
  return { source, sha: createHash('sha1').update(source).digest('hex') }
}

/**
 * KEYS[1] the settings hash. ARGV[1] the channel, ARGV[2] '1' to write only
 * over older changes (a change kept while Redis was away), ARGV[3] the end of
 * the `settings` message (its peers, by, at), then per setting: field, value
 * (JSON), at, by (JSON). Returns the new version, or 0 when nothing was newer.
 * A stored setting reads as records.ts' encodeSetting writes it.
 */
export const WRITE_SETTINGS = script(`
local hash = KEYS[1]
local newer = {}
for i = 4, #ARGV, 4 do
  local keep = true
  if ARGV[2] == '1' then
    local old = redis.call('HGET', hash, ARGV[i])
    if old then
      local ok, record = pcall(cjson.decode, old)
      if ok and type(record) == 'table' and tonumber(record.at) and tonumber(record.at) > tonumber(ARGV[i + 2]) then keep = false end
    end
  end
  if keep then newer[#newer + 1] = i end
end
if #newer == 0 then return 0 end
local version = redis.call('HINCRBY', hash, '#version', 1)
for _, i in ipairs(newer) do
  redis.call('HSET', hash, ARGV[i], '{"value":' .. ARGV[i + 1] .. ',"version":' .. version .. ',"at":' .. ARGV[i + 2] .. ',"by":' .. ARGV[i + 3] .. '}')
end
redis.call('PUBLISH', ARGV[1], '{"type":"settings","version":' .. version .. ',' .. ARGV[3] .. '}')
return version
`)

/** KEYS[1] the settings hash; ARGV[1] the version the caller has ('' for none). Returns { changed, version, field, value, ... }. */
export const READ_SETTINGS = script(`
local version = tonumber(redis.call('HGET', KEYS[1], '#version') or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) == version then return { 0, version } end
local reply = redis.call('HGETALL', KEYS[1])
table.insert(reply, 1, version)
table.insert(reply, 1, 1)
return reply
`)

/** KEYS[1] the lease; ARGV[1] owner, ARGV[2] ttl ms. Takes a free lease, or extends the owner's own: 1, else 0. */
export const ACQUIRE = script(`
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if current then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`)

/** Compare and pexpire: KEYS[1] the lease; ARGV[1] owner, ARGV[2] ttl ms. */
export const RENEW = script(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`)

/** Compare and delete: KEYS[1] the lease; ARGV[1] owner. */
export const RELEASE = script(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
`)

/** KEYS[1] the health hash; ARGV[1] field, ARGV[2] fresh ms, ARGV[3] the record. Stored as `storedAt:expiresAt:record`. */
export const WRITE_HEALTH = script(`
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now .. ':' .. (now + tonumber(ARGV[2])) .. ':' .. ARGV[3])
return 1
`)

/** KEYS[1] the health hash. Returns { field, age ms, record, ... } of the fresh entries and forgets the stale ones. */
export const READ_HEALTH = script(`
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local fresh = {}
for i = 1, #all, 2 do
  local stored, expires, record = string.match(all[i + 1], '^(%d+):(%d+):(.*)$')
  if stored and tonumber(expires) >= now then
    fresh[#fresh + 1] = all[i]
    fresh[#fresh + 1] = now - tonumber(stored)
    fresh[#fresh + 1] = record
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return fresh
`)

/** KEYS[1] the window's hash; ARGV[1] gateway, ARGV[2] count, ARGV[3] ttl ms. */
export const WRITE_LOAD = script(`
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`)

/** KEYS[1] the member's key, KEYS[2] the set of member ids; ARGV[1] id, ARGV[2] record, ARGV[3] ttl ms. */
export const ANNOUNCE = script(`
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
`)

/** KEYS[1] the member's key, KEYS[2] the set of member ids; ARGV[1] id. */
export const WITHDRAW = script(`
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
`)

/**
 * KEYS[1] the set of member ids; ARGV[1] the prefix of member keys. Returns
 * the records of the members whose key has not lapsed, and forgets the rest.
 * (It reads keys it was not given: one Redis, not a Cluster.)
 */
export const MEMBERS = script(`
local records = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local record = redis.call('GET', ARGV[1] .. id)
  if record then records[#records + 1] = record else redis.call('SREM', KEYS[1], id) end
end
return records
`)
