//! A fake of every host service, so `cargo test` runs a plugin natively
//! (feature `testing`).
//!
//! A [`MockHost`] is granted what a test grants it — config values, a kv
//! namespace with quotas, topics to publish to, HTTP answered by a closure —
//! and refuses the rest the way Capsule does, with the same
//! [`ServiceError`] kinds (and, for kv quotas, the same messages). Run the
//! plugin inside it with [`MockHost::call`] (or [`MockHost::deliver`],
//! [`MockHost::run`]), then assert on what it logged, stored and published.
//!
//! ```
//! use capsule_guest::testing::MockHost;
//! use capsule_guest::{Plugin, PluginError, Request, Response, config, kv, log};
//!
//! struct Counter;
//!
//! impl Plugin for Counter {
//!     fn handle(request: Request) -> Result<Response, PluginError> {
//!         let step: i64 = config::get("step")?.map_or(Ok(1), |s| s.parse())
//!             .map_err(|_| PluginError::invalid_input("step is not a number"))?;
//!         let count = kv::increment("count", step)?;
//!         log::info!("count is {count}");
//!         Ok(Response::bytes(count.to_string()))
//!     }
//! }
//!
//! let host = MockHost::new().config("step", "5").kv();
//! assert_eq!(host.call::<Counter>(Request::new("add", ""))?.payload, b"5");
//! assert_eq!(host.call::<Counter>(Request::new("add", ""))?.payload, b"10");
//! assert_eq!(host.logs().last().unwrap().message, "count is 10");
//!
//! // Without a kv grant, the plugin sees Capsule's denial.
//! let denied = MockHost::new().call::<Counter>(Request::new("add", ""));
//! assert!(matches!(denied, Err(PluginError::Denied(_))));
//! # Ok::<(), PluginError>(())
//! ```
//!
//! Each test thread has its own current host; a `MockHost` is cheap to
//! clone and its clones share state. A host service called natively outside
//! `MockHost::run` panics, naming this module.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::http::{HttpError, HttpResponse};
use crate::log::Level;
use crate::metrics::{Kind, Metric};
use crate::plugins::CallError;
use crate::{Event, EventOutcome, Plugin, PluginError, Request, Response, ServiceError};

/// A host service a test can deny on demand with [`MockHost::deny`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    /// `log` (and the `log::*!` macros).
    Log,
    /// `config`.
    Config,
    /// `kv`.
    Kv,
    /// `events`.
    Events,
    /// `http`.
    Http,
    /// Calls to other plugins.
    Plugins,
    /// `metrics`.
    Metrics,
    /// `trace`.
    Trace,
}

/// A span the plugin started (see [`crate::trace`]), as the mock recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedSpan {
    /// Its name.
    pub name: String,
    /// The span it is a child of, as an index into [`MockHost::spans`];
    /// `None`: the call's span.
    pub parent: Option<usize>,
    /// Its attributes, in the order set.
    pub attributes: Vec<(String, String)>,
    /// The message it failed with, if it did.
    pub error: Option<String>,
    /// Whether it ended (every span has once its call returned).
    pub ended: bool,
}

/// A kv namespace's quotas, as an operator grants them. The defaults are
/// Capsule's: 256-byte keys, 64 KiB values, 10 000 keys, 16 MiB in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvQuota {
    /// Largest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Most keys the namespace may hold.
    pub max_keys: u64,
    /// Most bytes (keys plus values) the namespace may hold.
    pub max_total_bytes: u64,
}

impl Default for KvQuota {
    fn default() -> Self {
        KvQuota {
            max_key_bytes: 256,
            max_value_bytes: 64 << 10,
            max_keys: 10_000,
            max_total_bytes: 16 << 20,
        }
    }
}

/// One line the plugin logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its level.
    pub level: Level,
    /// Its text.
    pub message: String,
}

/// One event the plugin published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
}

/// An HTTP request the plugin sent, as a responder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The absolute URL.
    pub url: String,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body, if any.
    pub body: Option<Vec<u8>>,
}

type Responder = Box<dyn FnMut(&HttpRequest) -> Result<HttpResponse, HttpError>>;
type Callee = Box<dyn FnMut(&Request) -> Result<Response, CallError>>;

/// Capsule's per-call log budget: bytes (32 more per line) and lines.
const LOG_BYTES: usize = 64 << 10;
const LOG_LINES: usize = 512;
const LOG_LINE_OVERHEAD: usize = 32;
/// Most events one call may publish, and their payload bytes (the default
/// response limit).
const EVENTS_PER_CALL: usize = 256;
const EVENT_BYTES: usize = 1 << 20;
/// Most keys one `list-keys` answers.
const LIST_LIMIT: usize = 1000;
/// Most keys one `get-many` or `set-many` names.
const MANY_LIMIT: usize = 256;
/// Longest time to live: ten years.
const MAX_TTL_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// The fake host's state.
#[derive(Default)]
pub(crate) struct State {
    denied: Vec<Service>,
    log_bytes: usize,
    logs: Vec<LogLine>,
    call_logs: usize,
    config: BTreeMap<String, serde_json::Value>,
    kv: Option<KvQuota>,
    entries: BTreeMap<String, Vec<u8>>,
    /// When entries stored with a time to live expire.
    expiries: BTreeMap<String, std::time::Instant>,
    publish: Vec<String>,
    published: Vec<Published>,
    call_published: Vec<Published>,
    call_published_bytes: usize,
    responder: Option<Responder>,
    requests: Vec<HttpRequest>,
    callees: BTreeMap<String, Callee>,
    capabilities: BTreeMap<String, String>,
    calls: Vec<(String, Request)>,
    /// The series cap of the metrics grant, if granted.
    metrics: Option<usize>,
    /// The metrics the plugin under test declares ([`Plugin::metrics`]).
    declared: Vec<Metric>,
    series: BTreeMap<(String, Vec<String>), Series>,
    /// The spans-per-call cap of the trace grant, if granted.
    trace: Option<usize>,
    /// Every span started, across calls.
    spans: Vec<RecordedSpan>,
    /// The current call's spans: its span numbers' indexes into `spans`.
    call_spans: Vec<usize>,
    /// Whether `handle` is running (the only entry point that writes a
    /// response).
    handling: bool,
    /// The chunks the last call wrote with `response::write`.
    chunks: Vec<Vec<u8>>,
}

