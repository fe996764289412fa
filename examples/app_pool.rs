//! Bring your own memory: sessionbus on an application's allocator.
//!
//! An inference engine usually owns its KV memory (CUDA, another wgpu
//! device, a slab allocator of its own). Here that allocator is
//! [`ForeignAllocator`], "someone else's" code: it hands out handles and
//! frees them only through the callback it gives out. [`AppPool`] adapts it
//! to sessionbus's [`GpuPool`] trait, and the runtime runs on it with the
//! audit trail, metrics, budgets and shutdown exactly as on its own wgpu pool.
//!
//! ```text
//! cargo run --example app_pool -- [--audit-dir DIR]
//! ```
//!
//! Prints one JSON object (what was allocated and freed by the foreign
//! allocator, what the runtime reported, the audit trail's counters) and
//! exits non-zero if the allocator still holds anything after shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sessionbus::config::{AuditConfig, Config};
use sessionbus::pool::{
    AllocRequest, Allocated, GpuError, GpuPool, PoolInfo, PoolStats, ReleaseReport,
};
use sessionbus::{AllocationId, Delivery, EventKinds, LifecycleEvent, Runtime, SessionId};
use tokio::sync::oneshot;

/// The application's allocator: owns the memory, frees only through its callback.
#[derive(Default)]
struct ForeignAllocator {
    blocks: Mutex<HashMap<u64, Vec<u8>>>,
    next: AtomicU64,
    allocated: AtomicU64,
    freed: AtomicU64,
}

/// How the allocator lets others give memory back.
type FreeCallback = Arc<dyn Fn(u64) + Send + Sync>;

impl ForeignAllocator {
    fn alloc(&self, bytes: u64) -> u64 {
        let handle = self.next.fetch_add(1, Ordering::Relaxed);
        let block = vec![0u8; bytes as usize];
        self.blocks.lock().unwrap().insert(handle, block);
        self.allocated.fetch_add(1, Ordering::Relaxed);
        handle
    }

    fn free_callback(self: &Arc<Self>) -> FreeCallback {
        let allocator = self.clone();
        Arc::new(move |handle| {
            if allocator.blocks.lock().unwrap().remove(&handle).is_some() {
                allocator.freed.fetch_add(1, Ordering::Relaxed);
            }
        })
    }

    fn live(&self) -> usize {
        self.blocks.lock().unwrap().len()
    }
}

/// One allocation as the pool tracks it.
struct Held {
    id: AllocationId,
    handle: u64,
    bytes: u64,
}

/// sessionbus's view of the foreign allocator.
struct AppPool {
    info: PoolInfo,
    allocator: Arc<ForeignAllocator>,
    free: FreeCallback,
    held: Mutex<HashMap<SessionId, Vec<Held>>>,
    stats: Mutex<PoolStats>,
}

impl AppPool {
    fn new(allocator: Arc<ForeignAllocator>) -> Self {
        AppPool {
            info: PoolInfo {
                adapter: "foreign allocator (example)".into(),
                backend: "application".into(),
                device_type: "host".into(),
                max_buffer_size: 1 << 30,
                size_alignment: 256,
                min_buffer_bytes: 256,
            },
            free: allocator.free_callback(),
            allocator,
            held: Mutex::default(),
            stats: Mutex::default(),
        }
    }

    /// Frees `chosen` of `session`'s allocations through the allocator's callback.
    fn release(&self, session: SessionId, chosen: impl Fn(&Held) -> bool) -> ReleaseReport {
        let started_at = Instant::now();
        let freed: Vec<Held> = {
            let mut held = self.held.lock().unwrap();
            let list = held.entry(session).or_default();
            let (freed, kept) = std::mem::take(list).into_iter().partition(|h| chosen(h));
            *list = kept;
            if list.is_empty() {
                held.remove(&session);
            }
            freed
        };
        let bytes: u64 = freed.iter().map(|h| h.bytes).sum();
        for h in &freed {
            (self.free)(h.handle);
        }
        let mut stats = self.stats.lock().unwrap();
        stats.live_buffers -= freed.len() as u64;
        stats.live_bytes -= bytes;
        stats.released_total += freed.len() as u64;
        ReleaseReport {
            session,
            buffers: freed.len() as u64,
            bytes,
            started_at,
            finished_at: Instant::now(),
            batch_len: 1,
            host_bytes: 0,
        }
    }
}

