//! The host runtime: many concurrent calls, instance reuse and recycling,
//! the registry, pause/resume, reload (under load, and a broken new
//! version), the circuit breaker, middleware and metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use capsule_host::artifact::signature;
use capsule_host::{
    CallContext, CallError, CallOutcome, ErrorKind, HealthCheck, Host, Limits, Middleware,
    PluginHealthState, PluginSpec, PluginState, REQUEST_ID, Request, RequestId, SecretKey,
};
use capsule_tests::{host_builder, plugin_bytes, plugin_path, plugins::HELLO, test_key};
use serde_json::json;

use crate::grants::json_of;

fn greet(name: &str) -> Request {
    Request::new("greet", json!({ "name": name }).to_string())
}

async fn hello_with(limits: Limits) -> Host {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)).limits(limits))
        .await
        .unwrap();
    host
}

/// What `Host::call` returns is moved by every caller (into a task, a
/// timeout, `block_on`): it stays small because the plugin's own call is
/// boxed. Inline, it was 94 KB, and moving it most of the 43% of a warm
/// call's instructions that were memcpy.
#[tokio::test]
async fn the_call_future_stays_small() {
    let host = hello_with(Limits::default()).await;
    let call = host.call(HELLO, greet("Ada"));
    let size = std::mem::size_of_val(&call);
    assert!(size <= 4096, "Host::call's future is {size} bytes");
    assert!(call.await.is_ok());
}

/// `prewarm` starts that many instances at load: with `recycle_after = 1`
/// each serves one call, so exactly the first `prewarm` calls are warm
/// (without it, only the instance that answered `describe` is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_starts_instances_at_load() {
    for prewarm in [0, 3] {
        let host = hello_with(Limits {
            recycle_after: 1,
            max_instances: 4,
            prewarm,
            ..Limits::default()
        })
        .await;
        let warm = prewarm.max(1);
        assert_eq!(host.status(HELLO).unwrap().live_instances, warm);
        for call in 0..warm + 2 {
            let outcome = host.call(HELLO, greet("Ada")).await.unwrap();
            assert_eq!(
                outcome.stats.fresh_instance,
                call >= warm,
                "prewarm {prewarm}: call {call}"
            );
        }
    }
}

async fn calls_seen(host: &Host) -> u64 {
    let outcome = host.call(HELLO, Request::new("calls", "")).await.unwrap();
    json_of(&outcome.response)["calls"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_calls_are_all_correct() {
    let host = hello_with(Limits {
        max_instances: 8,
        max_queued: 1000,
        ..Limits::default()
    })
    .await;
    let calls: Vec<_> = (0..400)
        .map(|i| {
            let host = host.clone();
            tokio::spawn(async move { (i, host.call(HELLO, greet(&format!("n{i}"))).await) })
        })
        .collect();
    for call in calls {
        let (i, result) = call.await.unwrap();
        let outcome = result.unwrap();
        assert_eq!(
            json_of(&outcome.response),
            json!({ "greeting": format!("Hello, n{i}!") })
        );
    }
    let status = host.status(HELLO).unwrap();
    assert!(
        status.live_instances <= 8,
        "at most max_instances live: {}",
        status.live_instances
    );
}

#[tokio::test]
async fn recycle_after_one_gives_every_call_a_fresh_instance() {
    let host = hello_with(Limits {
        recycle_after: 1,
        ..Limits::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(calls_seen(&host).await, 1, "no state carried over");
    }
    let outcome = host.call(HELLO, greet("Ada")).await.unwrap();
    assert!(outcome.stats.fresh_instance);
}

#[tokio::test]
async fn a_larger_recycle_after_keeps_guest_state_then_recycles() {
    let host = hello_with(Limits {
        recycle_after: 4,
        ..Limits::default()
    })
    .await;
    // The instance that answered `describe` at load serves the first calls.
    let seen: Vec<u64> = {
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(calls_seen(&host).await);
        }
        seen
    };
    assert_eq!(
        seen,
        [1, 2, 3, 4, 1, 2],
        "state is kept for 4 calls, then a fresh instance"
    );
}

#[tokio::test]
async fn a_trapped_instance_is_discarded_at_once() {
    // Every call of `panic` traps; each must run on a fresh instance.
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(
        capsule_tests::plugins::PANIC,
    )))
    .await
    .unwrap();
    for attempt in 0..3 {
        let err = host
            .call(capsule_tests::plugins::PANIC, Request::new("run", ""))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Trap);
        // The first call may use the instance warmed by `describe` at load.
        if attempt > 0 {
            assert!(
                err.stats.fresh_instance,
                "a trapped instance is never reused"
            );
        }
        assert_eq!(
            host.status(capsule_tests::plugins::PANIC)
                .unwrap()
                .live_instances,
            0
        );
    }
}

