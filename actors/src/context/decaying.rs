//! The default policy: a decaying mean of the conversation's embeddings.

use std::sync::Arc;
use std::time::Instant;

use super::vector::{blend, cosine, validate_turn};
use super::{
    ContextConfig, ContextError, ContextPolicy, ContextPolicyFactory, ContextVerdict, Intent,
    StaleReason, TurnSignal,
};
use crate::config::ConfigError;

/// The default [`ContextPolicy`]: the context is a decaying mean of the
/// conversation's turn embeddings, plus its current intent.
///
/// State: a context vector `c` (unit length), the context's weight `w` at the
/// last turn, that turn's time, the current intent, and the dimension.
///
/// A turn arriving `t` seconds after the last one, with half-life `h`, is
/// assessed in this order; the first rule that fires decides:
/// 1. The whole turn is validated; an `Err` changes nothing.
/// 2. `negation` → `Stale(Negation)`.
/// 3. The weight decays: `w' = w · 0.5^(t / h)`. If there is a context
///    (a vector or an intent) and `w' < min_weight` → `Stale(Decayed)`.
///    This applies to every turn, with or without an embedding.
/// 4. The turn's intent has another label than the current intent and a
///    greater confidence → `Stale(IntentSwitch)`. A less (or equally)
///    confident other label is ignored and the current intent kept.
/// 5. With an embedding `e` (normalised to unit length) and a context vector:
///    `s = cos(e, c)`; `s < similarity_threshold` → `Stale(LowSimilarity)`.
/// 6. Otherwise `Fresh { similarity: s }` (`None` without a comparison), and
///    the context takes the turn in: `c ← normalise(w' · c + e)` (just `e` if
///    there was no vector, or if the two cancel out), the intent becomes the
///    turn's if there was none or the label is the same (its confidence is
///    the latest), and `w ← 1`, since the conversation is active now.
///
/// So `c` is an exponentially weighted mean of the turn directions: each turn
/// halves the weight of everything before it, and idle time shrinks it
/// further. A turn with no embedding, intent or negation is `Fresh` (unless
/// the context decayed) and only refreshes the time.
///
/// A `Stale` verdict restarts the context from this turn: `c = e` if it has an
/// embedding (none otherwise), the intent is the turn's (if any), `w = 1`.
/// The dimension, once fixed, stays for the policy's life.
///
/// Turns whose `now` is earlier than the last turn's count as no time passing.
#[derive(Clone, Debug, PartialEq)]
pub struct DecayingContext {
    config: ContextConfig,
    dimension: Option<usize>,
    vector: Option<Vec<f32>>,
    weight: f32,
    intent: Option<Intent>,
    last_turn: Option<Instant>,
}

impl DecayingContext {
    /// A policy with no context yet, or the config's validation error.
    pub fn new(config: ContextConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(DecayingContext {
            dimension: config.dimension,
            config,
            vector: None,
            weight: 0.0,
            intent: None,
            last_turn: None,
        })
    }

    /// A factory that builds a `DecayingContext` per session from `config`,
    /// validated once here.
    pub fn factory(config: ContextConfig) -> Result<ContextPolicyFactory, ConfigError> {
        let prototype = DecayingContext::new(config)?;
        Ok(Arc::new(move || Box::new(prototype.clone())))
    }

    /// The settings it was built with.
    pub fn config(&self) -> &ContextConfig {
        &self.config
    }

    /// The embedding length, once configured or fixed by the first embedding.
    pub fn dimension(&self) -> Option<usize> {
        self.dimension
    }

    /// The current intent, if any.
    pub fn intent(&self) -> Option<&Intent> {
        self.intent.as_ref()
    }

    /// Whether there is a context (a vector or an intent) that can go stale.
    pub fn has_context(&self) -> bool {
        self.vector.is_some() || self.intent.is_some()
    }

    /// The context's weight at `now`, in `[0, 1]`: 1 right after a turn,
    /// halving every `half_life`; 0 when there is no context.
    pub fn weight_at(&self, now: Instant) -> f32 {
        if !self.has_context() {
            return 0.0;
        }
        let Some(last) = self.last_turn else {
            return 0.0;
        };
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let decay = 0.5_f64.powf(elapsed / self.config.half_life.as_secs_f64());
        (f64::from(self.weight) * decay) as f32
    }

    fn restart(&mut self, turn: &TurnSignal, embedding: Option<Vec<f32>>, now: Instant) {
        self.vector = embedding;
        self.intent = turn.intent.clone();
        self.weight = 1.0;
        self.last_turn = Some(now);
    }

    fn fix_dimension(&mut self, embedding: Option<&Vec<f32>>) {
        if self.dimension.is_none() {
            self.dimension = embedding.map(Vec::len);
        }
    }

    /// Rules 2–5: why this turn makes the context stale, or `None` if fresh.
    fn stale_reason(
        &self,
        turn: &TurnSignal,
        weight: f32,
        similarity: Option<f32>,
    ) -> Option<StaleReason> {
        if turn.negation {
            return Some(StaleReason::Negation);
        }
        let min_weight = self.config.min_weight;
        if self.has_context() && weight < min_weight {
            return Some(StaleReason::Decayed { weight, min_weight });
        }
        if let (Some(current), Some(new)) = (&self.intent, &turn.intent) {
            if new.label != current.label && new.confidence > current.confidence {
                return Some(StaleReason::IntentSwitch {
                    from: current.label.clone(),
                    to: new.label.clone(),
                    confidence: new.confidence,
                });
            }
        }
        let threshold = self.config.similarity_threshold;
        match similarity {
            Some(similarity) if similarity < threshold => Some(StaleReason::LowSimilarity {
                similarity,
                threshold,
            }),
            _ => None,
        }
    }

    /// Rule 6: a fresh turn joins the context.
    fn take_in(
        &mut self,
        turn: &TurnSignal,
        embedding: Option<Vec<f32>>,
        weight: f32,
        now: Instant,
    ) {
        if let Some(e) = embedding {
            self.vector = Some(match &self.vector {
                Some(c) => blend(c, weight, &e),
                None => e,
            });
        }
        if let Some(new) = &turn.intent {
            match &mut self.intent {
                Some(current) if current.label == new.label => current.confidence = new.confidence,
                Some(_) => {}
                None => self.intent = Some(new.clone()),
            }
        }
        self.weight = 1.0;
        self.last_turn = Some(now);
    }
}

impl ContextPolicy for DecayingContext {
    fn assess(&mut self, turn: &TurnSignal, now: Instant) -> Result<ContextVerdict, ContextError> {
        let embedding = validate_turn(turn, self.dimension)?;
        if !self.config.enabled {
            return Ok(ContextVerdict::Fresh { similarity: None });
        }
        self.fix_dimension(embedding.as_ref());
        let weight = self.weight_at(now);
        let similarity = match (&embedding, &self.vector) {
            (Some(e), Some(c)) => Some(cosine(e, c)),
            _ => None,
        };
        if let Some(reason) = self.stale_reason(turn, weight, similarity) {
            self.restart(turn, embedding, now);
            return Ok(ContextVerdict::Stale(reason));
        }
        self.take_in(turn, embedding, weight, now);
        Ok(ContextVerdict::Fresh { similarity })
    }
}
