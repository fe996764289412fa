//! Issue 15, defect 1: "chat_server can be filled by anyone". One client
//! address mints many names and opens sessions under each; an honest user
//! from another address must still get a session. Driven by real HTTP
//! clients bound to two loopback addresses (127.0.0.2 is the hostile one).

use super::client::*;

#[actix_web::test]
async fn minted_names_from_one_address_cannot_fill_the_server() {
    let mut config = sessionbus::config::Config::default();
    config.sessions.max_sessions = 100;
    let server = ChatServer::start(Options {
        config,
        settings: Settings {
            token_interval_ms: 1,
            ..Settings::default()
        },
        ..Options::default()
    })
    .await
    .unwrap();
    let hostile = Http::from_address(&server, [127, 0, 0, 2]);
    let honest = Http::new(&server);

    // 20 names × 10 sessions, all from one address, nobody attaching.
    let mut answers = std::collections::BTreeMap::<(&str, u16, String), u32>::new();
    let mut opened = 0;
    for name in 0..20 {
        let (code, body) = hostile
            .call(
                "POST",
                "/tokens",
                None,
                Some(serde_json::json!({"user": format!("mint-{name}")})),
            )
            .await;
        let error = body["error"].as_str().unwrap_or("").to_string();
        *answers.entry(("token", code, error)).or_default() += 1;
        let Some(token) = body["token"].as_str() else {
            continue;
        };
        for _ in 0..10 {
            let (code, body) = hostile.call("POST", "/sessions", Some(token), None).await;
            let error = body["error"].as_str().unwrap_or("").to_string();
            *answers.entry(("open", code, error)).or_default() += 1;
            opened += u32::from(code == 201);
        }
    }
    println!("hostile: {opened} sessions opened; answers {answers:?}");

    // The next honest user (another address) is served.
    let token = honest.token("honest").await;
    let (code, body) = honest.call("POST", "/sessions", Some(&token), None).await;
    assert_eq!(code, 201, "the honest user gets a session: {body}");
    // The hostile address was held back by the server's limits, each
    // refusal a clear one (429 rate_limited or too_many_sessions).
    assert!(opened < 100, "{answers:?}");
    for (_, code, error) in answers.keys() {
        assert!(
            *code == 201
                || (*code == 429
                    && ["rate_limited", "too_many_sessions"].contains(&error.as_str())),
            "{answers:?}"
        );
    }
    let status = honest.status().await;
    assert_eq!(
        status["sessions"]["live"].as_u64().unwrap(),
        u64::from(opened) + 1,
        "{status}"
    );

    let (code, _) = honest
        .call(
            "DELETE",
            &format!("/sessions/{}", body["id"].as_str().unwrap()),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(code, 200);
    let report = server.shutdown().await;
    assert_eq!(report.leaked_buffers, 0, "{report:?}");
    assert_eq!(
        report.runtime.gpu_after.expect("wgpu counters"),
        report.gpu_baseline,
        "{report:?}"
    );
}
