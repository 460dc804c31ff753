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
  gw:T:lim:L:win      hash, the minute windows in one-second buckets: per second S, 'rS' requests
                      admitted in it and 'mS' the last one's time, 'tS' tokens held in it; running
                      totals and the oldest second counted (see ADMIT). A second's requests count
                      until its last one is 60 s old, so every 60-second window holds at most the
                      limit (docs/limits.md); a second's tokens count for 60 seconds.
  gw:T:lim:L:conc     requests in flight
  gw:T:lim:L:p:START  hash tok, tokres, cost, costres for the period starting at START
  gw:T:lim:over       hash, limit id -> until when (ms) it reserves the largest answer: set for
                      LIMITS_OVERRUN_MEMORY once a call used well over the estimate it trusted
  gw:T:resv:exp       sorted set of the shard's reservations by expiry, each member the reservation
                      (its id, then its entries as JSON): ADMIT returns it, SETTLE is given it back
The scripts read each key once and write it once (HMGET, then one HSET of every changed field):
a call's Redis work is the number of commands more than what each does, so a window is a hash
with running totals rather than a sorted set of every request of the minute.
The in-flight hash, the cache key and the usage stream (SETTLE's KEYS[2]) carry the same tag.
Money is in integer micro-dollars.
"""

_COMMON = r"""
local P = string.sub(KEYS[1], 1, -9)  -- 'gw:T:' of 'gw:T:resv:exp'
-- Settle a reservation at the real usage; with actual_tok nil (its process died), at what it reserved.
-- A reservation is the member of gw:T:resv:exp that holds it (its id, then its entries as JSON),
-- scored by when it expires: removing it is what settles it once.
local function settle(resv, actual_tok, actual_cost)
  if redis.call('ZREM', KEYS[1], resv) == 0 then return {} end
  local at = string.find(resv, '[', 1, true)
  local data
  if at then data = string.sub(resv, at)
  else data = redis.call('GETDEL', P .. 'resv:' .. resv) end  -- held by the previous release (gw:T:resv:ID)
  if not data then return {} end
  local out = {}
  for _, e in ipairs(cjson.decode(data)) do
    if e.conc then
      local left = redis.call('DECR', P .. 'lim:' .. e.id .. ':conc')
      if left < 0 then redis.call('SET', P .. 'lim:' .. e.id .. ':conc', 0) end
    end
    if e.tpm then
      local held = e.ttok or e.tok
      local used = actual_tok or held
      if used ~= held then
        -- The second's bucket and the window's total, if that second is still in the window.
        local w = P .. 'lim:' .. e.id .. ':win'
        local v = redis.call('HMGET', w, 't' .. e.sec, 't')
        if v[1] then redis.call('HSET', w, 't' .. e.sec, v[1] + used - held, 't', (tonumber(v[2]) or 0) + used - held) end
      end
    end
    -- Well over the estimate it trusted: the upstream ignores max_tokens; reserve the largest answer from now on.
    if e.mem and actual_tok and actual_tok > e.est + math.max(64, math.floor(e.est / 4)) then
      local t = redis.call('TIME')
      redis.call('HSET', P .. 'lim:over', e.id, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + e.mem)
    end
    if e.ph then
      local v = redis.call('HMGET', e.ph, 'tok', 'tokres', 'cost', 'costres')
      -- A period hash gone (expired, or Redis lost it) is rebuilt from the database by the next admission.
      if v[1] then
        local tok = tonumber(v[1]) + (actual_tok or e.tok)
        local cost = tonumber(v[3]) + (actual_cost or e.cost)
        redis.call('HSET', e.ph, 'tok', tok, 'tokres', tonumber(v[2]) - e.tok, 'cost', cost,
                   'costres', tonumber(v[4]) - e.cost)
        table.insert(out, {e.id, tonumber(v[1]), tok, tonumber(v[3]), cost})
      end
    end
  end
  return out
end
"""

# KEYS: the shard's reservation set and usage stream. ARGV: the reservation (ADMIT's 12th reply), tokens, micro-dollars,
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
# round trip rather than one of its own. Its value (or nil) is the reply's 11th item; the 12th is the
# reservation ("" for none), the member of gw:T:resv:exp that SETTLE is given.
# The estimate must fit, and is what a limit reserves while it trusts max_tokens. One that does
# not (it settled a call well over its estimate: gw:T:lim:over, or max_tokens is never trusted)
# reserves the largest answer, or what is left of it, which leaves no room for the next call.
ADMIT = _COMMON + r"""
local now = tonumber(ARGV[1])
local resv = ARGV[2]
local ttl = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local memory = tonumber(ARGV[5])
local trust_all = ARGV[6] == '1'
local sec = math.floor(now / 1000)
-- The second as text, cut from ARGV[1] rather than formatted from the number (a printf each time),
-- and the names of its fields in a window hash.
local S = now >= 1000 and string.sub(ARGV[1], 1, -4) or tostring(sec)
local rS, mS, tS = 'r' .. S, 'm' .. S, 't' .. S

-- A limit's minute windows, one hash (gw:T:lim:L:win). Per second S: 'rS' requests admitted in it and
-- 'mS' the last one's time (ms), 'tS' tokens held in it; 'r' and 't' the totals counted, 'rlo' the
-- oldest second counted for requests and 'rlom' its last request's time, 'tlo' the same for tokens.
-- At time now (in second sec) the requests of seconds sec - 59 .. sec count, and those of second
-- sec - 60 while its last one is under 60 s old: so every 60-second window holds at most the limit.
-- Tokens of seconds sec - 59 .. sec count. When the oldest second leaves (about once a second),
-- the totals are counted afresh and the seconds gone deleted.
local function recount(w, c)
  local all, f = redis.call('HGETALL', w), {}
  for j = 1, #all, 2 do f[all[j]] = all[j + 1] end
  c.r, c.t, c.rlo, c.rlom, c.tlo = 0, 0, nil, nil, nil
  local gone = {}
  for name, value in pairs(f) do
    local k, s = string.sub(name, 1, 1), tonumber(string.sub(name, 2))
    if s and k == 'r' then
      local last = tonumber(f['m' .. s]) or s * 1000 + 999
      if s <= sec - 61 or (s == sec - 60 and last <= now - 60000) then
        table.insert(gone, name); table.insert(gone, 'm' .. s)
      else
        c.r = c.r + tonumber(value)
        if not c.rlo or s < c.rlo then c.rlo, c.rlom = s, last end
      end
    elseif s and k == 't' then
      if s <= sec - 60 then table.insert(gone, name)
      else
        c.t = c.t + tonumber(value)
        if not c.tlo or s < c.tlo then c.tlo = s end
      end
    end
  end
  local set = {'r', c.r, 't', c.t}
  for _, lo in ipairs({'rlo', 'rlom', 'tlo'}) do
    if c[lo] then table.insert(set, lo); table.insert(set, c[lo]) else table.insert(gone, lo) end
  end
  if #gone > 0 then redis.call('HDEL', w, unpack(gone)) end
  redis.call('HSET', w, unpack(set))
end

for _, old in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 50)) do
  settle(old, nil, nil)
