//! `capsule check`: validates a policy and every plugin in it without
//! compiling or running anything — signature, contract version, each import
//! next to the grant that serves it, and from the plugins' static manifests
//! the operations they declare, whether what each requires is in the policy
//! (and in range), dependency cycles, and call edges to operations nobody
//! declares.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::admission::{Examined, TrustPolicy, check_memory, examine, io_failure};
use crate::artifact::inspect::ComponentSummary;
use crate::artifact::manifest::Manifest;
use crate::error::ErrorKind;
use crate::error::LoadFailure;
use crate::input::{self, MAX_COMPONENT_BYTES, MAX_SIGNATURE_BYTES};
use crate::policy::{PluginPolicy, Policy};
use crate::runtime::dependencies::{self, Pins, Provider};
use crate::runtime::input_schema::InputSchemas;
use crate::services::calls::CallTarget;
use crate::services::config::{self, ConfigOrigin};
use crate::services::{Availability, Grants};

/// How an import of a plugin is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "grant")]
pub enum ImportStatus {
    /// Always available (WASI stdio, clocks, random, the contract's types,
    /// `config`).
    Provided,
    /// Served by this grant.
    Granted(&'static str),
    /// Needs this grant, which the plugin lacks: every call will be denied.
    NotGranted(&'static str),
    /// Never granted to any plugin (raw sockets): every call will be denied.
    NeverGranted,
}

/// One import and how it is served.
#[derive(Debug, Clone, Serialize)]
pub struct ImportCheck {
    /// The import's name.
    pub import: String,
    /// How it is served.
    #[serde(flatten)]
    pub status: ImportStatus,
}

/// The result of checking one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginCheck {
    /// The plugin's name in the policy.
    pub name: String,
    /// Its component file.
    pub path: PathBuf,
    /// The OCI reference it came from and what that resolved to, for a
    /// `source = "oci://…"` plugin.
    pub origin: Option<crate::policy::OciOrigin>,
    /// Why it would be refused at load, if it would be.
    pub refused: Option<(ErrorKind, String)>,
    /// Trusted signers' key ids.
    pub signers: Vec<String>,
    /// The contract version it targets.
    pub contract_version: Option<String>,
    /// Every import and how it is served.
    pub imports: Vec<ImportCheck>,
    /// Grants that no import of the plugin can use.
    pub unused_grants: Vec<String>,
    /// Services the plugin's metadata says it needs to be useful that this
    /// policy does not grant it.
    pub missing_grants: Vec<String>,
    /// The plugin's edges in the call graph (its `calls` grant) and what
    /// each one reaches in this policy.
    pub calls: Vec<CallEdge>,
    /// The static manifest the component carries, if any.
    pub manifest: Option<Manifest>,
    /// Requirements that may be unmet: the policy has plugins without a
    /// manifest, one of which might provide them once described.
    pub uncertain: Vec<String>,
}

/// One edge of the call graph.
#[derive(Debug, Clone, Serialize)]
pub struct CallEdge {
    /// The edge as granted: `storage`, `images:resize`, `capability:NAME`.
    pub edge: String,
    /// Whether the plugin it names is in the policy (always true for a
    /// capability, whose providers are known once they load).
    pub reaches: bool,
    /// For a `plugin:operation` edge, whether the callee's manifest declares
    /// the operation (`None` when it has no manifest to say).
    pub declared: Option<bool>,
}

impl PluginCheck {
    /// Problems that do not stop the plugin from loading: imports that will
    /// be denied and grants nothing uses.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = self
            .imports
            .iter()
            .filter_map(|check| match check.status {
                ImportStatus::NotGranted(grant) => Some(format!(
                    "`{}` needs the `{grant}` grant, which this plugin lacks: its calls will be denied",
                    check.import
                )),
                ImportStatus::NeverGranted => Some(format!(
                    "`{}` is never granted (raw sockets would bypass the HTTP allow-list): its calls will be denied",
                    check.import
                )),
                _ => None,
            })
            .collect();
        warnings.extend(self.unused_grants.iter().map(|grant| {
            format!("the `{grant}` grant is unused: no import of the plugin can use it")
        }));
        warnings.extend(self.missing_grants.iter().map(|grant| {
            format!(
                "the plugin says it needs the `{grant}` grant to be useful, and this policy does not grant it"
            )
        }));
        warnings.extend(self.calls.iter().filter(|edge| !edge.reaches).map(|edge| {
            format!(
                "the call edge `{}` names a plugin this policy does not load: its calls will fail as unknown targets",
                edge.edge
            )
        }));
        warnings.extend(
            self.calls
                .iter()
                .filter(|edge| edge.declared == Some(false))
                .map(|edge| {
                    format!(
                        "the call edge `{}` names an operation its plugin does not declare",
                        edge.edge
                    )
                }),
        );
        warnings.extend(self.uncertain.iter().map(|unmet| {
            format!("{unmet}, unless a plugin of this policy without a manifest provides it")
        }));
        warnings
    }
}

