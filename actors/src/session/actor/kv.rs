//! A session's KV blocks: appending tokens (sharing a cached prefix),
//! where its blocks are, and reads and writes through its block table.
//!
//! Ground rules: every KV call is checked (owner, lifecycle) before the
//! store is touched, and runs as an atomic response, so a session's appends
//! land in the order they were sent. The table opens on the first append
//! and is released exactly once, by the end report (`EndGuard`).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::{RestoreError, SessionActor};
use crate::ids::{Caller, SessionId};
use crate::kv::{KvError, Salt, ShareScope, TableId};
use crate::kv_store::{KvAppendReport, KvBlock, KvStore, KvStoreError};
use crate::lifecycle::Event;
use crate::protocol::registry::{AwaitReceipt, EvictForKv};
use crate::protocol::session::{AppendTokens, ForkKv, KvBlocks, Offload, ReadKv, WriteKv};
use crate::session::error::SessionError;

type Atomic<T> = AtomicResponse<SessionActor, Result<T, SessionError>>;

fn refused<T: 'static>(error: SessionError) -> Atomic<T> {
    AtomicResponse::new(Box::pin(fut::ready(Err(error))))
}

impl SessionActor {
    fn kv_error(&self, source: KvStoreError) -> SessionError {
        SessionError::Kv {
            id: self.record.id,
            source,
        }
    }

    /// Checks `caller` and `event`; the store and the session's table (opened
    /// now, in `salt`'s scope or the owner's, if `open` and it has none).
    fn kv_access(
        &mut self,
        caller: &Caller,
        event: Event,
        open: Option<Option<Salt>>,
    ) -> Result<(Arc<KvStore>, TableId), SessionError> {
        self.authorize(caller)?;
        self.check(event)?;
        let kv = self
            .record
            .settings
            .kv
            .clone()
            .ok_or_else(|| self.kv_error(KvStoreError::NotConfigured))?;
        let table = match (self.record.kv_table, open) {
            (Some(table), _) => table,
            (None, Some(salt)) => {
                let scope = match salt {
                    Some(salt) => ShareScope::Salt(salt),
                    None => ShareScope::Owner(self.record.owner().clone()),
                };
                let table = kv.open_table(self.record.owner().clone(), scope);
                self.record.kv_table = Some(table);
                self.record.shared.set_holds_kv(true);
                table
            }
            (None, None) => {
                return Err(self.kv_error(KvStoreError::NoSuchBlock { index: 0, count: 0 }));
            }
        };
        self.mark_active();
        Ok((kv, table))
    }

