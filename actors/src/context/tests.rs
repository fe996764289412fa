//! Behaviour of the default policy, with fake time.

use std::time::{Duration, Instant};

use super::*;

fn policy(config: ContextConfig) -> DecayingContext {
    DecayingContext::new(config).expect("valid config")
}

fn default_policy() -> DecayingContext {
    policy(ContextConfig::default())
}

fn embed(values: &[f32]) -> TurnSignal {
    TurnSignal {
        embedding: Some(values.to_vec()),
        ..Default::default()
    }
}

fn intent(label: &str, confidence: f32) -> TurnSignal {
    TurnSignal {
        intent: Some(Intent::new(label, confidence)),
        ..Default::default()
    }
}

fn negation() -> TurnSignal {
    TurnSignal {
        negation: true,
        ..Default::default()
    }
}

fn assess(policy: &mut DecayingContext, turn: &TurnSignal, at: Instant) -> ContextVerdict {
    policy.assess(turn, at).expect("valid turn")
}

fn similarity(verdict: &ContextVerdict) -> f32 {
    match verdict {
        ContextVerdict::Fresh {
            similarity: Some(s),
        } => *s,
        other => panic!("expected fresh with a similarity, got {other:?}"),
    }
}

const TOPIC_A: [f32; 3] = [1.0, 0.2, 0.0];
const TOPIC_B: [f32; 3] = [0.0, 0.0, 1.0];

/// A policy with a context: an embedding of topic A and intent "billing" at 0.6.
fn with_context(now: Instant) -> DecayingContext {
    let mut p = default_policy();
    let turn = TurnSignal {
        embedding: Some(TOPIC_A.to_vec()),
        intent: Some(Intent::new("billing", 0.6)),
        negation: false,
    };
    assert_eq!(
        assess(&mut p, &turn, now),
        ContextVerdict::Fresh { similarity: None }
    );
    p
}

#[test]
fn each_bad_input_is_a_clear_error_and_changes_nothing() {
    let t0 = Instant::now();
    let cases: Vec<(TurnSignal, &str)> = vec![
        (
            embed(&[1.0, 0.0]),
            "has 2 dimensions, but this context's embeddings have 3",
        ),
        (embed(&[1.0, f32::NAN, 0.0]), "index 1 is NaN"),
        (embed(&[1.0, 0.0, f32::INFINITY]), "index 2 is inf"),
        (embed(&[f32::NEG_INFINITY, 0.0, 0.0]), "index 0 is -inf"),
        (embed(&[0.0, -0.0, 0.0]), "all zeros"),
        (embed(&[]), "embedding is empty"),
        (intent("refund", 1.5), "confidence is 1.5"),
        (intent("refund", -0.1), "confidence is -0.1"),
        (intent("refund", f32::NAN), "confidence is NaN"),
        (intent("", 0.9), "label is blank"),
        (intent("  ", 0.9), "label is blank"),
    ];
    for (mut turn, message) in cases {
        for negate in [false, true] {
            turn.negation = negate;
            let mut p = with_context(t0);
            let before = p.clone();
            let err = p
                .assess(&turn, t0 + Duration::from_secs(5))
                .expect_err("refused");
            assert!(err.to_string().contains(message), "{err} / {message}");
            assert_eq!(p, before, "state changed by {turn:?}");
        }
    }
}

#[test]
fn errors_carry_the_offending_values() {
    let t0 = Instant::now();
    let mut p = with_context(t0);
    assert_eq!(
        p.assess(&embed(&[1.0; 4]), t0),
        Err(ContextError::WrongDimension {
            expected: 3,
            got: 4
        })
    );
    assert!(matches!(
        p.assess(&embed(&[0.0, f32::NAN, 1.0]), t0),
        Err(ContextError::NotFinite { index: 1, value }) if value.is_nan()
    ));
    assert_eq!(
        p.assess(&embed(&[0.0; 3]), t0),
        Err(ContextError::ZeroVector)
    );
    assert_eq!(p.assess(&embed(&[]), t0), Err(ContextError::EmptyEmbedding));
    assert_eq!(
        p.assess(&intent("x", 1.5), t0),
        Err(ContextError::ConfidenceOutOfRange { value: 1.5 })
    );
    assert_eq!(
        p.assess(&intent("", 0.5), t0),
        Err(ContextError::EmptyIntentLabel)
    );
}

#[test]
fn a_refused_first_turn_does_not_fix_the_dimension() {
    let t0 = Instant::now();
    let mut p = default_policy();
    assert!(p.assess(&embed(&[f32::NAN, 1.0]), t0).is_err());
    assert_eq!(p.dimension(), None);
    assess(&mut p, &embed(&[1.0, 0.0, 0.0]), t0);
    assert_eq!(p.dimension(), Some(3));
}

