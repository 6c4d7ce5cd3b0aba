//! The data every wasmtime store carries for one plugin instance, and the
//! setup that puts a store under its plugin's limits.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::limits::{DeadlineExceeded, Limits, MemoryLimiter};
use crate::services::config::ConfigState;
use crate::services::events::EventsState;
use crate::services::kv::KvState;
use crate::services::log::{LogSink, LogState};
use crate::services::{Grants, wasi};

/// Per-store state: one field per host service plus the limiter and the
/// current call's deadline.
pub(crate) struct StoreState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) log: LogState,
    pub(crate) config: ConfigState,
    pub(crate) kv: KvState,
    pub(crate) events: EventsState,
    pub(crate) limiter: MemoryLimiter,
    /// When the running call must stop; checked on every epoch tick.
    pub(crate) deadline: Instant,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// What a new store needs from its plugin.
pub(crate) struct StoreSetup<'a> {
    pub(crate) engine: &'a Engine,
    pub(crate) grants: &'a Grants,
    pub(crate) config: &'a Arc<std::collections::BTreeMap<String, String>>,
    pub(crate) limits: &'a Limits,
    pub(crate) sink: &'a Arc<LogSink>,
}

/// Creates a store for one instance of a plugin, with its memory limiter,
/// fuel budget and deadline in place.
pub(crate) fn new_store(setup: &StoreSetup<'_>, deadline: Instant) -> Store<StoreState> {
    let state = StoreState {
        wasi: wasi::context(setup.sink),
        table: ResourceTable::new(),
        log: LogState {
            sink: Arc::clone(setup.sink),
            enabled: setup.grants.log.enabled,
        },
        config: ConfigState {
            values: Arc::clone(setup.config),
        },
        kv: KvState,
        events: EventsState,
        limiter: MemoryLimiter::new(setup.limits.memory_bytes),
        deadline,
    };
    let mut store = Store::new(setup.engine, state);
    store.limiter(|state| &mut state.limiter);
    refuel(&mut store, setup.limits);
    // Every epoch tick, either stop a call that ran past its deadline or let
    // other tasks on this thread run before continuing.
    store.epoch_deadline_callback(|context| {
        if Instant::now() >= context.data().deadline {
            Err(wasmtime::Error::new(DeadlineExceeded))
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store.set_epoch_deadline(1);
    store
}

/// Gives the store a full fuel budget for the next call.
pub(crate) fn refuel(store: &mut Store<StoreState>, limits: &Limits) {
    store
        .set_fuel(limits.fuel.unwrap_or(u64::MAX))
        .expect("fuel is enabled on every Capsule engine");
}

/// Fuel consumed since the last [`refuel`].
pub(crate) fn fuel_used(store: &Store<StoreState>, limits: &Limits) -> u64 {
    let budget = limits.fuel.unwrap_or(u64::MAX);
    budget.saturating_sub(store.get_fuel().unwrap_or(budget))
}
