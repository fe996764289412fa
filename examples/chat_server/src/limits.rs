//! Rate limits: keyed `governor` limiters, one per owner (session opens and
//! chat messages, over REST and WebSocket alike) and one per client address
//! (token minting and session opens: owner names are free to mint with the
//! demo issuer, addresses are not). Being limited is a value (how long to
//! wait), turned into 429 or a WebSocket error frame.
//!
//! Both key sets are bounded: when a limiter holds `max_keys` keys, the keys
//! of clients quiet long enough to have a full bucket again are dropped (at
//! most once a second), and while that leaves the table full, every check
//! goes to one shared overflow bucket. A flood of new addresses or names
//! then limits itself (and, for that while, everyone) instead of growing
//! memory.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A limiter key, or the bucket that every key shares once the table is full.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Slot<K> {
    Key(K),
    Overflow,
}

/// A keyed limiter with a bounded key set.
pub struct KeyedLimiter<K: Clone + Eq + Hash> {
    limiter: DefaultKeyedRateLimiter<Slot<K>>,
    clock: DefaultClock,
    max_keys: usize,
    /// When the table was last pruned: a full table is pruned at most once a
    /// second, so a flood of new keys cannot make every check a full scan.
    pruned: std::sync::Mutex<Option<std::time::Instant>>,
}

impl<K: Clone + Eq + Hash> KeyedLimiter<K> {
    pub(super) fn new(per_sec: u32, burst: u32, max_keys: usize) -> Self {
        let per_sec = NonZeroU32::new(per_sec.max(1)).unwrap();
        let burst = NonZeroU32::new(burst.max(1)).unwrap();
        KeyedLimiter {
            limiter: RateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
            clock: DefaultClock::default(),
            max_keys: max_keys.max(1),
            pruned: std::sync::Mutex::new(None),
        }
    }

    /// `Ok` if `key` may act now, else how long until it may.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let mut slot = Slot::Key(key.clone());
        if self.limiter.len() >= self.max_keys {
            let mut pruned = self.pruned.lock().unwrap();
            if pruned.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                self.limiter.retain_recent();
                *pruned = Some(std::time::Instant::now());
            }
            drop(pruned);
            if self.limiter.len() >= self.max_keys {
                slot = Slot::Overflow;
            }
        }
        self.limiter
            .check_key(&slot)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Keys held now (at most `max_keys` + the overflow bucket).
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }
}

/// The key of a client address: an IPv4 address, or an IPv6 /64 (one
/// subscriber's whole prefix, which it can cycle through for free).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}