/// One metric series the plugin updated.
#[derive(Debug, Clone, PartialEq)]
enum Series {
    Value(f64),
    Observations(Vec<f64>),
}

/// An in-process stand-in for Capsule's host services. See the module docs.
#[derive(Clone, Default)]
pub struct MockHost {
    state: Rc<RefCell<State>>,
}

impl std::fmt::Debug for MockHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MockHost")
    }
}

thread_local! {
    static CURRENT: RefCell<Option<MockHost>> = const { RefCell::new(None) };
}

/// Runs `f` on the state of the host running code on this thread.
pub(crate) fn with_host<T>(f: impl FnOnce(&mut State) -> T) -> T {
    let host = CURRENT
        .with(|current| current.borrow().clone())
        .unwrap_or_else(|| {
            panic!(
                "a Capsule host service was called natively outside a MockHost: run the plugin \
             with capsule_guest::testing::MockHost::call (or ::run)"
            )
        });
    let mut state = host.state.borrow_mut();
    f(&mut state)
}

impl MockHost {
    /// A host that grants logging and nothing else, like a plugin with no
    /// grants in a policy.
    pub fn new() -> Self {
        MockHost::default()
    }

    /// Sets a config value (a string, as `--set` gives one).
    pub fn config(self, key: &str, value: &str) -> Self {
        self.config_value(key, serde_json::Value::String(value.to_owned()))
    }

    /// Sets a config value of any type, as a policy file writes numbers,
    /// booleans, arrays and tables (`get` answers them as JSON text).
    pub fn config_value(self, key: &str, value: serde_json::Value) -> Self {
        self.state.borrow_mut().config.insert(key.to_owned(), value);
        self
    }

    /// Grants a kv namespace with Capsule's default quotas.
    pub fn kv(self) -> Self {
        self.kv_with(KvQuota::default())
    }

    /// Grants a kv namespace with `quota`.
    pub fn kv_with(self, quota: KvQuota) -> Self {
        self.state.borrow_mut().kv = Some(quota);
        self
    }

    /// Stores `value` under `key` before the plugin runs (quotas are not
    /// checked for seeded entries).
    pub fn kv_entry(self, key: &str, value: impl Into<Vec<u8>>) -> Self {
        self.state
            .borrow_mut()
            .entries
            .insert(key.to_owned(), value.into());
        self
    }

    /// Grants publishing to topics matching `pattern` (`orders.*`, `audit.>`).
    pub fn publish(self, pattern: &str) -> Self {
        self.state.borrow_mut().publish.push(pattern.to_owned());
        self
    }

    /// Grants HTTP, answered by `responder` instead of the network.
    pub fn http(
        self,
        responder: impl FnMut(&HttpRequest) -> Result<HttpResponse, HttpError> + 'static,
    ) -> Self {
        self.state.borrow_mut().responder = Some(Box::new(responder));
        self
    }

    /// Grants calls to plugin `name`, answered by `callee` (which may call
    /// further plugins itself). Calls to plugins not given here are
    /// denied, as Capsule denies edges it was not granted.
    pub fn plugin(
        self,
        name: &str,
        callee: impl FnMut(&Request) -> Result<Response, CallError> + 'static,
    ) -> Self {
        self.state
            .borrow_mut()
            .callees
            .insert(name.to_owned(), Box::new(callee));
        self
    }

    /// Makes plugin `name` (given with [`MockHost::plugin`]) the provider of
    /// `capability` for `call_capability`.
    pub fn capability(self, capability: &str, name: &str) -> Self {
        self.state
            .borrow_mut()
            .capabilities
            .insert(capability.to_owned(), name.to_owned());
        self
    }

    /// Grants metrics with Capsule's default cap of 1000 series.
    pub fn metrics(self) -> Self {
        self.metrics_with(1000)
    }

    /// Grants metrics with at most `series` label combinations.
    pub fn metrics_with(self, series: usize) -> Self {
        self.state.borrow_mut().metrics = Some(series);
        self
    }

    /// Grants tracing with Capsule's default of 32 spans per call.
    pub fn trace(self) -> Self {
        self.trace_with(32)
    }

    /// Grants tracing with at most `spans` spans per call (1 to 256, as a
    /// policy may grant).
    ///
    /// # Panics
    /// If `spans` is outside what a policy may grant.
    pub fn trace_with(self, spans: usize) -> Self {
        assert!(
            (1..=256).contains(&spans),
            "a trace grant allows 1 to 256 spans per call, not {spans}"
        );
        self.state.borrow_mut().trace = Some(spans);
        self
    }

    /// Denies `service` whatever else was granted: every call to it fails
    /// with [`ServiceError::Denied`] (for HTTP, [`HttpError::Denied`]).
    pub fn deny(self, service: Service) -> Self {
        self.state.borrow_mut().denied.push(service);
        self
    }

