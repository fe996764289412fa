//! What a simulated user talks about: every turn's embedding is the
//! conversation's topic plus a little noise, so the engine's context policy
//! sees one coherent context, until the user changes the subject or says "no,
//! not that".

use rand::Rng;
use rand::rngs::StdRng;
use sessionbus::Turn;

/// Embedding length: small, the policy only needs directions.
const DIMENSION: usize = 16;
/// Noise per component, uniform in `[-NOISE, NOISE]`: turns on one topic stay
/// at a cosine similarity of about 0.94, far above the default threshold (0.4).
const NOISE: f32 = 0.15;
/// Share of users who change the subject once.
const SHIFT_SHARE: f64 = 0.25;
/// Share of users who reject the answer so far once (a negation).
const NEGATION_SHARE: f64 = 0.10;
/// Those happen on one of the turns after the first (the first has no context yet).
const LATEST_TURN: usize = 4;

pub struct Conversation {
    topic: Vec<f32>,
    turns: usize,
    /// The turn on which the user changes to a new random topic.
    shift_at: Option<usize>,
    /// The turn on which the user rejects what came before.
    negate_at: Option<usize>,
}

impl Conversation {
    pub fn draw(rng: &mut StdRng) -> Conversation {
        let mut on_some_turn = |share: f64| {
            rng.random_bool(share)
                .then(|| rng.random_range(1..=LATEST_TURN))
        };
        let shift_at = on_some_turn(SHIFT_SHARE);
        let negate_at = on_some_turn(NEGATION_SHARE);
        Conversation {
            topic: direction(rng),
            turns: 0,
            shift_at,
            negate_at,
        }
    }

    /// The user's next turn.
    pub fn next_turn(&mut self, rng: &mut StdRng) -> Turn {
        let index = self.turns;
        self.turns += 1;
        if self.shift_at == Some(index) {
            // A new random direction: almost always far from the old topic.
            self.topic = direction(rng);
        }
        let embedding = self
            .topic
            .iter()
            .map(|x| x + rng.random_range(-NOISE..=NOISE))
            .collect();
        let turn = Turn::new().embedding(embedding);
        if self.negate_at == Some(index) {
            turn.negation()
        } else {
            turn
        }
    }
}

/// A random unit vector.
fn direction(rng: &mut StdRng) -> Vec<f32> {
    let v: Vec<f32> = (0..DIMENSION)
        .map(|_| rng.random_range(-1.0..=1.0))
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.into_iter().map(|x| x / norm).collect()
}
