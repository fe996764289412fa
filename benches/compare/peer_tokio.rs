//! One plain tokio task per session, sleeping until its deadline, on a runtime
//! of its own (one worker thread, as sessionbus has one engine thread).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sessionbus::SessionId;
use tokio::task::AbortHandle;

use super::direct::Releaser;

pub struct TaskStore {
    runtime: tokio::runtime::Runtime,
    tasks: Arc<Mutex<HashMap<SessionId, AbortHandle>>>,
    releaser: Arc<Releaser>,
}

impl TaskStore {
    pub fn start(releaser: Arc<Releaser>) -> TaskStore {
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
        }
    }

    pub fn insert(&self, session: SessionId, due: Instant) {
        let (tasks, releaser) = (self.tasks.clone(), self.releaser.clone());
        // The lock is held across the spawn, so the task cannot take its entry
        // out before it is in.
        let mut map = self.tasks.lock().unwrap();
        let task = self.runtime.spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            if tasks.lock().unwrap().remove(&session).is_some() {
                releaser.release(session, due);
            }
        });
        map.insert(session, task.abort_handle());
    }

    pub fn remove(&self, session: SessionId) -> bool {
        match self.tasks.lock().unwrap().remove(&session) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    pub fn stop(self) {
        self.runtime.shutdown_background();
    }
}
