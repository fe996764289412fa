//! What the policy decided about one turn.

use std::fmt;

/// The policy's answer for one turn.
#[derive(Clone, Debug, PartialEq)]
pub enum ContextVerdict {
    /// The turn continues the current context.
    Fresh {
        /// Cosine similarity between the turn's embedding and the context, in
        /// `[-1, 1]`; `None` when the turn had no embedding or there was no
        /// context to compare with.
        similarity: Option<f32>,
    },
    /// The context is stale; the policy restarted it from this turn.
    Stale(StaleReason),
}

impl ContextVerdict {
    /// Whether the context went stale.
    pub fn is_stale(&self) -> bool {
        matches!(self, ContextVerdict::Stale(_))
    }

    /// Why the context went stale, if it did.
    pub fn stale_reason(&self) -> Option<&StaleReason> {
        match self {
            ContextVerdict::Fresh { .. } => None,
            ContextVerdict::Stale(reason) => Some(reason),
        }
    }
}

impl fmt::Display for ContextVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContextVerdict::Fresh {
                similarity: Some(s),
            } => write!(f, "fresh (similarity {s})"),
            ContextVerdict::Fresh { similarity: None } => f.write_str("fresh"),
            ContextVerdict::Stale(reason) => write!(f, "stale: {reason}"),
        }
    }
}

/// Why a context went stale. Serialises as `{"kind": "low_similarity", …}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StaleReason {
    /// The turn's embedding is too far from the context.
    LowSimilarity {
        /// The cosine similarity measured, in `[-1, 1]`.
        similarity: f32,
        /// The configured threshold it fell below.
        threshold: f32,
    },
    /// The conversation was idle so long that the context's weight decayed
    /// below the configured minimum.
    Decayed {
        /// The context's weight when the turn arrived, in `[0, 1]`.
        weight: f32,
        /// The configured minimum it fell below.
        min_weight: f32,
    },
    /// The turn's intent differs from the current one and is more confident.
    IntentSwitch {
        /// The current intent's label.
        from: String,
        /// The turn's intent label.
        to: String,
        /// The turn's intent confidence.
        confidence: f32,
    },
    /// The user rejected what came before.
    Negation,
}

impl StaleReason {
    /// The stable snake_case name, for logs and metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            StaleReason::LowSimilarity { .. } => "low_similarity",
            StaleReason::Decayed { .. } => "decayed",
            StaleReason::IntentSwitch { .. } => "intent_switch",
            StaleReason::Negation => "negation",
        }
    }
}

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.as_str();
        match self {
            StaleReason::LowSimilarity {
                similarity,
                threshold,
            } => write!(
                f,
                "{name} (similarity {similarity} < threshold {threshold})"
            ),
            StaleReason::Decayed { weight, min_weight } => {
                write!(f, "{name} (weight {weight} < min_weight {min_weight})")
            }
            StaleReason::IntentSwitch {
                from,
                to,
                confidence,
            } => write!(f, "{name} ({from:?} -> {to:?}, confidence {confidence})"),
            StaleReason::Negation => f.write_str(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable() {
        let reasons = [
            StaleReason::LowSimilarity {
                similarity: 0.1,
                threshold: 0.4,
            },
            StaleReason::Decayed {
                weight: 0.01,
                min_weight: 0.05,
            },
            StaleReason::IntentSwitch {
                from: "billing".into(),
                to: "refund".into(),
                confidence: 0.9,
            },
            StaleReason::Negation,
        ];
        let names: Vec<_> = reasons.iter().map(StaleReason::as_str).collect();
        assert_eq!(
            names,
            ["low_similarity", "decayed", "intent_switch", "negation"]
        );
        for reason in &reasons {
            assert!(reason.to_string().starts_with(reason.as_str()));
        }
        assert_eq!(
            reasons[2].to_string(),
            r#"intent_switch ("billing" -> "refund", confidence 0.9)"#
        );
    }

    #[test]
    fn verdict_helpers() {
        let fresh = ContextVerdict::Fresh {
            similarity: Some(0.5),
        };
        assert!(!fresh.is_stale());
        assert_eq!(fresh.stale_reason(), None);
        assert_eq!(fresh.to_string(), "fresh (similarity 0.5)");
        let stale = ContextVerdict::Stale(StaleReason::Negation);
        assert!(stale.is_stale());
        assert_eq!(stale.stale_reason(), Some(&StaleReason::Negation));
        assert_eq!(stale.to_string(), "stale: negation");
    }
}
