use std::sync::Arc;

use actix::{Addr, MailboxError};
use tokio::sync::oneshot;

use super::actor::SessionActor;
use super::error::SessionError;
use super::lease::Lease;
use super::messages::*;
use super::shared::SessionShared;
use super::slot::{Link, Via};
use crate::events::ReleaseReceipt;
use crate::gpu::Allocated;
use crate::ids::{AllocationId, Caller, SessionId, TraceId};
use crate::kv::Salt;
use crate::kv_store::{KvAppendReport, KvBlock};
use crate::lease::LeaseId;
use crate::lifecycle::{EndReason, Event, State};
use crate::protocol::session::{AppendTokens, ForkKv, KvBlocks, ReadKv, WriteKv};
use crate::registry::{AwaitReceipt, RegistryActor};

/// A live session, as the application holds it.
///
/// Cheap to clone; every clone acts as the same caller. **Dropping the last
/// handle is a disconnect**: the session ends with reason `Disconnected` and its
/// memory is released. Every method can be awaited from any executor (actix,
/// tokio, or a plain `block_on`).
#[derive(Clone)]
pub struct SessionHandle {
    id: SessionId,
    caller: Caller,
    link: Link,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.id)
            .field("caller", &self.caller)
            .finish()
    }
}

impl SessionHandle {
    pub(crate) fn new(id: SessionId, caller: Caller, link: Link) -> Self {
        SessionHandle { id, caller, link }
    }

    /// The registry shard this session is on.
    fn registry(&self) -> &Addr<RegistryActor> {
        self.link.shards.for_id(self.id)
    }

    fn shared(&self) -> &Arc<SessionShared> {
        &self.link.shared
    }

