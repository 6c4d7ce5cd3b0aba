//! Limits that are not tied to one hostile plugin: request size, memory below
//! a plugin's needs, the concurrency cap and its queue.

use std::time::Duration;

use capsule_host::{ErrorKind, Limits, PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{HELLO, SPIN_LOOP};

use crate::host;
use crate::sandbox::{assert_hello_answers, tight_limits};

#[tokio::test]
async fn oversized_requests_are_refused_before_running() {
    let host = host();
    let limits = Limits {
        max_request_bytes: 64,
        ..Limits::default()
    };
    host.load(PluginSpec::from_path(plugin_path(HELLO)).limits(limits))
        .await
        .unwrap();
    let err = host
        .call(HELLO, Request::new("greet", vec![b' '; 100]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InputTooLarge);
    assert_eq!(err.stats.fuel_used, None, "the plugin never ran");
    assert_hello_answers(&host).await;
}

#[tokio::test]
async fn memory_below_a_plugins_needs_fails_cleanly_at_load() {
    let host = host();
    let limits = Limits {
        memory_bytes: 64 << 10,
        ..Limits::default()
    };
    let err = host
        .load(PluginSpec::from_path(plugin_path(HELLO)).limits(limits))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MemoryLimit, "{err}");
    assert_eq!(err.plugin, HELLO);
    assert!(host.plugins().is_empty(), "nothing is registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_concurrency_cap_queue_then_fail_as_busy() {
    let host = host();
    let limits = Limits {
        fuel: None,
        timeout: Duration::from_millis(400),
        max_instances: 1,
        max_queued: 1,
        queue_timeout: Duration::from_millis(100),
        ..tight_limits()
    };
    host.load(PluginSpec::from_path(plugin_path(SPIN_LOOP)).limits(limits))
        .await
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();

    let calls: Vec<_> = (0..4)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move { host.call(SPIN_LOOP, Request::new("run", "")).await })
        })
        .collect();
    let mut kinds = Vec::new();
    for call in calls {
        kinds.push(call.await.unwrap().unwrap_err().kind());
    }
    kinds.sort_by_key(|k| k.as_str());
    // One call runs into its deadline; one waits in the queue and gives up
    // after 100 ms; two find the queue full and fail at once.
    assert_eq!(
        kinds,
        [
            ErrorKind::Busy,
            ErrorKind::Busy,
            ErrorKind::Busy,
            ErrorKind::Timeout
        ]
    );
    assert_hello_answers(&host).await;
}

#[tokio::test]
async fn fuel_is_refilled_for_every_call() {
    let host = host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    let need = host
        .call(HELLO, Request::new("greet", r#"{"name":"Ada"}"#))
        .await
        .unwrap()
        .stats
        .fuel_used
        .unwrap();
    host.unload(HELLO).await;
    // Enough for two calls' worth, so any carry-over would fail the third.
    let limits = Limits {
        fuel: Some(need * 2),
        ..Limits::default()
    };
    host.load(PluginSpec::from_path(plugin_path(HELLO)).limits(limits))
        .await
        .unwrap();
    for _ in 0..5 {
        let outcome = host
            .call(HELLO, Request::new("greet", r#"{"name":"Ada"}"#))
            .await
            .expect("each call gets a full budget");
        assert!(outcome.stats.fuel_used.unwrap() <= need * 2);
    }
    let starved = Limits {
        fuel: Some(need / 4),
        ..Limits::default()
    };
    host.unload(HELLO).await;
    // A quarter of a call's fuel: either `init` at load or the call itself
    // runs out, and either way the failure is `out_of_fuel`.
    let kind = match host
        .load(PluginSpec::from_path(plugin_path(HELLO)).limits(starved))
        .await
    {
        Err(err) => err.kind(),
        Ok(_) => host
            .call(HELLO, Request::new("greet", r#"{"name":"Ada"}"#))
            .await
            .unwrap_err()
            .kind(),
    };
    assert_eq!(kind, ErrorKind::OutOfFuel);
}
