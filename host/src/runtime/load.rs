//! Loading a plugin: read, admit (see [`crate::admission`]: signature,
//! contract, imports, memory — before anything is compiled), compile or take
//! from the cache, link, prepare its grants, then run `init` and `describe`
//! once under its limits.

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::admission::{Examined, TrustPolicy, check_memory, examine, io_failure};
use crate::artifact::cache::CompileCache;
use crate::artifact::manifest::Manifest;
use crate::bounds::plugin_name;
use crate::contract::{PluginInfo, PluginPre};
use crate::engine::{AllocationMode, Metering, PoolingOptions};
use crate::error::{CallFailure, LoadError, LoadFailure, OutputStream};
use crate::input::{self, MAX_COMPONENT_BYTES, MAX_SIGNATURE_BYTES};
use crate::limits::{Limits, MAX_DESCRIBE_BYTES};
use crate::policy::validate;
use crate::runtime::input_schema::InputSchemas;
use crate::runtime::plugin::{Describe, IdleInstances, LoadedPlugin, ManifestEntry, PluginDetails};
use crate::runtime::spec::{PluginSource, PluginSpec};
use crate::sandbox::store::StoreState;
use crate::services::calls::CallScope;
use crate::services::config;
use crate::services::{HostShared, PreparedGrants};
use crate::text::chain;

/// Turns a [`PluginSpec`] into a loaded, described plugin version: the
/// engine and linker every plugin shares, the trust settings, the compile
/// cache, what services share, and the defaults.
pub(crate) struct Loader {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StoreState>,
    pub(crate) allocation: AllocationMode,
    /// The pool's sizing, to refuse limits it cannot hold.
    pub(crate) pooling: Option<PoolingOptions>,
    pub(crate) default_limits: Limits,
    pub(crate) trust: TrustPolicy,
    pub(crate) cache: Option<CompileCache>,
    /// What host services share across plugins (the key-value store).
    pub(crate) services: HostShared,
    /// Whether the key-value store outlives the host.
    pub(crate) persistent_kv: bool,
    pub(crate) metering: Metering,
    /// Every plugin's idle instances, freed when the pool runs out.
    pub(crate) pool_mates: Arc<IdleInstances>,
}

impl Loader {
    /// Verifies, compiles, links and describes a plugin without registering
    /// it: its settings are validated first, against the pool this host
    /// really has. `admit` sees the plugin's details (its manifest above
    /// all) before any of its code runs, and may refuse it.
    pub(crate) async fn load(
        &self,
        spec: PluginSpec,
        admit: impl FnOnce(&PluginDetails) -> Result<(), LoadFailure>,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let limits = spec.limits.as_ref().unwrap_or(&self.default_limits);
        validate::plugin(limits, &spec.grants, self.pool())
            .map_err(|err| LoadError::new(spec.name(), LoadFailure::Config(err.to_string())))?;
        if spec.grants.kv.is_some() && !self.persistent_kv {
            tracing::warn!(
                plugin = %spec.name(),
                "the host has no data directory: this plugin's key-value data will not survive a restart"
            );
        }
        let mut plugin = prepare(self, spec).await?;
        admit(&plugin.details).map_err(|cause| LoadError::new(plugin.name.to_string(), cause))?;
        describe(&mut plugin).await?;
        plugin.prewarm().await.map_err(|failure| {
            LoadError::new(
                plugin.name.to_string(),
                LoadFailure::InitFailed(Box::new(failure)),
            )
        })?;
        let plugin = Arc::new(plugin);
        self.pool_mates.register(&plugin);
        Ok(plugin)
    }

    /// The pool this host really has, to validate limits against.
    pub(crate) fn pool(&self) -> Option<&PoolingOptions> {
        match self.allocation {
            AllocationMode::Pooling => self.pooling.as_ref(),
            AllocationMode::OnDemand { .. } => None,
        }
    }

