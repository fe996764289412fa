//! Issue 15, defect 1: "chat_server can be filled by anyone". One client
//! address mints many names and opens sessions under each; an honest user
//! from another address must still get a session. Driven by real HTTP
//! clients bound to two loopback addresses (127.0.0.2 is the hostile one).

mod chat_client;

use chat_client::*;

#[actix_web::test]
async fn minted_names_from_one_address_cannot_fill_the_server() {
    let mut config = sessionbus::Config::default();
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
    let (mut opened, mut refused) = (0, 0);
    for name in 0..20 {
        let (code, body) = hostile
            .call(
                "POST",
                "/tokens",
                None,
                Some(serde_json::json!({"user": format!("mint-{name}")})),
            )
            .await;
        if code != 201 {
            refused += 1;
            continue;
        }
        let token = body["token"].as_str().unwrap().to_string();
        for _ in 0..10 {
            let (code, _) = hostile.call("POST", "/sessions", Some(&token), None).await;
            if code == 201 {
                opened += 1;
            } else {
                refused += 1;
            }
        }
    }
    println!("hostile: {opened} sessions opened, {refused} requests refused");

    // The next honest user is served.
    let token = honest.token("honest").await;
    let (code, body) = honest.call("POST", "/sessions", Some(&token), None).await;
    assert_eq!(code, 201, "the honest user gets a session: {body}");
    assert!(refused > 0, "the hostile address was refused at some point");

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
    assert_eq!(report.runtime.gpu_after, report.gpu_baseline, "{report:?}");
}
