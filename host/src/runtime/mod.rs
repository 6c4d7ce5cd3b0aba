//! The host: one engine and linker shared by every plugin, the table of
//! loaded plugins, and the entry points to load and call them.

mod apply;
mod breaker;
mod bus;
mod call;
mod cluster;
mod commit;
mod delivery;
pub(crate) mod dependencies;
mod health;
pub(crate) mod history;
pub(crate) mod input_schema;
mod jobs;
pub(crate) mod load;
mod metrics;
mod middleware;
mod nested;
mod pipeline;
mod plugin;
mod pure;
mod queue;
mod registry;
#[cfg(feature = "nats")]
mod remote;
mod rollout;
#[cfg(feature = "nats")]
mod shared_bus;
pub(crate) mod spec;
mod stream;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::Linker;

pub use apply::{ApplyError, FailedChange, PolicyChanges};
pub use bus::{BusEvent, DeadLetter, Subscription};
pub use cluster::{Cluster, ClusterHost, ServedPlugin};
pub use health::{
    BackendHealth, HEALTH_TIMEOUT, HEALTH_TTL, HealthCheck, NotLoaded, PluginHealth,
    PluginHealthState, Readiness,
};
pub use history::{HistorySnapshot, LastError, Sample};
pub use jobs::{Job, JobError, JobFailure, JobResult, JobRunner, JobState, JobSubmission};
pub use middleware::{CallContext, Middleware, REQUEST_ID, RequestId};
pub use pipeline::{Pipeline, PipelineError};
pub use plugin::PluginDetails;
pub use registry::{PluginState, PluginStatus};
pub use rollout::{RolloutError, RolloutPlan, RolloutState, RolloutStatus, TrackStats};
pub use spec::{PluginSource, PluginSpec};
pub use stream::{CallStream, StreamItem};

use crate::admission::TrustPolicy;
use crate::artifact::PublicKey;
use crate::artifact::cache::{
    CacheError, CacheKey, CacheKeyError, CacheStats, CompileCache, KeySource,
};
use crate::backend::{Backend, BackendError};
use crate::engine::{self, AllocationMode, EngineOptions, Interruption};
use crate::error::{LoadError, LoadFailure};
use crate::limits::BusOptions;
use crate::limits::Limits;
use crate::policy::Policy;
use crate::policy::validate;
use crate::sandbox::store;
use crate::services::HostShared;
use crate::services::kv::{KvError, KvStore};
use crate::text::chain;
use bus::Bus;
use call::Dispatch;
use load::Loader;
use metrics::Metrics;
use registry::Registry;
use registry::Slot;

/// Failure to build a [`Host`].
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// wasmtime rejected the engine configuration.
    #[error("cannot create the wasmtime engine: {0}")]
    Engine(String),
    /// The host services could not be linked.
    #[error("cannot link host services: {0}")]
    Link(String),
    /// The epoch ticker thread could not start.
    #[error("cannot start the epoch ticker: {0}")]
    Ticker(#[from] std::io::Error),
    /// The compile cache directory is unusable.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The compile cache key cannot be read, created or trusted.
    #[error(transparent)]
    CacheKey(#[from] CacheKeyError),
    /// The key-value store cannot be opened.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The shared backend (`[host.backend]`) cannot be reached.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A setting is out of range (the engine, the bus or the default limits).
    #[error("invalid host settings: {0}")]
    Config(#[from] crate::bounds::Invalid),
    /// The audit log's file cannot be opened.
    #[error("{0}")]
    Audit(String),
    /// The trace exporter (`[host.telemetry]`) cannot start.
    #[error("telemetry: {0}")]
    Telemetry(String),
}

/// Configures and builds a [`Host`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use capsule_host::{Host, Limits, PluginSpec, Request};
/// use std::time::Duration;
///
/// let host = Host::builder()
///     .default_limits(Limits { timeout: Duration::from_secs(2), ..Limits::default() })
///     .build()?;
/// host.load(PluginSpec::from_path("target/plugins/hello.wasm")).await?;
/// let outcome = host.call("hello", Request::new("greet", r#"{"name":"Ada"}"#)).await?;
/// println!("{}", String::from_utf8_lossy(&outcome.response.payload));
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct HostBuilder {
    engine: EngineOptions,
    default_limits: Limits,
    trust: TrustPolicy,
    cache_dir: Option<PathBuf>,
    cache_key: Option<KeySource>,
    data_dir: Option<PathBuf>,
    backend: Backend,
    bus: BusOptions,
    middleware: Vec<Arc<dyn Middleware>>,
    audit: crate::audit::AuditOptions,
    api_keys: Vec<crate::access::ApiKey>,
    telemetry: crate::telemetry::TelemetryOptions,
}

impl std::fmt::Debug for HostBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBuilder")
            .field("engine", &self.engine)
            .field("default_limits", &self.default_limits)
            .field("cache_dir", &self.cache_dir)
            .field("data_dir", &self.data_dir)
            .field("middleware", &self.middleware.len())
            .finish_non_exhaustive()
    }
}

