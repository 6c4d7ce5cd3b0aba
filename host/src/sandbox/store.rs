//! The data every wasmtime store carries for one plugin instance, and the
//! setup that puts a store under its plugin's limits and grants. The
//! store's service states, its views for the services and the linker are
//! generated from the service list (`services::for_each_service!`), so
//! this file does not change when a service is added.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{CallHook, Engine, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::host_calls::HostCallMeter;
use super::limiter::{DeadlineExceeded, MemoryLimiter};
use crate::engine::Metering;
use crate::limits::Limits;
use crate::services::calls::CallScope;
use crate::services::log::LogSink;
use crate::services::transaction::SharedTransaction;
use crate::services::{Holds, PreparedGrants, Service, StoreContext, for_each_service, wasi};

macro_rules! define_store {
    ($($(#[$doc:meta])* $field:ident: $service:ty => $grant:ty, $summary:ty;)*) => {
        /// Per-store state: WASI's context and resource table, one field per
        /// host service, the limiter and the current call's deadline.
        pub(crate) struct StoreState {
            pub(crate) wasi: WasiCtx,
            pub(crate) table: ResourceTable,
            pub(crate) http_ctx: WasiHttpCtx,
            $(pub(crate) $field: <$service as Service>::State,)*
            pub(crate) limiter: MemoryLimiter,
            /// When the running call must stop: checked at every fuel yield
            /// (by the call's timer) or epoch tick, and on every return from
            /// a host call.
            pub(crate) deadline: Instant,
            /// Which metering the engine has.
            pub(crate) metering: Metering,
            /// The running call's buffered effects, shared by the services.
            pub(crate) transaction: SharedTransaction,
            /// The running call's host calls, per service.
            pub(crate) host_calls: HostCallMeter,
            /// Samples the guest's stack on every epoch tick while a
            /// profiled call runs (`Host::call_profiled`).
            pub(crate) profiler: Option<Box<crate::telemetry::profile::Sampler>>,
        }

        /// Every name a host call is counted under (`host_calls`): WASI's,
        /// then each service's.
        pub(crate) const SERVICE_NAMES: &[&str] = &["wasi", $(stringify!($field),)*];

        // A host function asks for its service's state once per call: that
        // names the service the call hook is timing.
        $(impl Holds<$service> for StoreState {
            fn state(&mut self) -> &mut <$service as Service>::State {
                self.host_calls.claim(stringify!($field));
                &mut self.$field
            }
        })*

        /// Adds WASI and every host service to the linker all plugins of a
        /// host share.
        pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
            wasi::add_to_linker(linker)?;
            $(<$service as Service>::add_to_linker(linker)?;)*
            Ok(())
        }

        /// Every service's state for a new store, with its contributions to
        /// the WASI context, and the context itself.
        fn service_states(
            setup: &StoreSetup<'_>,
            deadline: Instant,
        ) -> Result<StoreState, String> {
            let grants = setup.grants;
            let mut builder = wasi::base(setup.sink);
            let mut http_ctx = WasiHttpCtx::new();
            let transaction = SharedTransaction::default();
            let mut context = StoreContext {
                transaction: &transaction,
                plugin: &grants.plugin,
                limits: setup.limits,
                sink: setup.sink,
                wasi: &mut builder,
                http: &mut http_ctx,
                denials: &grants.denials,
            };
            $(let $field = <$service as Service>::new_state(&grants.$field, &mut context)?;)*
            // Every WASI resource lives in this table: its capacity times the
            // per-handle caps bounds the host memory an instance's resources
            // hold (`Limits::host_resource_bytes`).
            let mut table = ResourceTable::new();
            table.set_max_capacity(setup.limits.max_handles);
            Ok(StoreState {
                wasi: builder.build(),
                table,
                http_ctx,
                $($field,)*
                limiter: MemoryLimiter::new(setup.limits.memory_bytes),
                deadline,
                metering: setup.metering,
                transaction,
                host_calls: HostCallMeter::default(),
                profiler: None,
            })
        }

        impl StoreState {
            /// Resets every service's per-call state.
            pub(crate) fn begin_call(&mut self, limits: &Limits, scope: &CallScope) {
                self.host_calls.reset();
                $(<$service as Service>::begin_call(&mut self.$field, limits, scope);)*
            }

            /// Ends every service's per-call state after a call returned.
            pub(crate) fn end_call(&mut self) {
                $(<$service as Service>::end_call(&mut self.$field);)*
            }
        }
    };
}
for_each_service!(define_store);

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.host_calls.claim("wasi");
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        self.host_calls.claim("http");
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
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
/// limiter, fuel budget and deadline in place. Fails only if the host
/// cannot provide what was granted (a mounted directory vanished).
pub(crate) fn new_store(
    setup: &StoreSetup<'_>,
    deadline: Instant,
) -> Result<Store<StoreState>, String> {
    let limits = setup.limits;
    let state = service_states(setup, deadline)?;
    let mut store = Store::new(setup.engine, state);
    store.limiter(|state| &mut state.limiter);
    // What one host call may hand the host, however the plugin aliases its
    // memory (a list of a million entries all pointing at the same megabyte
    // would otherwise be copied a million times).
    store.set_hostcall_fuel(limits.host_call_bytes());
    // Handles in the component's own tables (every WASI handle it holds,
    // resources it defines, borrows it lends) share the same budget.
    store.set_max_component_handles(limits.max_handles);
    if let Some(interval) = setup.metering.fuel_yield {
        // Guest code yields every `interval` fuel units: the call's timer
        // (`deadline::within`) stops it there once past its deadline.
        store
            .fuel_async_yield_interval(Some(interval))
            .map_err(|err| crate::text::chain(&err))?;
    }
    refuel(&mut store, setup.limits);
    // Times each call into a host service (`host_calls`), and stops a call
    // past its deadline as it comes back from one: time inside the host
    // burns no fuel, so a loop of quick host calls could otherwise run far
    // past its deadline before its next fuel yield.
    store.call_hook(|mut context, hook| {
        match hook {
            CallHook::CallingHost => context.data_mut().host_calls.enter(),
            CallHook::ReturningFromHost => {
                context.data_mut().host_calls.leave();
                if Instant::now() >= context.data().deadline {
                    return Err(wasmtime::Error::new(DeadlineExceeded));
                }
            }
            CallHook::CallingWasm | CallHook::ReturningFromWasm => {}
        }
        Ok(())
    });
    if setup.metering.epoch {
        // Every epoch tick, either stop a call that ran past its deadline or
        // let other tasks on this thread run before continuing.
        store.epoch_deadline_callback(|mut context| {
            if let Some(mut sampler) = context.data_mut().profiler.take() {
                sampler.sample(&context);
                context.data_mut().profiler = Some(sampler);
            }
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
