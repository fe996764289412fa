//! Embedding checks and the vector math: f32 storage, f64 accumulation.

use super::{ContextError, Intent, TurnSignal};

/// Below this norm, a blend of context and turn has cancelled out and carries
/// no direction worth keeping (both inputs have norm 1).
const CANCELLED_NORM: f64 = 1e-6;

/// Checks the whole turn against `dimension` (if fixed) without changing
/// anything, and returns its embedding normalised to length 1.
pub(super) fn validate_turn(
    turn: &TurnSignal,
    dimension: Option<usize>,
) -> Result<Option<Vec<f32>>, ContextError> {
    let embedding = turn
        .embedding
        .as_deref()
        .map(|values| validate_embedding(values, dimension))
        .transpose()?;
    if let Some(intent) = &turn.intent {
        validate_intent(intent)?;
    }
    Ok(embedding)
}

fn validate_intent(intent: &Intent) -> Result<(), ContextError> {
    let value = intent.confidence;
    if !(value.is_finite() && (0.0..=1.0).contains(&value)) {
        return Err(ContextError::ConfidenceOutOfRange { value });
    }
    if intent.label.trim().is_empty() {
        return Err(ContextError::EmptyIntentLabel);
    }
    Ok(())
}

fn validate_embedding(values: &[f32], dimension: Option<usize>) -> Result<Vec<f32>, ContextError> {
    if values.is_empty() {
        return Err(ContextError::EmptyEmbedding);
    }
    if let Some(expected) = dimension.filter(|&d| d != values.len()) {
        return Err(ContextError::WrongDimension {
            expected,
            got: values.len(),
        });
    }
    if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(ContextError::NotFinite { index, value });
    }
    // Finite f32 squares cannot overflow or underflow to zero in f64, so a
    // non-zero value always gives a positive, finite norm.
    let norm = norm(values.iter().map(|&v| f64::from(v)));
    if norm == 0.0 {
        return Err(ContextError::ZeroVector);
    }
    Ok(scale(values.iter().map(|&v| f64::from(v)), norm))
}

/// Cosine similarity of two non-zero vectors of one length, within `[-1, 1]`.
pub(super) fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let norms = norm(a.iter().map(|&v| f64::from(v))) * norm(b.iter().map(|&v| f64::from(v)));
    (dot / norms).clamp(-1.0, 1.0) as f32
}

/// `normalise(weight * context + turn)`, or `turn` when they cancel out.
pub(super) fn blend(context: &[f32], weight: f32, turn: &[f32]) -> Vec<f32> {
    let mixed = || {
        context
            .iter()
            .zip(turn)
            .map(|(&c, &t)| f64::from(weight) * f64::from(c) + f64::from(t))
    };
    let norm = norm(mixed());
    if norm < CANCELLED_NORM {
        return turn.to_vec();
    }
    scale(mixed(), norm)
}

fn norm(values: impl Iterator<Item = f64>) -> f64 {
    values.map(|v| v * v).sum::<f64>().sqrt()
}

fn scale(values: impl Iterator<Item = f64>, norm: f64) -> Vec<f32> {
    values.map(|v| (v / norm) as f32).collect()
}
