//! Turns the policy refuses.

/// A turn the policy cannot assess. The policy's state is unchanged.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// The embedding's length differs from the context's dimension.
    #[error("embedding has {got} dimensions, but this context's embeddings have {expected}")]
    WrongDimension {
        /// The context's dimension (configured, or fixed by the first embedding).
        expected: usize,
        /// The turn's embedding length.
        got: usize,
    },
    /// An embedding value is NaN or infinite.
    #[error("embedding value at index {index} is {value}, but every value must be finite")]
    NotFinite {
        /// Where the first such value is.
        index: usize,
        /// The value (NaN, inf or -inf).
        value: f32,
    },
    /// Every embedding value is zero, so it has no direction to compare.
    #[error("embedding is all zeros, so it has no direction to compare with the context")]
    ZeroVector,
    /// The embedding has no values.
    #[error("embedding is empty; leave it out (None) when the turn has no embedding")]
    EmptyEmbedding,
    /// The intent's confidence is NaN, infinite or outside `[0, 1]`.
    #[error("intent confidence is {value}, but it must be a finite number within [0, 1]")]
    ConfidenceOutOfRange {
        /// The refused confidence.
        value: f32,
    },
    /// The intent's label is empty or only whitespace.
    #[error("intent label is blank; leave the intent out (None) when the turn has none")]
    EmptyIntentLabel,
}