impl HostBuilder {
    /// A builder configured from a validated policy's `[host]` section:
    /// trusted keys, defaults, bus, engine, the compile cache (with the
    /// policy's key file, or the user's default) and the data directory.
    pub fn from_policy(policy: &Policy) -> HostBuilder {
        let host = &policy.host;
        let mut builder = HostBuilder::default()
            .engine_options(host.engine.clone())
            .default_limits(host.default_limits.clone())
            .bus_options(host.bus.clone())
            .allow_unsigned(host.allow_unsigned)
            .allow_partial_signatures(host.allow_partial_signatures);
        for (_, key) in &host.trusted_keys {
            builder = builder.trust(key.clone());
        }
        if let Some(dir) = &host.cache_dir {
            builder = builder.cache_dir(dir);
            if let Some(key) = host
                .cache_key
                .clone()
                .or_else(crate::artifact::cache::CacheKey::default_path)
            {
                builder = builder.cache_key_file(key);
            }
        }
        if let Some(dir) = &host.data_dir {
            builder = builder.data_dir(dir);
        }
        builder
            .backend(host.backend.clone())
            .audit(host.audit.clone())
            .api_keys(host.api_keys.clone())
            .telemetry(host.telemetry.clone())
    }

    /// Where traces go (`[host.telemetry]`); none by default.
    pub fn telemetry(mut self, options: crate::telemetry::TelemetryOptions) -> Self {
        self.telemetry = options;
        self
    }

    /// Who may use the HTTP API (`[[host.api_keys]]`) from the start;
    /// `Host::apply_policy` replaces them.
    pub fn api_keys(mut self, keys: Vec<crate::access::ApiKey>) -> Self {
        self.api_keys = keys;
        self
    }

    /// Where the audit log goes (`[host.audit]`); memory only by default.
    pub fn audit(mut self, options: crate::audit::AuditOptions) -> Self {
        self.audit = options;
        self
    }

    /// Event bus settings: queue sizes, retry attempts, dead letters kept.
    pub fn bus_options(mut self, options: BusOptions) -> Self {
        self.bus = options;
        self
    }

