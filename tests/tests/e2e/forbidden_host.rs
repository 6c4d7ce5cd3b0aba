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
