//! One loaded version of a plugin and its call path: instances come from a
//! pre-instantiated component, run `init` once, serve calls until
//! `recycle_after` is reached (or at once after any trap), and every call runs
//! under the plugin's limits with every failure classified.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Semaphore, SemaphorePermit};
use wasmtime::{Engine, PoolConcurrencyLimitError, Store};

use crate::artifact::ComponentSummary;
use crate::artifact::manifest::Manifest;
use crate::contract::{
    Event, EventOutcome, Exports, PluginError, PluginInfo, PluginPre, Request, Response,
};
use crate::engine::Metering;
use crate::error::{CallError, CallFailure, OutputStream};
use crate::limits::{Limits, MAX_DESCRIBE_BYTES};
use crate::outcome::{CallOutcome, CallStats, LogRecord};
use crate::runtime::input_schema::InputSchemas;
use crate::runtime::pure::PureOperations;
use crate::sandbox::classify::{FailureContext, classify};
use crate::sandbox::deadline;
use crate::sandbox::store::{StoreSetup, StoreState, arm_deadline, fuel_used, new_store, refuel};
use crate::services::calls::CallScope;
use crate::services::files::Access;
use crate::services::log::LogSink;
use crate::services::response::{ResponseTo, Written};
use crate::services::transaction::{Transaction, lock};
use crate::services::{Grants, PreparedGrants};
use crate::telemetry::profile::Sampler;

/// Public facts about a loaded plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginDetails {
    /// The name calls use.
    pub name: String,
    /// What the plugin's `describe` returned.
    #[serde(serialize_with = "serialize_info")]
    pub info: PluginInfo,
    /// SHA-256 of the component file, as hex.
    pub digest: String,
    /// Ids of the trusted keys that signed it (empty if it loaded unsigned).
    pub signers: Vec<String>,
    /// Whether the compiled code came from the compile cache.
    pub compiled_from_cache: bool,
    /// The contract version the component was built against.
    pub contract_version: Option<String>,
    /// The component's top-level imports and exports.
    pub component: ComponentSummary,
    /// What the plugin may touch.
    pub grants: Grants,
    /// What the plugin may consume.
    pub limits: Limits,
    /// The static manifest the component carries (operations with their
    /// schemas, requirements), if it has one.
    pub manifest: Option<Arc<Manifest>>,
    /// Whether requests are checked against the declared input schemas.
    pub validate_input: bool,
    /// The operations that are pure (the manifest's and the policy's):
    /// answered from the response cache when asked again, and run with
    /// key-value writes and publishing denied.
    pub pure_operations: Vec<String>,
}

fn serialize_info<S: serde::Serializer>(info: &PluginInfo, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut out = s.serialize_struct("PluginInfo", 4)?;
    out.serialize_field("name", &info.name)?;
    out.serialize_field("version", &info.version)?;
    out.serialize_field("description", &info.description)?;
    out.serialize_field("capabilities", &info.capabilities)?;
    out.end()
}

/// One of the plugin's exports, with what it takes and what it returns:
/// [`Describe`], [`Handle`], [`OnEvent`]. [`LoadedPlugin::run`] runs any of
/// them under the plugin's limits and hands back its typed result.
pub(crate) trait Entry: Send {
    /// What the export returns.
    type Output: Send;
    /// Whether this is `describe` at load: not a call (it does not count
    /// toward `recycle_after`), and its result is a description.
    const DESCRIBE: bool = false;
    /// Whether the export runs on a fresh instance without `init`, which is
    /// dropped afterwards: for `manifest`, which must not need the plugin's
    /// configuration or services.
    const BARE: bool = false;
    /// Calls the export on an instance.
    fn call<'a>(
        self,
        handler: &'a Exports,
        store: &'a mut Store<StoreState>,
    ) -> impl Future<Output = wasmtime::Result<Self::Output>> + Send + 'a;
}

/// `describe`: what the plugin says about itself.
pub(crate) struct Describe;

impl Entry for Describe {
    type Output = PluginInfo;
    const DESCRIBE: bool = true;

    fn call<'a>(
        self,
        handler: &'a Exports,
        store: &'a mut Store<StoreState>,
    ) -> impl Future<Output = wasmtime::Result<PluginInfo>> + Send + 'a {
        handler.describe(store)
    }
}

/// `manifest`: the static manifest document, asked for once when signing.
pub(crate) struct ManifestEntry;

impl Entry for ManifestEntry {
    type Output = Option<String>;
    const DESCRIBE: bool = true;
    const BARE: bool = true;

