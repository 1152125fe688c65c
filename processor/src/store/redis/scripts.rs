//! The Lua scripts the Redis store runs: each is one atomic step of the store contract (see the
//! module docs of [`super`] for the keys they keep).

/// The server's clock in microseconds, and `raise(v)`: the larger of `v + 1` and the clock,
/// written without an exponent (Lua 5.1 would print `1.7e+15`). Prepended to the scripts that
/// hand out etags, sequence numbers or epochs.
pub(super) const CLOCK: &str = r#"
local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
-- When an index entry's instance last changed: its fourth field, `updated_at` (ms).
local function changed_at(entry)
  return tonumber(string.match(entry, '^[^|]*|[^|]*|[^|]*|(%-?%d+)')) or 0
end
local function raise(v)
  return string.format('%d', math.max((tonumber(v) or 0) + 1, now_us))
end
"#;

/// Compare-and-set of many instances. KEYS: state keys..., timers key, epoch key, applied key,
/// then the index keys: ids (sorted set), counts (hash), recent (sorted set), then the tail keys of the writes, in
/// the order of their state keys.
/// ARGV: n, the epoch the commit is fenced with ("" = not fenced), the offset to raise the
/// applied mark to ("" = none), the floor of the applied mark ("" = none: below it, nothing is
/// written and the answer is {-2, mark}), then per write: expected etag ("" = must not exist),
/// blob, instance id, its type ("" = leave the index), its status, its index entry (which
/// starts with `<status>|`), the expiry in ms ("" = none: the key persists; else the instance
/// leaves the index and the key expires), timer count, "1" to append the blob to the tail key
/// instead of replacing the blob (and deleting the tail, which field `t` says exists), then
/// (fire_at, envelope) pairs.
pub(super) const COMMIT: &str = r#"
local n = tonumber(ARGV[1])
local timers = KEYS[n + 1]
local out = {}
if ARGV[4] ~= '' then
  local mark = tonumber(redis.call('GET', KEYS[n + 3]) or '') or -1
  if mark < tonumber(ARGV[4]) then
    return {-2, mark}
  end
end
if ARGV[2] ~= '' and redis.call('GET', KEYS[n + 2]) ~= ARGV[2] then
  for i = 1, n do
    out[i] = -1
  end
  return out
end
local ids, counts, recent = KEYS[n + 4], KEYS[n + 5], KEYS[n + 6]
-- A group that drops to nothing leaves the counts (so that memory returns to its baseline).
local function uncount(group)
  if redis.call('HINCRBY', counts, group, -1) <= 0 then
    redis.call('HDEL', counts, group)
  end
end
local a = 5
for i = 1, n do
  local expected = ARGV[a]
  local blob = ARGV[a + 1]
  local id = ARGV[a + 2]
  local typ = ARGV[a + 3]
  local group = typ .. '|' .. ARGV[a + 4]
  local entry = ARGV[a + 5]
  local expire = ARGV[a + 6]
  local count = tonumber(ARGV[a + 7])
  local append = ARGV[a + 8] == '1'
  local tail = KEYS[n + 6 + i]
  a = a + 9
  local stored = redis.call('HMGET', KEYS[i], 'e', 'x', 't')
  local current, old, tailed = stored[1], stored[2], stored[3]
  if (current == false and expected == '') or (current ~= false and current == expected) then
    local etag = raise(current)
    if append then
      redis.call('APPEND', tail, blob)
      redis.call('HSET', KEYS[i], 'e', etag, 't', '1')
    else
      redis.call('HSET', KEYS[i], 'b', blob, 'e', etag)
      if tailed then
        redis.call('DEL', tail)
        redis.call('HDEL', KEYS[i], 't')
      end
    end
    if expire ~= '' then
      if old then
        redis.call('ZREM', ids, id)
        redis.call('ZREM', recent, id)
        uncount(string.match(id, '^[^:]*:[^:]*') .. '|' .. string.match(old, '^[^|]*'))
        redis.call('HDEL', KEYS[i], 'x')
      end
      redis.call('PEXPIRE', KEYS[i], expire)
      if append then
        redis.call('PEXPIRE', tail, expire)
      end
    elseif typ ~= '' then
      if not old then
        redis.call('ZADD', ids, 0, id)
        redis.call('HINCRBY', counts, group, 1)
      else
        local was = typ .. '|' .. string.match(old, '^[^|]*')
        if was ~= group then
          uncount(was)
          redis.call('HINCRBY', counts, group, 1)
        end
      end
      redis.call('ZADD', recent, changed_at(entry), id)
      redis.call('HSET', KEYS[i], 'x', entry)
    end
    if expire == '' and current ~= false then
      redis.call('PERSIST', KEYS[i])
      if append then
        redis.call('PERSIST', tail)
      end
    end
    for t = 1, count do
      redis.call('ZADD', timers, ARGV[a], ARGV[a + 1])
      a = a + 2
    end
    out[i] = tonumber(etag)
  else
    a = a + 2 * count
    out[i] = -1
  end