    /// Runs `f` with this host serving host services on this thread, as
    /// one call: the per-call log and publish budgets start fresh.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        {
            let mut state = self.state.borrow_mut();
            state.log_bytes = 0;
            state.call_logs = 0;
            state.call_published.clear();
            state.call_published_bytes = 0;
            state.call_spans.clear();
            state.chunks.clear();
        }
        struct Restore(Option<MockHost>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                CURRENT.with(|current| *current.borrow_mut() = previous);
            }
        }
        let previous = CURRENT.with(|current| current.borrow_mut().replace(self.clone()));
        let _restore = Restore(previous);
        let answer = f();
        // Like Capsule, spans still open end with the call.
        let mut state = self.state.borrow_mut();
        let open = std::mem::take(&mut state.call_spans);
        for index in open {
            state.spans[index].ended = true;
        }
        answer
    }

    /// Calls `P::handle(request)` as Capsule would. Like Capsule, the events
    /// it published count as published only if the call succeeded.
    /// Its kv writes, too, are kept only if it succeeded (unless the
    /// operator would set `kv.atomic = false`).
    ///
    /// What it wrote with [`crate::response::write`] comes first in the
    /// response, as Capsule gives it to a caller that does not stream;
    /// [`MockHost::chunks`] has the chunks one by one.
    pub fn call<P: Plugin>(&self, request: Request) -> Result<Response, PluginError> {
        self.state.borrow_mut().declared = P::metrics();
        let before = self.kv_snapshot();
        self.state.borrow_mut().handling = true;
        let answer = self.run(|| P::handle(request));
        self.state.borrow_mut().handling = false;
        self.settle(answer.is_ok(), answer.is_ok(), before);
        answer.map(|mut response| {
            let mut whole: Vec<u8> = self.chunks().concat();
            whole.append(&mut response.payload);
            response.payload = whole;
            response
        })
    }

    /// The chunks the last call wrote with [`crate::response::write`], in
    /// order.
    pub fn chunks(&self) -> Vec<Vec<u8>> {
        self.state.borrow().chunks.clone()
    }

    /// Delivers `event` to `P::on_event` as Capsule would; what it published
    /// counts only if it acknowledged or forwarded the event.
    pub fn deliver<P: Plugin>(&self, event: Event) -> Result<EventOutcome, PluginError> {
        self.state.borrow_mut().declared = P::metrics();
        let before = self.kv_snapshot();
        let outcome = self.run(|| P::on_event(event));
        let keep = matches!(outcome, Ok(EventOutcome::Ack | EventOutcome::Forward(_)));
        // Like Capsule, whatever `on-event` answered keeps its kv writes.
        self.settle(keep, outcome.is_ok(), before);
        outcome
    }

    #[allow(clippy::type_complexity)]
    fn kv_snapshot(
        &self,
    ) -> (
        BTreeMap<String, Vec<u8>>,
        BTreeMap<String, std::time::Instant>,
    ) {
        let state = self.state.borrow();
        (state.entries.clone(), state.expiries.clone())
    }

    fn settle(
        &self,
        keep_events: bool,
        keep_kv: bool,
        (entries, expiries): (
            BTreeMap<String, Vec<u8>>,
            BTreeMap<String, std::time::Instant>,
        ),
    ) {
        let mut state = self.state.borrow_mut();
        let events = std::mem::take(&mut state.call_published);
        if keep_events {
            state.published.extend(events);
        }
        if !keep_kv {
            state.entries = entries;
            state.expiries = expiries;
        }
    }

    /// Every line logged so far, in order.
    pub fn logs(&self) -> Vec<LogLine> {
        self.state.borrow().logs.clone()
    }

    /// The value of counter or gauge `name` for `labels`, if the plugin
    /// updated it.
    pub fn metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        match self.series(name, labels)? {
            Series::Value(value) => Some(value),
            Series::Observations(_) => None,
        }
    }

    /// Every value histogram `name` observed for `labels`, in order.
    pub fn observations(&self, name: &str, labels: &[&str]) -> Vec<f64> {
        match self.series(name, labels) {
            Some(Series::Observations(values)) => values,
            _ => Vec::new(),
        }
    }

    fn series(&self, name: &str, labels: &[&str]) -> Option<Series> {
        let key = (
            name.to_owned(),
            labels.iter().map(|l| (*l).to_owned()).collect(),
        );
        self.state.borrow().series.get(&key).cloned()
    }

    /// Every event published by calls that kept them (see [`MockHost::call`]),
    /// in order; inside [`MockHost::run`], also the current call's.
    pub fn published(&self) -> Vec<Published> {
        let state = self.state.borrow();
        let mut all = state.published.clone();
        all.extend(state.call_published.iter().cloned());
        all
    }

    /// What the kv namespace holds under `key`.
    pub fn kv_value(&self, key: &str) -> Option<Vec<u8>> {
        self.state.borrow().entries.get(key).cloned()
    }

    /// Every key the kv namespace holds, in order.
    pub fn kv_keys(&self) -> Vec<String> {
        self.state.borrow().entries.keys().cloned().collect()
    }

    /// Every call the plugin made to another plugin: the target and the
    /// request, in order.
    pub fn calls(&self) -> Vec<(String, Request)> {
        self.state.borrow().calls.clone()
    }

    /// Every span the plugin started, in order.
    pub fn spans(&self) -> Vec<RecordedSpan> {
        self.state.borrow().spans.clone()
    }

    /// Every HTTP request the plugin sent to the responder, in order.
    pub fn requests(&self) -> Vec<HttpRequest> {
        self.state.borrow().requests.clone()
    }
}

fn denied(service: &str) -> ServiceError {
    ServiceError::Denied(format!("{service} was not granted to this plugin"))
}

impl State {
    fn is_denied(&self, service: Service) -> bool {
        self.denied.contains(&service)
    }