#[tokio::test]
async fn the_registry_finds_plugins_by_name_and_capability() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(
        capsule_tests::plugins::KV_COUNTER,
    )))
    .await
    .unwrap();
    let found = host.find_by_capability("greeting");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, HELLO);
    assert!(host.find_by_capability("nothing-provides-this").is_empty());
    let status = host.status(HELLO).unwrap();
    assert_eq!(status.state, PluginState::Active);
    assert_eq!(status.details.info.version, "0.1.0");
    assert_eq!(status.details.digest.len(), 64);
    assert_eq!(host.statuses().len(), 2);
}

#[tokio::test]
async fn paused_plugins_refuse_calls_until_resumed() {
    let host = hello_with(Limits::default()).await;
    assert!(host.pause(HELLO));
    let err = host.call(HELLO, greet("Ada")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Paused);
    assert_eq!(host.status(HELLO).unwrap().state, PluginState::Paused);
    assert!(host.resume(HELLO));
    host.call(HELLO, greet("Ada")).await.unwrap();
    assert!(!host.pause("ghost"));
}

/// hello signed a second time, by a second trusted key: the same code with a
/// new digest, i.e. a new version.
fn second_version(key: &SecretKey) -> Vec<u8> {
    signature::sign(&plugin_bytes(HELLO), key).unwrap().embedded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_call_and_switches_version() {
    let key = SecretKey::generate().unwrap();
    let host = host_builder().trust(key.public_key()).build().unwrap();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    let before = host.status(HELLO).unwrap().details.digest;

    let calls: Vec<_> = (0..200)
        .map(|i| {
            let host = host.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(i * 50)).await;
                host.call(HELLO, greet(&format!("n{i}"))).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let spec = PluginSpec::from_bytes(HELLO, second_version(&key));
    let details = host.reload_with(spec).await.unwrap();
    for call in calls {
        call.await
            .unwrap()
            .expect("no call is lost during a reload");
    }
    let status = host.status(HELLO).unwrap();
    assert_ne!(status.details.digest, before);
    assert_eq!(status.details.digest, details.digest);
    assert_eq!(status.generation, 1);
    assert_eq!(status.details.signers.len(), 2);
    assert!(
        host.metrics_text()
            .contains(r#"capsule_reloads_total{plugin="hello",outcome="ok"} 1"#)
    );
}

#[tokio::test]
async fn a_broken_new_version_keeps_the_old_one_serving() {
    let host = hello_with(Limits::default()).await;
    let before = host.status(HELLO).unwrap().details.digest;
    for broken in [
        PluginSpec::from_bytes(HELLO, b"not wasm".to_vec()),
        PluginSpec::from_bytes(
            HELLO,
            signature::unsigned_content(&plugin_bytes(HELLO)).unwrap(),
        ),
        PluginSpec::from_path("/nonexistent/hello.wasm").with_name(HELLO),
    ] {
        let err = host.reload_with(broken).await.unwrap_err();
        assert!(
            matches!(
                err.kind(),
                ErrorKind::Malformed | ErrorKind::Unsigned | ErrorKind::Io
            ),
            "{err}"
        );
        host.call(HELLO, greet("Ada"))
            .await
            .expect("the old version still serves");
    }
    let status = host.status(HELLO).unwrap();
    assert_eq!(status.details.digest, before);
    assert_eq!(status.generation, 0);
    assert!(
        host.metrics_text()
            .contains(r#"capsule_reloads_total{plugin="hello",outcome="failed"} 3"#)
    );
    // Reloading from its own file works.
    host.reload(HELLO).await.unwrap();
    assert_eq!(host.status(HELLO).unwrap().generation, 1);
}

#[tokio::test]
async fn the_circuit_opens_after_repeated_failures_and_a_probe_closes_it() {
    let host = hello_with(Limits {
        max_response_bytes: 64,
        circuit_failures: 2,
        circuit_cooldown: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    let long_name = "x".repeat(100);
    for _ in 0..2 {
        let err = host.call(HELLO, greet(&long_name)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutputTooLarge);
    }
    let err = host.call(HELLO, greet("Ada")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen, "fails fast while open");
    assert_eq!(host.status(HELLO).unwrap().state, PluginState::CircuitOpen);
    // An open circuit degrades the plugin and the host is not ready.
    let readiness = host.readiness().await;
    assert!(!readiness.ready);
    let hello = &readiness.plugins[0];
    assert!(hello.circuit_open);
    assert_eq!(hello.state, PluginHealthState::Degraded);
    assert_eq!(hello.check, HealthCheck::NotAsked);

    tokio::time::sleep(Duration::from_millis(250)).await;
    // Past its cooldown the next call probes it: readiness does not wait
    // for traffic it would keep away.
    let readiness = host.readiness().await;
    assert!(readiness.ready, "{readiness:?}");
    assert!(!readiness.plugins[0].circuit_open);
    host.call(HELLO, greet("Ada"))
        .await
        .expect("the probe goes through and succeeds");
    assert_eq!(host.status(HELLO).unwrap().state, PluginState::Active);
    let readiness = host.readiness().await;
    assert!(readiness.ready, "{readiness:?}");
    assert_eq!(readiness.plugins[0].check, HealthCheck::Healthy);
    host.call(HELLO, greet("Ada")).await.unwrap();
}

#[tokio::test]
async fn a_failed_probe_keeps_the_circuit_open() {
    let host = hello_with(Limits {
        max_response_bytes: 64,
        circuit_failures: 1,
        circuit_cooldown: Duration::from_millis(100),
        ..Limits::default()
    })
    .await;
    let long_name = "x".repeat(100);
    host.call(HELLO, greet(&long_name)).await.unwrap_err();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let probe = host.call(HELLO, greet(&long_name)).await.unwrap_err();
    assert_eq!(probe.kind(), ErrorKind::OutputTooLarge);
    let err = host.call(HELLO, greet("Ada")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
}

/// Counts hook calls, and refuses calls whose operation is `forbidden`.
#[derive(Default)]
struct Counting {
    before: AtomicUsize,
    after: AtomicUsize,
    errors: AtomicUsize,
}

struct Shared(Arc<Counting>);

impl Middleware for Shared {
    fn before(&self, call: &mut CallContext<'_>) -> Result<(), String> {
        self.0.before.fetch_add(1, Ordering::SeqCst);
        if call.request.operation == "forbidden" {
            return Err("operation `forbidden` is not allowed here".into());
        }
        Ok(())
    }

    fn after(&self, _: &str, _: &Request, _: &mut CallOutcome) {
        self.0.after.fetch_add(1, Ordering::SeqCst);
    }

    fn on_error(&self, _: &str, _: &Request, _: &CallError) {
        self.0.errors.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn middleware_runs_around_every_call() {
    let counting = Arc::new(Counting::default());
    let host = Host::builder()
        .trust(test_key())
        .middleware(RequestId)
        .middleware(Shared(Arc::clone(&counting)))
        .build()
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();

    let outcome = host.call(HELLO, greet("Ada")).await.unwrap();
    let id = outcome
        .response
        .metadata
        .iter()
        .find(|(k, _)| k == REQUEST_ID)
        .map(|(_, v)| v.clone())
        .expect("a request id is added");
    assert!(!id.is_empty());
    // A caller's own id is kept.
    let outcome = host
        .call(HELLO, greet("Ada").with_metadata(REQUEST_ID, "abc-123"))
        .await
        .unwrap();
    assert!(
        outcome
            .response
            .metadata
            .contains(&(REQUEST_ID.to_owned(), "abc-123".to_owned()))
    );

    let err = host
        .call(HELLO, Request::new("forbidden", ""))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    host.call(HELLO, Request::new("nope", ""))
        .await
        .unwrap_err();
    assert_eq!(counting.before.load(Ordering::SeqCst), 4);
    assert_eq!(counting.after.load(Ordering::SeqCst), 2);
    assert_eq!(counting.errors.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn metrics_count_a_known_sequence_of_calls() {
    let host = hello_with(Limits::default()).await;
    for _ in 0..3 {
        host.call(HELLO, greet("Ada")).await.unwrap();
    }
    host.call(HELLO, Request::new("nope", ""))
        .await
        .unwrap_err();
    let text = host.metrics_text();
    for line in [
        r#"capsule_calls_total{plugin="hello",outcome="ok"} 3"#,
        r#"capsule_calls_total{plugin="hello",outcome="plugin_error"} 1"#,
        r#"capsule_call_duration_seconds_count{plugin="hello"} 4"#,
        r#"capsule_call_fuel_count{plugin="hello"} 4"#,
        r#"capsule_instances{plugin="hello"} 1"#,
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(text.contains("# TYPE capsule_call_duration_seconds histogram"));
}

#[tokio::test]
async fn shutdown_drains_and_refuses_new_calls() {
    let host = hello_with(Limits::default()).await;
    host.call(HELLO, greet("Ada")).await.unwrap();
    host.shutdown(Duration::from_secs(2)).await;
    let err = host.call(HELLO, greet("Ada")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Paused);
    assert_eq!(
        host.status(HELLO).unwrap().live_instances,
        0,
        "idle instances were shut down"
    );
    assert!(host.unload(HELLO).await);
    assert!(host.status(HELLO).is_none());
}

#[tokio::test]
async fn a_pool_the_machine_cannot_reserve_falls_back_to_on_demand() {
    use capsule_host::{AllocationMode, EngineOptions, PoolingOptions};
    let options = EngineOptions {
        pooling: Some(PoolingOptions {
            // The largest pool a policy may ask for: 200,000 memories of
            // 64 GiB each, far beyond any machine's address space.
            total_instances: 100_000,
            max_memory_bytes: 64 << 30,
        }),
        ..EngineOptions::default()
    };
    let host = host_builder()
        .engine_options(options)
        .build()
        .expect("no crash, a fallback");
    match host.allocation_mode() {
        AllocationMode::OnDemand {
            fallback_reason: Some(reason),
        } => assert!(!reason.is_empty()),
        other => panic!("expected an on-demand fallback, got {other:?}"),
    }
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    host.call(HELLO, greet("Ada")).await.unwrap();
}

#[tokio::test]
async fn a_memory_limit_larger_than_the_pool_is_refused_at_load() {
    use capsule_host::{EngineOptions, PoolingOptions};
    let options = EngineOptions {
        pooling: Some(PoolingOptions {
            total_instances: 16,
            max_memory_bytes: 16 << 20,
        }),
        ..EngineOptions::default()
    };
    let host = host_builder().engine_options(options).build().unwrap();
    assert_eq!(
        host.allocation_mode(),
        &capsule_host::AllocationMode::Pooling
    );
    let err = host
        .load(PluginSpec::from_path(plugin_path(HELLO)).limits(Limits {
            memory_bytes: 64 << 20,
            ..Limits::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("max_memory"), "{err}");
    host.load(PluginSpec::from_path(plugin_path(HELLO)).limits(Limits {
        memory_bytes: 16 << 20,
        ..Limits::default()
    }))
    .await
    .unwrap();
    host.call(HELLO, greet("Ada")).await.unwrap();
}

/// Idle instances are a cache: one plugin's warm instances filling the
/// instance pool must not make another plugin busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plugins_idle_instances_do_not_keep_another_from_running() {
    use capsule_host::{EngineOptions, Limits, PoolingOptions};
    let limits = Limits {
        max_instances: 4,
        recycle_after: 100,
        ..Limits::default()
    };
    let host = host_builder()
        .engine_options(EngineOptions {
            pooling: Some(PoolingOptions {
                total_instances: 4,
                max_memory_bytes: 64 << 20,
            }),
            ..EngineOptions::default()
        })
        .default_limits(limits)
        .build()
        .unwrap();
    let napper = capsule_tests::plugins::STUBBORN_SHUTDOWN;
    host.load(PluginSpec::from_path(plugin_path(napper)))
        .await
        .unwrap();
    // Four overlapping calls leave four idle instances: the whole pool.
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move { host.call(napper, Request::new("nap", "300")).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(host.status(napper).unwrap().live_instances, 4);
    // Loading and calling another plugin needs a slot: the idle ones make
    // room instead of the call failing as busy.
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    host.call(HELLO, greet("Ada")).await.unwrap();
}
