//! Host services, one module per capability, every one of the same shape:
//! a `Service` names itself, the WIT imports it answers, the grant an
//! operator gives (how a policy writes it, how it is checked, what anyone may
//! see of it), what it prepares once per plugin, its per-store state and
//! per-call reset, its budgets, and its linker line.
//!
//! `for_each_service!` is the one registration list. The [`Grants`] struct,
//! the policy file's plugin sections, the store's state, the linker, the
//! imports a plugin may have and `capsule check`'s import-to-grant table are
//! all generated from it, so adding a service is one new file and one line
//! there (see `docs/architecture.md`, "Adding a host service").
//!
//! A plugin gets exactly what its [`Grants`] say and nothing else; a service
//! it was not granted answers with a typed denial (`service-error::denied`,
//! or WASI's own error codes), never a trap.

pub mod calls;
pub mod config;
pub mod env;
pub mod events;
pub mod files;
pub(crate) mod grants;
#[cfg(test)]
pub(crate) mod harness;
pub mod http;
pub mod kv;
pub mod log;
pub mod metrics;
pub mod response;
pub mod trace;
pub(crate) mod transaction;
pub(crate) mod wasi;

pub use grants::SERVICES;
pub(crate) use grants::{Grants, PreparedGrants, is_served};

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use wasmtime::component::Linker;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::WasiHttpCtx;

use crate::artifact::Interface;
use crate::bounds::Invalid;
use crate::contract::CONTRACT_PACKAGE;
use crate::limits::Limits;

/// The registration list of host services: calls `$callback!` with every
/// service as `field: Service => Grant, Summary;` (the grant and summary
/// types spelled out, because they are public while [`Service`] is not; a
/// compile-time check keeps them equal to the service's), in the order
/// imports are matched. Each expansion builds one part of the host from it
/// (grants, policy sections, store state, linker, import table).
macro_rules! for_each_service {
    ($callback:ident) => {
        $callback! {
            /// Whether the plugin may log (`capsule:plugin/log`).
            log: $crate::services::log::Log
                => $crate::services::log::LogGrant, bool;
            /// Configuration values the plugin can read (`capsule:plugin/config`).
            config: $crate::services::config::Config
                => $crate::services::config::ConfigGrant, Vec<String>;
            /// Environment variables the plugin sees (`wasi:cli/environment`).
            env: $crate::services::env::Env
                => std::collections::BTreeMap<String, String>, Vec<String>;
            /// The plugin's key-value namespace and quotas (`capsule:plugin/kv`).
            kv: $crate::services::kv::Kv
                => Option<$crate::services::kv::KvGrant>, Option<$crate::services::kv::KvGrant>;
            /// Topics the plugin may publish to and receive (`capsule:plugin/events`).
            events: $crate::services::events::Events
                => $crate::services::events::EventsGrant, $crate::services::events::EventsGrant;
            /// Host directories the plugin sees (`wasi:filesystem`).
            files: $crate::services::files::Files
                => Vec<$crate::services::files::Mount>, Vec<$crate::services::files::MountSummary>;
            /// Origins the plugin may reach over HTTP (`wasi:http`).
            http: $crate::services::http::Http
                => Option<$crate::services::http::HttpGrant>, Option<$crate::services::http::HttpGrant>;
            /// Plugins the plugin may call (`capsule:plugin/plugins`).
            calls: $crate::services::calls::Calls
                => Vec<$crate::services::calls::CallTarget>, Vec<$crate::services::calls::CallTarget>;
            /// The series the plugin's declared metrics may have (`capsule:plugin/metrics`).
            metrics: $crate::services::metrics::Metrics
                => Option<$crate::services::metrics::MetricsGrant>, Option<$crate::services::metrics::MetricsGrant>;
            /// The spans the plugin may add to its calls' traces (`capsule:plugin/trace`).
            trace: $crate::services::trace::Trace
                => Option<$crate::services::trace::TraceGrant>, Option<$crate::services::trace::TraceGrant>;
            /// The buffer of a streaming caller's unread response chunks (`capsule:plugin/response`).
            response: $crate::services::response::ResponseService
                => $crate::services::response::ResponseGrant, $crate::services::response::ResponseGrant;
        }
    };
}
pub(crate) use for_each_service;

/// A WIT interface a plugin imports, by package and (optionally) item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Import {
    /// `namespace:package`, e.g. `wasi:http`.
    pub package: &'static str,
    /// The interface, e.g. `kv`; `None` for every interface of the package.
    pub item: Option<&'static str>,
}

impl Import {
    /// One interface of Capsule's own contract.
    pub const fn contract(item: &'static str) -> Import {
        Import {
            package: CONTRACT_PACKAGE,
            item: Some(item),
        }
    }

    /// One interface of another package.
    pub const fn interface(package: &'static str, item: &'static str) -> Import {
        Import {
            package,
            item: Some(item),
        }
    }

