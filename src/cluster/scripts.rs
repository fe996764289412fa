//! The Lua scripts: every directory write is one of these, run atomically by
//! Redis (EVALSHA through `redis::Script`).
//!
//! Ground rules:
//! - **Fencing first.** Every write by a node carries the node's epoch token
//!   (`<epoch>-<incarnation>`, the incarnation a random 64-bit id drawn at
//!   join) and starts with the fence check: if the node's epoch key holds
//!   another value, the node has been declared lost (or replaced) and the
//!   write is refused (`fenced:<current epoch>`). A **missing** epoch key is
//!   fenced too (`fenced:0`): it was deleted, or Redis lost its data, and
//!   either way nobody can tell that this node still owns what it thinks it
//!   owns. Only JOIN creates an epoch; nothing ever re-creates one.
//! - **Epochs stay unique across data loss.** The epoch number comes from a
//!   counter that restarts at 1 if Redis forgets it, but the incarnation id is
//!   random, so two runs never share a token.
//! - **Versions only grow.** A write names the version it was based on; a
//!   different stored version refuses it (`stale:<current>`). An end adds one.
//! - **An end publishes its invalidation inside the script**, so the write and
//!   the publication cannot be separated by a crash. The invalidation is
//!   signed by the node before the call (its version is the expected one plus
//!   one, so it is known in advance); the script publishes it only if the end
//!   is written. Takeovers end many sessions: the script returns their ids and
//!   versions, and the node that won publishes a signed invalidation for each.
//! - Answers are short `:`-separated strings (node ids cannot contain `:`).

/// Ends every live session in a node's set with `node_lost` (a takeover, or a
/// fresh start of a node whose previous run left sessions behind). Appends
/// `<id>:<new version>` for each to `out`.
const END_ALL: &str = r#"
local function end_all(sessions_key, node, prefix, tomb_ms, out)
  for _, sid in ipairs(redis.call('SMEMBERS', sessions_key)) do
    local key = prefix .. sid
    local f = redis.call('HMGET', key, 'node', 'state', 'version')
    if f[1] == node and f[2] == 'live' then
      local version = tonumber(f[3]) + 1
      redis.call('HSET', key, 'state', 'ended', 'reason', 'node_lost', 'version', version)
      redis.call('PEXPIRE', key, tomb_ms)
      out[#out + 1] = sid .. ':' .. version
    end
  end
  redis.call('DEL', sessions_key)
end
"#;

/// The fence check; KEYS[1] is the writer's epoch key, ARGV[2] its epoch token.
const FENCE: &str = r#"
local current_epoch = redis.call('GET', KEYS[1])
if not current_epoch then return 'fenced:0' end
if current_epoch ~= ARGV[2] then return 'fenced:' .. string.match(current_epoch, '^%d+') end
"#;

/// The fence check for scripts that answer with a list.
const FENCE_LIST: &str = r#"
local current_epoch = redis.call('GET', KEYS[1])
if not current_epoch then return {'fenced:0'} end
if current_epoch ~= ARGV[2] then return {'fenced:' .. string.match(current_epoch, '^%d+')} end
"#;

/// A fresh node process joins: refused while its id heartbeats; else a new
/// epoch token (fencing any earlier run under this id) and the earlier run's
/// sessions end with `node_lost`.
/// KEYS: epoch, heartbeat, nodes, node sessions, epoch counter.
/// ARGV: node, node ttl ms, session key prefix, tombstone ttl ms, incarnation.
/// Answer: `ok:<epoch>`, then `<id>:<version>` per session ended; or `in_use:<ttl>`.
const JOIN: &str = r#"
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then return {'in_use:' .. ttl} end
local epoch = redis.call('INCR', KEYS[5])
local token = epoch .. '-' .. ARGV[5]
redis.call('SET', KEYS[1], token)
local out = {'ok:' .. epoch}
end_all(KEYS[4], ARGV[1], ARGV[3], ARGV[4], out)
redis.call('SET', KEYS[2], token, 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
return out
"#;

/// The heartbeat. Never creates an epoch: a missing one means fenced.
/// KEYS: epoch, heartbeat, nodes. ARGV: node, epoch token, node ttl ms.
const HEARTBEAT: &str = r#"
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1])
return 'ok'
"#;

