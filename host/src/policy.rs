//! The operator's policy file, `capsule.toml`: trusted keys, host defaults,
//! and for every plugin its component, limits and grants.
//!
//! ```toml
//! [host]
//! trusted_keys = ["keys/ops.pub"]
//! data_dir = "data"                # the key-value store lives here
//! [host.limits]
//! timeout = "2s"
//! memory = "64MiB"
//! [host.pool]                      # the pooling allocator (on by default)
//! instances = 256
//! max_memory = "1GiB"
//!
//! [plugins.counter]
//! path = "plugins/kv-counter.wasm"
//! kv = { namespace = "counter", max_keys = 100, max_total = "64KiB" }
//! files = [{ host = "data/in", guest = "/data", access = "read-only" }]
//! http = { allow = ["https://api.example.com", "https://*.example.org:8443"] }
//! env = { LANG = "en" }
//! events = { publish = ["counter.*"], subscribe = ["orders.>"] }
//! config = { greeting = "Hi" }
//! [plugins.counter.limits]
//! fuel = 1_000_000
//! recycle_after = 100
//!
//! [pipelines.ingest]
//! stages = ["validate", "transform", "enrich"]
//! ```
//!
//! Relative paths are relative to the policy file's folder. Unknown keys, bad
//! values and missing files are errors naming the file, the line, the column
//! and the key. Parsing and validation need no wasm at all.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use crate::artifact::PublicKey;
use crate::artifact::cache::CacheKey;
use crate::engine::EngineOptions;
use crate::limits::Limits;
use crate::runtime::{BusOptions, HostBuilder, PluginSource, PluginSpec, spec::validate_name};
use crate::services::Grants;
use crate::services::events::{EventsGrant, TopicPattern};
use crate::services::files::{Access, Mount};
use crate::services::http::{HttpGrant, OriginPattern};
use crate::services::kv::KvGrant;
use crate::services::log::LogGrant;
use crate::units::{parse_duration, parse_size};
use crate::validate;

/// A policy that could not be read or is invalid, located as precisely as
/// possible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// The policy file.
    pub file: PathBuf,
    /// 1-based line and column of the offending text, when known.
    pub position: Option<(usize, usize)>,
    /// The dotted key the error is about (`plugins.hello.path`), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A validated policy: every path resolved, every key file read, every value
/// parsed.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The policy file.
    pub file: PathBuf,
    /// Host-wide settings.
    pub host: HostPolicy,
    /// Plugins by name.
    pub plugins: BTreeMap<String, PluginPolicy>,
    /// Pipelines by name: the plugins each one chains, in order.
    pub pipelines: BTreeMap<String, Vec<String>>,
}

/// The `[host]` section.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// Keys trusted to sign plugins, with the files they came from.
    pub trusted_keys: Vec<(PathBuf, PublicKey)>,
    /// Whether plugins without a valid trusted signature may load.
    pub allow_unsigned: bool,
    /// Whether signatures covering only part of a plugin are accepted.
    pub allow_partial_signatures: bool,
    /// Where compiled plugins are cached.
    pub cache_dir: Option<PathBuf>,
    /// The key file authenticating compile cache entries (`cache_key`);
    /// without it, [`CacheKey::default_path`].
    pub cache_key: Option<PathBuf>,
    /// Where persistent plugin data (the key-value store) lives.
    pub data_dir: Option<PathBuf>,
    /// Limits of plugins that set none of their own.
    pub default_limits: Limits,
    /// Event bus settings.
    pub bus: BusOptions,
    /// Engine settings: the instance pool, the wasm stack.
    pub engine: EngineOptions,
}

/// One `[plugins.NAME]` section.
#[derive(Debug, Clone)]
pub struct PluginPolicy {
    /// The component file.
    pub path: PathBuf,
    /// A detached signature file, if the signature is not embedded.
    pub signature: Option<PathBuf>,
    /// The plugin's limits (host defaults with its overrides applied).
    pub limits: Limits,
    /// What the plugin may touch.
    pub grants: Grants,
}