    /// Every interface of a package.
    pub const fn package(package: &'static str) -> Import {
        Import {
            package,
            item: None,
        }
    }

    /// Whether `interface` is this import.
    pub fn matches(&self, interface: &Interface) -> bool {
        interface.package == self.package && self.item.is_none_or(|item| item == interface.item)
    }
}

/// What the host tells about one of its services.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServiceInfo {
    /// Its name (its key in a policy's plugin section).
    pub name: &'static str,
    /// The imports it answers.
    #[serde(skip)]
    pub imports: &'static [Import],
    /// Its budgets, in words.
    pub budgets: &'static str,
}

/// Whether a plugin can use a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// Always there (it reveals nothing, or holds only the plugin's own
    /// values).
    Always,
    /// The plugin's grant allows it.
    Granted,
    /// The plugin was not granted it: every use is denied.
    NotGranted,
    /// Never granted to any plugin (raw sockets would bypass the HTTP
    /// allow-list): every use is denied.
    Never,
}

impl Availability {
    /// `Granted` if `granted`, else `NotGranted`.
    pub(crate) fn granted_if(granted: bool) -> Availability {
        if granted {
            Availability::Granted
        } else {
            Availability::NotGranted
        }
    }
}

/// What services share across every plugin of a host.
pub(crate) struct HostShared {
    /// The key-value store.
    pub(crate) kv_store: Arc<kv::KvStore>,
    /// The runtime's side of calls between plugins.
    pub(crate) caller: Arc<dyn calls::PluginCaller>,
    /// Where plugins' refused service requests are counted.
    pub(crate) audit: Arc<crate::audit::AuditLog>,
    /// The metrics every loaded plugin declared, to refuse a plugin whose
    /// declarations clash with another's.
    pub(crate) metric_catalog: Arc<metrics::MetricCatalog>,
    /// The host's tracer, when it exports traces.
    pub(crate) tracing: Option<Arc<crate::telemetry::Tracing>>,
}

/// What a service prepares a plugin version's grant with: the plugin's
/// name, its static manifest and what services share across the host.
pub(crate) struct PrepareContext<'a> {
    /// The plugin's name in the policy.
    pub(crate) plugin: &'a Arc<str>,
    /// The plugin's static manifest, if it carries one.
    pub(crate) manifest: Option<&'a crate::artifact::manifest::Manifest>,
    /// What services share across every plugin of the host.
    pub(crate) host: &'a HostShared,
}

/// Where one plugin's refused service requests go: the audit log, counted
/// per plugin and service over its window (a plugin refused in a tight
/// loop costs a count, not a line).
pub(crate) struct Denials {
    /// `plugin:NAME`, as the audit log names it.
    who: String,
    audit: Arc<crate::audit::AuditLog>,
}

impl Denials {
    pub(crate) fn new(plugin: &str, audit: Arc<crate::audit::AuditLog>) -> Denials {
        Denials {
            who: format!("plugin:{plugin}"),
            audit,
        }
    }

    /// Counts a refusal of `service`, with its message as the example.
    pub(crate) fn record(&self, service: &str, message: &str) {
        self.audit.denied(&self.who, service, "", "denied", message);
    }
}

/// Where a plugin's grant is written in a policy file: the plugin's name
/// (a kv namespace defaults to it) and the folder relative paths resolve
/// against.
pub(crate) struct PolicyContext<'a> {
    /// The plugin's name in the policy.
    pub(crate) plugin: &'a str,
    /// The policy file's folder.
    pub(crate) base: &'a Path,
}

/// What a service gets to build its state for a new store.
pub(crate) struct StoreContext<'a> {
    /// The plugin's name.
    pub(crate) plugin: &'a Arc<str>,
    /// The plugin's limits.
    pub(crate) limits: &'a Limits,
    /// Where the store's log lines (and stdout/stderr) go.
    pub(crate) sink: &'a Arc<log::LogSink>,
    /// The store's WASI context, before it is built: services grant
    /// directories and variables here.
    pub(crate) wasi: &'a mut WasiCtxBuilder,
    /// The store's `wasi:http` context.
    pub(crate) http: &'a mut WasiHttpCtx,
    /// The store's transaction: what its calls buffer until they commit.
    pub(crate) transaction: &'a transaction::SharedTransaction,
    /// Where the plugin's refused requests are counted.
    pub(crate) denials: &'a Arc<Denials>,
}

