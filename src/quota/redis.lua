-- cvgate quota script: src/quota/gcra.rs and store::decide, in whole MICROSECONDS, over one
-- Redis hash per subject holding all its horizons (see quota/redis.rs and docs/redis.md).
-- Loaded as a function library on Redis 7+ (FUNCTION LOAD; redis.rs puts the shebang and
-- FUNCTION_NAME, `cvgate_quota_` + the first 12 hex digits of this file's SHA-1, in front, so
-- replicas of two versions never replace each other's code), called by FCALL; run by EVALSHA
-- where functions are unavailable (older Redis, or an ACL that denies FUNCTION LOAD). The same
-- code either way.
--
-- Why microseconds: Redis Lua numbers are doubles, exact only up to 2^53. Nanoseconds since
-- 1970 (~1.8e18) are not; microseconds (~1.8e15) are, with room for windows of years. The
-- caller passes T already rounded down to whole microseconds (at least 1), and reads back the
-- same integers, so Rust and this script compute on identical values.
--
-- Why it is written the way it is: redis-server's CPU per request is the product (one Redis
-- core serves the whole fleet). Measured with callgrind on Redis 7.0, a request of 12
-- buckets cost ~1,040k instructions with a hash per bucket and decimal numbers; what
-- dominated after merging the hashes was not the commands but Lua: a bytecode costs ~48
-- instructions, a function call (Lua or C) or table allocation hundreds, string.format('%.0f')
-- ~5,400 a number and tonumber() of a 16-digit decimal ~2,000, where struct.unpack of three
-- doubles costs ~1,300. So numbers travel as packed little-endian doubles
-- (struct.pack/unpack; integers below 2^53 are exact), the hot loops call no helper (floor
-- division, clamping and max are written out), per-bucket values live in a few flat arrays
-- that a function library keeps between calls, and the answer table is built in one go.
--
-- KEYS: one hash per subject (`{prefix}a:acct-1|`). Field = horizon name, value = '<ddd':
--       tat (µs since epoch), the interval T it was written with (µs), the end of the fixed
--       window it was measured from (µs; 0: continuous) — the GcraState of gcra.rs. A missing
--       field (or key) is a full bucket. Field '!' (never a horizon name: those are
--       [a-z0-9_-]) = '<d': the instant (µs) the key's TTL was last set to end.
-- ARGV[1] op: 'r' (reserve) | 's' (settle) | 'p' (peek)
-- ARGV[2], ARGV[3]: r: want, min; s: delta (signed), 0; p: 0, 0
-- ARGV[4]: '1' if a bucket is passed twice (then charged twice), else '0'
-- ARGV[4 + k]: key k's buckets, its "shape": per bucket one byte (length of its horizon
--          name), the name, and '<ddddd': capacity C, T (µs), fixed window W (µs; 0:
--          continuous), its offset O (µs), shadow (0|1). A subject's shape repeats from one
--          request to the next (it changes with the policy only), so a function library keeps
--          each shape it has parsed (at most SHAPES_MAX of them) and a request costs a lookup.
-- Returns r: {now, granted or -1, rebased tat per bucket (before the charge)}; s: {now};
--         p: {now, rebased tat per bucket}; bucket order as in ARGV (Rust maps it back).
-- A fixed bucket is the same maths with tat measured from the end of the current window
-- ("base") instead of from now (see gcra.rs's module doc).
--
-- Commands: TIME, then per key one HMGET and, when written, one HSET; PEXPIRE only when the
-- key must live longer than '!' says. The TTL then set is "until the last written horizon is
-- full again" + 1 s, plus 1/8 of that (at most 10 min) so that a busy key's TTL is not pushed
-- on every request; it never shrinks, so a horizon this request does not name (another
-- tier's, or one a reload removed) keeps its time. A key none of whose horizons is spent is
-- not created; idle keys vanish by themselves within 12.5% (10 min at most) of the moment
-- forgetting them loses nothing.

local MAX = 9007199254740991 -- 2^53 - 1: saturation bound (Rust saturates at u64::MAX ns)
local SHAPES_MAX = 4096
local MARGIN = 1000000 -- µs a key outlives its last "full again"
local SLACK_MAX_MS = 600000

-- Bound on the first call: a function library cannot name them while it loads.
local call, unpack_list, pack, unpack_bin, byte, tonum, floor, ceil

local now -- of the current call, µs

-- Per bucket, in argument order: T, the b to store BS (the fixed window's end; 0:
-- continuous, whose base is now), rebased tat R, whether its field was stored K, room SL
-- (tau - used; true: unbounded, false: shadow), the new tat NT. Per key: its shape S, its '!'
-- expiry X, its last bucket's index LAST. Flat arrays, reused between calls of a function
-- library (allocated per call under EVALSHA).
local T, BS, R, K, SL, NT, S, X, LAST, hargs = {}, {}, {}, {}, {}, {}, {}, {}, {}, {}

-- Parsed shapes: shape string -> { names, params (C, T, W, O, shadow per bucket), count }.
local shapes, nshapes = {}, 0

local function parse_shape(sh)
  local names, params, pos, len = {}, {}, 1, #sh
  while pos <= len do
    local l = byte(sh, pos)
    names[#names + 1] = string.sub(sh, pos + 1, pos + l)
    local c, t, w, o, s
    c, t, w, o, s, pos = unpack_bin('<ddddd', sh, pos + 1 + l)
    local q = #params
    params[q + 1], params[q + 2], params[q + 3], params[q + 4], params[q + 5] = c, t, w, o, s
  end
  if nshapes >= SHAPES_MAX then shapes, nshapes = {}, 0 end
  local e = { names, params, #names }
  shapes[sh], nshapes = e, nshapes + 1
  return e
end

-- Window ends computed in this call: W -> end, for offset WO[W], at now WN[W].
local WE, WO, WN = {}, {}, {}

-- floor(a / b) for non-negative integers, exact while a and b stay below 2^53 (the double
-- division may round up to the next integer; the products below detect and undo that).
local function idiv(a, b)
  local q = floor(a / b)
  if q * b > a then q = q - 1 end
  if (q + 1) * b <= a then q = q + 1 end
  return q
end

local function clamp(x)
  if x > MAX then return MAX end
  return x
end

-- Params::base for a fixed window: the end of the window holding now.
local function window_end(W, O)
  if now < O then return O end
  return clamp(O + (idiv(now - O, W) + 1) * W)
end

-- gcra::rebase: the spent amount tat - from, kept in tokens when T changed:
-- tat' = base + (tat-from)·T/iv, as q·T + floor(r·T/iv) so the product stays small (exact
-- while iv·T < 2^53 µs²). from: now for a continuous state, its window end while that window
-- runs, else this bucket's base (an ended window's debt carries over).
local function rebase(tat, iv, b, t, base)
  local from = base
  if b == 0 then from = now elseif b > now then from = b end
  if tat <= from then
    if tat < now then return tat end
    return now
  end
  local ahead = tat - from
  if iv == t or iv == 0 then return clamp(base + ahead) end
  local q = idiv(ahead, iv)
  local r = ahead - q * iv
  return clamp(base + clamp(q * t) + idiv(r * t, iv))
end

-- One HMGET per key; every bucket's rebased tat and room; how many buckets and how many CVs
-- fit in every binding one (store::decide's `fit`, at most `want`).
local function read(keys, argv, want)
  local n, fit = 0, want
  for k = 1, #keys do
    local sh = argv[4 + k]
    local e = shapes[sh] or parse_shape(sh)
    S[k] = e
    local names, p, cnt = e[1], e[2], e[3]
    local v = call('HMGET', keys[k], '!', unpack_list(names, 1, cnt))
    local x = v[1]
    if x and #x == 8 then X[k] = unpack_bin('<d', x) else X[k] = 0 end
    for j = 1, cnt do
      n = n + 1
      local q = j * 5
      local c, t, w = p[q - 4], p[q - 3], p[q - 2]
      local base, bs = now, 0
      if w > 0 then
        local o = p[q - 1]
        if WN[w] == now and WO[w] == o then
          base = WE[w]
        else
          base = window_end(w, o)
          WE[w], WO[w], WN[w] = base, o, now
        end
        bs = base
      end
      local tat, known, st = now, false, v[j + 1]
      if st and #st == 24 then
        local iv, b
        tat, iv, b = unpack_bin('<ddd', st)
        known = true
        -- Same interval, same kind and (fixed) same window, something spent: rebase is the
        -- identity (the common case; the call is skipped).
        if not (iv == t and ((b == 0 and w == 0 and tat > now) or (b == base and tat > b))) then
          tat = rebase(tat, iv, b, t, base)
        end
      end
      -- gcra::check: used = max(tat, base) - base, tau = C·T, remaining = ⌊(tau - used)/T⌋.
      local tau, room = c * t, 0
      if tau > MAX then tau = MAX end
      if tat > base then room = tau - (tat - base) else room = tau end
      if p[q] == 0 then
        if room > 0 then
          local rem = (room - room % t) / t -- ⌊room/t⌋, or one more: corrected as in idiv
          if rem * t > room then rem = rem - 1 elseif (rem + 1) * t <= room then rem = rem + 1 end
          if rem < fit then fit = rem end
        else
          fit = 0
        end
        -- With tau saturated (absurd windows) the check below passes whatever the charge,
        -- as gcra::check's clamped sum does.
        if tau == MAX then SL[n] = true else SL[n] = room end
      else
        SL[n] = false
      end
      T[n], BS[n], R[n], K[n] = t, bs, tat, known
    end
    LAST[k] = n
  end
  return n, fit
end

-- Write key k's buckets first..last whose new tat NT[j] is set, in one HSET; push the key's
-- TTL further when it must live longer than '!' says.
local function write(key, k, first, last)
  local m, top, names = 0, 0, S[k][1]
  for j = first, last do
    local tat = NT[j]
    if tat then
      hargs[m + 1] = names[j - first + 1]
      hargs[m + 2] = pack('<ddd', tat, T[j], BS[j])
      m = m + 2
      if tat > top then top = tat end
    end
  end
  if m == 0 then return end
  local x = X[k]
  if top <= now then -- every horizon written is full again: same as absent
    if x == 0 then return end
    call('HDEL', key, unpack_list(names, 1, last - first + 1))
    if call('HLEN', key) <= 1 then call('DEL', key) end -- only '!' left
    return
  end
  local need = top + MARGIN
  if need > x then
    local ms = ceil((need - now) / 1000)
    ms = ms + math.min(ceil(ms / 8), SLACK_MAX_MS)
    hargs[m + 1] = '!'
    hargs[m + 2] = pack('<d', now + ms * 1000)
    call('HSET', key, unpack_list(hargs, 1, m + 2))
    call('PEXPIRE', key, ms)
  else
    call('HSET', key, unpack_list(hargs, 1, m))
  end
end

local function reserve(keys, argv)
  local want = tonum(argv[2])
  local min = tonum(argv[3])
  if min > want then min = want end
  local n, fit = read(keys, argv, want)
  -- store::decide: as many as fit in every non-shadow bucket, up to want, at least min; then
  -- allowed (used + fit·T ≤ tau) checked again for every binding bucket: the all-or-nothing
  -- guarantee does not rest on `fit` alone (and fit 0 with a bucket in debt is a rejection).
  -- fit ≤ C needs no check: fit ≤ remaining ≤ C.
  local ok = fit >= min
  for i = 1, n do
    local sl = SL[i]
    if sl and sl ~= true and fit * T[i] > sl then ok = false end
  end
  local out = { now, -1, unpack_list(R, 1, n) }
  if not ok then return out end
  out[2] = fit
  local dups, first = argv[4] == '1', 1
  for k = 1, #keys do
    local last = LAST[k]
    for j = first, last do
      local from = R[j]
      if dups then
        local names = S[k][1]
        for p = first, j - 1 do -- a bucket passed twice is charged twice, as in the memory store
          if names[p - first + 1] == names[j - first + 1] then from = NT[p] end
        end
      end
      local b, c = BS[j], fit * T[j]
      if b == 0 then b = now end
      if from < b then from = b end
      if c > MAX then c = MAX end
      from = from + c
      if from > MAX then from = MAX end
      NT[j] = from
    end
    write(keys[k], k, first, last)
    first = last + 1
  end
  return out
end

local function settle(keys, argv)
  local delta = tonum(argv[2])
  read(keys, argv, 0)
  local dups, first = argv[4] == '1', 1
  for k = 1, #keys do
    local last = LAST[k]
    for j = first, last do
      local tat, known, b = R[j], K[j], BS[j]
      if b == 0 then b = now end
      if dups then
        local names = S[k][1]
        for p = first, j - 1 do -- passed twice: the second settles what the first wrote
          if NT[p] and names[p - first + 1] == names[j - first + 1] then
            tat, known = rebase(NT[p], T[p], BS[p], T[j], b), true
          end
        end
      end
      -- A refund to a horizon that holds nothing is a no-op (it is full already): not written.
      if delta > 0 or known then
        if delta >= 0 then
          if tat < b then tat = b end
          tat = clamp(tat + clamp(delta * T[j]))
        else
          tat = tat - clamp(-delta * T[j])
          if tat < b then tat = b end
        end
        NT[j] = tat
      else
        NT[j] = false
      end
    end
    write(keys[k], k, first, last)
    first = last + 1
  end
  return { now }
end

local function run(keys, argv)
  if not call then
    call, unpack_list, pack, unpack_bin = redis.call, unpack, struct.pack, struct.unpack
    byte, tonum, floor, ceil = string.byte, tonumber, math.floor, math.ceil
  end
  local time = call('TIME')
  now = tonum(time[1]) * 1000000 + tonum(time[2])
  local op = argv[1]
  if op == 'r' then return reserve(keys, argv) end
  if op == 's' then return settle(keys, argv) end
  if op == 'p' then
    local n = read(keys, argv, 0)
    return { now, unpack_list(R, 1, n) }
  end
  return redis.error_reply('cvgate quota script: unknown op')
end

if redis.register_function then -- FUNCTION LOAD: the library, named by redis.rs (FUNCTION_NAME)
  redis.register_function(FUNCTION_NAME, run)
else -- EVAL/EVALSHA
  if redis.replicate_commands then
    pcall(redis.replicate_commands) -- Redis < 5: needed to write after TIME (a no-op since 7)
  end
  return run(KEYS, ARGV)
end
