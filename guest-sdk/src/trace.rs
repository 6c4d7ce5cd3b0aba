//! Spans of the plugin's own work, inside the host's trace of the call: a
//! [`Span`] started here is a child of the call's span (or of another span
//! of this call, with [`Span::child`]), carries the attributes set on it,
//! and is exported with the host's spans when the operator configured
//! tracing (`[host.telemetry]`). A span ends when it is dropped (or with
//! [`Span::end`] / [`Span::fail`]); spans still open when the call returns
//! end with it.
//!
//! The operator grants it (`trace = {}` in the policy, with a cap on spans
//! per call: `trace = { spans = 100 }`, 32 by default). Tracing never fails
//! a call: a span the host refuses (not granted, over the cap, a name over
//! 128 bytes) is inert, and [`Span::try_start`] says why. Attribute keys
//! (1 to 64 bytes; not under `capsule.`, which is the host's) and values
//! (at most 256 bytes) are checked, and a span carries at most 16.
//!
//! ```
//! use capsule_guest::trace::Span;
//! use capsule_guest::{Plugin, PluginError, Request, Response};
//!
//! struct Resizer;
//!
//! impl Plugin for Resizer {
//!     fn handle(request: Request) -> Result<Response, PluginError> {
//!         let decode = Span::start("decode");
//!         let _ = decode.set("bytes", request.payload.len());
//!         drop(decode);
//!         let encode = Span::start("encode");
//!         let _ = encode.set("format", "png");
//!         Ok(Response::bytes("ok"))
//!     }
//! }
//! ```

use std::fmt::Display;

use crate::ServiceError;

/// One span of the running call; ends when dropped.
#[derive(Debug)]
#[must_use = "a span ends when it is dropped"]
pub struct Span {
    /// Its number within the call; `None` when the host refused it.
    id: Option<u32>,
}

impl Span {
    /// Starts span `name`, a child of the call's span. Inert if the host
    /// refuses it.
    pub fn start(name: &str) -> Span {
        Span::try_start(name).unwrap_or(Span { id: None })
    }

    /// Starts span `name`, a child of the call's span, or says why not.
    pub fn try_start(name: &str) -> Result<Span, ServiceError> {
        crate::host::trace_start_span(name, None).map(|id| Span { id: Some(id) })
    }

    /// Starts span `name` as a child of this one (of the call's span if
    /// this one is inert). Inert if the host refuses it.
    pub fn child(&self, name: &str) -> Span {
        crate::host::trace_start_span(name, self.id)
            .map(|id| Span { id: Some(id) })
            .unwrap_or(Span { id: None })
    }

    /// Whether the host took the span (it is recorded when the host
    /// traces this call).
    pub fn is_active(&self) -> bool {
        self.id.is_some()
    }

    /// Sets attribute `key` to `value` (its `Display` text).
    pub fn set(&self, key: &str, value: impl Display) -> Result<(), ServiceError> {
        match self.id {
            Some(id) => crate::host::trace_set_attribute(id, key, &value.to_string()),
            None => Ok(()),
        }
    }

    /// Ends the span now.
    pub fn end(mut self) {
        self.finish(None);
    }

    /// Ends the span now, marked failed with `message` (cut to 256 bytes).
    pub fn fail(mut self, message: &str) {
        let mut end = message.len().min(256);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        self.finish(Some(&message[..end]));
    }

    fn finish(&mut self, error: Option<&str>) {
        if let Some(id) = self.id.take() {
            // The host checked the span when it started it; ending it can
            // only fail if the call already ended, which ends it anyway.
            let _ = crate::host::trace_end_span(id, error);
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.finish(None);
    }
}

/// Runs `f` inside span `name`, which ends when `f` returns (failed, with
/// the error, if `f` returns an `Err`).
pub fn in_span<T, E: Display>(name: &str, f: impl FnOnce(&Span) -> Result<T, E>) -> Result<T, E> {
    let span = Span::start(name);
    let result = f(&span);
    match &result {
        Ok(_) => span.end(),
        Err(err) => span.fail(&err.to_string()),
    }
    result
}