#[test]
fn a_configured_dimension_applies_from_the_first_turn() {
    let mut p = policy(ContextConfig {
        dimension: Some(4),
        ..Default::default()
    });
    assert_eq!(
        p.assess(&embed(&TOPIC_A), Instant::now()),
        Err(ContextError::WrongDimension {
            expected: 4,
            got: 3
        })
    );
}

#[test]
fn same_topic_stays_fresh() {
    let t0 = Instant::now();
    let mut p = with_context(t0);
    let variants = [
        [0.9, 0.3, 0.1],
        [1.1, 0.1, -0.1],
        [2.0, 0.4, 0.0],
        [0.8, 0.25, 0.05],
    ];
    for (i, v) in variants.iter().enumerate() {
        let at = t0 + Duration::from_secs(30 * (i as u64 + 1));
        let s = similarity(&assess(&mut p, &embed(v), at));
        assert!(s > 0.9, "similarity {s}");
    }
}

#[test]
fn an_orthogonal_topic_is_stale_with_low_similarity() {
    let t0 = Instant::now();
    let mut p = with_context(t0);
    let verdict = assess(&mut p, &embed(&TOPIC_B), t0 + Duration::from_secs(10));
    match verdict {
        ContextVerdict::Stale(StaleReason::LowSimilarity {
            similarity,
            threshold,
        }) => {
            assert!(similarity.abs() < 1e-6, "{similarity}");
            assert_eq!(threshold, 0.4);
        }
        other => panic!("expected low similarity, got {other:?}"),
    }
}

#[test]
fn after_stale_the_context_restarts_from_that_turn() {
    let t0 = Instant::now();
    let mut p = with_context(t0);
    assert!(assess(&mut p, &embed(&TOPIC_B), t0).is_stale());
    assert_eq!(p.intent(), None, "the old intent went with the old context");
    let s = similarity(&assess(&mut p, &embed(&[0.1, 0.0, 1.0]), t0));
    assert!(s > 0.99, "{s}");
    assert!(assess(&mut p, &embed(&TOPIC_A), t0).is_stale());
}

#[test]
fn weight_halves_every_half_life() {
    let t0 = Instant::now();
    let p = with_context(t0);
    assert_eq!(p.weight_at(t0), 1.0);
    let half = p.weight_at(t0 + Duration::from_secs(600));
    assert!((half - 0.5).abs() < 1e-6, "{half}");
    let quarter = p.weight_at(t0 + Duration::from_secs(1200));
    assert!((quarter - 0.25).abs() < 1e-6, "{quarter}");
    assert_eq!(default_policy().weight_at(t0), 0.0);
}

#[test]
fn long_inactivity_decays_the_context() {
    let t0 = Instant::now();
    let mut p = with_context(t0);
    // 30 minutes: weight 0.125, above 0.05.
    let half_hour = t0 + Duration::from_secs(1800);
    assert!(!assess(&mut p.clone(), &embed(&TOPIC_A), half_hour).is_stale());
    // Three hours: weight 2^-18.
    let verdict = assess(&mut p, &embed(&TOPIC_A), t0 + Duration::from_secs(3 * 3600));
    match verdict {
        ContextVerdict::Stale(StaleReason::Decayed { weight, min_weight }) => {
            assert!(weight < 1e-5, "{weight}");
            assert_eq!(min_weight, 0.05);
        }
        other => panic!("expected decayed, got {other:?}"),
    }
    // The restarted context is fresh again.
    assert_eq!(p.weight_at(t0 + Duration::from_secs(3 * 3600)), 1.0);
}

#[test]
fn an_empty_turn_is_fresh_and_refreshes_the_time() {
    let t0 = Instant::now();
    assert_eq!(
        assess(&mut default_policy(), &TurnSignal::default(), t0),
        ContextVerdict::Fresh { similarity: None }
    );
    let mut p = with_context(t0);
    let mut idle = p.clone();
    let forty = t0 + Duration::from_secs(40 * 60);
    let eighty = t0 + Duration::from_secs(80 * 60);
    assert_eq!(
        assess(&mut p, &TurnSignal::default(), forty),
        ContextVerdict::Fresh { similarity: None }
    );
    assert_eq!(p.intent(), Some(&Intent::new("billing", 0.6)));
    assert!(!assess(&mut p, &embed(&TOPIC_A), eighty).is_stale());
    assert!(assess(&mut idle, &embed(&TOPIC_A), eighty).is_stale());
}

#[test]
fn an_empty_turn_after_long_inactivity_is_decayed() {
    let t0 = Instant::now();
    let mut p = with_context(t0);
    let verdict = assess(
        &mut p,
        &TurnSignal::default(),
        t0 + Duration::from_secs(86_400),
    );
    assert_eq!(
        verdict.stale_reason().map(StaleReason::as_str),
        Some("decayed")
    );
    assert!(!p.has_context());
}

