//! Every release carries per-step timings; a GPU release whose answer never
//! comes is detected at `supervision.step_timeout`, the session is
//! force-completed with an error receipt, and a late answer neither releases
//! twice nor leaves the budget charged. On paused time.

use std::sync::Arc;
use std::time::Duration;

use crate::common::stalling::StallingPool;
use crate::common::*;
use sessionbus_actors::*;

#[test]
fn a_release_the_pool_never_answers_is_force_completed() {
    on_paused_time(|| async {
        let inner = Arc::new(InMemoryPool::new(256 * MIB, 16 * MIB));
        let pool = Arc::new(StallingPool::new(inner.clone()));
        let mut config = no_expiry();
        config.supervision.step_timeout = std::time::Duration::from_millis(1_000);
        let engine = Engine::start(config, pool.clone()).unwrap();

        let healthy = engine.open("a").await.unwrap();
        healthy.allocate(MIB).await.unwrap();
        let receipt = healthy.close().await.unwrap();
        assert_eq!(receipt.steps.stuck, None);
        assert!(receipt.error.is_none());

        pool.stall(true);
        let stuck = engine.open("b").await.unwrap();
        stuck.allocate(2 * MIB).await.unwrap();
        let receipt = stuck.close().await.unwrap();
        assert_eq!(receipt.steps.stuck, Some(ReleaseStep::DestroyAndPoll));
        assert!(
            receipt.error.as_deref().unwrap().contains("stuck"),
            "{receipt:?}"
        );
        assert_eq!(receipt.buffers, 0, "nothing claimed released");
        assert_eq!(pool.held(), 1);

        let stats = engine.stats().await.unwrap();
        assert_eq!(stats.steps.stuck, 1);
        assert_eq!(
            stats.steps.destroy_and_poll.count, 1,
            "only the healthy release"
        );
        assert_eq!(stats.steps.queued.count, 2);
        assert!(stats.incidents >= 1);
        assert_eq!(stats.releasing, 0, "the session's books are closed");
        assert_eq!(
            stats.budget.device_used,
            2 * MIB,
            "not refunded while the memory is not back"
        );

        // The answer comes late: the memory is freed once, the budget refunded.
        pool.stall(false);
        pool.answer_late();
        settle(Duration::from_millis(10)).await;
        assert_eq!(inner.stats().live_buffers, 0);
        assert_eq!(inner.stats().released_total, 2);
        assert_eq!(engine.stats().await.unwrap().budget.device_used, 0);
        let report = engine.shutdown().await.unwrap();
        assert!(report.completed);
    });
}