impl Policy {
    /// Reads and validates the policy file at `path`: a regular file of at
    /// most [`crate::input::MAX_POLICY_BYTES`] of UTF-8 text.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let unreadable = |message: String| PolicyError {
            file: path.to_owned(),
            position: None,
            key: None,
            message: format!("cannot read the policy file: {message}"),
        };
        let bytes = crate::input::read_file(path, crate::input::MAX_POLICY_BYTES)
            .map_err(|err| unreadable(err.into_io_error().to_string()))?;
        let text = String::from_utf8(bytes)
            .map_err(|err| unreadable(format!("it is not UTF-8 text ({err})")))?;
        let base = path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(&text, path, &base)
    }

    /// Parses policy text; `file` names it in errors and relative paths are
    /// resolved against `base`.
    pub fn parse(text: &str, file: &Path, base: &Path) -> Result<Policy, PolicyError> {
        let located = Locator { text, file, base };
        let raw: RawPolicy = toml::from_str(text).map_err(|err| PolicyError {
            file: file.to_owned(),
            position: err.span().map(|span| line_column(text, span.start)),
            key: None,
            message: err.message().trim().to_owned(),
        })?;
        let host = located.host(&raw.host)?;
        let mut plugins = BTreeMap::new();
        for (name, section) in &raw.plugins {
            let key = format!("plugins.{}", name.get_ref());
            validate_name(name.get_ref()).map_err(|msg| located.error(name.span(), &key, msg))?;
            let plugin = located.plugin(name.get_ref(), section, &host)?;
            validate::plugin(&plugin.limits, &plugin.grants, host.engine.pooling.as_ref())
                .map_err(|err| {
                    let span = if err.field.starts_with("limits.") {
                        section.limits.span()
                    } else {
                        name.span()
                    };
                    located.invalid(span, &key, err)
                })?;
            plugins.insert(name.get_ref().clone(), plugin);
        }
        let mut pipelines = BTreeMap::new();
        for (name, section) in &raw.pipelines {
            let key = format!("pipelines.{}", name.get_ref());
            validate_name(name.get_ref()).map_err(|msg| located.error(name.span(), &key, msg))?;
            if section.stages.is_empty() {
                return Err(located.error(
                    name.span(),
                    &key,
                    "a pipeline needs at least one stage",
                ));
            }
            let mut stages = Vec::new();
            for (i, stage) in section.stages.iter().enumerate() {
                if !plugins.contains_key(stage.get_ref()) {
                    return Err(located.error(
                        stage.span(),
                        &format!("{key}.stages[{i}]"),
                        format!("no plugin named `{}` in this policy", stage.get_ref()),
                    ));
                }
                stages.push(stage.get_ref().clone());
            }
            pipelines.insert(name.get_ref().clone(), stages);
        }
        Ok(Policy {
            file: file.to_owned(),
            host,
            plugins,
            pipelines,
        })
    }

    /// A host builder configured from the `[host]` section.
    pub fn host_builder(&self) -> HostBuilder {
        let host = &self.host;
        let mut builder = HostBuilder::default()
            .engine_options(host.engine.clone())
            .default_limits(host.default_limits.clone())
            .bus_options(host.bus.clone())
            .allow_unsigned(host.allow_unsigned)
            .allow_partial_signatures(host.allow_partial_signatures);
        for (_, key) in &host.trusted_keys {
            builder = builder.trust(key.clone());
        }
        if let Some(dir) = &host.cache_dir {
            builder = builder.cache_dir(dir);
            if let Some(key) = host.cache_key.clone().or_else(CacheKey::default_path) {
                builder = builder.cache_key_file(key);
            }
        }
        if let Some(dir) = &host.data_dir {
            builder = builder.data_dir(dir);
        }
        builder
    }

    /// What to load for the plugin `name`.
    pub fn plugin_spec(&self, name: &str) -> Option<PluginSpec> {
        let plugin = self.plugins.get(name)?;
        let mut spec = PluginSpec::from_path(&plugin.path)
            .with_name(name)
            .grants(plugin.grants.clone())
            .limits(plugin.limits.clone());
        if let Some(signature) = &plugin.signature {
            spec = spec.detached_signature(PluginSource::Path(signature.clone()));
        }
        Some(spec)
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Turns raw sections into validated values, locating errors in the text.
struct Locator<'a> {
    text: &'a str,
    file: &'a Path,
    base: &'a Path,
}