    /// Asks a plugin for its manifest document (contract 0.2's `manifest`
    /// export) on a fresh instance without `init`, under its (validated)
    /// limits: what `capsule sign` embeds. Returns the checked manifest and
    /// the document exactly as the plugin wrote it (fields this host does not
    /// know included); `None` for a 0.1 plugin, which has none.
    pub(crate) async fn ask_manifest(
        &self,
        spec: PluginSpec,
    ) -> Result<Option<(Manifest, String)>, LoadError> {
        let limits = spec.limits.as_ref().unwrap_or(&self.default_limits);
        validate::plugin(limits, &spec.grants, self.pool())
            .map_err(|err| LoadError::new(spec.name(), LoadFailure::Config(err.to_string())))?;
        let plugin = prepare(self, spec).await?;
        let fail = |cause| LoadError::new(plugin.name.to_string(), cause);
        let invoked = plugin.run(ManifestEntry, CallScope::default()).await;
        match invoked.result {
            Ok(None) => Ok(None),
            Ok(Some(document)) => Manifest::parse(document.as_bytes())
                .map(|manifest| Some((manifest, document)))
                .map_err(|err| fail(LoadFailure::InvalidManifest(err))),
            Err(failure) => Err(fail(LoadFailure::InitFailed(Box::new(failure)))),
        }
    }
}

