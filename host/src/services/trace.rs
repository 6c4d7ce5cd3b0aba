//! The `trace` service (`capsule:plugin/trace`, contract 0.2): spans of a
//! plugin's own work inside the host's trace of the call. A span a plugin
//! starts is a child of the call's span (or of another span the call
//! started) and is exported with the host's spans; it carries the
//! attributes the plugin set and `capsule.plugin`.
//!
//! Granted as `trace = {}` (or `trace = { spans = 100 }`). Budgets, per
//! call: `spans` started (32 unless granted otherwise, at most 256), each
//! with a name of at most 128 bytes and at most 16 attributes of a 64-byte
//! key and a 256-byte value; past a count the call gets `quota-exceeded`,
//! an oversized string is `invalid`. Keys under `capsule.` are the host's.
//! Spans still open when the call ends are ended with it. When the host
//! does not trace (no `[host.telemetry] otlp`) or the trace is not sampled,
//! the same checks run and nothing is kept.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wasmtime::component::{HasData, Linker};

use super::{
    Availability, Denials, Holds, Import, PolicyContext, PrepareContext, Service, StoreContext,
    Views,
};
use crate::bounds::{Invalid, range};
use crate::contract::{ServiceError, interfaces_v0_2};
use crate::limits::Limits;
use crate::telemetry::{Span, SpanKind, TraceParent, Tracing, Value};

/// Spans a call may start when the grant does not say.
pub const DEFAULT_SPANS: u32 = 32;
/// The most spans a grant may let one call start.
pub const MAX_SPANS: u32 = 256;
/// The longest span name.
pub const MAX_NAME_BYTES: usize = 128;
/// The longest attribute key.
pub const MAX_KEY_BYTES: usize = 64;
/// The longest attribute value (and error message).
pub const MAX_VALUE_BYTES: usize = 256;
/// Attributes one span may carry.
pub const MAX_ATTRIBUTES: u32 = 16;

/// What the operator grants: how many spans one call may start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceGrant {
    /// Spans a call may start; the next is `quota-exceeded`.
    pub spans: u32,
}

impl Default for TraceGrant {
    fn default() -> Self {
        TraceGrant {
            spans: DEFAULT_SPANS,
        }
    }
}

/// How a policy file writes the grant: `trace = {}` or
/// `trace = { spans = 100 }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TracePolicy {
    spans: Option<u32>,
}

/// A span the running call started.
struct OpenSpan {
    /// The span itself; `None` when nothing is recorded (the host does
    /// not trace, or the trace is not sampled).
    span: Option<Span>,
    /// Its `traceparent`, for the spans started under it.
    context: Option<TraceParent>,
    /// Attributes set on it.
    attributes: u32,
}

/// Per-store state of the `trace` service.
pub(crate) struct TraceState {
    grant: Option<TraceGrant>,
    tracing: Option<Arc<Tracing>>,
    plugin: Arc<str>,
    denials: Arc<Denials>,
    /// The running call's span.
    parent: Option<TraceParent>,
    /// The spans the running call started, by number; `None` once ended.
    spans: Vec<Option<OpenSpan>>,
    /// Whether a call is running (`init` is not a call).
    in_call: bool,
}

impl TraceState {
    fn granted(&self) -> Result<u32, ServiceError> {
        match &self.grant {
            Some(grant) => Ok(grant.spans),
            None => {
                let message = "tracing was not granted to this plugin";
                self.denials.record("trace", message);
                Err(ServiceError::Denied(message.into()))
            }
        }
    }

    fn open(&mut self, span: u32) -> Result<&mut OpenSpan, ServiceError> {
        self.spans
            .get_mut(span as usize)
            .and_then(Option::as_mut)
            .ok_or_else(|| ServiceError::Invalid(format!("span {span} is not open in this call")))
    }

    /// Ends every span the call left open.
    fn end_all(&mut self) {
        for open in self.spans.drain(..).flatten() {
            if let Some(span) = open.span {
                span.end();
            }
        }
    }
}

fn within(what: &str, text: &str, min: usize, max: usize) -> Result<(), ServiceError> {
    if (min..=max).contains(&text.len()) {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!(
            "{what} of {} bytes: use {min} to {max} bytes",
            text.len()
        )))
    }
}

