//! `spin-loop` spins forever: the deadline stops it as `timeout` (at a fuel
//! yield by default, or on the epoch tick), a fuel budget as `out_of_fuel`,
//! and neither starves other plugins.

use std::time::Duration;

use capsule_host::{EngineOptions, ErrorKind, Interruption, Limits, PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{HELLO, SPIN_LOOP};

use crate::sandbox::{assert_contained, host_with, tight_limits};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_stops_it_as_timeout() {
    let limits = Limits {
        fuel: None,
        ..tight_limits()
    };
    let host = host_with(SPIN_LOOP, limits.clone()).await;
    let (err, elapsed) =
        assert_contained(&host, SPIN_LOOP, "run", ErrorKind::Timeout, limits.timeout).await;
    assert!(elapsed >= limits.timeout, "stopped early: {elapsed:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
}

/// Calls `op` on spin-loop, with no fuel limit, on a host built with
/// `engine`: it must stop as `timeout`, not before its deadline.
async fn stopped_at_deadline(engine: EngineOptions, op: &str) {
    let limits = Limits {
        fuel: None,
        ..tight_limits()
    };
    let host = capsule_tests::host_builder()
        .engine_options(engine)
        .build()
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(SPIN_LOOP)).limits(limits.clone()))
        .await
        .unwrap();
    let (_, elapsed) =
        assert_contained(&host, SPIN_LOOP, op, ErrorKind::Timeout, limits.timeout).await;
    assert!(
        elapsed >= limits.timeout,
        "{op}: stopped early: {elapsed:?}"
    );
}

/// Epoch interruption (what `capsule run --profile` uses, and the only
/// deadline without fuel) stops it too, with fuel metering off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_stop_it_without_fuel() {
    let engine = EngineOptions {
        consume_fuel: false,
        interruption: Interruption::epoch(),
        ..EngineOptions::default()
    };
    stopped_at_deadline(engine, "run").await;
}

/// A loop of host calls burns little fuel a turn: with nothing else to
/// interrupt the guest (no fuel yields, no epochs), the host still stops it
/// as it returns from a host call past the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_of_host_calls_stops_at_its_deadline() {
    let engine = EngineOptions {
        interruption: Interruption::Off,
        ..EngineOptions::default()
    };
    stopped_at_deadline(engine, "host-calls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_budget_stops_it_as_out_of_fuel() {
    let limits = Limits {
        fuel: Some(10_000_000),
        timeout: Duration::from_secs(30),
        ..tight_limits()
    };
    let host = host_with(SPIN_LOOP, limits).await;
    // Ten million units of fuel burn in milliseconds; the 30 s deadline is
    // only a backstop.
    let (err, _) = assert_contained(
        &host,
        SPIN_LOOP,
        "run",
        ErrorKind::OutOfFuel,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(err.stats.fuel_used, Some(10_000_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_plugins_do_not_starve_others() {
    let limits = Limits {
        fuel: None,
        timeout: Duration::from_millis(500),
        ..tight_limits()
    };
    let host = host_with(SPIN_LOOP, limits).await;
    let mut spinners = Vec::new();
    let mut greeters = Vec::new();
    for i in 0..24 {
        let host = host.clone();
        if i % 2 == 0 {
            spinners.push(tokio::spawn(async move {
                host.call(SPIN_LOOP, Request::new("run", "")).await
            }));
        } else {
            greeters.push(tokio::spawn(async move {
                host.call(
                    HELLO,
                    Request::new("greet", format!(r#"{{"name":"n{i}"}}"#)),
                )
                .await
            }));
        }
    }
    for greeter in greeters {
        let outcome = greeter.await.unwrap().expect("every hello call succeeds");
        assert!(
            outcome
                .response
                .text()
                .unwrap()
                .starts_with(r#"{"greeting":"Hello, n"#)
        );
    }
    for spinner in spinners {
        let err = spinner.await.unwrap().unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Busy),
            "{err}"
        );
    }
}
