//! Issue 15 (3), in the engine: ending every session on a device loss counts
//! only the ends it began (a session already closing keeps its own end), and
//! waits for every release only up to its deadline; an offload or a restore
//! that the pool never answers gives up at `supervision.step_timeout`, so
//! the session (which handles nothing else meanwhile) goes on answering, and
//! its books agree again once the pool carries the request out late. On
//! paused time.

use std::sync::Arc;
use std::time::Duration;

use crate::common::stalling::StallingPool;
use crate::common::*;
use sessionbus_actors::*;

#[test]
fn a_device_loss_counts_the_ends_it_began_and_waits_until_its_deadline() {
    on_paused_time(|| async {
        let mut config = no_expiry();
        config.leases.drain_timeout = std::time::Duration::from_secs(3_600);
        let f = start(config).await;
        // Closing, draining a lease that comes back 200 ms after the loss.
        let closing = f.engine.open("closing").await.unwrap();
        closing.allocate(MIB).await.unwrap();
        let returned_soon = closing.lease().await.unwrap();
        let close = actix::spawn({
            let closing = closing.clone();
            async move { closing.close().await }
        });
        while closing.state() != State::Closing {
            settle(Duration::from_millis(1)).await;
        }
        let live = f.engine.open("live").await.unwrap();
        live.allocate(MIB).await.unwrap();
        // Live, with a lease that is not returned before the deadline.
        let held = f.engine.open("held").await.unwrap();
        held.allocate(MIB).await.unwrap();
        let never_returned = held.lease().await.unwrap();
        actix::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(returned_soon);
        });

        let report = f
            .engine
            .end_sessions_on_device_loss_within(Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(report.ended, 2, "live and held; not the closing one");
        assert_eq!(report.already_ending, 1);
        assert_eq!(report.unreleased, 1, "held is still draining");
        assert!(!report.completed);
        assert_eq!(report.took, Duration::from_secs(5), "the deadline, exactly");

        let receipt = close.await.unwrap().unwrap();
        assert_eq!(receipt.reason, EndReason::Closed, "its own end stood");
        drop(never_returned);
        assert_eq!(held.close().await.unwrap().reason, EndReason::DeviceLost);
        let stats = f.stats().await;
        assert_eq!(
            stats.ended_by,
            vec![(EndReason::Closed, 1), (EndReason::DeviceLost, 2)]
        );
        // Nothing live: nothing to end, nothing to wait for.
        assert_eq!(f.engine.end_sessions_on_device_loss().await, Ok(0));
        drop((closing, live, held));
        f.shutdown_clean().await;
    });
}

#[test]
fn an_offload_or_restore_the_pool_never_answers_gives_up_at_the_step_timeout() {
    on_paused_time(|| async {
        let inner = Arc::new(InMemoryPool::new(256 * MIB, 16 * MIB));
        let pool = Arc::new(StallingPool::new(inner.clone()));
        let mut config = no_expiry();
        config.supervision.step_timeout = std::time::Duration::from_millis(1_000);
        let engine = Engine::start(config, pool.clone()).unwrap();
        let a = engine.open("a").await.unwrap();
        a.allocate(MIB).await.unwrap();
        let b = engine.open("b").await.unwrap();
        b.allocate(MIB).await.unwrap();
        b.offload().await.unwrap();

        pool.stall_moves(true);
        let offload = a.offload().await;
        assert!(
            matches!(
                offload,
                Err(SessionError::Allocation {
                    source: AllocError::Gpu(GpuError::TimedOut {
                        operation: "offload",
                        ..
                    }),
                    ..
                })
            ),
            "{offload:?}"
        );
        a.touch().await.expect("answers once the offload gave up");
        // A restore that never comes back fails the request that needed it.
        let restore = b.allocate(MIB).await;
        let Err(SessionError::Allocation {
            source: AllocError::RestoreFailed(cause),
            ..
        }) = &restore
        else {
            panic!("a failed restore, got {restore:?}");
        };
        assert!(
            matches!(
                **cause,
                AllocError::Gpu(GpuError::TimedOut {
                    operation: "restore",
                    ..
                })
            ),
            "{cause:?}"
        );
        b.touch().await.expect("answers once the restore gave up");

        // The pool carries both out late, in order; the next use of each
        // session brings its buffers back (or finds them back already).
        pool.stall_moves(false);
        pool.move_late();
        a.allocate(MIB).await.expect("a's buffers restored first");
        b.allocate(MIB).await.expect("b's buffers found on the GPU");
        let stats = inner.stats();
        assert_eq!((stats.live_buffers, stats.offloaded_buffers), (4, 0));
        assert_eq!(
            engine.stats().await.unwrap().budget.device_used,
            4 * MIB,
            "each buffer charged once"
        );
        assert_eq!(a.close().await.unwrap().buffers, 2);
        assert_eq!(b.close().await.unwrap().buffers, 2);
        let report = engine.shutdown().await.unwrap();
        assert!(report.completed);
        assert_eq!(report.stats.budget.device_used, 0);
        assert_eq!(inner.stats().live_buffers, 0);
    });
}
