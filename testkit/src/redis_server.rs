//! The fault harness of the cluster tests: a real `redis-server` for one
//! test, started on a free port and killed when dropped, that the test can
//! stop and resume (SIGSTOP/SIGCONT), kill and restart on the same port
//! (empty, or from its append-only file when started persistent), flush,
//! delete keys in and publish to from a plain client; and a TCP proxy in
//! front of it that the test can cut, to partition one node from Redis.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    binary: String,
    extra: Vec<String>,
    /// The append-only file's folder, when persistent (removed on drop).
    aof_dir: Option<std::path::PathBuf>,
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
    // Any answer means it is up (`-NOAUTH` when a password is required,
    // `-LOADING` while it reads its append-only file).
    let mut answer = [0u8; 1];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && matches!(&answer, b"+" | b"-")
}

impl RedisServer {
    /// Without persistence: a restart comes back empty.
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
            aof_dir: None,
        };
        server.spawn();
        server
    }

    /// With an append-only file fsynced on every write: a kill and restart
    /// keeps every key (and every TTL, which runs on while it is down).
    pub fn start_persistent() -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "sessionbus-redis-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("a folder for the append-only file");
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            binary: binary(),
            extra: vec![
                "--appendonly".into(),
                "yes".into(),
                "--appendfsync".into(),
                "always".into(),
                "--dir".into(),
                dir.display().to_string(),
            ],
            aof_dir: Some(dir),
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let persistence: &[&str] = match self.aof_dir {
            Some(_) => &["--save", ""],
            None => &["--save", "", "--appendonly", "no"],
        };
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(persistence)
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

    /// Kills the server (SIGKILL: no goodbye to clients; only what the
    /// append-only file holds survives, when persistent).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port: empty, or from its append-only file.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server runs").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// A plain client, as anyone who can reach Redis has.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("a client")
            .get_connection()
            .expect("a connection")
    }

    /// Runs one command from a plain client.
    pub fn cmd<T: redis::FromRedisValue>(&self, name: &str, args: &[&str]) -> T {
        let mut cmd = redis::cmd(name);
        for arg in args {
            cmd.arg(*arg);
        }
        cmd.query(&mut self.client())
            .unwrap_or_else(|e| panic!("{name} {args:?}: {e}"))
    }

    /// Publishes `payload` on `channel` from a plain client; how many heard it.
    pub fn publish(&self, channel: &str, payload: &str) -> u64 {
        self.cmd("PUBLISH", &[channel, payload])
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // Resumed first: a frozen server holds its port until it runs again.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
        if let Some(dir) = &self.aof_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A TCP proxy on 127.0.0.1 in front of a Redis server: a node pointed at
/// it is partitioned from Redis while the proxy is cut (every connection
/// closed, new ones closed at once), and reaches it again when healed.
pub struct Proxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn to(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (o, c, s) = (open.clone(), conns.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                if !o.load(Ordering::Acquire) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let mut held = c.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                drop(held);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Proxy {
            port,
            open,
            conns,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Partitions: closes every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    /// Heals the partition: new connections go through again.
    pub fn heal(&self) {
        self.open.store(true, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.cut();
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the accept loop
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
    });
}
