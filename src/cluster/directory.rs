//! The session directory in Redis: one entry per session (owner node, epoch,
//! version, state, TTL), node heartbeats and fencing epochs. Every write goes
//! through a Lua script (`scripts.rs`) that checks the writer's epoch and the
//! entry's version atomically.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sessionbus_actors::{EndReason, SessionId};

use super::config::ClusterConfig;
use super::error::ClusterError;
use super::keys::Keys;
use super::scripts::Scripts;

/// Who writes: a node id, the epoch it joined with, and the random
/// incarnation id drawn at that join. A write whose epoch and incarnation are
/// no longer the node's current ones is refused (`ClusterError::Fenced`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStamp {
    /// The node.
    pub node: String,
    /// Its fencing epoch (grows with every join and every takeover of the node).
    pub epoch: u64,
    /// Random per join: keeps epochs unique even after Redis forgot its counter.
    pub incarnation: u64,
}

impl NodeStamp {
    /// The value of the node's epoch key while this stamp is current.
    pub(crate) fn token(&self) -> String {
        format!("{}-{:016x}", self.epoch, self.incarnation)
    }
}

/// A join: the node's new stamp, and the sessions its previous run left
/// behind, ended with `node_lost` (id and new version).
#[derive(Clone, Debug)]
pub struct Joined {
    /// The new stamp.
    pub stamp: NodeStamp,
    /// Sessions of the previous run, ended with `node_lost`.
    pub orphans: Vec<(SessionId, u64)>,
}

/// Whether a directory entry's session is live or ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// Live on its owner node.
    Live,
    /// Ended (the entry is a tombstone until its TTL runs out).
    Ended,
}

/// One session's directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The owner node.
    pub node: String,
    /// The owner node's epoch when it last wrote the entry.
    pub epoch: u64,
    /// Only grows: 1 at registration, +1 at the end.
    pub version: u64,
    /// Live or ended.
    pub state: EntryState,
    /// Why it ended, once ended.
    pub reason: Option<EndReason>,
    /// The session's owner as a pseudonym (`p:` and 32 hex digits, keyed by
    /// the cluster key): the application's user never reaches Redis in clear.
    pub owner: String,
}

/// What a renewal batch found for each entry it was given, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// TTL extended.
    Renewed,
    /// No entry (expired, or Redis lost its data): the owner re-registers it.
    Missing,
    /// Ended, or owned by another node: the owner must not keep it.
    Lost,
    /// The entry holds another version.
    Stale {
        /// The stored version.
        current: u64,
    },
}

/// A takeover of a lost node that this node won.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Takeover {
    /// The lost node.
    pub node: String,
    /// Its new (fencing) epoch.
    pub epoch: u64,
    /// Sessions ended with `node_lost`.
    pub sessions_ended: u64,
    /// Those sessions, with their new versions (the winner publishes their invalidations).
    pub ended: Vec<(SessionId, u64)>,
}

/// `<id>:<version>` lines of a script's answer.
/// A duration in whole milliseconds, as Redis takes TTLs (validation keeps
/// every configured duration at 1 ms or more and under ten years).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn ended_list(lines: &[String]) -> Vec<(SessionId, u64)> {
    lines
        .iter()
        .filter_map(|line| {
            let (id, version) = line.split_once(':')?;
            Some((SessionId::from_str(id).ok()?, version.parse().ok()?))
        })
        .collect()
}

/// The Redis directory. Cheap to clone (one multiplexed, self-reconnecting connection).
#[derive(Clone)]
pub struct Directory {
    conn: ConnectionManager,
    client: redis::Client,
    keys: Keys,
    scripts: std::sync::Arc<Scripts>,
    node_ttl_ms: u64,
    session_ttl_ms: u64,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("keys", &self.keys)
            .finish()
    }
}

/// Parses a script's `:`-separated answer.
fn parts(answer: &str) -> Vec<&str> {
    answer.split(':').collect()
}

