-- cvgate quota script: src/quota/gcra.rs and store::decide, in whole MICROSECONDS.
--
-- Why microseconds: Redis Lua numbers are doubles, exact only up to 2^53. Nanoseconds since
-- 1970 (~1.8e18) are not; microseconds (~1.8e15) are, with room for windows of years. The
-- caller passes T already rounded down to whole microseconds (at least 1), and reads back the
-- same integers, so Rust and this script compute on identical values (see quota/redis.rs).
-- Numbers are written with string.format('%.0f'): tostring() would keep only 14 digits.
--
-- KEYS: one hash per bucket, fields t = tat (µs since epoch), i = interval T the tat was written
--       with (µs) — GcraState of gcra.rs. A missing key is a full bucket.
-- ARGV[1] = 'r' (reserve) | 's' (settle) | 'p' (peek)
--   r: ARGV[2] want, ARGV[3] min, then per bucket: capacity, T, shadow (0|1)
--      returns {now, granted or -1, rebased tat per bucket (before the charge)}
--   s: ARGV[2] delta (signed), then per bucket: capacity, T       returns {now}
--   p: then per bucket: capacity, T                                returns {now, rebased tats}
-- Every key written gets a TTL of "until the bucket is full again" + MARGIN_MS, so idle keys
-- vanish exactly when forgetting them loses nothing; a bucket that is full is deleted outright.

if redis.replicate_commands then
  pcall(redis.replicate_commands) -- Redis < 5: needed to write after TIME (a no-op since 7)
end

local MAX = 9007199254740991 -- 2^53 - 1: saturation bound (Rust saturates at u64::MAX ns)
local MARGIN_MS = 1000

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local op = ARGV[1]
local n = #KEYS

local function clamp(x)
  if x > MAX then return MAX end
  return x
end

-- floor(a / b) for non-negative integers, exact while a and b stay below 2^53 (the double
-- division may round up to the next integer; the products below detect and undo that).
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 end
  if (q + 1) * b <= a then q = q + 1 end
  return q
end

-- gcra::rebase: keep the spent amount in tokens when T changed: tat' = now + (tat-now)·T/iv,
-- as q·T + floor(r·T/iv) so the product stays small (exact while iv·T < 2^53 µs²).
local function rebase(tat, iv, T)
  if iv == T or iv == 0 or tat <= now then return tat end
  local ahead = tat - now
  local q = idiv(ahead, iv)
  local r = ahead - q * iv
  return clamp(now + clamp(q * T) + idiv(r * T, iv))
end

-- gcra::check: allowed for cnt tokens, and whole tokens remaining now.
local function check(tat, C, T, cnt)
  local used = math.max(tat, now) - now
  local tau = clamp(C * T)
  local remaining = 0
  if tau > used then remaining = idiv(tau - used, T) end
  local new_used = clamp(used + clamp(cnt * T))
  return (new_used <= tau and cnt <= C), remaining
end

local function load(key)
  local v = redis.call('HMGET', key, 't', 'i')
  return tonumber(v[1]), tonumber(v[2]) or 0
end

local function store(key, tat, T)
  if tat <= now then
    redis.call('DEL', key) -- full again: same as absent
    return
  end
  redis.call('HSET', key, 't', string.format('%.0f', tat), 'i', string.format('%.0f', T))
  redis.call('PEXPIRE', key, string.format('%.0f', math.ceil((tat - now) / 1000) + MARGIN_MS))
end

if op == 'r' then
  local want = tonumber(ARGV[2])
  local min = math.min(tonumber(ARGV[3]), want)
  local C, T, S, tats = {}, {}, {}, {}
  for i = 1, n do
    local b = 3 + (i - 1) * 3
    C[i] = tonumber(ARGV[b + 1])
    T[i] = tonumber(ARGV[b + 2])
    S[i] = ARGV[b + 3] == '1'
    local tat, iv = load(KEYS[i])
    if tat == nil then tat = now; iv = 0 end
    tats[i] = rebase(tat, iv, T[i])
  end
  -- store::decide: as many as fit in every non-shadow bucket, up to want, at least min.
  local fit = want
  for i = 1, n do
    if not S[i] then
      local _, rem = check(tats[i], C[i], T[i], 0)
      if rem < fit then fit = rem end
    end
  end
  local ok = fit >= min
  for i = 1, n do
    if ok and not S[i] then
      local allowed = check(tats[i], C[i], T[i], fit)
      ok = allowed
    end
  end
  local out = { now, -1 }
  if ok then
    out[2] = fit
    local cur = {} -- a key passed twice is charged twice, as in the memory store
    for i = 1, n do
      local base = cur[KEYS[i]] or tats[i]
      local tat = clamp(math.max(base, now) + clamp(fit * T[i]))
      cur[KEYS[i]] = tat
      store(KEYS[i], tat, T[i])
    end
  end
  for i = 1, n do out[2 + i] = tats[i] end
  return out
elseif op == 's' then
  local delta = tonumber(ARGV[2])
  for i = 1, n do
    local b = 2 + (i - 1) * 2
    local Ti = tonumber(ARGV[b + 2])
    local tat, iv = load(KEYS[i])
    -- A refund to an unknown key is a no-op (it is full already): do not create it.
    if tat ~= nil or delta > 0 then
      if tat == nil then tat = now; iv = 0 end
      tat = rebase(tat, iv, Ti)
      if delta >= 0 then
        tat = clamp(math.max(tat, now) + clamp(delta * Ti))
      else
        tat = math.max(tat - clamp(-delta * Ti), now)
      end
      store(KEYS[i], tat, Ti)
    end
  end
  return { now }
elseif op == 'p' then
  local out = { now }
  for i = 1, n do
    local Ti = tonumber(ARGV[1 + (i - 1) * 2 + 2])
    local tat, iv = load(KEYS[i])
    if tat == nil then tat = now; iv = 0 end
    out[1 + i] = rebase(tat, iv, Ti)
  end
  return out
end
return redis.error_reply('cvgate quota script: unknown op')
