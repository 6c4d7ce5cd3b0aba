//! The parts of the host generated from the service list that concern
//! grants: [`Grants`] (re-exported at the crate root, its one public path),
//! what may be shown of them, what is prepared from them at load, the
//! import-to-service table and [`SERVICES`].

use std::sync::Arc;

use serde::Serialize;

use super::{
    Availability, BASE_IMPORTS, HostShared, Import, PrepareContext, Service, ServiceInfo,
    for_each_service,
};
use crate::artifact::Interface;
use crate::bounds::Invalid;

macro_rules! define_grants {
    ($($(#[$doc:meta])* $field:ident: $service:ty => $grant:ty, $summary:ty;)*) => {
        // The spelled-out types are the services' own.
        $(const _: fn(<$service as Service>::Grant, <$service as Service>::Summary)
            -> ($grant, $summary) = |grant, summary| (grant, summary);)*

        /// Everything a plugin is allowed to touch, one field per host
        /// service. The default grants logging and nothing else.
        #[derive(Debug, Clone, Default, PartialEq, Serialize)]
        pub struct Grants {
            $($(#[$doc])* pub $field: $grant,)*
        }

        /// What [`Grants`] shows to anyone who may list plugins but not
        /// administer them: which capabilities a plugin holds, never the
        /// values an operator configured (config and environment values may
        /// be credentials) nor where its directories are on the host.
        #[derive(Serialize)]
        pub struct GrantsSummary {
            $($(#[$doc])* pub $field: $summary,)*
        }

        /// A plugin's grants, prepared once at load and shared by all its
        /// stores.
        pub(crate) struct PreparedGrants {
            /// The plugin's name.
            pub(crate) plugin: Arc<str>,
            /// Where its refused requests are counted.
            pub(crate) denials: Arc<super::Denials>,
            $(pub(crate) $field: <$service as Service>::Prepared,)*
        }

        impl Grants {
            /// The grants without configured values or host paths.
            pub fn summary(&self) -> GrantsSummary {
                GrantsSummary {
                    $($field: <$service as Service>::summary(&self.$field),)*
                }
            }

            /// Every grant's values within range; the first problem names
            /// its field (`kv.max_value`, `env.A=B`).
            pub fn validate(&self) -> Result<(), Invalid> {
                $(<$service as Service>::validate(&self.$field)
                    .map_err(|err| err.within(<$service as Service>::NAME))?;)*
                Ok(())
            }

            /// The service that answers `import` and whether this plugin
            /// may use it; `None` if no service answers it.
            pub fn serving(&self, import: &Interface) -> Option<(&'static str, Availability)> {
                $(if <$service as Service>::IMPORTS.iter().any(|i| i.matches(import)) {
                    return Some((
                        <$service as Service>::NAME,
                        <$service as Service>::availability(&self.$field),
                    ));
                })*
                BASE_IMPORTS
                    .iter()
                    .find(|(base, _)| base.matches(import))
                    .map(|(_, availability)| ("wasi", *availability))
            }

            /// Whether the plugin may use the service `name` (granted, or
            /// given to every plugin); `false` for a name no service has.
            pub fn allows(&self, name: &str) -> bool {
                $(if name == <$service as Service>::NAME {
                    return <$service as Service>::availability(&self.$field) != Availability::NotGranted;
                })*
                false
            }

            /// The services the operator granted this plugin beyond what
            /// every plugin gets, by name, with the imports each answers.
            pub fn granted(&self) -> Vec<(&'static str, &'static [Import])> {
                let mut granted = Vec::new();
                $(if self.$field != <$service as Service>::Grant::default()
                    && <$service as Service>::availability(&self.$field) != Availability::NotGranted
                {
                    granted.push((<$service as Service>::NAME, <$service as Service>::IMPORTS));
                })*
                granted
            }
        }

        impl PreparedGrants {
            /// Prepares every grant; fails naming the service that could not
            /// be provided.
            pub(crate) fn new(
                plugin: Arc<str>,
                grants: &Grants,
                manifest: Option<&crate::artifact::manifest::Manifest>,
                host: &HostShared,
            ) -> Result<Self, String> {
                let name = Arc::clone(&plugin);
                let context = PrepareContext { plugin: &name, manifest, host };
                Ok(PreparedGrants {
                    denials: Arc::new(super::Denials::new(&plugin, Arc::clone(&host.audit))),
                    plugin,
                    $($field: <$service as Service>::prepare(&grants.$field, &context)
                        .map_err(|err| format!("{}: {err}", <$service as Service>::NAME))?,)*
                })
            }
        }

        /// Every host service, in registration order: its name, the imports
        /// it answers and its budgets.
        pub const SERVICES: &[ServiceInfo] = &[$(ServiceInfo {
            name: <$service as Service>::NAME,
            imports: <$service as Service>::IMPORTS,
            budgets: <$service as Service>::BUDGETS,
        },)*];

        /// Whether some service, or the base WASI every plugin has, answers
        /// `import`: the imports a plugin may have at all.
        pub(crate) fn is_served(import: &Interface) -> bool {
            $(<$service as Service>::IMPORTS.iter().any(|i| i.matches(import)) ||)*
                BASE_IMPORTS.iter().any(|(base, _)| base.matches(import))
        }
    };
}
for_each_service!(define_grants);