    fn trace_cap(&self) -> Result<usize, ServiceError> {
        self.trace
            .filter(|_| !self.is_denied(Service::Trace))
            .ok_or_else(|| denied("tracing"))
    }

    /// The index into `spans` of this call's open span `span`.
    fn open_span(&self, span: u32) -> Result<usize, ServiceError> {
        self.call_spans
            .get(span as usize)
            .copied()
            .filter(|index| !self.spans[*index].ended)
            .ok_or_else(|| ServiceError::Invalid(format!("span {span} is not open in this call")))
    }

    pub(crate) fn start_span(
        &mut self,
        name: &str,
        parent: Option<u32>,
    ) -> Result<u32, ServiceError> {
        let cap = self.trace_cap()?;
        if name.is_empty() || name.len() > 128 {
            return Err(ServiceError::Invalid(format!(
                "a span name of {} bytes: use 1 to 128 bytes",
                name.len()
            )));
        }
        let parent = parent.map(|parent| self.open_span(parent)).transpose()?;
        if self.call_spans.len() >= cap {
            return Err(ServiceError::QuotaExceeded(format!(
                "a call may start at most {cap} spans (the `trace.spans` grant)"
            )));
        }
        self.spans.push(RecordedSpan {
            name: name.to_owned(),
            parent,
            attributes: Vec::new(),
            error: None,
            ended: false,
        });
        self.call_spans.push(self.spans.len() - 1);
        Ok((self.call_spans.len() - 1) as u32)
    }

    pub(crate) fn set_attribute(
        &mut self,
        span: u32,
        key: &str,
        value: &str,
    ) -> Result<(), ServiceError> {
        self.trace_cap()?;
        if key.is_empty() || key.len() > 64 || value.len() > 256 || key.starts_with("capsule.") {
            return Err(ServiceError::Invalid(
                "attribute keys are 1 to 64 bytes, not under `capsule.`; values at most 256 bytes"
                    .into(),
            ));
        }
        let index = self.open_span(span)?;
        let attributes = &mut self.spans[index].attributes;
        if attributes.len() >= 16 {
            return Err(ServiceError::QuotaExceeded(
                "a span carries at most 16 attributes".into(),
            ));
        }
        attributes.push((key.to_owned(), value.to_owned()));
        Ok(())
    }

    pub(crate) fn write_response(&mut self, chunk: &[u8]) -> Result<(), ServiceError> {
        if !self.handling {
            return Err(ServiceError::Invalid(
                "a response is written only while `handle` runs".into(),
            ));
        }
        if !chunk.is_empty() {
            self.chunks.push(chunk.to_vec());
        }
        Ok(())
    }

    pub(crate) fn end_span(&mut self, span: u32, error: Option<&str>) -> Result<(), ServiceError> {
        self.trace_cap()?;
        if error.is_some_and(|error| error.len() > 256) {
            return Err(ServiceError::Invalid(
                "an error message of more than 256 bytes".into(),
            ));
        }
        let index = self.open_span(span)?;
        let ended = &mut self.spans[index];
        ended.ended = true;
        ended.error = error.map(str::to_owned);
        Ok(())
    }

    pub(crate) fn log(&mut self, level: Level, message: &str) -> Result<(), ServiceError> {
        if self.is_denied(Service::Log) {
            return Err(denied("logging"));
        }
        let cost = message.len() + LOG_LINE_OVERHEAD;
        if self.call_logs >= LOG_LINES || self.log_bytes + cost > LOG_BYTES {
            return Err(ServiceError::QuotaExceeded(format!(
                "the log budget of this call is spent ({LOG_BYTES} bytes, {LOG_LINES} lines)"
            )));
        }
        self.call_logs += 1;
        self.log_bytes += cost;
        self.logs.push(LogLine {
            level,
            message: message.to_owned(),
        });
        Ok(())
    }

    pub(crate) fn config_get(&mut self, key: &str) -> Result<Option<String>, ServiceError> {
        if self.is_denied(Service::Config) {
            return Err(denied("config"));
        }
        Ok(self.config.get(key).map(config_text))
    }

    pub(crate) fn config_get_all(&mut self) -> Result<Vec<(String, String)>, ServiceError> {
        if self.is_denied(Service::Config) {
            return Err(denied("config"));
        }
        Ok(self
            .config
            .iter()
            .map(|(k, v)| (k.clone(), config_text(v)))
            .collect())
    }

    pub(crate) fn config_get_json(&mut self) -> Result<String, ServiceError> {
        if self.is_denied(Service::Config) {
            return Err(denied("config"));
        }
        let object: serde_json::Map<String, serde_json::Value> = self
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(serde_json::Value::Object(object).to_string())
    }

    fn kv_quota(&self) -> Result<KvQuota, ServiceError> {
        match self.kv {
            Some(quota) if !self.is_denied(Service::Kv) => Ok(quota),
            _ => Err(ServiceError::Denied(
                "no key-value namespace was granted to this plugin".into(),
            )),
        }
    }

