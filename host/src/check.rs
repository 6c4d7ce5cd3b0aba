//! `capsule check`: validates a policy and every plugin in it without
//! compiling or running anything — signature, contract version, and each
//! import next to the grant that serves it.

use std::path::PathBuf;

use serde::Serialize;

use crate::admission::{Examined, TrustPolicy, check_memory, examine, io_failure};
use crate::error::ErrorKind;
use crate::input::{self, MAX_COMPONENT_BYTES, MAX_SIGNATURE_BYTES};
use crate::policy::{PluginPolicy, Policy};
use crate::services::Availability;

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
    /// The plugin's edges in the call graph (its `calls` grant) and what
    /// each one reaches in this policy.
    pub calls: Vec<CallEdge>,
}

/// One edge of the call graph.
#[derive(Debug, Clone, Serialize)]
pub struct CallEdge {
    /// The edge as granted: `storage`, `images:resize`, `capability:NAME`.
    pub edge: String,
    /// Whether the plugin it names is in the policy (always true for a
    /// capability, whose providers are known once they load).
    pub reaches: bool,
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
        warnings.extend(self.calls.iter().filter(|edge| !edge.reaches).map(|edge| {
            format!(
                "the call edge `{}` names a plugin this policy does not load: its calls will fail as unknown targets",
                edge.edge
            )
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
    policy
        .plugins
        .iter()
        .map(|(name, plugin)| {
            let mut check = check_plugin(name, plugin, &trust);
            check.calls = plugin
                .grants
                .calls
                .iter()
                .map(|edge| CallEdge {
                    edge: edge.to_string(),
                    reaches: edge
                        .plugin()
                        .is_none_or(|callee| policy.plugins.contains_key(callee)),
                })
                .collect();
            check
        })
        .collect()
}

fn check_plugin(name: &str, plugin: &PluginPolicy, trust: &TrustPolicy) -> PluginCheck {
    let mut check = PluginCheck {
        name: name.to_owned(),
        path: plugin.path.clone(),
        refused: None,
        signers: Vec::new(),
        contract_version: None,
        imports: Vec::new(),
        unused_grants: Vec::new(),
        calls: Vec::new(),
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
        Ok(examined)
    });
    let Examined {
        signers, summary, ..
    } = match examined {
        Ok(examined) => examined,
        Err(failure) => {
            check.refused = Some((failure.kind(), failure.to_string()));
            return check;
        }
    };
    check.signers = signers;
    check.contract_version = summary.contract_version().map(str::to_owned);
    for import in &summary.imports {
        let status = match plugin.grants.serving(import) {
            Some((name, Availability::Granted)) => ImportStatus::Granted(name),
            Some((name, Availability::NotGranted)) => ImportStatus::NotGranted(name),
            Some((_, Availability::Never)) => ImportStatus::NeverGranted,
            // Admission refused anything no service answers.
            Some((_, Availability::Always)) | None => ImportStatus::Provided,
        };
        check.imports.push(ImportCheck {
            import: import.name.clone(),
            status,
        });
    }
    // A grant the operator gave that no import of the plugin can use.
    check.unused_grants = plugin
        .grants
        .granted()
        .into_iter()
        .filter(|(_, imports)| {
            !summary
                .imports
                .iter()
                .any(|import| imports.iter().any(|i| i.matches(import)))
        })
        .map(|(name, _)| name.to_owned())
        .collect();
    check
}
