//! The GPU memory budget's books: bytes charged to the device and to each
//! owner, and the allocations waiting for room.
//!
//! Ground rules: a charge is made before the pool is asked to allocate and
//! refunded only once the memory is really back (the pool answered a release
//! or an offload), so the books never show room the device does not have.
//! Charges are counted in rounded bytes (`PoolInfo::rounded`), the bytes a
//! buffer really holds, so charge and refund always match. Waiters are served
//! first come, first served among those that fit; a waiter that gave up is
//! skipped and never charged.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use super::config::BudgetConfig;
use crate::ids::Owner;

/// Which budget had no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BudgetScope {
    /// The device-wide budget (`budget.device_memory`).
    Device,
    /// The owner's budget (`budget.owner_memory`).
    Owner,
    /// The session's cap (`sessions.max_session_memory`).
    Session,
}

impl std::fmt::Display for BudgetScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BudgetScope::Device => "device",
            BudgetScope::Owner => "owner",
            BudgetScope::Session => "session",
        })
    }
}

/// A budget with no room for a request: which one, and how full it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shortfall {
    pub(crate) scope: BudgetScope,
    pub(crate) used: u64,
    pub(crate) limit: u64,
}

#[derive(Debug)]
struct Waiter {
    owner: Owner,
    bytes: u64,
    grant: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct Books {
    device_used: u64,
    /// Only owners with something charged.
    owners: HashMap<Owner, u64>,
    waiters: VecDeque<Waiter>,
}

/// The budget shared by every session of one engine.
#[derive(Debug)]
pub(crate) struct Budget {
    device_limit: Option<u64>,
    owner_limit: Option<u64>,
    books: Mutex<Books>,
    /// Bytes waited for, readable without the lock (the release pacer's demand).
    waiting_bytes: AtomicU64,
    /// Peak of `device_used`.
    peak: AtomicU64,
}

impl Budget {
    pub(crate) fn new(config: &BudgetConfig) -> Self {
        Budget {
            device_limit: config.device_memory,
            owner_limit: config.owner_memory,
            books: Mutex::default(),
            waiting_bytes: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        }
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        // Every update is complete before the guard drops; a poisoned lock holds consistent books.
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The budget `bytes` can never fit in, however much is given back.
    pub(crate) fn never_fits(&self, bytes: u64) -> Option<Shortfall> {
        [
            (BudgetScope::Device, self.device_limit),
            (BudgetScope::Owner, self.owner_limit),
        ]
        .into_iter()
        .find_map(|(scope, limit)| {
            let limit = limit?;
            (bytes > limit).then_some(Shortfall {
                scope,
                used: 0,
                limit,
            })
        })
    }

    fn shortfall(&self, books: &Books, owner: &Owner, bytes: u64) -> Option<Shortfall> {
        if let Some(limit) = self.device_limit {
            if books.device_used + bytes > limit {
                return Some(Shortfall {
                    scope: BudgetScope::Device,
                    used: books.device_used,
                    limit,
                });
            }
        }
        if let Some(limit) = self.owner_limit {
            let used = books.owners.get(owner).copied().unwrap_or(0);
            if used + bytes > limit {
                return Some(Shortfall {
                    scope: BudgetScope::Owner,
                    used,
                    limit,
                });
            }
        }
        None
    }

    /// Like `shortfall`, with `queued` bytes waited for device-wide and
    /// `queued_mine` by `owner` counted as already taken.
    fn shortfall_beside(
        &self,
        books: &Books,
        owner: &Owner,
        bytes: u64,
        queued: u64,
        queued_mine: u64,
    ) -> Option<Shortfall> {
        if let Some(limit) = self.device_limit {
            if books.device_used + queued + bytes > limit {
                return Some(Shortfall {
                    scope: BudgetScope::Device,
                    used: books.device_used,
                    limit,
                });
            }
        }
        if let Some(limit) = self.owner_limit {
            let used = books.owners.get(owner).copied().unwrap_or(0);
            if used + queued_mine + bytes > limit {
                return Some(Shortfall {
                    scope: BudgetScope::Owner,
                    used,
                    limit,
                });
            }
        }
        None
    }

    fn charge_unchecked(&self, books: &mut Books, owner: &Owner, bytes: u64) {
        books.device_used += bytes;
        self.peak.fetch_max(books.device_used, Ordering::Relaxed);
        if self.owner_limit.is_some() {
            *books.owners.entry(owner.clone()).or_default() += bytes;
        }
    }

    /// Charges `bytes` to the device and `owner` if both have room and nobody
    /// waits ahead; otherwise says which budget is short.
    pub(crate) fn try_charge(&self, owner: &Owner, bytes: u64) -> Result<(), Shortfall> {
        if self.device_limit.is_none() && self.owner_limit.is_none() {
            // Unlimited: the books still count, for stats and the pacer.
            let mut books = self.books();
            self.charge_unchecked(&mut books, owner, bytes);
            return Ok(());
        }
        let mut books = self.books();
        if let Some(short) = self.shortfall(&books, owner, bytes) {
            return Err(short);
        }
        if !books.waiters.is_empty() {
            // Someone waits for room: they go first, unless this fits beside
            // them (all waiters count for the device, the owner's own for its budget).
            let (mut queued, mut queued_mine) = (0, 0);
            for waiter in books.waiters.iter().filter(|w| !w.grant.is_closed()) {
                queued += waiter.bytes;
                if &waiter.owner == owner {
                    queued_mine += waiter.bytes;
                }
            }
            if let Some(short) = self.shortfall_beside(&books, owner, bytes, queued, queued_mine) {
                return Err(short);
            }
        }
        self.charge_unchecked(&mut books, owner, bytes);
        Ok(())
    }

    /// Queues a request for `bytes`; the receiver resolves once they were
    /// charged. A receiver dropped before that is skipped, never charged; one
    /// dropped after must hand the charge back (`Budget::refund`).
    pub(crate) fn wait_for(&self, owner: &Owner, bytes: u64) -> oneshot::Receiver<()> {
        let (grant, granted) = oneshot::channel();
        let mut books = self.books();
        books.waiters.push_back(Waiter {
            owner: owner.clone(),
            bytes,
            grant,
        });
        self.waiting_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.serve(&mut books);
        granted
    }

    /// Gives `bytes` back (memory that is really free again) and serves waiters.
    pub(crate) fn refund(&self, owner: &Owner, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut books = self.books();
        books.device_used = books.device_used.saturating_sub(bytes);
        if let Some(used) = books.owners.get_mut(owner) {
            *used = used.saturating_sub(bytes);
            if *used == 0 {
                books.owners.remove(owner);
            }
        }
        self.serve(&mut books);
    }

    /// Adjusts a charge that the pool rounded differently than expected.
    pub(crate) fn correct(&self, owner: &Owner, charged: u64, actual: u64) {
        if actual > charged {
            let mut books = self.books();
            self.charge_unchecked(&mut books, owner, actual - charged);
        } else if charged > actual {
            self.refund(owner, charged - actual);
        }
    }

    /// Charges and wakes waiters in order; drops those that gave up. First
    /// come, first served: the first waiter short of *device* room stops the
    /// round (nobody behind it may take that room); one short only of its
    /// owner's budget is passed over (another owner's room is not its to take).
    fn serve(&self, books: &mut Books) {
        let mut index = 0;
        while index < books.waiters.len() {
            let waiter = &books.waiters[index];
            if waiter.grant.is_closed() {
                let gone = books.waiters.remove(index).expect("index is in range");
                self.waiting_bytes.fetch_sub(gone.bytes, Ordering::Relaxed);
                continue;
            }
            match self.shortfall(books, &waiter.owner, waiter.bytes) {
                Some(short) if short.scope == BudgetScope::Device => break,
                Some(_) => {
                    index += 1;
                    continue;
                }
                None => {}
            }
            let waiter = books.waiters.remove(index).expect("index is in range");
            self.waiting_bytes
                .fetch_sub(waiter.bytes, Ordering::Relaxed);
            if waiter.grant.send(()).is_ok() {
                self.charge_unchecked(books, &waiter.owner, waiter.bytes);
            }
            // A waiter that gave up between the check and now is never charged.
        }
        // Those that gave up behind a blocked one still stop counting as demand.
        let before = books.waiters.len();
        let mut dropped = 0;
        books.waiters.retain(|w| {
            let keep = !w.grant.is_closed();
            if !keep {
                dropped += w.bytes;
            }
            keep
        });
        if books.waiters.len() != before {
            self.waiting_bytes.fetch_sub(dropped, Ordering::Relaxed);
        }
    }

    /// Drops waiters that gave up (their receivers are gone).
    pub(crate) fn forget_abandoned(&self) {
        let mut books = self.books();
        self.serve(&mut books);
    }

    /// Bytes allocations are waiting for right now.
    pub(crate) fn waiting_bytes(&self) -> u64 {
        self.waiting_bytes.load(Ordering::Relaxed)
    }

    /// Bytes allocations of `owner` (or of anyone, for `None`) wait for.
    pub(crate) fn waiting_for(&self, owner: Option<&Owner>) -> u64 {
        self.books()
            .waiters
            .iter()
            .filter(|w| owner.is_none_or(|owner| &w.owner == owner) && !w.grant.is_closed())
            .map(|w| w.bytes)
            .sum()
    }

    /// What the books say now.
    pub(crate) fn snapshot(&self) -> BudgetStats {
        let books = self.books();
        BudgetStats {
            device_used: books.device_used,
            device_peak: self.peak.load(Ordering::Relaxed),
            device_limit: self.device_limit,
            owner_limit: self.owner_limit,
            waiting: books.waiters.len() as u64,
            waiting_bytes: self.waiting_bytes(),
        }
    }

    /// Room left in `scope` for `owner`, if that scope is limited.
    pub(crate) fn room(&self, scope: BudgetScope, owner: &Owner) -> Option<u64> {
        let books = self.books();
        match scope {
            BudgetScope::Device => self
                .device_limit
                .map(|limit| limit.saturating_sub(books.device_used)),
            BudgetScope::Owner => self
                .owner_limit
                .map(|limit| limit.saturating_sub(books.owners.get(owner).copied().unwrap_or(0))),
            BudgetScope::Session => None,
        }
    }
}

/// The budget's books, as `EngineHandle::stats` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BudgetStats {
    /// GPU bytes charged now (held by sessions, or being allocated).
    pub device_used: u64,
    /// Highest `device_used` seen.
    pub device_peak: u64,
    /// `budget.device_memory`, if set.
    pub device_limit: Option<u64>,
    /// `budget.owner_memory`, if set.
    pub owner_limit: Option<u64>,
    /// Allocations waiting for room.
    pub waiting: u64,
    /// Bytes they wait for.
    pub waiting_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(device: Option<u64>, owner: Option<u64>) -> Budget {
        Budget::new(&BudgetConfig {
            device_memory: device,
            owner_memory: owner,
            ..BudgetConfig::default()
        })
    }