    /// Runs `call` on the store and table once any offloaded KV blocks are
    /// back. The restore runs inside the atomic response itself: actix runs
    /// the newest `ctx.wait` first, so a restore queued with `ensure_on_gpu`
    /// would run after this call, not before.
    fn kv_call<T: 'static>(
        &mut self,
        access: Result<(Arc<KvStore>, TableId), SessionError>,
        call: impl AsyncFnOnce(Arc<KvStore>, TableId) -> Result<T, KvStoreError> + 'static,
    ) -> Atomic<T> {
        let (kv, table) = match access {
            Ok(access) => access,
            Err(error) => return refused(error),
        };
        let restore = if self.restoring {
            None
        } else {
            self.restore_kv()
        };
        self.restoring |= restore.is_some();
        let id = self.record.id;
        let restored = async move {
            match restore {
                Some(restore) => Some(restore.await),
                None => None,
            }
        };
        AtomicResponse::new(Box::pin(restored.into_actor(self).then(
            move |restored, session: &mut Self, _ctx| {
                if let Some(restored) = restored {
                    session.restoring = false;
                    let bytes = session.kv_restored(restored);
                    session.restored(bytes);
                }
                let blocked = session.kv_not_on_gpu();
                async move {
                    match blocked {
                        Some(error) => Err(error),
                        None => call(kv, table)
                            .await
                            .map_err(|source| SessionError::Kv { id, source }),
                    }
                }
                .into_actor(session)
            },
        )))
    }

    /// Takes in the outcome of a KV restore; the bytes it brought back.
    pub(super) fn kv_restored(&mut self, restored: Result<u64, KvStoreError>) -> u64 {
        match restored {
            Ok(blocks) => {
                self.kv_offloaded = false;
                if matches!(self.restore_error.as_deref(), Some(RestoreError::Kv(_))) {
                    self.restore_error = None;
                }
                self.record.shared.set_holds_kv(true);
                blocks * self.kv_block_bytes()
            }
            Err(error) => {
                self.restore_failed(&error);
                self.restore_error = Some(Box::new(RestoreError::Kv(error)));
                0
            }
        }
    }

    /// The store and table, if this session has KV blocks on the device.
    pub(super) fn kv_on_device(&self) -> Option<(Arc<KvStore>, TableId)> {
        let table = self.record.kv_table.filter(|_| !self.kv_offloaded)?;
        let kv = self.record.settings.kv.clone()?;
        kv.table_blocks(table).gt(&0).then_some((kv, table))
    }

    /// Bytes of one KV block (0 without a block pool).
    pub(super) fn kv_block_bytes(&self) -> u64 {
        self.record
            .settings
            .kv
            .as_ref()
            .map_or(0, |kv| kv.block_bytes())
    }

    /// Brings the offloaded KV blocks back, making room like an append does.
    pub(super) fn restore_kv(
        &self,
    ) -> Option<impl Future<Output = Result<u64, KvStoreError>> + 'static> {
        let table = self.record.kv_table.filter(|_| self.kv_offloaded)?;
        let kv = self.record.settings.kv.clone()?;
        let room = self.kv_room();
        Some(async move { room.run(&kv, table, async || kv.restore(table).await).await })
    }

    /// The error for a KV request while the blocks are still in host memory.
    pub(super) fn kv_not_on_gpu(&self) -> Option<SessionError> {
        self.kv_offloaded.then(|| SessionError::Kv {
            id: self.record.id,
            source: match self.restore_error.as_deref() {
                Some(RestoreError::Kv(cause)) => cause.clone(),
                _ => KvStoreError::Slab(crate::gpu::GpuError::Unavailable),
            },
        })
    }

    fn kv_room(&self) -> KvRoom {
        KvRoom {
            shards: self.record.settings.shards.clone(),
            requester: self.record.id,
            wait: self.record.settings.wait_rules.timeout,
        }
    }
}

/// How a KV operation that ran out of blocks makes room: idle sessions
/// holding KV blocks are offloaded (`budget.offload`, within
/// `budget.offload_host_memory`) or, if that freed too little, ended
/// (`budget.when_exhausted = "evict"`, idle for `budget.evict_idle`); each
/// round is waited for at most `budget.wait_timeout` and the operation tried
/// again after it. Nothing waits
/// on a session that could not make progress: only idle sessions without
/// leases are asked, and never the one asking.
struct KvRoom {
    shards: crate::registry::Shards,
    requester: SessionId,
    wait: Duration,
}

impl KvRoom {
    /// Runs `op`; out of blocks, makes room and runs it again: first by
    /// offloading idle holders, then (if that freed too little: their blocks
    /// were shared, or host memory is full) by ending them.
    async fn run<T>(
        &self,
        kv: &KvStore,
        table: TableId,
        op: impl AsyncFn() -> Result<T, KvStoreError>,
    ) -> Result<T, KvStoreError> {
        let mut answer = op().await;
        for offload in [true, false] {
            let (needed, refused) = match answer {
                Err(KvStoreError::Blocks(e @ KvError::OutOfBlocks { needed, .. })) => (needed, e),
                answer => return answer,
            };
            // Admission: what no number of ends could make room for is
            // refused at once, and nobody is evicted for it.
            if !kv.could_fit_if_others_ended(table, needed) {
                return Err(KvStoreError::Blocks(refused));
            }
            let made = self.make_room(needed, offload).await;
            answer = op().await;
            if !made {
                break; // nobody was asked: a second round finds nobody either
            }
        }
        answer
    }