impl interfaces_v0_2::trace::Host for TraceState {
    fn start_span(&mut self, name: String, parent: Option<u32>) -> Result<u32, ServiceError> {
        let most = self.granted()?;
        if !self.in_call {
            return Err(ServiceError::Invalid(
                "spans are started during calls, not in init".into(),
            ));
        }
        within("a span name", &name, 1, MAX_NAME_BYTES)?;
        let parent = match parent {
            Some(parent) => self.open(parent)?.context,
            None => self.parent,
        };
        if self.spans.len() >= most as usize {
            return Err(ServiceError::QuotaExceeded(format!(
                "a call may start at most {most} spans (the `trace.spans` grant)"
            )));
        }
        let span = match (&self.tracing, parent) {
            (Some(tracing), Some(parent)) if parent.sampled => {
                let mut span = tracing.span(name, SpanKind::Internal, Some(parent), false);
                span.set("capsule.plugin", Value::from(&*self.plugin));
                Some(span)
            }
            _ => None,
        };
        let context = span.as_ref().map(Span::context).or(parent);
        let number = self.spans.len() as u32;
        self.spans.push(Some(OpenSpan {
            span,
            context,
            attributes: 0,
        }));
        Ok(number)
    }

    fn set_attribute(&mut self, span: u32, key: String, value: String) -> Result<(), ServiceError> {
        self.granted()?;
        within("an attribute key", &key, 1, MAX_KEY_BYTES)?;
        within("an attribute value", &value, 0, MAX_VALUE_BYTES)?;
        if key.starts_with("capsule.") {
            return Err(ServiceError::Invalid(
                "attribute keys under `capsule.` are the host's".into(),
            ));
        }
        let open = self.open(span)?;
        if open.attributes >= MAX_ATTRIBUTES {
            return Err(ServiceError::QuotaExceeded(format!(
                "a span carries at most {MAX_ATTRIBUTES} attributes"
            )));
        }
        open.attributes += 1;
        if let Some(recorded) = &mut open.span {
            recorded.set(key, Value::Text(value));
        }
        Ok(())
    }

    fn end_span(&mut self, span: u32, error: Option<String>) -> Result<(), ServiceError> {
        self.granted()?;
        if let Some(error) = &error {
            within("an error message", error, 0, MAX_VALUE_BYTES)?;
        }
        self.open(span)?;
        let open = self.spans[span as usize].take().expect("checked open");
        if let Some(mut recorded) = open.span {
            if let Some(error) = error {
                recorded.fail(error);
            }
            recorded.end();
        }
        Ok(())
    }
}

/// The `trace` service.
pub(crate) struct Trace;

struct TraceData;

impl HasData for TraceData {
    type Data<'a> = &'a mut TraceState;
}

impl Service for Trace {
    const NAME: &'static str = "trace";
    const IMPORTS: &'static [Import] = &[Import::contract("trace")];
    const BUDGETS: &'static str = "per call: `spans` started (32 unless granted otherwise, \
        at most 256), each named in at most 128 bytes with at most 16 attributes of a 64-byte \
        key and a 256-byte value; past a count `quota-exceeded`. Spans left open end with the \
        call; exported spans wait in the host's bounded export queue";

    type Grant = Option<TraceGrant>;
    type Policy = TracePolicy;
    type Summary = Option<TraceGrant>;
    /// The grant, and the host's tracer.
    type Prepared = Option<(TraceGrant, Option<Arc<Tracing>>)>;
    type State = TraceState;

    fn from_policy(policy: TracePolicy, _: &PolicyContext<'_>) -> Result<Self::Grant, Invalid> {
        Ok(Some(TraceGrant {
            spans: policy.spans.unwrap_or(DEFAULT_SPANS),
        }))
    }

    fn validate(grant: &Self::Grant) -> Result<(), Invalid> {
        match grant {
            Some(grant) => range(
                "spans",
                u64::from(grant.spans),
                1,
                u64::from(MAX_SPANS),
                "spans",
            ),
            None => Ok(()),
        }
    }

    fn availability(grant: &Self::Grant) -> Availability {
        Availability::granted_if(grant.is_some())
    }

    fn summary(grant: &Self::Grant) -> Self::Summary {
        grant.clone()
    }

    fn prepare(
        grant: &Self::Grant,
        context: &PrepareContext<'_>,
    ) -> Result<Self::Prepared, String> {
        Ok(grant
            .clone()
            .map(|grant| (grant, context.host.tracing.clone())))
    }

    fn new_state(
        prepared: &Self::Prepared,
        store: &mut StoreContext<'_>,
    ) -> Result<TraceState, String> {
        Ok(TraceState {
            grant: prepared.as_ref().map(|(grant, _)| grant.clone()),
            tracing: prepared.as_ref().and_then(|(_, tracing)| tracing.clone()),
            plugin: Arc::clone(store.plugin),
            denials: Arc::clone(store.denials),
            parent: None,
            spans: Vec::new(),
            in_call: false,
        })
    }

