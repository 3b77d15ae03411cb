"""The Lua scripts of the Redis backend (:mod:`.redis`): Redis runs each one alone.

Every counter is two keys: ``used`` (tokens, or requests, counted) and ``holds`` (a hash:
hold id -> ``amount:expires``). A key's counters carry its hash as a hash tag, so each
script's keys sit in one slot of a Redis Cluster.
"""

from __future__ import annotations

KEEP_AFTER_S = 3600
"""How long a counter's keys outlive its window (for `nebula usage`-style inspection)."""
LEASE_SHARE = 16
"""A lease takes at most this share (1/16) of the room a key's counters have left: leases
shrink as a budget runs out, and near its end every request holds on its own."""

# Many reservations of one counter set (one key's counters: one slot) in one call, and a
# lease (below) when one is asked for.
# KEYS: used_1, holds_1, used_2, holds_2, ...; ARGV: now, m, lease id, lease wanted, least
# lease, lease expires, then per counter: limit, ends, kind ("t" tokens: held, "r"
# requests: counted at once), then per hold: id, amount, expires -> per hold {0, 0, 0}
# when held, else {i, used, reserved} of counter i; then the lease granted (0: none).
# Holds are decided in order, each seeing the ones before it. A lease is one more hold,
# of at most 1/LEASE_SHARE of the room every counter has left after them.
RESERVE = """
local now, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local lease_id, want, least, lease_expires = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]),
  ARGV[6]
local used, reserved, limit, ends, kind, counted = {}, {}, {}, {}, {}, {}
for i = 1, m do
  local b = 3 * i + 4
  limit[i], ends[i], kind[i] = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), ARGV[b + 2]
  used[i], reserved[i], counted[i] = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0'), 0, 0
  if kind[i] == 't' then
    local holds = redis.call('HGETALL', KEYS[2 * i])
    for j = 1, #holds, 2 do
      local sep = string.find(holds[j + 1], ':', 1, true)
      if tonumber(string.sub(holds[j + 1], sep + 1)) <= now then
        redis.call('HDEL', KEYS[2 * i], holds[j])
      else
        reserved[i] = reserved[i] + tonumber(string.sub(holds[j + 1], 1, sep - 1))
      end
    end
  end
end
local out, latest = {}, 0
for h = 3 * m + 7, #ARGV, 3 do
  local id, amount, expires = ARGV[h], tonumber(ARGV[h + 1]), ARGV[h + 2]
  local refused = 0
  for i = 1, m do
    local need = amount
    if kind[i] == 'r' then need = 1 end
    if used[i] + reserved[i] + need > limit[i] then refused = i break end
  end
  if refused == 0 then
    for i = 1, m do
      if kind[i] == 'r' then
        used[i], counted[i] = used[i] + 1, counted[i] + 1
      else
        reserved[i] = reserved[i] + amount
        redis.call('HSET', KEYS[2 * i], id, amount .. ':' .. expires)
      end
    end
    latest = math.max(latest, tonumber(expires))
    out[#out + 1], out[#out + 2], out[#out + 3] = 0, 0, 0
  else
    out[#out + 1], out[#out + 2], out[#out + 3] = refused, used[refused], reserved[refused]
  end
end
local granted = 0
if want > 0 then
  granted = want
  for i = 1, m do
    granted = math.min(granted, math.floor((limit[i] - used[i] - reserved[i]) / LEASE_SHARE))
  end
  if granted >= least then
    for i = 1, m do
      redis.call('HSET', KEYS[2 * i], lease_id, granted .. ':' .. lease_expires)
    end
    latest = math.max(latest, tonumber(lease_expires))
  else
    granted = 0
  end
end
out[#out + 1] = granted
for i = 1, m do
  if counted[i] > 0 then
    redis.call('INCRBY', KEYS[2 * i - 1], counted[i])
    redis.call('EXPIREAT', KEYS[2 * i - 1], math.ceil(ends[i]) + 60)
  elseif kind[i] == 't' and latest > 0 then
    redis.call('EXPIREAT', KEYS[2 * i], math.ceil(math.max(ends[i], latest)) + 60)
  end
end
return out
""".replace("LEASE_SHARE", str(LEASE_SHARE))

# A lease handed back: its hold goes, what its requests cost so far is added, and the
# requests still running under it get holds of their own (one call: the bound holds
# throughout). KEYS as SETTLE; ARGV: lease id, charged, ends_1, ..., ends_n, then per
# request still running: id, amount, expires.
RETIRE = """
local n = #KEYS / 2
local charged = tonumber(ARGV[2])
local latest = 0
for h = n + 3, #ARGV, 3 do latest = math.max(latest, tonumber(ARGV[h + 2])) end
for i = 1, n do
  redis.call('HDEL', KEYS[2 * i], ARGV[1])
  for h = n + 3, #ARGV, 3 do
    redis.call('HSET', KEYS[2 * i], ARGV[h], ARGV[h + 1] .. ':' .. ARGV[h + 2])
  end
  if latest > 0 then
    redis.call('EXPIREAT', KEYS[2 * i], math.ceil(math.max(tonumber(ARGV[2 + i]), latest)) + 60)
  end
  if charged > 0 then
    redis.call('INCRBY', KEYS[2 * i - 1], charged)
    redis.call('EXPIREAT', KEYS[2 * i - 1], math.ceil(tonumber(ARGV[2 + i])) + KEEP_AFTER)
  end
end
return n
""".replace("KEEP_AFTER", str(KEEP_AFTER_S))

# Many settlements of one counter set in one call: the holds go, their cost is added.
# KEYS as RESERVE (token counters only); ARGV: charged (the sum), ends_1, ..., ends_n, then
# the hold ids.
SETTLE = """
local n = #KEYS / 2
local charged = tonumber(ARGV[1])
for i = 1, n do
  if #ARGV > n + 1 then
    redis.call('HDEL', KEYS[2 * i], unpack(ARGV, n + 2, #ARGV))
  end
  if charged > 0 then
    redis.call('INCRBY', KEYS[2 * i - 1], charged)
    redis.call('EXPIREAT', KEYS[2 * i - 1], math.ceil(tonumber(ARGV[1 + i])) + KEEP_AFTER)
  end
end
return n
""".replace("KEEP_AFTER", str(KEEP_AFTER_S))

# KEYS: used, holds of one counter; ARGV: now -> {used, reserved}
READ = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local holds = redis.call('HGETALL', KEYS[2])
local reserved = 0
for j = 1, #holds, 2 do
  local sep = string.find(holds[j + 1], ':', 1, true)
  if tonumber(string.sub(holds[j + 1], sep + 1)) > tonumber(ARGV[1]) then
    reserved = reserved + tonumber(string.sub(holds[j + 1], 1, sep - 1))
  end
end
return {used, reserved}
"""

# KEYS: lease; ARGV: holder, ttl ms -> 1 when held by holder now, else 0
CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease; ARGV: holder
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lines, counts; ARGV: index, "ok"|"failed", line -> 1 when new
PUT_LINE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  return 1
end
return 0
"""
