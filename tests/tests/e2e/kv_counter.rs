//! `kv-counter`: a persistent, namespaced, quota-bound key-value store that
//! never loses a concurrent increment, and is denied without a grant.

use std::time::Duration;

use capsule_host::services::calls::CallTarget;
use capsule_host::services::events::{EventsGrant, TopicPattern};
use capsule_host::services::kv::KvGrant;
use capsule_host::{Grants, Host, Limits, PluginError, PluginSpec, Request};
use capsule_tests::plugins::KV_COUNTER;
use capsule_tests::{host_builder, plugin_path, temp_dir};
use serde_json::json;

use crate::grants::{call_json, host_with, plugin_error};

fn kv(namespace: &str) -> Grants {
    Grants {
        kv: Some(KvGrant::new(namespace)),
        ..Grants::default()
    }
}

#[tokio::test]
async fn counts_persist_across_host_restarts() {
    let data = temp_dir("kv-persist");
    for expected in 1..=3 {
        let host = host_builder().data_dir(&data).build().unwrap();
        host.load(PluginSpec::from_path(plugin_path(KV_COUNTER)).grants(kv("counter")))
            .await
            .unwrap();
        let out = call_json(&host, KV_COUNTER, "increment", json!({"key": "visits"})).await;
        assert_eq!(out, json!({"key": "visits", "count": expected}));
    }
    std::fs::remove_dir_all(data).ok();
}

/// The services a call used, with how many calls each.
fn services_called(outcome: &capsule_host::CallOutcome) -> Vec<(&'static str, u32)> {
    outcome
        .stats
        .host_calls
        .iter()
        .map(|used| (used.service, used.calls))
        .collect()
}

#[tokio::test]
async fn a_call_reports_its_calls_into_each_host_service() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(KV_COUNTER)).grants(kv("counter")))
        .await
        .unwrap();
    let request = Request::new("increment", json!({"key": "k"}).to_string());
    let outcome = host.call(KV_COUNTER, request).await.unwrap();
    // `increment`: two log lines and one kv increment, in that order first.
    assert_eq!(services_called(&outcome), [("log", 2), ("kv", 1)]);
    let in_services: Duration = outcome.stats.host_calls.iter().map(|s| s.time).sum();
    assert!(in_services <= outcome.stats.duration);
    // Each call counts afresh on the warm instance.
    let request = Request::new("get", json!({"key": "k"}).to_string());
    let outcome = host.call(KV_COUNTER, request).await.unwrap();
    assert_eq!(services_called(&outcome), [("log", 1), ("kv", 2)]);
    assert!(!outcome.stats.fresh_instance);
}

#[tokio::test]
async fn namespaces_do_not_see_each_other() {
    let host = crate::host();
    for (name, namespace) in [("left", "ns-left"), ("right", "ns-right")] {
        host.load(
            PluginSpec::from_path(plugin_path(KV_COUNTER))
                .with_name(name)
                .grants(kv(namespace)),
        )
        .await
        .unwrap();
    }
    for _ in 0..3 {
        call_json(&host, "left", "increment", json!({"key": "k"})).await;
    }
    let right = call_json(&host, "right", "get", json!({"key": "k"})).await;
    assert_eq!(right, json!({"key": "k", "count": 0}));
    let left = call_json(&host, "left", "get", json!({"key": "k"})).await;
    assert_eq!(left, json!({"key": "k", "count": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_are_never_lost() {
    let data = temp_dir("kv-concurrent");
    let host = host_builder().data_dir(&data).build().unwrap();
    host.load(PluginSpec::from_path(plugin_path(KV_COUNTER)).grants(kv("counter")))
        .await
        .unwrap();
    let calls: Vec<_> = (0..40)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move {
                call_json(&host, KV_COUNTER, "increment", json!({"key": "hits"})).await
            })
        })
        .collect();
    let mut seen = Vec::new();
    for call in calls {
        seen.push(call.await.unwrap()["count"].as_i64().unwrap());
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=40).collect::<Vec<_>>(),
        "every increment saw a distinct count"
    );
    let out = call_json(&host, KV_COUNTER, "get", json!({"key": "hits"})).await;
    assert_eq!(out["count"], 40);
    std::fs::remove_dir_all(data).ok();
}

#[tokio::test]
async fn without_a_grant_every_call_is_denied() {
    let host = host_with(KV_COUNTER, Grants::default()).await;
    let err = plugin_error(&host, KV_COUNTER, "increment", json!({"key": "k"})).await;
    assert!(
        matches!(&err, PluginError::Denied(msg) if msg.contains("key-value")),
        "{err:?}"
    );
}

