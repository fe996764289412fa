//! A session's KV blocks: appending tokens (sharing a cached prefix),
//! where its blocks are, and reads and writes through its block table.
//!
//! Ground rules: every KV call is checked (owner, lifecycle) before the
//! store is touched, and runs as an atomic response, so a session's appends
//! land in the order they were sent. The table opens on the first append
//! and is released exactly once, by the end report (`EndGuard`).

use std::sync::Arc;

use actix::prelude::*;

use super::SessionActor;
use crate::ids::Caller;
use crate::kv::{KvError, Salt, ShareScope, TableId};
use crate::kv_store::{KvAppendReport, KvBlock, KvStore, KvStoreError};
use crate::lifecycle::Event;
use crate::protocol::registry::{AwaitReceipt, EvictForKv};
use crate::protocol::session::{AppendTokens, ForkKv, KvBlocks, ReadKv, WriteKv};
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
                    None => ShareScope::Owner(self.record.owner.clone()),
                };
                let table = kv.open_table(self.record.owner.clone(), scope);
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

    fn kv_call<T: 'static>(
        &mut self,
        access: Result<(Arc<KvStore>, TableId), SessionError>,
        call: impl AsyncFnOnce(Arc<KvStore>, TableId) -> Result<T, KvStoreError> + 'static,
    ) -> Atomic<T> {
        let (kv, table) = match access {
            Ok(access) => access,
            Err(error) => return refused(error),
        };
        let id = self.record.id;
        AtomicResponse::new(Box::pin(
            async move { call(kv, table).await }.into_actor(self).map(
                move |answer, _session, _ctx| {
                    answer.map_err(|source| SessionError::Kv { id, source })
                },
            ),
        ))
    }
}

impl Handler<AppendTokens> for SessionActor {
    type Result = Atomic<KvAppendReport>;

    /// When no block is free or cached, idle sessions holding KV blocks
    /// are ended (`budget.when_exhausted = "evict"`, idle for
    /// `budget.evict_idle`), their releases waited for at most
    /// `budget.wait_timeout`, and the append tried once more. Nothing waits
    /// on a session that could not make progress: only idle sessions
    /// without leases are asked, and never the appending one.
    fn handle(&mut self, msg: AppendTokens, _ctx: &mut Self::Context) -> Self::Result {
        let access = self.guarded(|s| s.kv_access(&msg.caller, Event::Allocate, Some(msg.salt)));
        let tokens = msg.tokens;
        let registry = self.record.settings.registry.clone();
        let requester = self.record.id;
        let wait = self.record.settings.wait_rules.timeout;
        self.kv_call(access, async move |kv, table| {
            let (needed, refused) = match kv.append(table, &tokens).await {
                Err(KvStoreError::Blocks(e @ KvError::OutOfBlocks { needed, .. })) => (needed, e),
                answer => return answer,
            };
            // Admission: what no number of ends could make room for is
            // refused at once, and nobody is evicted for it.
            if !kv.could_fit_if_others_ended(table, needed) {
                return Err(KvStoreError::Blocks(refused));
            }
            let evict = EvictForKv {
                requester,
                sessions: usize::try_from(needed).unwrap_or(usize::MAX),
            };
            let asked = registry.send(evict).await.unwrap_or_default();
            let receipts = asked.into_iter().map(|id| {
                registry.send(AwaitReceipt {
                    id,
                    caller: Caller::Operator("sessionbus-pressure".into()),
                })
            });
            let _ = tokio::time::timeout(wait, futures::future::join_all(receipts)).await;
            kv.append(table, &tokens).await
        })
    }
}

impl Handler<ForkKv> for SessionActor {
    type Result = Atomic<(TableId, crate::ids::Owner)>;

    fn handle(&mut self, msg: ForkKv, _ctx: &mut Self::Context) -> Self::Result {
        // A session without a table forks an empty one.
        let access = self.guarded(|s| s.kv_access(&msg.caller, Event::Touch, Some(None)));
        let owner = self.record.owner.clone();
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
