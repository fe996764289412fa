//! The simulated model. A reply is generated token by token while the
//! session holds a lease (so an end waits for the stream, up to the drain
//! deadline); every token writes its KV entry into the session's current
//! KV block, and every `block_tokens` tokens a new block is allocated with
//! `allocate_for_context` (paged KV cache: the allocation grows per token).

use std::time::Duration;

use sessionbus::{AllocationId, SessionError, SessionHandle};

use super::state::Settings;

/// Where the tokens go.
pub trait TokenSink {
    /// Sends one token; `false` when the client is gone (the stream stops).
    fn token(&mut self, index: usize, text: &str) -> impl Future<Output = bool>;
}

/// Why a stream stopped early.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The session refused (it ended, or a budget refused the KV block).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The client went away mid-stream.
    #[error("the client went away after {0} tokens")]
    ClientGone(usize),
}

/// What a completed reply cost.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ReplyStats {
    /// Tokens streamed.
    pub tokens: usize,
    /// KV blocks allocated for them.
    pub kv_blocks: u64,
    /// KV bytes written.
    pub kv_bytes: u64,
}

/// The reply's tokens (words with their trailing space): deterministic, so
/// tests and the page can check what they received.
pub fn reply_tokens(prompt: &str) -> Vec<String> {
    let gist: String = prompt
        .split_whitespace()
        .take(12)
        .collect::<Vec<_>>()
        .join(" ");
    let text = format!(
        "You said: \"{gist}\". This reply streams one token at a time while the session \
         holds a lease, and each token grows its KV cache on the GPU."
    );
    let words: Vec<&str> = text.split(' ').collect();
    let last = words.len() - 1;
    words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == last {
                w.to_string()
            } else {
                format!("{w} ")
            }
        })
        .collect()
}

/// Streams the reply to `prompt` into `sink`. The turn itself has already
/// been accepted (`SessionHandle::chat`) by the caller.
pub async fn stream_reply(
    session: &SessionHandle,
    prompt: &str,
    settings: &Settings,
    sink: &mut impl TokenSink,
) -> Result<ReplyStats, StreamError> {
    let lease = session.lease().await?;
    let block_tokens = settings.block_tokens.max(1);
    let block_bytes = block_tokens * settings.kv_bytes_per_token;
    let mut block: Option<AllocationId> = None;
    let mut stats = ReplyStats {
        tokens: 0,
        kv_blocks: 0,
        kv_bytes: 0,
    };
    for (i, token) in reply_tokens(prompt).iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(settings.token_interval_ms)).await;
        let slot = i as u64 % block_tokens;
        let current = match block {
            Some(id) if slot != 0 => id,
            _ => {
                let allocated = session.allocate_for_context(block_bytes).await?;
                stats.kv_blocks += 1;
                *block.insert(allocated.id)
            }
        };
        let entry = kv_entry(token, settings.kv_bytes_per_token);
        session
            .write_buffer(current, slot * settings.kv_bytes_per_token, entry)
            .await?;
        stats.kv_bytes += settings.kv_bytes_per_token;
        if !sink.token(i, token).await {
            return Err(StreamError::ClientGone(i));
        }
        stats.tokens += 1;
    }
    // An error here only means the session ended meanwhile; the reply is out.
    let _ = lease.release().await;
    Ok(stats)
}

/// The token's "keys and values": its bytes, repeated to the entry size.
fn kv_entry(token: &str, bytes: u64) -> Vec<u8> {
    token
        .bytes()
        .chain(std::iter::once(0))
        .cycle()
        .take(bytes as usize)
        .collect()
}

/// Collects a whole reply (the REST endpoint's sink).
#[derive(Debug, Default)]
pub struct Collect(pub String);

impl TokenSink for Collect {
    async fn token(&mut self, _index: usize, text: &str) -> bool {
        self.0.push_str(text);
        true
    }
}
