//! Why a KV block operation of a session was refused.

use crate::gpu::GpuError;
use crate::kv::{KvError, SlabError};

/// A KV block operation that could not be done. Nothing changed when one is
/// returned (a slab created meanwhile stays in the pool for the next append).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvStoreError {
    /// This engine has no KV block pool (`[kv]` is not configured).
    #[error("KV blocks are not configured for this runtime (add a [kv] section)")]
    NotConfigured,
    /// The block tables refused: out of blocks, the owner's budget, the
    /// session's cap, a prefix that does not match.
    #[error(transparent)]
    Blocks(#[from] KvError),
    /// The pool could not create (or answer for) a slab buffer.
    #[error("the GPU pool could not serve KV blocks: {0}")]
    Slab(#[source] GpuError),
    /// The device budget was reached while a slab was being created; the
    /// buffer was given back.
    #[error("a KV slab was refused: {0}")]
    SlabRefused(#[source] SlabError),
    /// The session has no block at this index.
    #[error("block {index} does not exist: the session holds {count} KV blocks")]
    NoSuchBlock {
        /// The index asked for.
        index: usize,
        /// Blocks the session holds.
        count: usize,
    },
    /// An offload under memory pressure would take host memory past
    /// `budget.offload_host_memory`; nothing moved.
    #[error(
        "offloading {needed} bytes of KV blocks would take host memory past its limit of {limit} bytes ({held} held)"
    )]
    HostMemoryFull {
        /// Bytes the offload would copy.
        needed: u64,
        /// Bytes offloaded sessions hold in host memory now.
        held: u64,
        /// `budget.offload_host_memory`.
        limit: u64,
    },
    /// A write would reach outside its block.
    #[error("{len} bytes at offset {offset} reach outside a {block_bytes}-byte KV block")]
    OutsideBlock {
        /// Offset within the block.
        offset: u64,
        /// Bytes to write.
        len: u64,
        /// The block's size.
        block_bytes: u64,
    },
}
