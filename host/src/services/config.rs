//! The `config` service: read-only values the operator set for one plugin.
//!
//! Always available: a plugin sees only its own values, and an operator who
//! set none simply gives it an empty map.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use super::{Availability, Holds, HostShared, Import, PolicyContext, Service, StoreContext, Views};
use crate::bounds::Invalid;
use crate::contract::{ServiceError, interfaces, interfaces_v0_2};

/// Per-store state of the `config` service: the plugin's values, shared by
/// every instance of the plugin.
pub(crate) struct ConfigState {
    pub(crate) values: Arc<BTreeMap<String, String>>,
}

impl interfaces_v0_2::config::Host for ConfigState {
    fn get(&mut self, key: String) -> Result<Option<String>, ServiceError> {
        interfaces::config::Host::get(self, key)
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, ServiceError> {
        interfaces::config::Host::get_all(self)
    }
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

/// The `config` service.
pub(crate) struct Config;

struct ConfigData;

impl HasData for ConfigData {
    type Data<'a> = &'a mut ConfigState;
}

impl Service for Config {
    const NAME: &'static str = "config";
    const IMPORTS: &'static [Import] = &[Import::contract("config")];
    const BUDGETS: &'static str = "none of its own: it hands out only the operator's values";

    type Grant = BTreeMap<String, String>;
    type Policy = BTreeMap<String, String>;
    /// The keys, never the values: a value may be a credential.
    type Summary = Vec<String>;
    type Prepared = Arc<BTreeMap<String, String>>;
    type State = ConfigState;

    fn from_policy(
        values: BTreeMap<String, String>,
        _context: &PolicyContext<'_>,
    ) -> Result<Self::Grant, Invalid> {
        Ok(values)
    }

    fn validate(values: &Self::Grant) -> Result<(), Invalid> {
        for key in values.keys() {
            if key.is_empty() || key.contains('\0') {
                return Err(Invalid::new(
                    key.clone(),
                    "a configuration key must be non-empty, without NUL",
                ));
            }
        }
        Ok(())
    }

    fn availability(_values: &Self::Grant) -> Availability {
        Availability::Always
    }

    fn summary(values: &Self::Grant) -> Vec<String> {
        values.keys().cloned().collect()
    }

    fn prepare(values: &Self::Grant, _host: &HostShared) -> Result<Self::Prepared, String> {
        Ok(Arc::new(values.clone()))
    }

    fn new_state(
        values: &Self::Prepared,
        _store: &mut StoreContext<'_>,
    ) -> Result<ConfigState, String> {
        Ok(ConfigState {
            values: Arc::clone(values),
        })
    }

    fn add_to_linker<T: Holds<Self> + Views>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        interfaces::config::add_to_linker::<T, ConfigData>(linker, |store| store.state())?;
        interfaces_v0_2::config::add_to_linker::<T, ConfigData>(linker, |store| store.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::contract::interfaces::config::Host as _;
    use crate::services::harness::Harness;

    #[test]
    fn a_plugin_reads_only_the_values_it_was_given() {
        let mut config = Harness::<Config>::from_policy(
            r#"{ greeting = "hi", token = "s3cret" }"#,
            Path::new("."),
        )
        .unwrap();
        assert_eq!(
            config.state.get("greeting".into()).unwrap().as_deref(),
            Some("hi")
        );
        assert_eq!(config.state.get("HOME".into()).unwrap(), None);
        assert_eq!(config.state.get_all().unwrap().len(), 2);
        let mut nothing = Harness::<Config>::not_granted();
        assert!(nothing.state.get_all().unwrap().is_empty());
    }

    #[test]
    fn keys_are_checked_and_values_never_shown() {
        let err = Harness::<Config>::from_policy(r#"{ "" = "x" }"#, Path::new("."))
            .err()
            .unwrap();
        assert_eq!(err.field, "");
        let values = BTreeMap::from([("token".to_owned(), "s3cret".to_owned())]);
        assert_eq!(Config::summary(&values), ["token"]);
    }
}
