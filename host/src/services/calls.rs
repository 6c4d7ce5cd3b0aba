//! The `calls` service (`capsule:plugin/plugins`, contract 0.2): a plugin
//! calls another plugin's `handle` through the host, on an edge the
//! operator granted — a plugin (`"storage"`), one of its operations
//! (`"images:resize"`), or whichever plugin provides a capability
//! (`"capability:thumbnail"`). Everything else is `denied`, before the host
//! says whether the target even exists.
//!
//! The callee runs under its own grants and limits, in its own instance
//! and fuel budget, through the same path as any call (pause, circuit
//! breaker, middleware, metrics). Across the edge: the callee's deadline is
//! never later than its caller's, a chain of calls is at most
//! `max_call_depth` plugins deep, one call makes at most `max_calls` calls,
//! and a call back into a plugin already on the chain is refused as a
//! cycle. Each of these is a typed `call-error`, never a hang. The caller's
//! request id and trace context go along; what callees burned is reported
//! apart from the caller's own fuel.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use wasmtime::component::{HasData, Linker};

use super::transaction::SharedTransaction;
use super::{
    Availability, Holds, Import, PolicyContext, PrepareContext, Service, StoreContext, Views,
};
use crate::bounds::{Invalid, plugin_name};
use crate::contract::interfaces_v0_2::plugins as wit;
use crate::contract::{Request, Response, interfaces_v0_2};
use crate::error::CallError;
use crate::limits::Limits;
use crate::outcome::CallOutcome;

/// Metadata a call hands on to the calls it makes: the request id the
/// host's `RequestId` middleware assigns, and W3C trace context.
const PROPAGATED: &[&str] = &["request-id", "traceparent", "tracestate"];

/// The metadata entry that names the calling plugin (set by the host; a
/// plugin cannot forge it).
pub const CALLER_METADATA: &str = "capsule-caller";

/// One edge a plugin may call along.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum CallTarget {
    /// Any operation of one plugin.
    Plugin(String),
    /// One operation of one plugin (`plugin:operation`).
    Operation(String, String),
    /// Any plugin that provides the capability (`capability:NAME`).
    Capability(String),
}

impl CallTarget {
    /// Parses `storage`, `images:resize` or `capability:thumbnail`.
    pub fn parse(text: &str) -> Result<CallTarget, String> {
        let target = match text.split_once(':') {
            Some(("capability", name)) => CallTarget::Capability(name.to_owned()),
            Some((plugin, operation)) => {
                if operation.is_empty() || operation.len() > 256 {
                    return Err(format!("`{text}`: the operation must be 1 to 256 bytes"));
                }
                CallTarget::Operation(plugin.to_owned(), operation.to_owned())
            }
            None => CallTarget::Plugin(text.to_owned()),
        };
        match &target {
            CallTarget::Plugin(name) | CallTarget::Operation(name, _) => plugin_name(name)
                .map_err(|why| format!("`{text}` does not name a plugin: {why}"))?,
            CallTarget::Capability(name) => {
                if name.is_empty() || name.len() > 128 {
                    return Err(format!("`{text}`: a capability is 1 to 128 bytes"));
                }
            }
        }
        Ok(target)
    }

    /// The plugin this edge names, if it names one.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            CallTarget::Plugin(name) | CallTarget::Operation(name, _) => Some(name),
            CallTarget::Capability(_) => None,
        }
    }
}

impl fmt::Display for CallTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallTarget::Plugin(name) => f.write_str(name),
            CallTarget::Operation(name, operation) => write!(f, "{name}:{operation}"),
            CallTarget::Capability(name) => write!(f, "capability:{name}"),
        }
    }
}

impl From<CallTarget> for String {
    fn from(target: CallTarget) -> String {
        target.to_string()
    }
}