end
if ARGV[3] ~= '' and tonumber(ARGV[3]) > (tonumber(redis.call('GET', KEYS[n + 3])) or -1) then
  redis.call('SET', KEYS[n + 3], ARGV[3])
end
return out
"#;

/// Raise the applied mark to ARGV[1] (never lower it), unless it is below the floor ARGV[2]
/// ("" = none): then -2. KEYS: applied.
pub(super) const MARK: &str = r#"
local mark = tonumber(redis.call('GET', KEYS[1]) or '') or -1
if ARGV[2] ~= '' and mark < tonumber(ARGV[2]) then
  return -2
end
if tonumber(ARGV[1]) > mark then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 0
"#;

/// Use up an operator's acceptance of a recorded loss: 1 if there was one. KEYS: lost.
pub(super) const ACCEPTED: &str = r#"
if redis.call('GET', KEYS[1]) == 'accepted' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

/// Take a partition: a new epoch, the applied mark (-1: none, or not a number) and whether the
/// partition had an epoch before (1/0); fill the recent index from the entries if it is missing
/// while the id index is not. KEYS: epoch, applied, ids, recent. ARGV: the state keys' prefix.
pub(super) const TAKE: &str = r#"
if redis.call('EXISTS', KEYS[4]) == 0 then
  local all = redis.call('ZRANGE', KEYS[3], 0, -1)
  for i = 1, #all do
    local entry = redis.call('HGET', ARGV[1] .. all[i], 'x')
    if entry then
      redis.call('ZADD', KEYS[4], changed_at(entry), all[i])
    end
  end
end
local before = redis.call('GET', KEYS[1])
local epoch = raise(before)
redis.call('SET', KEYS[1], epoch)
return {tonumber(epoch), tonumber(redis.call('GET', KEYS[2]) or '') or -1, before and 1 or 0}
"#;

/// Move due timers to the release queue with fresh seqs; return the whole queue.
/// KEYS: timers, released, tseq. ARGV: now, max.
pub(super) const CLAIM: &str = r#"
local released = redis.call('HLEN', KEYS[2])
local room = tonumber(ARGV[2]) - released
if room > 0 then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, room)
  for i = 1, #due, 2 do
    local seq = raise(redis.call('GET', KEYS[3]))
    redis.call('SET', KEYS[3], seq)
    redis.call('HSET', KEYS[2], seq, due[i + 1] .. '|' .. due[i])
    redis.call('ZREM', KEYS[1], due[i])
  end
end
return redis.call('HGETALL', KEYS[2])
"#;

/// Forget released timers with seq <= ARGV[1]. KEYS: released.
pub(super) const ACK: &str = r#"
local fields = redis.call('HKEYS', KEYS[1])
for _, f in ipairs(fields) do
  if tonumber(f) <= tonumber(ARGV[1]) then
    redis.call('HDEL', KEYS[1], f)
  end
end
return 0
"#;
