"""The Lua scripts the cluster protocol runs in Redis (or Valkey), and `SCRIPTS`,
the table `Store` loads them from (by name).

Each script is one atomic step of the protocol: claims, lookups, releases,
membership, purges of a lapsed incarnation, lease renewals and key watches. The keys
they touch are laid out as `procreg.cluster.store` describes.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLAIM",
    "LOOKUP",
    "MEMBERS",
    "PURGE",
    "RELEASE",
    "RENEW",
    "SCRIPTS",
    "UNWATCH",
    "WATCH",
]

# Claims of many keys in one call (a loop turn's worth).
# KEYS: 1 my owned set, 2 epoch, 3 my lease, 4 grace, 5 watched keys (``kw``), 6 the
#       key-event channel (``kev``)
# ARGV: 1 epoch token, 2 my creation, 3 lease prefix, 4 mode ("new" waits out a grace
#       period, "resync" does not), 5 invalidation channel, 6 table-key prefix, then
#       (table, key, value) triples, canonical. Returns a status string for the whole
#       call ("epoch", "fenced", "grace"), or one result per triple: "" if claimed,
#       else the live holder's value. Only the claims that replaced an entry (its
#       owner's lease had lapsed) are invalidated: no node can have cached a key that
#       had no entry. One PUBLISH carries them all. A claim of a *watched* key (one
#       ``kw`` lists; one EXISTS per call, at the first key claimed, tells whether any
#       is) also publishes key events on ``kev``: "e" for the lapsed holder it
#       replaced, "r" for the new one.
CLAIM: Final = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 'epoch' end
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return 'fenced' end
if ARGV[4] == 'new' and redis.call('EXISTS', KEYS[4]) == 1 then return 'grace' end
local out = {}
local inval = {}
local watched = nil
local events = {}
for i = 7, #ARGV, 3 do
  local ctable, field, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local tkey = ARGV[6] .. ctable
  local cur = redis.call('HGET', tkey, field)
  local held = nil
  if cur then
    local n, c, s = string.match(cur, '^([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)')
    local mine = string.match(value, '^([^\\t]*\\t[^\\t]*\\t[^\\t]*)')
    if n and (n .. '\\t' .. c .. '\\t' .. s) ~= mine and redis.call('GET', ARGV[3] .. n) == c then
      held = cur
    end
  end
  if held then
    out[#out + 1] = held
  else
    redis.call('HSET', tkey, field, value)
    redis.call('SADD', KEYS[1], 't\\31' .. ctable .. '\\31' .. field)
    if cur then inval[#inval + 1] = ctable .. '\\n' .. field end
    if watched == nil then watched = redis.call('EXISTS', KEYS[5]) == 1 end
    if watched and redis.call('HEXISTS', KEYS[5], ctable .. '\\n' .. field) == 1 then
      local new = string.match(value, '^([^\\t]*\\t[^\\t]*\\t[^\\t]*)')
      local old = cur and string.match(cur, '^([^\\t]*\\t[^\\t]*\\t[^\\t]*)')
      if old ~= new then
        if old then events[#events + 1] = 'e\\n' .. ctable .. '\\n' .. field .. '\\n' .. old end
        events[#events + 1] = 'r\\n' .. ctable .. '\\n' .. field .. '\\n' .. new
      end
    end
    out[#out + 1] = ''
  end
end
if #inval > 0 then redis.call('PUBLISH', ARGV[5], table.concat(inval, '\\n')) end
if #events > 0 then redis.call('PUBLISH', KEYS[6], table.concat(events, '\\n')) end
return out
"""

