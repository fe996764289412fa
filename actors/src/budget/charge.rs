//! Getting room in the budgets for one allocation (or one restore): at once,
//! or by waiting, as `budget.when_exhausted` says.
//!
//! Ground rules: what `acquire` returns is a [`Charge`], which hands its bytes
//! back when dropped unless it was committed to a session's ledger. A session
//! that stops halfway through an allocation therefore never leaves bytes
//! charged that nobody will refund.

use std::sync::Arc;
use std::time::Duration;

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
    let mut granted = budget.wait_for(&owner, bytes);
    if rules.when_exhausted == WhenExhausted::Evict {
        make_room(short.scope);
    }
    match tokio::time::timeout(rules.timeout, &mut granted).await {
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