impl GpuPool for AppPool {
    fn info(&self) -> &PoolInfo {
        &self.info
    }

    fn allocate(&self, request: AllocRequest, reply: oneshot::Sender<Result<Allocated, GpuError>>) {
        let bytes = self.info.rounded(request.bytes);
        let handle = self.allocator.alloc(bytes);
        self.held
            .lock()
            .unwrap()
            .entry(request.session)
            .or_default()
            .push(Held {
                id: request.id,
                handle,
                bytes,
            });
        let mut stats = self.stats.lock().unwrap();
        stats.live_buffers += 1;
        stats.live_bytes += bytes;
        stats.peak_bytes = stats.peak_bytes.max(stats.live_bytes);
        stats.allocated_total += 1;
        let _ = reply.send(Ok(Allocated {
            id: request.id,
            bytes,
        }));
    }

    fn release_session(&self, session: SessionId, reply: oneshot::Sender<ReleaseReport>) {
        let _ = reply.send(self.release(session, |_| true));
    }

    fn release_allocations(
        &self,
        session: SessionId,
        ids: Vec<AllocationId>,
        reply: oneshot::Sender<ReleaseReport>,
    ) {
        let _ = reply.send(self.release(session, |h| ids.contains(&h.id)));
    }

    fn sessions_holding_memory(&self, reply: oneshot::Sender<Vec<SessionId>>) {
        let mut sessions: Vec<SessionId> = self.held.lock().unwrap().keys().copied().collect();
        sessions.sort();
        let _ = reply.send(sessions);
    }

    fn stats(&self) -> PoolStats {
        *self.stats.lock().unwrap()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let audit_dir = std::env::args()
        .skip_while(|a| a != "--audit-dir")
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("sessionbus-app-pool-{}", std::process::id()))
        });
    let mut config = Config::default();
    config.metrics.enabled = true;
    let mut audit = AuditConfig::new(&audit_dir);
    audit.key = Some("ab".repeat(32)); // an example key; a real one comes from key_env
    config.audit = Some(audit);

    let allocator = Arc::new(ForeignAllocator::default());
    let rt = Runtime::builder()
        .config(config)
        .pool(Arc::new(AppPool::new(allocator.clone())))
        .start()
        .await?;

    let mut events = rt
        .subscribe_channel(EventKinds::ALL, Delivery::Reliable)
        .await?;
    // Sessions end every way an application sees: closed, dropped, left to shutdown.
    let mut kept = Vec::new();
    for i in 0..12 {
        let session = rt.open(format!("user-{}", i % 3)).await?;
        session.allocate(64 * 1024).await?;
        session.allocate(16 * 1024).await?;
        match i % 3 {
            0 => drop(session.close().await?),
            1 => drop(session), // the last handle goes: ends as `disconnected`
            _ => kept.push(session),
        }
    }
    // A dropped handle ends in the background: count what is live once the
    // 8 sessions closed or dropped have been released.
    let mut released = 0;
    while released < 8 {
        match events.recv().await {
            Some(LifecycleEvent::Released(_)) => released += 1,
            Some(_) => {}
            None => anyhow::bail!("the event bus closed early"),
        }
    }
    let live_before_shutdown = allocator.live();
    let report = rt.shutdown().await;

    let summary = serde_json::json!({
        "pool": "application",
        "allocator": {
            "allocated": allocator.allocated.load(Ordering::Relaxed),
            "freed": allocator.freed.load(Ordering::Relaxed),
            "live_before_shutdown": live_before_shutdown,
            "live_after_shutdown": allocator.live(),
        },
        "runtime": report,
        "audit_dir": audit_dir,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    anyhow::ensure!(
        allocator.live() == 0,
        "the foreign allocator still holds memory"
    );
    anyhow::ensure!(
        report.gpu_held.live_buffers == 0,
        "the pool reports memory held"
    );
    Ok(())
}