# KEYS: 1 table hash. ARGV: 1 field, 2 lease prefix. The value if its owner is live.
LOOKUP: Final = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return false end
local n, c = string.match(cur, '^([^\\t]*)\\t([^\\t]*)\\t')
if n and redis.call('GET', ARGV[2] .. n) == c then return cur end
return false
"""

# Releases of many entries in one call (a loop turn's worth, up to 500).
# KEYS: 1 my owned set. ARGV: 1 invalidation channel, 2 key prefix, then (kind, name,
#       item, pid string) quadruples, canonical: kind "t" (its process ended) or "u"
#       (unregistered) removes entry `item` of table `name` if `pid` still holds it;
#       kind "g" removes member `pid` from group `name` (`item` unused). One PUBLISH
#       carries the invalidations, one more the key events ("e" or "u") of the removed
#       entries that are watched. Returns how many table entries were removed.
RELEASE: Final = """
local inval = {}
local removed = 0
local kw = ARGV[2] .. 'kw'
local watched = nil
local events = {}
for i = 3, #ARGV, 4 do
  local kind, name, item, pid = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if kind == 't' or kind == 'u' then
    redis.call('SREM', KEYS[1], 't\\31' .. name .. '\\31' .. item)
    local tkey = ARGV[2] .. 't:' .. name
    local cur = redis.call('HGET', tkey, item)
    if cur and string.sub(cur, 1, #pid + 1) == pid .. '\\t' then
      redis.call('HDEL', tkey, item)
      inval[#inval + 1] = name .. '\\n' .. item
      removed = removed + 1
      if watched == nil then watched = redis.call('EXISTS', kw) == 1 end
      if watched and redis.call('HEXISTS', kw, name .. '\\n' .. item) == 1 then
        local code = 'e'
        if kind == 'u' then code = 'u' end
        events[#events + 1] = code .. '\\n' .. name .. '\\n' .. item .. '\\n' .. pid
      end
    end
  else
    redis.call('SREM', ARGV[2] .. 'g:' .. name, pid)
    redis.call('SREM', KEYS[1], 'g\\31' .. name .. '\\31' .. pid)
  end
end
if #inval > 0 then redis.call('PUBLISH', ARGV[1], table.concat(inval, '\\n')) end
if #events > 0 then redis.call('PUBLISH', ARGV[2] .. 'kev', table.concat(events, '\\n')) end
return removed
"""

# KEYS: 1 group set. ARGV: 1 lease prefix. Members whose node incarnation is live.
MEMBERS: Final = """
local out = {}
local live = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local n, c = string.match(m, '^([^\\t]*)\\t([^\\t]*)\\t')
  local key = n .. '\\t' .. c
  if live[key] == nil then live[key] = (redis.call('GET', ARGV[1] .. n) == c) end
  if live[key] then table.insert(out, m) end
end
return out
"""

# KEYS: 1 owned set of a dead incarnation. ARGV: 1 its pid prefix ("node\\tcreation\\t"),
#       2 invalidation channel, 3 key prefix, 4 how many to take. Drops up to that
#       many of the entries it still holds (SPOP: concurrent purges never repeat one)
#       and returns how many are left: the caller repeats until 0, so a node that held
#       a million keys does not block the server for seconds. A dropped entry of a
#       watched key publishes an "e" key event; the incarnation's own watches ("w"
#       members) are counted out of ``kw``; its group watches ("v" members) leave
#       their ``gw`` sets.
PURGE: Final = """
local members = redis.call('SPOP', KEYS[1], tonumber(ARGV[4]))
local inval = {}
local kw = ARGV[3] .. 'kw'
local watched = nil
local events = {}
for _, m in ipairs(members) do
  local kind, key, field = string.match(m, '^(.)\\31([^\\31]*)\\31(.*)$')
  if kind == 't' then
    local cur = redis.call('HGET', ARGV[3] .. 't:' .. key, field)
    if cur and string.sub(cur, 1, #ARGV[1]) == ARGV[1] then
      redis.call('HDEL', ARGV[3] .. 't:' .. key, field)
      inval[#inval + 1] = key .. '\\n' .. field
      if watched == nil then watched = redis.call('EXISTS', kw) == 1 end
      if watched and redis.call('HEXISTS', kw, key .. '\\n' .. field) == 1 then
        local pid = string.match(cur, '^([^\\t]*\\t[^\\t]*\\t[^\\t]*)')
        events[#events + 1] = 'e\\n' .. key .. '\\n' .. field .. '\\n' .. pid
      end
    end
  elseif kind == 'g' then
    redis.call('SREM', ARGV[3] .. 'g:' .. key, field)
  elseif kind == 'v' then
    redis.call('SREM', ARGV[3] .. 'gw:' .. key, field)
  elseif kind == 'w' then
    if redis.call('HINCRBY', kw, key .. '\\n' .. field, -1) <= 0 then
      redis.call('HDEL', kw, key .. '\\n' .. field)
    end
  end
end
if #inval > 0 then redis.call('PUBLISH', ARGV[2], table.concat(inval, '\\n')) end
if #events > 0 then redis.call('PUBLISH', ARGV[3] .. 'kev', table.concat(events, '\\n')) end
return redis.call('SCARD', KEYS[1])
"""

# Key watches (`keywatch`): record that this incarnation watches some keys, and
# publish, on ``kev``, a *marker* with their live holders, so that the node learns the
# state in the order of the key events around it.
# KEYS: 1 my owned set, 2 my lease, 3 watched keys (``kw``), 4 grace, 5 ``kev``.
# ARGV: 1 my creation, 2 lease prefix, 3 table-key prefix, 4 marker head
#       ("m<node>\\n<token>"), then (table, key) pairs, canonical. Publishes
#       "<head>\\n<grace PTTL>\\n<holder>..." (a holder is "node\\tcreation\\tserial"
#       while its owner's lease holds, else empty) and returns "ok"; "fenced" (nothing
#       done) if our lease does not hold our creation. Each watch is counted once per
#       incarnation (the owned set's "w" member gates the count).
WATCH: Final = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 'fenced' end
local out = {ARGV[4], tostring(redis.call('PTTL', KEYS[4]))}
for i = 5, #ARGV, 2 do
  local ctable, field = ARGV[i], ARGV[i + 1]
  if redis.call('SADD', KEYS[1], 'w\\31' .. ctable .. '\\31' .. field) == 1 then
    redis.call('HINCRBY', KEYS[3], ctable .. '\\n' .. field, 1)
  end
  local cur = redis.call('HGET', ARGV[3] .. ctable, field)
  local holder = ''
  if cur then
    local n, c, s = string.match(cur, '^([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)')
    if n and redis.call('GET', ARGV[2] .. n) == c then holder = n .. '\\t' .. c .. '\\t' .. s end
  end
  out[#out + 1] = holder
end
redis.call('PUBLISH', KEYS[5], table.concat(out, '\\n'))
return 'ok'
"""

# KEYS: 1 my owned set, 2 watched keys (``kw``). ARGV: (table, key) pairs, canonical:
#       this incarnation no longer watches them.
UNWATCH: Final = """
for i = 1, #ARGV, 2 do
  if redis.call('SREM', KEYS[1], 'w\\31' .. ARGV[i] .. '\\31' .. ARGV[i + 1]) == 1 then
    local f = ARGV[i] .. '\\n' .. ARGV[i + 1]
    if redis.call('HINCRBY', KEYS[2], f, -1) <= 0 then redis.call('HDEL', KEYS[2], f) end
  end
end
return 1
"""

# KEYS: 1 my lease, 2 epoch. ARGV: 1 my creation, 2 lease ms, 3 epoch token.
RENEW: Final = """
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 'epoch' end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 'ok'
end
return 'lost'
"""

SCRIPTS: Final = {
    "claim": CLAIM,
    "lookup": LOOKUP,
    "release": RELEASE,
    "members": MEMBERS,
    "purge": PURGE,
    "renew": RENEW,
    "watch": WATCH,
    "unwatch": UNWATCH,
}
