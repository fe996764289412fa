//! Getting room in the budgets for one allocation (or one restore): at once,
//! or by waiting, as `budget.when_exhausted` says.
//!
//! Ground rules: what `acquire` returns is a [`Charge`], which hands its bytes
//! back when dropped unless it was committed to a session's ledger. A session
//! that stops halfway through an allocation therefore never leaves bytes
//! charged that nobody will refund.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::accounts::{Budget, BudgetScope, Shortfall};
use super::config::WhenExhausted;
use crate::clock;
use crate::ids::Owner;
use crate::session::AllocError;

/// Bytes charged to the budgets, refunded on drop unless committed.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<Budget>,
    owner: Owner,
    bytes: u64,
}

impl Charge {
    /// The bytes now belong to the session's ledger, which refunds them
    /// (through its release or context reset); returns them.
    pub(crate) fn commit(mut self) -> u64 {
        std::mem::take(&mut self.bytes)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.refund(&self.owner, self.bytes);
    }
}

/// How an allocation waits for room.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WaitRules {
    pub(crate) when_exhausted: WhenExhausted,
    pub(crate) timeout: Duration,
}

fn over_budget(short: Shortfall, requested: u64) -> AllocError {
    AllocError::OverBudget {
        scope: short.scope,
        requested,
        used: short.used,
        limit: short.limit,
    }
}

/// Charges `bytes` for `owner` now, or (by the rules) waits for room,
/// calling `make_room` once when the rules say to evict.
pub(crate) async fn acquire(
    budget: Arc<Budget>,
    owner: Owner,
    bytes: u64,
    rules: WaitRules,
    make_room: impl FnOnce(BudgetScope),
) -> Result<Charge, AllocError> {
    let charge = |budget: Arc<Budget>, owner: Owner| Charge {
        budget,
        owner,
        bytes,
    };
    let short = match budget.try_charge(&owner, bytes) {
        Ok(()) => return Ok(charge(budget, owner)),
        Err(short) => short,
    };
    if rules.when_exhausted == WhenExhausted::Fail {
        return Err(over_budget(short, bytes));
    }
    let started = clock::now();
    let mut pending = Pending {
        granted: Some(budget.wait_for(&owner, bytes)),
        budget: budget.clone(),
        owner: owner.clone(),
        bytes,
    };
    if rules.when_exhausted == WhenExhausted::Evict {
        make_room(short.scope);
    }
    let granted = pending.granted.as_mut().expect("set above");
    let waited = tokio::time::timeout(rules.timeout, granted).await;
    let mut granted = pending.granted.take().expect("set above");
    match waited {
        Ok(Ok(())) => Ok(charge(budget, owner)),
        Ok(Err(_)) | Err(_) => {
            // A grant may have arrived just as the wait ran out: it counts.
            granted.close();
            if granted.try_recv().is_ok() {
                return Ok(charge(budget, owner));
            }
            budget.forget_abandoned();
            Err(AllocError::BudgetWaitTimedOut {
                scope: short.scope,
                requested: bytes,
                waited_ms: clock::now().saturating_duration_since(started).as_millis() as u64,
            })
        }
    }
}

/// A wait for room that may be dropped at any point (its session stopped):
/// a grant that arrived meanwhile is handed back, and the waiter is
/// forgotten, so nothing stays charged or counted as demand.
struct Pending {
    granted: Option<oneshot::Receiver<()>>,
    budget: Arc<Budget>,
    owner: Owner,
    bytes: u64,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut granted) = self.granted.take() else {
            return;
        };
        granted.close();
        if granted.try_recv().is_ok() {
            self.budget.refund(&self.owner, self.bytes);
        } else {
            self.budget.forget_abandoned();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll, Wake, Waker};

    use super::*;
    use crate::budget::BudgetConfig;

    struct NoWake;

    impl Wake for NoWake {
        fn wake(self: Arc<Self>) {}
    }

    #[tokio::test]
    async fn a_wait_dropped_after_its_grant_hands_the_bytes_back() {
        let budget = Arc::new(Budget::new(&BudgetConfig {
            device_memory: Some(100),
            ..BudgetConfig::default()
        }));
        let owner = Owner::new("a");
        budget.try_charge(&owner, 100).unwrap();
        let rules = WaitRules {
            when_exhausted: WhenExhausted::Wait,
            timeout: Duration::from_secs(5),
        };
        let mut wait = Box::pin(acquire(budget.clone(), owner.clone(), 50, rules, |_| {}));
        let waker = Waker::from(Arc::new(NoWake));
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(wait.as_mut().poll(&mut cx), Poll::Pending));
        budget.refund(&owner, 100); // the waiter is served: 50 charged, grant sent
        assert_eq!(budget.snapshot().device_used, 50);
        drop(wait); // its session stopped before it could take the grant
        let books = budget.snapshot();
        assert_eq!((books.device_used, books.waiting_bytes), (0, 0));
    }
}
