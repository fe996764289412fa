//! Identities: who a session is, who owns it, who is asking.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A session's id: 128 random bits, shown as 32 lowercase hex digits.
///
/// Ids are drawn from a cryptographically secure generator, so they cannot be
/// guessed and are never reused: an ended id stays ended.
///
/// Stored as two 64-bit words, high word first (so the derived order is the
/// number's order): a `u128` would align every record that holds an id to 16
/// bytes, and the registry keeps several per live session (measured: 17 bytes
/// per idle session at a million in the registry's table alone).
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionId([u64; 2]);

impl std::hash::Hash for SessionId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(self.as_u128());
    }
}

impl SessionId {
    /// Draws a fresh random id.
    pub fn random() -> Self {
        SessionId::from_u128(rand::random::<u128>())
    }

    /// Draws a fresh random id that [`shard_of`](Self::shard_of) places on
    /// `shard` of `shards`. Only the high word's residue is chosen; the low
    /// word stays uniformly random, so the registry's hash (the two words
    /// folded by XOR) stays uniform within every shard.
    pub(crate) fn random_in_shard(shard: usize, shards: usize) -> Self {
        let shards = shards.max(1) as u64;
        let raw = rand::random::<u128>();
        let high = (raw >> 64) as u64;
        let base = high - high % shards;
        let high = base
            .checked_add(shard as u64)
            .unwrap_or(base - shards + shard as u64);
        SessionId([high, raw as u64])
    }

    /// Which of `shards` registry shards holds this session (the high word
    /// modulo the count). Ids drawn elsewhere (another node's) land on some
    /// shard too, which answers for them like any unknown id.
    pub(crate) fn shard_of(self, shards: usize) -> usize {
        (self.0[0] % shards.max(1) as u64) as usize
    }

    /// The id as a number (for hashing, sharding, storage).
    pub fn as_u128(self) -> u128 {
        (u128::from(self.0[0]) << 64) | u128::from(self.0[1])
    }

    /// Rebuilds an id from [`SessionId::as_u128`].
    pub fn from_u128(raw: u128) -> Self {
        SessionId([(raw >> 64) as u64, raw as u64])
    }
}

/// Hashes a `SessionId` by folding its 128 bits into 64: the ids are drawn
/// at random by the registry, so they are already uniformly spread, and
/// SipHash would only add cost (it dominated the registry's table resizes).
/// Safe against flooding: only the registry's own random ids are ever
/// inserted; an id chosen by a caller is only looked up.
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for SessionId (it hashes through write_u128); kept correct anyway.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u128(&mut self, id: u128) {
        self.0 = (id as u64) ^ ((id >> 64) as u64);
    }
}

/// A map keyed by session id, hashed with [`IdHasher`].
pub(crate) type IdMap<V> =
    std::collections::HashMap<SessionId, V, std::hash::BuildHasherDefault<IdHasher>>;

/// A set of session ids, hashed with [`IdHasher`].
pub(crate) type IdSet =
    std::collections::HashSet<SessionId, std::hash::BuildHasherDefault<IdHasher>>;

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.as_u128())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// A string that is not a session id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a session id: {input:?} (expected 32 hex digits)")]
pub struct ParseIdError {
    /// What was given (cut to 64 characters).
    pub input: String,
}

impl FromStr for SessionId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseIdError {
            input: s.chars().take(64).collect(),
        };
        parse_hex_u128(s).map(SessionId::from_u128).ok_or_else(bad)
    }
}

impl serde::Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A trace id carried from the application's request into events and logs:
/// 128 bits, shown (and serialised) as 32 lowercase hex digits, the trace id
/// of W3C Trace Context.
///
/// Parses from those 32 hex digits, or from a whole W3C `traceparent` header
/// (`00-<trace id>-<parent id>-<flags>`), so a request's header can be
/// passed as it came:
///
/// ```
/// # use sessionbus_actors::TraceId;
/// let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let trace: TraceId = header.parse().unwrap();
/// assert_eq!(trace.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736".parse().unwrap());
/// ```
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct TraceId(pub u128);

impl TraceId {
    /// Draws a fresh random trace id (used when the application gives none).
    pub fn random() -> Self {
        TraceId(rand::random::<u128>())
    }

