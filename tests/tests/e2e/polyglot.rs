//! What every language's examples must show, shared by the Python and
//! JavaScript ones (`hello_py`, `hello_js`, `runaway_py`, `runaway_js`): the
//! contract is language-neutral only if a plugin in another language gets
//! the same grants, denials, manifest and typed failures as a Rust one.
//!
//! Their components are large (a language runtime each), so the tests of one
//! binary share a compile cache: each is compiled once per run.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use capsule_host::artifact::manifest;
use capsule_host::services::events::{EventsGrant, TopicPattern};
use capsule_host::services::kv::KvGrant;
use capsule_host::services::metrics::MetricsGrant;
use capsule_host::{
    CallFailure, ErrorKind, Grants, Host, Limits, LogSource, PluginError, PluginSpec, Request,
};
use capsule_tests::{host_builder, plugin_bytes, plugin_path};
use serde_json::{Value, json};

use crate::grants::{call_json, plugin_error};
use crate::sandbox::{assert_contained, tight_limits};

/// One compile cache for the whole test binary.
fn cache_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| capsule_tests::temp_dir("polyglot-cache"))
}

/// A host sharing the binary's compile cache.
fn host() -> Host {
    host_builder()
        .cache_dir(cache_dir())
        .build()
        .expect("host builds")
}

/// kv, metrics and publishing to `greetings.*`.
fn full_grants(namespace: &str) -> Grants {
    Grants {
        kv: Some(KvGrant::new(namespace)),
        metrics: Some(MetricsGrant::default()),
        events: EventsGrant {
            publish: vec![TopicPattern::parse("greetings.*").unwrap()],
            ..EventsGrant::default()
        },
        ..Grants::default()
    }
}

