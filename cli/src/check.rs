//! `capsule check`: validate a policy and every plugin in it without
//! compiling or running anything.

use std::path::PathBuf;
use std::process::ExitCode;

use capsule_host::check::{ImportStatus, PluginCheck, check_policy};
use clap::Args;
use serde_json::json;

use crate::exit;

/// Arguments of `capsule check`.
#[derive(Args)]
pub struct CheckArgs {
    /// The policy file.
    #[arg(long, default_value = "capsule.toml", value_name = "FILE.toml")]
    config: PathBuf,
    /// Treat warnings (imports that will be denied, unused grants) as
    /// failures.
    #[arg(long)]
    strict: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Resolve `source = "oci://…"` plugins from the local store only,
    /// asking no registry.
    #[arg(long)]
    offline: bool,
}

/// Runs `capsule check`: exit 0 when every plugin would load (and, with
/// `--strict`, nothing was flagged), 2 for an invalid policy, 3 when a
/// plugin would be refused or `--strict` found warnings.
pub fn check(args: CheckArgs) -> ExitCode {
    let fetch = if args.offline {
        capsule_host::distribution::Fetch::Offline
    } else {
        capsule_host::distribution::Fetch::Online
    };
    let policy = match exit::policy_fetching(&args.config, fetch) {
        Ok(policy) => policy,
        Err(code) => return code,
    };
    let checks = check_policy(&policy);
    let refused = checks.iter().filter(|c| c.refused.is_some()).count();
    let warnings: usize = checks.iter().map(|c| c.warnings().len()).sum();
    if args.json {
        let plugins: Vec<_> = checks
            .iter()
            .map(|check| json!({
                "name": check.name,
                "path": check.path,
                "source": check.origin.as_ref().map(|origin| json!({
                    "reference": origin.reference.to_string(),
                    "manifest_digest": origin.resolved.as_ref().map(|r| &r.manifest_digest),
                    "component_digest": origin.resolved.as_ref().map(|r| &r.component_digest),
                    "fallback": origin.fallback,
                })),
                "ok": check.refused.is_none(),
                "refused": check.refused.as_ref().map(|(kind, message)| json!({"kind": kind, "message": message})),
                "signers": check.signers,
                "contract_version": check.contract_version,
                "imports": check.imports,
                "unused_grants": check.unused_grants,
                "missing_grants": check.missing_grants,
                "calls": check.calls,
                "manifest": check.manifest,
                "warnings": check.warnings(),
            }))
            .collect();
        println!(
            "{}",
            json!({ "policy": policy.file, "plugins": plugins, "refused": refused, "warnings": warnings })
        );
    } else {
        println!("{}: {} plugins", policy.file.display(), checks.len());
        for check in &checks {
            print_check(check);
        }
        println!();
        println!("{refused} refused, {warnings} warnings");
    }
    if refused > 0 || (args.strict && warnings > 0) {
        exit::code(exit::LOAD_REFUSED)
    } else {
        exit::code(exit::OK)
    }
}

fn print_check(check: &PluginCheck) {
    println!();
    println!("{}  ({})", check.name, check.path.display());
    if let Some(origin) = &check.origin {
        let resolved = origin
            .resolved
            .as_ref()
            .map_or("unresolved".to_owned(), |r| r.manifest_digest.clone());
        println!("  source:    oci://{} → {resolved}", origin.reference);
        if let Some(why) = &origin.fallback {
            println!("  source:    the local store's copy ({why})");
        }
    }
    if let Some((kind, message)) = &check.refused {
        println!("  REFUSED [{kind}]: {message}");
        return;
    }
    if check.signers.is_empty() {
        println!("  signature: none trusted (loads only because unsigned plugins are allowed)");
    } else {
        println!("  signature: ok, key id {}", check.signers.join(", "));
    }
    println!(
        "  contract:  {}@{}",
        capsule_host::CONTRACT_PACKAGE,
        check.contract_version.as_deref().unwrap_or("unknown")
    );
    match &check.manifest {
        Some(manifest) => {
            let operations = match &manifest.operations {
                Some(declared) => {
                    let names: Vec<&str> = declared.iter().map(|o| o.name.as_str()).collect();
                    if names.is_empty() {
                        "0 operation(s)".to_owned()
                    } else {
                        format!("{} operation(s): {}", names.len(), names.join(", "))
                    }
                }
                None => "operations not declared".to_owned(),
            };
            println!(
                "  manifest:  {} {}, {operations}",
                manifest.name, manifest.version
            );
            for requirement in &manifest.requires {
                println!("  requires:  {requirement}");
            }
        }
        None => println!("  manifest:  none (operations and requirements unknown)"),
    }
    println!("  imports:");
    let width = check
        .imports
        .iter()
        .map(|i| i.import.len())
        .max()
        .unwrap_or(0);
    let mut provided = Vec::new();
    for import in &check.imports {
        let status = match import.status {
            ImportStatus::Provided => {
                provided.push(import.import.as_str());
                continue;
            }
            ImportStatus::Granted(grant) => format!("granted by `{grant}`"),
            ImportStatus::NotGranted(grant) => {
                format!("NOT GRANTED: needs `{grant}`, calls will be denied")
            }
            ImportStatus::NeverGranted => "NEVER GRANTED: calls will be denied".to_owned(),
        };
        println!("    {:width$}  {status}", import.import);
    }
    if !provided.is_empty() {
        let mut packages: Vec<&str> = provided
            .iter()
            .map(|name| name.split('/').next().unwrap_or(name))
            .collect();
        packages.sort_unstable();
        packages.dedup();
        println!(
            "    + {} always-provided imports ({})",
            provided.len(),
            packages.join(", ")
        );
    }
    for unmet in &check.uncertain {
        println!("  requires:  MAYBE UNMET: {unmet} (plugins without a manifest may provide it)");
    }
    for grant in &check.missing_grants {
        println!("  grant `{grant}`: MISSING, the plugin says it needs it to be useful");
    }
    for grant in &check.unused_grants {
        println!("  grant `{grant}`: UNUSED, no import of the plugin can use it");
    }
    if !check.calls.is_empty() {
        println!("  calls:");
        for edge in &check.calls {
            let note = if !edge.reaches {
                "  NOT IN THIS POLICY: calls will fail as unknown targets"
            } else if edge.declared == Some(false) {
                "  NOT DECLARED: the plugin's manifest has no such operation"
            } else {
                ""
            };
            println!("    → {}{note}", edge.edge);
        }
    }
}