    /// Drops entries whose time to live ran out.
    fn expire(&mut self) {
        let now = std::time::Instant::now();
        let expired: Vec<String> = self
            .expiries
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            self.expiries.remove(&key);
            self.entries.remove(&key);
        }
    }

    pub(crate) fn kv_get(&mut self, key: &str) -> Result<Option<Vec<u8>>, ServiceError> {
        self.kv_quota()?;
        self.expire();
        Ok(self.entries.get(key).cloned())
    }

    pub(crate) fn kv_compare_and_swap(
        &mut self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, ServiceError> {
        self.kv_quota()?;
        self.expire();
        if self.entries.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        self.kv_set(key, new)?;
        Ok(true)
    }

    pub(crate) fn kv_set_with_ttl(
        &mut self,
        key: &str,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<(), ServiceError> {
        if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
            return Err(ServiceError::Invalid(format!(
                "a time to live is 1 to {MAX_TTL_MS} milliseconds"
            )));
        }
        self.kv_set(key, value)?;
        let at = std::time::Instant::now() + std::time::Duration::from_millis(ttl_ms);
        self.expiries.insert(key.to_owned(), at);
        Ok(())
    }

    pub(crate) fn kv_get_many(
        &mut self,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, ServiceError> {
        if keys.len() > MANY_LIMIT {
            return Err(ServiceError::QuotaExceeded(format!(
                "get-many reads at most {MANY_LIMIT} keys"
            )));
        }
        keys.iter().map(|key| self.kv_get(key)).collect()
    }

    pub(crate) fn kv_set_many(
        &mut self,
        entries: &[(String, Vec<u8>)],
    ) -> Result<(), ServiceError> {
        if entries.len() > MANY_LIMIT {
            return Err(ServiceError::QuotaExceeded(format!(
                "set-many writes at most {MANY_LIMIT} keys"
            )));
        }
        let before = (self.entries.clone(), self.expiries.clone());
        for (key, value) in entries {
            if let Err(err) = self.kv_set(key, value) {
                (self.entries, self.expiries) = before;
                return Err(err);
            }
        }
        Ok(())
    }

    pub(crate) fn kv_list_keys_page(
        &mut self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<String>, Option<String>), ServiceError> {
        self.kv_quota()?;
        self.expire();
        let limit = (limit as usize).clamp(1, LIST_LIMIT);
        let mut keys = self.entries.keys().filter(|key| {
            key.starts_with(prefix) && after.is_none_or(|after| key.as_str() > after)
        });
        let page: Vec<String> = keys.by_ref().take(limit).cloned().collect();
        let next = match keys.next() {
            Some(_) => page.last().cloned(),
            None => None,
        };
        Ok((page, next))
    }

    pub(crate) fn kv_set(&mut self, key: &str, value: &[u8]) -> Result<(), ServiceError> {
        let quota = self.kv_quota()?;
        self.expire();
        self.expiries.remove(key);
        check_key(&quota, key)?;
        if value.len() > quota.max_value_bytes {
            return Err(ServiceError::QuotaExceeded(format!(
                "value of {} bytes exceeds the limit of {} bytes",
                value.len(),
                quota.max_value_bytes
            )));
        }
        self.account(&quota, key, value.len())?;
        self.entries.insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    pub(crate) fn kv_delete(&mut self, key: &str) -> Result<bool, ServiceError> {
        self.kv_quota()?;
        self.expire();
        self.expiries.remove(key);
        Ok(self.entries.remove(key).is_some())
    }

    pub(crate) fn kv_list_keys(&mut self, prefix: &str) -> Result<Vec<String>, ServiceError> {
        let (keys, next) = self.kv_list_keys_page(prefix, None, LIST_LIMIT as u32)?;
        if next.is_some() {
            return Err(ServiceError::QuotaExceeded(format!(
                "more than {LIST_LIMIT} keys start with `{prefix}`: page through them with \
                 list-keys-page"
            )));
        }
        Ok(keys)
    }

    pub(crate) fn kv_increment(&mut self, key: &str, delta: i64) -> Result<i64, ServiceError> {
        let quota = self.kv_quota()?;
        self.expire();
        check_key(&quota, key)?;
        let current = match self.entries.get(key) {
            None => 0,
            Some(bytes) => {
                let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    ServiceError::Invalid(format!(
                        "key `{key}` holds {} bytes, not a counter (8-byte integer)",
                        bytes.len()
                    ))
                })?;
                i64::from_le_bytes(bytes)
            }
        };
        let value = current.checked_add(delta).ok_or_else(|| {
            ServiceError::Invalid(format!("incrementing `{key}` by {delta} overflows"))
        })?;
        self.account(&quota, key, 8)?;
        self.entries
            .insert(key.to_owned(), value.to_le_bytes().to_vec());
        Ok(value)
    }

    /// Whether replacing `key`'s value with one of `len` bytes fits the
    /// namespace's key count and total bytes (Capsule's own messages).
    fn account(&self, quota: &KvQuota, key: &str, len: usize) -> Result<(), ServiceError> {
        let previous = self.entries.get(key).map(|value| key.len() + value.len());
        let keys = self.entries.len() as u64 + u64::from(previous.is_none());
        let total: usize = self.entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        let bytes = (total + key.len() + len - previous.unwrap_or(0)) as u64;
        if keys > quota.max_keys {
            return Err(ServiceError::QuotaExceeded(format!(
                "namespace `{}` is full ({} keys)",
                NAMESPACE, quota.max_keys
            )));
        }
        if bytes > quota.max_total_bytes {
            return Err(ServiceError::QuotaExceeded(format!(
                "namespace `{}` would hold {bytes} bytes, over its limit of {} bytes",
                NAMESPACE, quota.max_total_bytes
            )));
        }
        Ok(())
    }

    /// A counter, gauge or histogram update, checked as Capsule checks it.
    pub(crate) fn metric(
        &mut self,
        kind: Kind,
        name: &str,
        labels: &[String],
        value: f64,
    ) -> Result<(), ServiceError> {
        let granted = self.metrics.is_some() && !self.is_denied(Service::Metrics);
        if granted && kind != Kind::Gauge && value < 0.0 {
            return Err(ServiceError::Invalid(format!(
                "{kind:?} `{name}` was given {value}: counters only go up and histograms \
                 count non-negative observations"
            )));
        }
        match self.metric_series(kind, name, labels, value)? {
            Series::Value(total) if kind == Kind::Counter => *total += value,
            Series::Value(gauge) => *gauge = value,
            Series::Observations(values) => values.push(value),
        }
        Ok(())
    }

    /// A gauge's change by `delta`.
    pub(crate) fn gauge_add(
        &mut self,
        name: &str,
        labels: &[String],
        delta: f64,
    ) -> Result<(), ServiceError> {
        if let Series::Value(gauge) = self.metric_series(Kind::Gauge, name, labels, delta)? {
            *gauge += delta;
        }
        Ok(())
    }

    fn metric_series(
        &mut self,
        kind: Kind,
        name: &str,
        labels: &[String],
        value: f64,
    ) -> Result<&mut Series, ServiceError> {
        let Some(cap) = self.metrics.filter(|_| !self.is_denied(Service::Metrics)) else {
            return Err(denied("metrics"));
        };
        let invalid = |message: String| Err(ServiceError::Invalid(message));
        let Some(declared) = self.declared.iter().find(|m| m.name() == name) else {
            return invalid(format!(
                "metric `{name}` is not declared in this plugin's manifest"
            ));
        };
        if declared.kind() != kind {
            return invalid(format!(
                "metric `{name}` is a {:?}, not a {kind:?}",
                declared.kind()
            ));
        }
        if labels.len() != declared.label_names().len() {
            return invalid(format!(
                "metric `{name}` has {} labels; {} values were given",
                declared.label_names().len(),
                labels.len()
            ));
        }
        if labels.iter().any(|l| l.len() > 128) || !value.is_finite() {
            return invalid(format!(
                "metric `{name}`: label values are at most 128 bytes and values finite"
            ));
        }
        let key = (name.to_owned(), labels.to_vec());
        if !self.series.contains_key(&key) && self.series.len() >= cap {
            return Err(ServiceError::QuotaExceeded(format!(
                "this plugin already has {cap} metric series, the most its `metrics.series` \
                 grant allows; existing series keep updating"
            )));
        }
        Ok(self.series.entry(key).or_insert(match kind {
            Kind::Histogram => Series::Observations(Vec::new()),
            Kind::Counter | Kind::Gauge => Series::Value(0.0),
        }))
    }

    pub(crate) fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), ServiceError> {
        validate_topic(topic).map_err(ServiceError::Invalid)?;
        let granted = !self.is_denied(Service::Events)
            && self.publish.iter().any(|pattern| matches(pattern, topic));
        if !granted {
            return Err(ServiceError::Denied(format!(
                "publishing to `{topic}` was not granted to this plugin"
            )));
        }
        if self.call_published.len() >= EVENTS_PER_CALL
            || self.call_published_bytes + payload.len() > EVENT_BYTES
        {
            return Err(ServiceError::QuotaExceeded(format!(
                "a call may publish at most {EVENTS_PER_CALL} events within its output limit"
            )));
        }
        self.call_published_bytes += payload.len();
        self.call_published.push(Published {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
        });
        Ok(())
    }

    pub(crate) fn http(&mut self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let context = format!("{} {}", request.method, request.url);
        if self.is_denied(Service::Http) {
            return Err(HttpError::Denied(format!("{context} (HttpRequestDenied)")));
        }
        let Some(responder) = self.responder.as_mut() else {
            return Err(HttpError::Denied(format!("{context} (HttpRequestDenied)")));
        };
        let answer = responder(&request);
        self.requests.push(request);
        answer
    }
}

