//! `amplifier` hands the host output that costs far more than it looks:
//! metadata entries aliasing one megabyte, thousands of metadata entries,
//! a huge error message, empty log lines, one-byte stdout lines, and a
//! `describe` that aliases or is simply huge. Each is stopped at its budget
//! with a typed error; nothing unbounded is kept.

use capsule_host::{
    CallFailure, ErrorKind, Limits, LoadFailure, OutputStream, PluginSpec, Request,
};
use capsule_tests::plugin_path;
use capsule_tests::plugins::AMPLIFIER;

use crate::sandbox::{assert_contained, assert_hello_answers, host_with, tight_limits};

fn limits() -> Limits {
    Limits {
        max_response_bytes: 64 << 10,
        max_log_bytes: 16 << 10,
        ..tight_limits()
    }
}

async fn refused(op: &str) -> CallFailure {
    let host = host_with(AMPLIFIER, limits()).await;
    let (err, _) = assert_contained(
        &host,
        AMPLIFIER,
        op,
        ErrorKind::OutputTooLarge,
        limits().timeout,
    )
    .await;
    err.cause
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliased_metadata_is_stopped_before_it_is_copied() {
    // 200,000 entries that each point at the same megabyte: the host stops
    // copying the result as soon as it outgrows what one call may hand over.
    let cause = refused("metadata-alias").await;
    assert!(
        matches!(cause, CallFailure::OutputTooLarge { stream: OutputStream::Response, limit } if limit == 64 << 10),
        "{cause}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_entries_are_counted() {
    let cause = refused("metadata-many").await;
    assert!(
        matches!(
            cause,
            CallFailure::OutputTooLarge {
                stream: OutputStream::ResponseMetadata,
                limit: 64
            }
        ),
        "{cause}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_error_message_is_output_too_large() {
    let host = host_with(AMPLIFIER, limits()).await;
    // Larger than the response budget, smaller than what one host call may
    // hand over: the error-size check itself refuses it.
    let err = host
        .call(AMPLIFIER, Request::new("error-huge", "262144"))
        .await
        .unwrap_err();
    assert!(
        matches!(err.cause, CallFailure::OutputTooLarge { stream: OutputStream::Error, limit } if limit == 64 << 10),
        "{err}"
    );
    assert!(
        err.to_string().len() < 1024,
        "the error does not carry the message"
    );
    // Four megabytes are more than the result may be: not even copied.
    let err = host
        .call(AMPLIFIER, Request::new("error-huge", ""))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutputTooLarge, "{err}");
    assert_hello_answers(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_stdout_lines_are_counted_as_lines() {
    // Plenty of bytes, few lines: only the line count can stop it.
    let limits = Limits {
        max_log_records: 10,
        max_log_bytes: 64 << 10,
        ..limits()
    };
    let host = host_with(AMPLIFIER, limits.clone()).await;
    let (err, _) = assert_contained(
        &host,
        AMPLIFIER,
        "stdout-lines",
        ErrorKind::OutputTooLarge,
        limits.timeout,
    )
    .await;
    assert!(
        matches!(
            err.cause,
            CallFailure::OutputTooLarge {
                stream: OutputStream::LogRecords,
                limit: 10
            }
        ),
        "{err}"
    );
    assert!(err.logs.len() <= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_log_lines_are_not_free() {
    // Lines to spare, few bytes: only the per-line overhead can stop them.
    let limits = Limits {
        max_log_bytes: 4 << 10,
        max_log_records: 512,
        ..limits()
    };
    let host = host_with(AMPLIFIER, limits.clone()).await;
    let outcome = host
        .call(AMPLIFIER, Request::new("log-empty", ""))
        .await
        .expect("the plugin gives up after its refusals");
    assert!(
        !outcome.logs.is_empty() && outcome.logs.len() <= (4 << 10) / 32,
        "{} empty lines were kept",
        outcome.logs.len()
    );
    assert!(outcome.stats.logs_refused >= 1000);
    assert_hello_answers(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_describe_fails_the_load() {
    for how in ["alias", "long"] {
        let host = crate::host();
        let err = host
            .load(
                PluginSpec::from_path(plugin_path(AMPLIFIER))
                    .config("describe", how)
                    .limits(limits()),
            )
            .await
            .expect_err("an oversized description is refused");
        assert_eq!(err.kind(), ErrorKind::OutputTooLarge, "{how}: {err}");
        assert!(
            matches!(
                &err.cause,
                LoadFailure::InitFailed(cause)
                    if matches!(**cause, CallFailure::OutputTooLarge { stream: OutputStream::Describe, .. })
            ),
            "{how}: {err}"
        );
        assert!(host.plugins().is_empty());
    }
}