end

local rules, wary = {}, {}
local best_req, best_tok = nil, nil
for r = 0, n - 1 do
  local b = 7 + r * 12
  local rule = {id = ARGV[b], rpm = tonumber(ARGV[b + 1]), tpm = tonumber(ARGV[b + 2]),
                conc = tonumber(ARGV[b + 3]), quota = tonumber(ARGV[b + 4]), budget = tonumber(ARGV[b + 5]),
                pstart = ARGV[b + 6], tok = tonumber(ARGV[b + 8]), cost = tonumber(ARGV[b + 9]), b = b}
  -- The period's end and the largest answer are read (tonumber) only where used: a strtod each.
  rule.ttok, rule.ptok, rule.pcost = rule.tok, rule.tok, rule.cost
  rule.base = P .. 'lim:' .. rule.id
  rule.trust = trust_all
  if trust_all and (rule.tpm > 0 or rule.quota > 0 or rule.budget > 0) then table.insert(wary, rule.id) end
  table.insert(rules, rule)
end
-- The limits that settled an overrun in the last LIMITS_OVERRUN_MEMORY (gw:T:lim:over, limit id ->
-- until when, ms) no longer trust max_tokens: one read for all of the call's limits.
if #wary > 0 then
  local untrusted, gone = {}, {}
  for i, until_ms in ipairs(redis.call('HMGET', P .. 'lim:over', unpack(wary))) do
    if until_ms then
      if tonumber(until_ms) > now then untrusted[wary[i]] = true else table.insert(gone, wary[i]) end
    end
  end
  if #gone > 0 then redis.call('HDEL', P .. 'lim:over', unpack(gone)) end
  for _, rule in ipairs(rules) do
    if untrusted[rule.id] then rule.trust = false end
  end
