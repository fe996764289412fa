//! Ctrl-C and SIGTERM, at any moment. The handlers are installed first
//! thing in `main`, before the runtime starts, and stay for the whole run:
//! a signal never kills the demo, it only asks it to stop. The request is
//! sticky (a `watch`), so a scenario that asks after the signal came still
//! sees it. Each scenario runs its clients under [`Stop::unless_stopped`];
//! on a signal it drops them (their sessions disconnect), shuts the runtime
//! down as usual, and prints its report, marked `interrupted`.

use tokio::sync::watch;

/// Records `name` unless a signal came before it; `true` if it was recorded.
fn first(slot: &mut Option<&'static str>, name: &'static str) -> bool {
    if slot.is_some() {
        return false;
    }
    *slot = Some(name);
    true
}

/// Whether a stop was asked for, and by which signal.
#[derive(Clone, Debug)]
pub struct Stop(watch::Receiver<Option<&'static str>>);

impl Stop {
    /// Installs the SIGTERM and SIGINT handlers now (tokio registers them
    /// when the listeners are created, not when first polled).
    pub fn install() -> anyhow::Result<Stop> {
        let (tx, rx) = watch::channel(None);
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            tokio::spawn(async move {
                loop {
                    let name = tokio::select! {
                        _ = term.recv() => "SIGTERM",
                        _ = int.recv() => "SIGINT",
                    };
                    // The first signal counts; later ones change nothing.
                    tx.send_if_modified(|s| first(s, name));
                }
            });
        }
        #[cfg(not(unix))]
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                tx.send_if_modified(|s| first(s, "ctrl-c"));
            }
        });
        Ok(Stop(rx))
    }

    /// The signal that asked to stop, if one came.
    pub fn requested(&self) -> Option<&'static str> {
        *self.0.borrow()
    }

    /// Resolves when a stop is asked for (at once if it already was).
    pub async fn wait(&self) -> &'static str {
        let mut rx = self.0.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(signal) => signal.expect("waited for Some"),
            Err(_) => std::future::pending().await,
        }
    }

    /// Runs `work` unless a stop is asked for first (`None` then; `work` is dropped).
    pub async fn unless_stopped<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            _ = self.wait() => None,
            done = work => Some(done),
        }
    }
}