/// Where a call sits in a chain of plugins calling plugins.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallScope {
    /// The plugins that called, outermost first (`None` when the host or
    /// an embedder made the call: no allocation on the common path).
    pub(crate) chain: Option<Arc<[Arc<str>]>>,
    /// When the call must be done by: its own deadline, never later than
    /// its caller's.
    pub(crate) deadline: Option<Instant>,
    /// What the call hands on to the calls it makes (request id, trace
    /// context).
    pub(crate) propagated: Vec<(String, String)>,
    /// The transaction the call's effects join when it succeeds (its
    /// caller's, or a transactional pipeline's); `None`: the call commits
    /// its own.
    pub(crate) enclosing: Option<SharedTransaction>,
    /// The call came from another host of the deployment: it runs here or
    /// fails, never forwarded again.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) forwarded: bool,
    /// The call's own span, when the host traces: the parent of the spans
    /// of what the call does (the calls it makes, the events it publishes,
    /// the plugin's own spans).
    pub(crate) span: Option<crate::telemetry::TraceParent>,
    /// A profile of this call's guest stack was asked for (the calls it
    /// makes are not profiled).
    pub(crate) profile: Option<Arc<crate::telemetry::profile::ProfileRequest>>,
    /// The call runs a pure operation, or was made by one: key-value
    /// writes and publishing are denied to it and to the calls it makes.
    pub(crate) pure: bool,
    /// Where the chunks `handle` writes go (`response` service): set by
    /// the plugin's call for its caller, never inherited by the calls it
    /// makes (their responses come back whole).
    pub(crate) response: super::response::ResponseTo,
}

impl CallScope {
    /// The plugins that called, outermost first.
    pub(crate) fn callers(&self) -> &[Arc<str>] {
        self.chain.as_deref().unwrap_or(&[])
    }
}

/// The metadata of `request` that calls hand on; when the call has a span
/// of its own, that span is the `traceparent` handed on.
pub(crate) fn propagated(
    request: &Request,
    span: Option<crate::telemetry::TraceParent>,
) -> Vec<(String, String)> {
    propagated_from(&request.metadata, span)
}

/// [`propagated`] for any metadata (an event's, for its delivery). A span
/// of the call's own replaces the incoming `traceparent`; when that span
/// starts a new trace (no valid parent came in), the incoming `tracestate`
/// belongs to no trace and is not handed on.
pub(crate) fn propagated_from(
    metadata: &[(String, String)],
    span: Option<crate::telemetry::TraceParent>,
) -> Vec<(String, String)> {
    let new_trace = span.is_some() && crate::telemetry::parent_of(metadata).is_none();
    let mut handed: Vec<(String, String)> = metadata
        .iter()
        .filter(|(key, _)| PROPAGATED.contains(&key.as_str()))
        .filter(|(key, _)| span.is_none() || key != crate::telemetry::TRACEPARENT)
        .filter(|(key, _)| !(new_trace && key == "tracestate"))
        .take(PROPAGATED.len())
        .cloned()
        .collect();
    if let Some(span) = span {
        handed.push((crate::telemetry::TRACEPARENT.to_owned(), span.to_string()));
    }
    handed
}

/// A call's future, boxed: calls nest, so their futures do too.
pub(crate) type CallFuture<'a> =
    Pin<Box<dyn Future<Output = Result<CallOutcome, CallError>> + Send + 'a>>;

/// What the `calls` service needs of the runtime (which sits above it):
/// making a nested call and knowing who provides a capability.
pub(crate) trait PluginCaller: Send + Sync {
    /// Calls `target` within `scope` (the chain already includes the caller).
    fn call(&self, scope: CallScope, target: String, request: Request) -> CallFuture<'_>;
    /// The loaded plugins that provide `capability`, by name.
    fn providers(&self, capability: &str) -> Vec<String>;
    /// The plugin the operator pinned for `capability`, if any.
    fn pinned(&self, capability: &str) -> Option<String>;
}

/// Per-store state of the `calls` service.
pub(crate) struct CallsState {
    plugin: Arc<str>,
    denials: Arc<super::Denials>,
    grant: Arc<Vec<CallTarget>>,
    caller: Arc<dyn PluginCaller>,
    /// The running call's place in its chain.
    scope: CallScope,
    max_calls: u32,
    max_depth: u32,
    /// Calls made during the running call.
    made: u32,
    /// Fuel the running call's callees burned.
    pub(crate) callee_fuel: u64,
    /// The store's transaction, which callees join.
    transaction: SharedTransaction,
    /// Whether a call is running (not `init`).
    in_call: bool,
}