end

for _, rule in ipairs(rules) do
  local base = rule.base
  if rule.conc > 0 then
    local inflight = tonumber(redis.call('GET', base .. ':conc') or '0')
    if inflight + 1 > rule.conc then return {0, 'concurrency_limit_exceeded', 1000, rule.id} end
  end
  if rule.rpm > 0 or rule.tpm > 0 then
    rule.w = base .. ':win'
    local v = redis.call('HMGET', rule.w, 'r', 'rlo', 'rlom', 't', 'tlo', rS, mS, tS)
    local c = {r = tonumber(v[1]) or 0, rlo = tonumber(v[2]), rlom = tonumber(v[3]), t = tonumber(v[4]) or 0,
               tlo = tonumber(v[5]), rs = tonumber(v[6]) or 0, ms = tonumber(v[7]) or 0, ts = tonumber(v[8]) or 0}
    c.new = (rule.rpm > 0 and not v[6]) or (rule.tpm > 0 and not v[8])
    if (c.rlo and (c.rlo <= sec - 61 or (c.rlo == sec - 60 and (c.rlom or 0) <= now - 60000)))
        or (c.tlo and c.tlo <= sec - 60) then
      recount(rule.w, c)
    end
    rule.c = c
    if rule.rpm > 0 then
      -- Room comes back when the oldest second's last request is 60 s old.
      local reset = 0
      if c.r > 0 then reset = (c.rlom or now) + 60000 - now end
      if c.r + 1 > rule.rpm then return {0, 'rate_limit_exceeded', reset, rule.id} end
      if not best_req or rule.rpm - c.r - 1 < best_req[2] then best_req = {rule.rpm, rule.rpm - c.r - 1, reset} end
    end
    if rule.tpm > 0 then
      local reset = 0
      if c.tlo then reset = (c.tlo + 60) * 1000 - now end
      if c.t + rule.tok > rule.tpm then return {0, 'tokens_per_minute_exceeded', math.max(reset, 1000), rule.id} end
      if not rule.trust then rule.ttok = math.max(rule.tok, math.min(tonumber(ARGV[rule.b + 10]), rule.tpm - c.t)) end
      if not best_tok or rule.tpm - c.t - rule.ttok < best_tok[2] then
        best_tok = {rule.tpm, rule.tpm - c.t - rule.ttok, reset}
      end
    end
  end
  if rule.quota > 0 or rule.budget > 0 then
    rule.ph = base .. ':p:' .. rule.pstart
    local v = redis.call('HMGET', rule.ph, 'tok', 'tokres', 'cost', 'costres')
    if not v[1] then return {2, 'rebuild', 0, rule.id} end
    rule.pv = {tonumber(v[1]), tonumber(v[2]), tonumber(v[3]), tonumber(v[4])}
    local retry = 0
    local pexp = tonumber(ARGV[rule.b + 7])
    if pexp > 0 then retry = pexp - now end
    if rule.quota > 0 and rule.pv[1] + rule.pv[2] + rule.tok > rule.quota then
      return {0, 'quota_exceeded', retry, rule.id}
    end
    if rule.budget > 0 and rule.pv[3] + rule.pv[4] + rule.cost > rule.budget then
      return {0, 'budget_exceeded', retry, rule.id}
    end
    if rule.quota > 0 and not rule.trust then
      rule.ptok = math.max(rule.tok, math.min(tonumber(ARGV[rule.b + 10]), rule.quota - rule.pv[1] - rule.pv[2]))
    end
    if rule.budget > 0 and not rule.trust then
      rule.pcost = math.max(rule.cost, math.min(tonumber(ARGV[rule.b + 11]), rule.budget - rule.pv[3] - rule.pv[4]))
    end
  end