#[tokio::test]
async fn quotas_are_enforced() {
    let grants = Grants {
        kv: Some(KvGrant {
            max_keys: 2,
            max_key_bytes: 8,
            ..KvGrant::new("tiny")
        }),
        ..Grants::default()
    };
    let host = host_with(KV_COUNTER, grants).await;
    call_json(&host, KV_COUNTER, "increment", json!({"key": "a"})).await;
    call_json(&host, KV_COUNTER, "increment", json!({"key": "b"})).await;
    // A third key breaks `max_keys` when the call commits: the call fails
    // as `quota_exceeded` and keeps nothing.
    let full = host
        .call(KV_COUNTER, Request::new("increment", r#"{"key":"c"}"#))
        .await
        .unwrap_err();
    assert_eq!(full.kind().as_str(), "quota_exceeded", "{full}");
    assert!(full.to_string().contains("is full (2 keys)"), "{full}");
    let c = call_json(&host, KV_COUNTER, "get", json!({"key": "c"})).await;
    assert_eq!(c["count"], 0);
    let long = plugin_error(&host, KV_COUNTER, "increment", json!({"key": "a-long-key"})).await;
    assert!(
        matches!(&long, PluginError::Failed(msg) if msg.contains("quota")),
        "{long:?}"
    );
    // Existing keys keep counting.
    let out = call_json(&host, KV_COUNTER, "increment", json!({"key": "a"})).await;
    assert_eq!(out["count"], 2);
}

/// A kv namespace and the right to publish `counter.*`.
fn kv_and_events(namespace: &str) -> Grants {
    Grants {
        events: EventsGrant {
            publish: vec![TopicPattern::parse("counter.*").unwrap()],
            subscribe: vec![],
            ..EventsGrant::default()
        },
        ..kv(namespace)
    }
}

async fn counts(host: &Host, plugin: &str, keys: &[&str]) -> Vec<i64> {
    let mut counts = Vec::new();
    for key in keys {
        let out = call_json(host, plugin, "get", json!({"key": key})).await;
        counts.push(out["count"].as_i64().unwrap());
    }
    counts
}

#[tokio::test]
async fn a_call_that_fails_after_writing_keeps_no_write_and_no_event() {
    let fuel = Limits {
        fuel: Some(50_000_000),
        ..Limits::default()
    };
    let clock = Limits {
        fuel: None,
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    for (then, limits, kind) in [
        ("error", Limits::default(), "plugin_error"),
        ("panic", Limits::default(), "trap"),
        ("spin", fuel, "out_of_fuel"),
        ("spin", clock, "timeout"),
    ] {
        let host = crate::host();
        host.load(
            PluginSpec::from_path(plugin_path(KV_COUNTER))
                .grants(kv_and_events("tx"))
                .limits(limits),
        )
        .await
        .unwrap();
        let mut events = host.subscribe("counter.>").unwrap();
        let input = json!({"keys": ["a", "b", "c"], "publish": true, "then": then});
        let err = host
            .call(KV_COUNTER, Request::new("increment-all", input.to_string()))
            .await
            .unwrap_err();
        assert_eq!(err.kind().as_str(), kind, "{then}: {err}");
        assert_eq!(
            counts(&host, KV_COUNTER, &["a", "b", "c"]).await,
            [0, 0, 0],
            "{then}"
        );
        assert!(
            events.try_recv().is_none(),
            "{then}: no event was published"
        );
        // The same call ending well keeps every write and every event.
        let input = json!({"keys": ["a", "b", "c"], "publish": true});
        let outcome = host
            .call(KV_COUNTER, Request::new("increment-all", input.to_string()))
            .await
            .unwrap();
        assert_eq!(outcome.events.len(), 3);
        assert_eq!(counts(&host, KV_COUNTER, &["a", "b", "c"]).await, [1, 1, 1]);
        for key in ["a", "b", "c"] {
            let event = events.try_recv().expect("the committed call's event");
            assert_eq!(event.topic, "counter.bumped");
            assert_eq!(event.source, KV_COUNTER);
            let payload: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
            assert_eq!(payload, json!({"key": key, "count": 1}));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_tasks_of_a_hundred_increments_count_exactly_1600() {
    let host = crate::host();
    host.load(
        PluginSpec::from_path(plugin_path(KV_COUNTER))
            .grants(kv("contended"))
            .limits(Limits {
                max_instances: 16,
                ..Limits::default()
            }),
    )
    .await
    .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    call_json(&host, KV_COUNTER, "increment", json!({"key": "n"})).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(counts(&host, KV_COUNTER, &["n"]).await, [1600]);
}

#[tokio::test]
async fn a_callees_writes_join_its_callers_transaction() {
    let host = crate::host();
    let front = Grants {
        calls: vec![CallTarget::parse("back").unwrap()],
        ..kv_and_events("front")
    };
    for (name, grants) in [("front", front), ("back", kv_and_events("back"))] {
        host.load(
            PluginSpec::from_path(plugin_path(KV_COUNTER))
                .with_name(name)
                .grants(grants),
        )
        .await
        .unwrap();
    }
    let mut events = host.subscribe("counter.>").unwrap();
    // The callee succeeds, then its caller fails: neither keeps anything.
    let input = json!({"keys": ["k"], "publish": true, "via": "back", "then": "error"});
    let err = host
        .call("front", Request::new("increment-all", input.to_string()))
        .await
        .unwrap_err();
    assert_eq!(err.kind().as_str(), "plugin_error", "{err}");
    assert_eq!(counts(&host, "back", &["k"]).await, [0]);
    assert_eq!(counts(&host, "front", &["k"]).await, [0]);
    assert!(events.try_recv().is_none());
    // Both succeed: both commit together, and both events are published,
    // each as its own plugin's.
    let input = json!({"keys": ["k"], "publish": true, "via": "back"});
    call_json(&host, "front", "increment-all", input).await;
    assert_eq!(counts(&host, "back", &["k"]).await, [1]);
    assert_eq!(counts(&host, "front", &["k"]).await, [1]);
    let sources: Vec<String> = std::iter::from_fn(|| events.try_recv())
        .map(|event| event.source)
        .collect();
    // The callee published first.
    assert_eq!(sources, ["back", "front"]);
}

#[tokio::test]
async fn a_write_through_grant_keeps_what_was_written_before_a_failure() {
    let grants = Grants {
        kv: Some(KvGrant {
            atomic: false,
            ..KvGrant::new("direct")
        }),
        ..Grants::default()
    };
    let host = host_with(KV_COUNTER, grants).await;
    let input = json!({"keys": ["a", "b"], "then": "error"});
    host.call(KV_COUNTER, Request::new("increment-all", input.to_string()))
        .await
        .unwrap_err();
    assert_eq!(counts(&host, KV_COUNTER, &["a", "b"]).await, [1, 1]);
}

#[tokio::test]
async fn a_counter_with_a_time_to_live_expires() {
    let host = host_with(KV_COUNTER, kv("ttl")).await;
    let window = json!({"key": "window", "ttl_ms": 300});
    assert_eq!(
        call_json(&host, KV_COUNTER, "increment", window.clone()).await["count"],
        1
    );
    assert_eq!(
        call_json(&host, KV_COUNTER, "increment", window).await["count"],
        2
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(counts(&host, KV_COUNTER, &["window"]).await, [0], "expired");
    let out = call_json(&host, KV_COUNTER, "increment", json!({"key": "window"})).await;
    assert_eq!(out["count"], 1, "an expired counter starts over");
}

#[tokio::test]
async fn a_cursor_walks_ten_thousand_keys() {
    let grants = Grants {
        kv: Some(KvGrant {
            max_keys: 20_000,
            max_total_bytes: 1 << 20,
            ..KvGrant::new("many")
        }),
        ..Grants::default()
    };
    let host = host_with(KV_COUNTER, grants).await;
    for part in ["a", "b", "c", "d", "e"] {
        let out = call_json(
            &host,
            KV_COUNTER,
            "fill",
            json!({"prefix": format!("k{part}"), "count": 2000}),
        )
        .await;
        assert_eq!(out["count"], 2000);
    }
    let out = call_json(&host, KV_COUNTER, "count-keys", json!({"prefix": "k"})).await;
    assert_eq!(out["count"], 10_000);
    let out = call_json(&host, KV_COUNTER, "count-keys", json!({"prefix": "kc"})).await;
    assert_eq!(out["count"], 2000);
    // One call touches at most `max_call_keys` (4096) keys.
    let err = host
        .call(
            KV_COUNTER,
            Request::new("fill", json!({"prefix": "z", "count": 5000}).to_string()),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_call_keys"), "{err}");
}
