//! Traces of what the host does for whom: every call, pipeline and event
//! delivery gets a span, a child of the W3C `traceparent` it arrived with
//! (an HTTP header, request metadata, the publishing call's span for an
//! event), and hands its own span on to the calls and events it makes, so a
//! request is one trace through pipelines, plugin-to-plugin calls, events
//! and other hosts. Plugins granted `trace` add spans of their own (see
//! `services::trace`). Spans carry what the call cost: fuel against its
//! limit, linear memory, host-call counts and time per service.
//!
//! Export is over OTLP/HTTP (protobuf) to the collector named in
//! `[host.telemetry] otlp` (Cargo feature `otlp`); without one, no span is
//! made and a call's `traceparent` is handed on unchanged.
//!
//! Budgets: spans wait for export in one bounded queue (`max_queue`, 2048
//! spans by default; when full, new spans are dropped and counted by the
//! SDK, never buffered without bound), exported in batches every
//! `interval` by one thread. A span holds at most [`MAX_SPAN_ATTRIBUTES`]
//! attributes; what a plugin adds is bounded per call by its `trace` grant.
//!
//! `profile.rs` looks inside one call instead: it samples the guest's stack
//! for a profile (`capsule run --profile`).

mod context;
#[cfg(not(feature = "otlp"))]
mod off;
#[cfg(feature = "otlp")]
mod otlp;
pub(crate) mod profile;

use std::time::Duration;

pub use context::{TRACEPARENT, TraceParent};
#[cfg(not(feature = "otlp"))]
pub(crate) use off::{Span, Tracing};
#[cfg(feature = "otlp")]
pub(crate) use otlp::{Span, Tracing};

/// Attributes a span keeps at most (the host's own and a plugin's).
pub const MAX_SPAN_ATTRIBUTES: u32 = 64;

/// `[host.telemetry]`: where traces go.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryOptions {
    /// The OTLP/HTTP collector, e.g. `http://127.0.0.1:4318` (spans are
    /// posted to `<otlp>/v1/traces`); `None`, the default: no traces.
    pub otlp: Option<String>,
    /// `service.name` of the spans (default `capsule`).
    pub service_name: String,
    /// The share of new traces recorded, 0 to 1 (default 1). A trace that
    /// arrives with a `traceparent` keeps its sampling decision.
    pub sample: f64,
    /// How often waiting spans are exported (default 5 s).
    pub interval: Duration,
    /// Spans waiting for export at most (default 2048); more are dropped.
    pub max_queue: usize,
}

impl Default for TelemetryOptions {
    fn default() -> Self {
        TelemetryOptions {
            otlp: None,
            service_name: "capsule".into(),
            sample: 1.0,
            interval: Duration::from_secs(5),
            max_queue: 2048,
        }
    }
}

impl TelemetryOptions {
    /// Every value within range; `otlp` an `http://` URL (this build sends
    /// no TLS: run the collector, or an agent of it, beside the host).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.otlp {
            let Ok(uri) = url.parse::<http::Uri>() else {
                return Err(format!("`{url}` is not a URL"));
            };
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(format!(
                    "`{url}`: an http:// collector address (TLS export is not built in; \
                     run a collector beside the host)"
                ));
            }
            if uri.query().is_some() {
                return Err(format!("`{url}`: no query string"));
            }
        }
        if self.service_name.is_empty() || self.service_name.len() > 128 {
            return Err("service_name: 1 to 128 bytes".into());
        }
        if !(0.0..=1.0).contains(&self.sample) {
            return Err(format!("sample: {} is not between 0 and 1", self.sample));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.interval) {
            return Err("interval: between 100ms and 60s".into());
        }
        if !(1..=65_536).contains(&self.max_queue) {
            return Err("max_queue: 1 to 65536 spans".into());
        }
        Ok(())
    }
}

/// What a span is for, as OpenTelemetry says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanKind {
    /// A call the host answers.
    Server,
    /// A delivery of an event.
    Consumer,
    /// Work inside a call (a pipeline's stages, a plugin's own spans).
    Internal,
}

/// A value of a span attribute.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "otlp"), allow(dead_code))]
pub(crate) enum Value {
    Text(String),
    Number(i64),
    Flag(bool),
}

impl From<&str> for Value {
    fn from(text: &str) -> Value {
        Value::Text(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Value {
        Value::Text(text)
    }
}

impl From<u64> for Value {
    fn from(number: u64) -> Value {
        Value::Number(i64::try_from(number).unwrap_or(i64::MAX))
    }
}

impl From<bool> for Value {
    fn from(flag: bool) -> Value {
        Value::Flag(flag)
    }
}

/// The span a call runs in, if the host traces: it names the call's
/// `traceparent` for what the call hands on.
pub(crate) fn parent_of(metadata: &[(String, String)]) -> Option<TraceParent> {
    metadata
        .iter()
        .find(|(key, _)| key == TRACEPARENT)
        .and_then(|(_, value)| TraceParent::parse(value))
}

/// Bytes of a caller-chosen value (an operation, a topic) a span keeps.
const MAX_VALUE_BYTES: usize = 256;

/// `text`, cut to at most [`MAX_VALUE_BYTES`] on a character boundary.
pub(crate) fn bounded(text: &str) -> String {
    let mut end = text.len().min(MAX_VALUE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