/// Checks every plugin of a policy.
pub fn check_policy(policy: &Policy) -> Vec<PluginCheck> {
    let trust = TrustPolicy {
        keys: policy
            .host
            .trusted_keys
            .iter()
            .map(|(_, key)| key.clone())
            .collect(),
        allow_unsigned: policy.host.allow_unsigned,
        allow_partial: policy.host.allow_partial_signatures,
    };
    let mut checks: Vec<PluginCheck> = policy
        .plugins
        .iter()
        .map(|(name, plugin)| check_plugin(name, plugin, &trust, &policy.file))
        .collect();
    let manifests: BTreeMap<&str, Option<&Manifest>> = checks
        .iter()
        .map(|c| (c.name.as_str(), c.manifest.as_ref()))
        .collect();
    let edges: Vec<Vec<CallEdge>> = policy
        .plugins
        .values()
        .map(|plugin| {
            plugin
                .grants
                .calls
                .iter()
                .map(|edge| call_edge(edge, &manifests))
                .collect()
        })
        .collect();
    let requirements = requirements(&checks, &policy.capabilities);
    for ((check, edges), (refused, uncertain)) in checks.iter_mut().zip(edges).zip(requirements) {
        check.calls = edges;
        check.uncertain = uncertain;
        if check.refused.is_none() {
            check.refused = refused;
        }
    }
    checks
}

/// Each import of a component next to the grant that serves it, and the
/// grants no import can use: what `capsule check` reports for a file, and
/// the console for a loaded plugin.
pub fn imports_and_grants(
    summary: &ComponentSummary,
    grants: &Grants,
) -> (Vec<ImportCheck>, Vec<String>) {
    let imports = summary
        .imports
        .iter()
        .map(|import| {
            let status = match grants.serving(import) {
                Some((name, Availability::Granted)) => ImportStatus::Granted(name),
                Some((name, Availability::NotGranted)) => ImportStatus::NotGranted(name),
                Some((_, Availability::Never)) => ImportStatus::NeverGranted,
                // Admission refused anything no service answers.
                Some((_, Availability::Always)) | None => ImportStatus::Provided,
            };
            ImportCheck {
                import: import.name.clone(),
                status,
            }
        })
        .collect();
    // A grant the operator gave that no import of the plugin can use.
    let unused = grants
        .granted()
        .into_iter()
        .filter(|(_, served)| {
            !summary
                .imports
                .iter()
                .any(|import| served.iter().any(|i| i.matches(import)))
        })
        .map(|(name, _)| name.to_owned())
        .collect();
    (imports, unused)
}

fn call_edge(edge: &CallTarget, manifests: &BTreeMap<&str, Option<&Manifest>>) -> CallEdge {
    let callee = edge.plugin().and_then(|name| manifests.get(name));
    CallEdge {
        edge: edge.to_string(),
        reaches: edge.plugin().is_none() || callee.is_some(),
        declared: match (edge, callee) {
            (CallTarget::Operation(_, operation), Some(Some(manifest))) => manifest
                .operations
                .as_ref()
                .map(|declared| declared.iter().any(|op| &op.name == operation)),
            _ => None,
        },
    }
}

/// Why a plugin would be refused for its requirements, if it would be, and
/// the requirements only a plugin without a manifest could meet.
type RequirementsCheck = (Option<(ErrorKind, String)>, Vec<String>);