/// The hello example in another language behaves as the Rust one does:
/// config, log, kv (committed with the call), metrics, events, and a denial
/// for every service it was not granted.
pub async fn hello_under_grants_and_denials(plugin: &str) {
    let host = host();
    host.load(
        PluginSpec::from_path(plugin_path(plugin))
            .grants(full_grants(plugin))
            .config("greeting", "Bonjour"),
    )
    .await
    .unwrap_or_else(|err| panic!("{plugin} loads: {err}"));

    let outcome = host
        .call(
            plugin,
            Request::new("greet", json!({"name": "Ada"}).to_string()),
        )
        .await
        .unwrap_or_else(|err| panic!("{plugin} greet: {err}"));
    let greeting: Value = serde_json::from_slice(&outcome.response.payload).unwrap();
    assert_eq!(greeting, json!({"greeting": "Bonjour, Ada!"}));
    assert!(
        outcome
            .logs
            .iter()
            .any(|record| record.source == LogSource::Log && record.message == "greeting Ada"),
        "{:?}",
        outcome.logs
    );
    call_json(&host, plugin, "greet", json!({"name": "Ada"})).await;
    assert_eq!(
        call_json(&host, plugin, "count", json!({"name": "Ada"})).await,
        json!({"name": "Ada", "count": 2})
    );
    let metrics = host.metrics_text();
    assert!(
        metrics.contains(&format!(
            "capsule_plugin_greetings_total{{plugin=\"{plugin}\",word=\"Bonjour\"}} 2"
        )),
        "{metrics}"
    );

    // Publishing: a granted topic publishes, any other is denied.
    let published = host
        .call(
            plugin,
            Request::new(
                "announce",
                json!({"topic": "greetings.fr", "name": "Ada"}).to_string(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(published.events.len(), 1, "{:?}", published.events);
    assert_eq!(published.events[0].topic, "greetings.fr");
    let denied = plugin_error(
        &host,
        plugin,
        "announce",
        json!({"topic": "orders.created", "name": "Ada"}),
    )
    .await;
    assert!(matches!(denied, PluginError::Denied(_)), "{denied:?}");

    // The same plugin with no grants: greeting still works (the count is
    // left out), the kv read is denied, metrics are dropped.
    let bare = format!("{plugin}-bare");
    host.load(PluginSpec::from_path(plugin_path(plugin)).with_name(&bare))
        .await
        .unwrap();
    assert_eq!(
        call_json(&host, &bare, "greet", json!({"name": "Bo"})).await,
        json!({"greeting": "Hello, Bo!"})
    );
    let denied = plugin_error(&host, &bare, "count", json!({"name": "Bo"})).await;
    assert!(matches!(denied, PluginError::Denied(_)), "{denied:?}");

    // The contract's plugin errors, from the helper.
    let unsupported = plugin_error(&host, plugin, "nope", json!({})).await;
    assert!(
        matches!(&unsupported, PluginError::Unsupported(message) if message.contains("nope")),
        "{unsupported:?}"
    );
    match host
        .call(plugin, Request::new("greet", "not json"))
        .await
        .unwrap_err()
        .cause
    {
        CallFailure::Plugin(PluginError::InvalidInput(_)) => {}
        other => panic!("expected invalid input, got {other:?}"),
    }
}

/// `capsule sign` embedded the manifest the helper built: operations with
/// their schemas, the declared metric; and the host checks requests against
/// those schemas when asked to.
pub async fn hello_manifest_is_embedded_and_enforced(plugin: &str) {
    let manifest = manifest::read(&plugin_bytes(plugin))
        .unwrap()
        .unwrap_or_else(|| panic!("{plugin} carries no manifest"));
    assert_eq!(manifest.name, plugin);
    assert_eq!(manifest.capabilities, ["greeting"]);
    let operations: Vec<&str> = manifest
        .operations
        .as_ref()
        .expect("operations declared")
        .iter()
        .map(|op| op.name.as_str())
        .collect();
    for op in ["greet", "count", "announce"] {
        assert!(operations.contains(&op), "{operations:?}");
    }
    assert_eq!(manifest.metrics.len(), 1);
    assert_eq!(manifest.metrics[0].name, "greetings");

    let host = host();
    host.load(PluginSpec::from_path(plugin_path(plugin)).validate_input(true))
        .await
        .unwrap();
    let err = host
        .call(
            plugin,
            Request::new("greet", json!({"name": ""}).to_string()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    // Refused by the host from the schema, before the plugin ran.
    assert!(err.logs.is_empty(), "{:?}", err.logs);
}

/// A hostile plugin in another language: looping, hoarding memory, an
/// uncaught exception and runaway recursion end as the same typed errors a
/// Rust plugin's do, and `hello` keeps answering.
pub async fn runaway_is_contained(
    plugin: &str,
    exception_op: &str,
    exception: &str,
    recursion: &str,
) {
    let limits = Limits {
        fuel: None,
        memory_bytes: 48 << 20,
        // Every misdeed is tried twice; the breaker must not step in.
        circuit_failures: 100,
        ..tight_limits()
    };
    let host = host();
    host.load(PluginSpec::from_path(plugin_path(
        capsule_tests::plugins::HELLO,
    )))
    .await
    .unwrap();
    host.load(PluginSpec::from_path(plugin_path(plugin)).limits(limits.clone()))
        .await
        .unwrap_or_else(|err| panic!("{plugin} loads: {err}"));

    let (err, elapsed) =
        assert_contained(&host, plugin, "spin", ErrorKind::Timeout, limits.timeout).await;
    assert!(
        elapsed >= limits.timeout,
        "stopped early: {elapsed:?} ({err})"
    );

    let (err, _) = assert_contained(
        &host,
        plugin,
        "hoard",
        ErrorKind::MemoryLimit,
        Duration::from_secs(2),
    )
    .await;
    assert!(err.to_string().contains("memory limit"), "{err}");

    // An uncaught exception, and the language's own recursion limit: each a
    // trap naming the exception, its traceback in the call's log.
    for (op, exception) in [(exception_op, exception), ("recurse", recursion)] {
        let (err, _) =
            assert_contained(&host, plugin, op, ErrorKind::Trap, Duration::from_secs(2)).await;
        match &err.cause {
            CallFailure::Trap { detail, .. } => {
                assert_eq!(detail.as_deref(), Some(exception), "{err}")
            }
            other => panic!("expected a trap, got {other:?}"),
        }
        assert!(err.to_string().contains(exception), "{err}");
        assert!(err.logs.iter().any(|r| r.source == LogSource::Stderr));
    }

    // Under a fuel budget the loop ends as out of fuel instead.
    let fueled = format!("{plugin}-fueled");
    host.load(
        PluginSpec::from_path(plugin_path(plugin))
            .with_name(&fueled)
            .limits(Limits {
                fuel: Some(50_000_000),
                timeout: Duration::from_secs(30),
                ..limits
            }),
    )
    .await
    .unwrap();
    let (err, _) = assert_contained(
        &host,
        &fueled,
        "spin",
        ErrorKind::OutOfFuel,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(err.stats.fuel_used, Some(50_000_000));
}
