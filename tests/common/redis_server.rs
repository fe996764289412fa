//! A real `redis-server` for one test: started on a free port, without
//! persistence, killed when dropped. Restartable on the same port, to test
//! what happens when Redis goes away and comes back empty.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    binary: String,
    extra: Vec<String>,
}

/// The redis-server binary: `$REDIS_SERVER`, else `redis-server` on the PATH.
fn binary() -> String {
    let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let found = Command::new(&binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "sessionbus's cluster tests, example and bench need a real redis-server and `{binary}` was not found: \
         install it with `sudo apt-get install -y redis-server` (scripts/test.sh does), \
         or point REDIS_SERVER at the binary"
    );
    binary
}

/// A free port no other server of this test process was given. Ports are
/// taken in turn from below the kernel's ephemeral range (where `bind(0)`
/// and outgoing connections draw theirs), starting at a random offset: a
/// test that kills its server and restarts it on the same port must not find
/// that port handed to another test's server in between.
fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 8_000) as u16,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(port < 32_000, "no free port left for redis-server");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn pong(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    // Any answer means it is up (`-NOAUTH` when a password is required).
    let mut answer = [0u8; 1];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && matches!(&answer, b"+" | b"-")
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// With extra arguments (`--requirepass secret`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            binary: binary(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let started = Instant::now();
        while !pong(self.port) || !self.running() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis-server did not answer PING on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether our own server process is still running: a PING answered by
    /// some other process on our port must not pass for ours.
    fn running(&mut self) -> bool {
        let exited = self
            .child
            .as_mut()
            .is_none_or(|child| child.try_wait().map_or(true, |status| status.is_some()));
        assert!(
            !exited,
            "redis-server on port {} exited at start (is the port taken?)",
            self.port
        );
        true
    }

    /// Kills the server (SIGKILL: no goodbye to clients, nothing saved).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
