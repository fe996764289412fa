//! Model-based test: random sequences of chats, leases, closes and the
//! passage of time, run against the real engine on paused time and against a
//! small reference model of what should happen. After every step the
//! session's observable state must match the model; at the end there must be
//! exactly one end, with the model's reason and drain outcome, and every
//! buffer back.
//!
//! Durations end in .5 s while steps land near whole seconds, so no
//! observation is ever taken at the instant a deadline fires.

use std::time::Duration;

use crate::common::*;
use proptest::prelude::*;
use sessionbus_actors::*;

const IDLE: f64 = 20.5;
const TTL: f64 = 120.5;
const DRAIN: f64 = 15.5;

#[derive(Clone, Debug)]
enum Op {
    Chat,
    TakeLease,
    /// Returns the n-th held lease (modulo how many are held).
    ReleaseLease(usize),
    Close,
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Chat),
        2 => Just(Op::TakeLease),
        2 => (0..4usize).prop_map(Op::ReleaseLease),
        1 => Just(Op::Close),
        4 => (1..30u64).prop_map(Op::Wait),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Established,
    Closing { since: f64, reason: EndReason },
    Ended { reason: EndReason, forced: bool },
}

/// The reference model: what the brief says should happen, in plain code.
#[derive(Debug)]
struct Model {
    last_active: f64,
    leases: usize,
    phase: Phase,
}

impl Model {
    /// Lets time run to `now`, firing whatever falls due in order.
    fn advance(&mut self, now: f64) {
        loop {
            match self.phase {
                Phase::Established => {
                    let idle = (self.leases == 0).then_some(self.last_active + IDLE);
                    let due = match idle {
                        Some(idle) if idle < TTL => (idle, EndReason::IdleTimeout),
                        _ => (TTL, EndReason::TtlExpired),
                    };
                    if due.0 > now {
                        return;
                    }
                    self.begin_end(due.0, due.1);
                }
                Phase::Closing { since, reason } if since + DRAIN <= now => {
                    self.phase = Phase::Ended {
                        reason,
                        forced: true,
                    };
                }
                _ => return,
            }
        }
    }

    fn begin_end(&mut self, at: f64, reason: EndReason) {
        self.phase = if self.leases == 0 {
            Phase::Ended {
                reason,
                forced: false,
            }
        } else {
            Phase::Closing { since: at, reason }
        };
    }

    fn state(&self) -> State {
        match self.phase {
            Phase::Established => State::Established,
            Phase::Closing { .. } => State::Closing,
            Phase::Ended { .. } => State::Closed,
        }
    }
}

fn run(ops: Vec<Op>) {
    on_paused_time(|| async move {
        let mut config = no_expiry();
        config.expiry.idle_timeout = Some(Duration::from_secs_f64(IDLE));
        config.expiry.ttl = Some(Duration::from_secs_f64(TTL));
        config.leases.drain_timeout = Duration::from_secs_f64(DRAIN);
        let mut f = start(config).await;
        let start = tokio::time::Instant::now();
        let now = || start.elapsed().as_secs_f64();
        let session = f.engine.open("model").await.unwrap();
        session.allocate(4096).await.unwrap();
        let mut model = Model {
            last_active: now(),
            leases: 0,
            phase: Phase::Established,
        };
        let mut held = Vec::new();
        let mut closes = Vec::new();
        for op in ops {
            let established = model.phase == Phase::Established;
            match op {
                Op::Chat => {
                    let answer = session.chat(Turn::new()).await;
                    assert_eq!(
                        answer.is_ok(),
                        established,
                        "chat in {:?}: {answer:?}",
                        model.phase
                    );
                    if established {
                        model.last_active = now();
                    }
                }
                Op::TakeLease => {
                    let answer = session.lease().await;
                    assert_eq!(answer.is_ok(), established, "lease in {:?}", model.phase);
                    if let Ok(lease) = answer {
                        held.push(lease);
                        model.leases += 1;
                        model.last_active = now();
                    }
                }
                Op::ReleaseLease(n) if !held.is_empty() => {
                    let lease = held.remove(n % held.len());
                    lease.release().await.unwrap();
                    if !matches!(model.phase, Phase::Ended { .. }) {
                        model.leases -= 1;
                        model.last_active = now();
                        if let Phase::Closing { reason, .. } = model.phase {
                            if model.leases == 0 {
                                model.phase = Phase::Ended {
                                    reason,
                                    forced: false,
                                };
                            }
                        }
                    }
                }
                Op::ReleaseLease(_) => {}
                Op::Close => {
                    closes.push(actix::spawn({
                        let session = session.clone();
                        async move { session.close().await }
                    }));
                    settle(Duration::from_millis(1)).await;
                    if established {
                        model.begin_end(now(), EndReason::Closed);
                    }
                }
                Op::Wait(secs) => {
                    settle(Duration::from_secs(secs)).await;
                    model.advance(now());
                }
            }
            if matches!(model.phase, Phase::Ended { .. }) {
                model.leases = 0;
            }
            settle(Duration::from_millis(1)).await;
            assert_eq!(
                session.state(),
                model.state(),
                "after {op:?} at {:.3} s: {model:?}",
                now()
            );
        }
        // Let the model and the engine run out: every path ends within TTL + drain.
        settle(Duration::from_secs_f64(TTL + DRAIN + 1.0)).await;
        model.advance(now());
        let Phase::Ended { reason, forced } = model.phase else {
            panic!("the model did not end: {model:?}");
        };
        let end = f.next_end().await;
        assert_eq!(end.id, session.id());
        assert_eq!(
            (end.reason, end.drain.was_forced()),
            (reason, forced),
            "{end:?}"
        );
        let receipt = f.next_release().await;
        assert_eq!(receipt.buffers, 1);
        for close in closes {
            assert_eq!(close.await.unwrap().unwrap(), *receipt);
        }
        drop(held);
        let stats = f.shutdown_clean().await;
        assert_eq!((stats.ended, stats.released, stats.incidents), (1, 1, 0));
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_session_does_what_the_model_says(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops);
    }
}
