//! The `ingest` pipeline (`ingest-validate` → `ingest-transform` →
//! `ingest-enrich`): each stage's response is the next stage's request, and a
//! failing stage stops the pipeline and is named.

use capsule_host::{ErrorKind, Host, PipelineError, PluginError, PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{HELLO, INGEST_ENRICH, INGEST_TRANSFORM, INGEST_VALIDATE};
use serde_json::{Value, json};

use crate::grants::json_of;

pub async fn ingest_host() -> Host {
    let host = crate::host();
    for (name, plugin) in [
        ("validate", INGEST_VALIDATE),
        ("transform", INGEST_TRANSFORM),
        ("enrich", INGEST_ENRICH),
    ] {
        host.load(PluginSpec::from_path(plugin_path(plugin)).with_name(name))
            .await
            .unwrap();
    }
    host.define_pipeline(
        "ingest",
        vec!["validate".into(), "transform".into(), "enrich".into()],
    );
    host
}

fn record() -> Value {
    json!({"id": " 7 ", "name": "ada lovelace", "email": "Ada@Example.COM", "amount": 1234.5})
}

#[tokio::test]
async fn a_record_flows_through_every_stage() {
    let host = ingest_host().await;
    let outcome = host
        .call_pipeline("ingest", Request::new("process", record().to_string()))
        .await
        .unwrap();
    assert_eq!(
        json_of(&outcome.response),
        json!({
            "id": "7", "name": "Ada Lovelace", "email": "ada@example.com",
            "amount_cents": 123450, "validated": true, "tier": "gold",
            "domain": "example.com", "source": "capsule"
        })
    );
    assert!(
        outcome.stats.fuel_used.unwrap() > 0,
        "fuel adds up over the stages"
    );
}

#[tokio::test]
async fn an_invalid_record_stops_at_the_first_stage_and_names_it() {
    let host = ingest_host().await;
    let bad = json!({"id": "8", "name": "", "email": "nobody", "amount": -1});
    let err = host
        .call_pipeline("ingest", Request::new("process", bad.to_string()))
        .await
        .unwrap_err();
    match &err {
        PipelineError::Stage {
            stage,
            stages,
            error,
            ..
        } => {
            assert_eq!((*stage, *stages), (0, 3));
            assert_eq!(error.plugin, "validate");
            assert!(
                matches!(&error.cause, capsule_host::CallFailure::Plugin(PluginError::InvalidInput(msg)) if msg.contains("email")),
                "{err}"
            );
        }
        other => panic!("expected a stage failure, got {other}"),
    }
    assert!(
        err.to_string().contains("stage 1 of 3 (`validate`)"),
        "{err}"
    );
}

#[tokio::test]
async fn a_failing_middle_stage_stops_the_pipeline() {
    let host = ingest_host().await;
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    host.define_pipeline(
        "broken",
        vec!["validate".into(), HELLO.into(), "enrich".into()],
    );
    let err = host
        .call_pipeline("broken", Request::new("process", record().to_string()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PluginError);
    assert!(err.to_string().contains("stage 2 of 3 (`hello`)"), "{err}");

    let err = host
        .call_pipeline("missing", Request::new("process", "{}"))
        .await
        .unwrap_err();
    assert!(matches!(err, PipelineError::Unknown(_)));
}

#[tokio::test]
async fn validate_alone_lists_every_problem() {
    let host = ingest_host().await;
    let err = host
        .call(
            "validate",
            Request::new("any-operation", json!({"id": 1}).to_string()),
        )
        .await
        .unwrap_err();
    let message = err.to_string();
    for field in ["id", "name", "email", "amount"] {
        assert!(message.contains(field), "{field}: {message}");
    }
}
