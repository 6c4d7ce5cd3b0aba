//! `capsule inspect`: what a component is, without compiling or running it.

use std::path::PathBuf;
use std::process::ExitCode;

use capsule_host::artifact::inspect::{Interface, inspect as inspect_component};
use capsule_host::artifact::{sha256_hex, signature};
use capsule_host::input::{MAX_COMPONENT_BYTES, MAX_SIGNATURE_BYTES, read_file};
use clap::Args;
use serde_json::json;

use crate::exit;

/// Arguments of `capsule inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// The plugin component (`.wasm`).
    plugin: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// A detached signature to list instead of the embedded one.
    #[arg(long, value_name = "FILE.sig")]
    signature: Option<PathBuf>,
}

/// Runs `capsule inspect` and returns the process exit code.
pub fn inspect(args: InspectArgs) -> ExitCode {
    let bytes = match read_file(&args.plugin, MAX_COMPONENT_BYTES) {
        Ok(bytes) => bytes,
        Err(err) => {
            eprintln!("error [io]: {err}");
            return exit::code(exit::LOAD_REFUSED);
        }
    };
    if let Err(err) = capsule_host::artifact::inspect::check_header(&bytes) {
        eprintln!("error [malformed]: {}: {err}", args.plugin.display());
        return exit::code(exit::LOAD_REFUSED);
    }
    let detached = match &args.signature {
        Some(path) => match read_file(path, MAX_SIGNATURE_BYTES) {
            Ok(bytes) => Some(bytes),
            Err(err) => {
                eprintln!("error [io]: {err}");
                return exit::code(exit::LOAD_REFUSED);
            }
        },
        None => None,
    };
    let signatures = match signature::list(&bytes, detached.as_deref()) {
        Ok(signatures) => signatures,
        Err(err) => {
            eprintln!("error [bad_signature]: {}: {err}", args.plugin.display());
            return exit::code(exit::LOAD_REFUSED);
        }
    };
    let digest = sha256_hex(&bytes);
    let summary = match inspect_component(&bytes) {
        Ok(summary) => summary,
        Err(err) => {
            eprintln!("error [malformed]: {}: {err}", args.plugin.display());
            return exit::code(exit::LOAD_REFUSED);
        }
    };
    let manifest = match capsule_host::artifact::manifest::read(&bytes) {
        Ok(manifest) => manifest,
        Err(err) => {
            eprintln!("error [invalid_manifest]: {}: {err}", args.plugin.display());
            return exit::code(exit::LOAD_REFUSED);
        }
    };
    if args.json {
        println!(
            "{}",
            json!({
                "path": args.plugin.display().to_string(),
                "size": bytes.len(),
                "sha256": digest,
                "signatures": signatures,
                "contract_version": summary.contract_version(),
                "imports": summary.imports,
                "exports": summary.exports,
                "custom_sections": summary.custom_sections,
                "manifest": manifest,
            })
        );
    } else {
        println!("{}", args.plugin.display());
        println!("  size:      {} bytes", bytes.len());
        println!("  sha256:    {digest}");
        if signatures.is_empty() {
            println!("  signed:    no");
        }
        for signature in &signatures {
            println!(
                "  signed:    key id {}{}",
                signature.key_id.as_deref().unwrap_or("(none given)"),
                if signature.full { "" } else { " (partial)" }
            );
        }
        println!(
            "  contract:  {}",
            summary
                .contract_version()
                .map_or("none".to_owned(), |v| format!(
                    "{}@{v}",
                    capsule_host::CONTRACT_PACKAGE
                ))
        );
        match &manifest {
            Some(manifest) => print_manifest(manifest),
            None => println!("  manifest:  none"),
        }
        print_list("imports", &summary.imports);
        print_list("exports", &summary.exports);
    }
    exit::code(exit::OK)
}

/// The distribution metadata, one line per field it has.
fn print_metadata(metadata: &capsule_host::artifact::metadata::Metadata) {
    let mut rows: Vec<(&str, String)> = vec![
        ("authors:", metadata.authors.join(", ")),
        ("license:", metadata.license.clone().unwrap_or_default()),
        ("homepage:", metadata.homepage.clone().unwrap_or_default()),
        ("source:", metadata.repository.clone().unwrap_or_default()),
        ("docs:", metadata.documentation.clone().unwrap_or_default()),
        ("tags:", metadata.tags.join(", ")),
        ("category:", metadata.categories.join(", ")),
    ];
    if !metadata.grants.is_empty() {
        rows.push(("needs:", format!("grants {}", metadata.grants.join(", "))));
    }
    if let Some(version) = &metadata.min_contract {
        rows.push((
            "needs:",
            format!("contract {version} or later on its track"),
        ));
    }
    for (label, value) in rows {
        if !value.is_empty() {
            println!("  {label:<10} {value}");
        }
    }
}

/// The manifest's facts and operations, one line each; schemas are in
/// `--json`.
fn print_manifest(manifest: &capsule_host::artifact::manifest::Manifest) {
    println!("  plugin:    {} {}", manifest.name, manifest.version);
    if !manifest.capabilities.is_empty() {
        println!("  provides:  {}", manifest.capabilities.join(", "));
    }
    for requirement in &manifest.requires {
        println!("  requires:  {requirement}");
    }
    if let Some(metadata) = &manifest.metadata {
        print_metadata(metadata);
    }
    println!("  operations:");
    match &manifest.operations {
        None => println!("    (not declared: its `handle` does not route through a `Dispatch`)"),
        Some(declared) if declared.is_empty() => println!("    (none)"),
        Some(_) => {}
    }
    for operation in manifest.operations.iter().flatten() {
        let schemas = match (&operation.input, &operation.output) {
            (Some(_), Some(_)) => "  [input and output schemas]",
            (Some(_), None) => "  [input schema]",
            (None, Some(_)) => "  [output schema]",
            (None, None) => "",
        };
        let schemas = if operation.pure {
            format!("{schemas}  [pure: cached, no writes]")
        } else {
            schemas.to_owned()
        };
        if operation.description.is_empty() {
            println!("    {}{schemas}", operation.name);
        } else {
            println!("    {}: {}{schemas}", operation.name, operation.description);
        }
    }
    if !manifest.metrics.is_empty() {
        println!("  metrics:");
        for metric in &manifest.metrics {
            let labels = if metric.labels.is_empty() {
                String::new()
            } else {
                format!(" {{{}}}", metric.labels.join(", "))
            };
            println!(
                "    capsule_{} ({}){labels}: {}",
                metric.family(),
                metric.kind.as_str(),
                metric.help
            );
        }
    }
}

fn print_list(title: &str, items: &[Interface]) {
    println!("  {title}:");
    if items.is_empty() {
        println!("    (none)");
    }
    for item in items {
        println!("    {}", item.name);
    }
}
