//! Redis as the session store: one key per session with a TTL (`SET … PX`),
//! and keyspace notifications (`notify-keyspace-events Ex`) telling a
//! subscriber which key expired, which then releases that session's memory.
//! A throwaway `redis-server` (no persistence) runs as a child process, with
//! its default `hz` (10 expiry cycles per second).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use sessionbus::SessionId;

use super::direct::{Deadlines, Releaser};

const SERVER: &str = "redis-server";
const EXPIRED: &str = "__keyevent@0__:expired";

fn key(session: SessionId) -> String {
    format!("s:{:032x}", session.as_u128())
}

fn session_of(key: &str) -> Option<SessionId> {
    let hex = key.strip_prefix("s:")?;
    u128::from_str_radix(hex, 16).ok().map(SessionId::from_u128)
}

pub struct RedisStore {
    server: Child,
    runtime: tokio::runtime::Runtime,
    conn: MultiplexedConnection,
    deadlines: Deadlines,
}

impl RedisStore {
    /// Starts the server and the subscriber; `Err` says why redis cannot run here.
    pub fn start(releaser: Arc<Releaser>) -> Result<RedisStore, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let server = Command::new(SERVER)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--notify-keyspace-events", "Ex"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {SERVER}: {e}"))?;
        let mut store_server = Some(server);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("peer-redis-client")
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let deadlines: Deadlines = Arc::new(Mutex::new(Default::default()));
        let listened = deadlines.clone();
        let connected = runtime.block_on(async move {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                .map_err(|e| e.to_string())?;
            // The server takes a moment to listen.
            let started = Instant::now();
            let conn = loop {
                match client.get_multiplexed_async_connection().await {
                    Ok(conn) => break conn,
                    Err(e) if started.elapsed() > Duration::from_secs(10) => {
                        return Err(format!("cannot connect: {e}"));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            let mut pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
            pubsub.subscribe(EXPIRED).await.map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let Ok(expired) = message.get_payload::<String>() else {
                        continue;
                    };
                    let Some(session) = session_of(&expired) else {
                        continue;
                    };
                    let due = listened.lock().unwrap().remove(&session);
                    if let Some(due) = due {
                        releaser.release(session, due);
                    }
                }
            });
            Ok::<_, String>(conn)
        });
        match connected {
            Ok(conn) => Ok(RedisStore {
                server: store_server.take().expect("server"),
                runtime,
                conn,
                deadlines,
            }),
            Err(e) => {
                if let Some(mut server) = store_server.take() {
                    let _ = server.kill();
                    let _ = server.wait();
                }
                Err(format!("redis: {e}"))
            }
        }
    }

    pub async fn insert(&self, session: SessionId, due: Instant) -> Result<(), String> {
        // Redis takes whole milliseconds: round up, and measure from what it was asked.
        let sent = Instant::now();
        let ms = (due
            .saturating_duration_since(sent)
            .as_micros()
            .div_ceil(1000) as u64)
            .max(1);
        self.deadlines
            .lock()
            .unwrap()
            .insert(session, sent + Duration::from_millis(ms));
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(key(session))
            .arg(1)
            .arg("PX")
            .arg(ms)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| format!("SET: {e}"))
    }

    pub async fn exists(&self, session: SessionId) -> Result<bool, String> {
        let mut conn = self.conn.clone();
        redis::cmd("EXISTS")
            .arg(key(session))
            .query_async::<u64>(&mut conn)
            .await
            .map(|n| n == 1)
            .map_err(|e| format!("EXISTS: {e}"))
    }

    pub async fn remove(&self, session: SessionId) -> Result<bool, String> {
        self.deadlines.lock().unwrap().remove(&session);
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(key(session))
            .query_async::<u64>(&mut conn)
            .await
            .map(|removed| removed == 1)
            .map_err(|e| format!("DEL: {e}"))
    }

    pub fn stop(mut self) {
        self.runtime.shutdown_background();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