    /// Adds a middleware that runs around every call, in the order added.
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }

    /// Where the key-value store lives: in this process (the default) or
    /// in NATS, shared with other hosts. With NATS, the data directory is
    /// not used for it.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Keeps persistent plugin data (the key-value store, `kv.redb`) in
    /// `dir`. Without it, key-value data lives only as long as the host.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Trusts `key` to sign plugins. By default a plugin loads only if a
    /// trusted key signed all of it.
    pub fn trust(mut self, key: PublicKey) -> Self {
        if !self.trust.keys.contains(&key) {
            self.trust.keys.push(key);
        }
        self
    }

    /// Lets plugins without a valid trusted signature load anyway, with a
    /// warning on every load. Meant for development only.
    pub fn allow_unsigned(mut self, allow: bool) -> Self {
        self.trust.allow_unsigned = allow;
        self
    }

    /// Accepts trusted signatures that cover only part of a plugin (the
    /// sections before a `signature_delimiter`). Off by default: unsigned
    /// sections could change what the plugin does.
    pub fn allow_partial_signatures(mut self, allow: bool) -> Self {
        self.trust.allow_partial = allow;
        self
    }

    /// Caches compiled plugins in `dir` (created with mode 0700), so a plugin
    /// loaded again is deserialized instead of recompiled. Entries are
    /// authenticated with the [cache key](Self::cache_key); without one, a
    /// random key for this process is used (with a warning), so entries
    /// from other processes are recompiled, never trusted.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Authenticates compile cache entries with `key`: only entries written
    /// under it are ever deserialized. Keep it outside the cache directory.
    pub fn cache_key(mut self, key: CacheKey) -> Self {
        self.cache_key = Some(KeySource::Key(key));
        self
    }

    /// Takes the compile cache key from `path` when the host is built
    /// (creating it, mode 0600, if it does not exist); see
    /// [`CacheKey::load_or_create`]. Only read if a cache directory is set.
    pub fn cache_key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cache_key = Some(KeySource::File(path.into()));
        self
    }

    /// Limits for plugins whose spec sets none.
    pub fn default_limits(mut self, limits: Limits) -> Self {
        self.default_limits = limits;
        self
    }

    /// Engine-wide settings: wasm stack, fuel, how guest code is
    /// interrupted at its deadline, pooling.
    pub fn engine_options(mut self, options: EngineOptions) -> Self {
        self.engine = options;
        self
    }

    /// Builds the engine, links the host services and starts the epoch
    /// ticker when epochs interrupt guest code.
    pub fn build(self) -> Result<Host, HostError> {
        crate::tls::install_provider();
        validate::engine(&self.engine).map_err(|err| err.within("pool"))?;
        validate::bus(&self.bus).map_err(|err| err.within("events"))?;
        validate::limits(&self.default_limits).map_err(|err| err.within("limits"))?;
        let (engine, allocation) =
            engine::build(&self.engine).map_err(|err| HostError::Engine(chain(&err)))?;
        let mut linker = Linker::new(&engine);
        store::add_to_linker(&mut linker).map_err(|err| HostError::Link(chain(&err)))?;
        let audit =
            Arc::new(crate::audit::AuditLog::new(self.audit.clone()).map_err(HostError::Audit)?);
        let tracing = crate::telemetry::Tracing::start(&self.telemetry)
            .map_err(HostError::Telemetry)?
            .map(Arc::new);
        let cache = match &self.cache_dir {
            Some(dir) => Some(CompileCache::open(
                dir,
                KeySource::resolve(self.cache_key.as_ref())?,
            )?),
            None => None,
        };
        #[cfg(feature = "nats")]
        let (mut shared_events, mut shared_calls) = (None, None);
        let kv_store = Arc::new(match (&self.backend, &self.data_dir) {
            #[cfg(feature = "nats")]
            (Backend::Nats(options), _) => {
                let (store, events, calls) = nats_backend(options, &self.bus)?;
                shared_events = Some(Arc::new(events));
                shared_calls = Some(Arc::new(calls));
                store
            }
            #[cfg(not(feature = "nats"))]
            (Backend::Nats(options), _) => {
                return Err(HostError::Backend(BackendError {
                    kind: "nats",
                    url: options.url.clone(),
                    reason: "this build of Capsule has no NATS support (the `nats` feature)".into(),
                }));
            }
            (Backend::Embedded, Some(dir)) => KvStore::open(&dir.join("kv.redb"))?,
            (Backend::Embedded, None) => KvStore::in_memory(),
        });
        KvStore::start_sweeper(&kv_store);
        match self.engine.interruption {
            Interruption::Epoch { tick } => engine::start_epoch_ticker(&engine, tick)?,
            Interruption::FuelYield { .. } if self.engine.consume_fuel => {}
            Interruption::FuelYield { .. } | Interruption::Off => tracing::warn!(
                "nothing interrupts guest code: it cannot be stopped at its deadline"
            ),
        }
        if self.trust.allow_unsigned {
            tracing::warn!("this host loads plugins without a valid trusted signature");
        }
        let host = Host {
            inner: Arc::new_cyclic(|inner| HostInner {
                loader: Loader {
                    engine,
                    linker,
                    allocation,
                    pooling: self.engine.pooling.clone(),
                    default_limits: self.default_limits,
                    trust: self.trust,
                    cache,
                    services: HostShared {
                        kv_store,
                        caller: Arc::new(nested::HostCaller(inner.clone())),
                        audit: Arc::clone(&audit),
                        metric_catalog: Arc::default(),
                        tracing,
                    },
                    persistent_kv: self.data_dir.is_some()
                        || matches!(self.backend, Backend::Nats(_)),
                    metering: self.engine.metering(),
                    pool_mates: Arc::default(),
                },
                registry: Registry::default(),
                dispatch: Dispatch {
                    middleware: self.middleware,
                    metrics: Metrics::default(),
                },
                bus: Bus::new(self.bus),
                #[cfg(feature = "nats")]
                shared_events,
                #[cfg(feature = "nats")]
                shared_calls,
                #[cfg(feature = "nats")]
                signals: remote::Signals::default(),
                started_at: cluster::unix_now(),
                applied_host: std::sync::Mutex::new(None),
                access: arc_swap::ArcSwap::from_pointee(crate::access::AccessTable::new(
                    &self.api_keys,
                )),
                audit,
                changing: tokio::sync::Mutex::new(()),
                commits: commit::Gates::default(),
                stopped: std::sync::atomic::AtomicBool::new(false),
                not_loaded: std::sync::Mutex::default(),
                jobs: jobs::Jobs::default(),
            }),
        };
        #[cfg(feature = "nats")]
        host.start_presence();
        Ok(host)
    }
}