impl Locator<'_> {
    /// A value that [`validate`] refused, located at `span` in the section
    /// `section`.
    fn invalid(
        &self,
        span: Range<usize>,
        section: &str,
        invalid: validate::Invalid,
    ) -> PolicyError {
        self.error(
            span,
            &format!("{section}.{}", invalid.field),
            invalid.message,
        )
    }

    fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> PolicyError {
        PolicyError {
            file: self.file.to_owned(),
            position: Some(line_column(self.text, span.start)),
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        self.base.join(path)
    }

    /// A path that must name an existing file.
    fn existing_file(&self, value: &Spanned<String>, key: &str) -> Result<PathBuf, PolicyError> {
        let path = self.resolve(value.get_ref());
        if !path.is_file() {
            return Err(self.error(
                value.span(),
                key,
                format!("{} is not a file", path.display()),
            ));
        }
        Ok(path)
    }

    fn host(&self, raw: &RawHost) -> Result<HostPolicy, PolicyError> {
        let mut trusted_keys = Vec::new();
        for (i, value) in raw.trusted_keys.iter().enumerate() {
            let key = format!("host.trusted_keys[{i}]");
            let path = self.existing_file(value, &key)?;
            let public = PublicKey::from_file(&path)
                .map_err(|err| self.error(value.span(), &key, err.to_string()))?;
            trusted_keys.push((path, public));
        }
        let engine = raw.pool.get_ref().apply(EngineOptions::default());
        validate::engine(&engine).map_err(|err| self.invalid(raw.pool.span(), "host.pool", err))?;
        let bus = raw.events.get_ref().apply(BusOptions::default());
        validate::bus(&bus).map_err(|err| self.invalid(raw.events.span(), "host.events", err))?;
        let default_limits = raw.limits.get_ref().apply(Limits::default());
        validate::limits(&default_limits)
            .and_then(|()| validate::limits_fit_pool(&default_limits, engine.pooling.as_ref()))
            .map_err(|err| self.invalid(raw.limits.span(), "host.limits", err))?;
        for (key, dir) in [("cache_dir", &raw.cache_dir), ("data_dir", &raw.data_dir)] {
            if let Some(dir) = dir {
                let path = self.resolve(dir.get_ref());
                // A missing directory is created when the host starts.
                if path.exists() && !path.is_dir() {
                    return Err(self.error(
                        dir.span(),
                        &format!("host.{key}"),
                        format!("{} is not a directory", path.display()),
                    ));
                }
            }
        }
        if trusted_keys.is_empty() && !raw.allow_unsigned {
            tracing::warn!(
                file = %self.file.display(),
                "the policy trusts no keys: every plugin will be refused"
            );
        }
        Ok(HostPolicy {
            trusted_keys,
            allow_unsigned: raw.allow_unsigned,
            allow_partial_signatures: raw.allow_partial_signatures,
            cache_dir: raw.cache_dir.as_ref().map(|d| self.resolve(d.get_ref())),
            cache_key: raw.cache_key.as_ref().map(|k| self.resolve(k)),
            data_dir: raw.data_dir.as_ref().map(|d| self.resolve(d.get_ref())),
            default_limits,
            bus,
            engine,
        })
    }

    fn plugin(
        &self,
        name: &str,
        raw: &RawPlugin,
        host: &HostPolicy,
    ) -> Result<PluginPolicy, PolicyError> {
        let key = |field: &str| format!("plugins.{name}.{field}");
        let path = self.existing_file(&raw.path, &key("path"))?;
        let signature = raw
            .signature
            .as_ref()
            .map(|sig| self.existing_file(sig, &key("signature")))
            .transpose()?;

        let mut files = Vec::new();
        for (i, mount) in raw.files.iter().enumerate() {
            let mount_key = key(&format!("files[{i}].host"));
            let host = self.resolve(mount.host.get_ref());
            if mount.create && !host.exists() {
                std::fs::create_dir_all(&host).map_err(|err| {
                    self.error(
                        mount.host.span(),
                        &mount_key,
                        format!("cannot create {}: {err}", host.display()),
                    )
                })?;
            }
            let access = match mount.access {
                RawAccess::ReadOnly => Access::ReadOnly,
                RawAccess::ReadWrite => Access::ReadWrite,
            };
            let resolved = Mount::new(&host, &mount.guest, access)
                .map_err(|msg| self.error(mount.host.span(), &mount_key, msg))?;
            if files.iter().any(|m: &Mount| m.guest == resolved.guest) {
                return Err(self.error(
                    mount.host.span(),
                    &mount_key,
                    format!("two mounts at guest path `{}`", resolved.guest),
                ));
            }
            files.push(resolved);
        }

        let kv = raw.kv.as_ref().map(|kv| {
            let mut grant = KvGrant::new(kv.namespace.clone().unwrap_or_else(|| name.to_owned()));
            if let Some(size) = &kv.max_key {
                grant.max_key_bytes = size.0 as usize;
            }
            if let Some(size) = &kv.max_value {
                grant.max_value_bytes = size.0 as usize;
            }
            if let Some(keys) = kv.max_keys {
                grant.max_keys = keys;
            }
            if let Some(size) = &kv.max_total {
                grant.max_total_bytes = size.0;
            }
            grant
        });

        let http = raw.http.as_ref().map(|http| {
            let mut grant = HttpGrant::new(http.allow.iter().map(|o| o.0.clone()).collect());
            if let Some(max) = http.max_requests {
                grant.max_requests_per_call = max;
            }
            if let Some(size) = &http.max_response {
                grant.max_response_bytes = size.0;
            }
            grant
        });

        Ok(PluginPolicy {
            path,
            signature,
            limits: raw.limits.get_ref().apply(host.default_limits.clone()),
            grants: Grants {
                log: LogGrant { enabled: raw.log },
                config: raw.config.clone(),
                env: raw.env.clone(),
                kv,
                files,
                http,
                events: EventsGrant {
                    publish: raw.events.publish.iter().map(|p| p.0.clone()).collect(),
                    subscribe: raw.events.subscribe.iter().map(|p| p.0.clone()).collect(),
                },
            },
        })
    }
}

