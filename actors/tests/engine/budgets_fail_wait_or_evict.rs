//! GPU budgets per device and per owner: an allocation past one fails, waits
//! (bounded) or makes room by evicting idle sessions, least recently active
//! first, as configured; one that could never fit is refused at once; and the
//! books return to zero whatever happened. On paused time.

use std::time::Duration;

use crate::common::*;
use sessionbus_actors::*;
use tokio::time::Instant;

const SEC: Duration = Duration::from_secs(1);

fn budget(device: Option<u64>, owner: Option<u64>, when: WhenExhausted) -> EngineConfig {
    let mut config = no_expiry();
    config.sessions.max_session_memory = MIB;
    config.budget.device_memory = device;
    config.budget.owner_memory = owner;
    config.budget.when_exhausted = when;
    config.budget.wait_timeout = std::time::Duration::from_millis(5_000);
    config.budget.evict_idle = std::time::Duration::from_millis(1_000);
    // The in-memory pool can offload, but these tests are about ending sessions.
    config.budget.offload = false;
    config
}

fn alloc_error(error: SessionError) -> AllocError {
    match error {
        SessionError::Allocation { source, .. } => source,
        other => panic!("not an allocation error: {other}"),
    }
}

#[test]
fn fail_refuses_past_the_device_budget_and_names_it() {
    on_paused_time(|| async {
        let f = start(budget(Some(2 * MIB), None, WhenExhausted::Fail)).await;
        let a = f.engine.open("a").await.unwrap();
        let b = f.engine.open("b").await.unwrap();
        a.allocate(MIB).await.unwrap();
        b.allocate(MIB).await.unwrap();
        let c = f.engine.open("c").await.unwrap();
        let refused = alloc_error(c.allocate(1).await.unwrap_err());
        assert_eq!(
            refused,
            AllocError::OverBudget {
                scope: BudgetScope::Device,
                requested: 1,
                used: 2 * MIB,
                limit: 2 * MIB
            }
        );
        assert!(refused.to_string().contains("device"), "{refused}");
        assert_eq!(c.state(), State::Established, "a refusal ends nothing");
        assert_eq!(f.stats().await.budget.device_used, 2 * MIB);

        a.close().await.unwrap();
        c.allocate(MIB).await.unwrap();
        let stats = f.shutdown_clean().await;
        assert_eq!(stats.budget.device_used, 0);
        assert_eq!(stats.budget.device_peak, 2 * MIB);
    });
}

#[test]
fn an_allocation_no_budget_could_hold_is_refused_at_once_not_waited_for() {
    on_paused_time(|| async {
        let f = start(budget(Some(4 * MIB), Some(MIB / 2), WhenExhausted::Wait)).await;
        let a = f.engine.open("a").await.unwrap();
        let asked = Instant::now();
        let refused = alloc_error(a.allocate(MIB * 3 / 4).await.unwrap_err());
        assert_eq!(Instant::now(), asked, "no wait, not even on virtual time");
        assert_eq!(
            refused,
            AllocError::ExceedsBudget {
                scope: BudgetScope::Owner,
                requested: MIB * 3 / 4,
                limit: MIB / 2
            }
        );
        let zero = alloc_error(a.allocate(0).await.unwrap_err());
        assert_eq!(zero, AllocError::ZeroSize);
        let huge = alloc_error(a.allocate(u64::MAX).await.unwrap_err());
        assert!(matches!(huge, AllocError::TooLarge { .. }), "{huge}");
        assert_eq!(f.stats().await.budget.device_used, 0);
        f.shutdown_clean().await;
    });
}

#[test]
fn wait_gets_memory_when_it_comes_back_and_times_out_when_it_does_not() {
    on_paused_time(|| async {
        let f = start(budget(Some(2 * MIB), None, WhenExhausted::Wait)).await;
        let a = f.engine.open("a").await.unwrap();
        let b = f.engine.open("b").await.unwrap();
        a.allocate(MIB).await.unwrap();
        b.allocate(MIB).await.unwrap();

        let c = f.engine.open("c").await.unwrap();
        let asked = Instant::now();
        let waiting = actix::spawn({
            let c = c.clone();
            async move { c.allocate(MIB).await }
        });
        settle(2 * SEC).await;
        assert_eq!(f.stats().await.budget.waiting, 1);
        a.close().await.unwrap();
        waiting.await.unwrap().unwrap();
        let waited = Instant::now() - asked;
        assert!(waited >= 2 * SEC && waited < 3 * SEC, "{waited:?}");

        let d = f.engine.open("d").await.unwrap();
        let refused = alloc_error(d.allocate(MIB).await.unwrap_err());
        assert!(
            matches!(
                refused,
                AllocError::BudgetWaitTimedOut {
                    scope: BudgetScope::Device,
                    requested: MIB,
                    waited_ms: 5_000
                }
            ),
            "{refused}"
        );
        let stats = f.stats().await;
        assert_eq!(
            (stats.budget.device_used, stats.budget.waiting),
            (2 * MIB, 0)
        );
        let stats = f.shutdown_clean().await;
        assert_eq!(stats.budget.device_used, 0);
    });
}