    fn call<'a>(
        self,
        handler: &'a Exports,
        store: &'a mut Store<StoreState>,
    ) -> impl Future<Output = wasmtime::Result<Option<String>>> + Send + 'a {
        handler.manifest(store)
    }
}

/// `handle`: one request.
pub(crate) struct Handle(pub(crate) Request);

impl Entry for Handle {
    type Output = Result<Response, PluginError>;

    async fn call(
        self,
        handler: &Exports,
        store: &mut Store<StoreState>,
    ) -> wasmtime::Result<Self::Output> {
        handler.handle(store, &self.0).await
    }
}

/// `on-event`: one event delivery.
pub(crate) struct OnEvent(pub(crate) Event);

impl Entry for OnEvent {
    type Output = Result<EventOutcome, PluginError>;

    async fn call(
        self,
        handler: &Exports,
        store: &mut Store<StoreState>,
    ) -> wasmtime::Result<Self::Output> {
        handler.on_event(store, &self.0).await
    }
}

/// `health.check`: whether the plugin can do its work; `None` when it has
/// no such export.
pub(crate) struct HealthEntry;

impl Entry for HealthEntry {
    type Output = Option<Result<(), String>>;

    async fn call(
        self,
        handler: &Exports,
        store: &mut Store<StoreState>,
    ) -> wasmtime::Result<Self::Output> {
        handler.health(store).await
    }
}

/// The result of [`LoadedPlugin::run`], with the log and cost either way.
pub(crate) struct Invoked<T> {
    pub(crate) result: Result<T, CallFailure>,
    pub(crate) logs: Vec<LogRecord>,
    /// What the call buffered (kv changes and events), when it returned.
    pub(crate) transaction: Transaction,
    pub(crate) stats: CallStats,
    /// What the call wrote with `response.write`, when it returned.
    pub(crate) written: Written,
}

/// How an event delivery ended.
pub(crate) struct Delivered {
    /// What `on-event` answered, or why it failed.
    pub(crate) outcome: Result<EventOutcome, CallFailure>,
    /// What the delivery buffered (kv changes and the events it
    /// published), to commit if it succeeded.
    pub(crate) transaction: Transaction,
}

/// One live instance: its store, its exports, its log sink and how many
/// calls it has served.
struct Instance {
    store: Store<StoreState>,
    bindings: Exports,
    sink: Arc<LogSink>,
    calls: u32,
    _live: LiveGuard,
}

/// Counts live instances of a plugin version; the count drops with the
/// instance, however it ends.
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        LiveGuard(Arc::clone(counter))
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a fresh instance could not be made ready.
enum SetupError {
    /// The host could not build the store (e.g. a mount vanished).
    Host(String),
    /// Instantiation or `init` trapped.
    Wasm(wasmtime::Error),
    /// `init` returned an error.
    Init(PluginError),
}

impl Instance {
    /// Resets the per-call state: fuel, deadline, log budget, event list,
    /// HTTP request count, and the bytes a host call may hand the host.
    fn prepare(&mut self, limits: &Limits, scope: &CallScope, deadline: Instant) {
        refuel(&mut self.store, limits);
        arm_deadline(&mut self.store);
        self.store.set_hostcall_fuel(limits.host_call_bytes());
        let state = self.store.data_mut();
        state.deadline = deadline;
        // A kept instance's transaction was emptied when its last call
        // ended (`run`), and `init` writes through: only a call that joins
        // an enclosing transaction needs to say so.
        if let Some(enclosing) = &scope.enclosing {
            lock(&state.transaction).begin(Some(Arc::clone(enclosing)));
        }
        state.begin_call(limits, scope);
    }

    async fn invoke<E: Entry>(&mut self, entry: E) -> wasmtime::Result<E::Output> {
        entry.call(&self.bindings, &mut self.store).await
    }
}

/// How often a profiled call is meant to be sampled: the default epoch
/// tick, which is when samples are taken.
const PROFILE_INTERVAL: Duration = crate::engine::Interruption::DEFAULT_EPOCH_TICK;

