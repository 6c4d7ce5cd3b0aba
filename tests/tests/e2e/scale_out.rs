//! Several hosts on one NATS (`[host.backend] kind = "nats"`): they share
//! one key-value store, exactly, and a host whose NATS goes away fails the
//! calls that need it with `unavailable` until NATS is back.

use std::time::Duration;

use capsule_host::backend::local::NatsServer;
use capsule_host::backend::{Backend, NatsOptions};
use capsule_host::services::kv::KvGrant;
use capsule_host::{CallFailure, Grants, Host, PluginSpec, Request};
use capsule_tests::plugins::KV_COUNTER;
use capsule_tests::{host_builder, plugin_path};
use serde_json::{Value, json};

use crate::grants::call_json;

async fn counter_host(url: &str, prefix: &str) -> Host {
    let backend = Backend::Nats(NatsOptions::new(url).prefix(prefix));
    let host = host_builder().backend(backend).build().unwrap();
    host.load(
        PluginSpec::from_path(plugin_path(KV_COUNTER)).grants(Grants {
            kv: Some(KvGrant::new("counter")),
            ..Grants::default()
        }),
    )
    .await
    .unwrap();
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_stays_exact_across_two_hosts() {
    let server = NatsServer::shared();
    let hosts = [
        counter_host(&server.url(), "exact").await,
        counter_host(&server.url(), "exact").await,
    ];
    let mut tasks = Vec::new();
    for host in &hosts {
        for _ in 0..8 {
            let host = host.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..100 {
                    let out =
                        call_json(&host, KV_COUNTER, "increment", json!({"key": "hits"})).await;
                    seen.push(out["count"].as_i64().unwrap());
                }
                seen
            }));
        }
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.extend(task.await.unwrap());
    }
    seen.sort_unstable();
    // Every increment committed exactly once, each saw a distinct count.
    assert_eq!(seen, (1..=1600).collect::<Vec<_>>());
    for host in &hosts {
        let out = call_json(host, KV_COUNTER, "get", json!({"key": "hits"})).await;
        assert_eq!(out["count"], 1600);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_with_different_prefixes_do_not_share() {
    let server = NatsServer::shared();
    let left = counter_host(&server.url(), "left").await;
    let right = counter_host(&server.url(), "right").await;
    call_json(&left, KV_COUNTER, "increment", json!({"key": "k"})).await;
    let out = call_json(&right, KV_COUNTER, "get", json!({"key": "k"})).await;
    assert_eq!(out["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_nats_fails_kv_calls_as_unavailable_until_it_returns() {
    // A server of this test's own: it is stopped and started again.
    let mut server = NatsServer::start().unwrap();
    let host = counter_host(&server.url(), "restart").await;
    let increment = || {
        let host = host.clone();
        async move {
            host.call(
                KV_COUNTER,
                Request::new("increment", json!({"key": "k"}).to_string()),
            )
            .await
        }
    };
    let count = |out: capsule_host::CallOutcome| -> i64 {
        let value: Value = serde_json::from_slice(&out.response.payload).unwrap();
        value["count"].as_i64().unwrap()
    };
    assert_eq!(count(increment().await.unwrap()), 1);

    server.stop();
    let err = increment().await.unwrap_err();
    assert!(matches!(&err.cause, CallFailure::Unavailable(_)), "{err:?}");

    server.restart().unwrap();
    // The client reconnects by itself; nothing acknowledged was lost.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        match increment().await {
            Ok(out) => break count(out),
            Err(err) if std::time::Instant::now() < deadline => {
                assert!(matches!(&err.cause, CallFailure::Unavailable(_)), "{err:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("NATS came back but calls still fail: {err:?}"),
        }
    };
    assert_eq!(after, 2);
}
