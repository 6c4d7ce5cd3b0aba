//! The `config` service: read-only values the operator set for one plugin.
//!
//! Always available: a plugin sees only its own values, and an operator who
//! set none simply gives it an empty map.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use crate::contract::{ServiceError, interfaces};
use crate::store::StoreState;

/// Per-store state of the `config` service: the plugin's values, shared by
/// every instance of the plugin.
pub(crate) struct ConfigState {
    pub(crate) values: Arc<BTreeMap<String, String>>,
}

impl interfaces::config::Host for ConfigState {
    fn get(&mut self, key: String) -> Result<Option<String>, ServiceError> {
        Ok(self.values.get(&key).cloned())
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, ServiceError> {
        Ok(self
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

struct ConfigService;

impl HasData for ConfigService {
    type Data<'a> = &'a mut ConfigState;
}

pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    interfaces::config::add_to_linker::<StoreState, ConfigService>(linker, |state| {
        &mut state.config
    })
}