/// A call to plugin `target`, answered by its callee closure. The closure
/// runs with the host released, so it may use host services itself.
pub(crate) fn call(target: &str, request: &Request) -> Result<Response, CallError> {
    let callee = with_host(|host| {
        if host.is_denied(Service::Plugins) {
            return None;
        }
        host.calls.push((target.to_owned(), request.clone()));
        host.callees.remove(target)
    });
    let Some(mut callee) = callee else {
        return Err(CallError::Denied(format!(
            "calling `{target}` (operation `{}`) was not granted to this plugin",
            request.operation
        )));
    };
    let answer = callee(request);
    with_host(|host| {
        host.callees.entry(target.to_owned()).or_insert(callee);
    });
    answer
}

/// A call to the provider of `capability`.
pub(crate) fn call_capability(capability: &str, request: &Request) -> Result<Response, CallError> {
    let provider = with_host(|host| host.capabilities.get(capability).cloned());
    match provider {
        Some(provider) => call(&provider, request),
        None => Err(CallError::Denied(format!(
            "calling a provider of `{capability}` was not granted to this plugin"
        ))),
    }
}

/// What `config::get` answers for a value: a string as it is, anything
/// else as JSON text (as Capsule does).
fn config_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The kv namespace a mock grant stands for, in quota messages.
const NAMESPACE: &str = "test";

fn check_key(quota: &KvQuota, key: &str) -> Result<(), ServiceError> {
    if key.is_empty() {
        return Err(ServiceError::Invalid("keys must not be empty".into()));
    }
    if key.len() > quota.max_key_bytes {
        return Err(ServiceError::QuotaExceeded(format!(
            "key of {} bytes exceeds the limit of {} bytes",
            key.len(),
            quota.max_key_bytes
        )));
    }
    Ok(())
}

/// Capsule's topic rule: dot-separated segments of letters, digits, `-`, `_`.
fn validate_topic(topic: &str) -> Result<(), String> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if topic.len() > 255 {
        return Err(format!("topic of {} bytes is longer than 255", topic.len()));
    }
    if !topic.split('.').all(segment_ok) {
        return Err(format!(
            "`{topic}` is not a topic: use dot-separated segments of letters, digits, `-` and `_`"
        ));
    }
    Ok(())
}

