//! A build without the `otlp` feature: [`Tracing::start`] never makes a
//! tracer, so no span is ever made and every method here is a no-op.

use std::borrow::Cow;

use super::{SpanKind, TelemetryOptions, TraceParent, Value};

/// No tracer: never made in this build.
#[allow(dead_code, reason = "a build without `otlp` never makes one")]
pub(crate) struct Tracing(());

impl Tracing {
    /// `None`, or an error when the options name a collector.
    pub(crate) fn start(options: &TelemetryOptions) -> Result<Option<Tracing>, String> {
        match &options.otlp {
            Some(_) => Err("this build of Capsule exports no traces \
                 (build capsule-host with the `otlp` feature)"
                .into()),
            None => Ok(None),
        }
    }

    pub(crate) fn span(
        &self,
        _name: impl Into<Cow<'static, str>>,
        _kind: SpanKind,
        _parent: Option<TraceParent>,
        _remote: bool,
    ) -> Span {
        Span(())
    }

    pub(crate) fn shutdown(&self, _wait: std::time::Duration) {}
}

/// No span: never made in this build.
pub(crate) struct Span(());

impl Span {
    pub(crate) fn context(&self) -> TraceParent {
        unreachable!("a build without `otlp` makes no tracer, so no span")
    }

    pub(crate) fn recording(&self) -> bool {
        false
    }

    pub(crate) fn set(&mut self, _key: impl Into<Cow<'static, str>>, _value: Value) {}

    pub(crate) fn fail(&mut self, _message: impl Into<Cow<'static, str>>) {}

    pub(crate) fn end(self) {}
}