/// Registers a session as owned by the node (idempotent for its own entry).
/// KEYS: epoch, session, node sessions.
/// ARGV: node, epoch token, owner pseudonym, version, session ttl ms, session id.
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
/// ARGV: node, epoch token, session ttl ms, then the version of each entry.
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
/// (already signed) invalidation. A missing entry (expired) becomes a
/// tombstone too, so the end is still published and the id stays ended.
/// KEYS: epoch, session, node sessions.
/// ARGV: node, epoch token, expected version, reason, tombstone ttl ms,
/// session id, channel, signed invalidation (for version expected + 1).
const END: &str = r#"
local f = redis.call('HMGET', KEYS[2], 'node', 'state', 'version', 'reason')
local version = tonumber(ARGV[3]) + 1
if not f[1] then
  redis.call('HSET', KEYS[2], 'node', ARGV[1], 'epoch', ARGV[2], 'version', version)
else
  if f[1] ~= ARGV[1] then return 'owned:' .. f[1] end
  if f[2] == 'ended' then return 'ended:' .. f[3] .. ':' .. f[4] end
  if f[3] ~= ARGV[3] then return 'stale:' .. f[3] end
end
redis.call('HSET', KEYS[2], 'state', 'ended', 'reason', ARGV[4], 'version', version)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('SREM', KEYS[3], ARGV[6])
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 'ok:' .. version
"#;

/// Declares a silent node lost: replaces its epoch token (fencing it for
/// good) and ends its sessions with `node_lost`. Only one survivor wins; the
/// others get `gone` (or `alive` if the node heartbeated meanwhile). Whether
/// the survivor may declare anyone lost at all (its own connection has been
/// up for a whole TTL) is decided before the call (`liveness.rs`).
/// The survivor must itself hold its current epoch token and a live
/// heartbeat: a survivor that was frozen and fenced meanwhile declares no one.
/// KEYS: lost node's epoch, its heartbeat, nodes, its sessions, its epoch
/// counter, the survivor's epoch, the survivor's heartbeat.
/// ARGV: lost node, session key prefix, tombstone ttl ms, by (the survivor), the survivor's token.
/// Answer: `ok:<new epoch>`, then `<id>:<version>` per session ended; or
/// `alive` / `gone` / `not_current` (the survivor is not current itself).
const TAKEOVER: &str = r#"
if redis.call('GET', KEYS[6]) ~= ARGV[5] or redis.call('EXISTS', KEYS[7]) == 0 then return {'not_current'} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'alive'} end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then return {'gone'} end
local epoch = redis.call('INCR', KEYS[5])
redis.call('SET', KEYS[1], epoch .. '-fenced-by-' .. ARGV[4])
local out = {'ok:' .. epoch}
end_all(KEYS[4], ARGV[1], ARGV[2], ARGV[3], out)
redis.call('SREM', KEYS[3], ARGV[1])
return out
"#;

/// A clean goodbye: the node's token is retired (nothing can write with it
/// again), entries still live under it end with `node_lost` (their end was
/// dropped), the heartbeat goes, the node leaves the set.
/// KEYS: epoch, heartbeat, nodes, node sessions, epoch counter.
/// ARGV: node, epoch token, session key prefix, tombstone ttl ms.
/// Answer: `ok`, then `<id>:<version>` per session ended; or `fenced:<epoch>`.
const LEAVE: &str = r#"
local epoch = redis.call('INCR', KEYS[5])
redis.call('SET', KEYS[1], epoch .. '-left')
local out = {'ok'}
end_all(KEYS[4], ARGV[1], ARGV[3], ARGV[4], out)
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return out
"#;

/// Whether the directory agrees that a session ended: its entry is ended
/// at `version` or later. KEYS: session. ARGV: version.
const CONFIRM_END: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'state', 'version')
if f[1] == 'ended' and tonumber(f[2]) >= tonumber(ARGV[1]) then return 'ended' end
return 'no'
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
    pub(crate) confirm_end: redis::Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let fenced = |body: &str| redis::Script::new(&format!("{FENCE}{body}"));
        Scripts {
            join: redis::Script::new(&format!("{END_ALL}{JOIN}")),
            heartbeat: fenced(HEARTBEAT),
            register: fenced(REGISTER),
            renew: fenced(RENEW),
            end: fenced(END),
            takeover: redis::Script::new(&format!("{END_ALL}{TAKEOVER}")),
            leave: redis::Script::new(&format!("{END_ALL}{FENCE_LIST}{LEAVE}")),
            confirm_end: redis::Script::new(CONFIRM_END),
        }
    }
}