// The file's shape. `deny_unknown_fields` everywhere: a misspelt grant must
// be an error, not a silently missing capability.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default = "default_host")]
    host: RawHost,
    #[serde(default)]
    plugins: BTreeMap<Spanned<String>, RawPlugin>,
    #[serde(default)]
    pipelines: BTreeMap<Spanned<String>, RawPipeline>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    stages: Vec<Spanned<String>>,
}

/// `[host.events]`: the event bus.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBus {
    queue: Option<usize>,
    queue_bytes: Option<Size>,
    queue_timeout: Option<Time>,
    max_attempts: Option<u32>,
    max_retry_delay: Option<Time>,
    max_hops: Option<u32>,
    dead_letters: Option<usize>,
    dead_letter_bytes: Option<Size>,
}

impl RawBus {
    fn apply(&self, mut options: BusOptions) -> BusOptions {
        if let Some(queue) = self.queue {
            options.queue = queue;
        }
        if let Some(time) = &self.queue_timeout {
            options.queue_timeout = time.0;
        }
        if let Some(attempts) = self.max_attempts {
            options.max_attempts = attempts;
        }
        if let Some(kept) = self.dead_letters {
            options.dead_letters = kept;
        }
        if let Some(size) = &self.queue_bytes {
            options.queue_bytes = usize::try_from(size.0).unwrap_or(usize::MAX);
        }
        if let Some(time) = &self.max_retry_delay {
            options.max_retry_delay = time.0;
        }
        if let Some(hops) = self.max_hops {
            options.max_hops = hops;
        }
        if let Some(size) = &self.dead_letter_bytes {
            options.dead_letter_bytes = usize::try_from(size.0).unwrap_or(usize::MAX);
        }
        options
    }
}

