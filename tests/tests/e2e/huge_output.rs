//! `huge-output` floods every output channel: a response over the limit and a
//! stdout flood fail as `output_too_large`; a `log` flood is refused line by
//! line without the host buffering it.

use std::time::Duration;

use capsule_host::{CallFailure, ErrorKind, Limits, OutputStream, PluginError, Request};
use capsule_tests::plugins::HUGE_OUTPUT;

use crate::sandbox::{assert_contained, assert_hello_answers, host_with, tight_limits};

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(2),
        max_response_bytes: 1 << 20,
        max_log_bytes: 16 << 10,
        ..tight_limits()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_response_is_refused() {
    let host = host_with(HUGE_OUTPUT, limits()).await;
    let (err, _) = assert_contained(
        &host,
        HUGE_OUTPUT,
        "run",
        ErrorKind::OutputTooLarge,
        limits().timeout,
    )
    .await;
    assert!(
        matches!(
            err.cause,
            CallFailure::OutputTooLarge { stream: OutputStream::Response, limit } if limit == 1 << 20
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_flood_is_stopped_at_the_log_budget() {
    let host = host_with(HUGE_OUTPUT, limits()).await;
    let (err, _) = assert_contained(
        &host,
        HUGE_OUTPUT,
        "print",
        ErrorKind::OutputTooLarge,
        limits().timeout,
    )
    .await;
    assert!(
        matches!(
            err.cause,
            CallFailure::OutputTooLarge {
                stream: OutputStream::Log,
                ..
            }
        ),
        "{err}"
    );
    let kept: usize = err.logs.iter().map(|r| r.message.len() + 1).sum();
    assert!(kept <= 16 << 10, "the host kept {kept} bytes of output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_flood_is_refused_line_by_line() {
    let host = host_with(HUGE_OUTPUT, limits()).await;
    let err = host
        .call(HUGE_OUTPUT, Request::new("log", ""))
        .await
        .unwrap_err();
    // The plugin saw the refusals (quota-exceeded values) and gave up.
    assert!(
        matches!(&err.cause, CallFailure::Plugin(PluginError::Failed(msg)) if msg.contains("refusing")),
        "{err}"
    );
    assert!(err.stats.logs_refused > 1_000);
    let kept: usize = err.logs.iter().map(|r| r.message.len()).sum();
    assert!(kept <= 16 << 10, "the host kept {kept} bytes of logs");
    assert_hello_answers(&host).await;
}