    #[test]
    fn charges_stop_at_each_budget_and_name_it() {
        let budget = budget(Some(100), Some(60));
        let (a, b) = (Owner::new("a"), Owner::new("b"));
        budget.try_charge(&a, 60).unwrap();
        let short = budget.try_charge(&a, 1).unwrap_err();
        assert_eq!(
            (short.scope, short.used, short.limit),
            (BudgetScope::Owner, 60, 60)
        );
        budget.try_charge(&b, 40).unwrap();
        let short = budget.try_charge(&b, 1).unwrap_err();
        assert_eq!(short.scope, BudgetScope::Device);
        assert_eq!(budget.never_fits(101).unwrap().scope, BudgetScope::Device);
        assert_eq!(budget.never_fits(61).unwrap().scope, BudgetScope::Owner);
        assert!(budget.never_fits(60).is_none());
        budget.refund(&a, 60);
        budget.refund(&b, 40);
        assert_eq!(budget.snapshot().device_used, 0);
        assert_eq!(budget.snapshot().device_peak, 100);
    }

    #[test]
    fn a_refund_wakes_waiters_in_order_and_skips_those_that_gave_up() {
        let budget = budget(Some(100), None);
        let owner = Owner::new("a");
        budget.try_charge(&owner, 100).unwrap();
        let gave_up = budget.wait_for(&owner, 50);
        let mut first = budget.wait_for(&owner, 50);
        let mut second = budget.wait_for(&owner, 50);
        assert_eq!(budget.waiting_bytes(), 150);
        // Nobody jumps the queue, even if it would fit after a refund.
        drop(gave_up);
        budget.refund(&owner, 60);
        assert!(first.try_recv().is_ok());
        assert!(second.try_recv().is_err());
        assert_eq!(budget.snapshot().device_used, 90);
        budget.refund(&owner, 50);
        assert!(second.try_recv().is_ok());
        assert_eq!(budget.snapshot().device_used, 90);
        assert_eq!(budget.waiting_bytes(), 0);
        assert!(budget.try_charge(&owner, 11).is_err());
    }

