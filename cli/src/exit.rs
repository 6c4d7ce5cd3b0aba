//! Exit codes, one per class of outcome, so scripts can tell a refused
//! plugin from a failing one from one the sandbox stopped.

use std::process::ExitCode;

use capsule_host::{ErrorKind, Policy};

/// The call succeeded.
pub const OK: u8 = 0;
/// The host itself failed.
pub const HOST: u8 = 1;
/// Bad arguments or configuration (clap also exits with 2 on usage errors).
pub const USAGE: u8 = 2;
/// The plugin was refused at load: unreadable, malformed, unsigned, badly
/// signed, untrusted, incompatible, or asking for what it was not granted.
pub const LOAD_REFUSED: u8 = 3;
/// The plugin ran and returned its own error.
pub const PLUGIN_ERROR: u8 = 4;
/// The sandbox stopped the plugin at a limit (fuel, time, memory, stack,
/// output, input, busy) or the host declined to serve it now (paused,
/// circuit open, rejected by middleware).
pub const LIMIT: u8 = 5;
/// The plugin trapped (a panic or another fault) or is unknown.
pub const TRAP: u8 = 6;
/// A registry could not be reached, refused the request, or does not have
/// the plugin.
pub const REGISTRY: u8 = 7;

/// The exit code for a failure of `kind`.
pub fn code_for(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Config => USAGE,
        ErrorKind::Io
        | ErrorKind::Malformed
        | ErrorKind::Unsigned
        | ErrorKind::BadSignature
        | ErrorKind::UntrustedKey
        | ErrorKind::IncompatibleContract
        | ErrorKind::MissingGrant
        | ErrorKind::Compile
        | ErrorKind::InitFailed
        | ErrorKind::InvalidManifest
        | ErrorKind::MissingDependency
        | ErrorKind::DependencyCycle => LOAD_REFUSED,
        // Refused before the plugin ran, as the plugin itself would have.
        ErrorKind::PluginError | ErrorKind::InvalidInput => PLUGIN_ERROR,
        ErrorKind::Trap | ErrorKind::UnknownPlugin => TRAP,
        ErrorKind::Paused
        | ErrorKind::CircuitOpen
        | ErrorKind::Rejected
        | ErrorKind::Conflict
        | ErrorKind::QuotaExceeded => LIMIT,
        kind if kind.is_limit() => LIMIT,
        _ => HOST,
    }
}

/// Shorthand for `ExitCode::from(code)`.
pub fn code(code: u8) -> ExitCode {
    ExitCode::from(code)
}

/// The exit code for a registry or local store failure of `kind` (see
/// [`capsule_host::distribution::DistributionError::kind`]).
pub fn code_for_distribution(kind: &str) -> u8 {
    match kind {
        "bad_reference" => USAGE,
        "registry_unreachable" | "not_found" | "registry_refused" | "not_stored" => REGISTRY,
        "too_large" | "malformed_artifact" | "digest_mismatch" => LOAD_REFUSED,
        _ => HOST,
    }
}

/// The validated policy at `path`, or (after printing every problem, one
/// line each) the usage exit code.
pub fn policy_or_usage(path: &std::path::Path) -> Result<Policy, ExitCode> {
    policy_fetching(path, capsule_host::distribution::Fetch::Online)
}

/// [`policy_or_usage`], resolving OCI sources as `fetch` says.
pub fn policy_fetching(
    path: &std::path::Path,
    fetch: capsule_host::distribution::Fetch,
) -> Result<Policy, ExitCode> {
    Policy::load_fetching(path, None, fetch).map_err(|errors| {
        for error in &errors.0 {
            eprintln!("error [config]: {error}");
        }
        code(USAGE)
    })
}