/// No `[host]` section: every default.
fn default_host() -> RawHost {
    toml::from_str("").expect("an empty [host] section parses")
}

/// A section the file leaves out: its defaults, located nowhere.
fn unspanned<T: Default>() -> Spanned<T> {
    Spanned::new(0..0, T::default())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    #[serde(default)]
    trusted_keys: Vec<Spanned<String>>,
    #[serde(default)]
    allow_unsigned: bool,
    #[serde(default)]
    allow_partial_signatures: bool,
    cache_dir: Option<Spanned<String>>,
    cache_key: Option<String>,
    data_dir: Option<Spanned<String>>,
    #[serde(default = "unspanned")]
    limits: Spanned<RawLimits>,
    #[serde(default = "unspanned")]
    events: Spanned<RawBus>,
    #[serde(default = "unspanned")]
    pool: Spanned<RawPool>,
}

/// `[host.pool]`: how many instances the pooling allocator reserves room
/// for, how large a memory may grow, and the engine-wide wasm stack.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPool {
    /// `false` allocates instances on demand instead.
    enabled: Option<bool>,
    instances: Option<u32>,
    max_memory: Option<Size>,
    max_wasm_stack: Option<Size>,
}

impl RawPool {
    fn apply(&self, mut options: EngineOptions) -> EngineOptions {
        if self.enabled == Some(false) {
            options.pooling = None;
        }
        if let Some(pooling) = &mut options.pooling {
            if let Some(instances) = self.instances {
                pooling.total_instances = instances;
            }
            if let Some(size) = &self.max_memory {
                pooling.max_memory_bytes = size.0;
            }
        }
        if let Some(size) = &self.max_wasm_stack {
            options.max_wasm_stack = usize::try_from(size.0).unwrap_or(usize::MAX);
        }
        options
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    fuel: Option<Fuel>,
    memory: Option<Size>,
    timeout: Option<Time>,
    max_request: Option<Size>,
    max_response: Option<Size>,
    max_log: Option<Size>,
    max_instances: Option<usize>,
    max_queued: Option<usize>,
    queue_timeout: Option<Time>,
    recycle_after: Option<u32>,
    circuit_failures: Option<u32>,
    circuit_cooldown: Option<Time>,
    max_handles: Option<usize>,
    max_log_records: Option<usize>,
    max_metadata_entries: Option<usize>,
}

impl RawLimits {
    fn apply(&self, mut limits: Limits) -> Limits {
        let bytes = |size: &Size| usize::try_from(size.0).unwrap_or(usize::MAX);
        if let Some(fuel) = &self.fuel {
            limits.fuel = fuel.0;
        }
        if let Some(size) = &self.memory {
            limits.memory_bytes = size.0;
        }
        if let Some(time) = &self.timeout {
            limits.timeout = time.0;
        }
        if let Some(size) = &self.max_request {
            limits.max_request_bytes = bytes(size);
        }
        if let Some(size) = &self.max_response {
            limits.max_response_bytes = bytes(size);
        }
        if let Some(size) = &self.max_log {
            limits.max_log_bytes = bytes(size);
        }
        if let Some(count) = self.max_instances {
            limits.max_instances = count;
        }
        if let Some(count) = self.max_queued {
            limits.max_queued = count;
        }
        if let Some(time) = &self.queue_timeout {
            limits.queue_timeout = time.0;
        }
        if let Some(calls) = self.recycle_after {
            limits.recycle_after = calls;
        }
        if let Some(failures) = self.circuit_failures {
            limits.circuit_failures = failures;
        }
        if let Some(time) = &self.circuit_cooldown {
            limits.circuit_cooldown = time.0;
        }
        if let Some(handles) = self.max_handles {
            limits.max_handles = handles;
        }
        if let Some(records) = self.max_log_records {
            limits.max_log_records = records;
        }
        if let Some(entries) = self.max_metadata_entries {
            limits.max_metadata_entries = entries;
        }
        limits
    }
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    path: Spanned<String>,
    signature: Option<Spanned<String>>,
    #[serde(default = "unspanned")]
    limits: Spanned<RawLimits>,
    #[serde(default = "yes")]
    log: bool,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    kv: Option<RawKv>,
    #[serde(default)]
    files: Vec<RawMount>,
    http: Option<RawHttp>,
    #[serde(default)]
    events: RawEvents,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKv {
    namespace: Option<String>,
    max_key: Option<Size>,
    max_value: Option<Size>,
    max_keys: Option<u64>,
    max_total: Option<Size>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    host: Spanned<String>,
    guest: String,
    access: RawAccess,
    /// Create the host directory if it does not exist.
    #[serde(default)]
    create: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawAccess {
    ReadOnly,
    ReadWrite,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    allow: Vec<Origin>,
    max_requests: Option<u32>,
    max_response: Option<Size>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    #[serde(default)]
    publish: Vec<Topic>,
    #[serde(default)]
    subscribe: Vec<Topic>,
}

// Values that validate themselves while being deserialized, so that the
// toml error carries the position of the bad value.

/// A byte size: an integer or a string such as `"64MiB"`.
struct Size(u64);

/// A duration string such as `"500ms"`.
struct Time(Duration);

/// A fuel budget: an integer, or `"none"` for no limit.
struct Fuel(Option<u64>);

/// An HTTP origin pattern.
struct Origin(OriginPattern);

/// An event topic pattern.
struct Topic(TopicPattern);

/// Implements `Deserialize` through a visitor that accepts strings (and,
/// where `$int` is given, non-negative integers).
macro_rules! value_from_str {
    ($ty:ident, $expecting:literal, |$s:ident| $parse:expr $(, int |$n:ident| $from_int:expr)?) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, $s: &str) -> Result<$ty, E> {
                        $parse.map_err(E::custom)
                    }
                    $(
                    fn visit_i64<E: de::Error>(self, value: i64) -> Result<$ty, E> {
                        let $n = u64::try_from(value)
                            .map_err(|_| E::custom(format!("{value} is negative")))?;
                        Ok($from_int)
                    }
                    fn visit_u64<E: de::Error>(self, $n: u64) -> Result<$ty, E> {
                        Ok($from_int)
                    }
                    )?
                }
                deserializer.deserialize_any(V)
            }
        }
    };
}

