//! `capsule keygen`, `capsule sign` and `capsule verify`: managing plugin
//! signatures from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use capsule_host::artifact::{manifest, signature};
use capsule_host::input::{MAX_COMPONENT_BYTES, MAX_SIGNATURE_BYTES, read_file};
use capsule_host::{ErrorKind, Host, Limits, PluginSpec, PublicKey, SecretKey};
use clap::Args;

use crate::exit;

/// Arguments of `capsule keygen`.
#[derive(Args)]
pub struct KeygenArgs {
    /// Writes PREFIX.key (secret, mode 0600) and PREFIX.pub.
    #[arg(long, value_name = "PREFIX")]
    out: PathBuf,
    /// Write PEM (PKCS#8 / SPKI) instead of wasmsign2's raw format.
    #[arg(long)]
    pem: bool,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

/// Arguments of `capsule sign`.
#[derive(Args)]
pub struct SignArgs {
    /// The component to sign.
    plugin: PathBuf,
    /// The secret key (wasmsign2 raw or PEM).
    #[arg(long)]
    key: PathBuf,
    /// Where to write the signed component (default: sign in place, unless
    /// only a detached signature is asked for).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Also (or only) write the signature to this file, detached.
    #[arg(long, value_name = "OUT.sig")]
    detached: Option<PathBuf>,
    /// Sign the component as it is, without asking it for its manifest.
    /// By default an unsigned contract-0.2 component is run once (its
    /// `manifest` export, in a sandbox with no grants) and the answer is
    /// embedded as the `capsule-manifest` section before signing.
    #[arg(long)]
    no_manifest: bool,
}

/// Arguments of `capsule verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// The component to verify.
    plugin: PathBuf,
    /// A trusted public key (repeatable; raw, PEM or OpenSSH).
    #[arg(long, required = true, value_name = "KEY.pub")]
    trust: Vec<PathBuf>,
    /// A detached signature to verify instead of the embedded one.
    #[arg(long, value_name = "FILE.sig")]
    signature: Option<PathBuf>,
    /// Accept a trusted signature that covers only part of the component.
    #[arg(long)]
    allow_partial: bool,
}

fn fail(kind: ErrorKind, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error [{kind}]: {message}");
    exit::code(exit::code_for(kind))
}

/// Reads a component or signature file safely (a regular file within
/// `max_bytes`; see `capsule_host::input`).
fn read(path: &Path, max_bytes: u64) -> Result<Vec<u8>, ExitCode> {
    read_file(path, max_bytes).map_err(|err| fail(ErrorKind::Io, err))
}

/// Loads trusted keys named on the command line.
pub fn load_keys(paths: &[PathBuf]) -> Result<Vec<PublicKey>, ExitCode> {
    paths
        .iter()
        .map(|path| PublicKey::from_file(path).map_err(|err| fail(ErrorKind::Config, err)))
        .collect()
}

/// Runs `capsule keygen`.
pub fn keygen(args: KeygenArgs) -> ExitCode {
    let key = match SecretKey::generate() {
        Ok(key) => key,
        Err(err) => return fail(ErrorKind::Host, err),
    };
    let secret_path = with_suffix(&args.out, "key");
    let public_path = with_suffix(&args.out, "pub");
    let (secret, public) = if args.pem {
        (
            key.to_pem().into_bytes(),
            key.public_key().to_pem().into_bytes(),
        )
    } else {
        (key.to_raw(), key.public_key().to_raw())
    };
    if let Err(err) = write_new(&secret_path, &secret, true, args.force)
        .and_then(|()| write_new(&public_path, &public, false, args.force))
    {
        return fail(ErrorKind::Config, err);
    }
    println!("secret key: {}", secret_path.display());
    println!("public key: {}", public_path.display());
    println!("key id:     {}", key.public_key().key_id());
    exit::code(exit::OK)
}

/// Runs `capsule sign`.
pub fn sign(args: SignArgs) -> ExitCode {
    let key = match SecretKey::from_file(&args.key) {
        Ok(key) => key,
        Err(err) => return fail(ErrorKind::Config, err),
    };
    let bytes = match read(&args.plugin, MAX_COMPONENT_BYTES) {
        Ok(bytes) => bytes,
        Err(code) => return code,
    };
    if let Err(err) = capsule_host::artifact::inspect::check_header(&bytes) {
        return fail(
            ErrorKind::Malformed,
            format!("{}: {err}", args.plugin.display()),
        );
    }
    // Only a component written out can gain a section: a detached signature
    // alone must cover the file exactly as it is.
    let writes_component = args.output.is_some() || args.detached.is_none();
    let bytes = if writes_component && !args.no_manifest {
        match with_manifest(&args.plugin, bytes) {
            Ok(bytes) => bytes,
            Err(code) => return code,
        }
    } else {
        bytes
    };
    let signed = match signature::sign(&bytes, &key) {
        Ok(signed) => signed,
        Err(err) => {
            return fail(
                ErrorKind::Malformed,
                format!("{}: {err}", args.plugin.display()),
            );
        }
    };
    if let Some(path) = &args.detached {
        if let Err(err) = std::fs::write(path, &signed.signature) {
            return fail(
                ErrorKind::Io,
                format!("cannot write {}: {err}", path.display()),
            );
        }
        println!("detached signature: {}", path.display());
    }
    let output = match (&args.output, &args.detached) {
        (Some(output), _) => Some(output.clone()),
        (None, Some(_)) => None,
        (None, None) => Some(args.plugin.clone()),
    };
    if let Some(output) = output {
        if let Err(err) = replace_file(&output, &signed.embedded) {
            return fail(
                ErrorKind::Io,
                format!("cannot write {}: {err}", output.display()),
            );
        }
        println!("signed component: {}", output.display());
    }
    println!("key id: {}", key.public_key().key_id());
    exit::code(exit::OK)
}

