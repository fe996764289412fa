//! The sessionbus engine: the lifecycle of chat sessions as actix actors.
//!
//! Applications use the `sessionbus` crate, which re-exports what they need
//! from here and adds the real adapters (wgpu, configuration files). This crate
//! knows nothing about wgpu or Redis: it reaches GPU memory only through the
//! [`GpuPool`] trait, and ships an in-memory pool for tests (feature `testing`).
//!
//! The pieces:
//! - [`Lifecycle`]: the pure state machine `Init → Established → Closing → Closed`.
//! - The **session actor**, one per chat session, driven through a [`SessionHandle`].
//! - The **registry actor**, split into shards by session id: a session's
//!   shard opens it, owns its entry in the id → session map, and is the only
//!   publisher of its [`SessionEndEvent`], exactly once, whatever ended it;
//!   limits, budgets and release pacing are shared by every shard.
//! - The **bus**: typed publish/subscribe of [`LifecycleEvent`]s, with a
//!   [`Delivery`] policy per subscriber.
//! - **Cleanup actors**: release each ended session's GPU memory, paced by a
//!   GCRA limiter, and publish a [`ReleaseReceipt`].
//!
//! Start it with [`Engine::start`] inside an actix `System` (every shard on
//! that thread), or [`Engine::start_on_threads`] (a thread per shard past the first).

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod budget;
mod bus;
mod cleanup;
mod clock;
mod config;
mod context;
mod engine;
mod events;
mod expiry;
mod gpu;
mod hooks;
mod ids;
mod kv;
mod kv_store;
mod lease;
mod lifecycle;
mod mailbox;
mod protocol;
mod pseudonym;
mod registry;
mod serde_time;
mod session;
mod shutdown;
mod stopped;
mod supervision;
pub mod units;

pub use budget::{BudgetConfig, BudgetScope, BudgetStats, WhenExhausted};
pub use bus::{Delivery, SubscriptionId};
pub use cleanup::{PaceUnit, ReleaseConfig, ReleaseQueueStats, ReleaseTier};
pub use config::{BusConfig, ConfigError, EngineConfig, MAX_SHARDS, SessionsConfig};
pub use context::{
    ContextConfig, ContextError, ContextPolicy, ContextPolicyFactory, ContextVerdict,
    DecayingContext, Intent, StaleReason, TurnSignal,
};
pub use engine::{Engine, EngineHandle, OpenOptions, ShardThreads};
pub use events::{
    ContextReset, Drain, EventKinds, LifecycleEvent, ReleaseReceipt, SessionEndEvent,
    SessionStarted,
};
pub use expiry::{Deadline, DeadlineKind, ExpiryConfig, ExpiryPolicy};
#[cfg(any(test, feature = "testing"))]
pub use gpu::InMemoryPool;
pub use gpu::{
    AllocRequest, Allocated, ByteRange, GpuError, GpuPool, OffloadReport, PoolInfo, PoolStats,
    ReleaseReport, RestoreReport, check_write,
};
pub use hooks::{BeforeRelease, HookError, HookStats, HooksConfig};
pub use ids::{
    AllocationId, Caller, ClientIp, Owner, ParseIdError, ParseTraceIdError, SessionId, TraceId,
};
pub use kv::{
    Appended, BlockBudget, BlockCopy, BlockHash, BlockId, BlockLocation, BlockPool, BlockTable,
    Forked, Grant, KvConfigError, KvError, KvLayout, KvPoolConfig, KvStats, PrefixMatch, Released,
    Salt, ShareScope, SlabError, SlabId, SlabRequest, TableId, TokenId,
};
pub use kv_store::{KvAppendReport, KvBlock, KvStoreError};
pub use lease::{LeaseError, LeaseId, LeasesConfig};
pub use lifecycle::{EndReason, Event, Lifecycle, LifecycleError, State};
pub use pseudonym::{KeyTooShort, MIN_KEY_BYTES, Pseudonymizer};
pub use registry::{
    DeviceLossReport, OpenError, OpensPaused, PressureCounters, RegistryStats, ShutdownReport,
};
pub use session::{
    AllocError, Binding, Lease, LeaseGrant, PassivationStats, SessionError, SessionHandle,
    SessionInfo, SessionOffload, Turn, TurnAck,
};
pub use shutdown::ShutdownConfig;
pub use stopped::Stopped;
pub use supervision::{
    ReleaseStep, ReleaseSteps, StepTiming, StepTimings, SupervisionConfig, SupervisionStats,
};
