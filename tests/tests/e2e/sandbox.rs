//! Shared checks for hostile plugins: the exact error kind, a bounded time to
//! fail, the same failure on a second call, and a well-behaved plugin on the
//! same host still answering right after.

use std::time::{Duration, Instant};

use capsule_host::{CallError, ErrorKind, Host, Limits, PluginSpec, Request};
use capsule_tests::{plugin_path, plugins::HELLO};

/// Limits tight enough that hostile plugins are stopped quickly.
pub fn tight_limits() -> Limits {
    Limits {
        timeout: Duration::from_millis(300),
        fuel: Some(5_000_000_000),
        memory_bytes: 32 << 20,
        ..Limits::default()
    }
}

/// A host with `hello` and the hostile `plugin` (under `limits`) loaded.
pub async fn host_with(plugin: &str, limits: Limits) -> Host {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(plugin)).limits(limits))
        .await
        .unwrap();
    host
}

/// Calls `plugin` twice with `op`; each call must fail with `kind` within
/// `5 × bound`, and `hello` must answer correctly after each failure.
/// Returns the first error and how long it took.
pub async fn assert_contained(
    host: &Host,
    plugin: &str,
    op: &str,
    kind: ErrorKind,
    bound: Duration,
) -> (CallError, Duration) {
    let mut first = None;
    for attempt in 1..=2 {
        let started = Instant::now();
        let err = host
            .call(plugin, Request::new(op, "attack"))
            .await
            .expect_err("a hostile plugin must not succeed");
        let elapsed = started.elapsed();
        assert_eq!(err.kind(), kind, "attempt {attempt}: {err}");
        assert_eq!(err.plugin, plugin);
        assert!(
            elapsed < bound * 5,
            "attempt {attempt}: took {elapsed:?}, more than 5 × {bound:?}"
        );
        assert_hello_answers(host).await;
        first.get_or_insert((err, elapsed));
    }
    first.unwrap()
}

/// `hello` on `host` still greets correctly.
pub async fn assert_hello_answers(host: &Host) {
    let outcome = host
        .call(HELLO, Request::new("greet", r#"{"name":"Ada"}"#))
        .await
        .expect("hello keeps serving");
    assert_eq!(
        outcome.response.text(),
        Some(r#"{"greeting":"Hello, Ada!"}"#)
    );
}
