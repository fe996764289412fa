//! Sessions spread over several registry shards (`[sessions] shards`): opens
//! go to every shard in turn, an id always finds its shard, and what must be
//! one thing for the engine stays one thing: exactly one end per session,
//! one `max_sessions`, one budget whose pressure picks the least recently
//! active session of *any* shard, one subscription id, one stats view, one
//! shutdown. Four shards on one thread, on paused time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use sessionbus_actors::*;

const SHARDS: usize = 4;
const SEC: Duration = Duration::from_secs(1);

fn sharded() -> EngineConfig {
    crate::common::sharded(SHARDS)
}

fn shard_of(id: SessionId) -> usize {
    crate::common::shard_of(id, SHARDS)
}

#[test]
fn opens_go_to_every_shard_in_turn_and_each_id_finds_its_shard_again() {
    on_paused_time(|| async {
        let f = start(sharded()).await;
        let mut sessions = Vec::new();
        for i in 0..(4 * SHARDS) {
            sessions.push(f.engine.open(format!("u{i}")).await.unwrap());
        }
        let mut per_shard: HashMap<usize, usize> = HashMap::new();
        for session in &sessions {
            *per_shard.entry(shard_of(session.id())).or_default() += 1;
        }
        assert_eq!(per_shard.len(), SHARDS, "{per_shard:?}");
        assert!(per_shard.values().all(|n| *n == 4), "{per_shard:?}");
        // Attach, close and an operator's end by id reach the right shard.
        for (i, session) in sessions.iter().enumerate() {
            let again = f
                .engine
                .attach(session.id(), Owner::new(format!("u{i}")))
                .await
                .unwrap();
            again.touch().await.unwrap();
        }
        let stranger = f
            .engine
            .attach(sessions[1].id(), Owner::new("mallory"))
            .await;
        assert!(matches!(stranger, Err(SessionError::Unauthorized { .. })));
        let unknown = SessionId::random();
        assert!(matches!(
            f.engine.close(unknown, Owner::new("u0")).await,
            Err(SessionError::Unknown { .. })
        ));
        let stats = f.stats().await;
        assert_eq!((stats.live, stats.opened), (4 * SHARDS, 4 * SHARDS as u64));
        let listed: HashSet<_> = f
            .engine
            .live_sessions(None)
            .await
            .unwrap()
            .into_iter()
            .collect();
        let opened: HashSet<_> = sessions.iter().map(|s| s.id()).collect();
        assert_eq!(listed, opened, "one listing of every shard");
        let operator = Caller::Operator("ops".into());
        for session in &sessions {
            f.engine
                .end(session.id(), operator.clone(), EndReason::Evicted)
                .await
                .unwrap();
        }
        let stats = f.stats().await;
        assert_eq!((stats.live, stats.ended, stats.released), (0, 16, 16));
        f.shutdown_clean().await;
    });
}

#[test]
fn racing_ends_on_every_shard_still_publish_exactly_one_end_per_session() {
    on_paused_time(|| async {
        let mut f = start(sharded()).await;
        let mut sessions = Vec::new();
        for i in 0..40 {
            let session = f.engine.open(format!("u{i}")).await.unwrap();
            session.allocate(4096).await.unwrap();
            sessions.push(session);
        }
        // Each session is closed by its handle, by id and by an operator at once.
        let mut racing = Vec::new();
        for session in &sessions {
            let (engine, by_handle, id) = (f.engine.clone(), session.clone(), session.id());
            racing.push(actix::spawn(async move {
                let operator = Caller::Operator("ops".into());
                let (a, b, c) = futures::join!(
                    by_handle.close(),
                    engine.close(id, operator.clone()),
                    engine.end(id, operator, EndReason::NodeLost),
                );
                // Every caller gets the one receipt of the one end.
                let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
                assert_eq!((a.reason, a.buffers), (b.reason, b.buffers));
                assert_eq!((b.reason, b.buffers), (c.reason, c.buffers));
            }));
        }
        for race in racing {
            race.await.unwrap();
        }
        let mut ended = HashMap::new();
        for _ in 0..40 {
            *ended.entry(f.next_end().await.id).or_insert(0) += 1;
        }
        assert!(ended.values().all(|n| *n == 1), "{ended:?}");
        settle(SEC).await;
        while let Ok(event) = f.events.try_recv() {
            assert!(
                !matches!(event, LifecycleEvent::Ended(_)),
                "a second end: {event:?}"
            );
        }
        let stats = f.stats().await;
        assert_eq!(
            (stats.ended, stats.released, stats.released_buffers),
            (40, 40, 40)
        );
        assert_eq!(stats.budget.device_used, 0);
        f.shutdown_clean().await;
    });
}

