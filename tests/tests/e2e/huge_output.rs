//! `huge-output` floods every output channel: a response over the limit and a
//! stdout flood fail as `output_too_large`; a `log` flood is refused line by
//! line without the host buffering it.

use std::time::Duration;

use capsule_host::{
    CallFailure, ErrorKind, Limits, OutputStream, PluginError, Request, StreamItem,
};
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

/// Reads a streaming call to its end: the chunks' count and bytes, and how
/// it ended.
async fn drain(
    mut stream: capsule_host::CallStream,
) -> (
    usize,
    usize,
    Result<capsule_host::CallOutcome, capsule_host::CallError>,
) {
    let (mut chunks, mut bytes) = (0, 0);
    while let Some(item) = stream.next().await {
        match item {
            StreamItem::Chunk(chunk) => {
                chunks += 1;
                bytes += chunk.len();
            }
            StreamItem::End(end) => return (chunks, bytes, end),
        }
    }
    panic!("the stream ended without its end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_flood_waits_for_its_reader_instead_of_filling_the_host() {
    let limits = Limits {
        timeout: Duration::from_secs(60),
        max_response_bytes: 512 << 20,
        ..tight_limits()
    };
    let host = host_with(HUGE_OUTPUT, limits).await;
    let before = capsule_tests::peak_resident();
    let stream = host.call_stream(HUGE_OUTPUT, Request::new("stream", ""));
    // Nobody reads for a second: unbounded, the plugin would have pushed
    // its whole 512 MiB into the host by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (chunks, bytes, end) = drain(stream).await;
    let grown = capsule_tests::peak_resident().saturating_sub(before);
    // Every chunk up to the limit went through, one buffer at a time.
    assert_eq!((chunks, bytes), (512, 512 << 20));
    let err = end.unwrap_err();
    assert_eq!(err.plugin, HUGE_OUTPUT);
    // It claimed success after a thousand refusals; the limit stands.
    assert!(
        matches!(
            err.cause,
            CallFailure::OutputTooLarge {
                stream: OutputStream::Response,
                limit
            } if limit == 512 << 20
        ),
        "{err}"
    );
    assert!(grown < 128 << 20, "peak memory grew by {grown} bytes");
    assert_hello_answers(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dribble_of_tiny_chunks_is_bounded_by_their_count_too() {
    let limits = Limits {
        timeout: Duration::from_secs(2),
        ..tight_limits()
    };
    let host = host_with(HUGE_OUTPUT, limits).await;
    let stream = host.call_stream(HUGE_OUTPUT, Request::new("dribble", ""));
    // Not read until the call's deadline has passed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (chunks, bytes, end) = drain(stream).await;
    // 256 KiB of buffer at 65 bytes a chunk (its byte and 64 of
    // bookkeeping): about 4,000 one-byte chunks waited, not 256 Ki.
    let most = (256 << 10) / 65 + 1;
    assert!(chunks > 1_000 && chunks <= most, "{chunks} chunks waited");
    assert_eq!(bytes, chunks);
    let err = end.unwrap_err();
    assert_eq!(err.plugin, HUGE_OUTPUT);
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_hello_answers(&host).await;
}