/// A compiled, linked, described plugin version ready to serve calls.
pub(crate) struct LoadedPlugin {
    pub(crate) name: Arc<str>,
    pub(crate) details: PluginDetails,
    pub(crate) engine: Engine,
    pub(crate) pre: PluginPre<StoreState>,
    pub(crate) grants: Arc<PreparedGrants>,
    metering: Metering,
    slots: Semaphore,
    queued: AtomicUsize,
    idle: Mutex<Vec<Instance>>,
    live: Arc<AtomicUsize>,
    /// Set once a newer version replaced this one or the plugin is shutting
    /// down: instances are no longer kept for reuse.
    retired: AtomicBool,
    /// Every plugin of the host, to free their idle instances when the pool
    /// runs out.
    pool_mates: Arc<IdleInstances>,
    /// The declared input schemas, when the policy asks for them to be
    /// checked.
    pub(crate) input_schemas: Option<Arc<InputSchemas>>,
    /// Whether running a call again repeats nothing outside its
    /// transaction (no HTTP, no writable mount, atomic kv): such a call is
    /// retried when its commit conflicts.
    pub(crate) retry_safe: bool,
    /// The last answer of its `health` check, reused for a while.
    pub(crate) health: super::health::HealthCache,
    /// Its pure operations and the cache of their answers.
    pub(crate) pure: PureOperations,
    /// Whether the component imports `capsule:plugin/response`: only then
    /// can a call write chunks, so only then does a streaming caller need
    /// the call on a task of its own.
    pub(crate) can_stream: bool,
}

/// The idle instances of every loaded plugin version. Idle instances are a
/// cache: when the instance pool is exhausted, they are all dropped to make
/// room, so that no plugin's warm instances keep another plugin from
/// running.
#[derive(Default)]
pub(crate) struct IdleInstances {
    plugins: Mutex<Vec<std::sync::Weak<LoadedPlugin>>>,
}

impl IdleInstances {
    pub(crate) fn register(&self, plugin: &Arc<LoadedPlugin>) {
        let mut plugins = self.plugins.lock().unwrap_or_else(|p| p.into_inner());
        plugins.retain(|weak| weak.strong_count() > 0);
        plugins.push(Arc::downgrade(plugin));
    }

    /// Drops every idle instance of every plugin; returns how many.
    fn release_all(&self) -> usize {
        let plugins: Vec<Arc<LoadedPlugin>> = self
            .plugins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        plugins
            .iter()
            .map(|plugin| {
                std::mem::take(&mut *plugin.idle.lock().unwrap_or_else(|p| p.into_inner())).len()
            })
            .sum()
    }
}

