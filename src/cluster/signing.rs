//! Signed node-to-node messages: nothing that arrives through Redis is
//! trusted until verified.
//!
//! Ground rules:
//! - **Every** request, reply and invalidation travels as one frame,
//!   `sb1.<key id>.<HMAC-SHA256 hex>.<json>`, whose MAC covers the exact JSON
//!   bytes. The JSON's header names the sender node, its fencing epoch and
//!   incarnation, the channel it was published on, when it was sent, and a
//!   random nonce; the body is the message.
//! - A frame is accepted only if, in this order: it parses, its key id is in
//!   the keyring, its MAC verifies (constant time), it was published on the
//!   channel it names, its timestamp is within `replay_window` of this
//!   node's clock, and its nonce was not seen in that window. The JSON is
//!   parsed only after the MAC verified, so a forger cannot even reach the parser.
//! - The nonce memory holds verified frames only (a forger cannot fill it)
//!   and forgets a nonce once its frame would be refused as too old anyway.
//! - The sender's epoch is checked by the caller (`Shared::check_sender`),
//!   against the directory.
//! - Owners never travel in clear: a forwarded call names its user by a
//!   pseudonym keyed with a key derived from the frame's cluster key, so
//!   nodes agree on it and Redis (or anyone reading it) learns nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sessionbus_actors::{Owner, Pseudonymizer};
use sha2::Sha256;

use super::config::ClusterKey;

const MAGIC: &str = "sb1";

/// Why a frame was refused. Each is counted and logged (rate-limited).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// Not a signed frame at all.
    Unsigned,
    /// Signed with a key id this node does not hold.
    UnknownKey,
    /// The MAC does not verify: forged or altered.
    BadSignature,
    /// Signed, but its JSON is not a message of the kind the channel carries.
    Malformed,
    /// Published on another channel than the one it was signed for.
    WrongChannel,
    /// Its timestamp is outside the replay window.
    Expired,
    /// Its nonce was already seen: a replay.
    Replayed,
    /// Its sender's epoch is not the sender's current one (a fenced or
    /// replaced node), or the sender is not a node of the cluster.
    StaleEpoch,
    /// It claims a right its sender does not have (operator rights from a
    /// node not in `cluster.operator_nodes`), or a reply from another node
    /// than the one asked, or to a request this node never sent.
    NotPermitted,
    /// Larger than any message of the cluster (`MAX_FRAME_BYTES`): refused
    /// before its MAC is even computed.
    TooLarge,
    /// Valid, but more verified messages arrived within the replay window
    /// than this node remembers nonces for (`MAX_NONCES`): refused rather
    /// than accepted without a replay check.
    Overloaded,
}

/// The largest frame accepted (a chat turn's embedding fits many times over).
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// The most nonces remembered at once (about 40 MiB at the most).
pub const MAX_NONCES: usize = 1_000_000;

impl Rejection {
    /// Every kind, for counters.
    pub const ALL: [Rejection; 11] = [
        Rejection::Unsigned,
        Rejection::UnknownKey,
        Rejection::BadSignature,
        Rejection::Malformed,
        Rejection::WrongChannel,
        Rejection::Expired,
        Rejection::Replayed,
        Rejection::StaleEpoch,
        Rejection::NotPermitted,
        Rejection::TooLarge,
        Rejection::Overloaded,
    ];

    /// Its name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::UnknownKey => "unknown_key",
            Rejection::BadSignature => "bad_signature",
            Rejection::Malformed => "malformed",
            Rejection::WrongChannel => "wrong_channel",
            Rejection::Expired => "expired",
            Rejection::Replayed => "replayed",
            Rejection::StaleEpoch => "stale_epoch",
            Rejection::NotPermitted => "not_permitted",
            Rejection::TooLarge => "too_large",
            Rejection::Overloaded => "overloaded",
        }
    }
}

/// Who sent a frame, as it signed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sender {
    pub(crate) node: String,
    pub(crate) epoch: u64,
    pub(crate) incarnation: u64,
}

#[derive(Serialize, Deserialize)]
struct Header<'a, B> {
    from: Sender,
    channel: std::borrow::Cow<'a, str>,
    sent_ms: u64,
    nonce: String,
    body: B,
}

/// A verified frame: who sent it, under which key, and its body.
#[derive(Debug)]
pub(crate) struct Verified<B> {
    pub(crate) from: Sender,
    pub(crate) key_id: String,
    pub(crate) body: B,
}

struct Key {
    mac: Hmac<Sha256>,
    owners: Pseudonymizer,
}

