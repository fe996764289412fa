//! KV memory as inference engines hold it: paged blocks, block tables and a
//! prefix cache — the bookkeeping only.
//!
//! This module is pure: no wgpu, no actors, no clock. It decides which block
//! of which slab holds which tokens of which session, who shares what, and
//! when a slab may go; the product's pool owns the buffers behind the slabs.
//!
//! # The model
//!
//! - A [`KvLayout`] (tokens per block, bytes per token) fixes the block size.
//!   A **slab** is one device buffer of `blocks_per_slab` blocks; a block is
//!   a ([`SlabId`], byte offset) in it ([`BlockLocation`]).
//! - A [`BlockTable`] per session holds its tokens as blocks: every block but
//!   the last is full, the last may be partial. [`BlockPool::append`] fills
//!   the partial block, then takes whole new blocks; [`BlockPool::snapshot`]
//!   gives kernels the (slab, offset) of each block in order.
//! - Every block is in exactly one state: **free** (in its slab's free list),
//!   **referenced** (by `n ≥ 1` tables), or **cached** (referenced by nobody,
//!   hashed, in an LRU for reuse). `free + cached + referenced` is always the
//!   number of blocks in slabs.
//!
//! # Allocation
//!
//! Free blocks first, from slabs already in use (so idle slabs can empty and
//! be trimmed); then cached blocks whose keep-alive has passed, least
//! recently released first; then a new slab, while the device budget admits
//! one ([`Grant::NeedSlab`]: the caller creates the buffer, calls
//! [`BlockPool::add_slab`] and retries); then, under pressure, cached blocks
//! still inside their keep-alive; then [`KvError::OutOfBlocks`]. So the
//! keep-alive means "grow the pool rather than evict this prefix", never
//! "fail an append to keep it". Every operation is all or nothing: an error
//! or a `NeedSlab` changes nothing. Free-list and LRU operations are O(1);
//! nothing allocates on the hot path but amortised `Vec`/`HashMap` growth.
//!
//! # Prefix sharing
//!
//! A full block is named by a [`BlockHash`]: SHA-256 over its parent's hash,
//! the sharing scope and its token ids, so equal hashes mean equal prefixes.
//! [`BlockPool::match_prefix`] finds the longest chain of live (referenced or
//! cached) blocks for some tokens; [`BlockPool::claim_prefix`] makes an empty
//! table reference them (reference counts up, cached blocks leave the LRU),
//! re-checking the tokens against the hashes ([`KvError::PrefixMismatch`])
//! and that the blocks were not evicted since ([`KvError::PrefixStale`]).
//! [`BlockPool::fork`] shares every full block of a table and copies its
//! partial last block into a fresh one ([`BlockCopy`]): partial blocks are
//! never shared. [`BlockPool::release_table`] is the only way a table's
//! references go, and it drops each exactly once (the pool owns the tables,
//! and releasing one removes it). A block whose count reaches 0 becomes
//! cached if it is hashed and the cache budget has room (the oldest cached
//! block is evicted to make room), else free.
//!
//! **Sharing scope and the side channel.** Blocks are shared only inside one
//! [`ShareScope`]: by default the owner; or a [`Salt`] the application gives
//! to sessions that may share across owners (a public system prompt). The
//! scope is part of the hash and is compared on lookup too. A cross-tenant
//! cache hit is a **timing side channel**: a fast first token tells a tenant
//! that someone in its scope already sent the same prefix. Give a salt only
//! to prefixes that are not secret.
//!
//! # The budget rule
//!
//! - **Device budget**: every block in every slab counts once, whatever its
//!   state. Slabs are added only within it.
//! - **Owner budget**: an owner is charged one block for every entry of every
//!   live table it owns — a block shared by three of its sessions counts three
//!   times. Another tenant referencing the same (salted) block charges its own
//!   budget, never the first tenant's, so **one tenant can never pin another
//!   tenant's budget**, and an owner's charge drops exactly when its own
//!   sessions end.
//! - **Cache budget**: cached (unreferenced) blocks count only here, not
//!   against any owner.
//!
//! [`BlockPool::can_ever_fit`] answers admission: whether free + cached
//! blocks plus the room the device budget leaves for new slabs (and the
//! owner's budget) cover a request without ending any session, so the engine
//! can refuse at once (or end idle sessions) instead of waiting.
//!
//! # Trimming slabs
//!
//! A slab whose blocks have all been free for `slab_idle_trim` is listed by
//! [`BlockPool::trimmable_slabs`]; [`BlockPool::remove_slab`] takes it out and
//! refuses a slab with any block in use. Trim and append both take
//! `&mut BlockPool`, so one of them happens first and the other sees its
//! result: a trim/append race cannot be expressed. Slab ids are never
//! reused, so a stale id cannot name a newer slab's block.
//!
//! # Plugging it in (for the engine's integration)
//!
//! - One slab is one allocation in the product's pool, under a reserved
//!   owner (not a user's), so the existing whole-buffer budgets see it; its
//!   [`SlabId`] maps to that buffer.
//! - On [`Grant::NeedSlab`], allocate the buffer, `add_slab`, retry.
//! - Periodically: `trimmable_slabs(now)` → `remove_slab` → hand the buffer
//!   to the existing paced release path, so wgpu's counters prove it went back.
//! - A session holds a [`TableId`]; every end path calls `release_table`
//!   once. A lease pins a [`snapshot`](BlockPool::snapshot) while a kernel runs.
//! - [`KvStats::blocks_held_by_released_tables`] must stay 0.

mod blocks;
mod config;
mod error;
mod grant;
mod hash;
mod ids;
mod layout;
mod lru;
mod offload;
mod pool;
mod prefix;
mod scope;
mod slab;
mod stats;
mod table;

#[cfg(test)]
mod invariants;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod pool_tests;

pub use blocks::SlabRequest;
pub use config::{BlockBudget, KvPoolConfig};
pub use error::{KvConfigError, KvError, SlabError};
pub use grant::{Appended, BlockCopy, Forked, Grant, Released};
pub use hash::BlockHash;
pub use ids::{BlockId, BlockLocation, SlabId, TableId, TokenId};
pub use layout::KvLayout;
pub(crate) use offload::Restore;
pub use pool::BlockPool;
pub use prefix::PrefixMatch;
pub use scope::{Salt, ShareScope};
pub use stats::KvStats;
pub use table::BlockTable;
