//! What a session is told about its KV blocks.

use crate::ids::AllocationId;

/// Where one of a session's KV blocks is: the pool buffer (a slab shared by
/// many sessions) and the block's byte range in it. Kernels read keys and
/// values at `offset .. offset + bytes` of `buffer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KvBlock {
    /// The slab's buffer in the GPU pool.
    pub buffer: AllocationId,
    /// Byte offset of the block in that buffer.
    pub offset: u64,
    /// The block's size in bytes (`tokens_per_block × bytes_per_token`).
    pub bytes: u64,
}

/// What an append of tokens did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KvAppendReport {
    /// Tokens the session's table holds now.
    pub tokens: u64,
    /// Blocks it holds now.
    pub blocks: u64,
    /// Blocks this append took from the pool.
    pub new_blocks: u64,
    /// Tokens at the start of this append that were found cached (a prefix
    /// hit: their blocks are shared, not allocated). Zero unless the table was empty.
    pub shared_prefix_tokens: u64,
}
