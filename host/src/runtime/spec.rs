//! What an embedder or the CLI asks the host to load: a plugin's name, where
//! its bytes come from, its grants and its limits.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Grants;
use crate::limits::Limits;
use crate::services::config::ConfigOrigin;

/// Where a plugin's component bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A `.wasm` file on disk.
    Path(PathBuf),
    /// Bytes already in memory.
    Bytes(Arc<[u8]>),
}

/// A plugin to load: its name, its component, what it may touch and what it
/// may consume.
///
/// ```
/// use capsule_host::PluginSpec;
///
/// let spec = PluginSpec::from_path("target/plugins/hello.wasm")
///     .config("greeting", "Bonjour");
/// assert_eq!(spec.name(), "hello");
/// ```
#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub(crate) name: String,
    pub(crate) source: PluginSource,
    pub(crate) signature: Option<PluginSource>,
    pub(crate) grants: Grants,
    pub(crate) limits: Option<Limits>,
    pub(crate) validate_input: bool,
    pub(crate) pure_operations: Vec<String>,
    pub(crate) readiness: bool,
    /// Where a policy wrote the plugin's config, for errors to point at.
    pub(crate) config_origin: Option<ConfigOrigin>,
}

/// Two specs are the same when they load the same plugin the same way:
/// where the policy wrote its config does not count.
impl PartialEq for PluginSpec {
    fn eq(&self, other: &PluginSpec) -> bool {
        self.name == other.name
            && self.source == other.source
            && self.signature == other.signature
            && self.grants == other.grants
            && self.limits == other.limits
            && self.validate_input == other.validate_input
            && self.pure_operations == other.pure_operations
            && self.readiness == other.readiness
    }
}

impl PluginSpec {
    /// A plugin read from `path`, named after the file (`hello.wasm` →
    /// `hello`).
    pub fn from_path(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        let name = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        PluginSpec {
            name,
            source: PluginSource::Path(path.to_owned()),
            signature: None,
            grants: Grants::default(),
            limits: None,
            validate_input: false,
            pure_operations: Vec::new(),
            readiness: true,
            config_origin: None,
        }
    }

    /// What to load for the plugin `name` of a validated policy, if it has
    /// one by that name.
    pub fn from_policy(policy: &crate::policy::Policy, name: &str) -> Option<Self> {
        let plugin = policy.plugins.get(name)?;
        let mut spec = PluginSpec::from_path(&plugin.path)
            .with_name(name)
            .grants(plugin.grants.clone())
            .limits(plugin.limits.clone())
            .validate_input(plugin.validate_input)
            .pure_operations(plugin.pure_operations.clone())
            .readiness(plugin.readiness);
        if let Some(signature) = &plugin.signature {
            spec = spec.detached_signature(PluginSource::Path(signature.clone()));
        }
        spec.config_origin = Some(ConfigOrigin {
            file: policy.file.clone(),
            plugin: name.to_owned(),
            at: plugin.config_at.clone(),
        });
        Some(spec)
    }

    /// A plugin from bytes already in memory.
    pub fn from_bytes(name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> Self {
        PluginSpec {
            name: name.into(),
            source: PluginSource::Bytes(bytes.into()),
            signature: None,
            grants: Grants::default(),
            limits: None,
            validate_input: false,
            pure_operations: Vec::new(),
            readiness: true,
            config_origin: None,
        }
    }

    /// Checks every request against the input schema the plugin's manifest
    /// declares for its operation, before the plugin runs: a mismatch, or an
    /// operation the manifest does not declare, is refused as
    /// `invalid_input`. Loading fails if the plugin has no manifest.
    pub fn validate_input(mut self, validate: bool) -> Self {
        self.validate_input = validate;
        self
    }

    /// Declares `operations` pure, beside those the plugin's manifest
    /// declares: their answers are cached (within the plugin's `cache_bytes`
    /// and `cache_ttl`) and they run with key-value writes and publishing
    /// denied. For an operator who knows an operation is pure when its
    /// author did not say so.
    pub fn pure_operations(mut self, operations: Vec<String>) -> Self {
        self.pure_operations = operations;
        self
    }

    /// Whether this plugin being degraded (its circuit open, its `health`
    /// check failing) makes the host not ready; `true` by default. With
    /// `false` it is still shown in [`Host::readiness`](crate::Host::readiness)
    /// but does not decide it: an operator's way to keep one plugin from
    /// taking its neighbours out of a load balancer.
    pub fn readiness(mut self, counts: bool) -> Self {
        self.readiness = counts;
        self
    }

    /// The name calls will use to reach this plugin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the plugin's bytes come from.
    pub fn source(&self) -> &PluginSource {
        &self.source
    }

    /// Verifies the plugin against a detached signature (the payload of a
    /// `signature` section, as `capsule sign --detached` writes it) instead of
    /// one embedded in the component.
    pub fn detached_signature(mut self, signature: PluginSource) -> Self {
        self.signature = Some(signature);
        self
    }

    /// Renames the plugin.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The grants the plugin will get.
    pub fn granted(&self) -> &Grants {
        &self.grants
    }

    /// Replaces all grants.
    pub fn grants(mut self, grants: Grants) -> Self {
        self.grants = grants;
        self
    }

    /// Sets one configuration value the plugin can read.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.grants.config.insert(key.into(), value.into());
        self
    }

    /// Sets this plugin's limits instead of the host's defaults.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }
}
