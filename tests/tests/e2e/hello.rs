//! The `hello` example: greeting, configuration, typed plugin errors, logs.

use capsule_host::{ErrorKind, LogSource, PluginError, PluginSpec, Request};
use capsule_tests::{plugin_path, plugins::HELLO};
use serde_json::{Value, json};

use crate::host;

fn greet(name: &str) -> Request {
    Request::new("greet", json!({ "name": name }).to_string())
}

fn json_of(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).expect("the response is JSON")
}

#[tokio::test]
async fn greets_by_name() {
    let host = host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    let outcome = host.call(HELLO, greet("Ada")).await.unwrap();
    assert_eq!(
        json_of(&outcome.response.payload),
        json!({"greeting": "Hello, Ada!"})
    );
    assert!(outcome.stats.fuel_used.unwrap() > 0, "fuel use is measured");
}

#[tokio::test]
async fn config_changes_the_greeting_word() {
    let host = host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)).config("greeting", "Bonjour"))
        .await
        .unwrap();
    let outcome = host.call(HELLO, greet("Ada")).await.unwrap();
    assert_eq!(
        json_of(&outcome.response.payload),
        json!({"greeting": "Bonjour, Ada!"})
    );
}

#[tokio::test]
async fn unknown_operation_is_the_plugins_unsupported_error() {
    let host = host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    let err = host
        .call(HELLO, Request::new("nope", "{}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PluginError);
    assert_eq!(err.plugin, HELLO);
    match &err.cause {
        capsule_host::CallFailure::Plugin(PluginError::Unsupported(msg)) => {
            assert!(msg.contains("nope"), "{msg}")
        }
        other => panic!("expected an unsupported plugin error, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_json_is_invalid_input() {
    let host = host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    let err = host
        .call(HELLO, Request::new("greet", "not json"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.cause,
            capsule_host::CallFailure::Plugin(PluginError::InvalidInput(_))
        ),
        "{err}"
    );
}

#[tokio::test]
async fn log_lines_reach_the_host() {
    let host = host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    let outcome = host.call(HELLO, greet("Ada")).await.unwrap();
    let line = outcome
        .logs
        .iter()
        .find(|record| record.source == LogSource::Log)
        .expect("hello logs each call");
    assert_eq!(line.message, "handling `greet`");
    assert_eq!(line.level, capsule_host::LogLevel::Info);
    // A failed call keeps its log too.
    let err = host
        .call(HELLO, Request::new("nope", ""))
        .await
        .unwrap_err();
    assert!(err.logs.iter().any(|r| r.message == "handling `nope`"));
}

#[tokio::test]
async fn describe_comes_from_cargo_metadata() {
    let host = host();
    let details = host
        .load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    assert_eq!(details.info.name, "hello");
    assert_eq!(details.info.version, "0.1.0");
    assert!(
        details.info.description.contains("Greets"),
        "{:?}",
        details.info
    );
    assert_eq!(
        details.contract_version.as_deref(),
        Some(capsule_host::CONTRACT_VERSION)
    );
}

#[tokio::test]
async fn unknown_plugins_and_duplicate_names_are_typed_errors() {
    let host = host();
    let err = host.call("ghost", greet("Ada")).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.plugin.as_str()),
        (ErrorKind::UnknownPlugin, "ghost")
    );

    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    let err = host
        .load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    // The first copy keeps serving.
    assert!(host.call(HELLO, greet("Ada")).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_many_concurrent_calls() {
    let host = host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let host = host.clone();
            tokio::spawn(async move { host.call(HELLO, greet(&format!("n{i}"))).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let outcome = call.await.unwrap().unwrap();
        assert_eq!(
            json_of(&outcome.response.payload),
            json!({ "greeting": format!("Hello, n{i}!") })
        );
    }
}