impl LoadedPlugin {
    pub(crate) fn new(
        engine: Engine,
        pre: PluginPre<StoreState>,
        mut details: PluginDetails,
        grants: Arc<PreparedGrants>,
        metering: Metering,
        pool_mates: Arc<IdleInstances>,
    ) -> LoadedPlugin {
        let retry_safe = grants.http.is_none()
            && grants
                .files
                .iter()
                .all(|mount| mount.access == Access::ReadOnly)
            && grants.kv.as_ref().is_none_or(|(kv, _)| kv.atomic);
        let pure = PureOperations::new(
            details.manifest.as_deref(),
            &details.pure_operations,
            &details.limits,
        );
        details.pure_operations = pure.names().map(str::to_owned).collect();
        let can_stream = details
            .component
            .imports
            .iter()
            .any(|import| import.is_contract() && import.item == "response");
        LoadedPlugin {
            pure,
            can_stream,
            metering,
            name: Arc::clone(&grants.plugin),
            grants,
            slots: Semaphore::new(details.limits.max_instances.max(1)),
            queued: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
            live: Arc::new(AtomicUsize::new(0)),
            retired: AtomicBool::new(false),
            pool_mates,
            engine,
            pre,
            details,
            input_schemas: None,
            retry_safe,
            health: super::health::HealthCache::default(),
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.details.limits
    }

    /// What the engine meters.
    pub(crate) fn metering(&self) -> Metering {
        self.metering
    }

    /// Instances alive now (idle in the pool or serving a call).
    pub(crate) fn live_instances(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Calls admitted and running on this version now.
    pub(crate) fn calls_in_flight(&self) -> usize {
        self.limits()
            .max_instances
            .max(1)
            .saturating_sub(self.slots.available_permits())
    }

    /// Whether a call may conflict with another at commit (it reads or
    /// writes atomic kv, or calls plugins that may).
    pub(crate) fn may_conflict(&self) -> bool {
        self.grants.kv.as_ref().is_some_and(|(kv, _)| kv.atomic) || !self.grants.calls.0.is_empty()
    }

    /// Serves one request; what the call buffered comes back with its
    /// outcome, for the caller to commit or join to its own transaction.
    /// A batch's request runs on the instance slot `held` keeps between
    /// items (taken now when it holds none, or holds another version's):
    /// the instance that served the last item serves this one.
    pub(crate) async fn call(
        self: &Arc<Self>,
        request: Request,
        scope: CallScope,
        held: Option<&mut Held>,
    ) -> Result<(CallOutcome, Transaction), CallError> {
        let limits = self.limits();
        let size = request.size();
        if size > limits.max_request_bytes {
            return Err(self.error(CallFailure::InputTooLarge {
                size,
                limit: limits.max_request_bytes,
            }));
        }
        // One function for both, not a helper each calls: the call's future
        // holds the instance's, kilobytes that every extra `async fn` layer
        // would copy again (memcpy is a quarter of a warm call).
        let (_slot, kept) = match held {
            None => {
                let slot = self.admit().await.map_err(|cause| self.error(cause))?;
                (Some(slot), None)
            }
            Some(held) => {
                let lease = match held.0.take() {
                    Some(lease) if Arc::ptr_eq(&lease.plugin, self) => lease,
                    other => {
                        // Another version's slot is given back before this
                        // one's is waited for.
                        drop(other);
                        let permit = self.admit().await.map_err(|cause| self.error(cause))?;
                        permit.forget();
                        Lease {
                            plugin: Arc::clone(self),
                            instance: None,
                        }
                    }
                };
                (None, Some(&mut held.0.insert(lease).instance))
            }
        };
        // After admission, so checks run within the plugin's own
        // concurrency; on the blocking pool, so a costly one (bounded by
        // MAX_VALIDATION_VISITS) does not hold an async worker.
        let request = match &self.input_schemas {
            Some(schemas) => {
                let schemas = Arc::clone(schemas);
                let (request, checked) = tokio::task::spawn_blocking(move || {
                    let checked = schemas.check(&request);
                    (request, checked)
                })
                .await
                .map_err(|err| {
                    self.error(CallFailure::Host(format!("input check failed: {err}")))
                })?;
                checked.map_err(|cause| self.error(cause))?;
                request
            }
            None => request,
        };
        let enclosing = scope.enclosing.clone();
        let pure = scope.pure || self.pure.is_pure(&request.operation);
        // A pure operation's answer is kept whole for the cache, so it is
        // given whole to a streaming caller too.
        let response = match scope.response {
            ResponseTo::Stream(sink) if !pure => ResponseTo::Stream(sink),
            _ => ResponseTo::Whole,
        };
        let scope = CallScope {
            pure,
            response,
            ..scope
        };
        let mut invoked = self.run_kept(Handle(request), scope, kept).await;
        let mut written = std::mem::take(&mut invoked.written);
        let failure = match invoked.result {
            Ok(Ok(response)) => match self.complete_response(response, &mut written) {
                Ok(response) => {
                    let mut transaction = invoked.transaction;
                    // Chunks already with the caller cannot be taken back:
                    // a conflicting commit fails rather than run it again.
                    if written.streamed && !transaction.is_empty() {
                        transaction.escaped = true;
                    }
                    let outcome = CallOutcome {
                        response,
                        logs: invoked.logs,
                        events: Vec::new(),
                        stats: invoked.stats,
                    };
                    return Ok((outcome, transaction));
                }
                Err(too_large) => too_large,
            },
            // The plugin gave up because its response passed the limit.
            Ok(Err(_)) if written.over => CallFailure::OutputTooLarge {
                stream: OutputStream::Response,
                limit: self.limits().max_response_bytes,
            },
            Ok(Err(plugin_error)) => match &invoked.transaction.unavailable {
                // The plugin gave up because a service's backend was down.
                Some(why) => CallFailure::Unavailable(why.clone()),
                None => self.plugin_failure(plugin_error),
            },
            Err(failure) => failure,
        };
        // The caller sees this failure and may act on it: what the call
        // read must still hold when the caller commits (its writes and
        // events are discarded).
        if let Some(enclosing) = &enclosing {
            let mut enclosing = lock(enclosing);
            enclosing.absorb_reads(&invoked.transaction);
            enclosing.escaped |= !self.retry_safe;
        }
        Err(CallError {
            plugin: self.name.to_string(),
            cause: failure,
            logs: invoked.logs,
            stats: invoked.stats,
        })
    }

    /// The response `handle` returned after what it wrote
    /// (`response.write`): the chunks a caller takes whole go before the
    /// payload, and everything together must fit the response budget.
    fn complete_response(
        &self,
        mut response: Response,
        written: &mut Written,
    ) -> Result<Response, CallFailure> {
        let limits = self.limits();
        let streamed = if written.streamed { written.bytes } else { 0 };
        if written.over || response.size().saturating_add(streamed) > limits.max_response_bytes {
            return Err(CallFailure::OutputTooLarge {
                stream: OutputStream::Response,
                limit: limits.max_response_bytes,
            });
        }
        if !written.whole.is_empty() {
            let mut whole = std::mem::take(&mut written.whole);
            whole.append(&mut response.payload);
            response.payload = whole;
        }
        self.check_response(&response)?;
        Ok(response)
    }

    /// A response must fit the response budget: bytes (metadata entries
    /// with their overhead) and number of metadata entries.
    fn check_response(&self, response: &Response) -> Result<(), CallFailure> {
        let limits = self.limits();
        if response.metadata.len() > limits.max_metadata_entries {
            return Err(CallFailure::OutputTooLarge {
                stream: OutputStream::ResponseMetadata,
                limit: limits.max_metadata_entries,
            });
        }
        if response.size() > limits.max_response_bytes {
            return Err(CallFailure::OutputTooLarge {
                stream: OutputStream::Response,
                limit: limits.max_response_bytes,
            });
        }
        Ok(())
    }

    /// The plugin's own error, unless its message is larger than the plugin
    /// may answer with: then that is the failure.
    fn plugin_failure(&self, error: PluginError) -> CallFailure {
        let limit = self.limits().max_response_bytes;
        if error.message().len() > limit {
            return CallFailure::OutputTooLarge {
                stream: OutputStream::Error,
                limit,
            };
        }
        CallFailure::Plugin(error)
    }

    /// Runs the plugin's `health` check on one of its instances, under its
    /// limits and by `deadline` at the latest. `None` without running it
    /// when every instance slot is taken: a check never waits behind calls
    /// nor holds one up.
    pub(crate) async fn run_health(
        &self,
        deadline: Instant,
    ) -> Option<Invoked<Option<Result<(), String>>>> {
        let _slot = self.slots.try_acquire().ok()?;
        let scope = CallScope {
            deadline: Some(deadline),
            ..CallScope::default()
        };
        // What the check buffered (kv writes, events) is dropped with
        // `Invoked`: a health check has no effects.
        Some(self.run(HealthEntry, scope).await)
    }

    /// Delivers one event to `on-event`, under the same limits as a call.
    /// Puts a profiler in `instance`'s store for the call about to run.
    fn start_profile(&self, instance: &mut Instance) {
        match Sampler::new(
            &self.engine,
            &self.name,
            PROFILE_INTERVAL,
            self.pre.component(),
        ) {
            Ok(sampler) => instance.store.data_mut().profiler = Some(Box::new(sampler)),
            Err(err) => tracing::warn!(plugin = %self.name, "cannot profile: {err}"),
        }
    }

    pub(crate) async fn deliver(
        &self,
        event: Event,
        span: Option<crate::telemetry::TraceParent>,
    ) -> Delivered {
        let _slot = match self.admit().await {
            Ok(slot) => slot,
            Err(failure) => {
                return Delivered {
                    outcome: Err(failure),
                    transaction: Transaction::default(),
                };
            }
        };
        // What `on-event` hands on to the calls it makes: the delivery's
        // span (or, when the host does not trace, the publisher's).
        let scope = CallScope {
            span,
            propagated: crate::services::calls::propagated_from(&event.metadata, span),
            ..CallScope::default()
        };
        let invoked = self.run(OnEvent(event), scope).await;
        let outcome = match invoked.result {
            Ok(Ok(outcome)) => self.check_event_outcome(outcome),
            Ok(Err(plugin_error)) => Err(self.plugin_failure(plugin_error)),
            Err(failure) => Err(failure),
        };
        Delivered {
            outcome,
            transaction: invoked.transaction,
        }
    }

    /// A forwarded payload is an event the plugin publishes: it must fit the
    /// same budget; a reject reason is kept with the dead letter, so it must
    /// fit the error budget.
    fn check_event_outcome(&self, outcome: EventOutcome) -> Result<EventOutcome, CallFailure> {
        let limit = self.limits().max_response_bytes;
        match &outcome {
            EventOutcome::Forward(forward) if forward.payload.len() > limit => {
                Err(CallFailure::OutputTooLarge {
                    stream: OutputStream::Response,
                    limit,
                })
            }
            EventOutcome::Reject(reason) if reason.len() > limit => {
                Err(CallFailure::OutputTooLarge {
                    stream: OutputStream::Error,
                    limit,
                })
            }
            _ => Ok(outcome),
        }
    }

    /// Waits for a free instance slot, or fails as `busy` when the queue is
    /// full or the wait outlasts [`Limits::queue_timeout`].
    async fn admit(&self) -> Result<SemaphorePermit<'_>, CallFailure> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(permit);
        }
        let limits = self.limits();
        let busy = |queued| CallFailure::Busy {
            max_instances: limits.max_instances,
            queued,
        };
        let waiting = self.queued.fetch_add(1, Ordering::AcqRel);
        let _leave_queue = QueueGuard(&self.queued);
        if waiting >= limits.max_queued {
            return Err(busy(waiting));
        }
        match tokio::time::timeout(limits.queue_timeout, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(CallFailure::Host("the plugin is shutting down".into())),
            Err(_elapsed) => Err(busy(waiting)),
        }
    }