    fn begin_call(state: &mut TraceState, _limits: &Limits, scope: &super::calls::CallScope) {
        state.end_all();
        state.parent = scope.span;
        state.in_call = true;
    }

    fn end_call(state: &mut TraceState) {
        state.end_all();
        state.in_call = false;
    }

    fn add_to_linker<T: Holds<Self> + Views>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        interfaces_v0_2::trace::add_to_linker::<T, TraceData>(linker, |store| store.state())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::contract::interfaces_v0_2::trace::Host as _;
    use crate::services::harness::Harness;

    fn granted(policy: &str) -> Harness<Trace> {
        let mut trace = Harness::<Trace>::from_policy(policy, Path::new(".")).unwrap();
        Trace::begin_call(
            &mut trace.state,
            &Limits::default(),
            &super::super::calls::CallScope::default(),
        );
        trace
    }

    #[test]
    fn spans_need_the_grant() {
        let mut trace = Harness::<Trace>::not_granted();
        let err = trace.state.start_span("work".into(), None).unwrap_err();
        assert!(matches!(err, ServiceError::Denied(_)), "{err:?}");
    }

    #[test]
    fn a_call_starts_at_most_its_granted_spans_and_the_next_call_starts_afresh() {
        let mut trace = granted("{ spans = 3 }");
        for expected in 0..3 {
            assert_eq!(trace.state.start_span("s".into(), None).unwrap(), expected);
        }
        // Ending one does not give its place back within the call.
        trace.state.end_span(0, None).unwrap();
        let err = trace.state.start_span("s".into(), None).unwrap_err();
        assert!(
            matches!(&err, ServiceError::QuotaExceeded(m) if m.contains("at most 3 spans")),
            "{err:?}"
        );
        Trace::end_call(&mut trace.state);
        Trace::begin_call(
            &mut trace.state,
            &Limits::default(),
            &super::super::calls::CallScope::default(),
        );
        assert_eq!(trace.state.start_span("s".into(), None).unwrap(), 0);
    }

    #[test]
    fn attributes_are_bounded_and_spans_must_be_open() {
        let mut trace = granted("{}");
        let span = trace.state.start_span("work".into(), None).unwrap();
        let child = trace.state.start_span("part".into(), Some(span)).unwrap();
        for i in 0..MAX_ATTRIBUTES {
            trace
                .state
                .set_attribute(child, format!("k{i}"), "v".into())
                .unwrap();
        }
        let err = trace
            .state
            .set_attribute(child, "one.more".into(), "v".into())
            .unwrap_err();
        assert!(matches!(err, ServiceError::QuotaExceeded(_)), "{err:?}");
        for (key, value) in [
            (String::new(), String::new()),
            ("k".repeat(MAX_KEY_BYTES + 1), String::new()),
            ("k".into(), "v".repeat(MAX_VALUE_BYTES + 1)),
            ("capsule.fuel.used".into(), "0".into()),
        ] {
            let err = trace.state.set_attribute(span, key, value).unwrap_err();
            assert!(matches!(err, ServiceError::Invalid(_)), "{err:?}");
        }
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(
            trace.state.start_span(long, None),
            Err(ServiceError::Invalid(_))
        ));
        trace.state.end_span(span, Some("it broke".into())).unwrap();
        for closed in [span, 99] {
            assert!(matches!(
                trace.state.end_span(closed, None),
                Err(ServiceError::Invalid(_))
            ));
            assert!(matches!(
                trace.state.start_span("late".into(), Some(closed)),
                Err(ServiceError::Invalid(_))
            ));
        }
    }

    #[test]
    fn init_starts_no_spans() {
        let mut trace = Harness::<Trace>::from_policy("{}", Path::new(".")).unwrap();
        // The harness begins a call; out of one, as in `init`:
        Trace::end_call(&mut trace.state);
        let err = trace.state.start_span("setup".into(), None).unwrap_err();
        assert!(matches!(err, ServiceError::Invalid(_)), "{err:?}");
    }

    #[test]
    fn the_grant_is_bounded() {
        assert!(Harness::<Trace>::from_policy("{ spans = 0 }", Path::new(".")).is_err());
        assert!(Harness::<Trace>::from_policy("{ spans = 257 }", Path::new(".")).is_err());
        assert!(Harness::<Trace>::from_policy("{ span = 3 }", Path::new(".")).is_err());
    }
}
