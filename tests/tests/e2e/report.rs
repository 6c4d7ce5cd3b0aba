//! `report` streams a CSV with `response.write`: `Host::call_stream` hands
//! each chunk over as it is written, a caller that does not stream gets the
//! same bytes whole, a failure after chunks ends the stream with the error
//! and keeps nothing, the output limit counts every chunk, and a caller
//! that goes away cancels the call.

use std::time::{Duration, Instant};

use capsule_host::services::kv::KvGrant;
use capsule_host::{
    CallError, CallFailure, CallOutcome, ErrorKind, Grants, Limits, OutputStream, PluginSpec,
    Request, StreamItem,
};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{HELLO, REPORT};
use serde_json::json;

const HEADER: &str = "day,region,product,units,revenue_cents\n";

fn sales(input: serde_json::Value) -> Request {
    Request::new("sales", input.to_string())
}

/// Reads a stream to its end: the chunks, when the first arrived, and the
/// end.
async fn drain(
    mut stream: capsule_host::CallStream,
) -> (
    Vec<Vec<u8>>,
    Option<Duration>,
    Result<CallOutcome, CallError>,
) {
    let started = Instant::now();
    let mut chunks = Vec::new();
    let mut first = None;
    while let Some(item) = stream.next().await {
        match item {
            StreamItem::Chunk(chunk) => {
                first.get_or_insert_with(|| started.elapsed());
                chunks.push(chunk);
            }
            StreamItem::End(end) => {
                assert!(stream.next().await.is_none(), "nothing after the end");
                return (chunks, first, end);
            }
        }
    }
    panic!("the stream ended without its end");
}

fn with_kv() -> Grants {
    Grants {
        kv: Some(KvGrant::new("reports")),
        ..Grants::default()
    }
}

