//! Helpers for loading a plugin with specific grants, and the grant tests
//! that are not about one example plugin: no grants at all, env, events.

use capsule_host::{CallFailure, Grants, Host, PluginError, PluginSpec, Request, Response};
use capsule_tests::{plugin_path, plugins::HELLO};
use serde_json::{Value, json};

use crate::host;

/// A host with `plugin` loaded under `grants`.
pub async fn host_with(plugin: &str, grants: Grants) -> Host {
    let host = host();
    host.load(PluginSpec::from_path(plugin_path(plugin)).grants(grants))
        .await
        .unwrap();
    host
}

/// Calls `op` with a JSON input and returns the JSON output.
pub async fn call_json(host: &Host, plugin: &str, op: &str, input: Value) -> Value {
    let outcome = host
        .call(plugin, Request::new(op, input.to_string()))
        .await
        .unwrap_or_else(|err| panic!("{plugin} {op}: {err}"));
    json_of(&outcome.response)
}

/// The plugin error a call failed with (panics on any other outcome).
pub async fn plugin_error(host: &Host, plugin: &str, op: &str, input: Value) -> PluginError {
    match host.call(plugin, Request::new(op, input.to_string())).await {
        Err(err) => match err.cause {
            CallFailure::Plugin(plugin_error) => plugin_error,
            other => panic!("{plugin} {op}: expected a plugin error, got {other:?}"),
        },
        Ok(outcome) => panic!(
            "{plugin} {op}: expected a plugin error, got {}",
            String::from_utf8_lossy(&outcome.response.payload)
        ),
    }
}

/// The response payload as JSON.
pub fn json_of(response: &Response) -> Value {
    serde_json::from_slice(&response.payload).expect("the response is JSON")
}

#[tokio::test]
async fn a_plugin_with_no_grants_at_all_still_computes() {
    let mut grants = Grants::default();
    grants.log.enabled = false;
    let host = host_with(HELLO, grants).await;
    let out = call_json(&host, HELLO, "greet", json!({"name": "Ada"})).await;
    assert_eq!(out, json!({"greeting": "Hello, Ada!"}));
    let outcome = host
        .call(HELLO, Request::new("greet", r#"{"name":"Ada"}"#))
        .await
        .unwrap();
    assert!(outcome.logs.is_empty(), "logging was not granted");
}

#[tokio::test]
async fn env_holds_exactly_the_granted_variables() {
    let mut grants = Grants::default();
    grants.env.insert("LANG".into(), "fr_FR".into());
    let host = host_with(HELLO, grants).await;
    let out = call_json(&host, HELLO, "env", json!({})).await;
    assert_eq!(out, json!({"vars": {"LANG": "fr_FR"}}));

    // Nothing of the host's own environment leaks without a grant.
    let host = host_with(HELLO, Grants::default()).await;
    let out = call_json(&host, HELLO, "env", json!({})).await;
    assert_eq!(out, json!({"vars": {}}));
}

#[tokio::test]
async fn events_publish_only_to_granted_topics() {
    let mut grants = Grants::default();
    grants.events.publish =
        vec![capsule_host::services::events::TopicPattern::parse("greetings.*").unwrap()];
    let host = host_with(HELLO, grants).await;
    let outcome = host
        .call(
            HELLO,
            Request::new("announce", r#"{"topic":"greetings.fr","name":"Ada"}"#),
        )
        .await
        .unwrap();
    assert_eq!(outcome.events.len(), 1);
    assert_eq!(outcome.events[0].topic, "greetings.fr");
    assert_eq!(
        serde_json::from_slice::<Value>(&outcome.events[0].payload).unwrap(),
        json!({"greeting": "Hello, Ada!"})
    );

    let denied = plugin_error(
        &host,
        HELLO,
        "announce",
        json!({"topic": "admin.shutdown", "name": "Ada"}),
    )
    .await;
    assert!(
        matches!(&denied, PluginError::Denied(msg) if msg.contains("admin.shutdown")),
        "{denied:?}"
    );

    // Without an events grant, every topic is denied.
    let host = host_with(HELLO, Grants::default()).await;
    let denied = plugin_error(
        &host,
        HELLO,
        "announce",
        json!({"topic": "greetings.fr", "name": "Ada"}),
    )
    .await;
    assert!(matches!(denied, PluginError::Denied(_)));
}