    /// Starts instances (instantiated, `init` run, each under the plugin's
    /// timeout) until [`Limits::prewarm`] are idle, and returns how many it
    /// started. Stops early, with a warning, when the instance pool has no
    /// room left: warm instances are a cache that the pool reclaims under
    /// pressure anyway. An `init` that fails, traps or outlasts the timeout
    /// fails the load, as it would have failed the first calls.
    pub(crate) async fn prewarm(&self) -> Result<usize, CallFailure> {
        let limits = self.limits();
        let wanted = limits.prewarm.min(limits.max_instances);
        let mut started = 0;
        while self.idle_count() < wanted && !self.retired.load(Ordering::Acquire) {
            let sink = Arc::new(LogSink::new(
                Arc::clone(&self.name),
                limits.max_log_bytes,
                limits.max_log_records,
            ));
            let deadline = Instant::now() + limits.timeout;
            let starting = self.instantiate(&sink, deadline, true);
            let instance = match deadline::within(deadline, starting).await {
                Ok(Ok(instance)) => instance,
                Ok(Err(SetupError::Wasm(err)))
                    if err.downcast_ref::<PoolConcurrencyLimitError>().is_some() =>
                {
                    tracing::warn!(
                        plugin = %self.name,
                        wanted,
                        started,
                        "the instance pool is full: fewer warm instances than `prewarm` asks for"
                    );
                    break;
                }
                Ok(Err(SetupError::Wasm(err))) => return Err(self.classify(&err, &sink, false)),
                Ok(Err(SetupError::Init(err))) => return Err(init_failed(err)),
                Ok(Err(SetupError::Host(reason))) => return Err(CallFailure::Host(reason)),
                Err(_elapsed) => {
                    return Err(CallFailure::Timeout {
                        limit: limits.timeout,
                    });
                }
            };
            self.recycle(instance);
            started += 1;
        }
        Ok(started)
    }