    /// Asks the registry for idle holders to offload (`offload`) or end, and
    /// waits for them within `wait_timeout`; whether anyone was asked.
    async fn make_room(&self, needed: u64, offload: bool) -> bool {
        let evict = EvictForKv {
            requester: self.requester,
            sessions: usize::try_from(needed).unwrap_or(usize::MAX),
            offload,
        };
        // The coordinator picks across every shard.
        let asked = self
            .shards
            .coordinator()
            .send(evict)
            .await
            .unwrap_or_default();
        let anyone = !asked.ended.is_empty() || !asked.offloading.is_empty();
        let caller = Caller::Operator("sessionbus-pressure".into());
        let ended = asked.ended.into_iter().map(|id| {
            let receipt = self.shards.for_id(id).send(AwaitReceipt {
                id,
                caller: caller.clone(),
            });
            async move {
                let _ = receipt.await;
            }
        });
        let host_limit = Some(asked.host_limit);
        let offloaded = asked.offloading.into_iter().map(|shared| {
            let offload = shared.send(Offload {
                caller: caller.clone(),
                host_limit,
            });
            async move {
                if let Some(offload) = offload {
                    let _ = offload.await;
                }
            }
        });
        let all = futures::future::join(
            futures::future::join_all(ended),
            futures::future::join_all(offloaded),
        );
        let _ = tokio::time::timeout(self.wait, all).await;
        anyone
    }
}

impl Handler<AppendTokens> for SessionActor {
    type Result = Atomic<KvAppendReport>;

    /// When no block is free or cached, room is made as `KvRoom` says.
    fn handle(&mut self, msg: AppendTokens, _ctx: &mut Self::Context) -> Self::Result {
        let access = self.guarded(|s| s.kv_access(&msg.caller, Event::Allocate, Some(msg.salt)));
        let tokens = msg.tokens;
        let room = self.kv_room();
        self.kv_call(access, async move |kv, table| {
            room.run(&kv, table, async || kv.append(table, &tokens).await)
                .await
        })
    }
}

impl Handler<ForkKv> for SessionActor {
    type Result = Atomic<(TableId, crate::ids::Owner)>;

    fn handle(&mut self, msg: ForkKv, _ctx: &mut Self::Context) -> Self::Result {
        // A session without a table forks an empty one.
        let access = self.guarded(|s| s.kv_access(&msg.caller, Event::Touch, Some(None)));
        let owner = self.record.owner().clone();
        self.kv_call(access, async move |kv, table| {
            Ok((kv.fork(table).await?, owner))
        })
    }
}

impl Handler<KvBlocks> for SessionActor {
    type Result = Atomic<Vec<KvBlock>>;

    fn handle(&mut self, msg: KvBlocks, _ctx: &mut Self::Context) -> Self::Result {
        if self.record.kv_table.is_none() {
            // No table yet: no blocks (after the same checks).
            return match self.guarded(|s| {
                s.authorize(&msg.caller)?;
                s.check(Event::Touch)
            }) {
                Ok(()) => AtomicResponse::new(Box::pin(fut::ready(Ok(Vec::new())))),
                Err(error) => refused(error),
            };
        }
        let access = self.guarded(|s| s.kv_access(&msg.caller, Event::Touch, None));
        self.kv_call(access, async move |kv, table| kv.blocks(table))
    }
}

impl Handler<WriteKv> for SessionActor {
    type Result = Atomic<()>;

    fn handle(&mut self, msg: WriteKv, _ctx: &mut Self::Context) -> Self::Result {
        let access = self.guarded(|s| s.kv_access(&msg.caller, Event::Touch, None));
        let WriteKv {
            index,
            offset,
            data,
            ..
        } = msg;
        self.kv_call(access, async move |kv, table| {
            kv.write(table, index, offset, data).await
        })
    }
}

impl Handler<ReadKv> for SessionActor {
    type Result = Atomic<Vec<u8>>;

    fn handle(&mut self, msg: ReadKv, _ctx: &mut Self::Context) -> Self::Result {
        let access = self.guarded(|s| s.kv_access(&msg.caller, Event::Touch, None));
        let index = msg.index;
        self.kv_call(access, async move |kv, table| kv.read(table, index).await)
    }
}