#[test]
fn a_session_that_ends_while_waiting_leaves_nothing_charged() {
    on_paused_time(|| async {
        let f = start(budget(Some(MIB), None, WhenExhausted::Wait)).await;
        let a = f.engine.open("a").await.unwrap();
        a.allocate(MIB).await.unwrap();
        let b = f.engine.open("b").await.unwrap();
        let waiting = actix::spawn({
            let b = b.clone();
            async move { b.allocate(MIB).await }
        });
        settle(SEC).await;
        b.close().await.unwrap();
        assert!(waiting.await.unwrap().is_err(), "its session ended");
        a.close().await.unwrap();
        let stats = f.stats().await;
        assert_eq!((stats.budget.device_used, stats.budget.waiting), (0, 0));
        let c = f.engine.open("c").await.unwrap();
        c.allocate(MIB).await.unwrap();
        f.shutdown_clean().await;
    });
}

#[test]
fn evict_ends_the_least_recently_active_idle_session_without_a_lease() {
    on_paused_time(|| async {
        let mut f = start(budget(Some(3 * MIB), None, WhenExhausted::Evict)).await;
        let oldest_streaming = f.engine.open("streaming").await.unwrap();
        oldest_streaming.allocate(MIB).await.unwrap();
        let _stream = oldest_streaming.lease().await.unwrap();
        settle(SEC / 10).await;
        let old = f.engine.open("old").await.unwrap();
        old.allocate(MIB).await.unwrap();
        settle(SEC / 10).await;
        let recent = f.engine.open("recent").await.unwrap();
        recent.allocate(MIB).await.unwrap();
        settle(2 * SEC).await;

        let newcomer = f.engine.open("newcomer").await.unwrap();
        newcomer.allocate(MIB).await.unwrap();
        let end = f.next_end().await;
        assert_eq!((end.id, end.reason), (old.id(), EndReason::Evicted));
        assert_eq!(
            oldest_streaming.state(),
            State::Established,
            "a lease protects it"
        );
        assert_eq!(recent.state(), State::Established);
        let stats = f.stats().await;
        assert_eq!(stats.pressure.evicted, 1);
        assert_eq!(stats.budget.device_used, 3 * MIB);
        drop(_stream);
        f.shutdown_clean().await;
    });
}

#[test]
fn sessions_active_more_recently_than_evict_idle_are_not_evicted() {
    on_paused_time(|| async {
        let f = start(budget(Some(MIB), None, WhenExhausted::Evict)).await;
        let busy = f.engine.open("busy").await.unwrap();
        busy.allocate(MIB).await.unwrap();
        let newcomer = f.engine.open("newcomer").await.unwrap();
        // `busy` stays active: it can never be evicted, and the wait times out.
        let keep_busy = actix::spawn({
            let busy = busy.clone();
            async move {
                loop {
                    tokio::time::sleep(SEC / 4).await;
                    if busy.touch().await.is_err() {
                        break;
                    }
                }
            }
        });
        let refused = alloc_error(newcomer.allocate(MIB).await.unwrap_err());
        assert!(
            matches!(refused, AllocError::BudgetWaitTimedOut { .. }),
            "{refused}"
        );
        assert_eq!(busy.state(), State::Established);
        keep_busy.abort();
        f.shutdown_clean().await;
    });
}

#[test]
fn a_wait_evicts_a_session_once_it_has_been_idle_long_enough() {
    on_paused_time(|| async {
        let mut f = start(budget(Some(MIB), None, WhenExhausted::Evict)).await;
        let busy = f.engine.open("busy").await.unwrap();
        busy.allocate(MIB).await.unwrap();
        settle(SEC / 2).await;
        let newcomer = f.engine.open("newcomer").await.unwrap();
        let asked = Instant::now();
        // `busy` is idle for 0.5 s now, evictable at 1 s: within the 5 s wait.
        newcomer.allocate(MIB).await.unwrap();
        assert!(Instant::now() - asked < 2 * SEC);
        let end = f.next_end().await;
        assert_eq!((end.id, end.reason), (busy.id(), EndReason::Evicted));
        f.shutdown_clean().await;
    });
}

#[test]
fn an_owner_budget_evicts_only_that_owners_sessions() {
    on_paused_time(|| async {
        let mut f = start(budget(None, Some(2 * MIB), WhenExhausted::Evict)).await;
        let bob = f.engine.open("bob").await.unwrap();
        bob.allocate(MIB).await.unwrap(); // the least recently active of all
        settle(SEC / 10).await;
        let alice_1 = f.engine.open("alice").await.unwrap();
        alice_1.allocate(MIB).await.unwrap();
        settle(SEC / 10).await;
        let alice_2 = f.engine.open("alice").await.unwrap();
        alice_2.allocate(MIB).await.unwrap();
        settle(2 * SEC).await;

        let alice_3 = f.engine.open("alice").await.unwrap();
        alice_3.allocate(MIB).await.unwrap();
        let end = f.next_end().await;
        assert_eq!((end.id, end.reason), (alice_1.id(), EndReason::Evicted));
        assert_eq!(
            bob.state(),
            State::Established,
            "another owner's budget is not touched"
        );
        f.shutdown_clean().await;
    });
}