/// The key-value store, the event streams and the calls between hosts in
/// NATS JetStream, on one connection (and one more serving calls).
#[cfg(feature = "nats")]
fn nats_backend(
    options: &crate::backend::NatsOptions,
    bus: &BusOptions,
) -> Result<
    (
        KvStore,
        crate::backend::events::NatsEvents,
        crate::backend::calls::NatsCalls,
    ),
    HostError,
> {
    let failed = |reason| BackendError {
        kind: "nats",
        url: options.url.clone(),
        reason,
    };
    let connection = crate::backend::NatsConnection::connect(options)?;
    let events = crate::backend::events::NatsEvents::open(
        Arc::clone(&connection),
        bus.queue_bytes,
        bus.dead_letters,
        bus.dead_letter_bytes,
    )
    .map_err(failed)?;
    let calls = crate::backend::calls::NatsCalls::open(Arc::clone(&connection)).map_err(failed)?;
    let kv = crate::services::kv::NatsKv::open(connection).map_err(failed)?;
    Ok((KvStore::with_backend(kv), events, calls))
}

/// Runs plugins. Cheap to clone; clones share the engine and the plugins.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

/// The host is a small facade over its parts, each in its own module.
struct HostInner {
    /// Turns specs into loaded plugins (`load.rs`).
    loader: Loader,
    /// The plugins by name, their versions and lifecycle, the pipelines
    /// (`registry.rs`).
    registry: Registry,
    /// What surrounds every call: middleware and metrics (`call.rs`).
    dispatch: Dispatch,
    /// Events between plugins (`bus.rs`, `delivery.rs`).
    bus: Bus,
    /// With the NATS backend: the deployment's event streams, which carry
    /// plugins' events instead of the in-process queues (`shared_bus.rs`).
    #[cfg(feature = "nats")]
    shared_events: Option<Arc<crate::backend::events::NatsEvents>>,
    /// With the NATS backend: calls to and from the deployment's other
    /// hosts, and this host's presence among them (`remote.rs`).
    #[cfg(feature = "nats")]
    shared_calls: Option<Arc<crate::backend::calls::NatsCalls>>,
    /// What wakes the remote workers (`remote.rs`).
    #[cfg(feature = "nats")]
    signals: remote::Signals,
    /// When the host was built, in seconds since the Unix epoch.
    started_at: u64,
    /// The `[host]` section of the policy loaded or last applied, which
    /// an apply must not change (`apply.rs`).
    applied_host: std::sync::Mutex<Option<crate::policy::HostPolicy>>,
    /// Who may use the HTTP API: the policy's API keys, replaced by an
    /// apply (`apply.rs`).
    access: arc_swap::ArcSwap<crate::access::AccessTable>,
    /// Who did what to the host, and what was refused (`audit.rs`).
    audit: Arc<crate::audit::AuditLog>,
    /// Held while the plugin table changes (load, reload, unload, apply):
    /// one change at a time, so a reload cannot swap in a version made from
    /// a spec another change has replaced meanwhile.
    changing: tokio::sync::Mutex<()>,
    /// What reruns of conflicting calls hold (`commit.rs`).
    commits: commit::Gates,
    /// Set by [`Host::shutdown`]: delivery workers stop, so that nothing
    /// keeps the host (its engine and pool) alive after it.
    stopped: std::sync::atomic::AtomicBool,
    /// What the last policy loaded or applied could not load
    /// ([`Host::readiness`]): one entry per plugin it names, at most.
    not_loaded: std::sync::Mutex<Vec<NotLoaded>>,
    /// Background jobs: the runner's wake-up and the attempts running here
    /// (`jobs.rs`).
    jobs: jobs::Jobs,
}

