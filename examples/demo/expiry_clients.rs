//! The clients of the expiry scenario. Each one opens a session with its own
//! idle timeout and TTL, then follows its plan. Except for `CloseMidStream`,
//! the engine, not the client, ends the session.

use std::ops::RangeInclusive;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sessionbus::{
    EndReason, EngineHandle, ExpiryPolicy, LeaseError, LeaseGrant, OpenOptions, SessionError,
    SessionHandle, SessionId, State,
};

use crate::conversation::Conversation;

const IDLE_TIMEOUT_MS: RangeInclusive<u64> = 100..=400;
const TTL_MS: RangeInclusive<u64> = 500..=2_000;
/// Clients arrive over this long rather than all at once.
const ARRIVALS_MS: u64 = 500;
/// Turns a client takes before it goes quiet (all plans but `Busy`).
const TURNS: RangeInclusive<usize> = 1..=3;
/// Share of replies streamed token by token under a local lease.
const STREAM_SHARE: f64 = 0.25;
/// Tokens in a streamed reply; each adds its share of the turn's KV bytes.
const TOKENS: u64 = 8;
const TOKEN_INTERVAL: Duration = Duration::from_millis(1);
/// When the user closes during a stream, counted from the stream's start.
const CLOSE_AFTER: Duration = Duration::from_millis(2);
/// A stream that the close has not cut short by then stops anyway.
const MAX_TOKENS: u64 = 1_000;

/// What a client does with its session, and so how the session should end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Chats until its TTL ends it, however busy it is.
    Busy,
    /// Chats a few turns, then goes quiet until its idle timeout ends it.
    Quiet,
    /// Closes while a reply is streaming: the end waits for the stream's lease (a drain).
    CloseMidStream,
    /// A remote worker holds a lease and heartbeats. The lease keeps the
    /// session from idling, so its TTL ends it; the worker then lets go.
    RemoteWorker,
    /// The remote worker dies: its heartbeats stop, the lease is revoked, and the session ends.
    WorkerDies,
}

impl Plan {
    pub const ALL: [Plan; 5] = [
        Plan::Busy,
        Plan::Quiet,
        Plan::CloseMidStream,
        Plan::RemoteWorker,
        Plan::WorkerDies,
    ];

    fn draw(rng: &mut StdRng) -> Plan {
        match rng.random_range(0..20) {
            0..6 => Plan::Busy,
            6..12 => Plan::Quiet,
            12..15 => Plan::CloseMidStream,
            15..18 => Plan::RemoteWorker,
            _ => Plan::WorkerDies,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Busy => "busy",
            Plan::Quiet => "quiet",
            Plan::CloseMidStream => "close_mid_stream",
            Plan::RemoteWorker => "remote_worker",
            Plan::WorkerDies => "worker_dies",
        }
    }

    /// How the session ends when the machine keeps up with the timings.
    pub fn expected_end(self) -> EndReason {
        match self {
            Plan::Busy | Plan::RemoteWorker => EndReason::TtlExpired,
            Plan::Quiet => EndReason::IdleTimeout,
            Plan::CloseMidStream => EndReason::Closed,
            Plan::WorkerDies => EndReason::LeaseLost,
        }
    }
}

/// One client, drawn up front from the seed.
pub struct Client {
    index: usize,
    plan: Plan,
    arrive_after: Duration,
    idle_timeout: Duration,
    ttl: Duration,
    turns: usize,
    /// For `WorkerDies`: heartbeats the worker sends before it dies.
    beats_before_dying: u32,
    conversation: Conversation,
    rng: StdRng,
}

impl Client {
    pub fn draw(index: usize, rng: &mut StdRng) -> Client {
        let plan = Plan::draw(rng);
        let idle_timeout = millis(rng.random_range(IDLE_TIMEOUT_MS));
        // A client that goes quiet or closes after a few turns must not be
        // overtaken by its TTL: its turns take about ¾ of its idle timeout,
        // then the idle timeout runs; a second more absorbs a slow machine.
        let shortest_ttl = match plan {
            Plan::Quiet | Plan::CloseMidStream => {
                (*TTL_MS.start()).max(2 * idle_timeout.as_millis() as u64 + 1_000)
            }
            _ => *TTL_MS.start(),
        };
        Client {
            index,
            plan,
            arrive_after: millis(rng.random_range(0..ARRIVALS_MS)),
            idle_timeout,
            ttl: millis(rng.random_range(shortest_ttl..=*TTL_MS.end())),
            turns: rng.random_range(TURNS),
            beats_before_dying: rng.random_range(0..=1),
            conversation: Conversation::draw(rng),
            rng: StdRng::seed_from_u64(rng.random()),
        }
    }
}

/// What a client leaves behind.
pub struct Outcome {
    pub id: SessionId,
    pub plan: Plan,
    /// Turns the engine answered `Stale`: it reset the context.
    pub stale_verdicts: u64,
    /// Kept until the engine has ended the session: dropping the last handle
    /// before that would end it as a disconnect.
    pub handle: SessionHandle,
}

