"""The Redis side of admission: two Lua scripts, so that each step is atomic.

ADMIT checks every applicable limit of a request and, only if all pass,
reserves its estimated tokens and cost against each: one round trip, and no
other request can slip in between the check and the reservation. SETTLE
replaces a reservation with the real usage, once: the reservation is deleted
as it is settled, so a second settle finds nothing. Reservations whose process
died are settled at what they reserved by the next ADMIT after they expire.

Keys, per limit id L, all under the tenant's hash tag T (gateway_project/lib/redis_keys.py),
so that a script touches one hash slot; KEYS[1] is gw:T:resv:exp, and the script builds the
others from its prefix gw:T:
  gw:T:lim:L:req      sorted set, one member (the reservation id) per admitted request (sliding minute)
  gw:T:lim:L:tpm      hash second -> tokens (sliding minute, one-second buckets)
  gw:T:lim:L:conc     requests in flight
  gw:T:lim:L:p:START  hash tok, tokres, cost, costres for the period starting at START
  gw:T:lim:L:over     set (for LIMITS_OVERRUN_MEMORY) once a call used well over the estimate the
                      limit trusted: its calls then reserve their largest answer
  gw:T:resv:ID        a reservation (JSON); gw:T:resv:exp orders the shard's by expiry
The in-flight hash, the cache key and the usage stream (SETTLE's KEYS[2]) carry the same tag.
Money is in integer micro-dollars.
"""

_COMMON = r"""
local P = string.sub(KEYS[1], 1, -9)  -- 'gw:T:' of 'gw:T:resv:exp'
-- Settle a reservation at the real usage; with actual_tok nil (its process died), at what it reserved.
local function settle(resv, actual_tok, actual_cost)
  local data = redis.call('GET', P .. 'resv:' .. resv)
  redis.call('ZREM', KEYS[1], resv)
  if not data then return {} end
  redis.call('DEL', P .. 'resv:' .. resv)
  local out = {}
  for _, e in ipairs(cjson.decode(data)) do
    if e.conc then
      local left = redis.call('DECR', P .. 'lim:' .. e.id .. ':conc')
      if left < 0 then redis.call('SET', P .. 'lim:' .. e.id .. ':conc', 0) end
    end
    if e.tpm then
      local held = e.ttok or e.tok
      local used = actual_tok or held
      local tk = P .. 'lim:' .. e.id .. ':tpm'
      if used ~= held and redis.call('HEXISTS', tk, e.sec) == 1 then redis.call('HINCRBY', tk, e.sec, used - held) end
    end
    -- Well over the estimate it trusted: the upstream ignores max_tokens; reserve the largest answer from now on.
    if e.mem and actual_tok and actual_tok > e.est + math.max(64, math.floor(e.est / 4)) then
      redis.call('SET', P .. 'lim:' .. e.id .. ':over', 1, 'PX', e.mem)
    end
    if e.ph then
      local before = redis.call('HMGET', e.ph, 'tok', 'cost')
      -- 0 - x, not -x: Lua renders -0 as "-0", which Redis refuses as an integer.
      redis.call('HINCRBY', e.ph, 'tokres', 0 - e.tok)
      redis.call('HINCRBY', e.ph, 'costres', 0 - e.cost)
      local tok = redis.call('HINCRBY', e.ph, 'tok', actual_tok or e.tok)
      local cost = redis.call('HINCRBY', e.ph, 'cost', actual_cost or e.cost)
      table.insert(out, {e.id, tonumber(before[1]) or 0, tok, tonumber(before[2]) or 0, cost})
    end
  end
  return out
end
"""

# KEYS: the shard's reservation set and usage stream. ARGV: reservation id, tokens, micro-dollars,
# and optionally the usage event, appended to that stream in the same step (one round trip, not two), and
# the hash and field of the stream's in-flight entry, deleted with it ("" for none);
# then, optionally, keys to SET in the same step, each with its value, a TTL in seconds and a sorted
# set to record when it expires in ("" for none): the response cache's entry of the answer, and its
# expiry for the evictions count (routing/cache/store.py).
SETTLE = _COMMON + r"""
local out = settle(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
if ARGV[4] and ARGV[4] ~= '' then redis.call('XADD', KEYS[2], '*', 'e', ARGV[4]) end
if ARGV[5] and ARGV[5] ~= '' then redis.call('HDEL', ARGV[5], ARGV[6]) end
if #ARGV >= 7 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for w = 7, #ARGV, 4 do
    redis.call('SET', ARGV[w], ARGV[w + 1], 'EX', ARGV[w + 2])
    if ARGV[w + 3] ~= '' then redis.call('ZADD', ARGV[w + 3], now + tonumber(ARGV[w + 2]) * 1000, ARGV[w]) end
  end
end
return out
"""

