//! `kv-counter`: a persistent, namespaced, quota-bound key-value store that
//! never loses a concurrent increment, and is denied without a grant.

use capsule_host::services::kv::KvGrant;
use capsule_host::{Grants, PluginError, PluginSpec};
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
    let full = plugin_error(&host, KV_COUNTER, "increment", json!({"key": "c"})).await;
    assert!(
        matches!(&full, PluginError::Failed(msg) if msg.contains("quota")),
        "{full:?}"
    );
    let long = plugin_error(&host, KV_COUNTER, "increment", json!({"key": "a-long-key"})).await;
    assert!(
        matches!(&long, PluginError::Failed(msg) if msg.contains("quota")),
        "{long:?}"
    );
    // Existing keys keep counting.
    let out = call_json(&host, KV_COUNTER, "increment", json!({"key": "a"})).await;
    assert_eq!(out["count"], 2);
}
