//! The data every wasmtime store carries for one plugin instance, and the
//! setup that puts a store under its plugin's limits and grants.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::engine::Metering;
use crate::limits::{DeadlineExceeded, Limits, MemoryLimiter, http_body_chunk, http_fields_limit};
use crate::services::config::ConfigState;
use crate::services::events::EventsState;
use crate::services::http::HttpHooks;
use crate::services::kv::KvState;
use crate::services::log::{LogSink, LogState};
use crate::services::{PreparedGrants, wasi};

/// Per-store state: one field per host service plus the limiter and the
/// current call's deadline.
pub(crate) struct StoreState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http: WasiHttpCtx,
    pub(crate) http_hooks: HttpHooks,
    pub(crate) log: LogState,
    pub(crate) config: ConfigState,
    pub(crate) kv: KvState,
    pub(crate) events: EventsState,
    pub(crate) limiter: MemoryLimiter,
    /// When the running call must stop; checked on every epoch tick.
    pub(crate) deadline: Instant,
    /// Which metering the engine has.
    pub(crate) metering: Metering,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

/// What a new store needs from its plugin.
pub(crate) struct StoreSetup<'a> {
    pub(crate) engine: &'a Engine,
    pub(crate) grants: &'a PreparedGrants,
    pub(crate) limits: &'a Limits,
    pub(crate) sink: &'a Arc<LogSink>,
    pub(crate) metering: Metering,
}

/// Creates a store for one instance of a plugin, with its grants, memory
/// limiter, fuel budget and deadline in place. Fails only if a mounted
/// directory can no longer be opened.
pub(crate) fn new_store(
    setup: &StoreSetup<'_>,
    deadline: Instant,
) -> Result<Store<StoreState>, String> {
    let grants = setup.grants;
    let limits = setup.limits;
    let http_granted = grants.http.is_some();
    // Every WASI resource lives in this table: its capacity times the
    // per-handle caps below bounds the host memory an instance's resources
    // hold (`Limits::host_resource_bytes`).
    let mut table = ResourceTable::new();
    table.set_max_capacity(limits.max_handles);
    let mut http = WasiHttpCtx::new();
    http.set_field_size_limit(http_fields_limit(http_granted));
    let state = StoreState {
        wasi: wasi::context(setup.sink, grants)?,
        table,
        http,
        http_hooks: HttpHooks {
            plugin: Arc::clone(&grants.plugin),
            grant: grants.http.clone(),
            sent: 0,
            refused: 0,
            body_chunk: http_body_chunk(http_granted),
        },
        log: LogState {
            sink: Arc::clone(setup.sink),
            enabled: grants.log_enabled,
        },
        config: ConfigState {
            values: Arc::clone(&grants.config),
        },
        kv: KvState {
            access: grants.kv.clone(),
        },
        events: EventsState {
            grant: Arc::clone(&grants.events),
            published: Vec::new(),
            budget: setup.limits.max_response_bytes,
        },
        limiter: MemoryLimiter::new(setup.limits.memory_bytes),
        deadline,
        metering: setup.metering,
    };
    let mut store = Store::new(setup.engine, state);
    store.limiter(|state| &mut state.limiter);
    // What one host call may hand the host, however the plugin aliases its
    // memory (a list of a million entries all pointing at the same megabyte
    // would otherwise be copied a million times).
    store.set_hostcall_fuel(limits.host_call_bytes());
    // Handles in the component's own tables (every WASI handle it holds,
    // resources it defines, borrows it lends) share the same budget.
    store.set_max_component_handles(limits.max_handles);
    refuel(&mut store, setup.limits);
    if setup.metering.epoch {
        // Every epoch tick, either stop a call that ran past its deadline or
        // let other tasks on this thread run before continuing.
        store.epoch_deadline_callback(|context| {
            if Instant::now() >= context.data().deadline {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
    }
    arm_deadline(&mut store);
    Ok(store)
}

/// Makes the next epoch tick check the deadline (when the engine has epochs).
pub(crate) fn arm_deadline(store: &mut Store<StoreState>) {
    if store.data().metering.epoch {
        store.set_epoch_deadline(1);
    }
}

/// Gives the store a full fuel budget for the next call (when the engine
/// meters fuel).
pub(crate) fn refuel(store: &mut Store<StoreState>, limits: &Limits) {
    if store.data().metering.fuel {
        store
            .set_fuel(limits.fuel.unwrap_or(u64::MAX))
            .expect("the engine meters fuel");
    }
}

/// Fuel consumed since the last [`refuel`], if the engine meters fuel.
pub(crate) fn fuel_used(store: &Store<StoreState>, limits: &Limits) -> Option<u64> {
    if !store.data().metering.fuel {
        return None;
    }
    let budget = limits.fuel.unwrap_or(u64::MAX);
    Some(budget.saturating_sub(store.get_fuel().unwrap_or(budget)))
}
