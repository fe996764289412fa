//! Live traffic first: while live sessions handle messages and the engine
//! thread runs late (`release.live_lag`), a storm's release gives way and
//! backs off; once the thread is on time again it returns to full speed.
//! With nobody live, with live sessions that send nothing (a mass expiry of
//! idle sessions: the ends themselves make the engine late), or with
//! `live_lag = "off"`, nothing is held back.
//!
//! A busy engine thread is simulated exactly on paused time: a task on the
//! engine thread that moves the clock on by 1 ms each time it runs, so every
//! other task there (the release dispatcher's probe among them) sees the
//! thread 1 ms late, as it would behind a real 1 ms of work.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use crate::common::*;
use futures::future::join_all;
use sessionbus_actors::*;

const KIB: u64 = 1 << 10;
const STORM: usize = 40;

/// Runs on the engine thread until `busy` is cleared; each turn takes 1 ms
/// of (paused) time. Counts its turns.
fn hog(busy: Rc<Cell<bool>>, turns: Rc<Cell<u64>>) {
    actix::spawn(async move {
        while busy.get() {
            // `advance` steps aside once itself: one 1 ms turn per round
            // of the engine thread's ready tasks.
            tokio::time::advance(Duration::from_millis(1)).await;
            turns.set(turns.get() + 1);
        }
    });
}

async fn storm_population(f: &Fixture) -> Vec<SessionHandle> {
    let mut sessions = Vec::new();
    for i in 0..STORM {
        let session = f.engine.open(format!("storm-{i}")).await.unwrap();
        session.allocate(KIB).await.unwrap();
        sessions.push(session);
    }
    sessions
}

/// A live session that keeps talking (a touch per turn of the engine
/// thread) until `busy` is cleared.
fn talk(session: SessionHandle, busy: Rc<Cell<bool>>) {
    actix::spawn(async move {
        while busy.get() {
            let _ = session.touch().await;
            tokio::task::yield_now().await;
        }
    });
}

/// Closes every session at once, each on a task of its own; the tasks
/// resolve with the receipts.
fn close_all(sessions: &[SessionHandle]) -> Vec<tokio::task::JoinHandle<ReleaseReceipt>> {
    sessions
        .iter()
        .cloned()
        .map(|session| actix::spawn(async move { session.close().await.unwrap() }))
        .collect()
}

#[test]
fn a_storm_gives_way_while_the_engine_runs_late_and_returns_to_full_speed() {
    on_paused_time(|| async {
        let f = start(no_expiry()).await;
        let live = f.engine.open("live").await.unwrap();
        let storm = storm_population(&f).await;
        let (busy, turns) = (Rc::new(Cell::new(true)), Rc::new(Cell::new(0)));
        hog(busy.clone(), turns.clone());
        talk(live.clone(), busy.clone());

        let closes = close_all(&storm);
        // Every end is published and queued; the probe finds the engine late
        // and release backs off. (The very first release may go: the probe
        // has seen nothing late yet.)
        let late = loop {
            let queue = f.stats().await.release_queue;
            if queue.queued >= STORM as u64 - 1 && queue.backoff_level >= 3 {
                break queue;
            }
            assert!(turns.get() < 10_000, "release never backed off: {queue:?}");
        };
        let held = f.pool.stats().live_buffers;
        // A hundred more late turns: not one more buffer released.
        let until = turns.get() + 100;
        while turns.get() < until {
            tokio::task::yield_now().await;
        }
        let still = f.stats().await.release_queue;
        assert_eq!(f.pool.stats().live_buffers, held);
        assert_eq!(still.queued, late.queued);
        assert!(still.backoff_level >= late.backoff_level, "{still:?}");

        // On time again: every release goes, and the level is back at 0.
        busy.set(false);
        let receipts = join_all(closes).await;
        assert!(
            receipts
                .into_iter()
                .map(Result::unwrap)
                .all(|r| r.buffers == 1 && r.error.is_none())
        );
        assert_eq!(f.pool.stats().live_buffers, 0);
        let queue = f.stats().await.release_queue;
        assert_eq!(
            queue,
            ReleaseQueueStats::default(),
            "full speed, nothing queued"
        );
        f.shutdown_clean().await;
    });
}

/// Closes the storm while the engine thread stays late throughout, with
/// `silent` live sessions that send nothing: nothing is held back.
fn a_storm_is_not_held_back_with(silent: usize) {
    on_paused_time(move || async move {
        let f = start(no_expiry()).await;
        let mut quiet = Vec::new();
        for i in 0..silent {
            quiet.push(f.engine.open(format!("silent-{i}")).await.unwrap());
        }
        let storm = storm_population(&f).await;
        let (busy, turns) = (Rc::new(Cell::new(true)), Rc::new(Cell::new(0)));
        hog(busy.clone(), turns.clone());

        // Released while the engine thread still runs late: nobody's
        // messages wait behind the releases.
        let receipts = join_all(close_all(&storm)).await;
        assert!(busy.get() && turns.get() > 0, "the hog ran throughout");
        assert!(receipts.into_iter().all(|r| r.unwrap().error.is_none()));
        assert_eq!(f.pool.stats().live_buffers, 0);
        assert_eq!(f.stats().await.release_queue.backoff_level, 0);
        busy.set(false);
        drop(quiet);
        f.shutdown_clean().await;
    });
}

#[test]
fn with_nobody_live_a_storm_is_never_held_back() {
    a_storm_is_not_held_back_with(0);
}

#[test]
fn switched_off_release_follows_the_tiers_alone() {
    on_paused_time(|| async {
        let mut config = no_expiry();
        config.release.live_lag = None;
        let f = start(config).await;
        let _live = f.engine.open("live").await.unwrap();
        let storm = storm_population(&f).await;
        let (busy, turns) = (Rc::new(Cell::new(true)), Rc::new(Cell::new(0)));
        hog(busy.clone(), turns.clone());

        let receipts = join_all(close_all(&storm)).await;
        assert!(busy.get() && turns.get() > 0, "the hog ran throughout");
        assert!(receipts.into_iter().all(|r| r.unwrap().error.is_none()));
        assert_eq!(f.pool.stats().live_buffers, 0);
        let queue = f.stats().await.release_queue;
        assert_eq!(queue, ReleaseQueueStats::default(), "never backed off");
        busy.set(false);
        f.shutdown_clean().await;
    });
}

#[test]
fn live_sessions_that_send_nothing_do_not_hold_a_storm_back() {
    a_storm_is_not_held_back_with(1);
}