/// Whether `topic` matches `pattern` (`*` one segment, a final `>` the rest).
fn matches(pattern: &str, topic: &str) -> bool {
    let mut parts = topic.split('.');
    for segment in pattern.split('.') {
        match (segment, parts.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (literal, Some(part)) if literal == part => {}
            _ => return false,
        }
    }
    parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config, events, http, kv, log, plugins};

    struct Everything;

    impl Plugin for Everything {
        fn handle(request: Request) -> Result<Response, PluginError> {
            match request.operation.as_str() {
                "config" => Ok(Response::bytes(config::get("word")?.unwrap_or_default())),
                "store" => {
                    kv::set("k", &request.payload)?;
                    if request.payload == b"fail" {
                        return Err(PluginError::Failed("after writing".into()));
                    }
                    Ok(Response::bytes(""))
                }
                "publish" => {
                    events::publish("orders.created", &request.payload)?;
                    if request.payload == b"fail" {
                        return Err(PluginError::Failed("after publishing".into()));
                    }
                    Ok(Response::bytes(""))
                }
                "fetch" => {
                    let response = http::get("https://api.example.com/x")?;
                    Ok(Response::bytes(response.body))
                }
                "delegate" => {
                    let sum: i64 = plugins::call_json("math", "add", &[2, 3])?;
                    let twice: i64 = plugins::call_capability_json("doubling", "double", &sum)?;
                    Ok(Response::bytes(twice.to_string()))
                }
                "chatty" => {
                    for i in 0..LOG_LINES + 1 {
                        log::write(Level::Info, &i.to_string())?;
                    }
                    Ok(Response::bytes(""))
                }
                _ => Err(PluginError::Unsupported(request.operation)),
            }
        }
    }

    #[test]
    fn a_failed_call_keeps_no_kv_write_and_pages_walk_every_key() {
        let host = MockHost::new().kv();
        host.call::<Everything>(Request::new("store", "ok"))
            .unwrap();
        host.call::<Everything>(Request::new("store", "fail"))
            .unwrap_err();
        assert_eq!(host.kv_value("k").as_deref(), Some(&b"ok"[..]));
        host.run(|| {
            let entries: Vec<(String, Vec<u8>)> =
                (0..1200).map(|i| (format!("n{i:04}"), vec![])).collect();
            for chunk in entries.chunks(200) {
                let chunk: Vec<(&str, &[u8])> = chunk
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_slice()))
                    .collect();
                kv::set_many(&chunk).unwrap();
            }
            assert!(matches!(
                kv::list_keys("n"),
                Err(ServiceError::QuotaExceeded(_))
            ));
            let all: Vec<String> = kv::keys("n").collect::<Result<_, _>>().unwrap();
            assert_eq!(all.len(), 1200);
            assert!(kv::compare_and_swap("k", Some(b"ok"), b"new").unwrap());
            assert!(!kv::compare_and_swap("k", None, b"x").unwrap());
            kv::set_with_ttl("t", b"v", std::time::Duration::from_millis(1)).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
            assert_eq!(
                kv::get_many(&["t", "k"]).unwrap(),
                [None, Some(b"new".to_vec())]
            );
        });
    }

    #[test]
    fn config_values_and_denials_on_demand() {
        let host = MockHost::new().config("word", "hej");
        let answer = host.call::<Everything>(Request::new("config", ""));
        assert_eq!(answer.unwrap().payload, b"hej");
        let answer = host
            .clone()
            .deny(Service::Config)
            .call::<Everything>(Request::new("config", ""));
        assert!(matches!(answer, Err(PluginError::Denied(_))), "{answer:?}");
    }

    #[test]
    fn kv_quotas_answer_like_capsule() {
        let host = MockHost::new().kv_with(KvQuota {
            max_value_bytes: 4,
            ..KvQuota::default()
        });
        host.call::<Everything>(Request::new("store", "abcd"))
            .unwrap();
        assert_eq!(host.kv_value("k").as_deref(), Some(&b"abcd"[..]));
        let err = host
            .call::<Everything>(Request::new("store", "abcde"))
            .unwrap_err();
        assert_eq!(
            err,
            PluginError::Failed(
                "quota exceeded: value of 5 bytes exceeds the limit of 4 bytes".into()
            )
        );
        let err = MockHost::new()
            .call::<Everything>(Request::new("store", "x"))
            .unwrap_err();
        assert_eq!(
            err,
            PluginError::Denied("no key-value namespace was granted to this plugin".into())
        );
    }

    #[test]
    fn events_of_a_failed_call_are_not_published() {
        let host = MockHost::new().publish("orders.*");
        host.call::<Everything>(Request::new("publish", "ok"))
            .unwrap();
        host.call::<Everything>(Request::new("publish", "fail"))
            .unwrap_err();
        assert_eq!(
            host.published(),
            [Published {
                topic: "orders.created".into(),
                payload: b"ok".to_vec()
            }]
        );
        let err = MockHost::new()
            .call::<Everything>(Request::new("publish", "x"))
            .unwrap_err();
        assert!(matches!(err, PluginError::Denied(_)), "{err:?}");
    }

    #[test]
    fn http_is_answered_by_the_responder_or_denied() {
        let host = MockHost::new().http(|request| {
            Ok(HttpResponse {
                status: 200,
                headers: Vec::new(),
                body: format!("you asked for {}", request.url).into_bytes(),
            })
        });
        let answer = host.call::<Everything>(Request::new("fetch", "")).unwrap();
        assert_eq!(answer.payload, b"you asked for https://api.example.com/x");
        assert_eq!(host.requests()[0].method, "GET");
        let err = MockHost::new()
            .call::<Everything>(Request::new("fetch", ""))
            .unwrap_err();
        assert!(matches!(err, PluginError::Denied(_)), "{err:?}");
    }

    #[test]
    fn plugin_calls_are_answered_by_closures_and_denied_otherwise() {
        let host = MockHost::new()
            .plugin("math", |request| {
                let [a, b]: [i64; 2] = serde_json::from_slice(&request.payload).unwrap();
                Ok(Response::bytes((a + b).to_string()))
            })
            .plugin("doubler", |request| {
                let n: i64 = serde_json::from_slice(&request.payload).unwrap();
                Ok(Response::bytes((n * 2).to_string()))
            })
            .capability("doubling", "doubler");
        let answer = host
            .call::<Everything>(Request::new("delegate", ""))
            .unwrap();
        assert_eq!(answer.payload, b"10");
        let targets: Vec<String> = host.calls().into_iter().map(|(t, _)| t).collect();
        assert_eq!(targets, ["math", "doubler"]);

        let err = MockHost::new()
            .call::<Everything>(Request::new("delegate", ""))
            .unwrap_err();
        assert!(matches!(err, PluginError::Denied(_)), "{err:?}");
        let err = host
            .clone()
            .deny(Service::Plugins)
            .call::<Everything>(Request::new("delegate", ""))
            .unwrap_err();
        assert!(matches!(err, PluginError::Denied(_)), "{err:?}");
    }

    #[test]
    fn the_log_budget_is_per_call() {
        let host = MockHost::new();
        let err = host
            .call::<Everything>(Request::new("chatty", ""))
            .unwrap_err();
        assert!(
            matches!(&err, PluginError::Failed(m) if m.starts_with("quota exceeded: the log budget")),
            "{err:?}"
        );
        assert_eq!(host.logs().len(), LOG_LINES);
        // A new call has a fresh budget.
        host.run(|| log::write(Level::Info, "again")).unwrap();
    }

    struct Shop;

    impl Plugin for Shop {
        fn metrics() -> Vec<Metric> {
            vec![
                Metric::counter("orders", "Orders taken").labels(&["region"]),
                Metric::gauge("queue", "Waiting"),
                Metric::histogram("basket", "Items per order"),
            ]
        }

        fn handle(request: Request) -> Result<Response, PluginError> {
            let region = String::from_utf8_lossy(&request.payload).into_owned();
            crate::metrics::add("orders", &[&region], 1.0)?;
            crate::metrics::set("queue", &[], 4.0)?;
            crate::metrics::gauge_add("queue", &[], -1.0)?;
            crate::metrics::observe("basket", &[], 2.5)?;
            Ok(Response::bytes(""))
        }
    }

    #[test]
    fn metrics_are_checked_against_the_declarations_and_capped() {
        let host = MockHost::new().metrics_with(3);
        host.call::<Shop>(Request::new("buy", "eu")).unwrap();
        host.call::<Shop>(Request::new("buy", "eu")).unwrap();
        assert_eq!(host.metric("orders", &["eu"]), Some(2.0));
        assert_eq!(host.metric("queue", &[]), Some(3.0));
        assert_eq!(host.observations("basket", &[]), [2.5, 2.5]);
        // Three series exist: a new region is past the cap.
        let refused = host.call::<Shop>(Request::new("buy", "us"));
        assert!(
            matches!(refused, Err(PluginError::Failed(_))),
            "{refused:?}"
        );
        host.run(|| {
            let undeclared = crate::metrics::add("nope", &[], 1.0);
            assert!(matches!(undeclared, Err(ServiceError::Invalid(_))));
            let wrong_kind = crate::metrics::set("orders", &["eu"], 1.0);
            assert!(matches!(wrong_kind, Err(ServiceError::Invalid(_))));
            let down = crate::metrics::add("orders", &["eu"], -1.0);
            assert!(matches!(down, Err(ServiceError::Invalid(_))));
        });
        let denied = MockHost::new().call::<Shop>(Request::new("buy", "eu"));
        assert!(matches!(denied, Err(PluginError::Denied(_))), "{denied:?}");
    }

    #[test]
    fn spans_nest_end_with_the_call_and_are_capped() {
        use crate::trace::{Span, in_span};
        let host = MockHost::new().trace_with(3);
        host.run(|| {
            let outer = Span::start("outer");
            outer.set("items", 3).unwrap();
            let inner = outer.child("inner");
            let _left_open = Span::start("left open");
            // The cap: a fourth span in this call is inert.
            assert!(Span::try_start("fourth").is_err());
            assert!(!inner.child("fifth").is_active());
            inner.fail("it broke");
            assert!(matches!(
                outer.set("capsule.fuel", 1),
                Err(ServiceError::Invalid(_))
            ));
        });
        let spans = host.spans();
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0].attributes, vec![("items".into(), "3".into())]);
        assert_eq!(spans[1].parent, Some(0));
        assert_eq!(spans[1].error.as_deref(), Some("it broke"));
        assert!(spans.iter().all(|span| span.ended));
        // The next call starts afresh; `in_span` fails the span with the error.
        let failed: Result<(), String> = host.run(|| in_span("work", |_| Err("no".to_owned())));
        assert!(failed.is_err());
        assert_eq!(host.spans()[3].error.as_deref(), Some("no"));
        // Without the grant, spans are inert and `try_start` says why.
        let ungranted = MockHost::new();
        ungranted.run(|| {
            assert!(matches!(Span::try_start("x"), Err(ServiceError::Denied(_))));
            assert!(!Span::start("x").is_active());
        });
    }

    #[test]
    #[should_panic(expected = "outside a MockHost")]
    fn a_service_outside_a_mock_host_says_how_to_fix_it() {
        let _ = config::get("x");
    }
}