/// The memory a plugin may use while it builds its manifest for signing.
const SIGNING_MEMORY_BYTES: u64 = 1 << 30;

/// `bytes` with the plugin's manifest embedded, when it can have one: an
/// unsigned component (a signed one's content is fixed by its signatures)
/// without a manifest yet, built against contract 0.2. The plugin runs once,
/// without `init`, grants or trust, under the default limits (with
/// [`SIGNING_MEMORY_BYTES`] of memory), and its document is embedded as it
/// wrote it.
fn with_manifest(path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>, ExitCode> {
    let at = |err: &dyn std::fmt::Display| format!("{}: {err}", path.display());
    if manifest::read(&bytes)
        .map_err(|err| fail(ErrorKind::InvalidManifest, at(&err)))?
        .is_some()
    {
        return Ok(bytes);
    }
    if !signature::list(&bytes, None)
        .map_err(|err| fail(ErrorKind::Malformed, at(&err)))?
        .is_empty()
    {
        eprintln!(
            "note: {} is already signed; it is signed again as it is, without a manifest",
            path.display()
        );
        return Ok(bytes);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| fail(ErrorKind::Host, format!("cannot start a runtime: {err}")))?;
    // The author's own plugin, before it is signed: the host's warnings
    // about unsigned code are noise here.
    let _quiet = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
    let asked = runtime.block_on(async {
        let host = Host::builder()
            .allow_unsigned(true)
            .build()
            .map_err(|err| fail(ErrorKind::Host, err))?;
        // Room for a plugin whose policy gives it more memory than the
        // default; time and fuel stay the defaults.
        let limits = Limits {
            memory_bytes: SIGNING_MEMORY_BYTES,
            ..host.default_limits().clone()
        };
        let spec = PluginSpec::from_bytes("signing", bytes.clone()).limits(limits);
        host.ask_manifest(spec).await.map_err(|err| {
            fail(
                err.kind(),
                at(&format!(
                    "cannot read the plugin's manifest (sign with --no-manifest to skip it): {}",
                    err.cause
                )),
            )
        })
    })?;
    match asked {
        Some((found, document)) => {
            let embedded = manifest::embed(&bytes, document.as_bytes())
                .map_err(|err| fail(ErrorKind::Malformed, at(&err)))?;
            let operations = match &found.operations {
                Some(operations) => format!("{} operation(s)", operations.len()),
                None => "operations not declared".to_owned(),
            };
            println!(
                "manifest: {} {} with {operations}, {} requirement(s)",
                found.name,
                found.version,
                found.requires.len()
            );
            Ok(embedded)
        }
        None => Ok(bytes),
    }
}

/// Runs `capsule verify`.
pub fn verify(args: VerifyArgs) -> ExitCode {
    let keys = match load_keys(&args.trust) {
        Ok(keys) => keys,
        Err(code) => return code,
    };
    let bytes = match read(&args.plugin, MAX_COMPONENT_BYTES) {
        Ok(bytes) => bytes,
        Err(code) => return code,
    };
    let detached = match args
        .signature
        .as_deref()
        .map(|path| read(path, MAX_SIGNATURE_BYTES))
        .transpose()
    {
        Ok(detached) => detached,
        Err(code) => return code,
    };
    if let Err(err) = capsule_host::artifact::inspect::check_header(&bytes) {
        return fail(
            ErrorKind::Malformed,
            format!("{}: {err}", args.plugin.display()),
        );
    }
    match signature::verify(&bytes, detached.as_deref(), &keys, args.allow_partial) {
        Ok(verified) => {
            for signer in &verified.signers {
                println!("verified: signed by key id {signer}");
            }
            if verified.partial {
                println!("warning: the signature covers only part of the component");
            }
            exit::code(exit::OK)
        }
        Err(err) => {
            let kind = match err {
                signature::SignatureError::Unsigned => ErrorKind::Unsigned,
                signature::SignatureError::Bad(_) => ErrorKind::BadSignature,
                signature::SignatureError::UntrustedKey { .. } => ErrorKind::UntrustedKey,
            };
            fail(kind, format!("{}: {err}", args.plugin.display()))
        }
    }
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Writes a new file; a secret gets mode 0600 from the moment it exists.
fn write_new(path: &Path, bytes: &[u8], secret: bool, force: bool) -> Result<(), String> {
    if force {
        let _ = std::fs::remove_file(path);
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(|err| {
        if err.kind() == std::io::ErrorKind::AlreadyExists {
            format!("{} exists (use --force to replace it)", path.display())
        } else {
            format!("cannot create {}: {err}", path.display())
        }
    })?;
    file.write_all(bytes)
        .map_err(|err| format!("cannot write {}: {err}", path.display()))
}

/// Replaces a file atomically (write beside it, then rename).
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = with_suffix(path, "signing");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