/// The cluster's keys, and the nonces of frames accepted recently.
pub(crate) struct Keyring {
    signing: String,
    keys: HashMap<String, Key>,
    window: Duration,
    nonces: Mutex<Nonces>,
}

/// Nonces accepted within the window, oldest first, by this process's
/// monotonic clock (a wall-clock step cannot flush them).
#[derive(Default)]
struct Nonces {
    seen: HashSet<u128>,
    order: VecDeque<(Instant, u128)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Keyring {
    /// A keyring from validated keys (the first signs).
    pub(crate) fn new(keys: &[ClusterKey], window: Duration) -> Result<Self, String> {
        let mut map = HashMap::new();
        for key in keys {
            let secret = key.secret()?;
            let mac = Hmac::<Sha256>::new_from_slice(&secret).expect("HMAC takes any key length");
            // The owner pseudonym key is derived, so a pseudonym never reveals the signing key.
            let mut derive = mac.clone();
            derive.update(b"sessionbus cluster owner pseudonyms");
            let owners = Pseudonymizer::new(&derive.finalize().into_bytes())
                .expect("32 bytes is long enough");
            map.insert(key.id.clone(), Key { mac, owners });
        }
        let signing = keys.first().ok_or("no key")?.id.clone();
        Ok(Keyring {
            signing,
            keys: map,
            window,
            nonces: Mutex::default(),
        })
    }

    /// Signs `body` as `from`, for `channel`.
    pub(crate) fn seal<B: Serialize>(&self, from: &Sender, channel: &str, body: &B) -> String {
        let header = Header {
            from: from.clone(),
            channel: channel.into(),
            sent_ms: now_ms(),
            nonce: format!("{:032x}", rand::random::<u128>()),
            body,
        };
        let json = serde_json::to_string(&header).expect("cluster messages serialize");
        let mut mac = self.keys[&self.signing].mac.clone();
        mac.update(json.as_bytes());
        let tag = data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes());
        format!("{MAGIC}.{}.{tag}.{json}", self.signing)
    }