    /// Instances kept warm for the next calls.
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn take_idle(&self) -> Option<Instance> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Keeps a healthy instance for the next call, unless it has served its
    /// `recycle_after` calls or this version is retired.
    fn recycle(&self, instance: Instance) {
        if instance.calls >= self.limits().recycle_after {
            return;
        }
        // `retired` is read under the lock `retire` empties the list under,
        // so no instance is kept after the list was emptied for good.
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if !self.retired.load(Ordering::Acquire) {
            idle.push(instance);
        }
    }

    /// A new instance: a store under the plugin's limits and grants,
    /// instantiated from the pre-linked component, with `init` run.
    async fn instantiate(
        &self,
        sink: &Arc<LogSink>,
        deadline: Instant,
        init: bool,
    ) -> Result<Instance, SetupError> {
        let setup = StoreSetup {
            engine: &self.engine,
            grants: &self.grants,
            limits: self.limits(),
            sink,
            metering: self.metering,
        };
        let live = LiveGuard::new(&self.live);
        let mut store = new_store(&setup, deadline).map_err(SetupError::Host)?;
        let bindings = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(SetupError::Wasm)?;
        if init {
            bindings
                .init(&mut store)
                .await
                .map_err(SetupError::Wasm)?
                .map_err(SetupError::Init)?;
        }
        Ok(Instance {
            store,
            bindings,
            sink: Arc::clone(sink),
            calls: 0,
            _live: live,
        })
    }

    /// Runs one export on a warm instance, or on a fresh one, under the
    /// plugin's deadline. A trapped or timed-out instance is dropped.
    pub(crate) async fn run<E: Entry>(&self, entry: E, scope: CallScope) -> Invoked<E::Output> {
        self.run_kept(entry, scope, None).await
    }