impl CallsState {
    /// Why this plugin may not call `target` with `operation`, if it may not.
    fn refusal(&self, target: &str, operation: &str) -> Option<wit::CallError> {
        let granted = self.grant.iter().any(|edge| match edge {
            CallTarget::Plugin(name) => name == target,
            CallTarget::Operation(name, op) => name == target && op == operation,
            CallTarget::Capability(capability) => self
                .caller
                .providers(capability)
                .iter()
                .any(|provider| provider == target),
        });
        if !granted {
            return Some(wit::CallError::Denied(format!(
                "calling `{target}` (operation `{operation}`) was not granted to this plugin"
            )));
        }
        None
    }

    /// Depth and fan-out, before anything is resolved.
    fn over_limits(&self) -> Option<wit::CallError> {
        // This plugin is at depth chain + 1; its callee one deeper.
        let depth = self.scope.callers().len() as u64 + 2;
        if depth > u64::from(self.max_depth) {
            return Some(wit::CallError::Refused(format!(
                "the call would be {depth} plugins deep, over the limit of {} (`max_call_depth`)",
                self.max_depth
            )));
        }
        if self.made >= self.max_calls {
            return Some(wit::CallError::Refused(format!(
                "a call may make at most {} calls to other plugins (`max_calls`)",
                self.max_calls
            )));
        }
        None
    }

    async fn call_checked(
        &mut self,
        target: String,
        mut request: Request,
    ) -> Result<Response, wit::CallError> {
        let on_chain = self
            .scope
            .callers()
            .iter()
            .chain(std::iter::once(&self.plugin))
            .any(|plugin| **plugin == *target);
        if on_chain {
            let mut path: Vec<&str> = self.scope.callers().iter().map(|p| &**p).collect();
            path.extend([&*self.plugin, &target]);
            return Err(wit::CallError::Refused(format!(
                "a cycle: {}",
                path.join(" → ")
            )));
        }
        self.made += 1;
        request
            .metadata
            .retain(|(key, _)| key != CALLER_METADATA && !PROPAGATED.contains(&key.as_str()));
        request
            .metadata
            .extend(self.scope.propagated.iter().cloned());
        request
            .metadata
            .push((CALLER_METADATA.to_owned(), self.plugin.to_string()));
        let mut chain: Vec<Arc<str>> = self.scope.callers().to_vec();
        chain.push(Arc::clone(&self.plugin));
        let scope = CallScope {
            chain: Some(chain.into()),
            deadline: self.scope.deadline,
            propagated: self.scope.propagated.clone(),
            // `init` is not a call: what it calls commits on its own.
            enclosing: self.in_call.then(|| Arc::clone(&self.transaction)),
            forwarded: false,
            span: None,
            profile: None,
            pure: self.scope.pure,
            response: super::response::ResponseTo::Whole,
        };
        let result = self.caller.call(scope, target, request).await;
        let stats = match &result {
            Ok(outcome) => &outcome.stats,
            Err(err) => &err.stats,
        };
        self.callee_fuel = self
            .callee_fuel
            .saturating_add(stats.fuel_used.unwrap_or(0))
            .saturating_add(stats.callee_fuel);
        match result {
            Ok(outcome) => Ok(outcome.response),
            Err(err) => Err(match err.cause {
                crate::error::CallFailure::Plugin(error) => wit::CallError::Plugin(error),
                crate::error::CallFailure::UnknownPlugin => {
                    wit::CallError::UnknownTarget(format!("no plugin `{}` is loaded", err.plugin))
                }
                ref cause => wit::CallError::Failed(wit::CallFailure {
                    kind: err.kind().as_str().to_owned(),
                    message: cause.to_string(),
                }),
            }),
        }
    }
}

impl interfaces_v0_2::plugins::Host for CallsState {
    async fn call(&mut self, target: String, request: Request) -> Result<Response, wit::CallError> {
        if let Some(refused) = self.over_limits() {
            return Err(refused);
        }
        if let Some(denied) = self.refusal(&target, &request.operation) {
            // Cut first: a refused call costs the host no more than the
            // cut, however long the plugin's strings.
            self.denials.record(
                "calls",
                &format!(
                    "calling `{}` (operation `{}`) was refused",
                    crate::text::for_log(&target, 128),
                    crate::text::for_log(&request.operation, 128)
                ),
            );
            return Err(denied);
        }
        self.call_checked(target, request).await
    }

