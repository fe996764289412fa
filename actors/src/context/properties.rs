//! Properties of the default policy over random sessions.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn policy(config: ContextConfig) -> DecayingContext {
    DecayingContext::new(config).expect("valid config")
}

const DIM: usize = 4;

fn finite() -> impl Strategy<Value = f32> {
    prop_oneof![
        -1.0f32..1.0,
        proptest::num::f32::NORMAL | proptest::num::f32::SUBNORMAL | proptest::num::f32::ZERO,
    ]
}

fn nonzero_vector(dim: usize) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec(finite(), dim)
        .prop_filter("non-zero", |v| v.iter().any(|&x| x != 0.0))
}

fn any_intent() -> impl Strategy<Value = Option<Intent>> {
    proptest::option::of(
        (proptest::sample::select(vec!["a", "b", "c"]), 0.0f32..=1.0)
            .prop_map(|(label, confidence)| Intent::new(label, confidence)),
    )
}

fn any_turn(dim: usize) -> impl Strategy<Value = TurnSignal> {
    (
        proptest::option::weighted(0.8, nonzero_vector(dim)),
        any_intent(),
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(embedding, intent, negation)| TurnSignal {
            embedding,
            intent,
            negation,
        })
}

/// Turns with the seconds since the previous one.
fn any_session(dim: usize) -> impl Strategy<Value = Vec<(u64, TurnSignal)>> {
    proptest::collection::vec((0u64..4_000, any_turn(dim)), 1..24)
}

fn any_bad_turn() -> impl Strategy<Value = TurnSignal> {
    let bad_embedding = prop_oneof![
        Just(vec![1.0; DIM + 1]),
        Just(vec![1.0; DIM - 1]),
        Just(vec![]),
        Just(vec![0.0; DIM]),
        (
            0..DIM,
            proptest::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY])
        )
            .prop_map(|(i, bad)| {
                let mut v = vec![1.0; DIM];
                v[i] = bad;
                v
            }),
    ];
    let bad_intent = prop_oneof![
        Just(Intent::new("a", 1.5)),
        Just(Intent::new("a", f32::NAN)),
        Just(Intent::new("a", -0.5)),
        Just(Intent::new("", 0.5)),
    ];
    prop_oneof![
        (bad_embedding, any_intent(), any::<bool>()).prop_map(|(e, intent, negation)| {
            TurnSignal {
                embedding: Some(e),
                intent,
                negation,
            }
        }),
        (
            proptest::option::of(nonzero_vector(DIM)),
            bad_intent,
            any::<bool>()
        )
            .prop_map(|(embedding, i, negation)| TurnSignal {
                embedding,
                intent: Some(i),
                negation,
            }),
    ]
}

fn check_verdict(verdict: &ContextVerdict) {
    match verdict {
        ContextVerdict::Fresh {
            similarity: Some(s),
        }
        | ContextVerdict::Stale(StaleReason::LowSimilarity { similarity: s, .. }) => {
            assert!((-1.0..=1.0).contains(s), "similarity {s}");
        }
        ContextVerdict::Stale(StaleReason::Decayed { weight, .. }) => {
            assert!((0.0..=1.0).contains(weight), "weight {weight}");
        }
        _ => {}
    }
}

proptest! {
    #[test]
    fn verdicts_never_panic_and_similarity_stays_in_range(
        dim in 1usize..9,
        threshold in -1.0f32..=1.0,
        seed in any_session(8),
    ) {
        let mut p = policy(ContextConfig {
            similarity_threshold: threshold,
            ..Default::default()
        });
        let mut now = Instant::now();
        for (secs, mut turn) in seed {
            if let Some(e) = &mut turn.embedding {
                e.truncate(dim);
                if e.iter().all(|&x| x == 0.0) {
                    e[0] = 1.0;
                }
            }
            now += Duration::from_secs(secs);
            let verdict = p.assess(&turn, now).expect("valid turn");
            check_verdict(&verdict);
        }
    }

    #[test]
    fn an_error_never_changes_later_outcomes(
        turns in any_session(DIM),
        at in any::<proptest::sample::Index>(),
        bad in any_bad_turn(),
    ) {
        let config = ContextConfig { dimension: Some(DIM), ..Default::default() };
        let mut clean = policy(config);
        let mut disturbed = clean.clone();
        let bad_at = at.index(turns.len());
        let mut now = Instant::now();
        for (i, (secs, turn)) in turns.iter().enumerate() {
            now += Duration::from_secs(*secs);
            if i == bad_at {
                prop_assert!(disturbed.assess(&bad, now).is_err());
                prop_assert_eq!(&disturbed, &clean);
            }
            let expected = clean.assess(turn, now);
            prop_assert_eq!(disturbed.assess(turn, now), expected);
        }
        prop_assert_eq!(disturbed, clean);
    }
}