end

-- The reservation's entries, written as JSON here rather than by cjson.encode from tables: a
-- number still at its argument's value is that argument's text, not formatted again. SETTLE
-- reads them with cjson.decode: {id, tok, cost; tpm, sec, ttok; conc; mem, est; ph}.
local entries = {}
for _, rule in ipairs(rules) do
  local base, b = rule.base, rule.b
  local tok_text = ARGV[b + 8]
  local e = {'{"id":"', rule.id, '","tok":', rule.ptok == rule.tok and tok_text or tostring(rule.ptok),
             ',"cost":', rule.pcost == rule.cost and ARGV[b + 9] or tostring(rule.pcost)}
  if rule.w then
    local c, f = rule.c, {}
    if rule.rpm > 0 then
      local last = math.max(c.ms, now)
      f = {'r', c.r + 1, rS, c.rs + 1, mS, last}
      if not c.rlo or sec <= c.rlo then
        table.insert(f, 'rlo'); table.insert(f, S); table.insert(f, 'rlom'); table.insert(f, last)
      end
    end
    if rule.tpm > 0 then
      table.insert(f, 't'); table.insert(f, c.t + rule.ttok)
      table.insert(f, tS); table.insert(f, c.ts + rule.ttok)
      if not c.tlo or sec < c.tlo then table.insert(f, 'tlo'); table.insert(f, S) end
      e[#e + 1] = ',"tpm":true,"sec":"' .. S .. '","ttok":' .. (rule.ttok == rule.tok and tok_text or tostring(rule.ttok))
    end
    redis.call('HSET', rule.w, unpack(f))
    -- Set once per second: the key outlives its newest second by the 61 the window holds it.
    if c.new then redis.call('PEXPIRE', rule.w, 62000) end
  end
  if rule.conc > 0 then
    redis.call('INCR', base .. ':conc')
    redis.call('PEXPIRE', base .. ':conc', ttl * 2)
    e[#e + 1] = ',"conc":true'
  end
  -- Only a limit on tokens or money minds an overrun (it then reserves the largest answer).
  if rule.trust and memory > 0 and (rule.tpm > 0 or rule.ph) then
    e[#e + 1] = ',"mem":' .. ARGV[5] .. ',"est":' .. tok_text
  end
  if rule.ph then
    -- Its expiry was set when the period's counters were seeded (REBUILD).
    redis.call('HSET', rule.ph, 'tokres', rule.pv[2] + rule.ptok, 'costres', rule.pv[4] + rule.pcost)
    e[#e + 1] = ',"ph":"' .. rule.ph .. '"'
  end
  e[#e + 1] = '}'
  entries[#entries + 1] = table.concat(e)
end
local held = ''
if #entries > 0 then
  held = resv .. '[' .. table.concat(entries, ',') .. ']'
  redis.call('ZADD', KEYS[1], now + ttl, held)
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
return {1, 'ok', 0, '', best_req[1], best_req[2], best_req[3], best_tok[1], best_tok[2], best_tok[3], read, held}
"""

# Seed a period's counters from the database (only if still missing).
REBUILD = r"""
if redis.call('HSETNX', KEYS[1], 'tok', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'cost', ARGV[2], 'tokres', 0, 'costres', 0)
  if tonumber(ARGV[3]) > 0 then redis.call('PEXPIREAT', KEYS[1], ARGV[3]) end
end
return 1
"""
