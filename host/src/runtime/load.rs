//! Loading a plugin: read, inspect, check its contract and imports, compile,
//! link, then run `init` and `describe` once under its limits.
//!
//! Every check that can be made from the bytes alone runs before the
//! component is compiled, so a refused plugin costs no compilation.

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::artifact::cache::CompileCache;
use crate::artifact::inspect::{
    ComponentSummary, Interface, check_header, inspect, version_compatible,
};
use crate::artifact::signature::{self, SignatureError};
use crate::artifact::{PublicKey, sha256_hex};
use crate::contract::{CONTRACT_PACKAGE, CONTRACT_VERSION, PluginInfo, PluginPre};
use crate::engine::Metering;
use crate::error::{CallFailure, LoadError, LoadFailure, OutputStream, chain};
use crate::input::{self, MAX_COMPONENT_BYTES, MAX_SIGNATURE_BYTES, ReadError};
use crate::limits::{Limits, MAX_DESCRIBE_BYTES};
use crate::runtime::plugin::{IdleInstances, Invocation, LoadedPlugin, PluginDetails, Returned};
use crate::runtime::spec::{PluginSource, PluginSpec, validate_name};
use crate::services::PreparedGrants;
use crate::services::kv::KvStore;
use crate::store::StoreState;

/// The interfaces of `capsule:plugin` a plugin may import.
const CONTRACT_IMPORTS: &[&str] = &["types", "log", "config", "kv", "events"];

/// WASI packages linked for every plugin (granting nothing unless a grant
/// says otherwise).
const WASI_PACKAGES: &[&str] = &[
    "wasi:cli",
    "wasi:io",
    "wasi:clocks",
    "wasi:random",
    "wasi:filesystem",
    "wasi:sockets",
    "wasi:http",
];

/// What loading needs from the host.
pub(crate) struct LoadContext<'a> {
    pub(crate) engine: &'a Engine,
    pub(crate) linker: &'a Linker<StoreState>,
    pub(crate) default_limits: &'a Limits,
    pub(crate) trust: &'a TrustPolicy,
    pub(crate) cache: Option<&'a CompileCache>,
    pub(crate) kv_store: &'a Arc<KvStore>,
    pub(crate) metering: Metering,
    /// Every plugin's idle instances, freed when the pool runs out.
    pub(crate) pool_mates: &'a Arc<IdleInstances>,
}

/// Which signatures the host accepts.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustPolicy {
    pub(crate) keys: Vec<PublicKey>,
    pub(crate) allow_unsigned: bool,
    pub(crate) allow_partial: bool,
}

pub(crate) async fn load(
    context: &LoadContext<'_>,
    spec: PluginSpec,
) -> Result<Arc<LoadedPlugin>, LoadError> {
    let PluginSpec {
        name,
        source,
        signature,
        grants,
        limits,
    } = spec;
    let fail = |cause| LoadError::new(name.clone(), cause);
    validate_name(&name).map_err(|msg| fail(LoadFailure::Config(msg)))?;
    let limits = limits.unwrap_or_else(|| context.default_limits.clone());

    let bytes = read_source(source, MAX_COMPONENT_BYTES)
        .await
        .map_err(fail)?;
    let detached = match signature {
        Some(source) => Some(
            read_source(source, MAX_SIGNATURE_BYTES)
                .await
                .map_err(fail)?,
        ),
        None => None,
    };
    let Examined {
        signers,
        digest,
        summary,
    } = examine(&name, &bytes, detached.as_deref(), context.trust).map_err(fail)?;
    check_memory(&summary, &limits).map_err(fail)?;

    let (component, from_cache) = match context.cache.and_then(|c| c.load(context.engine, &digest))
    {
        Some(component) => (component, true),
        None => {
            let component = compile(context.engine, Arc::clone(&bytes))
                .await
                .map_err(fail)?;
            if let Some(cache) = context.cache {
                cache.store(context.engine, &digest, &component);
            }
            (component, false)
        }
    };
    let instance_pre = context
        .linker
        .instantiate_pre(&component)
        .map_err(|err| fail(LoadFailure::IncompatibleContract(chain(&err))))?;
    let pre = PluginPre::new(instance_pre).map_err(|err| {
        fail(LoadFailure::IncompatibleContract(format!(
            "the `handler` export does not match contract {CONTRACT_VERSION}: {}",
            chain(&err)
        )))
    })?;

    let details = PluginDetails {
        name: name.clone(),
        info: PluginInfo {
            name: String::new(),
            version: String::new(),
            description: String::new(),
            capabilities: Vec::new(),
        },
        digest,
        signers,
        compiled_from_cache: from_cache,
        contract_version: summary.contract_version().map(str::to_owned),
        component: summary,
        grants,
        limits,
    };
    // `describe` runs on a throwaway instance, so the plugin's `init` and
    // `describe` are exercised under its limits before it is registered.
    let grants = Arc::new(PreparedGrants::new(
        Arc::from(name.as_str()),
        &details.grants,
        context.kv_store,
    ));
    // `init` and `describe` run under the plugin's limits before it is
    // registered; the instance that answered stays warm for the first call.
    let mut plugin = LoadedPlugin::new(
        context.engine.clone(),
        pre,
        details,
        grants,
        context.metering,
        Arc::clone(context.pool_mates),
    );
    let invoked = plugin.run(Invocation::Describe).await;
    match invoked.result {
        Ok(Returned::Info(info)) if info.size() > MAX_DESCRIBE_BYTES => {
            return Err(fail(LoadFailure::InitFailed(Box::new(
                CallFailure::OutputTooLarge {
                    stream: OutputStream::Describe,
                    limit: MAX_DESCRIBE_BYTES,
                },
            ))));
        }
        Ok(Returned::Info(info)) => plugin.details.info = info,
        Ok(_) => unreachable!("a describe invocation returns plugin info"),
        Err(failure) => return Err(fail(LoadFailure::InitFailed(Box::new(failure)))),
    }
    let plugin = Arc::new(plugin);
    context.pool_mates.register(&plugin);
    Ok(plugin)
}

