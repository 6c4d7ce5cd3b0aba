//! `ingest-store` in a transactional pipeline (`validate` → `transform` →
//! `archive` → `enrich` → `store`): the stages' writes and events commit
//! together when the last stage succeeds, or not at all.

use capsule_host::services::config::ConfigGrant;
use capsule_host::services::events::{EventsGrant, TopicPattern};
use capsule_host::services::kv::KvGrant;
use capsule_host::{ErrorKind, Grants, Host, Pipeline, PipelineError, PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{
    INGEST_ENRICH, INGEST_STORE, INGEST_TRANSFORM, INGEST_VALIDATE, KV_COUNTER,
};
use serde_json::json;

use crate::grants::call_json;

/// The stages, each store under its own prefix in the shared `ingest`
/// namespace; `store` refuses amounts over 100000 cents. A `kv-counter`
/// reads the counts.
async fn host(transaction: bool) -> Host {
    let host = crate::host();
    let store_grants = |prefix: &str, max: Option<&str>| {
        // Strings, as `--set` gives them: the plugin's config schema
        // coerces `max_cents` to the integer it declares.
        let mut config = ConfigGrant::default();
        config.insert("prefix", prefix);
        if let Some(max) = max {
            config.insert("max_cents", max);
        }
        Grants {
            kv: Some(KvGrant::new("ingest")),
            events: EventsGrant {
                publish: vec![TopicPattern::parse("ingest.*").unwrap()],
                subscribe: vec![],
                ..EventsGrant::default()
            },
            config,
            ..Grants::default()
        }
    };
    let stages = [
        ("validate", INGEST_VALIDATE, Grants::default()),
        ("transform", INGEST_TRANSFORM, Grants::default()),
        ("archive", INGEST_STORE, store_grants("raw", None)),
        ("enrich", INGEST_ENRICH, Grants::default()),
        ("store", INGEST_STORE, store_grants("final", Some("100000"))),
        (
            "reader",
            KV_COUNTER,
            Grants {
                kv: Some(KvGrant::new("ingest")),
                ..Grants::default()
            },
        ),
    ];
    for (name, plugin, grants) in stages {
        host.load(
            PluginSpec::from_path(plugin_path(plugin))
                .with_name(name)
                .grants(grants),
        )
        .await
        .unwrap();
    }
    host.add_pipeline(Pipeline {
        name: "ingest-tx".into(),
        stages: ["validate", "transform", "archive", "enrich", "store"]
            .map(String::from)
            .to_vec(),
        transaction,
    });
    host
}

async fn stored(host: &Host) -> (i64, i64) {
    let count = |key: &str| {
        let key = key.to_owned();
        async move { call_json(host, "reader", "get", json!({ "key": key })).await["count"].as_i64() }
    };
    (
        count("raw:count").await.unwrap(),
        count("final:count").await.unwrap(),
    )
}

fn record(amount: f64) -> Request {
    let record = json!({"id": "7", "name": "ada", "email": "ada@example.com", "amount": amount});
    Request::new("process", record.to_string())
}

#[tokio::test]
async fn every_stage_commits_together_at_the_end() {
    let host = host(true).await;
    let mut events = host.subscribe("ingest.>").unwrap();
    let outcome = host.call_pipeline("ingest-tx", record(12.5)).await.unwrap();
    assert_eq!(outcome.events.len(), 2, "both stores' events");
    assert_eq!(stored(&host).await, (1, 1));
    let sources: Vec<String> = std::iter::from_fn(|| events.try_recv())
        .map(|event| event.source)
        .collect();
    assert_eq!(sources, ["archive", "store"]);
}

#[tokio::test]
async fn a_pipeline_whose_last_stage_fails_leaves_nothing() {
    let host = host(true).await;
    let mut events = host.subscribe("ingest.>").unwrap();
    let err = host
        .call_pipeline("ingest-tx", record(5000.0))
        .await
        .unwrap_err();
    let PipelineError::Stage { stage, error, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!((*stage, error.plugin.as_str()), (4, "store"));
    assert_eq!(err.kind(), ErrorKind::PluginError);
    assert_eq!(
        stored(&host).await,
        (0, 0),
        "the archive's write was discarded"
    );
    assert!(events.try_recv().is_none(), "and its event");
}

#[tokio::test]
async fn without_a_transaction_earlier_stages_keep_their_writes() {
    let host = host(false).await;
    let mut events = host.subscribe("ingest.>").unwrap();
    host.call_pipeline("ingest-tx", record(5000.0))
        .await
        .unwrap_err();
    assert_eq!(stored(&host).await, (1, 0));
    assert_eq!(
        events.try_recv().map(|e| e.source).as_deref(),
        Some("archive")
    );
}

#[tokio::test]
async fn a_config_the_plugins_schema_refuses_is_refused_at_load_naming_the_line() {
    let path = plugin_path(INGEST_STORE);
    let text = format!(
        "[host]\nallow_unsigned = true\n\n[plugins.store]\npath = \"{}\"\n\
         config = {{ prefix = \"p\", max_cents = -5, colour = \"red\" }}\n",
        path.display()
    );
    let policy = capsule_host::Policy::parse(
        &text,
        std::path::Path::new("capsule.toml"),
        std::path::Path::new("."),
    )
    .unwrap();
    let host = crate::host();
    let err = host
        .load(capsule_host::PluginSpec::from_policy(&policy, "store").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let message = err.to_string();
    assert!(
        message.contains("capsule.toml:6:") && message.contains("plugins.store.config.max_cents"),
        "{message}"
    );
    assert!(message.contains("plugins.store.config.colour"), "{message}");
    // Defaults fill what the operator left out, and `--set`'s strings are
    // coerced: the plugin sees `{"prefix": "record", "max_cents": 10}`.
    let mut config = ConfigGrant::default();
    config.insert("max_cents", "10");
    let details = host
        .load(
            PluginSpec::from_path(path)
                .with_name("typed")
                .grants(Grants {
                    config,
                    kv: Some(KvGrant::new("typed")),
                    events: EventsGrant {
                        publish: vec![TopicPattern::parse("ingest.*").unwrap()],
                        subscribe: vec![],
                        ..EventsGrant::default()
                    },
                    ..Grants::default()
                }),
        )
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&details.grants.config.values).unwrap(),
        json!({"prefix": "record", "max_cents": 10})
    );
    let big = json!({"id": "1", "amount_cents": 11});
    let err = host
        .call("typed", Request::new("x", big.to_string()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("over the limit of 10"), "{err}");
}