impl Host {
    /// Starts configuring a host.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// The limits plugins get unless their spec says otherwise.
    pub fn default_limits(&self) -> &Limits {
        &self.inner.loader.default_limits
    }

    /// Whether instances come from the pooling allocator.
    pub fn allocation_mode(&self) -> &AllocationMode {
        &self.inner.loader.allocation
    }

    /// How the compile cache has been used, if the host has one.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.inner.loader.cache.as_ref().map(CompileCache::stats)
    }

    /// Loads a plugin: checks, compiles and links it, then runs its `init` and
    /// `describe` once. Fails with a typed [`LoadError`]; nothing is
    /// registered unless every step succeeds.
    pub async fn load(&self, spec: PluginSpec) -> Result<PluginDetails, LoadError> {
        let _changing = self.inner.changing.lock().await;
        self.load_now(spec).await
    }

    /// Loads a plugin; the caller holds `changing`.
    pub(super) async fn load_now(&self, spec: PluginSpec) -> Result<PluginDetails, LoadError> {
        let name = spec.name().to_owned();
        if self.slot(&name).is_some() {
            return Err(LoadError::new(
                name,
                LoadFailure::Config(
                    "a plugin with this name is already loaded; reload it instead".into(),
                ),
            ));
        }
        let loaded = self
            .inner
            .loader
            .load(spec.clone(), |details| self.requirements_met(details))
            .await?;
        let details = loaded.details.clone();
        let metrics = self.inner.dispatch.metrics.for_plugin(&name);
        let slot = Arc::new(Slot::new(loaded, spec, self.inner.bus.queue(), metrics));
        #[cfg(feature = "nats")]
        if let Some(shared) = &self.inner.shared_events {
            let events = &slot.current().grants.events;
            let options = &self.inner.bus.options;
            let open = crate::backend::events::Open::Load;
            shared_bus::check_consumer(shared, &name, events, options, open)
                .await
                .map_err(|failure| LoadError::new(name.clone(), failure))?;
        }
        let inserted = self.update_plugins(|plugins| {
            if plugins.contains_key(&name) {
                return false;
            }
            plugins.insert(name.clone(), Arc::clone(&slot));
            true
        });
        if !inserted {
            return Err(LoadError::new(
                name,
                LoadFailure::Config("a plugin with this name was loaded concurrently".into()),
            ));
        }
        self.start_delivery(&slot);
        #[cfg(feature = "nats")]
        self.start_serving(&slot).await;
        Ok(details)
    }

    /// Asks a plugin for its static manifest by running its `manifest`
    /// export once, on a fresh instance without `init`, under its limits and
    /// grants, without registering it: what `capsule sign` embeds in the
    /// component before signing. Returns the checked manifest and the
    /// document exactly as the plugin wrote it (to embed as is, fields this
    /// host does not know included); `Ok(None)` for a contract 0.1 plugin.
    pub async fn ask_manifest(
        &self,
        spec: PluginSpec,
    ) -> Result<Option<(crate::artifact::manifest::Manifest, String)>, LoadError> {
        self.inner.loader.ask_manifest(spec).await
    }

    /// Loads every plugin and pipeline of a policy. A plugin that fails to
    /// load does not stop the others: the failures are returned, the rest
    /// are serving.
    pub async fn load_policy(&self, policy: &Policy) -> Vec<LoadError> {
        self.remember_host_policy(&policy.host);
        let mut failures = Vec::new();
        // Pins first: requirements on a capability resolve as calls will.
        for (capability, plugin) in &policy.capabilities {
            self.pin_capability(capability, plugin);
        }
        let (order, cycles) = policy_load_order(policy).await;
        for (name, cycle) in cycles {
            failures.push(LoadError::new(name, LoadFailure::DependencyCycle(cycle)));
        }
        for name in &order {
            let spec =
                PluginSpec::from_policy(policy, name).expect("every plugin of a policy has a spec");
            if let Err(err) = self.load(spec).await {
                tracing::error!(
                    plugin = %name,
                    error = %crate::text::log_field(&err.to_string()),
                    "plugin not loaded"
                );
                failures.push(err);
            }
        }
        self.set_not_loaded(
            failures
                .iter()
                .map(|err| NotLoaded::new(&err.plugin, err.kind().as_str(), &err.to_string()))
                .collect(),
        );
        for (name, pipeline) in &policy.pipelines {
            self.add_pipeline(Pipeline {
                name: name.clone(),
                stages: pipeline.stages.clone(),
                transaction: pipeline.transaction,
            });
        }
        failures
    }

    /// Defines (or replaces) a pipeline: calling it calls `stages` in order.
    pub fn define_pipeline(&self, name: &str, stages: Vec<String>) {
        self.add_pipeline(Pipeline {
            name: name.to_owned(),
            stages,
            transaction: false,
        });
    }

    /// Defines (or replaces) a pipeline, transactional or not.
    pub fn add_pipeline(&self, pipeline: Pipeline) {
        self.inner
            .registry
            .pipelines
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pipeline.name.clone(), pipeline);
    }

    /// Every defined pipeline.
    pub fn pipelines(&self) -> Vec<Pipeline> {
        let pipelines = self
            .inner
            .registry
            .pipelines
            .read()
            .unwrap_or_else(|p| p.into_inner());
        pipelines.values().cloned().collect()
    }

    /// The metrics of every plugin, in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        metrics::prometheus_text(&self.metrics_openmetrics())
    }

    /// The same metrics in the OpenMetrics 1.0 text format (families named
    /// without `_total`, `# UNIT` lines, `# EOF`), which Prometheus asks for
    /// by its `Accept` header.
    pub fn metrics_openmetrics(&self) -> String {
        let slots = self.slots();
        let metering = self.inner.loader.metering;
        let now: Vec<metrics::PluginGauges> = slots
            .iter()
            .map(|slot| {
                let current = slot.current();
                metrics::PluginGauges {
                    name: slot.name.to_string(),
                    instances: current.live_instances(),
                    circuit_open: slot.breaker.is_open(),
                    fuel_limit: current.limits().fuel.filter(|_| metering.fuel),
                    cache_bytes: current.pure.cache_bytes(),
                }
            })
            .collect();
        // The current version's series: during a rollout whose versions
        // declare the same metrics both share them; otherwise the canary's
        // are exported once it is promoted.
        let declared = slots
            .iter()
            .filter_map(|slot| {
                let current = slot.current();
                current
                    .grants
                    .metrics
                    .as_ref()
                    .map(|(store, _)| Arc::clone(store))
            })
            .collect();
        self.inner.dispatch.metrics.render(&now, declared)
    }

    /// Whether what a plugin's manifest requires is loaded now, in versions
    /// its ranges accept (the plugin itself does not count).
    fn requirements_met(&self, details: &PluginDetails) -> Result<(), LoadFailure> {
        let Some(manifest) = &details.manifest else {
            return Ok(());
        };
        let slots = self.slots();
        let current: Vec<_> = slots
            .iter()
            .map(|slot| slot.current())
            .filter(|plugin| plugin.details.name != details.name)
            .collect();
        let providers: Vec<dependencies::Provider<'_>> =
            current.iter().map(|p| provider(&p.details)).collect();
        dependencies::unmet(manifest, &providers, &self.pins())
            .map_err(LoadFailure::MissingDependency)
    }

    fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.inner.registry.plugins.load().get(name).cloned()
    }

    fn slots(&self) -> Vec<Arc<Slot>> {
        self.inner
            .registry
            .plugins
            .load()
            .values()
            .cloned()
            .collect()
    }

    /// Changes the plugin table: `change` gets a copy to edit, which then
    /// replaces the table atomically. Writers take turns.
    fn update_plugins<R>(&self, change: impl FnOnce(&mut BTreeMap<String, Arc<Slot>>) -> R) -> R {
        let _writer = self
            .inner
            .registry
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut table = BTreeMap::clone(&self.inner.registry.plugins.load());
        let result = change(&mut table);
        self.inner.registry.plugins.store(Arc::new(table));
        result
    }
}