    /// Verifies a frame that arrived on `channel` and parses its body.
    pub(crate) fn open<B: DeserializeOwned>(
        &self,
        channel: &str,
        frame: &str,
    ) -> Result<Verified<B>, Rejection> {
        if frame.len() > MAX_FRAME_BYTES {
            return Err(Rejection::TooLarge);
        }
        let mut parts = frame.splitn(4, '.');
        let (Some(MAGIC), Some(key_id), Some(tag), Some(json)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Rejection::Unsigned);
        };
        let key = self.keys.get(key_id).ok_or(Rejection::UnknownKey)?;
        let tag = data_encoding::HEXLOWER
            .decode(tag.as_bytes())
            .map_err(|_| Rejection::BadSignature)?;
        let mut mac = key.mac.clone();
        mac.update(json.as_bytes());
        mac.verify_slice(&tag)
            .map_err(|_| Rejection::BadSignature)?;
        let header: Header<'_, B> = serde_json::from_str(json).map_err(|_| Rejection::Malformed)?;
        if header.channel != channel {
            return Err(Rejection::WrongChannel);
        }
        let now = now_ms();
        let window = self.window.as_millis() as u64;
        if header.sent_ms.abs_diff(now) > window {
            return Err(Rejection::Expired);
        }
        let nonce: [u8; 16] = data_encoding::HEXLOWER
            .decode(header.nonce.as_bytes())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(Rejection::Malformed)?;
        let nonce = u128::from_be_bytes(nonce);
        self.remember(nonce)?;
        Ok(Verified {
            from: header.from,
            key_id: key_id.to_string(),
            body: header.body,
        })
    }

    /// Accepts `nonce` once within the window.
    fn remember(&self, nonce: u128) -> Result<(), Rejection> {
        let now = Instant::now();
        let mut nonces = self.nonces.lock().unwrap();
        // A frame older than the window is refused anyway: its nonce can go.
        // (Frames may be stamped up to a window ahead, hence twice.)
        while let Some(&(at, old)) = nonces.order.front() {
            if now.duration_since(at) <= 2 * self.window {
                break;
            }
            nonces.order.pop_front();
            nonces.seen.remove(&old);
        }
        if nonces.seen.contains(&nonce) {
            return Err(Rejection::Replayed);
        }
        if nonces.seen.len() >= MAX_NONCES {
            return Err(Rejection::Overloaded);
        }
        nonces.seen.insert(nonce);
        nonces.order.push_back((now, nonce));
        Ok(())
    }

    /// Nonces remembered now (bounded by the verified traffic of two windows).
    pub(crate) fn nonces_held(&self) -> usize {
        self.nonces.lock().unwrap().seen.len()
    }

    /// The pseudonym a forwarded call names `owner` by, under the signing key.
    pub(crate) fn owner_pseudonym(&self, owner: &Owner) -> String {
        self.keys[&self.signing].owners.owner(owner)
    }

    /// Whether `pseudonym`, from a frame signed with `key_id`, names `owner`.
    pub(crate) fn names_owner(&self, key_id: &str, pseudonym: &str, owner: &Owner) -> bool {
        self.keys
            .get(key_id)
            .is_some_and(|key| key.owners.owner(owner) == pseudonym)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[(&str, u8)]) -> Keyring {
        let keys: Vec<ClusterKey> = keys
            .iter()
            .map(|(id, byte)| ClusterKey::new(*id, &[*byte; 32]))
            .collect();
        Keyring::new(&keys, Duration::from_secs(30)).unwrap()
    }

    fn me() -> Sender {
        Sender {
            node: "a".into(),
            epoch: 3,
            incarnation: 9,
        }
    }

    #[test]
    fn a_sealed_frame_opens_once_on_its_channel() {
        let k = ring(&[("k1", 1)]);
        let frame = k.seal(&me(), "ch", &42u32);
        let opened: Verified<u32> = k.open("ch", &frame).unwrap();
        assert_eq!(
            (opened.body, opened.from, opened.key_id.as_str()),
            (42, me(), "k1")
        );
        assert_eq!(
            k.open::<u32>("ch", &frame).unwrap_err(),
            Rejection::Replayed
        );
        let other = k.seal(&me(), "ch", &42u32);
        assert_eq!(
            k.open::<u32>("other", &other).unwrap_err(),
            Rejection::WrongChannel
        );
    }

    #[test]
    fn forged_altered_and_foreign_frames_are_refused() {
        let k = ring(&[("k1", 1)]);
        assert_eq!(
            k.open::<u32>("ch", "{\"body\":1}").unwrap_err(),
            Rejection::Unsigned
        );
        let frame = k.seal(&me(), "ch", &42u32);
        let altered = frame.replace("42", "43");
        assert_eq!(
            k.open::<u32>("ch", &altered).unwrap_err(),
            Rejection::BadSignature
        );
        let stranger = ring(&[("k1", 2)]).seal(&me(), "ch", &42u32);
        assert_eq!(
            k.open::<u32>("ch", &stranger).unwrap_err(),
            Rejection::BadSignature
        );
        let unknown = ring(&[("k9", 1)]).seal(&me(), "ch", &42u32);
        assert_eq!(
            k.open::<u32>("ch", &unknown).unwrap_err(),
            Rejection::UnknownKey
        );
        let wrong_body = k.seal(&me(), "ch", &"text");
        assert_eq!(
            k.open::<u32>("ch", &wrong_body).unwrap_err(),
            Rejection::Malformed
        );
    }

    #[test]
    fn frames_outside_the_window_are_replays() {
        let k = ring(&[("k1", 1)]);
        let header = Header {
            from: me(),
            channel: "ch".into(),
            sent_ms: now_ms() - 31_000,
            nonce: format!("{:032x}", 7u128),
            body: 1u32,
        };
        let json = serde_json::to_string(&header).unwrap();
        let mut mac = k.keys["k1"].mac.clone();
        mac.update(json.as_bytes());
        let frame = format!(
            "sb1.k1.{}.{json}",
            data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes())
        );
        assert_eq!(k.open::<u32>("ch", &frame).unwrap_err(), Rejection::Expired);
    }

    #[test]
    fn a_rotation_verifies_under_every_listed_key() {
        let old = ring(&[("k1", 1)]);
        let both = ring(&[("k2", 2), ("k1", 1)]);
        let frame = old.seal(&me(), "ch", &1u32);
        assert!(both.open::<u32>("ch", &frame).is_ok());
        let frame = both.seal(&me(), "ch", &1u32);
        assert_eq!(
            old.open::<u32>("ch", &frame).unwrap_err(),
            Rejection::UnknownKey
        );
    }

    #[test]
    fn owner_pseudonyms_agree_across_nodes_and_hide_the_owner() {
        let a = ring(&[("k1", 1)]);
        let b = ring(&[("k1", 1)]);
        let alice = Owner::new("alice");
        let p = a.owner_pseudonym(&alice);
        assert!(!p.contains("alice") && p.starts_with("p:"));
        assert!(b.names_owner("k1", &p, &alice));
        assert!(!b.names_owner("k1", &p, &Owner::new("bob")));
        assert!(!b.names_owner("k2", &p, &alice));
    }
}