pub async fn run(engine: &EngineHandle, client: Client, kv_bytes: u64) -> anyhow::Result<Outcome> {
    let Client {
        index,
        plan,
        arrive_after,
        idle_timeout,
        ttl,
        turns,
        beats_before_dying,
        conversation,
        rng,
    } = client;
    tokio::time::sleep(arrive_after).await;
    let expiry = ExpiryPolicy {
        idle_timeout: Some(idle_timeout),
        ttl: Some(ttl),
    };
    let options = OpenOptions::new(format!("user-{index}")).expiry(expiry);
    let mut chat = Chat {
        session: engine.open_with(options).await?,
        conversation,
        rng,
        kv_bytes,
        stale_verdicts: 0,
    };
    // The system prompt's KV cache lives as long as the session, whatever
    // happens to the conversation's context.
    let system_prompt = chat.session.allocate(kv_bytes).await;
    if system_prompt.unless_ended()?.is_some() {
        let gap = idle_timeout / 4;
        match plan {
            Plan::Busy => {
                while chat.turn().await? {
                    tokio::time::sleep(idle_timeout / 3).await;
                }
            }
            Plan::Quiet => {
                chat.turns(turns, gap).await?;
            }
            Plan::CloseMidStream => {
                if chat.turns(turns, gap).await? {
                    close_mid_stream(&chat).await?;
                }
            }
            Plan::RemoteWorker => with_remote_worker(&mut chat, turns, gap, None).await?,
            Plan::WorkerDies => {
                let dies_after = Some(beats_before_dying);
                with_remote_worker(&mut chat, turns, gap, dies_after).await?
            }
        }
    }
    Ok(Outcome {
        id: chat.session.id(),
        plan,
        stale_verdicts: chat.stale_verdicts,
        handle: chat.session,
    })
}

/// A conversation on a session.
struct Chat {
    session: SessionHandle,
    conversation: Conversation,
    rng: StdRng,
    kv_bytes: u64,
    stale_verdicts: u64,
}

impl Chat {
    /// One turn: the user's message, then the reply's KV cache, in one buffer
    /// or streamed token by token under a lease. False once the session has ended.
    async fn turn(&mut self) -> anyhow::Result<bool> {
        let turn = self.conversation.next_turn(&mut self.rng);
        let Some(ack) = self.session.chat(turn).await.unless_ended()? else {
            return Ok(false);
        };
        if ack.context.is_stale() {
            // The engine dropped the old context and released its KV buffers;
            // the reply below is the new context's first buffer.
            self.stale_verdicts += 1;
        }
        if self.rng.random_bool(STREAM_SHARE) {
            let Some(lease) = self.session.lease().await.unless_ended()? else {
                return Ok(false);
            };
            let streamed = self.stream(TOKENS).await?;
            lease.release().await.unless_ended()?;
            Ok(streamed)
        } else {
            let reply = self.session.allocate_for_context(self.kv_bytes).await;
            Ok(reply.unless_ended()?.is_some())
        }
    }

    /// Up to `turns` turns, `gap` apart. False once the session has ended.
    async fn turns(&mut self, turns: usize, gap: Duration) -> anyhow::Result<bool> {
        for _ in 0..turns {
            if !self.turn().await? {
                return Ok(false);
            }
            tokio::time::sleep(gap).await;
        }
        Ok(true)
    }

    /// Streams up to `tokens` tokens, each growing the context's KV cache.
    /// Stops early once the session is ending: it refuses new allocations,
    /// and its end waits for this stream's lease. True if every token went out.
    async fn stream(&self, tokens: u64) -> anyhow::Result<bool> {
        for _ in 0..tokens {
            let token = self.session.allocate_for_context(self.kv_bytes / TOKENS);
            if token.await.unless_ended()?.is_none() {
                return Ok(false);
            }
            tokio::time::sleep(TOKEN_INTERVAL).await;
        }
        Ok(true)
    }
}

/// The user closes the tab while a reply is streaming. The close waits for
/// the stream's lease (a drain); the stream stops when it sees the session
/// ending, and returns the lease; then the close resolves with the receipt.
async fn close_mid_stream(chat: &Chat) -> anyhow::Result<()> {
    let Some(lease) = chat.session.lease().await.unless_ended()? else {
        return Ok(());
    };
    let close = tokio::spawn({
        let session = chat.session.clone();
        async move {
            tokio::time::sleep(CLOSE_AFTER).await;
            session.close().await
        }
    });
    chat.stream(MAX_TOKENS).await?;
    lease.release().await.unless_ended()?;
    close.await??;
    Ok(())
}

/// Takes a remote lease for a worker (in another process, simulated by a
/// task) while the user chats a few turns. With `dies_after`, the worker
/// crashes after that many heartbeats.
async fn with_remote_worker(
    chat: &mut Chat,
    turns: usize,
    gap: Duration,
    dies_after: Option<u32>,
) -> anyhow::Result<()> {
    let Some(grant) = chat.session.lease_remote().await.unless_ended()? else {
        return Ok(());
    };
    let worker = tokio::spawn(remote_worker(chat.session.clone(), grant, dies_after));
    chat.turns(turns, gap).await?;
    worker.await?
}

async fn remote_worker(
    session: SessionHandle,
    grant: LeaseGrant,
    dies_after: Option<u32>,
) -> anyhow::Result<()> {
    let mut beats = 0;
    loop {
        tokio::time::sleep(grant.heartbeat_interval).await;
        if session.state() != State::Established {
            // The session is ending (its TTL): let go, so that its end does
            // not wait for the drain deadline.
            session.release_lease(grant.id).await.unless_ended()?;
            return Ok(());
        }
        if dies_after == Some(beats) {
            return Ok(()); // crashed: no more heartbeats
        }
        if session.heartbeat(grant.id).await.unless_ended()?.is_none() {
            return Ok(());
        }
        beats += 1;
    }
}

/// In this scenario a request refused because the engine ended the session
/// (or revoked the lease) is how a session ends, not a failure.
trait UnlessEnded<T> {
    fn unless_ended(self) -> anyhow::Result<Option<T>>;
}

impl<T> UnlessEnded<T> for Result<T, SessionError> {
    fn unless_ended(self) -> anyhow::Result<Option<T>> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.is_gone() => Ok(None),
            Err(SessionError::Lease {
                source: LeaseError::Revoked { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