/// The epoch number of an epoch token (`<epoch>-…`).
fn epoch_of(token: &str) -> u64 {
    token
        .split('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn num(text: Option<&&str>) -> u64 {
    text.and_then(|t| t.parse().ok()).unwrap_or(0)
}

fn reason(text: Option<&&str>) -> EndReason {
    text.and_then(|t| EndReason::ALL.iter().copied().find(|r| r.as_str() == *t))
        .unwrap_or(EndReason::NodeLost)
}

impl Directory {
    /// Checks the URL and connects. Misconfiguration and an unreachable Redis
    /// are typed errors; nothing keeps running after one.
    pub async fn connect(config: &ClusterConfig) -> Result<Directory, ClusterError> {
        config.validate()?;
        let client = client_for(config)?;
        let timeout = config.forward_timeout.max(Duration::from_millis(500));
        // One connection attempt per reconnect, no backoff of its own: the
        // heartbeat drives reconnection, once per heartbeat interval. After
        // an outage every node must be back well within `node_ttl` of the
        // others, or the first one back would see them silent; the client's
        // own backoff (seconds, with jitter) spread them by more than a TTL.
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_with_config(client.clone(), manager)
            .await
            .map_err(|source| ClusterError::Unreachable {
                url: config.redacted_url(),
                source,
            })?;
        Ok(Directory {
            conn,
            client,
            keys: Keys::new(&config.key_prefix),
            scripts: std::sync::Arc::new(Scripts::new()),
            node_ttl_ms: millis(config.node_ttl),
            session_ttl_ms: millis(config.session_ttl),
        })
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Tombstones live as long as live entries: long enough for every node to
    /// hear of the end, or to find it at resync.
    fn tombstone_ttl_ms(&self) -> u64 {
        self.session_ttl_ms
    }

    fn fenced(stamp: &NodeStamp, answer: &[&str]) -> ClusterError {
        ClusterError::Fenced {
            node: stamp.node.clone(),
            epoch: stamp.epoch,
            current: num(answer.get(1)),
        }
    }

    /// Joins as a fresh run of `node`: a new epoch and incarnation, and
    /// sessions a previous run left behind ended with `node_lost`.
    pub async fn join(&self, node: &str) -> Result<Joined, ClusterError> {
        let k = &self.keys;
        let incarnation: u64 = rand::random();
        let answer: Vec<String> = self
            .scripts
            .join
            .key(k.epoch(node))
            .key(k.heartbeat(node))
            .key(k.nodes())
            .key(k.node_sessions(node))
            .key(k.epoch_counter(node))
            .arg(node)
            .arg(self.node_ttl_ms)
            .arg(k.session_prefix())
            .arg(self.tombstone_ttl_ms())
            .arg(format!("{incarnation:016x}"))
            .invoke_async(&mut self.conn())
            .await?;
        let first = answer.first().map(String::as_str).unwrap_or("");
        let p = parts(first);
        match p[0] {
            "ok" => Ok(Joined {
                stamp: NodeStamp {
                    node: node.to_string(),
                    epoch: num(p.get(1)),
                    incarnation,
                },
                orphans: ended_list(&answer[1..]),
            }),
            _ => Err(ClusterError::NodeIdInUse {
                node: node.to_string(),
                ago_ms: p.get(1).and_then(|t| t.parse().ok()).unwrap_or(0),
            }),
        }
    }

    /// Refreshes the node's heartbeat. Refused (`Fenced`) if the node's
    /// epoch key holds another token or none at all.
    pub async fn heartbeat(&self, stamp: &NodeStamp) -> Result<(), ClusterError> {
        let k = &self.keys;
        let answer: String = self
            .scripts
            .heartbeat
            .key(k.epoch(&stamp.node))
            .key(k.heartbeat(&stamp.node))
            .key(k.nodes())
            .arg(&stamp.node)
            .arg(stamp.token())
            .arg(self.node_ttl_ms)
            .invoke_async(&mut self.conn())
            .await?;
        let p = parts(&answer);
        match p[0] {
            "ok" => Ok(()),
            _ => Err(Self::fenced(stamp, &p)),
        }
    }

    /// Runs a fenced script.
    async fn fenced_script<'s>(
        &'s self,
        invocation: impl Fn() -> redis::ScriptInvocation<'s>,
    ) -> Result<String, ClusterError> {
        Ok(invocation().invoke_async(&mut self.conn()).await?)
    }

    /// Registers `id` as owned by the stamp's node, at `version`. Idempotent
    /// for the node's own live entry.
    pub async fn register(
        &self,
        stamp: &NodeStamp,
        id: SessionId,
        owner: &str,
        version: u64,
    ) -> Result<u64, ClusterError> {
        let k = &self.keys;
        let answer = self
            .fenced_script(|| {
                let mut i = self.scripts.register.key(k.epoch(&stamp.node));
                i.key(k.session(id))
                    .key(k.node_sessions(&stamp.node))
                    .arg(&stamp.node)
                    .arg(stamp.token())
                    .arg(owner)
                    .arg(version)
                    .arg(self.session_ttl_ms)
                    .arg(id.to_string());
                i
            })
            .await?;
        let p = parts(&answer);
        match p[0] {
            "ok" => Ok(num(p.get(1))),
            "fenced" => Err(Self::fenced(stamp, &p)),
            "ended" => Err(ClusterError::Ended {
                id,
                version: num(p.get(1)),
                reason: reason(p.get(2)),
            }),
            "owned" => Err(ClusterError::NotOwner {
                id,
                owner: p.get(1).unwrap_or(&"").to_string(),
            }),
            _ => Err(ClusterError::StaleVersion {
                id,
                expected: version,
                current: num(p.get(1)),
            }),
        }
    }

    /// Renews the entries of `sessions` (id, version) in one script call.
    pub async fn renew(
        &self,
        stamp: &NodeStamp,
        sessions: &[(SessionId, u64)],
    ) -> Result<Vec<Renewal>, ClusterError> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let k = &self.keys;
        let answer = self
            .fenced_script(|| {
                let mut i = self.scripts.renew.key(k.epoch(&stamp.node));
                i.arg(&stamp.node)
                    .arg(stamp.token())
                    .arg(self.session_ttl_ms);
                for (id, version) in sessions {
                    i.key(k.session(*id)).arg(*version);
                }
                i
            })
            .await?;
        let Some(list) = answer.strip_prefix("ok|") else {
            return Err(Self::fenced(stamp, &parts(&answer)));
        };
        Ok(list
            .split(',')
            .map(|one| match one {
                "ok" => Renewal::Renewed,
                "missing" => Renewal::Missing,
                "lost" => Renewal::Lost,
                stale => Renewal::Stale {
                    current: num(parts(stale).get(1)),
                },
            })
            .collect())
    }

    /// Ends `id` at `expected_version` with `reason`, and publishes
    /// `invalidation` in the same script. Returns the new version. A node
    /// passes its signed invalidation for version `expected_version + 1`;
    /// other nodes drop anything else that appears on the channel.
    pub async fn end(
        &self,
        stamp: &NodeStamp,
        id: SessionId,
        expected_version: u64,
        why: EndReason,
        invalidation: &str,
    ) -> Result<u64, ClusterError> {
        let k = &self.keys;
        let answer = self
            .fenced_script(|| {
                let mut i = self.scripts.end.key(k.epoch(&stamp.node));
                i.key(k.session(id))
                    .key(k.node_sessions(&stamp.node))
                    .arg(&stamp.node)
                    .arg(stamp.token())
                    .arg(expected_version)
                    .arg(why.as_str())
                    .arg(self.tombstone_ttl_ms())
                    .arg(id.to_string())
                    .arg(k.invalidations())
                    .arg(invalidation);
                i
            })
            .await?;
        let p = parts(&answer);
        match p[0] {
            "ok" => Ok(num(p.get(1))),
            "fenced" => Err(Self::fenced(stamp, &p)),
            "ended" => Err(ClusterError::Ended {
                id,
                version: num(p.get(1)),
                reason: reason(p.get(2)),
            }),
            "owned" => Err(ClusterError::NotOwner {
                id,
                owner: p.get(1).unwrap_or(&"").to_string(),
            }),
            _ => Err(ClusterError::StaleVersion {
                id,
                expected: expected_version,
                current: num(p.get(1)),
            }),
        }
    }

    /// Declares `lost` lost if its heartbeat has expired: fences it and ends
    /// its sessions. `None` if it is alive or another node already did it.
    pub(crate) async fn takeover(
        &self,
        lost: &str,
        by: &NodeStamp,
    ) -> Result<Option<Takeover>, ClusterError> {
        let k = &self.keys;
        let answer: Vec<String> = self
            .scripts
            .takeover
            .key(k.epoch(lost))
            .key(k.heartbeat(lost))
            .key(k.nodes())
            .key(k.node_sessions(lost))
            .key(k.epoch_counter(lost))
            .key(k.epoch(&by.node))
            .key(k.heartbeat(&by.node))
            .arg(lost)
            .arg(k.session_prefix())
            .arg(self.tombstone_ttl_ms())
            .arg(&by.node)
            .arg(by.token())
            .invoke_async(&mut self.conn())
            .await?;
        let first = answer.first().map(String::as_str).unwrap_or("");
        let p = parts(first);
        Ok((p[0] == "ok").then(|| {
            let ended = ended_list(&answer[1..]);
            Takeover {
                node: lost.to_string(),
                epoch: num(p.get(1)),
                sessions_ended: ended.len() as u64,
                ended,
            }
        }))
    }

    /// Whether the directory holds `id` as ended at `version` or later.
    pub(crate) async fn confirms_end(
        &self,
        id: SessionId,
        version: u64,
    ) -> Result<bool, ClusterError> {
        let answer: String = self
            .scripts
            .confirm_end
            .key(self.keys.session(id))
            .arg(version)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(answer == "ended")
    }

    /// A clean goodbye: the node's epoch retired, entries still live under
    /// it ended with `node_lost` (returned, to be published), heartbeat
    /// deleted, node out of the set.
    pub async fn leave(&self, stamp: &NodeStamp) -> Result<Vec<(SessionId, u64)>, ClusterError> {
        let k = &self.keys;
        let answer: Vec<String> = self
            .scripts
            .leave
            .key(k.epoch(&stamp.node))
            .key(k.heartbeat(&stamp.node))
            .key(k.nodes())
            .key(k.node_sessions(&stamp.node))
            .key(k.epoch_counter(&stamp.node))
            .arg(&stamp.node)
            .arg(stamp.token())
            .arg(k.session_prefix())
            .arg(self.tombstone_ttl_ms())
            .invoke_async(&mut self.conn())
            .await?;
        let first = answer.first().map(String::as_str).unwrap_or("");
        let p = parts(first);
        match p[0] {
            "ok" => Ok(ended_list(&answer[1..])),
            _ => Err(Self::fenced(stamp, &p)),
        }
    }

    /// One session's entry, if the directory has one.
    pub async fn entry(&self, id: SessionId) -> Result<Option<Entry>, ClusterError> {
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.session(id))
            .query_async(&mut self.conn())
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let get = |name: &str| fields.get(name).cloned().unwrap_or_default();
        Ok(Some(Entry {
            node: get("node"),
            epoch: epoch_of(&get("epoch")),
            version: get("version").parse().unwrap_or(0),
            state: match get("state").as_str() {
                "live" => EntryState::Live,
                _ => EntryState::Ended,
            },
            reason: fields
                .get("reason")
                .and_then(|r| EndReason::ALL.iter().copied().find(|e| e.as_str() == r)),
            owner: get("owner"),
        }))
    }

    /// The nodes that joined and were not declared lost.
    pub async fn nodes(&self) -> Result<Vec<String>, ClusterError> {
        Ok(redis::cmd("SMEMBERS")
            .arg(self.keys.nodes())
            .query_async(&mut self.conn())
            .await?)
    }

    /// Whether `node`'s heartbeat key is alive.
    pub async fn is_alive(&self, node: &str) -> Result<bool, ClusterError> {
        Ok(redis::cmd("EXISTS")
            .arg(self.keys.heartbeat(node))
            .query_async(&mut self.conn())
            .await?)
    }

    /// The ids `node` owns according to the directory.
    pub async fn node_sessions(&self, node: &str) -> Result<Vec<SessionId>, ClusterError> {
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.node_sessions(node))
            .query_async(&mut self.conn())
            .await?;
        Ok(ids
            .iter()
            .filter_map(|s| SessionId::from_str(s).ok())
            .collect())
    }

    /// `node`'s current fencing epoch (0 if it has none: never joined, or fenced by data loss).
    pub async fn node_epoch(&self, node: &str) -> Result<u64, ClusterError> {
        let token: Option<String> = redis::cmd("GET")
            .arg(self.keys.epoch(node))
            .query_async(&mut self.conn())
            .await?;
        Ok(token.as_deref().map_or(0, epoch_of))
    }

    /// `node`'s current epoch and incarnation, if it has a live incarnation
    /// (`None` when it has no epoch or was fenced by a takeover).
    pub(crate) async fn node_incarnation(
        &self,
        node: &str,
    ) -> Result<Option<(u64, u64)>, ClusterError> {
        let token: Option<String> = redis::cmd("GET")
            .arg(self.keys.epoch(node))
            .query_async(&mut self.conn())
            .await?;
        Ok(token.and_then(|t| {
            let (epoch, incarnation) = t.split_once('-')?;
            Some((
                epoch.parse().ok()?,
                u64::from_str_radix(incarnation, 16).ok()?,
            ))
        }))
    }

    /// Publishes each payload on `channel`, in one pipeline.
    pub(crate) async fn publish_all(
        &self,
        channel: &str,
        payloads: &[String],
    ) -> Result<(), ClusterError> {
        for chunk in payloads.chunks(512) {
            let mut pipe = redis::pipe();
            for payload in chunk {
                pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
            }
            let () = pipe.query_async(&mut self.conn()).await?;
        }
        Ok(())
    }

    /// Publishes `payload` on `channel`; returns how many subscribers got it.
    pub(crate) async fn publish(&self, channel: &str, payload: &str) -> Result<u64, ClusterError> {
        Ok(redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut self.conn())
            .await?)
    }
}

/// A client for the configured URL, or the typed error saying what is wrong with it.
fn client_for(config: &ClusterConfig) -> Result<redis::Client, ClusterError> {
    let url = config.redacted_url();
    if config.redis_url.starts_with("rediss://") {
        #[cfg(not(feature = "redis-tls"))]
        return Err(ClusterError::TlsNotEnabled { url });
        #[cfg(feature = "redis-tls")]
        {
            // rustls needs a process-wide crypto provider; keep the application's if it set one.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    }
    if !config.redis_url.starts_with("redis://")
        && !config.redis_url.starts_with("rediss://")
        && !config.redis_url.starts_with("unix://")
    {
        return Err(ClusterError::BadUrl {
            url,
            reason: "expected redis://, rediss:// or unix://".into(),
        });
    }
    redis::Client::open(config.redis_url.as_str()).map_err(|e| ClusterError::BadUrl {
        url,
        reason: e.to_string(),
    })
}
