//! The `env` service: the environment variables a plugin sees through
//! standard `wasi:cli/environment` — exactly the ones the operator granted,
//! never the host's.

use std::collections::BTreeMap;

use wasmtime::component::Linker;

use super::{
    Availability, Holds, Import, PolicyContext, PrepareContext, Service, StoreContext, Views,
};
use crate::bounds::Invalid;

/// The `env` service.
pub(crate) struct Env;

impl Service for Env {
    const NAME: &'static str = "env";
    const IMPORTS: &'static [Import] = &[Import::interface("wasi:cli", "environment")];
    const BUDGETS: &'static str = "none of its own: it hands out only the operator's values";

    type Grant = BTreeMap<String, String>;
    type Policy = BTreeMap<String, String>;
    /// The names, never the values: a value may be a credential.
    type Summary = Vec<String>;
    type Prepared = Vec<(String, String)>;
    type State = ();

    fn from_policy(
        vars: BTreeMap<String, String>,
        _context: &PolicyContext<'_>,
    ) -> Result<Self::Grant, Invalid> {
        Ok(vars)
    }

    fn validate(vars: &Self::Grant) -> Result<(), Invalid> {
        for (key, value) in vars {
            // The process environment is NUL-terminated `KEY=VALUE` strings.
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(Invalid::new(
                    key.clone(),
                    "an environment variable's name must be non-empty, without `=` or NUL",
                ));
            }
            if value.contains('\0') {
                return Err(Invalid::new(
                    key.clone(),
                    "an environment variable's value cannot contain NUL",
                ));
            }
        }
        Ok(())
    }

    fn availability(_vars: &Self::Grant) -> Availability {
        // Without a grant the environment is simply empty.
        Availability::Always
    }

    fn summary(vars: &Self::Grant) -> Vec<String> {
        vars.keys().cloned().collect()
    }

    fn prepare(
        vars: &Self::Grant,
        _context: &PrepareContext<'_>,
    ) -> Result<Self::Prepared, String> {
        Ok(vars.clone().into_iter().collect())
    }

    fn new_state(vars: &Self::Prepared, store: &mut StoreContext<'_>) -> Result<(), String> {
        store.wasi.envs(vars);
        Ok(())
    }

    fn add_to_linker<T: Holds<Self> + Views>(_linker: &mut Linker<T>) -> wasmtime::Result<()> {
        // `wasi:cli/environment` is linked with the rest of WASI.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use wasmtime_wasi::p2::bindings::cli::environment::Host as _;

    use crate::services::harness::Harness;

    #[test]
    fn a_plugin_sees_exactly_the_granted_variables() {
        let mut env =
            Harness::<Env>::from_policy(r#"{ LANG = "en", MODE = "test" }"#, Path::new("."))
                .unwrap();
        assert_eq!(
            env.cli().get_environment().unwrap(),
            [("LANG".into(), "en".into()), ("MODE".into(), "test".into())]
        );
        // Nothing of the host's own environment leaks in.
        let mut nothing = Harness::<Env>::not_granted();
        assert!(nothing.cli().get_environment().unwrap().is_empty());
        assert!(nothing.cli().get_arguments().unwrap().is_empty());
    }

    #[test]
    fn names_and_values_the_environment_cannot_hold_are_refused() {
        for bad in [
            r#"{ "A=B" = "x" }"#,
            r#"{ "" = "x" }"#,
            r#"{ A = "x\u0000y" }"#,
        ] {
            let err = Harness::<Env>::from_policy(bad, Path::new(".")).err();
            assert!(err.is_some(), "{bad} was accepted");
        }
    }
}
