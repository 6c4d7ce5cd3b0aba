//! Admission: every check of a plugin that needs no compiling, shared by
//! loading and `capsule check` — the header, the signature (verified before
//! anything looks inside the plugin), the structure, the contract version,
//! every import against the host services that could answer it, and the
//! memory its modules need at start. A refused plugin costs no compilation.

use crate::artifact::inspect::{
    ComponentSummary, Interface, check_header, inspect, version_compatible,
};
use crate::artifact::manifest::{self, Manifest};
use crate::artifact::signature::{self, SignatureError};
use crate::artifact::{PublicKey, sha256_hex};
use crate::contract::{CONTRACT_PACKAGE, served_contracts};
use crate::error::{CallFailure, LoadFailure};
use crate::input::ReadError;
use crate::limits::Limits;
use crate::services;

/// Which signatures the host accepts.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustPolicy {
    pub(crate) keys: Vec<PublicKey>,
    pub(crate) allow_unsigned: bool,
    pub(crate) allow_partial: bool,
}

/// What can be known about a plugin from its bytes, without compiling it.
pub(crate) struct Examined {
    /// Trusted signers' key ids.
    pub(crate) signers: Vec<String>,
    /// SHA-256 of the file.
    pub(crate) digest: String,
    /// Imports, exports and contract version.
    pub(crate) summary: ComponentSummary,
    /// The static manifest, if the component carries one.
    pub(crate) manifest: Option<Manifest>,
}

/// Every check that needs no compilation, in order: the header, the
/// signature (before anything looks inside the plugin), the structure, the
/// contract and the imports.
pub(crate) fn examine(
    name: &str,
    bytes: &[u8],
    detached: Option<&[u8]>,
    trust: &TrustPolicy,
) -> Result<Examined, LoadFailure> {
    check_header(bytes).map_err(|err| LoadFailure::Malformed(err.0))?;
    let (signers, covered_until) = check_signature(name, bytes, detached, trust)?;
    let summary = inspect(bytes).map_err(|err| LoadFailure::Malformed(err.0))?;
    check_contract(&summary)?;
    check_imports(&summary)?;
    // Under a partial signature, only a manifest inside the signed prefix
    // counts: one appended after it is anyone's.
    let manifest = manifest::read(&bytes[..covered_until.unwrap_or(bytes.len()).min(bytes.len())])
        .map_err(LoadFailure::InvalidManifest)?;
    if covered_until.is_some_and(|end| end < bytes.len())
        && manifest.is_none()
        && manifest::read(bytes).ok().flatten().is_some()
    {
        return Err(LoadFailure::InvalidManifest(
            "the manifest lies past what the trusted signature covers".into(),
        ));
    }
    Ok(Examined {
        signers,
        digest: sha256_hex(bytes),
        summary,
        manifest,
    })
}

/// The memory limit must hold what the component's modules define at their
/// initial size, or its first instance cannot even start: refused before
/// compiling, with the same kind an instance would fail with.
pub(crate) fn check_memory(summary: &ComponentSummary, limits: &Limits) -> Result<(), LoadFailure> {
    if limits.memory_bytes < summary.initial_memory_bytes {
        return Err(LoadFailure::InitFailed(Box::new(
            CallFailure::MemoryLimit {
                limit: limits.memory_bytes,
                requested: summary.initial_memory_bytes,
            },
        )));
    }
    Ok(())
}

/// A failed read as the load failure of kind `io`.
pub(crate) fn io_failure(err: ReadError) -> LoadFailure {
    LoadFailure::Io {
        path: err.path().display().to_string(),
        source: err.into_io_error(),
    }
}

/// Enforces the trust policy; returns the trusted signers' key ids and,
/// when they cover only part of the component, where the covered prefix
/// ends. With `allow_unsigned`, a
/// plugin without a valid trusted signature still loads, with a warning
/// every time.
fn check_signature(
    name: &str,
    bytes: &[u8],
    detached: Option<&[u8]>,
    trust: &TrustPolicy,
) -> Result<(Vec<String>, Option<usize>), LoadFailure> {
    match signature::verify(bytes, detached, &trust.keys, trust.allow_partial) {
        Ok(verified) => {
            if verified.partial {
                tracing::warn!(
                    plugin = name,
                    "loading a plugin whose trusted signature covers only part of it"
                );
            }
            let signers = verified.signers.iter().map(|id| id.to_hex()).collect();
            Ok((signers, verified.covered_until))
        }
        Err(err) if trust.allow_unsigned => {
            tracing::warn!(
                plugin = name,
                reason = %err,
                "LOADING A PLUGIN WITHOUT A VALID TRUSTED SIGNATURE (unsigned plugins are allowed)"
            );
            Ok((Vec::new(), None))
        }
        Err(err) => Err(match err {
            SignatureError::Unsigned => LoadFailure::Unsigned(format!(
                "{err}; sign it with `capsule sign` and trust the key, or allow unsigned plugins"
            )),
            SignatureError::Bad(_) => LoadFailure::BadSignature(err.to_string()),
            SignatureError::UntrustedKey { .. } => LoadFailure::UntrustedKey(err.to_string()),
        }),
    }
}

/// The component must export `capsule:plugin/handler` on this host's
/// compatibility track.
fn check_contract(summary: &ComponentSummary) -> Result<(), LoadFailure> {
    let handler = summary
        .exports
        .iter()
        .find(|export| export.is_contract() && export.item == "handler");
    let Some(handler) = handler else {
        return Err(LoadFailure::IncompatibleContract(format!(
            "the component does not export `{CONTRACT_PACKAGE}/handler`; \
             build it against the Capsule guest SDK (exports: {})",
            names(&summary.exports)
        )));
    };
    let version = handler.version.as_deref().unwrap_or("none");
    if !version_compatible(version) {
        return Err(LoadFailure::IncompatibleContract(format!(
            "the plugin was built for {CONTRACT_PACKAGE}@{version}, \
             this host serves {}",
            served_contracts()
        )));
    }
    Ok(())
}

/// Every import must be a contract interface on this host's track or a WASI
/// interface the host links.
fn check_imports(summary: &ComponentSummary) -> Result<(), LoadFailure> {
    for import in &summary.imports {
        if import.is_contract() {
            let version = import.version.as_deref().unwrap_or("none");
            if !services::is_served(import) || !version_compatible(version) {
                return Err(LoadFailure::IncompatibleContract(format!(
                    "the plugin imports `{}`, which this host ({}) does not provide",
                    import.name,
                    served_contracts()
                )));
            }
        } else if !services::is_served(import) {
            return Err(LoadFailure::MissingGrant {
                import: import.name.clone(),
                detail: "Capsule provides no such service, so no grant can allow it".into(),
            });
        }
    }
    Ok(())
}

fn names(interfaces: &[Interface]) -> String {
    if interfaces.is_empty() {
        return "none".into();
    }
    interfaces
        .iter()
        .map(|i| i.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
