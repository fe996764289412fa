//! Kernels that read sessions' KV blocks where they lie (feature `wgpu`).
//!
//! - [`PagedAttention`]: one head, one query, keys and values read through
//!   a session's block table (`SessionHandle::kv_blocks`), one dispatch per
//!   slab, partial softmaxes merged on the host. Small and unoptimised (one
//!   invocation per dispatch): a proof that the blocks are real device
//!   memory in the layout the tables say, checked against [`cpu_attention`].

mod paged_attention;

pub use paged_attention::{KernelError, PagedAttention, cpu_attention};
