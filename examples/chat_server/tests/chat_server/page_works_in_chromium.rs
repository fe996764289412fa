//! The chat_server example's page (`GET /`), opened in headless Chromium
//! against the running server: with `?demo=1` it gets a token, opens a
//! session and its WebSocket, sends a message, shows the reply as it streams
//! and refreshes the status panel, then writes what it saw into the DOM,
//! which `--dump-dom` hands back.
//!
//! Chromium is driven over the DevTools protocol (its own WebSocket), not
//! with `--dump-dom`: virtual time does not wait for WebSocket frames, so a
//! dump could be taken mid-stream. The test polls the page's `#result` until
//! the demo has written it.
//!
//! Needs the Debian package `chromium` (`scripts/test.sh` installs it), or a
//! Chromium/Chrome binary named by `CHROMIUM`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::client::*;
use serde_json::Value;

fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return path.into();
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            if dir.join(name).is_file() {
                return dir.join(name);
            }
        }
    }
    panic!(
        "headless Chromium is needed: install the Debian package `chromium` (sudo apt-get \
         install -y chromium; scripts/test.sh does it), or set CHROMIUM to a Chromium or Chrome binary"
    );
}

fn profile() -> PathBuf {
    std::env::temp_dir().join(format!("sessionbus-chat-page-{}", std::process::id()))
}

/// A minimal DevTools client: one page target, `Runtime.evaluate` in it.
struct DevTools {
    socket: Socket,
    session: String,
    next_id: u64,
}

impl DevTools {
    /// Starts a headless Chromium with the DevTools protocol on a free port
    /// and opens `url` in a new page.
    async fn open(url: &str) -> (std::process::Child, DevTools) {
        let mut browser = Command::new(chromium())
            .args([
                "--headless",
                "--disable-gpu",
                "--no-sandbox",
                "--no-first-run",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile().display()))
            .stderr(Stdio::piped())
            .spawn()
            .expect("running chromium");
        let stderr = browser.stderr.take().unwrap();
        let endpoint = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stderr).lines();
            let endpoint = lines
                .by_ref()
                .map_while(Result::ok)
                .find_map(|l| {
                    l.split_once("DevTools listening on ")
                        .map(|(_, ws)| ws.to_string())
                })
                .expect("chromium prints its DevTools endpoint");
            // Keep draining stderr so the browser never blocks on it.
            std::thread::spawn(move || lines.for_each(drop));
            endpoint
        })
        .await
        .unwrap();
        let (socket, _) = tokio_tungstenite::connect_async(endpoint).await.unwrap();
        let mut devtools = DevTools {
            socket,
            session: String::new(),
            next_id: 0,
        };
        let target = devtools
            .call("Target.createTarget", serde_json::json!({"url": url}))
            .await;
        let attached = devtools
            .call(
                "Target.attachToTarget",
                serde_json::json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        devtools.session = attached["sessionId"].as_str().unwrap().to_string();
        (browser, devtools)
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = serde_json::json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            request["sessionId"] = self.session.clone().into();
        }
        self.socket
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(60), self.socket.next())
                .await
                .expect("chromium answers")
                .expect("the DevTools socket is open")
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Asks the browser to quit (it may drop the socket before answering).
    async fn close_browser(&mut self) {
        let request = serde_json::json!({"id": 0, "method": "Browser.close"});
        let _ = self.socket.send(Message::text(request.to_string())).await;
    }

    /// Evaluates `expression` in the page; its value (strings and numbers).
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        result["result"]["value"].clone()
    }
}

#[actix_web::test]
async fn the_page_chats_and_its_status_panel_updates_in_headless_chromium() {
    chromium(); // fail first, and clearly, if it is missing
    let server = start(Settings {
        token_interval_ms: 5,
        ..test_settings()
    })
    .await;
    let http = Http::new(&server);
    let (mut browser, mut page) = DevTools::open(&format!("http://{}/?demo=1", server.addr)).await;

    // The page's scripted conversation writes `DEMO {json}` into #result when done.
    let mut result = String::new();
    for _ in 0..600 {
        let text = page
            .eval("(document.getElementById('result') || {}).textContent || ''")
            .await;
        result = text.as_str().unwrap_or_default().to_string();
        if !result.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen: Value = serde_json::from_str(
        result
            .strip_prefix("DEMO ")
            .unwrap_or_else(|| panic!("the page's demo never finished: {result:?}")),
    )
    .unwrap();
    let prompt = "hello from a headless browser";
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["done"], true, "{seen}");
    assert_eq!(
        seen["reply"],
        server::model::reply_tokens(prompt).concat(),
        "the streamed reply: {seen}"
    );
    assert_eq!(
        seen["tokens"],
        server::model::reply_tokens(prompt).len(),
        "token by token: {seen}"
    );
    // The status panel was refreshed after the reply and shows the live session and its KV cache.
    assert_eq!(seen["statusLive"], 1, "{seen}");
    assert!(seen["gpuLiveBytes"].as_u64().unwrap() > 0, "{seen}");
    let panel = seen["panel"].as_str().unwrap();
    assert!(
        panel.contains("sessions live1") && panel.contains("GPU live"),
        "{panel}"
    );
    // The chat log on the page shows the reply as it was streamed.
    let log = page
        .eval("document.getElementById('log').textContent")
        .await;
    assert!(
        log.as_str()
            .unwrap()
            .contains(&server::model::reply_tokens(prompt).concat()),
        "{log}"
    );

    // Closing the browser closes its socket: the session ends as disconnected.
    page.close_browser().await;
    let _ = tokio::task::spawn_blocking(move || browser.wait()).await;
    let _ = std::fs::remove_dir_all(profile());
    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "disconnected"), 1, "{status}");
}