    #[test]
    fn newcomers_queue_behind_waiters() {
        let budget = budget(Some(100), None);
        let owner = Owner::new("a");
        budget.try_charge(&owner, 80).unwrap();
        let mut big = budget.wait_for(&owner, 50);
        assert!(
            budget.try_charge(&owner, 20).is_err(),
            "20 fits, but not beside the 50 waited for"
        );
        let mut small = budget.wait_for(&owner, 20);
        assert!(
            small.try_recv().is_err(),
            "the newcomer waits behind the 50"
        );
        budget.refund(&owner, 80);
        assert!(
            big.try_recv().is_ok() && small.try_recv().is_ok(),
            "both, in order"
        );
        assert_eq!(budget.snapshot().device_used, 70);
    }

    #[test]
    fn a_waiter_short_of_its_owner_budget_does_not_hold_up_other_owners() {
        let budget = budget(Some(100), Some(50));
        let (a, b) = (Owner::new("a"), Owner::new("b"));
        budget.try_charge(&a, 50).unwrap();
        let mut a_waits = budget.wait_for(&a, 10);
        let mut b_waits = budget.wait_for(&b, 10);
        assert!(a_waits.try_recv().is_err(), "a's own budget is full");
        assert!(b_waits.try_recv().is_ok(), "b is not held up by a");
        budget.try_charge(&b, 30).unwrap();
    }
}
