//! The Lua scripts: every directory write is one of these, run atomically by
//! Redis (EVALSHA through `redis::Script`).
//!
//! Ground rules:
//! - **Fencing first.** Every write by a node carries the node's epoch and
//!   starts with the fence check: if the node's epoch key holds another value,
//!   the node has been declared lost (or replaced) and the write is refused
//!   (`fenced:<current>`). A missing epoch key means Redis lost its data (a
//!   restart without persistence): `unknown_node`, and the node re-joins with
//!   the epoch it holds before retrying.
//! - **Versions only grow.** A write names the version it was based on; a
//!   different stored version refuses it (`stale:<current>`). An end adds one.
//! - **An end publishes its invalidation inside the script**, so the write and
//!   the publication cannot be separated by a crash.
//! - Answers are short `:`-separated strings (node ids cannot contain `:`).

/// Ends every live session in a node's set with `node_lost` (a takeover, or a
/// fresh start of a node whose previous run left sessions behind).
const END_ALL: &str = r#"
local function end_all(sessions_key, node, prefix, tomb_ms, channel, by)
  local ended = 0
  for _, sid in ipairs(redis.call('SMEMBERS', sessions_key)) do
    local key = prefix .. sid
    local f = redis.call('HMGET', key, 'node', 'state', 'version')
    if f[1] == node and f[2] == 'live' then
      local version = tonumber(f[3]) + 1
      redis.call('HSET', key, 'state', 'ended', 'reason', 'node_lost', 'version', version)
      redis.call('PEXPIRE', key, tomb_ms)
      redis.call('PUBLISH', channel, cjson.encode({id = sid, version = version, reason = 'node_lost', node = node, by = by}))
      ended = ended + 1
    end
  end
  redis.call('DEL', sessions_key)
  return ended
end
"#;

/// The fence check; KEYS[1] is the writer's epoch key, ARGV[2] its epoch.
const FENCE: &str = r#"
local current_epoch = redis.call('GET', KEYS[1])
if not current_epoch then return 'unknown_node' end
if current_epoch ~= ARGV[2] then return 'fenced:' .. current_epoch end
"#;

/// A fresh node process joins: refused while its id heartbeats; else a new
/// epoch (fencing any earlier run under this id) and the earlier run's
/// sessions end with `node_lost`.
/// KEYS: epoch, heartbeat, nodes, node sessions.
/// ARGV: node, node ttl ms, session key prefix, tombstone ttl ms, channel.
const JOIN: &str = r#"
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then return 'in_use:' .. ttl end
local epoch = redis.call('INCR', KEYS[1])
local ended = end_all(KEYS[4], ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[1])
redis.call('SET', KEYS[2], epoch, 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
return 'ok:' .. epoch .. ':' .. ended
"#;

/// The heartbeat, which also re-joins after Redis lost its data.
/// KEYS: epoch, heartbeat, nodes. ARGV: node, epoch, node ttl ms.
const HEARTBEAT: &str = r#"
local current_epoch = redis.call('GET', KEYS[1])
if not current_epoch then
  redis.call('SET', KEYS[1], ARGV[2])
elseif current_epoch ~= ARGV[2] then
  return 'fenced:' .. current_epoch
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1])
return 'ok'
"#;

