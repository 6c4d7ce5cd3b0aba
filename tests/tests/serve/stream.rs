//! Streamed answers of `POST /v1/plugins/{name}/call`: `report` writes its
//! CSV in chunks, which reach the client as they are written — chunked, or
//! as server-sent events — and a failure after the first chunk, a client
//! that hangs up, and trailers each end the stream as they should.

use std::time::{Duration, Instant};

use capsule_host::serve::ServeOptions;
use capsule_host::services::kv::KvGrant;
use capsule_host::{Grants, Limits, PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::REPORT;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Server;

const HEADER: &str = "day,region,product,units,revenue_cents\n";

async fn report_server() -> Server {
    let host = capsule_tests::host_builder().build().unwrap();
    let limits = Limits {
        max_instances: 1,
        max_response_bytes: 512 << 20,
        timeout: Duration::from_secs(120),
        queue_timeout: Duration::from_secs(20),
        ..Limits::default()
    };
    let grants = Grants {
        kv: Some(KvGrant::new("reports")),
        ..Grants::default()
    };
    host.load(
        PluginSpec::from_path(plugin_path(REPORT))
            .grants(grants)
            .limits(limits),
    )
    .await
    .unwrap();
    Server::serve(host, ServeOptions::default()).await
}

/// `report`'s CSV of `rows`, taken whole from the host.
async fn whole(server: &Server, rows: u64) -> Vec<u8> {
    let input = format!(r#"{{"rows":{rows}}}"#);
    let outcome = server
        .host
        .call(REPORT, Request::new("sales", input))
        .await
        .unwrap();
    outcome.response.payload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_reach_the_client_as_the_plugin_writes_them() {
    let server = report_server().await;
    let started = Instant::now();
    let mut response = server
        .post(
            "/v1/plugins/report/call?op=sales",
            r#"{"rows":200000,"chunk_rows":1000}"#,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let mut body = Vec::new();
    let mut first = None;
    let mut reads = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        first.get_or_insert_with(|| started.elapsed());
        reads += 1;
        body.extend_from_slice(&chunk);
    }
    let last = started.elapsed();
    let first = first.unwrap();
    eprintln!("200,000 rows over HTTP: first chunk after {first:?}, last after {last:?}");
    assert!(first < last / 2, "first chunk {first:?}, last {last:?}");
    assert!(reads > 10, "the body came in {reads} reads");
    assert_eq!(body, whole(&server, 200_000).await);

    // A plugin that writes no chunk answers as before, with its cost in
    // the headers and a length.
    let plain = server.post("/v1/plugins/report/call?op=count", "").await;
    assert_eq!(plain.status(), StatusCode::OK);
    assert!(plain.headers().contains_key("x-capsule-fuel"));
    assert!(plain.headers().contains_key("content-length"));
    server.stop().await.unwrap();
}

/// The events of a server-sent-event body: (name, data).
fn events(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut name = String::new();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = value.to_owned();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push(value);
                }
            }
            (name, data.join("\n"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_ask_get_server_sent_events() {
    let server = report_server().await;
    let sse = |body: &'static str| {
        server
            .client
            .post(server.url("/v1/plugins/report/call?op=sales"))
            .header("accept", "text/event-stream")
            .body(body)
            .send()
    };
    let response = sse(r#"{"rows":5000,"chunk_rows":1000}"#).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = events(&response.text().await.unwrap());
    let (ends, chunks): (Vec<_>, Vec<_>) = events.iter().partition(|(name, _)| name == "end");
    assert_eq!(chunks.len(), 5);
    assert!(chunks.iter().all(|(name, _)| name == "chunk"));
    let csv: String = chunks.iter().map(|(_, data)| data.as_str()).collect();
    assert_eq!(csv.as_bytes(), whole(&server, 5000).await);
    let end: Value = serde_json::from_str(&ends[0].1).unwrap();
    assert_eq!(end["metadata"][0], serde_json::json!(["rows", "5000"]));
    assert!(end["fuel"].as_u64().unwrap() > 0);

    // A failure after chunks is the last event.
    let failed = sse(r#"{"rows":5000,"chunk_rows":1000,"fail_after":2500}"#)
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::OK);
    let events = self::events(&failed.text().await.unwrap());
    assert_eq!(events.len(), 3, "two chunks, then the error");
    let (name, data) = &events[2];
    assert_eq!(name, "error");
    let error: Value = serde_json::from_str(data).unwrap();
    assert_eq!(error["kind"], "plugin_error");
    assert_eq!(error["plugin"], REPORT);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("after 2500 rows")
    );

    // A failure before any chunk keeps its own status.
    let refused = sse(r#"{"rows":-1}"#).await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    server.stop().await.unwrap();
}

/// Sends `request` over a fresh connection and reads the whole answer.
async fn raw(server: &Server, request: &str) -> String {
    let address = server.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn post(body: &str, te_trailers: bool) -> String {
    let te = if te_trailers { "te: trailers\r\n" } else { "" };
    format!(
        "POST /v1/plugins/report/call?op=sales HTTP/1.1\r\nhost: test\r\n{te}\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_the_first_chunk_ends_in_trailers_or_a_cut() {
    let server = report_server().await;
    let failing = r#"{"rows":3000,"chunk_rows":1000,"fail_after":1500}"#;
    // With `TE: trailers`: a complete chunked body whose trailers carry
    // the error.
    let answer = raw(&server, &post(failing, true)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("\r\ntrailer: x-capsule-status"), "{answer}");
    let trailers = &answer[answer.rfind("\r\n0\r\n").expect("the last chunk")..];
    assert!(trailers.contains("x-capsule-status: error"), "{trailers}");
    assert!(
        trailers.contains("x-capsule-error-kind: plugin_error"),
        "{trailers}"
    );
    assert!(trailers.contains("after 1500 rows"), "{trailers}");
    assert!(answer.ends_with("\r\n\r\n"));
    // A success ends with `ok`.
    let answer = raw(&server, &post(r#"{"rows":3000,"chunk_rows":1000}"#, true)).await;
    let trailers = &answer[answer.rfind("\r\n0\r\n").unwrap()..];
    assert!(trailers.contains("x-capsule-status: ok"), "{trailers}");
    assert!(trailers.contains("x-capsule-fuel: "), "{trailers}");

    // Without: the connection ends before the last chunk, so no client
    // takes the first rows for the whole report.
    let answer = raw(&server, &post(failing, false)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains(HEADER));
    assert!(!answer.contains("\r\n0\r\n\r\n"), "{answer}");
    let cut = server
        .post("/v1/plugins/report/call?op=sales", failing)
        .await
        .bytes()
        .await;
    assert!(cut.is_err(), "reqwest sees the truncation");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_cancels_the_call() {
    let server = report_server().await;
    let address = server.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    // Five million rows, a hundred per chunk: minutes of work.
    socket
        .write_all(post(r#"{"rows":5000000,"chunk_rows":100}"#, false).as_bytes())
        .await
        .unwrap();
    let mut first = vec![0; 4096];
    let read = socket.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..read]).starts_with("HTTP/1.1 200 OK"));
    drop(socket);
    // The call is cancelled: its only instance slot is free for the next
    // call at once, not after the report's minutes (or `busy` after 20 s).
    let started = Instant::now();
    let count = server.post("/v1/plugins/report/call?op=count", "").await;
    assert_eq!(count.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(15));
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("capsule_streams_cancelled_total{plugin=\"report\"} 1"),
        "{metrics}"
    );
    server.stop().await.unwrap();
}
