//! Registering hooks and running them under a timeout and panic isolation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use std::future::Future;

use futures::future::BoxFuture;

use super::executor::{Executor, Finished};
use crate::events::SessionEndEvent;

/// What a hook that failed says went wrong: any error type (its source
/// chain is logged), or a plain `String`.
pub type HookError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A pre-destroy hook: called with the end of a session whose memory is about
/// to be released; its future says whether the work succeeded.
///
/// Any `Fn(Arc<SessionEndEvent>) -> impl Future<Output = Result<(), E>>`
/// is one, for every `E` that converts into [`HookError`] (`String`,
/// `std::io::Error`, `anyhow::Error`'s boxed form, your own error type), so a
/// closure returning an `async` block, or an async closure, needs no boxing:
///
/// ```no_run
/// # fn demo(engine: &sessionbus_actors::EngineHandle) {
/// engine.on_before_release("persist", |ended: std::sync::Arc<sessionbus_actors::SessionEndEvent>| async move {
///     // e.g. write the conversation of `ended.id` to the database
///     let _ = ended.id;
///     Ok::<(), std::io::Error>(())
/// });
/// # }
/// ```
///
/// Implement it on a type of your own for a hook with state.
pub trait BeforeRelease: Send + Sync + 'static {
    /// Runs the hook for one ended session.
    fn before_release(
        &self,
        ended: Arc<SessionEndEvent>,
    ) -> BoxFuture<'static, Result<(), HookError>>;
}

impl<F, Fut, E> BeforeRelease for F
where
    F: Fn(Arc<SessionEndEvent>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<HookError>,
{
    fn before_release(
        &self,
        ended: Arc<SessionEndEvent>,
    ) -> BoxFuture<'static, Result<(), HookError>> {
        let run = self(ended);
        Box::pin(async move { run.await.map_err(Into::into) })
    }
}

/// A registered hook.
type Hook = Arc<dyn BeforeRelease>;

/// An error with its whole source chain, `: `-separated, for the log.
fn chain(error: &HookError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What the hooks did, since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HookStats {
    /// Hook runs that succeeded.
    pub succeeded: u64,
    /// Hook runs that returned an error.
    pub failed: u64,
    /// Hook runs cut off at `hooks.timeout` (the release went ahead).
    pub timed_out: u64,
    /// Hook runs that panicked (caught; the release went ahead).
    pub panicked: u64,
    /// Ends whose hooks are running now.
    pub running: u64,
}

#[derive(Default)]
struct Counts {
    succeeded: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    panicked: AtomicU64,
    running: AtomicU64,
}

/// The registered hooks, shared by the engine handle (which adds them), the
/// cleanup actor (which runs them) and the registry (which reports them).
pub(crate) struct Hooks {
    hooks: RwLock<Vec<(String, Hook)>>,
    timeout: Duration,
    counts: Counts,
    /// The hook threads: hook code never runs on the engine's thread.
    executor: Executor,
}

enum Outcome {
    Succeeded,
    Failed(String),
    TimedOut,
    Panicked,
}

impl Hooks {
    pub(crate) fn new(timeout: Duration) -> Self {
        Hooks {
            hooks: RwLock::new(Vec::new()),
            timeout,
            counts: Counts::default(),
            executor: Executor::default(),
        }
    }

    pub(crate) fn add(&self, name: String, hook: Hook) {
        self.hooks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, hook));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.hooks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    pub(crate) fn stats(&self) -> HookStats {
        let c = &self.counts;
        HookStats {
            succeeded: c.succeeded.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            panicked: c.panicked.load(Ordering::Relaxed),
            running: c.running.load(Ordering::Relaxed),
        }
    }

    /// Runs every hook for `ended`, concurrently; resolves within the timeout
    /// (plus scheduling) whatever the hooks do.
    pub(crate) async fn run(&self, ended: &Arc<SessionEndEvent>) {
        let hooks: Vec<_> = self.hooks.read().unwrap_or_else(|p| p.into_inner()).clone();
        if hooks.is_empty() {
            return;
        }
        self.counts.running.fetch_add(1, Ordering::Relaxed);
        let runs = hooks.into_iter().map(|(name, hook)| {
            let ended = ended.clone();
            async move { (name, self.run_one(hook, ended).await) }
        });
        for (name, outcome) in futures::future::join_all(runs).await {
            self.record(&name, ended, outcome);
        }
        self.counts.running.fetch_sub(1, Ordering::Relaxed);
    }

    /// Runs one hook on a hook thread and waits for it here, on the
    /// engine's thread, for at most the timeout: a hook that blocks its
    /// thread is cut off all the same, and abandoned (see `executor`).
    async fn run_one(&self, hook: Hook, ended: Arc<SessionEndEvent>) -> Outcome {
        let handle = tokio::runtime::Handle::current();
        let (finished, _abandon_unless_finished) = self
            .executor
            .start(handle, Box::new(move || hook.before_release(ended)));
        match tokio::time::timeout(self.timeout, finished).await {
            Ok(Ok(Finished::Returned(Ok(())))) => Outcome::Succeeded,
            Ok(Ok(Finished::Returned(Err(error)))) => Outcome::Failed(chain(&error)),
            Ok(Ok(Finished::Panicked)) => Outcome::Panicked,
            // The task was dropped unanswered: only when the engine is going away.
            Ok(Err(_)) => Outcome::Failed("the hook's thread went away".to_owned()),
            Err(_) => Outcome::TimedOut,
        }
    }

    fn record(&self, name: &str, ended: &SessionEndEvent, outcome: Outcome) {
        let c = &self.counts;
        let (counter, what, error) = match outcome {
            Outcome::Succeeded => {
                c.succeeded.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Outcome::Failed(error) => (&c.failed, "hook.failed", error),
            Outcome::TimedOut => (
                &c.timed_out,
                "hook.timed_out",
                format!("no answer within {:?}", self.timeout),
            ),
            Outcome::Panicked => (&c.panicked, "hook.panicked", "the hook panicked".to_owned()),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            target: "sessionbus::supervisor",
            event = what,
            hook = name,
            session_id = %ended.id,
            reason = %ended.reason,
            %error,
            "pre-destroy hook did not succeed; releasing the session's memory anyway"
        );
    }
}
