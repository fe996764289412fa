//! The simulated model. A reply is generated token by token while the
//! session holds a lease (so an end waits for the stream, up to the drain
//! deadline); every token writes its KV entry into the session's current
//! KV block, and every `block_tokens` tokens a new block is allocated with
//! `allocate_for_context` (paged KV cache: the allocation grows per token).
//! With `Settings::kv_blocks`, a conversation's KV lives in the runtime's
//! paged blocks instead: its first reply appends a system prompt that every
//! conversation shares (one salt: a public prompt), then every token is
//! appended to its block table and its KV written through it.

use std::time::Duration;

use sessionbus::config::{BlockBudget, KvLayout, KvPoolConfig};
use sessionbus::{AllocationId, Salt, SessionError, SessionHandle};

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

/// The system prompt every conversation starts with: 40 tokens, two full
/// blocks of 16 shared by all, and a partial one each copies.
pub const SYSTEM_PROMPT_TOKENS: u32 = 40;

/// The system prompt's sharing scope: it is public, so every user shares it.
const SYSTEM_PROMPT: Salt = Salt([0x51; 32]);

/// The runtime's `[kv]` for `settings`: blocks of `block_tokens` tokens of
/// `kv_bytes_per_token`, 64 blocks per slab, a small prefix cache, idle
/// slabs back to the device after a second.
pub fn kv_config(settings: &Settings) -> KvPoolConfig {
    KvPoolConfig {
        layout: KvLayout {
            tokens_per_block: u32::try_from(settings.block_tokens).unwrap_or(16),
            bytes_per_token: settings.kv_bytes_per_token,
        },
        blocks_per_slab: 64,
        device_budget: BlockBudget::Bytes(2 << 30),
        cache_budget: BlockBudget::Blocks(64),
        owner_budget: None,
        table_cap_blocks: Some(4096),
        keep_alive: Duration::ZERO,
        slab_idle_trim: Duration::from_secs(1),
    }
}

/// A token's id in the simulated vocabulary (FNV-1a of its text).
fn token_id(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Streams the reply to `prompt` into `sink`. The turn itself has already
/// been accepted (`SessionHandle::chat`) by the caller.
pub async fn stream_reply(
    session: &SessionHandle,
    prompt: &str,
    settings: &Settings,
    sink: &mut impl TokenSink,
) -> Result<ReplyStats, StreamError> {
    if settings.kv_blocks {
        return stream_into_blocks(session, prompt, settings, sink).await;
    }
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

/// `stream_reply` with the KV in paged blocks (`Settings::kv_blocks`).
async fn stream_into_blocks(
    session: &SessionHandle,
    prompt: &str,
    settings: &Settings,
    sink: &mut impl TokenSink,
) -> Result<ReplyStats, StreamError> {
    let lease = session.lease().await?;
    let mut stats = ReplyStats {
        tokens: 0,
        kv_blocks: 0,
        kv_bytes: 0,
    };
    if session.kv_blocks().await?.is_empty() {
        let system: Vec<u32> = (0..SYSTEM_PROMPT_TOKENS).collect();
        let appended = session
            .append_tokens_in(Some(SYSTEM_PROMPT), &system)
            .await?;
        stats.kv_blocks += appended.new_blocks;
    }
    let bytes = settings.kv_bytes_per_token;
    let block_tokens = settings.block_tokens.max(1);
    for (i, token) in reply_tokens(prompt).iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(settings.token_interval_ms)).await;
        let appended = session.append_tokens(&[token_id(token)]).await?;
        stats.kv_blocks += appended.new_blocks;
        let position = appended.tokens - 1;
        let block = (position / block_tokens) as usize;
        let slot = position % block_tokens;
        session
            .write_kv(block, slot * bytes, kv_entry(token, bytes))
            .await?;
        stats.kv_bytes += bytes;
        if !sink.token(i, token).await {
            return Err(StreamError::ClientGone(i));
        }
        stats.tokens += 1;
    }
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
