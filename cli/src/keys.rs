//! `capsule keygen`, `capsule sign` and `capsule verify`: managing plugin
//! signatures from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use capsule_host::artifact::signature;
use capsule_host::input::{MAX_COMPONENT_BYTES, MAX_SIGNATURE_BYTES, read_file};
use capsule_host::{ErrorKind, PublicKey, SecretKey};
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