/// Loads `report` into `host` under `limits`, counting its reports in kv.
pub(crate) async fn load_report(host: &capsule_host::Host, limits: Limits) {
    host.load(
        PluginSpec::from_path(plugin_path(REPORT))
            .grants(with_kv())
            .limits(limits),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn chunks_arrive_while_the_report_is_still_being_written() {
    let host = crate::host();
    let limits = Limits {
        max_response_bytes: 64 << 20,
        ..Limits::default()
    };
    load_report(&host, limits).await;
    let input = json!({"rows": 200_000, "chunk_rows": 1_000});
    let (chunks, first, end) = drain(host.call_stream(REPORT, sales(input.clone()))).await;
    let outcome = end.expect("the report succeeds");
    let first = first.expect("chunks came");
    // 200 chunks of 1,000 rows (the header rides in the first); the last
    // write, empty, sends nothing.
    assert_eq!(chunks.len(), 200);
    assert!(outcome.response.payload.is_empty());
    // The first chunk was in the caller's hands before the plugin finished:
    // it arrived within the call's own running time, not after it.
    assert!(
        first < outcome.stats.duration,
        "first chunk after {first:?}, call took {:?}",
        outcome.stats.duration
    );
    eprintln!(
        "report of 200,000 rows: first chunk after {first:?}, call {:?}",
        outcome.stats.duration
    );
    let streamed = chunks.concat();
    assert!(streamed.starts_with(HEADER.as_bytes()));
    assert_eq!(streamed.iter().filter(|b| **b == b'\n').count(), 200_001);
    let bytes = outcome
        .response
        .metadata
        .iter()
        .find(|(key, _)| key == "bytes")
        .map(|(_, value)| value.parse::<usize>().unwrap());
    assert_eq!(bytes, Some(streamed.len()));

    // A caller that does not stream gets the same bytes, whole.
    let whole = host.call(REPORT, sales(input)).await.unwrap();
    assert_eq!(whole.response.payload, streamed);
    let count = host.call(REPORT, Request::new("count", "")).await.unwrap();
    assert_eq!(count.response.payload, br#"{"reports":2}"#);
}

#[tokio::test]
async fn a_failure_after_chunks_ends_the_stream_with_the_error_and_keeps_nothing() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(REPORT)).grants(with_kv()))
        .await
        .unwrap();
    let input = json!({"rows": 10_000, "chunk_rows": 100, "fail_after": 1_050});
    let (chunks, _, end) = drain(host.call_stream(REPORT, sales(input.clone()))).await;
    assert_eq!(chunks.len(), 10, "rows 0..1000 went out before the failure");
    let err = end.unwrap_err();
    assert_eq!(err.plugin, REPORT);
    assert_eq!(err.kind(), ErrorKind::PluginError);
    assert!(err.to_string().contains("failed after 1050 rows"), "{err}");
    // The same call taken whole fails whole: no partial answer.
    let whole = host.call(REPORT, sales(input)).await.unwrap_err();
    assert_eq!(whole.kind(), ErrorKind::PluginError);
    // Neither failed report was counted: their kv writes were discarded.
    let count = host.call(REPORT, Request::new("count", "")).await.unwrap();
    assert_eq!(count.response.payload, br#"{"reports":0}"#);
}

#[tokio::test]
async fn the_output_limit_counts_every_chunk() {
    let host = crate::host();
    let limits = Limits {
        max_response_bytes: 100 << 10,
        ..Limits::default()
    };
    host.load(PluginSpec::from_path(plugin_path(REPORT)).limits(limits))
        .await
        .unwrap();
    // About 3 MB of CSV against a 100 KiB limit.
    let input = json!({"rows": 100_000, "chunk_rows": 100});
    let (chunks, _, end) = drain(host.call_stream(REPORT, sales(input.clone()))).await;
    let sent: usize = chunks.iter().map(Vec::len).sum();
    assert!(sent <= 100 << 10, "{sent} bytes went out");
    assert!(!chunks.is_empty());
    let err = end.unwrap_err();
    assert_eq!(err.plugin, REPORT);
    assert!(
        matches!(
            err.cause,
            CallFailure::OutputTooLarge {
                stream: OutputStream::Response,
                limit
            } if limit == 100 << 10
        ),
        "{err}"
    );
    let whole = host.call(REPORT, sales(input)).await.unwrap_err();
    assert_eq!(whole.kind(), ErrorKind::OutputTooLarge);
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_call_and_frees_its_instance() {
    let host = crate::host();
    let limits = Limits {
        max_instances: 1,
        max_response_bytes: 512 << 20,
        timeout: Duration::from_secs(60),
        queue_timeout: Duration::from_secs(20),
        ..Limits::default()
    };
    load_report(&host, limits).await;
    // Five million rows: seconds of work, which the drop cuts short.
    let mut stream = host.call_stream(REPORT, sales(json!({"rows": 5_000_000, "chunk_rows": 100})));
    match stream.next().await {
        Some(StreamItem::Chunk(chunk)) => assert!(chunk.starts_with(HEADER.as_bytes())),
        other => panic!("expected a chunk, got {other:?}"),
    }
    drop(stream);
    // The only instance slot is free again at once: the next call does not
    // wait for the report to run its course (it would fail `busy` after 20 s
    // in the queue, or answer after the report's minutes).
    let started = Instant::now();
    let count = host.call(REPORT, Request::new("count", "")).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    // The cancelled report's count was not kept.
    assert_eq!(count.response.payload, br#"{"reports":0}"#);
    let metrics = host.metrics_text();
    assert!(
        metrics.contains(&format!(
            "capsule_streams_cancelled_total{{plugin=\"{REPORT}\"}} 1"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_pure_report_is_answered_whole_and_from_the_cache() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(REPORT)).pure_operations(vec!["sales".into()]))
        .await
        .unwrap();
    let input = json!({"rows": 2_000, "chunk_rows": 100});
    for cached in [false, true] {
        let (chunks, _, end) = drain(host.call_stream(REPORT, sales(input.clone()))).await;
        // Kept whole for the cache, so given whole: no chunks.
        assert!(chunks.is_empty());
        let outcome = end.unwrap();
        assert_eq!(outcome.stats.cached, cached);
        assert!(outcome.response.payload.starts_with(HEADER.as_bytes()));
        assert_eq!(
            outcome
                .response
                .payload
                .iter()
                .filter(|b| **b == b'\n')
                .count(),
            2_001
        );
    }
}

/// A plugin whose component does not import `capsule:plugin/response` can
/// never write a chunk: its streaming call runs inline as the stream is
/// read, with no task of its own (a task per call cost `capsule serve` a
/// third of its throughput); `report`, which can, gets one.
#[tokio::test]
async fn only_a_plugin_that_can_stream_is_called_on_a_task_of_its_own() {
    let host = crate::host();
    load_report(&host, Limits::default()).await;
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let greet = Request::new("greet", r#"{"name":"Ada"}"#);

    let before = tasks();
    let mut stream = host.call_stream(HELLO, greet.clone());
    assert_eq!(tasks(), before, "no task for a plugin that cannot stream");
    match stream.next().await {
        Some(StreamItem::End(Ok(outcome))) => {
            assert!(String::from_utf8_lossy(&outcome.response.payload).contains("Ada"));
        }
        other => panic!("expected the end at once, got {other:?}"),
    }
    assert!(stream.next().await.is_none());

    let before = tasks();
    let stream = host.call_stream(REPORT, sales(json!({"rows": 10, "chunk_rows": 5})));
    assert_eq!(tasks(), before + 1, "a task for a plugin that can stream");
    let (chunks, _, end) = drain(stream).await;
    assert_eq!(chunks.len(), 2);
    end.unwrap();

    // Dropped before it is read, the inline call never ran: nothing to
    // cancel, nothing counted.
    drop(host.call_stream(HELLO, greet));
    let metrics = host.metrics_text();
    assert!(
        metrics.contains(&format!(
            "capsule_calls_total{{plugin=\"{HELLO}\",outcome=\"ok\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        !metrics.contains(&format!(
            "capsule_streams_cancelled_total{{plugin=\"{HELLO}\"}}"
        )),
        "{metrics}"
    );
}