/// Registers a session as owned by the node (idempotent for its own entry).
/// KEYS: epoch, session, node sessions.
/// ARGV: node, epoch, owner (user), version, session ttl ms, session id.
const REGISTER: &str = r#"
local f = redis.call('HMGET', KEYS[2], 'node', 'state', 'version', 'reason')
if f[1] then
  if f[2] == 'ended' then return 'ended:' .. f[3] .. ':' .. f[4] end
  if f[1] ~= ARGV[1] then return 'owned:' .. f[1] end
  if tonumber(ARGV[4]) < tonumber(f[3]) then return 'stale:' .. f[3] end
  redis.call('HSET', KEYS[2], 'epoch', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  redis.call('SADD', KEYS[3], ARGV[6])
  return 'ok:' .. f[3]
end
redis.call('HSET', KEYS[2], 'node', ARGV[1], 'epoch', ARGV[2], 'owner', ARGV[3], 'version', ARGV[4], 'state', 'live')
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('SADD', KEYS[3], ARGV[6])
return 'ok:' .. ARGV[4]
"#;

/// Renews a batch of the node's entries (coalesced activity).
/// KEYS: epoch, then one session key per entry.
/// ARGV: node, epoch, session ttl ms, then the version of each entry.
/// Answer: `ok|` then one of ok, missing, lost, stale:<v> per entry, comma-separated.
const RENEW: &str = r#"
local out = {}
for i = 2, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'node', 'state', 'version')
  if not f[1] then
    out[#out + 1] = 'missing'
  elseif f[1] ~= ARGV[1] or f[2] ~= 'live' then
    out[#out + 1] = 'lost'
  elseif f[3] ~= ARGV[2 + i] then
    out[#out + 1] = 'stale:' .. f[3]
  else
    redis.call('PEXPIRE', KEYS[i], ARGV[3])
    out[#out + 1] = 'ok'
  end
end
return 'ok|' .. table.concat(out, ',')
"#;

/// Ends a session: checks owner and version, keeps a tombstone, publishes the
/// invalidation. A missing entry (expired, or lost with Redis's data) becomes
/// a tombstone too, so the end is still published and the id stays ended.
/// KEYS: epoch, session, node sessions.
/// ARGV: node, epoch, expected version, reason, tombstone ttl ms, session id, channel.
const END: &str = r#"
local f = redis.call('HMGET', KEYS[2], 'node', 'state', 'version', 'reason')
local version
if not f[1] then
  version = tonumber(ARGV[3]) + 1
  redis.call('HSET', KEYS[2], 'node', ARGV[1], 'epoch', ARGV[2], 'version', version)
else
  if f[1] ~= ARGV[1] then return 'owned:' .. f[1] end
  if f[2] == 'ended' then return 'ended:' .. f[3] .. ':' .. f[4] end
  if f[3] ~= ARGV[3] then return 'stale:' .. f[3] end
  version = tonumber(f[3]) + 1
end
redis.call('HSET', KEYS[2], 'state', 'ended', 'reason', ARGV[4], 'version', version)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('SREM', KEYS[3], ARGV[6])
redis.call('PUBLISH', ARGV[7], cjson.encode({id = ARGV[6], version = version, reason = ARGV[4], node = ARGV[1], by = ARGV[1]}))
return 'ok:' .. version
"#;

/// Declares a silent node lost: bumps its epoch (fencing it for good) and
/// ends its sessions with `node_lost`. Only one survivor wins; the others get
/// `gone` (or `alive` if the node heartbeated meanwhile).
/// KEYS: lost node's epoch, its heartbeat, nodes, its sessions.
/// ARGV: lost node, session key prefix, tombstone ttl ms, channel, by (the survivor).
const TAKEOVER: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 'alive' end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then return 'gone' end
local epoch = redis.call('INCR', KEYS[1])
local ended = end_all(KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
redis.call('SREM', KEYS[3], ARGV[1])
return 'ok:' .. epoch .. ':' .. ended
"#;

/// A clean goodbye: the heartbeat goes, the node leaves the set.
/// KEYS: epoch, heartbeat, nodes. ARGV: node, epoch.
const LEAVE: &str = r#"
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return 'ok'
"#;

/// The scripts, loaded once per node (redis-rs sends EVALSHA, and the source
/// only when Redis answers NOSCRIPT, e.g. after a restart).
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) join: redis::Script,
    pub(crate) heartbeat: redis::Script,
    pub(crate) register: redis::Script,
    pub(crate) renew: redis::Script,
    pub(crate) end: redis::Script,
    pub(crate) takeover: redis::Script,
    pub(crate) leave: redis::Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let fenced = |body: &str| redis::Script::new(&format!("{FENCE}{body}"));
        Scripts {
            join: redis::Script::new(&format!("{END_ALL}{JOIN}")),
            heartbeat: redis::Script::new(HEARTBEAT),
            register: fenced(REGISTER),
            renew: fenced(RENEW),
            end: fenced(END),
            takeover: redis::Script::new(&format!("{END_ALL}{TAKEOVER}")),
            leave: fenced(LEAVE),
        }
    }
}
