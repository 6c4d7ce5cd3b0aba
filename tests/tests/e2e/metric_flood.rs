//! `metric-flood` (hostile): however it tries to grow the host's metrics —
//! a new series on every update, megabyte label values, thousands of
//! undeclared names — the series cap and the declaration stop it with a
//! typed refusal, and `/metrics` holds only what its grant allows. Its
//! `greetings` gauge clashes with `hello`'s counter: a host refuses the
//! second of the two to load with metrics granted.

use capsule_host::services::metrics::MetricsGrant;
use capsule_host::{ErrorKind, Grants, Host, PluginError, PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{HELLO, METRIC_FLOOD};
use serde_json::json;

use crate::grants::plugin_error;

fn metrics(series: u32) -> Grants {
    Grants {
        metrics: Some(MetricsGrant {
            series,
            ..MetricsGrant::default()
        }),
        ..Grants::default()
    }
}

async fn refusal(host: &Host, op: &str) -> String {
    match plugin_error(host, METRIC_FLOOD, op, json!(null)).await {
        PluginError::Failed(message) => message,
        other => panic!("{op}: {other:?}"),
    }
}

#[tokio::test]
async fn the_series_cap_and_the_declarations_bound_what_the_host_keeps() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(METRIC_FLOOD)).grants(metrics(50)))
        .await
        .unwrap();
    let message = refusal(&host, "series").await;
    assert!(message.contains("stopped after 50"), "{message}");
    assert!(message.contains("QuotaExceeded"), "{message}");
    assert!(message.contains("metrics.series"), "{message}");
    let message = refusal(&host, "long").await;
    assert!(message.contains("Invalid"), "{message}");
    assert!(message.contains("longer than the 128 allowed"), "{message}");
    let undeclared = host
        .call(METRIC_FLOOD, Request::new("undeclared", ""))
        .await
        .unwrap();
    assert_eq!(undeclared.response.payload, b"10000 refused");

    let text = host.metrics_text();
    let series = text
        .lines()
        .filter(|l| l.starts_with("capsule_plugin_flood_total{"))
        .count();
    assert_eq!(series, 50, "{text}");
    assert!(
        !text.contains("made_up"),
        "undeclared names are never exported"
    );
    // 50 series of 120-byte keys, plus the host's own families.
    assert!(text.len() < 64 << 10, "{} bytes", text.len());
}

#[tokio::test]
async fn wide_series_stop_at_the_bytes_they_may_add_to_a_scrape() {
    let host = crate::host();
    // As many series as a grant allows: only the byte budget (1 MiB by
    // default) can stop histograms of 8 long labels and 32 buckets.
    host.load(PluginSpec::from_path(plugin_path(METRIC_FLOOD)).grants(metrics(100_000)))
        .await
        .unwrap();
    let message = refusal(&host, "wide").await;
    assert!(
        message.contains("QuotaExceeded") && message.contains("metrics.max_bytes"),
        "{message}"
    );
    let text = host.metrics_text();
    let wide: usize = text
        .lines()
        .filter(|l| l.starts_with("capsule_plugin_wide"))
        .map(|l| l.len() + 1)
        .sum();
    assert!(
        (512 << 10..=1 << 20).contains(&wide),
        "{wide} bytes of wide series for a 1 MiB budget"
    );
}

#[tokio::test]
async fn without_the_grant_every_update_is_denied() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(METRIC_FLOOD)))
        .await
        .unwrap();
    let message = refusal(&host, "series").await;
    assert!(
        message.contains("stopped after 0")
            && message.contains("Denied(\"metrics were not granted to this plugin\")"),
        "{message}"
    );
}

