#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

// The public API is this one list. An application needs the root; those who
// configure the runtime, `config`; those who bring their own memory, `pool`;
// tests of applications built on it, `testing` (feature `testing`).

pub mod audit;
#[cfg(feature = "redis")]
pub mod cluster;
pub mod config;
mod gpu;
#[cfg(feature = "wgpu")]
pub mod kernels;
pub mod metrics;
pub mod pool;
pub mod reference;
mod runtime;
pub mod signals;
#[cfg(feature = "testing")]
pub mod testing;

/// The wgpu this crate is built on, so that kernels of the application use
/// the same version (`Runtime::wgpu_device`, `Runtime::wgpu_buffer`).
#[cfg(feature = "wgpu")]
pub use wgpu;

// Starting and stopping.
pub use gpu::GpuInitError;
pub use runtime::{Runtime, RuntimeBuilder, StartError, StopReport};
pub use sessionbus_actors::{DeviceLossReport, EngineHandle, OpensPaused, ShutdownReport, Stopped};

// KV memory as paged blocks.
pub use sessionbus_actors::{KvAppendReport, KvBlock, KvError, KvStats, KvStoreError, Salt};

// Sessions.
pub use sessionbus_actors::{
    AllocError, Allocated, AllocationId, Binding, Caller, ClientIp, EndReason, Event, Lease,
    LeaseError, LeaseGrant, LeaseId, OffloadReport, OpenError, OpenOptions, Owner, ParseIdError,
    ParseTraceIdError, SessionError, SessionHandle, SessionId, SessionInfo, SessionOffload, State,
    TraceId, Turn, TurnAck,
};

// Conversation context: what a turn carries, and policies deciding when a context is stale.
pub use sessionbus_actors::{
    ContextError, ContextPolicy, ContextPolicyFactory, ContextVerdict, DecayingContext,
    ExpiryPolicy, Intent, StaleReason, TurnSignal,
};

// Lifecycle events, the bus, and pre-destroy hooks.
pub use sessionbus_actors::{
    BeforeRelease, ContextReset, Deadline, DeadlineKind, Delivery, Drain, EventKinds, HookError,
    LifecycleEvent, ReleaseReceipt, ReleaseStep, ReleaseSteps, SessionEndEvent, SessionStarted,
    SubscriptionId,
};

// What the runtime reports about itself.
pub use sessionbus_actors::{
    BudgetStats, HookStats, PassivationStats, PressureCounters, RegistryStats, ReleaseQueueStats,
    StepTiming, StepTimings, SupervisionStats,
};