#[test]
fn max_sessions_is_one_limit_for_every_shard() {
    on_paused_time(|| async {
        let mut config = sharded();
        config.sessions.max_sessions = 5;
        let f = start(config).await;
        let mut sessions = Vec::new();
        for i in 0..5 {
            sessions.push(f.engine.open(format!("u{i}")).await.unwrap());
        }
        for _ in 0..SHARDS {
            // Whichever shard's turn it is, the engine is full.
            let refused = f.engine.open("late").await.unwrap_err();
            assert!(
                matches!(refused, OpenError::AtCapacity { limit: 5 }),
                "{refused}"
            );
        }
        sessions.pop().unwrap().close().await.unwrap();
        sessions.push(f.engine.open("next").await.unwrap());
        assert_eq!(f.stats().await.live, 5);
        f.shutdown_clean().await;
    });
}

#[test]
fn pressure_evicts_the_least_recently_active_session_whichever_shard_holds_it() {
    on_paused_time(|| async {
        let mut config = sharded();
        config.sessions.max_session_memory = MIB;
        config.budget.device_memory = Some(4 * MIB);
        config.budget.when_exhausted = WhenExhausted::Evict;
        config.budget.evict_idle = SEC;
        config.budget.offload = false;
        let mut f = start(config).await;
        // One session per shard, each holding a quarter of the device.
        let mut sessions = Vec::new();
        for i in 0..SHARDS {
            let session = f.engine.open(format!("u{i}")).await.unwrap();
            session.allocate(MIB).await.unwrap();
            sessions.push(session);
        }
        settle(2 * SEC).await;
        // Activity in an order unrelated to the shards: the least recently
        // active is the one touched first.
        let order = [2, 0, 3, 1];
        for i in order {
            sessions[i].touch().await.unwrap();
            settle(SEC / 10).await;
        }
        settle(2 * SEC).await;
        let newcomer = f.engine.open("newcomer").await.unwrap();
        let coldest = &sessions[order[0]];
        assert_ne!(
            shard_of(coldest.id()),
            shard_of(newcomer.id()),
            "the coldest session sits on another shard than the one asking"
        );
        newcomer.allocate(MIB).await.unwrap();
        let end = f.next_end().await;
        assert_eq!((end.id, end.reason), (coldest.id(), EndReason::Evicted));
        for i in &order[1..] {
            assert_eq!(sessions[*i].state(), State::Established);
        }
        let stats = f.stats().await;
        assert_eq!((stats.pressure.evicted, stats.pressure.make_room), (1, 1));
        assert_eq!(stats.budget.device_used, 4 * MIB);
        f.shutdown_clean().await;
    });
}

/// Counts the `Started` events it hears.
struct Listener(Arc<std::sync::Mutex<Vec<SessionId>>>);

impl actix::Actor for Listener {
    type Context = actix::Context<Self>;
}

impl actix::Handler<LifecycleEvent> for Listener {
    type Result = ();

    fn handle(&mut self, event: LifecycleEvent, _ctx: &mut Self::Context) {
        if let LifecycleEvent::Started(started) = event {
            self.0.lock().unwrap().push(started.id);
        }
    }
}

#[test]
fn one_subscription_hears_every_shard_and_one_unsubscribe_silences_them_all() {
    on_paused_time(|| async {
        use actix::Actor;
        let f = start(sharded()).await;
        let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = Listener(heard.clone()).start();
        let id = f
            .engine
            .subscribe(
                listener.recipient(),
                EventKinds::STARTED,
                Delivery::Reliable,
            )
            .await
            .unwrap();
        let mut sessions = Vec::new();
        for i in 0..(2 * SHARDS) {
            sessions.push(f.engine.open(format!("u{i}")).await.unwrap());
        }
        settle(SEC).await;
        let shards: HashSet<_> = heard
            .lock()
            .unwrap()
            .iter()
            .map(|id| shard_of(*id))
            .collect();
        assert_eq!(heard.lock().unwrap().len(), 2 * SHARDS);
        assert_eq!(shards.len(), SHARDS, "events from every shard");
        assert!(f.engine.unsubscribe(id).await.unwrap());
        assert!(
            !f.engine.unsubscribe(id).await.unwrap(),
            "gone from every shard"
        );
        for i in 0..SHARDS {
            sessions.push(f.engine.open(format!("v{i}")).await.unwrap());
        }
        settle(SEC).await;
        assert_eq!(
            heard.lock().unwrap().len(),
            2 * SHARDS,
            "nothing after the unsubscribe"
        );
        f.shutdown_clean().await;
    });
}