value_from_str!(
    Size,
    "a size such as \"64MiB\" or a number of bytes",
    |s| parse_size(s).map(Size),
    int | n | Size(n)
);
value_from_str!(Time, "a duration such as \"500ms\" or \"2s\"", |s| {
    parse_duration(s).map(Time)
});
value_from_str!(
    Fuel,
    "a number of fuel units or \"none\"",
    |s| if s.eq_ignore_ascii_case("none") {
        Ok(Fuel(None))
    } else {
        Err(format!(
            "`{s}` is not a fuel amount (a number, or \"none\")"
        ))
    },
    int | n | Fuel(Some(n))
);
value_from_str!(
    Origin,
    "an origin such as \"https://api.example.com\"",
    |s| OriginPattern::parse(s).map(Origin)
);
value_from_str!(Topic, "a topic pattern such as \"orders.*\"", |s| {
    TopicPattern::parse(s).map(Topic)
});

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        let base = std::env::temp_dir();
        Policy::parse(text, Path::new("capsule.toml"), &base)
    }

    fn wasm_file() -> (PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("capsule-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.wasm");
        std::fs::write(&path, b"\0asm").unwrap();
        let text = path.display().to_string();
        (dir, text)
    }

    #[test]
    fn a_full_policy_parses() {
        let (dir, wasm) = wasm_file();
        let text = format!(
            r#"
[host]
allow_unsigned = true
data_dir = "data"
[host.limits]
timeout = "2s"
memory = "32MiB"
fuel = "none"
[host.pool]
instances = 32
max_memory = "256MiB"
max_wasm_stack = "1MiB"

[plugins.counter]
path = "{wasm}"
kv = {{ namespace = "shared", max_keys = 5, max_total = "1KiB" }}
files = [{{ host = "{dir}", guest = "/data", access = "read-write" }}]
http = {{ allow = ["https://api.example.com", "https://*.example.org:8443"], max_requests = 2 }}
env = {{ LANG = "en" }}
config = {{ greeting = "Hi" }}
events = {{ publish = ["counter.*"], subscribe = ["orders.>"] }}
[plugins.counter.limits]
fuel = 1_000_000
"#,
            dir = dir.display()
        );
        let policy = parse(&text).unwrap();
        assert_eq!(policy.host.default_limits.timeout, Duration::from_secs(2));
        assert_eq!(policy.host.default_limits.fuel, None);
        let pool = policy.host.engine.pooling.as_ref().unwrap();
        assert_eq!(
            (pool.total_instances, pool.max_memory_bytes),
            (32, 256 << 20)
        );
        assert_eq!(policy.host.engine.max_wasm_stack, 1 << 20);
        let plugin = &policy.plugins["counter"];
        assert_eq!(plugin.limits.fuel, Some(1_000_000));
        assert_eq!(
            plugin.limits.memory_bytes,
            32 << 20,
            "defaults apply under overrides"
        );
        let kv = plugin.grants.kv.as_ref().unwrap();
        assert_eq!(
            (kv.namespace.as_str(), kv.max_keys, kv.max_total_bytes),
            ("shared", 5, 1024)
        );
        assert_eq!(plugin.grants.files[0].access, Access::ReadWrite);
        assert_eq!(
            plugin.grants.http.as_ref().unwrap().max_requests_per_call,
            2
        );
        assert!(plugin.grants.events.may_publish("counter.up"));
        assert_eq!(plugin.grants.env["LANG"], "en");
        assert!(policy.plugin_spec("counter").is_some());
        assert_eq!(
            policy.host.data_dir,
            Some(std::env::temp_dir().join("data"))
        );
    }

    #[test]
    fn unknown_keys_name_the_line_and_key() {
        let (_, wasm) = wasm_file();
        let text = format!("[plugins.a]\npath = \"{wasm}\"\nkv_store = {{ namespace = \"x\" }}\n");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(3), "{err}");
        assert!(err.message.contains("kv_store"), "{err}");
        assert!(err.to_string().starts_with("capsule.toml:3:"), "{err}");
    }

    #[test]
    fn bad_values_name_the_line() {
        let (_, wasm) = wasm_file();
        let cases = [
            ("[host.limits]\nmemory = \"lots\"\n", 2, "size"),
            ("[host.limits]\ntimeout = \"soon\"\n", 2, "duration"),
            (
                &*format!("[plugins.a]\npath = \"{wasm}\"\nhttp = {{ allow = [\"ftp://x\"] }}\n"),
                3,
                "origin",
            ),
            (
                &*format!("[plugins.a]\npath = \"{wasm}\"\nevents = {{ publish = [\"a..b\"] }}\n"),
                3,
                "topic",
            ),
            (
                &*format!(
                    "[plugins.a]\npath = \"{wasm}\"\nfiles = [{{ host = \"/x\", guest = \"/d\", access = \"rw\" }}]\n"
                ),
                3,
                "read-only",
            ),
        ];
        for (text, line, needle) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.position.map(|p| p.0), Some(line), "{err}");
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn missing_files_and_bad_names_are_located() {
        let err = parse("[plugins.a]\npath = \"/nonexistent/a.wasm\"\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("plugins.a.path"));
        assert_eq!(err.position.map(|p| p.0), Some(2));
        assert!(err.message.contains("not a file"));

        let err = parse("[host]\ntrusted_keys = [\"/nonexistent.pub\"]\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("host.trusted_keys[0]"));

        let (_, wasm) = wasm_file();
        let err = parse(&format!("[plugins.\"a/b\"]\npath = \"{wasm}\"\n")).unwrap_err();
        assert!(err.message.contains("invalid plugin name"), "{err}");

        let err = parse(&format!(
            "[plugins.a]\npath = \"{wasm}\"\nfiles = [{{ host = \"/nonexistent\", guest = \"/d\", access = \"read-only\" }}]\n"
        ))
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("plugins.a.files[0].host"));
        assert_eq!(err.position.map(|p| p.0), Some(3));
    }

    #[test]
    fn unreadable_policy_names_the_file() {
        let err = Policy::load(Path::new("/nonexistent/capsule.toml")).unwrap_err();
        assert_eq!(err.file, Path::new("/nonexistent/capsule.toml"));
        assert!(err.message.contains("cannot read"));
    }

    #[test]
    fn the_cache_key_file_is_resolved_and_used() {
        let dir = std::env::temp_dir().join(format!("capsule-policy-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let policy = Policy::parse(
            "[host]\ncache_dir = \"cache\"\ncache_key = \"state/cache.key\"\n\
             [host.pool]\nenabled = false\n",
            Path::new("capsule.toml"),
            &dir,
        )
        .unwrap();
        let key = dir.join("state/cache.key");
        assert_eq!(policy.host.cache_dir, Some(dir.join("cache")));
        assert_eq!(policy.host.cache_key, Some(key.clone()));
        assert_eq!(parse("[host]\n").unwrap().host.cache_key, None);
        // Building the host reads (here: creates) the key file.
        policy.host_builder().build().unwrap();
        assert_eq!(std::fs::metadata(&key).unwrap().len(), 32);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn values_the_host_would_refuse_are_refused_here_with_their_key() {
        let (dir, wasm) = wasm_file();
        let file_not_dir = format!("{}", dir.join("p.wasm").display());
        let cases = [
            ("[host.limits]\nfuel = 0\n".to_owned(), "host.limits.fuel"),
            (
                "[host.limits]\ntimeout = \"0ms\"\n".to_owned(),
                "host.limits.timeout",
            ),
            (
                "[host.limits]\ntimeout = \"100000000000h\"\n".to_owned(),
                "host.limits.timeout",
            ),
            (
                "[host.limits]\nmax_instances = 0\n".to_owned(),
                "host.limits.max_instances",
            ),
            ("[host.events]\nqueue = 0\n".to_owned(), "host.events.queue"),
            (
                "[host.pool]\ninstances = 0\n".to_owned(),
                "host.pool.instances",
            ),
            (
                "[host.pool]\nmax_memory = \"16MiB\"\n".to_owned(),
                "host.limits.memory",
            ),
            (
                format!("[host]\ndata_dir = \"{file_not_dir}\"\n"),
                "host.data_dir",
            ),
            (
                format!("[plugins.a]\npath = \"{wasm}\"\nenv = {{ \"A=B\" = \"x\" }}\n"),
                "plugins.a.env.A=B",
            ),
            (
                format!("[plugins.a]\npath = \"{wasm}\"\n[plugins.a.limits]\nmemory = \"8GiB\"\n"),
                "plugins.a.limits.memory",
            ),
            (
                format!("[plugins.a]\npath = \"{wasm}\"\n[plugins.a.limits]\nrecycle_after = 0\n"),
                "plugins.a.limits.recycle_after",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&text).expect_err(&text);
            assert_eq!(err.key.as_deref(), Some(key), "{text}: {err}");
            assert!(err.position.is_some(), "{err}");
        }
    }
}