/// What can be known about a plugin from its bytes, without compiling it.
pub(crate) struct Examined {
    /// Trusted signers' key ids.
    pub(crate) signers: Vec<String>,
    /// SHA-256 of the file.
    pub(crate) digest: String,
    /// Imports, exports and contract version.
    pub(crate) summary: ComponentSummary,
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
    let signers = check_signature(name, bytes, detached, trust)?;
    let summary = inspect(bytes).map_err(|err| LoadFailure::Malformed(err.0))?;
    check_contract(&summary)?;
    check_imports(&summary)?;
    Ok(Examined {
        signers,
        digest: sha256_hex(bytes),
        summary,
    })
}

/// The bytes of a component or detached signature. A path is read as an
/// operator-named file: a regular file of at most `max_bytes`, never a FIFO
/// or device (see [`crate::input`]).
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

pub(crate) async fn read_source(
    source: PluginSource,
    max_bytes: u64,
) -> Result<Arc<[u8]>, LoadFailure> {
    match source {
        PluginSource::Bytes(bytes) => Ok(bytes),
        PluginSource::Path(path) => {
            let read = tokio::task::spawn_blocking(move || input::read_file(&path, max_bytes))
                .await
                .map_err(|err| LoadFailure::Config(format!("loader task failed: {err}")))?;
            read.map(Arc::from).map_err(io_failure)
        }
    }
}

/// A failed read as the load failure of kind `io`.
pub(crate) fn io_failure(err: ReadError) -> LoadFailure {
    LoadFailure::Io {
        path: err.path().display().to_string(),
        source: err.into_io_error(),
    }
}

/// Enforces the trust policy; returns the trusted signers' key ids. With
/// `allow_unsigned`, a plugin without a valid trusted signature still loads,
/// with a warning every time.
fn check_signature(
    name: &str,
    bytes: &[u8],
    detached: Option<&[u8]>,
    trust: &TrustPolicy,
) -> Result<Vec<String>, LoadFailure> {
    match signature::verify(bytes, detached, &trust.keys, trust.allow_partial) {
        Ok(verified) => {
            if verified.partial {
                tracing::warn!(
                    plugin = name,
                    "loading a plugin whose trusted signature covers only part of it"
                );
            }
            Ok(verified.signers.iter().map(|id| id.to_hex()).collect())
        }
        Err(err) if trust.allow_unsigned => {
            tracing::warn!(
                plugin = name,
                reason = %err,
                "LOADING A PLUGIN WITHOUT A VALID TRUSTED SIGNATURE (unsigned plugins are allowed)"
            );
            Ok(Vec::new())
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
             this host serves {CONTRACT_PACKAGE}@{CONTRACT_VERSION}"
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
            if !CONTRACT_IMPORTS.contains(&import.item.as_str()) || !version_compatible(version) {
                return Err(LoadFailure::IncompatibleContract(format!(
                    "the plugin imports `{}`, which {CONTRACT_PACKAGE}@{CONTRACT_VERSION} \
                     does not provide",
                    import.name
                )));
            }
        } else if !WASI_PACKAGES.contains(&import.package.as_str()) {
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

/// Compiles on a blocking thread: cranelift takes tens of milliseconds and
/// must not stall the async runtime.
async fn compile(engine: &Engine, bytes: Arc<[u8]>) -> Result<Component, LoadFailure> {
    let engine = engine.clone();
    let compiled = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
        .await
        .map_err(|err| LoadFailure::Compile(format!("compiler task failed: {err}")))?;
    compiled.map_err(|err| {
        if err
            .downcast_ref::<wasmparser::BinaryReaderError>()
            .is_some()
        {
            LoadFailure::Malformed(chain(&err))
        } else {
            LoadFailure::Compile(chain(&err))
        }
    })
}
