//! `http-fetch`: outgoing HTTP reaches granted origins only, within the
//! request and response-size quotas. Tested against a real server on
//! 127.0.0.1.

use capsule_host::services::http::{HttpGrant, OriginPattern};
use capsule_host::{Grants, PluginError};
use capsule_tests::TestServer;
use capsule_tests::plugins::HTTP_FETCH;
use serde_json::json;

use crate::grants::{call_json, host_with, plugin_error};

fn allow(origins: &[String]) -> HttpGrant {
    HttpGrant::new(
        origins
            .iter()
            .map(|o| OriginPattern::parse(o).unwrap())
            .collect(),
    )
}

fn grants(http: HttpGrant) -> Grants {
    Grants {
        http: Some(http),
        ..Grants::default()
    }
}

fn origin(server: &TestServer) -> String {
    format!("http://127.0.0.1:{}", server.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_origin_is_reached() {
    let server = TestServer::start(b"twelve bytes".to_vec());
    let host = host_with(HTTP_FETCH, grants(allow(&[origin(&server)]))).await;
    let out = call_json(&host, HTTP_FETCH, "get", json!({"url": server.url()})).await;
    assert_eq!(out, json!({"status": 200, "bytes": 12}));
    assert_eq!(server.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_ports_and_hosts_are_denied_before_connecting() {
    let granted = TestServer::start(b"ok".to_vec());
    let other = TestServer::start(b"should never be reached".to_vec());
    let host = host_with(HTTP_FETCH, grants(allow(&[origin(&granted)]))).await;
    for url in [
        other.url(),
        format!("http://localhost:{}/", granted.port),
        "https://example.com/".to_owned(),
        format!("https://127.0.0.1:{}/", granted.port),
    ] {
        let err = plugin_error(&host, HTTP_FETCH, "get", json!({"url": url})).await;
        assert!(
            matches!(&err, PluginError::Denied(msg) if msg.contains("HttpRequestDenied")),
            "{url}: {err:?}"
        );
    }
    assert_eq!(other.hits(), 0, "a denied request never connects");
    assert_eq!(granted.hits(), 0);

    // No http grant: nothing at all.
    let host = host_with(HTTP_FETCH, Grants::default()).await;
    let err = plugin_error(&host, HTTP_FETCH, "get", json!({"url": granted.url()})).await;
    assert!(matches!(err, PluginError::Denied(_)), "{err:?}");
    assert_eq!(granted.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_and_request_counts_are_bounded() {
    let big = TestServer::start(vec![b'x'; 256 << 10]);
    let mut grant = allow(&[origin(&big)]);
    grant.max_response_bytes = 64 << 10;
    let host = host_with(HTTP_FETCH, grants(grant)).await;
    let err = plugin_error(&host, HTTP_FETCH, "get", json!({"url": big.url()})).await;
    assert!(
        matches!(&err, PluginError::Failed(msg) if msg.contains("HttpResponseBodySize")),
        "{err:?}"
    );

    let small = TestServer::start(b"ok".to_vec());
    let mut grant = allow(&[origin(&small)]);
    grant.max_requests_per_call = 0;
    let host = host_with(HTTP_FETCH, grants(grant)).await;
    let err = plugin_error(&host, HTTP_FETCH, "get", json!({"url": small.url()})).await;
    assert!(
        matches!(&err, PluginError::Failed(msg) if msg.contains("ConnectionLimitReached")),
        "{err:?}"
    );
    assert_eq!(small.hits(), 0);
}
