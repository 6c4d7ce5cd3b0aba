//! Spans made with the OpenTelemetry SDK and exported over OTLP/HTTP.

use std::borrow::Cow;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, Key, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};

use super::{MAX_SPAN_ATTRIBUTES, SpanKind, TelemetryOptions, TraceParent, Value};

/// How long one export may take before it is given up (its spans dropped).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The host's tracer: makes spans and exports them in the background.
pub(crate) struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Tracing {
    /// The tracer `options` ask for; `None` when they name no collector.
    pub(crate) fn start(options: &TelemetryOptions) -> Result<Option<Tracing>, String> {
        let Some(base) = &options.otlp else {
            return Ok(None);
        };
        options.validate()?;
        let endpoint = format!("{}/v1/traces", base.trim_end_matches('/'));
        // The exporter's reqwest client panics without a crypto provider.
        crate::tls::install_provider();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|err| format!("OTLP exporter for `{base}`: {err}"))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(options.max_queue)
            .with_max_export_batch_size(options.max_queue.min(512))
            .with_scheduled_delay(options.interval)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build(),
            )
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                options.sample,
            ))))
            .with_max_attributes_per_span(MAX_SPAN_ATTRIBUTES)
            .with_resource(
                Resource::builder()
                    .with_service_name(options.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("capsule");
        Ok(Some(Tracing { provider, tracer }))
    }

    /// Starts span `name`, a child of `parent` (which came from elsewhere
    /// when `remote`) or the root of a new trace.
    pub(crate) fn span(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: Option<TraceParent>,
        remote: bool,
    ) -> Span {
        let context = match parent {
            Some(parent) => {
                let flags = if parent.sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                };
                Context::new().with_remote_span_context(SpanContext::new(
                    TraceId::from_bytes(parent.trace_id),
                    SpanId::from_bytes(parent.span_id),
                    flags,
                    remote,
                    TraceState::NONE,
                ))
            }
            None => Context::new(),
        };
        let kind = match kind {
            SpanKind::Server => opentelemetry::trace::SpanKind::Server,
            SpanKind::Consumer => opentelemetry::trace::SpanKind::Consumer,
            SpanKind::Internal => opentelemetry::trace::SpanKind::Internal,
        };
        let inner = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(&self.tracer, &context);
        Span { inner }
    }

    /// Exports what waits and stops the exporter (at host shutdown),
    /// waiting at most `wait`.
    pub(crate) fn shutdown(&self, wait: Duration) {
        if let Err(err) = self.provider.shutdown_with_timeout(wait) {
            tracing::debug!(%err, "trace exporter shutdown");
        }
    }
}

impl Drop for Tracing {
    // The SDK shuts the exporter down when its last handle goes, waiting
    // for the final export; a host dropped inside async code (without
    // `Host::shutdown`) must not block a runtime worker for that, so the
    // wait happens on a thread of its own. After `shutdown` it is a no-op.
    fn drop(&mut self) {
        let provider = self.provider.clone();
        let _ = std::thread::Builder::new()
            .name("capsule-trace-shutdown".into())
            .spawn(move || {
                let _ = provider.shutdown_with_timeout(EXPORT_TIMEOUT);
            });
    }
}

/// One span; it ends when [`Span::end`] is called or it is dropped.
pub(crate) struct Span {
    inner: opentelemetry_sdk::trace::Span,
}

impl Span {
    /// The span's own `traceparent`, for what it hands on.
    pub(crate) fn context(&self) -> TraceParent {
        let context = self.inner.span_context();
        TraceParent {
            trace_id: context.trace_id().to_bytes(),
            span_id: context.span_id().to_bytes(),
            sampled: context.is_sampled(),
        }
    }

    /// Whether the span is recorded (its trace is sampled).
    pub(crate) fn recording(&self) -> bool {
        self.inner.is_recording()
    }

    /// Sets attribute `key`.
    pub(crate) fn set(&mut self, key: impl Into<Cow<'static, str>>, value: Value) {
        let key = match key.into() {
            Cow::Borrowed(key) => Key::from_static_str(key),
            Cow::Owned(key) => Key::new(key),
        };
        let value = match value {
            Value::Text(text) => opentelemetry::Value::from(text),
            Value::Number(number) => opentelemetry::Value::I64(number),
            Value::Flag(flag) => opentelemetry::Value::Bool(flag),
        };
        self.inner.set_attribute(KeyValue::new(key, value));
    }

    /// Marks the span failed with `message`.
    pub(crate) fn fail(&mut self, message: impl Into<Cow<'static, str>>) {
        self.inner.set_status(Status::error(message));
    }

    /// Ends the span now.
    pub(crate) fn end(mut self) {
        self.inner.end();
    }
}