# KEYS: the shard's reservation set. ARGV: now_ms, reservation id, ttl_ms, rule count, overrun
# memory (ms), whether max_tokens is trusted at all (1/0), then 12 values per rule: id, rpm, tpm, concurrency, token quota, budget,
# period start, period end (ms, 0 = never), estimated tokens, estimated cost, the largest answer's
# tokens and cost. A limit of 0 means "no limit". Then, optionally, the call's in-flight entry
# (hash, request id, event; usage/inflight.py; "" for none), written only if the call is admitted,
# and a key to read for the caller once admitted, with the TTL to renew it at (0: a plain GET) and a
# sorted set to record its renewed expiry in ("" for none): the response cache's lookup, in this
# round trip rather than one of its own. Its value (or nil) is the reply's 11th item.
# The estimate must fit, and is what a limit reserves while it trusts max_tokens. One that does
# not (it settled a call well over its estimate: gw:T:lim:L:over, or max_tokens is never trusted)
# reserves the largest answer, or what is left of it, which leaves no room for the next call.
ADMIT = _COMMON + r"""
local now = tonumber(ARGV[1])
local resv = ARGV[2]
local ttl = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local memory = tonumber(ARGV[5])
local trust_all = ARGV[6] == '1'
local sec = math.floor(now / 1000)

for _, old in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 50)) do
  settle(old, nil, nil)
end

local rules = {}
local best_req, best_tok = nil, nil
for r = 0, n - 1 do
  local b = 7 + r * 12
  local rule = {id = ARGV[b], rpm = tonumber(ARGV[b + 1]), tpm = tonumber(ARGV[b + 2]),
                conc = tonumber(ARGV[b + 3]), quota = tonumber(ARGV[b + 4]), budget = tonumber(ARGV[b + 5]),
                pstart = ARGV[b + 6], pexp = tonumber(ARGV[b + 7]), tok = tonumber(ARGV[b + 8]),
                cost = tonumber(ARGV[b + 9]), big_tok = tonumber(ARGV[b + 10]),
                big_cost = tonumber(ARGV[b + 11])}
  rule.ttok, rule.ptok, rule.pcost = rule.tok, rule.tok, rule.cost
  local base = P .. 'lim:' .. rule.id
  rule.trust = trust_all and redis.call('EXISTS', base .. ':over') == 0
  if rule.conc > 0 then
    local inflight = tonumber(redis.call('GET', base .. ':conc') or '0')
    if inflight + 1 > rule.conc then return {0, 'concurrency_limit_exceeded', 1000, rule.id} end
  end
  if rule.rpm > 0 then
    local rk = base .. ':req'
    redis.call('ZREMRANGEBYSCORE', rk, '-inf', now - 60000)
    local used = redis.call('ZCARD', rk)
    if used + 1 > rule.rpm then
      local oldest = redis.call('ZRANGE', rk, 0, 0, 'WITHSCORES')
      return {0, 'rate_limit_exceeded', tonumber(oldest[2]) + 60000 - now, rule.id}
    end
    local reset = 0
    if used > 0 then reset = tonumber(redis.call('ZRANGE', rk, 0, 0, 'WITHSCORES')[2]) + 60000 - now end
    if not best_req or rule.rpm - used - 1 < best_req[2] then best_req = {rule.rpm, rule.rpm - used - 1, reset} end
  end
  if rule.tpm > 0 then
    local tk = base .. ':tpm'
    local used, oldest = 0, nil
    local buckets = redis.call('HGETALL', tk)
    for j = 1, #buckets, 2 do
      local s = tonumber(buckets[j])
      if s <= sec - 60 then
        redis.call('HDEL', tk, buckets[j])
      else
        used = used + tonumber(buckets[j + 1])
        if not oldest or s < oldest then oldest = s end
      end
    end
    local reset = 0
    if oldest then reset = (oldest + 60) * 1000 - now end
    if used + rule.tok > rule.tpm then return {0, 'tokens_per_minute_exceeded', math.max(reset, 1000), rule.id} end
    if not rule.trust then rule.ttok = math.max(rule.tok, math.min(rule.big_tok, rule.tpm - used)) end
    if not best_tok or rule.tpm - used - rule.ttok < best_tok[2] then
      best_tok = {rule.tpm, rule.tpm - used - rule.ttok, reset}
    end
  end
  if rule.quota > 0 or rule.budget > 0 then
    rule.ph = base .. ':p:' .. rule.pstart
    local v = redis.call('HMGET', rule.ph, 'tok', 'tokres', 'cost', 'costres')
    if not v[1] then return {2, 'rebuild', 0, rule.id} end
    local retry = 0
    if rule.pexp > 0 then retry = rule.pexp - now end
    if rule.quota > 0 and tonumber(v[1]) + tonumber(v[2]) + rule.tok > rule.quota then
      return {0, 'quota_exceeded', retry, rule.id}
    end
    if rule.budget > 0 and tonumber(v[3]) + tonumber(v[4]) + rule.cost > rule.budget then
      return {0, 'budget_exceeded', retry, rule.id}
    end
    if rule.quota > 0 and not rule.trust then
      rule.ptok = math.max(rule.tok, math.min(rule.big_tok, rule.quota - tonumber(v[1]) - tonumber(v[2])))
    end
    if rule.budget > 0 and not rule.trust then
      rule.pcost = math.max(rule.cost, math.min(rule.big_cost, rule.budget - tonumber(v[3]) - tonumber(v[4])))
    end
  end
  table.insert(rules, rule)
end

local entries = {}
for _, rule in ipairs(rules) do
  local base = P .. 'lim:' .. rule.id
  local e = {id = rule.id, tok = rule.ptok, cost = rule.pcost}
  if rule.rpm > 0 then
    redis.call('ZADD', base .. ':req', now, resv)
    redis.call('PEXPIRE', base .. ':req', 61000)
  end
  if rule.tpm > 0 then
    redis.call('HINCRBY', base .. ':tpm', sec, rule.ttok)
    redis.call('PEXPIRE', base .. ':tpm', 61000)
    e.tpm, e.sec, e.ttok = true, tostring(sec), rule.ttok
  end
  if rule.conc > 0 then
    redis.call('INCR', base .. ':conc')
    redis.call('PEXPIRE', base .. ':conc', ttl * 2)
    e.conc = true
  end
  if rule.trust and memory > 0 then e.mem, e.est = memory, rule.tok end
  if rule.ph then
    redis.call('HINCRBY', rule.ph, 'tokres', rule.ptok)
    redis.call('HINCRBY', rule.ph, 'costres', rule.pcost)
    if rule.pexp > 0 then redis.call('PEXPIREAT', rule.ph, rule.pexp + 86400000) end
    e.ph = rule.ph
  end
  table.insert(entries, e)
end
if #entries > 0 then
  redis.call('SET', P .. 'resv:' .. resv, cjson.encode(entries), 'PX', ttl * 2)
  redis.call('ZADD', KEYS[1], now + ttl, resv)
end
local e = 7 + n * 12
if ARGV[e] and ARGV[e] ~= '' then redis.call('HSET', ARGV[e], ARGV[e + 1], ARGV[e + 2]) end
local read = false
if ARGV[e + 3] then
  if tonumber(ARGV[e + 4]) > 0 then
    read = redis.call('GETEX', ARGV[e + 3], 'EX', ARGV[e + 4])
    if read and ARGV[e + 5] and ARGV[e + 5] ~= '' then
      redis.call('ZADD', ARGV[e + 5], now + tonumber(ARGV[e + 4]) * 1000, ARGV[e + 3])
    end
  else read = redis.call('GET', ARGV[e + 3]) end
end
best_req = best_req or {0, 0, 0}
best_tok = best_tok or {0, 0, 0}
return {1, 'ok', 0, '', best_req[1], best_req[2], best_req[3], best_tok[1], best_tok[2], best_tok[3], read}
"""

# Seed a period's counters from the database (only if still missing).
REBUILD = r"""
if redis.call('HSETNX', KEYS[1], 'tok', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'cost', ARGV[2], 'tokres', 0, 'costres', 0)
  if tonumber(ARGV[3]) > 0 then redis.call('PEXPIREAT', KEYS[1], ARGV[3]) end
end
return 1
"""
