//! `forbidden-host` requests hosts it was not granted and tries raw sockets:
//! every attempt is refused and no connection reaches the server.

use capsule_host::Grants;
use capsule_host::services::http::{HttpGrant, OriginPattern};
use capsule_tests::TestServer;
use capsule_tests::plugins::FORBIDDEN_HOST;
use serde_json::{Value, json};

use crate::grants::{call_json, host_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_reached() {
    let granted = TestServer::start(b"granted".to_vec());
    let target = TestServer::start(b"forbidden".to_vec());
    let grants = Grants {
        http: Some(HttpGrant::new(vec![
            OriginPattern::parse(&format!("http://127.0.0.1:{}", granted.port)).unwrap(),
        ])),
        ..Grants::default()
    };
    let host = host_with(FORBIDDEN_HOST, grants).await;
    let report = call_json(
        &host,
        FORBIDDEN_HOST,
        "run",
        json!({
            "urls": [target.url(), "https://example.com/"],
            "socket_port": target.port,
        }),
    )
    .await;
    for attempt in report["http"].as_array().unwrap() {
        assert_eq!(attempt["ok"], false, "{attempt}");
        assert_eq!(attempt["denied"], true, "{attempt}");
    }
    let sockets = report["sockets"].as_array().unwrap();
    assert!(!sockets.is_empty(), "{report}");
    for step in sockets {
        assert_eq!(step["ok"], Value::Bool(false), "{step}");
    }
    assert_eq!(report["reached_anything"], false);
    assert_eq!(target.hits(), 0, "no request or socket reached the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_refusals_are_counted_in_the_audit_log_not_written_one_by_one() {
    let target = TestServer::start(b"forbidden".to_vec());
    let host = host_with(FORBIDDEN_HOST, Grants::default()).await;
    // 20 calls × 50 URLs: 1,000 refused requests.
    let urls: Vec<String> = (0..50).map(|i| format!("{}{i}", target.url())).collect();
    for _ in 0..20 {
        let report = call_json(&host, FORBIDDEN_HOST, "run", json!({ "urls": urls })).await;
        assert_eq!(report["reached_anything"], false);
    }
    host.audit().flush();
    let records = host.audit().recent(1000);
    let http: Vec<_> = records
        .iter()
        .filter(|r| r.who == "plugin:forbidden-host" && r.action == "http")
        .collect();
    assert_eq!(http.len(), 1, "{records:?}");
    assert_eq!(http[0].count, Some(1000));
    assert_eq!(http[0].kind, "denied");
    assert!(
        http[0].example.as_deref().unwrap().contains("127.0.0.1"),
        "{:?}",
        http[0]
    );
    assert!(
        records.len() <= 3,
        "one line per service refused: {records:?}"
    );
    assert_eq!(target.hits(), 0);
}
