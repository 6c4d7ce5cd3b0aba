//! `wasi-standard`: a component written against the standard WASI
//! proposals (`wasi:keyvalue`, `wasi:config`, `wasi:logging`) with plain
//! wit-bindgen, no Capsule SDK, runs under Capsule's own grants: the same
//! namespace, quotas, transactions, denials and budgets as `capsule:plugin`.

use capsule_host::check::{ImportCheck, ImportStatus, imports_and_grants};
use capsule_host::services::kv::KvGrant;
use capsule_host::{
    CallFailure, Grants, Host, LogLevel, LogSource, PluginError, PluginSpec, Request,
};
use capsule_tests::plugins::WASI_STANDARD;
use capsule_tests::{host_builder, plugin_path, temp_dir};
use serde_json::{Value, json};

use crate::grants::{call_json, plugin_error};

fn with_kv(namespace: &str, max_keys: u64) -> Grants {
    Grants {
        kv: Some(KvGrant {
            max_keys,
            ..KvGrant::new(namespace)
        }),
        ..Grants::default()
    }
}

async fn host_with(test: &str, grants: Grants) -> Host {
    let data = temp_dir(test);
    let host = host_builder().data_dir(&data).build().unwrap();
    host.load(
        PluginSpec::from_path(plugin_path(WASI_STANDARD))
            .grants(grants)
            .config("bucket", "shelf")
            .config("greeting", "Hej"),
    )
    .await
    .unwrap();
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_and_logging_answer_from_the_plugins_grants() {
    let host = host_with("wasi-standard-config", Grants::default()).await;
    let outcome = host
        .call(WASI_STANDARD, Request::new("greet", r#"{"name":"Ada"}"#))
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&outcome.response.payload).unwrap();
    assert_eq!(answer, json!({"greeting": "Hej, Ada!"}));
    let line = outcome
        .logs
        .iter()
        .find(|record| record.source == LogSource::Log)
        .expect("a wasi:logging line in the call's log");
    assert_eq!(line.message, "greet: greeting Ada");
    assert_eq!(line.level, LogLevel::Info);

    // `capsule check`'s table maps the standard imports to their grants.
    let summary = capsule_host::artifact::inspect::inspect(
        &std::fs::read(plugin_path(WASI_STANDARD)).unwrap(),
    )
    .unwrap();
    let (imports, _) = imports_and_grants(&summary, &with_kv("shelf", 100));
    let (bare, _) = imports_and_grants(&summary, &Grants::default());
    for (import, granted, without) in [
        (
            "wasi:keyvalue/store@0.2.0-draft2",
            ImportStatus::Granted("kv"),
            ImportStatus::NotGranted("kv"),
        ),
        (
            "wasi:keyvalue/atomics@0.2.0-draft2",
            ImportStatus::Granted("kv"),
            ImportStatus::NotGranted("kv"),
        ),
        (
            "wasi:keyvalue/batch@0.2.0-draft2",
            ImportStatus::Granted("kv"),
            ImportStatus::NotGranted("kv"),
        ),
        (
            "wasi:config/store@0.2.0-draft",
            ImportStatus::Provided,
            ImportStatus::Provided,
        ),
        (
            "wasi:logging/logging@0.1.0-draft",
            ImportStatus::Granted("log"),
            ImportStatus::Granted("log"),
        ),
    ] {
        let status = |checks: &[ImportCheck]| {
            checks
                .iter()
                .find(|check| check.import == import)
                .map(|check| check.status.clone())
        };
        assert_eq!(status(&imports), Some(granted), "{import}: {imports:?}");
        assert_eq!(status(&bare), Some(without), "{import}: {bare:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyvalue_is_the_granted_namespace_with_its_quotas_and_transactions() {
    let host = host_with("wasi-standard-kv", with_kv("shelf", 4)).await;
    for expected in 1..=3 {
        assert_eq!(
            call_json(&host, WASI_STANDARD, "count", json!({})).await,
            json!({"hits": expected})
        );
    }
    // Compare-and-swap appends (the conflict path has a unit test of its own:
    // services/kv/standard.rs).
    call_json(
        &host,
        WASI_STANDARD,
        "append",
        json!({"key": "log", "text": "a"}),
    )
    .await;
    assert_eq!(
        call_json(
            &host,
            WASI_STANDARD,
            "append",
            json!({"key": "log", "text": "b"})
        )
        .await,
        json!({"value": "ab"})
    );
    // Batches: set-many, get-many (a missing key is none), delete-many,
    // then list-keys page by page sees what the call left.
    let batch = call_json(&host, WASI_STANDARD, "batch", json!({})).await;
    assert_eq!(
        batch["found"],
        json!({"a": "value of a", "b": "value of b", "c": "value of c"})
    );
    assert_eq!(batch["missing"], 1);
    assert_eq!(batch["a_exists_after_delete"], false);
    // The namespace's quota holds: hits, log, b, c = 4 keys.
    assert_eq!(batch["keys"], json!(["b", "c", "hits", "log"]));

    // A failed call's writes are discarded, as for capsule:plugin/kv.
    let failed = plugin_error(&host, WASI_STANDARD, "write-then-fail", json!({})).await;
    assert!(matches!(failed, PluginError::Failed(_)), "{failed:?}");
    let after = call_json(&host, WASI_STANDARD, "batch", json!({})).await;
    assert!(
        !after["keys"].as_array().unwrap().contains(&json!("doomed")),
        "{after}"
    );

    // Only the granted namespace opens.
    assert_eq!(
        call_json(
            &host,
            WASI_STANDARD,
            "open",
            json!({"bucket": "someone-else"})
        )
        .await,
        json!({"open": "Error::NoSuchStore"})
    );
    // A fifth key is past the namespace's quota: the call's commit is
    // refused, as a capsule:plugin/kv call's would be.
    let full = host
        .call(
            WASI_STANDARD,
            Request::new("append", json!({"key": "fifth", "text": "x"}).to_string()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&full.cause, CallFailure::QuotaExceeded(message) if message.contains("is full")),
        "{full}"
    );

    // Buckets held open are bounded per instance.
    let hoard = call_json(&host, WASI_STANDARD, "hoard-buckets", json!({})).await;
    assert_eq!(hoard["held"], 16, "{hoard}");
    assert!(
        hoard["refusal"].as_str().unwrap().contains("16 buckets"),
        "{hoard}"
    );
    // And they were closed when the call dropped them: counting still works.
    assert_eq!(
        call_json(&host, WASI_STANDARD, "count", json!({})).await,
        json!({"hits": 4})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_kv_grant_every_bucket_is_denied() {
    let host = host_with("wasi-standard-denied", Grants::default()).await;
    match host
        .call(WASI_STANDARD, Request::new("count", "{}"))
        .await
        .unwrap_err()
        .cause
    {
        CallFailure::Plugin(PluginError::Denied(message)) => {
            assert!(message.contains("access denied"), "{message}")
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}
