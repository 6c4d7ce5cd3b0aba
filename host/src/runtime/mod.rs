//! The host: one engine and linker shared by every plugin, the table of
//! loaded plugins, and the entry points to load and call them.

pub(crate) mod load;
mod plugin;
pub(crate) mod spec;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use wasmtime::Engine;
use wasmtime::component::Linker;

pub use plugin::{CallOutcome, CallStats, PluginDetails};
pub use spec::{PluginSource, PluginSpec};

use crate::artifact::PublicKey;
use crate::artifact::cache::{CacheError, CacheStats, CompileCache};
use crate::contract::Request;
use crate::engine::{self, AllocationMode, EngineOptions};
use crate::error::{CallError, CallFailure, LoadError, LoadFailure, chain};
use crate::limits::Limits;
use crate::policy::Policy;
use crate::services;
use crate::services::kv::{KvError, KvStore};
use crate::store::StoreState;
use load::{LoadContext, TrustPolicy};
use plugin::LoadedPlugin;

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
    /// The key-value store cannot be opened.
    #[error(transparent)]
    Kv(#[from] KvError),
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
#[derive(Debug, Clone, Default)]
pub struct HostBuilder {
    engine: EngineOptions,
    default_limits: Limits,
    trust: TrustPolicy,
    cache_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
}

impl HostBuilder {
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
    /// loaded again is deserialized instead of recompiled.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Limits for plugins whose spec sets none.
    pub fn default_limits(mut self, limits: Limits) -> Self {
        self.default_limits = limits;
        self
    }

    /// Engine-wide settings: wasm stack, epoch tick, pooling.
    pub fn engine_options(mut self, options: EngineOptions) -> Self {
        self.engine = options;
        self
    }

    /// Builds the engine, links the host services and starts the epoch
    /// ticker.
    pub fn build(self) -> Result<Host, HostError> {
        let (engine, allocation) =
            engine::build(&self.engine).map_err(|err| HostError::Engine(chain(&err)))?;
        let mut linker = Linker::new(&engine);
        services::add_to_linker(&mut linker).map_err(|err| HostError::Link(chain(&err)))?;
        let cache = self
            .cache_dir
            .as_deref()
            .map(CompileCache::open)
            .transpose()?;
        let kv_store = Arc::new(match &self.data_dir {
            Some(dir) => KvStore::open(&dir.join("kv.redb"))?,
            None => KvStore::in_memory(),
        });
        engine::start_epoch_ticker(&engine, self.engine.epoch_tick)?;
        if self.trust.allow_unsigned {
            tracing::warn!("this host loads plugins without a valid trusted signature");
        }
        Ok(Host {
            inner: Arc::new(HostInner {
                engine,
                linker,
                allocation,
                default_limits: self.default_limits,
                trust: self.trust,
                cache,
                kv_store,
                persistent_kv: self.data_dir.is_some(),
                plugins: RwLock::new(BTreeMap::new()),
            }),
        })
    }
}

/// Runs plugins. Cheap to clone; clones share the engine and the plugins.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    engine: Engine,
    linker: Linker<StoreState>,
    allocation: AllocationMode,
    default_limits: Limits,
    trust: TrustPolicy,
    cache: Option<CompileCache>,
    kv_store: Arc<KvStore>,
    persistent_kv: bool,
    plugins: RwLock<BTreeMap<String, Arc<LoadedPlugin>>>,
}

impl Host {
    /// Starts configuring a host.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// The limits plugins get unless their spec says otherwise.
    pub fn default_limits(&self) -> &Limits {
        &self.inner.default_limits
    }

    /// Whether instances come from the pooling allocator.
    pub fn allocation_mode(&self) -> &AllocationMode {
        &self.inner.allocation
    }

    /// How the compile cache has been used, if the host has one.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.inner.cache.as_ref().map(CompileCache::stats)
    }

    /// Loads a plugin: checks, compiles and links it, then runs its `init` and
    /// `describe` once. Fails with a typed [`LoadError`]; nothing is
    /// registered unless every step succeeds.
    pub async fn load(&self, spec: PluginSpec) -> Result<PluginDetails, LoadError> {
        let name = spec.name().to_owned();
        if self.plugin(&name).is_some() {
            return Err(LoadError::new(
                name,
                LoadFailure::Config("a plugin with this name is already loaded".into()),
            ));
        }
        let context = LoadContext {
            engine: &self.inner.engine,
            linker: &self.inner.linker,
            default_limits: &self.inner.default_limits,
            trust: &self.inner.trust,
            cache: self.inner.cache.as_ref(),
            kv_store: &self.inner.kv_store,
        };
        if spec.grants.kv.is_some() && !self.inner.persistent_kv {
            tracing::warn!(
                plugin = %name,
                "the host has no data directory: this plugin's key-value data will not survive a restart"
            );
        }
        let loaded = load::load(&context, spec).await?;
        let details = loaded.details.clone();
        let mut plugins = self.write_plugins();
        if plugins.contains_key(&name) {
            return Err(LoadError::new(
                name,
                LoadFailure::Config("a plugin with this name was loaded concurrently".into()),
            ));
        }
        plugins.insert(name, loaded);
        Ok(details)
    }

    /// Loads every plugin of a policy. A plugin that fails to load does not
    /// stop the others: the failures are returned, the rest are serving.
    pub async fn load_policy(&self, policy: &Policy) -> Vec<LoadError> {
        let mut failures = Vec::new();
        for name in policy.plugins.keys() {
            let spec = policy
                .plugin_spec(name)
                .expect("every plugin of a policy has a spec");
            if let Err(err) = self.load(spec).await {
                tracing::error!(plugin = %name, error = %err, "plugin not loaded");
                failures.push(err);
            }
        }
        failures
    }

    /// Calls a loaded plugin's `handle` with `request`.
    pub async fn call(&self, plugin: &str, request: Request) -> Result<CallOutcome, CallError> {
        let Some(loaded) = self.plugin(plugin) else {
            return Err(CallError::new(plugin, CallFailure::UnknownPlugin));
        };
        loaded.call(request).await
    }

    /// Facts about every loaded plugin, by name.
    pub fn plugins(&self) -> Vec<PluginDetails> {
        let plugins = self.inner.plugins.read().unwrap_or_else(|p| p.into_inner());
        plugins.values().map(|p| p.details.clone()).collect()
    }

    /// Facts about one loaded plugin.
    pub fn details(&self, plugin: &str) -> Option<PluginDetails> {
        self.plugin(plugin).map(|p| p.details.clone())
    }

    /// Removes a plugin; calls already running finish. Returns whether it was
    /// loaded.
    pub fn unload(&self, plugin: &str) -> bool {
        self.write_plugins().remove(plugin).is_some()
    }

    fn plugin(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        let plugins = self.inner.plugins.read().unwrap_or_else(|p| p.into_inner());
        plugins.get(name).cloned()
    }

    fn write_plugins(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<LoadedPlugin>>> {
        // The table is only ever modified by single inserts and removals, so
        // a panic elsewhere cannot leave it half-updated.
        self.inner
            .plugins
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }
}