    /// [`LoadedPlugin::run`] on `kept`'s instance when given (a batch's):
    /// one is taken from the pool or made when it holds none, and an
    /// instance that returned goes back there, not to the pool, without
    /// counting toward `recycle_after` (the batch counts once when its
    /// [`Lease`] ends). One that trapped or timed out is dropped, so the
    /// next item gets another.
    async fn run_kept<E: Entry>(
        &self,
        entry: E,
        scope: CallScope,
        mut kept: Option<&mut Option<Instance>>,
    ) -> Invoked<E::Output> {
        let limits = self.limits();
        let started = Instant::now();
        // A call made by another plugin ends by its caller's deadline.
        let deadline = match scope.deadline {
            Some(caller) => caller.min(started + limits.timeout),
            None => started + limits.timeout,
        };
        let allowed = deadline.saturating_duration_since(started);
        let scope = CallScope {
            deadline: Some(deadline),
            ..scope
        };
        let pooled = match kept.as_deref_mut().and_then(Option::take) {
            Some(instance) => Some(instance),
            None if E::BARE => None,
            None => self.take_idle(),
        };
        let fresh = pooled.is_none();
        // `describe` at load is not a call; it does not count toward
        // `recycle_after`.
        let describe = E::DESCRIBE;
        let counts = !describe;
        let sink = match &pooled {
            Some(instance) => Arc::clone(&instance.sink),
            None => Arc::new(LogSink::new(
                Arc::clone(&self.name),
                limits.max_log_bytes,
                limits.max_log_records,
            )),
        };
        sink.begin_call(limits.max_log_bytes, limits.max_log_records);
        let work = async {
            let mut instance = match pooled {
                Some(instance) => instance,
                None => match self.instantiate(&sink, deadline, !E::BARE).await {
                    // The pool is full: other plugins' idle instances make
                    // room before this call is refused as busy.
                    Err(SetupError::Wasm(err))
                        if err.downcast_ref::<PoolConcurrencyLimitError>().is_some()
                            && self.pool_mates.release_all() > 0 =>
                    {
                        self.instantiate(&sink, deadline, !E::BARE).await?
                    }
                    other => other?,
                },
            };
            instance.prepare(limits, &scope, deadline);
            // Samples are taken on the epoch tick.
            if scope.profile.is_some() && self.metering.epoch {
                self.start_profile(&mut instance);
            }
            let result = instance.invoke(entry).await;
            if let Some(request) = &scope.profile
                && let Some(sampler) = instance.store.data_mut().profiler.take()
            {
                *request.finished.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(sampler.profiler);
            }
            Ok::<_, SetupError>((instance, result))
        };
        // Guest code is stopped at its deadline at a fuel yield (this
        // timer, which reads the clock at every yield), by the epoch
        // callback, or on its way back from a host call (the store's call
        // hook); the timer also bounds time spent blocked inside host calls.
        // Dropping the future drops the instance with it.
        let mut callee_fuel = 0;
        let mut memory_bytes = None;
        let mut host_calls = Vec::new();
        let mut written = Written::default();
        let (result, fuel, transaction) = match deadline::within(deadline, work).await {
            Ok(Ok((mut instance, Ok(returned)))) => {
                let fuel = fuel_used(&instance.store, limits);
                let state = instance.store.data_mut();
                state.end_call();
                memory_bytes = Some(state.limiter.held());
                host_calls = state.host_calls.report();
                written = state.response.take();
                let mut transaction = lock(&state.transaction).finish();
                transaction.escaped |= !self.retry_safe;
                callee_fuel = state.calls.callee_fuel;
                match kept {
                    Some(kept) if !E::BARE => *kept = Some(instance),
                    _ => {
                        instance.calls += u32::from(counts);
                        // An instance that never ran `init` must not serve
                        // calls.
                        if !E::BARE {
                            self.recycle(instance);
                        }
                    }
                }
                (Ok(returned), fuel, transaction)
            }
            // Its reads still count for a caller that sees the trap.
            Ok(Ok((trapped, Err(err)))) => {
                memory_bytes = Some(trapped.store.data().limiter.held());
                host_calls = trapped.store.data().host_calls.report();
                (
                    Err(self.classify(&err, &sink, describe)),
                    None,
                    lock(&trapped.store.data().transaction).finish(),
                )
            }
            Ok(Err(SetupError::Wasm(err))) => (
                Err(self.classify(&err, &sink, describe)),
                None,
                Transaction::default(),
            ),
            Ok(Err(SetupError::Init(err))) => (Err(init_failed(err)), None, Transaction::default()),
            Ok(Err(SetupError::Host(reason))) => {
                (Err(CallFailure::Host(reason)), None, Transaction::default())
            }
            Err(_elapsed) => (
                Err(CallFailure::Timeout { limit: allowed }),
                None,
                Transaction::default(),
            ),
        };
        // Compiled code keeps its fuel counter in a register and does not
        // write it back when interrupted, so after a trap the store's counter
        // is stale. Only an exhausted budget is exact.
        let fuel = match &result {
            Err(CallFailure::OutOfFuel { limit }) => Some(*limit),
            _ => fuel,
        };
        let log = sink.end_call();
        Invoked {
            result,
            logs: log.records,
            transaction,
            written,
            stats: CallStats {
                duration: started.elapsed(),
                fuel_used: fuel,
                callee_fuel,
                fuel_limit: limits.fuel.filter(|_| self.metering.fuel),
                memory_bytes,
                memory_limit: limits.memory_bytes,
                logs_refused: log.refused,
                fresh_instance: fresh,
                cached: false,
                host_calls,
            },
        }
    }

