//! A test harness that runs one host service the way a store does, without
//! compiling or instantiating any wasm: a grant written as a policy writes
//! it goes through the service's own `from_policy`, `validate`, `prepare`
//! and `new_state`; each call starts with the same resets a real call gets;
//! and the test then calls the service's host functions directly — on its
//! state for Capsule's own interfaces, or on the WASI views the store would
//! hand wasmtime-wasi. Grant, denial and quota logic is tested here; the
//! e2e tests prove the same paths are reachable from real plugins.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::cli::WasiCliCtxView;
use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
use wasmtime_wasi_http::WasiHttpCtx;

use super::log::{CallLog, LogSink};
use super::transaction::{SharedTransaction, lock};
use super::{HostShared, PolicyContext, Service, StoreContext, kv, wasi};
use crate::bounds::Invalid;
use crate::limits::Limits;

/// The runtime a harness stands in for: no other plugin is loaded.
pub(crate) struct NoPlugins;

impl super::calls::PluginCaller for NoPlugins {
    fn call(
        &self,
        _scope: super::calls::CallScope,
        target: String,
        _request: crate::contract::Request,
    ) -> super::calls::CallFuture<'_> {
        Box::pin(async move {
            Err(crate::error::CallError::new(
                target,
                crate::error::CallFailure::UnknownPlugin,
            ))
        })
    }

    fn providers(&self, _capability: &str) -> Vec<String> {
        Vec::new()
    }

    fn pinned(&self, _capability: &str) -> Option<String> {
        None
    }
}

/// The plugin name every harness runs as.
pub(crate) const PLUGIN: &str = "under-test";

/// One store's worth of one service: its state, and the WASI context and
/// log sink its store would have.
pub(crate) struct Harness<S: Service> {
    /// The service's per-store state.
    pub(crate) state: S::State,
    wasi: WasiCtx,
    table: ResourceTable,
    /// Kept for the store's lifetime, as a store keeps it.
    _http: WasiHttpCtx,
    sink: Arc<LogSink>,
    limits: Limits,
    /// The store's transaction.
    pub(crate) transaction: SharedTransaction,
    /// The host's key-value store.
    pub(crate) kv_store: Arc<kv::KvStore>,
}

/// How a policy's plugin section writes the service's key.
#[derive(Deserialize)]
#[serde(bound = "")]
struct Section<S: Service> {
    grant: S::Policy,
}

impl<S: Service> Harness<S> {
    /// The service as a policy file with `grant = <toml>` in the plugin's
    /// section would grant it (relative paths against `base`), under
    /// default limits. Fails as the policy would: with the service's own
    /// [`Invalid`].
    pub(crate) fn from_policy(toml: &str, base: &Path) -> Result<Self, Invalid> {
        let section: Section<S> = toml::from_str(&format!("grant = {toml}"))
            .map_err(|err| Invalid::new(S::NAME, err.message().to_owned()))?;
        let context = PolicyContext {
            plugin: PLUGIN,
            base,
        };
        let grant = S::from_policy(section.grant, &context)?;
        S::validate(&grant)?;
        Ok(Self::granted(&grant, Limits::default()))
    }

    /// The service as a plugin that was granted nothing of it gets it.
    pub(crate) fn not_granted() -> Self {
        Self::granted(&S::Grant::default(), Limits::default())
    }

    /// The service under `grant` and `limits` (already valid), prepared and
    /// set up for a new store, with the first call begun.
    pub(crate) fn granted(grant: &S::Grant, limits: Limits) -> Self {
        Self::granted_with(grant, limits, None)
    }

    /// As [`Harness::granted`], for a plugin whose static manifest is
    /// `manifest`.
    pub(crate) fn granted_with(
        grant: &S::Grant,
        limits: Limits,
        manifest: Option<&crate::artifact::manifest::Manifest>,
    ) -> Self {
        let kv_store = Arc::new(kv::KvStore::in_memory());
        let shared = HostShared {
            kv_store: Arc::clone(&kv_store),
            caller: Arc::new(NoPlugins),
            audit: Arc::new(crate::audit::AuditLog::in_memory()),
            metric_catalog: Arc::default(),
            tracing: None,
        };
        let denials = Arc::new(super::Denials::new(PLUGIN, Arc::clone(&shared.audit)));
        let transaction = SharedTransaction::default();
        let plugin: Arc<str> = Arc::from(PLUGIN);
        let prepare = super::PrepareContext {
            plugin: &plugin,
            manifest,
            host: &shared,
        };
        let prepared = S::prepare(grant, &prepare).expect("the host can provide the grant");
        let sink = Arc::new(LogSink::new(
            Arc::clone(&plugin),
            limits.max_log_bytes,
            limits.max_log_records,
        ));
        let mut builder = wasi::base(&sink);
        let mut http = WasiHttpCtx::new();
        let mut context = StoreContext {
            plugin: &plugin,
            limits: &limits,
            sink: &sink,
            wasi: &mut builder,
            http: &mut http,
            transaction: &transaction,
            denials: &denials,
        };
        let state = S::new_state(&prepared, &mut context).expect("a new store gets its state");
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.max_handles);
        let mut harness = Harness {
            state,
            wasi: builder.build(),
            table,
            _http: http,
            sink,
            limits,
            transaction,
            kv_store,
        };
        harness.begin_call();
        harness
    }

    /// Starts a new call: every per-call budget is fresh, as in a store.
    pub(crate) fn begin_call(&mut self) {
        self.sink
            .begin_call(self.limits.max_log_bytes, self.limits.max_log_records);
        lock(&self.transaction).begin(None);
        S::begin_call(
            &mut self.state,
            &self.limits,
            &super::calls::CallScope::default(),
        );
    }

    /// Commits what the call buffered, as the runtime does when a call
    /// succeeds.
    pub(crate) fn commit(&mut self) -> Result<(), kv::store::CommitError> {
        let done = lock(&self.transaction).finish();
        self.kv_store.commit(&done.kv)
    }

    /// Ends the call and hands back what it logged.
    pub(crate) fn end_call(&mut self) -> CallLog {
        self.sink.end_call()
    }

    /// What `wasi:cli` answers this store.
    pub(crate) fn cli(&mut self) -> WasiCliCtxView<'_> {
        WasiCliCtxView {
            ctx: self.wasi.cli(),
            table: &mut self.table,
        }
    }

    /// What `wasi:filesystem` answers this store.
    pub(crate) fn filesystem(&mut self) -> WasiFilesystemCtxView<'_> {
        WasiFilesystemCtxView {
            ctx: self.wasi.filesystem(),
            table: &mut self.table,
        }
    }
}