    async fn call_capability(
        &mut self,
        capability: String,
        request: Request,
    ) -> Result<Response, wit::CallError> {
        if let Some(refused) = self.over_limits() {
            return Err(refused);
        }
        let granted = self
            .grant
            .iter()
            .any(|edge| matches!(edge, CallTarget::Capability(c) if *c == capability));
        if !granted {
            let message = format!(
                "calling a provider of `{}` was not granted to this plugin",
                crate::text::for_log(&capability, 128)
            );
            self.denials.record("calls", &message);
            return Err(wit::CallError::Denied(message));
        }
        let target = match self.caller.pinned(&capability) {
            Some(pinned) => pinned,
            None => {
                let mut providers = self.caller.providers(&capability);
                match providers.len() {
                    0 => {
                        return Err(wit::CallError::UnknownTarget(format!(
                            "no loaded plugin provides `{capability}`"
                        )));
                    }
                    1 => providers.remove(0),
                    _ => {
                        return Err(wit::CallError::Ambiguous(format!(
                            "{} plugins provide `{capability}` ({}) and the policy pins none \
                             (`[capabilities] {capability} = \"...\"`)",
                            providers.len(),
                            providers.join(", ")
                        )));
                    }
                }
            }
        };
        self.call_checked(target, request).await
    }
}

/// The `calls` service.
pub(crate) struct Calls;

struct CallsData;

impl HasData for CallsData {
    type Data<'a> = &'a mut CallsState;
}

impl Service for Calls {
    const NAME: &'static str = "calls";
    const IMPORTS: &'static [Import] = &[Import::contract("plugins")];
    const BUDGETS: &'static str = "per call: `max_calls` calls (16); per chain: \
        `max_call_depth` plugins (8), no plugin twice; a callee's deadline is never later than \
        its caller's; the callee spends its own fuel, memory and instances";

    type Grant = Vec<CallTarget>;
    type Policy = Vec<String>;
    type Summary = Vec<CallTarget>;
    type Prepared = (Arc<Vec<CallTarget>>, Arc<dyn PluginCaller>);
    type State = CallsState;

    fn from_policy(
        targets: Vec<String>,
        _context: &PolicyContext<'_>,
    ) -> Result<Self::Grant, Invalid> {
        targets
            .iter()
            .enumerate()
            .map(|(i, text)| {
                CallTarget::parse(text).map_err(|why| Invalid::new(format!("[{i}]"), why))
            })
            .collect()
    }

    fn validate(targets: &Self::Grant) -> Result<(), Invalid> {
        if targets.len() > 256 {
            return Err(Invalid::new("", "at most 256 edges"));
        }
        Ok(())
    }

    fn availability(targets: &Self::Grant) -> Availability {
        Availability::granted_if(!targets.is_empty())
    }

    fn summary(targets: &Self::Grant) -> Self::Summary {
        targets.clone()
    }

    fn prepare(
        targets: &Self::Grant,
        context: &PrepareContext<'_>,
    ) -> Result<Self::Prepared, String> {
        Ok((Arc::new(targets.clone()), Arc::clone(&context.host.caller)))
    }

    fn new_state(
        (targets, caller): &Self::Prepared,
        store: &mut StoreContext<'_>,
    ) -> Result<CallsState, String> {
        Ok(CallsState {
            plugin: Arc::clone(store.plugin),
            denials: Arc::clone(store.denials),
            grant: Arc::clone(targets),
            caller: Arc::clone(caller),
            scope: CallScope::default(),
            max_calls: store.limits.max_calls,
            max_depth: store.limits.max_call_depth,
            made: 0,
            callee_fuel: 0,
            transaction: Arc::clone(store.transaction),
            in_call: false,
        })
    }

    fn begin_call(state: &mut CallsState, limits: &Limits, scope: &CallScope) {
        state.scope = scope.clone();
        state.max_calls = limits.max_calls;
        state.max_depth = limits.max_call_depth;
        state.made = 0;
        state.callee_fuel = 0;
        state.in_call = true;
    }

    fn add_to_linker<T: Holds<Self> + Views>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        interfaces_v0_2::plugins::add_to_linker::<T, CallsData>(linker, |store| store.state())
    }
}
