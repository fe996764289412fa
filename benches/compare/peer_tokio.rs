//! One plain tokio task per session, sleeping until its deadline, on a runtime
//! of its own (one worker thread, as sessionbus has one engine thread).
//!
//! With mailboxes (the throughput workload's "open + one message + close"),
//! each task also owns a channel and answers every message sent to it: what a
//! hand-written session actor needs to be sent anything at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sessionbus::SessionId;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use super::direct::Releaser;

/// A message to a session's task: answered once handled.
type Message = oneshot::Sender<()>;

struct Task {
    abort: AbortHandle,
    mailbox: Option<mpsc::UnboundedSender<Message>>,
}

pub struct TaskStore {
    runtime: tokio::runtime::Runtime,
    tasks: Arc<Mutex<HashMap<SessionId, Task>>>,
    releaser: Arc<Releaser>,
    mailboxes: bool,
}

impl TaskStore {
    pub fn start(releaser: Arc<Releaser>, mailboxes: bool) -> TaskStore {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("peer-tokio-tasks")
            .enable_time()
            .build()
            .expect("tokio runtime for the task-per-session peer");
        TaskStore {
            runtime,
            tasks: Arc::new(Mutex::new(HashMap::new())),
            releaser,
            mailboxes,
        }
    }

    pub fn insert(&self, session: SessionId, due: Instant) {
        let (tasks, releaser) = (self.tasks.clone(), self.releaser.clone());
        let (mailbox, mut inbox) = match self.mailboxes {
            true => {
                let (tx, rx) = mpsc::unbounded_channel::<Message>();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        // The lock is held across the spawn, so the task cannot take its entry
        // out before it is in.
        let mut map = self.tasks.lock().unwrap();
        let task = self.runtime.spawn(async move {
            let deadline = tokio::time::sleep_until(due.into());
            tokio::pin!(deadline);
            loop {
                let message = async {
                    match inbox.as_mut() {
                        Some(inbox) => inbox.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = &mut deadline => break,
                    Some(reply) = message => {
                        let _ = reply.send(());
                    }
                }
            }
            if tasks.lock().unwrap().remove(&session).is_some() {
                releaser.release(session, due);
            }
        });
        map.insert(
            session,
            Task {
                abort: task.abort_handle(),
                mailbox,
            },
        );
    }

    /// Sends the session's task a message and waits for its answer; `false`
    /// if there is no such session (or it has no mailbox).
    pub async fn message(&self, session: SessionId) -> bool {
        let mailbox = self
            .tasks
            .lock()
            .unwrap()
            .get(&session)
            .and_then(|task| task.mailbox.clone());
        let Some(mailbox) = mailbox else {
            return false;
        };
        let (reply, answer) = oneshot::channel();
        mailbox.send(reply).is_ok() && answer.await.is_ok()
    }

    pub fn remove(&self, session: SessionId) -> bool {
        match self.tasks.lock().unwrap().remove(&session) {
            Some(task) => {
                task.abort.abort();
                true
            }
            None => false,
        }
    }

    pub fn stop(self) {
        self.runtime.shutdown_background();
    }
}
