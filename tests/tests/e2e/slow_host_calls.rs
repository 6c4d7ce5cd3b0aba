//! `slow-host-calls` spends its time inside host calls, where fuel is not
//! burned and epoch checks do not run: the outer timeout still stops it.

use std::time::Duration;

use capsule_host::{ErrorKind, Limits};
use capsule_tests::plugins::SLOW_HOST_CALLS;

use crate::sandbox::{assert_contained, host_with, tight_limits};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_inside_the_host_times_out() {
    let limits = Limits {
        fuel: Some(1_000_000_000),
        timeout: Duration::from_millis(300),
        ..tight_limits()
    };
    let host = host_with(SLOW_HOST_CALLS, limits.clone()).await;
    let (err, elapsed) = assert_contained(
        &host,
        SLOW_HOST_CALLS,
        "run",
        ErrorKind::Timeout,
        limits.timeout,
    )
    .await;
    assert!(elapsed >= limits.timeout);
    // It logged before it went to sleep; the line survives the timeout.
    assert!(
        err.logs
            .iter()
            .any(|r| r.message == "going to sleep inside the host")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_loop_of_host_calls_times_out() {
    let limits = Limits {
        fuel: None,
        ..tight_limits()
    };
    let host = host_with(SLOW_HOST_CALLS, limits.clone()).await;
    assert_contained(
        &host,
        SLOW_HOST_CALLS,
        "log",
        ErrorKind::Timeout,
        limits.timeout,
    )
    .await;
}

/// A probe call whose caller goes away (a client disconnects, a future is
/// dropped) must not leave the circuit half-open for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_probe_does_not_lock_the_plugin_out() {
    let limits = Limits {
        timeout: Duration::from_millis(200),
        circuit_failures: 1,
        circuit_cooldown: Duration::from_millis(300),
        ..tight_limits()
    };
    let host = host_with(SLOW_HOST_CALLS, limits.clone()).await;
    let call = || host.call(SLOW_HOST_CALLS, capsule_host::Request::new("run", ""));
    assert_eq!(call().await.unwrap_err().kind(), ErrorKind::Timeout);
    assert_eq!(call().await.unwrap_err().kind(), ErrorKind::CircuitOpen);
    tokio::time::sleep(limits.circuit_cooldown).await;
    // The probe: abandoned before it can report.
    let abandoned = tokio::time::timeout(Duration::from_millis(50), call()).await;
    assert!(abandoned.is_err(), "the probe was still running");
    // The next call is admitted as a new probe, not refused.
    assert_eq!(call().await.unwrap_err().kind(), ErrorKind::Timeout);
}
