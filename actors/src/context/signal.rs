//! What one turn tells the context policy.

/// The signals one chat turn carries for the context policy.
///
/// Every field is optional: a turn with none of them (`TurnSignal::default()`)
/// only tells the policy that the conversation is still active.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TurnSignal {
    /// The turn's embedding, if one was computed. Its length must match the
    /// context's dimension; its values must be finite and not all zero. Its
    /// magnitude does not matter: the policy normalises it.
    pub embedding: Option<Vec<f32>>,
    /// The turn's intent, if a classifier labelled it.
    pub intent: Option<Intent>,
    /// The user rejected what came before ("no, not that"): the context is
    /// stale whatever the other signals say.
    pub negation: bool,
}

/// An intent label with the classifier's confidence in it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Intent {
    /// The label, compared exactly (case-sensitive). Must not be blank.
    pub label: String,
    /// How sure the classifier is, within `[0, 1]`.
    pub confidence: f32,
}

impl Intent {
    /// An intent with this label and confidence.
    pub fn new(label: impl Into<String>, confidence: f32) -> Self {
        Intent {
            label: label.into(),
            confidence,
        }
    }
}
