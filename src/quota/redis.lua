-- cvgate quota script: src/quota/gcra.rs and store::decide, in whole MICROSECONDS.
--
-- Why microseconds: Redis Lua numbers are doubles, exact only up to 2^53. Nanoseconds since
-- 1970 (~1.8e18) are not; microseconds (~1.8e15) are, with room for windows of years. The
-- caller passes T already rounded down to whole microseconds (at least 1), and reads back the
-- same integers, so Rust and this script compute on identical values (see quota/redis.rs).
-- Numbers are written with string.format('%.0f'): tostring() would keep only 14 digits.
--
-- KEYS: one hash per bucket, fields t = tat (µs since epoch), i = interval T the tat was written
--       with (µs), b = the fixed window end it was measured from (µs; 0 or absent: continuous)
--       — GcraState of gcra.rs. A missing key is a full bucket.
-- Per bucket: capacity C, T (µs), fixed window W (µs; 0: continuous), its offset O (µs).
-- ARGV[1] = 'r' (reserve) | 's' (settle) | 'p' (peek)
--   r: ARGV[2] want, ARGV[3] min, then per bucket: C, T, W, O, shadow (0|1)
--      returns {now, granted or -1, rebased tat per bucket (before the charge)}
--   s: ARGV[2] delta (signed), then per bucket: C, T, W, O        returns {now}
--   p: then per bucket: C, T, W, O                                 returns {now, rebased tats}
-- A fixed bucket is the same maths with tat measured from the end of the current window
-- ("base") instead of from now (see gcra.rs's module doc).
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

-- Params::base: now (continuous), or the end of the fixed window holding now.
local function base_of(W, O)
  if W == 0 then return now end
  if now < O then return O end
  return clamp(O + (idiv(now - O, W) + 1) * W)
end

-- gcra::rebase: the spent amount tat - from, kept in tokens when T changed:
-- tat' = base + (tat-from)·T/iv, as q·T + floor(r·T/iv) so the product stays small (exact
-- while iv·T < 2^53 µs²). from: now for a continuous state, its window end while that window
-- runs, else this bucket's base (an ended window's debt carries over).
local function rebase(tat, iv, b, T, base)
  local from = base
  if b == 0 then from = now elseif b > now then from = b end
  if tat <= from then return math.min(tat, now) end
  local ahead = tat - from
  if iv == T or iv == 0 then return clamp(base + ahead) end
  local q = idiv(ahead, iv)
  local r = ahead - q * iv
  return clamp(base + clamp(q * T) + idiv(r * T, iv))
end

-- gcra::check: allowed for cnt tokens, and whole tokens remaining now.
local function check(tat, C, T, cnt, base)
  local used = math.max(tat, base) - base
  local tau = clamp(C * T)
  local remaining = 0
  if tau > used then remaining = idiv(tau - used, T) end
  local new_used = clamp(used + clamp(cnt * T))
  return (new_used <= tau and cnt <= C), remaining
end

local function load(key)
  local v = redis.call('HMGET', key, 't', 'i', 'b')
  return tonumber(v[1]), tonumber(v[2]) or 0, tonumber(v[3]) or 0
end

-- Read bucket i's args starting at ARGV[a]: C, T, W, O; its rebased tat and base.
local function bucket(key, a)
  local C, T, W, O = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local base = base_of(W, O)
  local tat, iv, b = load(key)
  if tat == nil then tat = now; iv = 0; b = 0 end
  return C, T, W, base, rebase(tat, iv, b, T, base)
end

local function store(key, tat, T, W, base)
  if tat <= now then
    redis.call('DEL', key) -- full again: same as absent
    return
  end
  local b = 0
  if W > 0 then b = base end
  redis.call('HSET', key, 't', string.format('%.0f', tat), 'i', string.format('%.0f', T),
    'b', string.format('%.0f', b))
  redis.call('PEXPIRE', key, string.format('%.0f', math.ceil((tat - now) / 1000) + MARGIN_MS))
end

if op == 'r' then
  local want = tonumber(ARGV[2])
  local min = math.min(tonumber(ARGV[3]), want)
  local C, T, W, B, S, tats = {}, {}, {}, {}, {}, {}
  for i = 1, n do
    local a = 4 + (i - 1) * 5
    C[i], T[i], W[i], B[i], tats[i] = bucket(KEYS[i], a)
    S[i] = ARGV[a + 4] == '1'
  end
  -- store::decide: as many as fit in every non-shadow bucket, up to want, at least min.
  local fit = want
  for i = 1, n do
    if not S[i] then
      local _, rem = check(tats[i], C[i], T[i], 0, B[i])
      if rem < fit then fit = rem end
    end
  end
  local ok = fit >= min
  for i = 1, n do
    if ok and not S[i] then
      local allowed = check(tats[i], C[i], T[i], fit, B[i])
      ok = allowed
    end
  end
  local out = { now, -1 }
  if ok then
    out[2] = fit
    local cur = {} -- a key passed twice is charged twice, as in the memory store
    for i = 1, n do
      local base = cur[KEYS[i]] or tats[i]
      local tat = clamp(math.max(base, B[i]) + clamp(fit * T[i]))
      cur[KEYS[i]] = tat
      store(KEYS[i], tat, T[i], W[i], B[i])
    end
  end
  for i = 1, n do out[2 + i] = tats[i] end
  return out
elseif op == 's' then
  local delta = tonumber(ARGV[2])
  for i = 1, n do
    -- A refund to an unknown key is a no-op (it is full already): do not create it.
    if delta > 0 or redis.call('EXISTS', KEYS[i]) == 1 then
      local _, Ti, Wi, base, tat = bucket(KEYS[i], 3 + (i - 1) * 4)
      if delta >= 0 then
        tat = clamp(math.max(tat, base) + clamp(delta * Ti))
      else
        tat = math.max(tat - clamp(-delta * Ti), base)
      end
      store(KEYS[i], tat, Ti, Wi, base)
    end
  end
  return { now }
elseif op == 'p' then
  local out = { now }
  for i = 1, n do
    local _, _, _, _, tat = bucket(KEYS[i], 2 + (i - 1) * 4)
    out[1 + i] = tat
  end
  return out
end
return redis.error_reply('cvgate quota script: unknown op')