/// For each check in order: why it would be refused for its requirements
/// (a cycle, or one unmet by the policy's manifests), and requirements that
/// only a plugin without a manifest could meet. Follows the order
/// `load_policy` loads in, so a plugin refused for its own requirements
/// provides nothing to those after it.
fn requirements(checks: &[PluginCheck], pins: &Pins) -> Vec<RequirementsCheck> {
    // Plugins refused for their file provide nothing and wait for nothing.
    let loadable: BTreeMap<String, Option<&Manifest>> = checks
        .iter()
        .filter(|c| c.refused.is_none())
        .map(|c| (c.name.clone(), c.manifest.as_ref()))
        .collect();
    let (order, cycles) = dependencies::load_order(&loadable, pins);
    let unknown_providers = loadable.values().any(Option::is_none);
    let mut results: BTreeMap<&str, RequirementsCheck> = BTreeMap::new();
    for (name, cycle) in &cycles {
        let refused = (
            ErrorKind::DependencyCycle,
            format!("dependency cycle: {cycle}"),
        );
        results.insert(name.as_str(), (Some(refused), Vec::new()));
    }
    let mut loaded: Vec<Provider<'_>> = Vec::new();
    for name in &order {
        let Some(check) = checks.iter().find(|c| &c.name == name) else {
            continue;
        };
        let Some(manifest) = &check.manifest else {
            continue;
        };
        let unmet: Vec<String> = manifest
            .requires
            .iter()
            .filter_map(|r| dependencies::satisfied(r, &loaded, pins).err())
            .collect();
        let result = match (unmet.is_empty(), unknown_providers) {
            (true, _) => (None, Vec::new()),
            (false, true) => (None, unmet),
            (false, false) => {
                let refused = format!("missing dependency: {}", unmet.join("; "));
                results.insert(
                    check.name.as_str(),
                    (Some((ErrorKind::MissingDependency, refused)), Vec::new()),
                );
                continue;
            }
        };
        loaded.push(Provider {
            name: &check.name,
            version: &manifest.version,
            capabilities: &manifest.capabilities,
        });
        results.insert(check.name.as_str(), result);
    }
    checks
        .iter()
        .map(|c| {
            results
                .remove(c.name.as_str())
                .unwrap_or((None, Vec::new()))
        })
        .collect()
}

fn check_plugin(
    name: &str,
    plugin: &PluginPolicy,
    trust: &TrustPolicy,
    file: &std::path::Path,
) -> PluginCheck {
    let mut check = PluginCheck {
        name: name.to_owned(),
        path: plugin.path.clone(),
        origin: plugin.origin.clone(),
        refused: None,
        signers: Vec::new(),
        contract_version: None,
        imports: Vec::new(),
        unused_grants: Vec::new(),
        missing_grants: Vec::new(),
        calls: Vec::new(),
        manifest: None,
        uncertain: Vec::new(),
    };
    let read = |path: &PathBuf, max_bytes| input::read_file(path, max_bytes).map_err(io_failure);
    let examined = read(&plugin.path, MAX_COMPONENT_BYTES).and_then(|bytes| {
        let detached = plugin
            .signature
            .as_ref()
            .map(|path| read(path, MAX_SIGNATURE_BYTES))
            .transpose()?;
        examine(name, &bytes, detached.as_deref(), trust)
    });
    let examined = examined.and_then(|examined| {
        check_memory(&examined.summary, &plugin.limits)?;
        if plugin.validate_input {
            // The same compilation the load does, so a schema that would
            // not compile is refused here too.
            InputSchemas::for_manifest(examined.manifest.as_ref())?;
        }
        if let Some(schema) = examined.manifest.as_ref().and_then(|m| m.config.as_ref()) {
            config::apply_schema(schema, &plugin.grants.config).map_err(|problems| {
                let origin = ConfigOrigin {
                    file: file.to_owned(),
                    plugin: name.to_owned(),
                    at: plugin.config_at.clone(),
                };
                LoadFailure::Config(origin.report(&problems))
            })?;
        }
        Ok(examined)
    });
    let Examined {
        signers,
        summary,
        manifest,
        ..
    } = match examined {
        Ok(examined) => examined,
        Err(failure) => {
            check.refused = Some((failure.kind(), failure.to_string()));
            return check;
        }
    };
    check.signers = signers;
    check.manifest = manifest;
    check.contract_version = summary.contract_version().map(str::to_owned);
    (check.imports, check.unused_grants) = imports_and_grants(&summary, &plugin.grants);
    check.missing_grants = check
        .manifest
        .iter()
        .filter_map(|manifest| manifest.metadata.as_ref())
        .flat_map(|metadata| &metadata.grants)
        .filter(|grant| !plugin.grants.allows(grant))
        .cloned()
        .collect();
    check
}