#[tokio::test]
async fn a_family_exported_in_two_shapes_refuses_the_second_plugin() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)).grants(metrics(10)))
        .await
        .unwrap();
    let err = host
        .load(PluginSpec::from_path(plugin_path(METRIC_FLOOD)).grants(metrics(10)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let message = err.to_string();
    assert!(message.contains(METRIC_FLOOD), "{message}");
    assert!(
        message.contains("capsule_plugin_greetings")
            && message.contains("plugin `hello` exports as a counter"),
        "{message}"
    );
    // Without its metrics grant nothing of it is exported, so nothing clashes.
    host.load(PluginSpec::from_path(plugin_path(METRIC_FLOOD)))
        .await
        .unwrap();
    // hello still counts.
    host.call(
        HELLO,
        Request::new("greet", json!({ "name": "Ada" }).to_string()),
    )
    .await
    .unwrap();
    assert!(
        host.metrics_text()
            .contains(r#"capsule_plugin_greetings_total{plugin="hello",word="Hello"} 1.0"#),
        "{}",
        host.metrics_text()
    );
}

#[tokio::test]
async fn a_reload_with_the_same_declarations_keeps_counting() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)).grants(metrics(10)))
        .await
        .unwrap();
    let greet = || Request::new("greet", json!({ "name": "Ada" }).to_string());
    host.call(HELLO, greet()).await.unwrap();
    host.call(HELLO, greet()).await.unwrap();
    host.reload(HELLO).await.unwrap();
    host.call(HELLO, greet()).await.unwrap();
    let text = host.metrics_text();
    assert!(
        text.contains(r#"capsule_plugin_greetings_total{plugin="hello",word="Hello"} 3.0"#),
        "{text}"
    );
    // Unloaded, its series leave `/metrics`.
    assert!(host.unload(HELLO).await);
    assert!(!host.metrics_text().contains("capsule_plugin_greetings"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_flood_ends_at_its_grant_and_exports_only_that() {
    use capsule_host::services::trace::TraceGrant;
    use capsule_host::telemetry::TelemetryOptions;
    use capsule_tests::otlp::{Collector, attribute};

    let collector = Collector::start().await;
    let host = capsule_tests::host_builder()
        .telemetry(TelemetryOptions {
            otlp: Some(collector.url.clone()),
            interval: std::time::Duration::from_millis(200),
            ..TelemetryOptions::default()
        })
        .build()
        .unwrap();
    let grants = Grants {
        trace: Some(TraceGrant { spans: 20 }),
        ..Grants::default()
    };
    host.load(PluginSpec::from_path(plugin_path(METRIC_FLOOD)).grants(grants))
        .await
        .unwrap();
    let message = refusal(&host, "spans").await;
    assert!(message.contains("spans stopped after 20"), "{message}");
    assert!(message.contains("trace.spans"), "{message}");
    let message = refusal(&host, "attributes").await;
    assert!(message.contains("attributes stopped after 16"), "{message}");
    let message = refusal(&host, "long-span").await;
    assert!(message.matches("Invalid").count() == 2, "{message}");
    // Exported: the flood's 20 spans (each with its 16 attributes and the
    // host's one, the last of them left open and ended with the call), the
    // `wide` span and `short`, and the three calls — nothing more.
    let call = collector.span("call metric-flood").await;
    collector.span("short").await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let spans = collector.spans();
    let floods: Vec<_> = spans.iter().filter(|(_, s)| s.name == "flood").collect();
    assert_eq!(floods.len(), 20);
    for (_, span) in &floods {
        assert_eq!(
            span.attributes.len(),
            17,
            "16 of its own and capsule.plugin"
        );
        assert_eq!(
            attribute(span, "capsule.plugin").as_deref(),
            Some("metric-flood")
        );
        assert_eq!(span.trace_id, call.trace_id);
    }
    assert_eq!(
        spans.len(),
        20 + 2 + 3,
        "{:?}",
        spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
    );
    // Each failed call's span says why.
    let failed = spans
        .iter()
        .filter(|(_, s)| s.name == "call metric-flood")
        .filter(|(_, s)| attribute(s, "capsule.outcome").as_deref() == Some("plugin_error"))
        .count();
    assert_eq!(failed, 3);
}