    /// Queues `msg` for the session (started again first if it was parked).
    fn send<M>(&self, msg: M) -> impl Future<Output = Result<M::Result, MailboxError>> + use<M>
    where
        M: actix::Message + Send + 'static,
        M::Result: Send,
        SessionActor: actix::Handler<Via<M>>,
    {
        let request = self.shared().send(msg);
        async move {
            match request {
                Some(request) => request.await,
                None => Err(MailboxError::Closed),
            }
        }
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Who this handle acts as.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The session's state as last published (may trail an in-flight message).
    pub fn state(&self) -> State {
        self.shared().state()
    }

    /// Sends one chat turn.
    pub async fn chat(&self, turn: Turn) -> Result<TurnAck, SessionError> {
        let sent = self
            .send(Chat {
                caller: self.caller.clone(),
                turn,
            })
            .await;
        self.answer(sent, Event::Message)
    }

    /// Marks the session active without a turn.
    pub async fn touch(&self) -> Result<(), SessionError> {
        let sent = self
            .send(Touch {
                caller: self.caller.clone(),
            })
            .await;
        self.answer(sent, Event::Touch)
    }

    /// Allocates one GPU buffer of `bytes` for this session. It is released
    /// when the session ends, whatever ends it.
    pub async fn allocate(&self, bytes: u64) -> Result<Allocated, SessionError> {
        self.allocate_bound(bytes, Binding::Session).await
    }

    /// Allocates one GPU buffer bound to the conversation's context (a KV
    /// cache): released when the context goes stale, or when the session
    /// ends, whichever comes first.
    pub async fn allocate_for_context(&self, bytes: u64) -> Result<Allocated, SessionError> {
        self.allocate_bound(bytes, Binding::Context).await
    }

    async fn allocate_bound(
        &self,
        bytes: u64,
        binding: Binding,
    ) -> Result<Allocated, SessionError> {
        let sent = self
            .send(Allocate {
                caller: self.caller.clone(),
                bytes,
                binding,
            })
            .await;
        self.answer(sent, Event::Allocate)
    }

    /// Takes a local lease for in-flight work (a token stream). An end of the
    /// session waits for it, up to `leases.drain_timeout`; release it
    /// with [`Lease::release`] or by dropping it.
    pub async fn lease(&self) -> Result<Lease, SessionError> {
        let grant = self.take_lease(false).await?;
        Ok(Lease::new(
            self.id,
            grant,
            self.caller.clone(),
            self.link.clone(),
        ))
    }

    /// Takes a lease for a holder in another process. It must be renewed with
    /// [`heartbeat`](Self::heartbeat) every `grant.heartbeat_interval`; one
    /// silent for `grant.revoked_after` is revoked (and, by default, the
    /// session ends with reason `lease_lost`). Return it with
    /// [`release_lease`](Self::release_lease).
    pub async fn lease_remote(&self) -> Result<LeaseGrant, SessionError> {
        self.take_lease(true).await
    }

    /// Renews a remote lease.
    pub async fn heartbeat(&self, lease: LeaseId) -> Result<(), SessionError> {
        let sent = self
            .send(Heartbeat {
                caller: self.caller.clone(),
                lease,
            })
            .await;
        self.answer(sent, Event::Touch)
    }

    /// Returns a lease by id. Returning it twice is an error
    /// (`LeaseError::AlreadyReleased`) and changes nothing.
    pub async fn release_lease(&self, lease: LeaseId) -> Result<(), SessionError> {
        let sent = self
            .send(ReturnLease {
                caller: self.caller.clone(),
                lease,
            })
            .await;
        self.answer(sent, Event::Touch)
    }

    async fn take_lease(&self, remote: bool) -> Result<LeaseGrant, SessionError> {
        let sent = self
            .send(TakeLease {
                caller: self.caller.clone(),
                remote,
            })
            .await;
        self.answer(sent, Event::Touch)
    }

    /// Writes `data` into buffer `id` of this session at `offset` (a KV
    /// cache filling up). Offset and length must be multiples of the pool's
    /// size alignment (`PoolInfo::size_alignment`, 4 on wgpu). If the session
    /// was offloaded, its buffers are brought back first.
    pub async fn write_buffer(
        &self,
        id: AllocationId,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), SessionError> {
        let sent = self
            .send(WriteBuffer {
                caller: self.caller.clone(),
                id,
                offset,
                data,
            })
            .await;
        self.answer(sent, Event::Touch)
    }

    /// Appends `tokens` to this session's KV block table (`[kv]` must be
    /// configured). The first append opens the table in the owner's sharing
    /// scope and references the longest cached prefix of `tokens` (blocks
    /// of earlier sessions of the same owner) instead of allocating it; the
    /// rest fills new blocks. Appends land in the order they are sent.
    pub async fn append_tokens(&self, tokens: &[u32]) -> Result<KvAppendReport, SessionError> {
        self.append_tokens_in(None, tokens).await
    }

    /// Like [`append_tokens`](Self::append_tokens), with the table (if this
    /// append opens it) in the sharing scope of `salt` instead of the owner:
    /// sessions of any owner given the same salt share prefixes (a public
    /// system prompt). A cross-tenant cache hit is a timing side channel:
    /// give a salt only to prefixes that are not secret.
    pub async fn append_tokens_in(
        &self,
        salt: Option<Salt>,
        tokens: &[u32],
    ) -> Result<KvAppendReport, SessionError> {
        let sent = self
            .send(AppendTokens {
                caller: self.caller.clone(),
                tokens: tokens.to_vec(),
                salt,
            })
            .await;
        self.answer(sent, Event::Allocate)
    }

    /// A new session of the same owner whose KV block table is a fork of
    /// this one's: every full block is shared (no copy), the partial last
    /// block is copied into a block of its own (copy-on-write), so the two
    /// conversations go on independently. The handle acts as this one's
    /// caller. Each session releases its references when it ends.
    pub async fn fork(&self) -> Result<SessionHandle, SessionError> {
        let sent = self
            .send(ForkKv {
                caller: self.caller.clone(),
            })
            .await;
        let (table, owner) = self.answer(sent, Event::Touch)?;
        let open = crate::protocol::registry::Open {
            owner,
            trace_id: TraceId::random(),
            expiry: None,
            context_policy: None,
            client_ip: None,
            kv_table: Some(table),
        };
        let opened = self
            .registry()
            .send(open)
            .await
            .map_err(|_| SessionError::RuntimeStopped)?
            .map_err(|source| SessionError::ForkRefused {
                id: self.id,
                source,
            })?;
        Ok(SessionHandle::new(
            opened.id,
            self.caller.clone(),
            opened.link,
        ))
    }

    /// Where this session's KV blocks are, in token order: the buffer (a
    /// slab shared with other sessions) and the byte range of each block,
    /// for a kernel that reads keys and values through the block table.
    pub async fn kv_blocks(&self) -> Result<Vec<KvBlock>, SessionError> {
        let sent = self
            .send(KvBlocks {
                caller: self.caller.clone(),
            })
            .await;
        self.answer(sent, Event::Touch)
    }

    /// Writes `data` into KV block `index` of this session at `offset`
    /// within the block; refused if it would reach outside the block.
    pub async fn write_kv(
        &self,
        index: usize,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), SessionError> {
        let sent = self
            .send(WriteKv {
                caller: self.caller.clone(),
                index,
                offset,
                data,
            })
            .await;
        self.answer(sent, Event::Touch)
    }

    /// Reads KV block `index` of this session back to host memory.
    pub async fn read_kv(&self, index: usize) -> Result<Vec<u8>, SessionError> {
        let sent = self
            .send(ReadKv {
                caller: self.caller.clone(),
                index,
            })
            .await;
        self.answer(sent, Event::Touch)
    }

    /// Reads buffer `id` of this session back (bringing offloaded buffers back first).
    pub async fn read_buffer(&self, id: AllocationId) -> Result<Vec<u8>, SessionError> {
        let sent = self
            .send(ReadBuffer {
                caller: self.caller.clone(),
                id,
            })
            .await;
        self.answer(sent, Event::Touch)
    }

    /// Soft-evicts the session now: its buffers, and the KV blocks only it
    /// references, are copied to host memory and freed on the GPU (shared
    /// prefix blocks stay); the session stays alive and its next message
    /// brings them back, bit for bit. Refused
    /// (`SessionError::OffloadRefused`, nothing changed) while a lease is
    /// held or an allocation is in flight. The engine does this on its own
    /// under memory pressure (`budget.offload`), for KV blocks too.
    pub async fn offload(&self) -> Result<SessionOffload, SessionError> {
        let sent = self
            .send(Offload {
                caller: self.caller.clone(),
                host_limit: None,
            })
            .await;
        self.answer(sent, Event::Touch)
    }

    /// A snapshot of the session.
    pub async fn info(&self) -> Result<SessionInfo, SessionError> {
        let sent = self
            .send(Inspect {
                caller: self.caller.clone(),
            })
            .await;
        self.answer(sent, Event::Touch)
    }

    /// Closes the session and resolves once its GPU memory is actually
    /// released (buffers destroyed, device polled). Closing again, from any
    /// handle, returns the same receipt; nothing is released twice.
    pub async fn close(&self) -> Result<ReleaseReceipt, SessionError> {
        self.close_with(None).await
    }

    /// Closes the session like [`close`](Self::close), for a request that
    /// carries `trace_id`: the end event, its log lines, the receipt and the
    /// audit record carry that trace (the session's own trace stays in
    /// `SessionEndEvent::trace_id`).
    pub async fn close_traced(&self, trace_id: TraceId) -> Result<ReleaseReceipt, SessionError> {
        self.close_with(Some(trace_id)).await
    }

    async fn close_with(&self, trace_id: Option<TraceId>) -> Result<ReleaseReceipt, SessionError> {
        let (waiter, receipt) = oneshot::channel();
        let end = End {
            caller: self.caller.clone(),
            reason: EndReason::Closed,
            waiter: Some(waiter),
            deadline: None,
            seen_active_us: crate::protocol::session::NOT_SEEN_IDLE,
            trace_id,
        };
        match self.send(end).await {
            Ok(Ok(_)) => receipt.await.map_err(|_| SessionError::RuntimeStopped),
            Ok(Err(SessionError::NotEstablished { .. })) | Err(MailboxError::Closed) => {
                self.ended_receipt().await
            }
            Ok(Err(other)) => Err(other),
            Err(MailboxError::Timeout) => Err(SessionError::RuntimeStopped),
        }
    }

    /// Makes the session's handler panic (`testing` builds only), to
    /// prove that a crashed session still ends once and releases everything.
    #[cfg(feature = "testing")]
    pub async fn inject_panic(&self) {
        let _ = self.send(InjectPanic).await;
    }

    /// Makes the session lose its drain timer (`testing` builds only),
    /// so an end that waits for a lease is stuck in Closing until the sweeper
    /// finds it.
    #[cfg(feature = "testing")]
    pub async fn inject_lost_drain_timer(&self) {
        let _ = self.send(InjectLostDrainTimer).await;
    }

    /// The receipt of a session that has already ended (waits for it if the
    /// release is still under way).
    async fn ended_receipt(&self) -> Result<ReleaseReceipt, SessionError> {
        let ask = AwaitReceipt {
            id: self.id,
            caller: self.caller.clone(),
        };
        self.registry()
            .send(ask)
            .await
            .map_err(|_| SessionError::RuntimeStopped)?
    }

    fn answer<T>(
        &self,
        sent: Result<Result<T, SessionError>, MailboxError>,
        event: Event,
    ) -> Result<T, SessionError> {
        sent.unwrap_or_else(|_| Err(self.gone(event)))
    }

    /// The error for a request that reached a session whose actor is gone.
    fn gone(&self, event: Event) -> SessionError {
        let state = match self.shared().state() {
            // The actor is gone, so it is at least closing, whatever was last stored.
            State::Init | State::Established => State::Closing,
            ended => ended,
        };
        SessionError::NotEstablished {
            id: self.id,
            state,
            event,
            reason: self.shared().reason(),
        }
    }
}
