//! `kv-hoarder` (hostile): however it tries to make the host hold its kv
//! transaction — buffered writes, recorded reads, one huge get-many, a
//! chain of plugins each joining its buffer to its caller's — a budget
//! stops it with a typed error, and nothing it buffered is kept.

use capsule_host::services::calls::CallTarget;
use capsule_host::services::kv::KvGrant;
use capsule_host::{Grants, Host, PluginError, PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{KV_COUNTER, KV_HOARDER};
use serde_json::json;

use crate::grants::{call_json, plugin_error};

fn hoarder(namespace: &str) -> Grants {
    Grants {
        kv: Some(KvGrant::new(namespace)),
        ..Grants::default()
    }
}

async fn refusal(host: &Host, plugin: &str, op: &str) -> String {
    match plugin_error(host, plugin, op, json!(null)).await {
        PluginError::Failed(message) => message,
        other => panic!("{plugin} {op}: {other:?}"),
    }
}

#[tokio::test]
async fn one_call_buffers_and_records_only_its_budget() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(KV_HOARDER)).grants(hoarder("hoard")))
        .await
        .unwrap();
    let message = refusal(&host, KV_HOARDER, "buffer").await;
    assert!(message.contains("max_call_bytes"), "{message}");
    // 4 MiB of 60 KiB values: 68 of them fit.
    assert!(message.contains("stopped after 68"), "{message}");
    let message = refusal(&host, KV_HOARDER, "reads").await;
    assert!(message.contains("max_call_keys"), "{message}");
    host.call(KV_HOARDER, Request::new("seed", ""))
        .await
        .unwrap();
    let message = refusal(&host, KV_HOARDER, "many").await;
    assert!(
        message.contains("get-many would answer more than"),
        "{message}"
    );
    // The failed calls kept nothing: a reader of the namespace sees only
    // the seeded value.
    host.load(
        PluginSpec::from_path(plugin_path(KV_COUNTER))
            .with_name("reader")
            .grants(hoarder("hoard")),
    )
    .await
    .unwrap();
    for key in ["b0", "b67"] {
        let out = call_json(&host, "reader", "get", json!({ "key": key })).await;
        assert_eq!(out["count"], 0, "{key}");
    }
}

#[tokio::test]
async fn a_chain_of_callees_cannot_grow_one_transaction_past_the_tree_budget() {
    let host = crate::host();
    for level in 1..=5 {
        let name = format!("hoard-{level}");
        let mut grants = hoarder(&name);
        if level < 5 {
            let next = format!("hoard-{}", level + 1);
            grants.calls = vec![CallTarget::parse(&next).unwrap()];
            grants.config.insert("next", next);
        }
        host.load(
            PluginSpec::from_path(plugin_path(KV_HOARDER))
                .with_name(&name)
                .grants(grants),
        )
        .await
        .unwrap();
    }
    // Four levels of 3.75 MiB fit in 16 MiB; the fifth joining does not.
    let message = refusal(&host, "hoard-1", "nest").await;
    assert!(
        message.contains("calling hoard-2") && message.contains("quota_exceeded"),
        "{message}"
    );
    // A chain of four fits, and commits every level together.
    let outcome = host
        .call("hoard-2", Request::new("nest", ""))
        .await
        .unwrap();
    assert_eq!(outcome.response.payload, b"bottom");
    for level in [1, 2, 5] {
        let namespace = format!("hoard-{level}");
        host.load(
            PluginSpec::from_path(plugin_path(KV_COUNTER))
                .with_name(format!("reader-{level}"))
                .grants(hoarder(&namespace)),
        )
        .await
        .unwrap();
        let out = call_json(
            &host,
            &format!("reader-{level}"),
            "count-keys",
            json!({"prefix": "n"}),
        )
        .await;
        let expected = if level == 1 { 0 } else { 64 };
        assert_eq!(out["count"], expected, "{namespace}");
    }
}
