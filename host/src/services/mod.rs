//! Host services, one module per capability. Each has the same parts: its
//! grant (what the operator allows), its per-store state, the WIT or WASI
//! host implementation, and one `add_to_linker` line in [`add_to_linker`].
//!
//! A plugin gets exactly what its [`Grants`] say and nothing else; a service
//! it was not granted answers with a typed denial (`service-error::denied`,
//! or WASI's own error codes), never a trap.

pub mod config;
pub mod events;
pub mod files;
pub mod http;
pub mod kv;
pub mod log;
pub(crate) mod wasi;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use wasmtime::component::Linker;

use crate::store::StoreState;

/// Everything a plugin is allowed to touch. The default grants logging and
/// nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Grants {
    /// Whether the plugin may log.
    pub log: log::LogGrant,
    /// Configuration values the plugin can read through `config`.
    pub config: BTreeMap<String, String>,
    /// Environment variables the plugin sees through `wasi:cli/environment`.
    pub env: BTreeMap<String, String>,
    /// The plugin's key-value namespace and quotas.
    pub kv: Option<kv::KvGrant>,
    /// Host directories the plugin sees through `wasi:filesystem`.
    pub files: Vec<files::Mount>,
    /// Origins the plugin may reach through `wasi:http`.
    pub http: Option<http::HttpGrant>,
    /// Topics the plugin may publish to and receive.
    pub events: events::EventsGrant,
}

/// What [`Grants`] shows to anyone who may list plugins but not administer
/// them: which capabilities a plugin holds, never the values an operator
/// configured (config and environment values may be credentials) nor where
/// its directories are on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantsSummary {
    /// Whether the plugin may log.
    pub log: bool,
    /// The names of its configuration values.
    pub config: Vec<String>,
    /// The names of its environment variables.
    pub env: Vec<String>,
    /// Its key-value namespace and quotas.
    pub kv: Option<kv::KvGrant>,
    /// Its mounts: where the plugin sees each, and how.
    pub files: Vec<MountSummary>,
    /// Origins it may reach over HTTP, with its HTTP quotas.
    pub http: Option<http::HttpGrant>,
    /// Topics it may publish to and receive.
    pub events: events::EventsGrant,
}

/// A mount without its host path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountSummary {
    /// Where the plugin sees it.
    pub guest: String,
    /// Read-only or read-write.
    pub access: files::Access,
}

impl Grants {
    /// The grants without configured values or host paths (see
    /// [`GrantsSummary`]).
    pub fn summary(&self) -> GrantsSummary {
        GrantsSummary {
            log: self.log.enabled,
            config: self.config.keys().cloned().collect(),
            env: self.env.keys().cloned().collect(),
            kv: self.kv.clone(),
            files: self
                .files
                .iter()
                .map(|mount| MountSummary {
                    guest: mount.guest.clone(),
                    access: mount.access,
                })
                .collect(),
            http: self.http.clone(),
            events: self.events.clone(),
        }
    }
}

/// A plugin's grants, prepared once at load and shared by all its stores.
pub(crate) struct PreparedGrants {
    pub(crate) plugin: Arc<str>,
    pub(crate) log_enabled: bool,
    pub(crate) config: Arc<BTreeMap<String, String>>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) files: Vec<files::Mount>,
    pub(crate) kv: Option<(Arc<kv::KvGrant>, Arc<kv::KvStore>)>,
    pub(crate) http: Option<Arc<http::HttpGrant>>,
    pub(crate) events: Arc<events::EventsGrant>,
}

impl PreparedGrants {
    pub(crate) fn new(plugin: Arc<str>, grants: &Grants, kv_store: &Arc<kv::KvStore>) -> Self {
        PreparedGrants {
            plugin,
            log_enabled: grants.log.enabled,
            config: Arc::new(grants.config.clone()),
            env: grants.env.clone().into_iter().collect(),
            files: grants.files.clone(),
            kv: grants
                .kv
                .clone()
                .map(|grant| (Arc::new(grant), Arc::clone(kv_store))),
            http: grants.http.clone().map(Arc::new),
            events: Arc::new(grants.events.clone()),
        }
    }
}

/// Adds every host service to the linker all plugins of a host share.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    wasi::add_to_linker(linker)?;
    http::add_to_linker(linker)?;
    log::add_to_linker(linker)?;
    config::add_to_linker(linker)?;
    kv::add_to_linker(linker)?;
    events::add_to_linker(linker)?;
    Ok(())
}
