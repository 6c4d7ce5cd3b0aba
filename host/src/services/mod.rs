//! Host services, one module per capability. Each has the same parts: its
//! grant (what the operator allows), its per-store state, the WIT `Host`
//! implementation, and an `add_to_linker` line in [`add_to_linker`].

pub mod config;
pub mod events;
pub mod kv;
pub mod log;
pub(crate) mod wasi;

use std::collections::BTreeMap;

use serde::Serialize;
use wasmtime::component::Linker;

use crate::store::StoreState;

/// Everything a plugin is allowed to touch. The default grants logging and
/// nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Grants {
    /// Whether the plugin may log.
    pub log: log::LogGrant,
    /// Configuration values the plugin can read.
    pub config: BTreeMap<String, String>,
}

/// Adds every host service to the linker all plugins of a host share.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    wasi::add_to_linker(linker)?;
    log::add_to_linker(linker)?;
    config::add_to_linker(linker)?;
    kv::add_to_linker(linker)?;
    events::add_to_linker(linker)?;
    Ok(())
}