/// Everything short of running the plugin: read, admit, compile, link,
/// prepare grants, read the manifest and compile its input schemas.
async fn prepare(context: &Loader, spec: PluginSpec) -> Result<LoadedPlugin, LoadError> {
    let PluginSpec {
        name,
        source,
        signature,
        mut grants,
        limits,
        validate_input,
        pure_operations,
        // Read from the slot's spec by readiness, not by the load.
        readiness: _,
        config_origin,
    } = spec;
    let fail = |cause| LoadError::new(name.clone(), cause);
    plugin_name(&name).map_err(|msg| fail(LoadFailure::Config(msg)))?;
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
        manifest,
    } = examine(&name, &bytes, detached.as_deref(), &context.trust).map_err(fail)?;
    check_memory(&summary, &limits).map_err(fail)?;
    let manifest = manifest.map(Arc::new);
    let input_schemas = if validate_input {
        let declared = manifest.clone();
        // Patterns compile in the blocking pool, not on an async worker.
        let compiled =
            tokio::task::spawn_blocking(move || InputSchemas::for_manifest(declared.as_deref()))
                .await
                .map_err(|err| fail(LoadFailure::Config(format!("loader task failed: {err}"))))?;
        Some(Arc::new(compiled.map_err(fail)?))
    } else {
        None
    };

    if let Some(schema) = manifest.as_ref().and_then(|m| m.config.clone()) {
        // The schema's patterns compile in the blocking pool too.
        let config = grants.config.clone();
        let applied = tokio::task::spawn_blocking(move || config::apply_schema(&schema, &config))
            .await
            .map_err(|err| fail(LoadFailure::Config(format!("loader task failed: {err}"))))?;
        grants.config = applied.map_err(|problems| {
            fail(LoadFailure::Config(match &config_origin {
                Some(origin) => origin.report(&problems),
                None => config::report(&problems),
            }))
        })?;
    }

    let (component, from_cache) = match context
        .cache
        .as_ref()
        .and_then(|c| c.load(&context.engine, &digest))
    {
        Some(component) => (component, true),
        None => {
            let component = compile(&context.engine, Arc::clone(&bytes))
                .await
                .map_err(fail)?;
            if let Some(cache) = &context.cache {
                cache.store(&context.engine, &digest, &component);
            }
            (component, false)
        }
    };
    let instance_pre = context
        .linker
        .instantiate_pre(&component)
        .map_err(|err| fail(LoadFailure::IncompatibleContract(chain(&err))))?;
    // Admission checked that the handler's version is on a served track.
    let version = summary.contract_version().unwrap_or_default().to_owned();
    let pre = PluginPre::new(instance_pre, &version).map_err(|err| {
        fail(LoadFailure::IncompatibleContract(format!(
            "the `handler` export does not match contract {version}: {}",
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
        manifest,
        validate_input,
        pure_operations,
    };
    let grants = PreparedGrants::new(
        Arc::from(name.as_str()),
        &details.grants,
        details.manifest.as_deref(),
        &context.services,
    )
    .map_err(|err| fail(LoadFailure::Config(err)))?;
    let grants = Arc::new(grants);
    let mut plugin = LoadedPlugin::new(
        context.engine.clone(),
        pre,
        details,
        grants,
        context.metering,
        Arc::clone(&context.pool_mates),
    );
    plugin.input_schemas = input_schemas;
    Ok(plugin)
}

/// Runs `init` and `describe` under the plugin's limits before it is
/// registered (the instance that answered stays warm for the first call),
/// and checks that `describe` agrees with the manifest.
async fn describe(plugin: &mut LoadedPlugin) -> Result<(), LoadError> {
    let fail = |cause| LoadError::new(plugin.name.to_string(), cause);
    let invoked = plugin.run(Describe, CallScope::default()).await;
    match invoked.result {
        Ok(info) if info.size() > MAX_DESCRIBE_BYTES => {
            return Err(fail(LoadFailure::InitFailed(Box::new(
                CallFailure::OutputTooLarge {
                    stream: OutputStream::Describe,
                    limit: MAX_DESCRIBE_BYTES,
                },
            ))));
        }
        Ok(info) => {
            if let Some(manifest) = &plugin.details.manifest {
                mirrors(manifest, &info).map_err(|err| fail(LoadFailure::InvalidManifest(err)))?;
            }
            plugin.details.info = info;
        }
        Err(failure) => return Err(fail(LoadFailure::InitFailed(Box::new(failure)))),
    }
    Ok(())
}

/// `describe` must say what the signed manifest says: a difference means
/// the manifest was not built from this plugin.
fn mirrors(manifest: &Manifest, info: &PluginInfo) -> Result<(), String> {
    let differs = |what: &str, manifest: &dyn std::fmt::Debug, describe: &dyn std::fmt::Debug| {
        Err(format!(
            "the manifest's {what} is {manifest:?} but `describe` says {describe:?}"
        ))
    };
    if manifest.name != info.name {
        return differs("name", &manifest.name, &info.name);
    }
    if manifest.version != info.version {
        return differs("version", &manifest.version, &info.version);
    }
    if manifest.capabilities != info.capabilities {
        return differs("capabilities", &manifest.capabilities, &info.capabilities);
    }
    Ok(())
}

/// The bytes of a component or detached signature. A path is read as an
/// operator-named file: a regular file of at most `max_bytes`, never a FIFO
/// or device (see [`crate::input`]).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_dir;

    #[tokio::test]
    async fn plugin_sources_are_read_within_their_limits() {
        let dir = temp_dir("source");
        let signature = dir.join("plugin.sig");
        std::fs::write(&signature, vec![0u8; MAX_SIGNATURE_BYTES as usize + 1]).unwrap();
        let failure = read_source(PluginSource::Path(signature.clone()), MAX_SIGNATURE_BYTES)
            .await
            .unwrap_err();
        assert_eq!(failure.kind(), crate::ErrorKind::Io);
        assert!(failure.to_string().contains("larger than"), "{failure}");
        // The same file is fine as a component.
        read_source(PluginSource::Path(signature), MAX_COMPONENT_BYTES)
            .await
            .unwrap();
        let failure = read_source(PluginSource::Path("/dev/zero".into()), MAX_COMPONENT_BYTES)
            .await
            .unwrap_err();
        assert_eq!(failure.kind(), crate::ErrorKind::Io);
        assert!(
            failure.to_string().contains("character device"),
            "{failure}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
