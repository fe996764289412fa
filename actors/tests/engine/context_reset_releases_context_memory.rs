//! A stale conversation context is reset: its context-bound buffers are
//! released and a ContextReset is published, while the session stays
//! established. Bad signals are refused and change nothing.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use sessionbus_actors::*;

fn topic(axis: usize) -> Vec<f32> {
    let mut v = vec![0.01; 8];
    v[axis] = 1.0;
    v
}

#[test]
fn a_topic_shift_releases_the_context_buffers_and_keeps_the_session() {
    on_paused_time(|| async {
        let mut f = start(no_expiry()).await;
        let session = f.engine.open("alice").await.unwrap();
        let kept = session.allocate(MIB).await.unwrap();
        session.allocate_for_context(2 * MIB).await.unwrap();
        session.allocate_for_context(2 * MIB).await.unwrap();
        for _ in 0..2 {
            let ack = session.chat(Turn::new().embedding(topic(0))).await.unwrap();
            assert!(!ack.context.is_stale());
        }

        let ack = session.chat(Turn::new().embedding(topic(5))).await.unwrap();
        assert!(matches!(
            ack.context.stale_reason(),
            Some(StaleReason::LowSimilarity { .. })
        ));
        let reset = match f.next(EventKinds::CONTEXT_RESET).await {
            LifecycleEvent::ContextReset(reset) => reset,
            _ => unreachable!(),
        };
        assert_eq!((reset.id, reset.turn), (session.id(), 3));
        assert_eq!((reset.buffers, reset.bytes), (2, 4 * MIB));
        let info = session.info().await.unwrap();
        assert_eq!(info.state, State::Established);
        assert_eq!((info.buffers, info.bytes), (1, kept.bytes));
        assert_eq!(f.pool.stats().live_buffers, 1);

        // The new context is on topic 5 now.
        assert!(
            !session
                .chat(Turn::new().embedding(topic(5)))
                .await
                .unwrap()
                .context
                .is_stale()
        );
        let receipt = session.close().await.unwrap();
        assert_eq!(receipt.buffers, 1, "context buffers are not released twice");
        let stats = f.shutdown_clean().await;
        assert_eq!((stats.context_resets, stats.ended), (1, 1));
    });
}

#[test]
fn negation_intent_switch_and_decay_reset_the_context() {
    on_paused_time(|| async {
        let mut f = start(no_expiry()).await;
        let session = f.engine.open("bob").await.unwrap();
        let stale = |ack: TurnAck| ack.context.stale_reason().map(|r| r.as_str());
        session
            .chat(Turn::new().intent("billing", 0.6))
            .await
            .unwrap();
        let ack = session
            .chat(Turn::new().intent("refund", 0.9))
            .await
            .unwrap();
        assert_eq!(stale(ack), Some("intent_switch"));
        let ack = session.chat(Turn::new().negation()).await.unwrap();
        assert_eq!(stale(ack), Some("negation"));
        // The negation left an empty context; a turn on topic 1 starts a new one.
        let ack = session.chat(Turn::new().embedding(topic(1))).await.unwrap();
        assert_eq!(stale(ack), None);
        settle(Duration::from_secs(6 * 3600)).await; // half-life 10 min: long decayed
        let ack = session.chat(Turn::new().embedding(topic(1))).await.unwrap();
        assert_eq!(stale(ack), Some("decayed"));
        for _ in 0..3 {
            f.next(EventKinds::CONTEXT_RESET).await;
        }
        assert_eq!(session.info().await.unwrap().state, State::Established);
        let stats = f.shutdown_clean().await;
        assert_eq!((stats.context_resets, stats.incidents), (3, 0));
    });
}

#[test]
fn bad_embeddings_are_refused_and_change_nothing() {
    on_paused_time(|| async {
        let f = start(no_expiry()).await;
        let session = f.engine.open("carol").await.unwrap();
        session.allocate_for_context(MIB).await.unwrap();
        session.chat(Turn::new().embedding(topic(0))).await.unwrap();
        let before = session.info().await.unwrap();
        let mut nan = topic(0);
        nan[3] = f32::NAN;
        let mut inf = topic(0);
        inf[2] = f32::INFINITY;
        for (turn, says) in [
            (Turn::new().embedding(vec![1.0, 0.0]), "dimension"),
            (Turn::new().embedding(nan), "NaN"),
            (Turn::new().embedding(inf), "inf"),
            (Turn::new().embedding(vec![0.0; 8]), "zero"),
            (Turn::new().intent("x", 1.5), "confidence"),
        ] {
            let err = session.chat(turn).await.unwrap_err();
            assert!(matches!(err, SessionError::Context { .. }), "{err}");
            assert!(
                err.to_string().contains(says),
                "{err} should mention {says}"
            );
        }
        assert_eq!(
            session.info().await.unwrap(),
            before,
            "refused turns change nothing"
        );
        let ack = session.chat(Turn::new().embedding(topic(0))).await.unwrap();
        assert!(
            !ack.context.is_stale(),
            "the context survived the bad turns"
        );
        let stats = f.shutdown_clean().await;
        assert_eq!((stats.context_resets, stats.incidents), (0, 0));
    });
}

#[test]
fn the_application_can_replace_the_policy() {
    on_paused_time(|| async {
        let f = start(no_expiry()).await;
        let factory: ContextPolicyFactory = Arc::new(|| Box::new(EveryThird(0)));
        let session = f
            .engine
            .open_with(OpenOptions::new("dave").context_policy(factory))
            .await
            .unwrap();
        let mut resets = 0;
        for _ in 0..9 {
            let ack = session.chat(Turn::new().negation()).await.unwrap();
            resets += ack.context.is_stale() as u32;
        }
        assert_eq!(resets, 3);
        settle(Duration::from_millis(10)).await;
        let stats = f.shutdown_clean().await;
        assert_eq!(stats.context_resets, 3);
    });
}