#[test]
fn time_going_backwards_counts_as_no_time() {
    let t0 = Instant::now() + Duration::from_secs(86_400);
    let mut p = with_context(t0);
    assert!(!assess(&mut p, &embed(&TOPIC_A), t0 - Duration::from_secs(3600)).is_stale());
}

#[test]
fn intent_switches_only_when_more_confident() {
    let t0 = Instant::now();
    let mut p = with_context(t0);
    for weaker in [0.5, 0.6] {
        assert!(!assess(&mut p, &intent("refund", weaker), t0).is_stale());
        assert_eq!(p.intent(), Some(&Intent::new("billing", 0.6)));
    }
    assert_eq!(
        assess(&mut p, &intent("refund", 0.9), t0),
        ContextVerdict::Stale(StaleReason::IntentSwitch {
            from: "billing".into(),
            to: "refund".into(),
            confidence: 0.9,
        })
    );
    assert_eq!(p.intent(), Some(&Intent::new("refund", 0.9)));
}

#[test]
fn same_intent_takes_the_latest_confidence() {
    let t0 = Instant::now();
    let mut p = with_context(t0);
    assert!(!assess(&mut p, &intent("billing", 0.3), t0).is_stale());
    assert_eq!(p.intent(), Some(&Intent::new("billing", 0.3)));
    assert!(assess(&mut p, &intent("refund", 0.4), t0).is_stale());
}

#[test]
fn a_first_intent_is_adopted() {
    let t0 = Instant::now();
    let mut p = default_policy();
    assess(&mut p, &embed(&TOPIC_A), t0);
    assert!(!assess(&mut p, &intent("billing", 0.99), t0).is_stale());
    assert_eq!(p.intent(), Some(&Intent::new("billing", 0.99)));
}

#[test]
fn negation_is_always_stale() {
    let t0 = Instant::now();
    assert_eq!(
        assess(&mut default_policy(), &negation(), t0),
        ContextVerdict::Stale(StaleReason::Negation)
    );
    let mut p = with_context(t0);
    let on_topic = TurnSignal {
        embedding: Some(TOPIC_A.to_vec()),
        intent: Some(Intent::new("billing", 1.0)),
        negation: true,
    };
    assert_eq!(
        assess(&mut p, &on_topic, t0),
        ContextVerdict::Stale(StaleReason::Negation)
    );
    // The negating turn starts the new context.
    let s = similarity(&assess(&mut p, &embed(&TOPIC_A), t0));
    assert!(s > 0.99, "{s}");
}

#[test]
fn opposite_turns_that_cancel_out_keep_a_usable_context() {
    let t0 = Instant::now();
    let mut p = policy(ContextConfig {
        similarity_threshold: -1.0,
        ..Default::default()
    });
    assess(&mut p, &embed(&[1.0, 0.0]), t0);
    let s = similarity(&assess(&mut p, &embed(&[-1.0, 0.0]), t0));
    assert_eq!(s, -1.0);
    let s = similarity(&assess(&mut p, &embed(&[-1.0, 0.0]), t0));
    assert!((s - 1.0).abs() < 1e-6, "{s}");
}

#[test]
fn disabled_is_never_stale_but_still_refuses_bad_turns() {
    let t0 = Instant::now();
    let mut p = policy(ContextConfig {
        enabled: false,
        ..Default::default()
    });
    assert!(!assess(&mut p, &negation(), t0).is_stale());
    assert!(!assess(&mut p, &embed(&TOPIC_A), t0).is_stale());
    assert!(!assess(&mut p, &embed(&[0.0, 1.0]), t0).is_stale());
    assert_eq!(p.assess(&embed(&[0.0]), t0), Err(ContextError::ZeroVector));
}

#[test]
fn factory_builds_independent_policies_and_refuses_bad_config() {
    let factory = DecayingContext::factory(ContextConfig::default()).expect("valid");
    let t0 = Instant::now();
    let mut first = factory();
    let mut second = factory();
    first.assess(&embed(&TOPIC_A), t0).expect("valid");
    assert!(
        first
            .assess(&embed(&TOPIC_B), t0)
            .expect("valid")
            .is_stale()
    );
    assert_eq!(
        second.assess(&embed(&[1.0, 2.0]), t0),
        Ok(ContextVerdict::Fresh { similarity: None })
    );
    let bad = ContextConfig {
        half_life: std::time::Duration::ZERO,
        ..Default::default()
    };
    let err = DecayingContext::factory(bad).err().expect("refused");
    assert_eq!(err.field, "context.half_life");
}