    fn classify(&self, err: &wasmtime::Error, sink: &LogSink, describe: bool) -> CallFailure {
        let stderr = sink.stderr_tail();
        let limits = self.limits();
        classify(
            err,
            &FailureContext {
                limits,
                http_granted: self.grants.http.is_some(),
                result: if describe {
                    (OutputStream::Describe, MAX_DESCRIBE_BYTES)
                } else {
                    (OutputStream::Response, limits.max_response_bytes)
                },
                stderr_tail: Some(&stderr),
                max_instances: limits.max_instances,
            },
        )
    }

    /// Stops keeping instances: idle ones get their `shutdown` export called,
    /// all at once and all bounded by the same `until`, then are dropped;
    /// busy ones are dropped when their call ends. Returns by `until` (plus
    /// a moment to collect the tasks), however the plugin's `shutdown`
    /// behaves.
    pub(crate) async fn retire(&self, until: Instant) {
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            self.retired.store(true, Ordering::Release);
            std::mem::take(&mut *idle)
        };
        if idle.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::from_std(until);
        let mut running = tokio::task::JoinSet::new();
        for mut instance in idle {
            let limits = self.limits().clone();
            running.spawn(async move {
                instance.store.data_mut().deadline = until;
                arm_deadline(&mut instance.store);
                refuel(&mut instance.store, &limits);
                instance.store.set_hostcall_fuel(limits.host_call_bytes());
                // Stops a `shutdown` computing (at a fuel yield) or blocked
                // inside a host call at `until`.
                let shutdown = instance.bindings.shutdown(&mut instance.store);
                match deadline::within(until, shutdown).await {
                    Ok(Ok(())) => true,
                    Ok(Err(_)) | Err(_) => false,
                }
            });
        }
        let total = running.len();
        let mut failed = 0;
        let collect = async {
            while let Some(finished) = running.join_next().await {
                if !matches!(finished, Ok(true)) {
                    failed += 1;
                }
            }
        };
        let grace = tokio::time::Duration::from_millis(100);
        if tokio::time::timeout_at(deadline + grace, collect)
            .await
            .is_err()
        {
            running.abort_all();
            failed = total;
        }
        if failed > 0 {
            tracing::warn!(
                plugin = %self.name,
                instances = total,
                failed,
                "plugin shutdown did not finish cleanly before its deadline"
            );
        }
    }

    /// Waits until no call holds an instance slot, or `until` passes.
    pub(crate) async fn drain(&self, until: Instant) -> bool {
        let all = u32::try_from(self.limits().max_instances.max(1)).unwrap_or(u32::MAX);
        matches!(
            tokio::time::timeout_at(
                tokio::time::Instant::from_std(until),
                self.slots.acquire_many(all)
            )
            .await,
            Ok(Ok(_))
        )
    }

    pub(crate) fn error(&self, cause: CallFailure) -> CallError {
        CallError::new(self.name.to_string(), cause)
    }
}

/// An `init` that returns an error fails the call with that error, marked so
/// the caller can tell it from a `handle` failure.
fn init_failed(err: PluginError) -> CallFailure {
    let mark = |msg: String| format!("init failed: {msg}");
    CallFailure::Plugin(match err {
        PluginError::InvalidInput(msg) => PluginError::InvalidInput(mark(msg)),
        PluginError::Unsupported(msg) => PluginError::Unsupported(mark(msg)),
        PluginError::Denied(msg) => PluginError::Denied(mark(msg)),
        PluginError::Failed(msg) => PluginError::Failed(mark(msg)),
    })
}

/// What a batch keeps between its items: the instance slot it was
/// admitted to and the instance serving it. Dropping it hands both back.
#[derive(Default)]
pub(crate) struct Held(Option<Lease>);

/// One version's instance slot, held across several calls, and the
/// instance that served the last of them (none after a trap). When it
/// ends, the instance goes back to the pool counted as one use toward
/// `recycle_after`, and the slot is freed.
pub(crate) struct Lease {
    plugin: Arc<LoadedPlugin>,
    instance: Option<Instance>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(mut instance) = self.instance.take() {
            instance.calls += 1;
            self.plugin.recycle(instance);
        }
        // The permit was forgotten when the lease was taken.
        self.plugin.slots.add_permits(1);
    }
}

/// Leaves the wait queue when dropped, however the wait ended.
struct QueueGuard<'a>(&'a AtomicUsize);

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