    /// The trace id of a W3C `traceparent` header
    /// (`<version>-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`).
    /// Refuses a malformed header, version `ff`, and the all-zero trace or
    /// parent id that the specification calls invalid.
    pub fn from_traceparent(header: &str) -> Result<Self, ParseTraceIdError> {
        let bad = || ParseTraceIdError::new(header);
        let mut parts = header.trim().split('-');
        let (Some(version), Some(trace), Some(parent), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let version_ok = version.len() == 2 && is_lower_hex(version) && version != "ff";
        // Version 00 has exactly four fields; later versions may append more.
        let fields_ok = version != "00" || parts.next().is_none();
        if !version_ok
            || !fields_ok
            || !is_lower_hex(trace)
            || parent.len() != 16
            || !is_lower_hex(parent)
            || parent.bytes().all(|b| b == b'0')
            || flags.len() != 2
            || !is_lower_hex(flags)
        {
            return Err(bad());
        }
        let id = parse_hex_u128(trace).ok_or_else(bad)?;
        if id == 0 {
            return Err(bad());
        }
        Ok(TraceId(id))
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Exactly 32 hex digits (no sign, no prefix) as a `u128`.
fn parse_hex_u128(s: &str) -> Option<u128> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

/// A string that is neither 32 hex digits nor a W3C `traceparent` header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a trace id: {input:?} (expected 32 hex digits or a W3C traceparent, 00-<32 hex>-<16 hex>-<2 hex>)"
)]
pub struct ParseTraceIdError {
    /// What was given (cut to 64 characters).
    pub input: String,
}

impl ParseTraceIdError {
    fn new(input: &str) -> Self {
        ParseTraceIdError {
            input: input.chars().take(64).collect(),
        }
    }
}

impl FromStr for TraceId {
    type Err = ParseTraceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('-') {
            return TraceId::from_traceparent(s);
        }
        parse_hex_u128(s)
            .map(TraceId)
            .ok_or_else(|| ParseTraceIdError::new(s))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl serde::Serialize for TraceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TraceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A client's network address, as the application gave it at open
/// (`OpenOptions::client_ip`), for the audit trail.
///
/// `Debug` never shows it (a `{:?}` of an event must not put an address into
/// a log line); `Display`, `ip()` and serialisation give it on purpose.
#[derive(Copy, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ClientIp(IpAddr);

impl ClientIp {
    /// The address.
    pub fn ip(self) -> IpAddr {
        self.0
    }
}

impl From<IpAddr> for ClientIp {
    fn from(ip: IpAddr) -> Self {
        ClientIp(ip)
    }
}

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientIp(<redacted>)")
    }
}

/// The application's identity for the user or tenant that owns a session.
///
/// Opaque to the runtime: it is only compared. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Owner(Arc<str>);

impl Owner {
    /// Wraps the application's user or tenant id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Owner(id.into())
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Never the owner itself: a `{:?}` of a session, an event or an error must
/// not put a user's id into a log line (use `Display` or `as_str` on purpose).
impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Owner(<{} bytes, redacted>)", self.0.len())
    }
}

impl From<&str> for Owner {
    fn from(s: &str) -> Self {
        Owner::new(s)
    }
}

impl From<String> for Owner {
    fn from(s: String) -> Self {
        Owner::new(s)
    }
}

/// Who is asking: a session's owner, or an operator who may act on any session.
#[derive(Clone, PartialEq, Eq, Hash, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Caller {
    /// An ordinary user; may touch only sessions it owns.
    User(Owner),
    /// An operator role (admin tooling, the runtime's own shutdown); may act on any session.
    Operator(Arc<str>),
}

impl Caller {
    /// Whether this caller may act on a session owned by `owner`.
    pub fn may_act_on(&self, owner: &Owner) -> bool {
        match self {
            Caller::User(user) => user == owner,
            Caller::Operator(_) => true,
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::User(owner) => write!(f, "user {owner}"),
            Caller::Operator(name) => write!(f, "operator {name}"),
        }
    }
}

impl From<Owner> for Caller {
    fn from(owner: Owner) -> Self {
        Caller::User(owner)
    }
}

/// One GPU allocation, unique in the process.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, serde::Serialize)]
pub struct AllocationId(pub u64);

impl fmt::Display for AllocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl AllocationId {
    /// The next id; never repeats within a process.
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        AllocationId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_round_trips_through_its_text_form() {
        let id = SessionId::random();
        assert_eq!(id.to_string().len(), 32);
        assert_eq!(id.to_string().parse::<SessionId>().unwrap(), id);
    }

    #[test]
    fn ids_drawn_for_a_shard_land_on_it_even_at_the_top_of_the_range() {
        for shards in [1, 2, 3, 7, 16] {
            for shard in 0..shards {
                for _ in 0..200 {
                    let id = SessionId::random_in_shard(shard, shards);
                    assert_eq!(id.shard_of(shards), shard);
                }
            }
            // The high word's largest values: the residue is still the shard's.
            let top = SessionId::from_u128(u128::MAX);
            assert!(top.shard_of(shards) < shards);
        }
        // The low word is left to chance: two draws for one shard differ there.
        let (a, b) = (
            SessionId::random_in_shard(1, 3),
            SessionId::random_in_shard(1, 3),
        );
        assert_ne!(a.as_u128() as u64, b.as_u128() as u64);
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "xyz",
            "0123",
            &"g".repeat(32),
            &"0".repeat(33),
            "+0000000000000000000000000000000",
        ] {
            assert!(bad.parse::<SessionId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn only_the_owner_or_an_operator_may_act() {
        let alice = Owner::new("alice");
        assert!(Caller::User(alice.clone()).may_act_on(&alice));
        assert!(!Caller::User(Owner::new("bob")).may_act_on(&alice));
        assert!(Caller::Operator("ops".into()).may_act_on(&alice));
    }
}

#[cfg(test)]
mod trace_id_tests {
    use super::TraceId;

    #[test]
    fn trace_ids_serialise_as_their_hex_text() {
        let trace = TraceId(0xab);
        let json = serde_json::to_string(&trace).unwrap();
        assert_eq!(json, format!("\"{trace}\""));
        assert_eq!(serde_json::from_str::<TraceId>(&json).unwrap(), trace);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(ok.parse::<TraceId>().is_ok());
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "+0000000000000000000000000000001",
            "",
        ] {
            assert!(bad.parse::<TraceId>().is_err(), "{bad:?} parsed");
        }
    }
}

#[cfg(test)]
mod owner_debug_tests {
    use super::Owner;

    #[test]
    fn debug_never_prints_the_owner() {
        let text = format!("{:?}", Owner::new("alice@example.com"));
        assert!(!text.contains("alice"), "{text}");
        assert_eq!(text, "Owner(<17 bytes, redacted>)");
    }
}