/// A loaded plugin as a provider of what others require.
fn provider(details: &PluginDetails) -> dependencies::Provider<'_> {
    dependencies::Provider {
        name: &details.name,
        version: &details.info.version,
        capabilities: &details.info.capabilities,
    }
}

/// The order to load a policy's plugins in, from the manifests their files
/// carry (read without compiling), and the plugins on dependency cycles.
/// A file that cannot be read here is placed as if it had no manifest; its
/// load reports why.
async fn policy_load_order(policy: &Policy) -> (Vec<String>, Vec<(String, String)>) {
    let paths: Vec<(String, PathBuf)> = policy
        .plugins
        .iter()
        .map(|(name, plugin)| (name.clone(), plugin.path.clone()))
        .collect();
    let manifests = tokio::task::spawn_blocking(move || {
        paths
            .into_iter()
            .map(|(name, path)| {
                let manifest = crate::input::read_file(&path, crate::input::MAX_COMPONENT_BYTES)
                    .ok()
                    .and_then(|bytes| crate::artifact::manifest::read(&bytes).ok().flatten());
                (name, manifest)
            })
            .collect::<BTreeMap<_, _>>()
    })
    .await
    .unwrap_or_default();
    let plugins = policy
        .plugins
        .keys()
        .map(|name| (name.clone(), manifests.get(name).and_then(Option::as_ref)))
        .collect();
    dependencies::load_order(&plugins, &policy.capabilities)
}
