//! `capsule push`, `capsule pull` and `capsule search`: signed plugins to and
//! from OCI registries (see `capsule_host::distribution`).

use std::path::PathBuf;
use std::process::ExitCode;

use capsule_host::ErrorKind;
use capsule_host::artifact::signature;
use capsule_host::artifact::{inspect, manifest};
use capsule_host::distribution::layout::{Artifact, keys};
use capsule_host::distribution::{
    DistributionError, OciOptions, OciReference, Registry, RepositoryListing,
};
use capsule_host::input::{MAX_COMPONENT_BYTES, read_file};
use clap::Args;
use serde_json::json;

use crate::exit;

/// Where registries are reached and pulled plugins kept.
#[derive(Args)]
pub struct RegistryArgs {
    /// The local store of pulled plugins (default: the user's cache,
    /// `~/.cache/capsule/plugins`).
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Reach the registry over plain HTTP although it is not on a loopback
    /// address (loopback registries always are).
    #[arg(long)]
    insecure: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl RegistryArgs {
    fn options(&self, reference: &OciReference) -> OciOptions {
        OciOptions {
            store: self.store.clone(),
            insecure: if self.insecure {
                vec![reference.registry.clone()]
            } else {
                Vec::new()
            },
            ..OciOptions::default()
        }
    }
}

/// Arguments of `capsule push`.
#[derive(Args)]
pub struct PushArgs {
    /// The signed component.
    plugin: PathBuf,
    /// Where to push it: `REGISTRY/REPOSITORY:TAG` (`oci://` optional).
    reference: String,
    /// A public key the plugin must be signed by (repeatable; raw, PEM or
    /// OpenSSH). `push` refuses a plugin no given key signed.
    #[arg(long, value_name = "KEY.pub")]
    trust: Vec<PathBuf>,
    /// Trust the keys of this policy's `[host] trusted_keys` as well.
    #[arg(long, value_name = "FILE.toml")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Arguments of `capsule pull`.
#[derive(Args)]
pub struct PullArgs {
    /// What to pull: `REGISTRY/REPOSITORY:TAG` or `…@sha256:DIGEST`.
    reference: String,
    /// Copy the component to this file as well.
    #[arg(short, long, value_name = "FILE.wasm")]
    output: Option<PathBuf>,
    /// A public key the plugin must be signed by (repeatable): with it, a
    /// plugin no given key signed is refused and not written to `--output`.
    #[arg(long, value_name = "KEY.pub")]
    trust: Vec<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Arguments of `capsule search`.
#[derive(Args)]
pub struct SearchArgs {
    /// The registry: `HOST[:PORT]`.
    registry: String,
    /// Only plugins whose metadata carries this tag.
    #[arg(long, value_name = "TAG")]
    tag: Option<String>,
    #[command(flatten)]
    options: RegistryArgs,
}

fn fail(err: &DistributionError) -> ExitCode {
    eprintln!("error [{}]: {err}", err.kind());
    exit::code(exit::code_for_distribution(err.kind()))
}

fn fail_kind(kind: ErrorKind, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error [{kind}]: {message}");
    exit::code(exit::code_for(kind))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

fn parse(reference: &str) -> Result<OciReference, ExitCode> {
    OciReference::parse(reference).map_err(|err| fail(&err))
}

/// Runs `capsule push`: verifies the plugin's embedded signature against
/// the given keys, then pushes it as a Wasm OCI artifact with its metadata
/// as annotations.
pub fn push(args: PushArgs) -> ExitCode {
    let reference = match parse(&args.reference) {
        Ok(reference) => reference,
        Err(code) => return code,
    };
    let mut keys = match crate::keys::load_keys(&args.trust) {
        Ok(keys) => keys,
        Err(code) => return code,
    };
    if let Some(policy) = &args.policy {
        match exit::policy_fetching(policy, capsule_host::distribution::Fetch::Offline) {
            Ok(policy) => keys.extend(policy.host.trusted_keys.iter().map(|(_, key)| key.clone())),
            Err(code) => return code,
        }
    }
    if keys.is_empty() {
        return fail_kind(
            ErrorKind::Config,
            "push verifies the plugin's signature first: name the keys it must be signed by \
             with --trust KEY.pub or --policy FILE.toml",
        );
    }
    let bytes = match read_file(&args.plugin, MAX_COMPONENT_BYTES) {
        Ok(bytes) => bytes,
        Err(err) => return fail_kind(ErrorKind::Io, err),
    };
    let at = |message: &dyn std::fmt::Display| format!("{}: {message}", args.plugin.display());
    let summary = match inspect::inspect(&bytes) {
        Ok(summary) => summary,
        Err(err) => return fail_kind(ErrorKind::Malformed, at(&err)),
    };
    let verified = match signature::verify(&bytes, None, &keys, false) {
        Ok(verified) => verified,
        Err(err) => {
            let kind = match err {
                signature::SignatureError::Unsigned => ErrorKind::Unsigned,
                signature::SignatureError::Bad(_) => ErrorKind::BadSignature,
                signature::SignatureError::UntrustedKey { .. } => ErrorKind::UntrustedKey,
            };
            return fail_kind(kind, at(&format!("{err}; nothing was pushed")));
        }
    };
    let manifest = match manifest::read(&bytes) {
        Ok(manifest) => manifest,
        Err(err) => return fail_kind(ErrorKind::InvalidManifest, at(&err)),
    };
    let signers: Vec<String> = verified.signers.iter().map(|s| s.to_string()).collect();
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let artifact = Artifact::build(&bytes, &summary, manifest.as_ref(), &signers, &created);
    let options = args.registry.options(&reference);
    let pushed = runtime().block_on(async {
        let registry = Registry::new(&options)?;
        registry.push(&reference, &bytes, &artifact).await
    });
    match pushed {
        Ok(pushed) => {
            if args.registry.json {
                println!(
                    "{}",
                    json!({
                        "reference": pushed.reference.to_string(),
                        "manifest_digest": pushed.manifest_digest,
                        "component_digest": pushed.component_digest,
                        "size": bytes.len(),
                        "signers": signers,
                    })
                );
            } else {
                println!(
                    "pushed {} ({} bytes, signed by key id {})",
                    pushed.reference,
                    bytes.len(),
                    signers.join(", ")
                );
            }
            exit::code(exit::OK)
        }
        Err(err) => fail(&err),
    }
}

/// Runs `capsule pull`: the plugin into the local store (digests checked),
/// optionally verified against keys and copied to a file.
pub fn pull(args: PullArgs) -> ExitCode {
    let reference = match parse(&args.reference) {
        Ok(reference) => reference,
        Err(code) => return code,
    };
    let keys = match crate::keys::load_keys(&args.trust) {
        Ok(keys) => keys,
        Err(code) => return code,
    };
    let options = args.registry.options(&reference);
    let started = std::time::Instant::now();
    let pulled = runtime().block_on(async {
        let store = options.open_store()?;
        let registry = Registry::new(&options)?;
        registry.pull(&reference, &store).await
    });
    let pulled = match pulled {
        Ok(pulled) => pulled,
        Err(err) => return fail(&err),
    };
    let elapsed = started.elapsed();
    let bytes = match read_file(&pulled.path, MAX_COMPONENT_BYTES) {
        Ok(bytes) => bytes,
        Err(err) => return fail_kind(ErrorKind::Io, err),
    };
    let mut signers = Vec::new();
    if !keys.is_empty() {
        match signature::verify(&bytes, None, &keys, false) {
            Ok(verified) => signers = verified.signers.iter().map(|s| s.to_string()).collect(),
            Err(err) => {
                let kind = match err {
                    signature::SignatureError::Unsigned => ErrorKind::Unsigned,
                    signature::SignatureError::Bad(_) => ErrorKind::BadSignature,
                    signature::SignatureError::UntrustedKey { .. } => ErrorKind::UntrustedKey,
                };
                return fail_kind(kind, format!("{reference}: {err}; not written"));
            }
        }
    }
    if let Some(output) = &args.output
        && let Err(err) = std::fs::write(output, &bytes)
    {
        return fail_kind(ErrorKind::Io, format!("{}: {err}", output.display()));
    }
    let stored = &pulled.stored;
    if args.registry.json {
        println!(
            "{}",
            json!({
                "reference": stored.reference,
                "manifest_digest": stored.manifest_digest,
                "component_digest": stored.component_digest,
                "path": pulled.path,
                "output": args.output,
                "cached": pulled.cached,
                "size": bytes.len(),
                "signers": signers,
                "annotations": stored.annotations,
                "seconds": elapsed.as_secs_f64(),
            })
        );
    } else {
        println!(
            "pulled {}@{} ({} bytes{}) in {:.0?}",
            reference,
            stored.manifest_digest,
            bytes.len(),
            if pulled.cached {
                ", already in the local store"
            } else {
                ""
            },
            elapsed
        );
        println!("  component: {}", pulled.path.display());
        if let Some(output) = &args.output {
            println!("  copied to: {}", output.display());
        }
        if !signers.is_empty() {
            println!("  verified:  signed by key id {}", signers.join(", "));
        }
        print_annotations(&stored.annotations, "  ");
    }
    exit::code(exit::OK)
}

/// Runs `capsule search`: the registry's repositories, their tags and each
/// tag's plugin metadata.
pub fn search(args: SearchArgs) -> ExitCode {
    let registry_ref = match parse(&format!(
        "{}/capsule-search",
        args.registry.trim_end_matches('/')
    )) {
        Ok(reference) => reference,
        Err(code) => return code,
    };
    let options = args.options.options(&registry_ref);
    let found: Result<Vec<RepositoryListing>, DistributionError> = runtime().block_on(async {
        let registry = Registry::new(&options)?;
        registry.search(&registry_ref, args.tag.as_deref()).await
    });
    let found = match found {
        Ok(found) => found,
        Err(err) => return fail(&err),
    };
    if args.options.json {
        println!(
            "{}",
            json!({ "registry": registry_ref.registry, "repositories": found })
        );
        return exit::code(exit::OK);
    }
    if found.is_empty() {
        println!("no plugins found in {}", registry_ref.registry);
    }
    for repository in &found {
        for tag in &repository.tags {
            let reference = format!(
                "{}/{}:{}",
                registry_ref.registry, repository.repository, tag.tag
            );
            match &tag.error {
                Some(error) => println!("{reference}  (not a plugin: {error})"),
                None => {
                    let a = &tag.annotations;
                    let title = a
                        .get("org.opencontainers.image.title")
                        .map_or("", String::as_str);
                    let version = a
                        .get("org.opencontainers.image.version")
                        .map_or("", String::as_str);
                    println!("{reference}  {title} {version}");
                    print_annotations(a, "  ");
                }
            }
        }
    }
    exit::code(exit::OK)
}

/// The metadata a manifest's annotations carry, one line each.
fn print_annotations(annotations: &std::collections::BTreeMap<String, String>, indent: &str) {
    let rows = [
        ("description", "org.opencontainers.image.description"),
        ("authors", "org.opencontainers.image.authors"),
        ("license", "org.opencontainers.image.licenses"),
        ("homepage", "org.opencontainers.image.url"),
        ("source", "org.opencontainers.image.source"),
        ("tags", keys::TAGS),
        ("categories", keys::CATEGORIES),
        ("needs", keys::GRANTS),
        ("contract", keys::CONTRACT),
        ("signers", keys::SIGNERS),
    ];
    for (label, key) in rows {
        if let Some(value) = annotations.get(key) {
            // Annotations come from whoever pushed: no control characters
            // reach the terminal.
            let value = capsule_host::text::for_log(value, 512);
            println!("{indent}{:<13}{value}", format!("{label}:"));
        }
    }
}