/// One host capability. See the module docs.
pub(crate) trait Service: 'static {
    /// Its name: its key in a policy's plugin section and in [`Grants`],
    /// and what `capsule check` calls it.
    const NAME: &'static str;
    /// The imports it answers.
    const IMPORTS: &'static [Import];
    /// Its budgets, in words, for `docs/architecture.md` and `capsule check`.
    const BUDGETS: &'static str;

    /// What the operator grants (a field of [`Grants`]). `Default` is what a
    /// plugin gets when the operator says nothing: usually nothing.
    type Grant: Clone + std::fmt::Debug + Default + PartialEq + Serialize + Send + Sync + 'static;
    /// How a policy file writes the grant.
    type Policy: DeserializeOwned;
    /// What anyone who may list plugins (without the admin token) sees of
    /// the grant: never configured values or host paths.
    type Summary: Serialize;
    /// The grant prepared once per plugin version, shared by its stores.
    type Prepared: Send + Sync + 'static;
    /// Per-store state.
    type State: Send + 'static;

    /// The grant a policy file describes. Pure: nothing on disk changes.
    fn from_policy(
        policy: Self::Policy,
        context: &PolicyContext<'_>,
    ) -> Result<Self::Grant, Invalid>;
    /// Every value of the grant within range.
    fn validate(grant: &Self::Grant) -> Result<(), Invalid>;
    /// Whether the grant lets the plugin use the service.
    fn availability(grant: &Self::Grant) -> Availability;
    /// What may be shown of the grant.
    fn summary(grant: &Self::Grant) -> Self::Summary;
    /// Prepares the grant once per plugin version, when it loads (a mounted
    /// directory asked for is created now). Fails if the host cannot
    /// provide what was granted.
    fn prepare(grant: &Self::Grant, context: &PrepareContext<'_>)
    -> Result<Self::Prepared, String>;
    /// The service's state in a new store (and what it adds to the store's
    /// WASI context). Fails only if the host cannot provide what was
    /// granted (a mounted directory vanished).
    fn new_state(
        prepared: &Self::Prepared,
        store: &mut StoreContext<'_>,
    ) -> Result<Self::State, String>;
    /// Resets per-call state before every call; `scope` is where the call
    /// sits in a chain of plugins calling plugins.
    fn begin_call(_state: &mut Self::State, _limits: &Limits, _scope: &calls::CallScope) {}
    /// Ends a call that returned (an instance that trapped or timed out is
    /// dropped with its state): what the call left open is closed now, not
    /// when the instance next serves.
    fn end_call(_state: &mut Self::State) {}
    /// Adds the service's host functions to a linker whose stores hold its
    /// state (nothing for services that only configure WASI).
    fn add_to_linker<T: Holds<Self> + Views>(linker: &mut Linker<T>) -> wasmtime::Result<()>
    where
        Self: Sized;
}

/// A store that holds the state of service `S`. Services are written
/// against this (and [`Views`]), never against the concrete store type.
pub(crate) trait Holds<S: Service> {
    /// The service's state in this store.
    fn state(&mut self) -> &mut S::State;
}

/// What every store offers the WASI-based services.
pub(crate) trait Views:
    wasmtime_wasi::WasiView + wasmtime_wasi_http::WasiHttpView + Send + 'static
{
}

impl<T: wasmtime_wasi::WasiView + wasmtime_wasi_http::WasiHttpView + Send + 'static> Views for T {}

/// WASI packages every plugin is linked with, granting nothing by
/// themselves (a Rust guest imports `wasi:cli` and `wasi:io` even when it
/// does no I/O), and whether they are ever granted.
pub(crate) const BASE_IMPORTS: &[(Import, Availability)] = &[
    (Import::contract("types"), Availability::Always),
    (Import::package("wasi:cli"), Availability::Always),
    (Import::package("wasi:io"), Availability::Always),
    (Import::package("wasi:clocks"), Availability::Always),
    (Import::package("wasi:random"), Availability::Always),
    (Import::package("wasi:sockets"), Availability::Never),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_map_to_their_service_and_grant() {
        let mut grants = Grants::default();
        let kv = Interface::parse("capsule:plugin/kv@0.1.0");
        assert_eq!(grants.serving(&kv), Some(("kv", Availability::NotGranted)));
        grants.kv = Some(kv::KvGrant::new("ns"));
        assert_eq!(grants.serving(&kv), Some(("kv", Availability::Granted)));
        let env = Interface::parse("wasi:cli/environment@0.2.6");
        assert_eq!(grants.serving(&env).map(|s| s.0), Some("env"));
        let stdout = Interface::parse("wasi:cli/stdout@0.2.6");
        assert_eq!(
            grants.serving(&stdout),
            Some(("wasi", Availability::Always))
        );
        let tcp = Interface::parse("wasi:sockets/tcp@0.2.6");
        assert_eq!(grants.serving(&tcp), Some(("wasi", Availability::Never)));
        let other = Interface::parse("acme:evil/backdoor@1.0.0");
        assert!(grants.serving(&other).is_none() && !is_served(&other));
        grants.env.insert("LANG".into(), "en".into());
        assert_eq!(
            grants.granted().iter().map(|g| g.0).collect::<Vec<_>>(),
            ["env", "kv"],
            "log is everyone's default; env and kv were granted"
        );
    }
}
