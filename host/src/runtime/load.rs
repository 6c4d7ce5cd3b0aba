//! Loading a plugin: read, inspect, check its contract and imports, compile,
//! link, then run `init` and `describe` once under its limits.
//!
//! Every check that can be made from the bytes alone runs before the
//! component is compiled, so a refused plugin costs no compilation.

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::artifact::inspect::{ComponentSummary, Interface, inspect, version_compatible};
use crate::contract::{CONTRACT_PACKAGE, CONTRACT_VERSION, PluginInfo, PluginPre};
use crate::error::{LoadError, LoadFailure, chain};
use crate::limits::Limits;
use crate::runtime::plugin::{Invocation, LoadedPlugin, PluginDetails, Returned};
use crate::runtime::spec::{PluginSource, PluginSpec, validate_name};
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
];

pub(crate) async fn load(
    engine: &Engine,
    linker: &Linker<StoreState>,
    default_limits: &Limits,
    spec: PluginSpec,
) -> Result<Arc<LoadedPlugin>, LoadError> {
    let PluginSpec {
        name,
        source,
        grants,
        limits,
    } = spec;
    let fail = |cause| LoadError::new(name.clone(), cause);
    validate_name(&name).map_err(|msg| fail(LoadFailure::Config(msg)))?;
    let limits = limits.unwrap_or_else(|| default_limits.clone());

    let bytes: Arc<[u8]> = match source {
        PluginSource::Bytes(bytes) => bytes,
        PluginSource::Path(path) => {
            let read = tokio::task::spawn_blocking({
                let path = path.clone();
                move || std::fs::read(path)
            })
            .await
            .map_err(|err| fail(LoadFailure::Compile(format!("loader task failed: {err}"))))?;
            read.map_err(|source| {
                fail(LoadFailure::Io {
                    path: path.display().to_string(),
                    source,
                })
            })?
            .into()
        }
    };

    let summary = inspect(&bytes).map_err(|err| fail(LoadFailure::Malformed(err.0)))?;
    check_contract(&summary).map_err(fail)?;
    check_imports(&summary).map_err(fail)?;

    let component = compile(engine, bytes).await.map_err(fail)?;
    let instance_pre = linker
        .instantiate_pre(&component)
        .map_err(|err| fail(LoadFailure::IncompatibleContract(chain(&err))))?;
    let pre = PluginPre::new(instance_pre).map_err(|err| {
        fail(LoadFailure::IncompatibleContract(format!(
            "the `handler` export does not match contract {CONTRACT_VERSION}: {}",
            chain(&err)
        )))
    })?;

    let mut details = PluginDetails {
        name: name.clone(),
        info: PluginInfo {
            name: String::new(),
            version: String::new(),
            description: String::new(),
            capabilities: Vec::new(),
        },
        contract_version: summary.contract_version().map(str::to_owned),
        component: summary,
        grants,
        limits,
    };
    // `describe` runs on a throwaway instance, so the plugin's `init` and
    // `describe` are exercised under its limits before it is registered.
    let probe = LoadedPlugin::new(engine.clone(), pre.clone(), details.clone());
    let invoked = probe.invoke(Invocation::Describe).await;
    match invoked.result {
        Ok(Returned::Info(info)) => details.info = info,
        Ok(Returned::Handled(_)) => unreachable!("a describe invocation returns plugin info"),
        Err(failure) => return Err(fail(LoadFailure::InitFailed(Box::new(failure)))),
    }
    Ok(Arc::new(LoadedPlugin::new(engine.clone(), pre, details)))
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
                detail: grant_hint(import),
            });
        }
    }
    Ok(())
}

fn grant_hint(import: &Interface) -> String {
    match import.package.as_str() {
        "wasi:http" => "outgoing HTTP is not available to this plugin".into(),
        _ => "Capsule provides no such service".into(),
    }
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
