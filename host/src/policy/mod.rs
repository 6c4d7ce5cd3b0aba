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
//! [host.backend]                   # optional: share kv between hosts via NATS
//! kind = "nats"
//! url = "nats://127.0.0.1:4222"
//! prefix = "shop"
//! host_name = "web-1"              # this host in GET /v1/cluster
//! call_timeout = "30s"             # calls forwarded to other hosts
//! [[host.api_keys]]               # who may use the HTTP API (see `access`)
//! name = "checkout"
//! role = "call"
//! digest = "sha256:…"             # `capsule api-key` prints a key and its digest
//! plugins = ["counter"]
//! rate = "100/s"
//! [host.audit]                     # who did what; refusals counted per window
//! file = "audit.jsonl"
//! max_file_size = "16MiB"
//! keep_files = 4
//! [host.telemetry]                 # traces over OTLP/HTTP; none by default
//! otlp = "http://127.0.0.1:4318"
//! sample = 0.1                     # of new traces; a traceparent's decision is kept
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
//! One path from text to a [`Policy`]: **parse** (serde, `raw.rs`: the
//! shape, no I/O) → **resolve** (paths relative to the policy file, each
//! plugin section's grants through its service, trusted key files read) →
//! **validate** (`validate.rs`: every range, and every cross-reference —
//! pipelines name plugins of the policy and have stages, the plugins'
//! instances fit the pool, no key is trusted twice). Every problem is
//! reported, not only the first, each with the file, line, column and key.
//! [`Overrides`] (what `capsule run` takes on its command line) are applied
//! to the parsed sections before they are resolved, so they are validated
//! like the file. Nothing on disk changes: a mount with `create = true` is
//! created when its plugin loads. The runtime is built from a validated
//! policy (`HostBuilder::from_policy`); this module knows nothing of it.

mod raw;
pub(crate) mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::access::{ApiKey, MAX_API_KEYS, NamePattern, Rate, Role, parse_digest};
use crate::artifact::PublicKey;
use crate::audit::AuditOptions;
use crate::backend::{Backend, NatsOptions, check_prefix};
use crate::bounds::{Invalid, plugin_name};
use crate::engine::EngineOptions;
use crate::limits::{BusOptions, Limits};
use crate::services::config::Secret;
use crate::services::events::{EventsGrant, TopicPattern};
use crate::services::files::{Access, MountPolicy};
use crate::services::http::{HttpPolicy, OriginPattern};
use crate::services::kv::KvPolicy;
use crate::services::{Grants, PolicyContext};
use crate::units::{Fuel, Size, Time};
use raw::{RawBackend, RawPlugin, RawPolicy, SecretSource};

/// One problem with a policy, located as precisely as possible.
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

/// Every problem found in a policy (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    /// The first problem (the one a caller shows when it shows only one).
    pub fn first(&self) -> &PolicyError {
        &self.0[0]
    }

    fn one(error: PolicyError) -> PolicyErrors {
        PolicyErrors(vec![error])
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// A `[pipelines.NAME]` section: the plugins it chains, in order, and
/// whether their writes and events commit together (`transaction = true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelinePolicy {
    /// Plugin names, in order.
    pub stages: Vec<String>,
    /// Whether the stages commit together at the end, or not at all.
    pub transaction: bool,
}

/// A validated policy: every path resolved, every key file read, every value
/// in range, every reference between sections checked.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The policy file (`<command line>` for one made from arguments).
    pub file: PathBuf,
    /// Host-wide settings.
    pub host: HostPolicy,
    /// Plugins by name.
    pub plugins: BTreeMap<String, PluginPolicy>,
    /// Pipelines by name: the plugins each one chains, in order.
    pub pipelines: BTreeMap<String, PipelinePolicy>,
    /// `[capabilities]`: the plugin that answers `call-capability` for a
    /// capability several plugins provide.
    pub capabilities: BTreeMap<String, String>,
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
    /// without it, the user's default (`CacheKey::default_path`).
    pub cache_key: Option<PathBuf>,
    /// Where persistent plugin data (the key-value store) lives.
    pub data_dir: Option<PathBuf>,
    /// Limits of plugins that set none of their own.
    pub default_limits: Limits,
    /// Event bus settings.
    pub bus: BusOptions,
    /// Engine settings: the instance pool, the wasm stack.
    pub engine: EngineOptions,
    /// Where the key-value store lives (`[host.backend]`).
    pub backend: Backend,
    /// Who may use the HTTP API (`[[host.api_keys]]`); the only `[host]`
    /// setting a policy apply changes.
    pub api_keys: Vec<ApiKey>,
    /// Where the audit log goes (`[host.audit]`).
    pub audit: AuditOptions,
    /// Where traces go (`[host.telemetry]`).
    pub telemetry: crate::telemetry::TelemetryOptions,
    /// Where plugins named by OCI reference are kept and how registries
    /// are reached (`[host.oci]`).
    pub oci: crate::distribution::OciOptions,
}

/// One `[plugins.NAME]` section.
#[derive(Debug, Clone)]
pub struct PluginPolicy {
    /// The component file: the policy's `path`, or for a `source = "oci://…"`
    /// plugin its file in the local store once [resolved](Policy::resolve_sources)
    /// (before, a name that says it was not).
    pub path: PathBuf,
    /// The OCI reference the component comes from, when the policy names
    /// one, with what it resolved to.
    pub origin: Option<OciOrigin>,
    /// A detached signature file, if the signature is not embedded.
    pub signature: Option<PathBuf>,
    /// The plugin's limits (host defaults with its overrides applied).
    pub limits: Limits,
    /// What the plugin may touch.
    pub grants: Grants,
    /// Whether requests are checked against the input schemas the plugin's
    /// manifest declares before the plugin runs (`validate_input = true`).
    pub validate_input: bool,
    /// Operations the policy declares pure (`pure = ["price"]`), beside
    /// those the plugin's manifest declares.
    pub pure_operations: Vec<String>,
    /// Whether the plugin being degraded makes the host not ready
    /// (`readiness = false`: it is still shown in `/readyz`, and does not
    /// decide it).
    pub readiness: bool,
    /// Where each `config` value and secret is written (line, column), to
    /// point at it when the plugin's config schema refuses it.
    pub config_at: BTreeMap<String, (usize, usize)>,
}

/// Where a `source = "oci://…"` plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OciOrigin {
    /// The reference as the policy writes it.
    pub reference: crate::distribution::OciReference,
    /// What it resolved to (manifest and component digests), once resolved.
    pub resolved: Option<crate::distribution::StoredRef>,
    /// Why the registry was not asked and the store's last answer was used,
    /// if it was (the registry was down, or `--offline`).
    pub fallback: Option<String>,
}

/// Changes to one plugin's section, applied after parsing and before
/// resolving and validation: what `capsule run` takes on its command line.
/// Values are checked exactly like the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `limits.fuel` (`Some(None)` for no fuel limit).
    pub fuel: Option<Option<u64>>,
    /// `limits.memory`, in bytes.
    pub memory: Option<u64>,
    /// `limits.timeout`.
    pub timeout: Option<Duration>,
    /// `limits.max_response`, in bytes.
    pub max_response: Option<u64>,
    /// Whole grants, by service name, as a policy file writes the
    /// service's key (`("kv", "{ namespace = \"n\", max_keys = 10 }")`):
    /// each replaces that key of the section before the additions below.
    /// Every service in [`crate::services::SERVICES`] can be granted this way.
    pub grants: Vec<(String, String)>,
    /// Values added to `config`.
    pub config: Vec<(String, String)>,
    /// Variables added to `env`.
    pub env: Vec<(String, String)>,
    /// Mounts added to `files`: host directory (absolute or relative to the
    /// current directory), guest path, access.
    pub mounts: Vec<(PathBuf, String, Access)>,
    /// Origins added to `http.allow`.
    pub allow_http: Vec<OriginPattern>,
    /// The `kv` namespace (replacing the section's).
    pub kv: Option<String>,
    /// Patterns added to `events.publish`.
    pub publish: Vec<TopicPattern>,
}

impl Policy {
    /// Reads and validates the policy file at `path`: a regular file of at
    /// most [`crate::input::MAX_POLICY_BYTES`] of UTF-8 text.
    pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
        Self::load_with(path, None)
    }

    /// [`Policy::load`] with `overrides` applied to the plugin they name.
    pub fn load_with(
        path: &Path,
        overrides: Option<(&str, &Overrides)>,
    ) -> Result<Policy, PolicyErrors> {
        Self::load_fetching(path, overrides, crate::distribution::Fetch::Online)
    }

    /// [`Policy::load_with`], resolving `source = "oci://…"` plugins as
    /// `fetch` says (`Offline`: from the local store only).
    pub fn load_fetching(
        path: &Path,
        overrides: Option<(&str, &Overrides)>,
        fetch: crate::distribution::Fetch,
    ) -> Result<Policy, PolicyErrors> {
        let mut policy = Self::read_file(path, overrides)?;
        policy.resolve_sources(fetch)?;
        Ok(policy)
    }

    /// Pulls every `source = "oci://…"` plugin into the local store (or
    /// finds it there) and points its `path` at the stored component. Each
    /// reference that cannot be resolved is an error at its `source` key.
    /// Blocks while registries answer; a policy without such plugins
    /// returns at once.
    pub fn resolve_sources(
        &mut self,
        fetch: crate::distribution::Fetch,
    ) -> Result<(), PolicyErrors> {
        let pending: Vec<(String, crate::distribution::OciReference)> = self
            .plugins
            .iter()
            .filter_map(|(name, plugin)| {
                let origin = plugin.origin.as_ref()?;
                origin
                    .resolved
                    .is_none()
                    .then(|| (name.clone(), origin.reference.clone()))
            })
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let error = |name: &str, message: String| PolicyError {
            file: self.file.clone(),
            position: None,
            key: Some(format!("plugins.{name}.source")),
            message,
        };
        #[cfg(not(feature = "oci"))]
        {
            let _ = fetch;
            return Err(PolicyErrors(
                pending
                    .iter()
                    .map(|(name, _)| {
                        error(
                            name,
                            "this host was built without OCI support (the `oci` feature)".into(),
                        )
                    })
                    .collect(),
            ));
        }
        #[cfg(feature = "oci")]
        {
            let references: Vec<_> = pending.iter().map(|(_, r)| r.clone()).collect();
            let results =
                crate::distribution::resolve::resolve_blocking(&self.host.oci, &references, fetch);
            let mut errors = Vec::new();
            for ((name, _), result) in pending.iter().zip(results) {
                match result {
                    Ok(resolved) => {
                        let plugin = self.plugins.get_mut(name).expect("listed above");
                        plugin.path = resolved.path;
                        if let Some(origin) = &mut plugin.origin {
                            origin.resolved = Some(resolved.stored);
                            origin.fallback = resolved.fallback;
                        }
                    }
                    Err(err) => errors.push(error(name, format!("{} [{}]", err, err.kind()))),
                }
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(PolicyErrors(errors))
            }
        }
    }

    /// Reads and parses the policy file at `path`, with `overrides`.
    fn read_file(
        path: &Path,
        overrides: Option<(&str, &Overrides)>,
    ) -> Result<Policy, PolicyErrors> {
        let unreadable = |message: String| {
            PolicyErrors::one(PolicyError {
                file: path.to_owned(),
                position: None,
                key: None,
                message: format!("cannot read the policy file: {message}"),
            })
        };
        let bytes = crate::input::read_file(path, crate::input::MAX_POLICY_BYTES)
            .map_err(|err| unreadable(err.into_io_error().to_string()))?;
        let text = String::from_utf8(bytes)
            .map_err(|err| unreadable(format!("it is not UTF-8 text ({err})")))?;
        let base = path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse_with(&text, path, &base, overrides)
    }

    /// Parses policy text; `file` names it in errors and relative paths are
    /// resolved against `base`.
    pub fn parse(text: &str, file: &Path, base: &Path) -> Result<Policy, PolicyErrors> {
        Self::parse_with(text, file, base, None)
    }

    /// [`Policy::parse`] with `overrides` applied to the plugin they name.
    pub fn parse_with(
        text: &str,
        file: &Path,
        base: &Path,
        overrides: Option<(&str, &Overrides)>,
    ) -> Result<Policy, PolicyErrors> {
        let located = Locator {
            text,
            file,
            base,
            errors: Vec::new(),
            from_file: true,
        };
        let mut raw: RawPolicy = toml::from_str(text).map_err(|err| {
            PolicyErrors::one(PolicyError {
                file: file.to_owned(),
                position: err.span().map(|span| line_column(text, span.start)),
                key: None,
                message: err.message().trim().to_owned(),
            })
        })?;
        if let Some((plugin, overrides)) = overrides {
            let Some(section) = raw
                .plugins
                .iter_mut()
                .find(|(name, _)| name.get_ref() == plugin)
                .map(|(_, section)| section)
            else {
                let known: Vec<&str> = raw.plugins.keys().map(|n| n.get_ref().as_str()).collect();
                return Err(PolicyErrors::one(PolicyError {
                    file: file.to_owned(),
                    position: None,
                    key: None,
                    message: format!(
                        "no plugin `{plugin}` in this policy (it has: {})",
                        known.join(", ")
                    ),
                }));
            };
            apply(section, overrides).map_err(|mut errors| {
                for error in &mut errors.0 {
                    error.key = error
                        .key
                        .take()
                        .map(|key| format!("plugins.{plugin}.{key}"));
                }
                errors
            })?;
        }
        located.resolve(raw)
    }

    /// A policy of one plugin, `component`, with the host's defaults and
    /// `overrides` — what `capsule run plugin.wasm …` runs without a policy
    /// file. The plugin is named after the file (`hello.wasm` → `hello`).
    pub fn for_component(component: &Path, overrides: &Overrides) -> Result<Policy, PolicyErrors> {
        let name = component
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = Path::new("<command line>");
        let path = std::path::absolute(component).unwrap_or_else(|_| component.to_owned());
        let mut section = RawPlugin::for_path(path.display().to_string());
        apply(&mut section, overrides).map_err(|mut errors| {
            for error in &mut errors.0 {
                error.file = file.to_owned();
                error.key = error.key.take().map(|key| format!("plugins.{name}.{key}"));
            }
            errors
        })?;
        let mut plugins = BTreeMap::new();
        plugins.insert(Spanned::new(0..0, name), section);
        let raw = RawPolicy {
            host: raw::default_host(),
            plugins,
            pipelines: BTreeMap::new(),
            capabilities: BTreeMap::new(),
        };
        let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Locator {
            text: "",
            file,
            base: &base,
            errors: Vec::new(),
            from_file: false,
        }
        .resolve(raw)
    }
}

/// The reference of a `source` value: `oci://` and an OCI reference.
fn source_reference(source: &str) -> Result<crate::distribution::OciReference, String> {
    if !source.starts_with("oci://") {
        return Err(format!(
            "`{}` is not a source this host fetches from: write `oci://REGISTRY/REPOSITORY:TAG` \
             (or `…@sha256:DIGEST`), or use `path` for a file",
            source.escape_debug()
        ));
    }
    crate::distribution::OciReference::parse(source).map_err(|err| err.to_string())
}

/// Applies command-line overrides to a parsed plugin section. A whole
/// grant that does not parse is an error naming its service (the key, to
/// be prefixed with the plugin's section, and `<command line>` as file).
fn apply(section: &mut RawPlugin, overrides: &Overrides) -> Result<(), PolicyErrors> {
    let errors: Vec<PolicyError> = overrides
        .grants
        .iter()
        .filter_map(|(service, value)| {
            raw::set_grant(section, service, value)
                .err()
                .map(|message| PolicyError {
                    file: PathBuf::from("<command line>"),
                    position: None,
                    key: Some(service.clone()),
                    message: format!("--grant {service}: {message}"),
                })
        })
        .collect();
    if !errors.is_empty() {
        return Err(PolicyErrors(errors));
    }
    let limits = section.limits.get_mut();
    if let Some(fuel) = overrides.fuel {
        limits.fuel = Some(Fuel(fuel));
    }
    if let Some(memory) = overrides.memory {
        limits.memory = Some(Size(memory));
    }
    if let Some(timeout) = overrides.timeout {
        limits.timeout = Some(Time(timeout));
    }
    if let Some(max_response) = overrides.max_response {
        limits.max_response = Some(Size(max_response));
    }
    fn entries<V>(
        section: &mut Option<Spanned<BTreeMap<String, V>>>,
        added: &[(String, String)],
        value: impl Fn(&str) -> V,
    ) {
        if added.is_empty() {
            return;
        }
        let map = section.get_or_insert_with(|| Spanned::new(0..0, BTreeMap::new()));
        map.get_mut()
            .extend(added.iter().map(|(k, v)| (k.clone(), value(v))));
    }
    // `--set` values are strings until the plugin's config schema says
    // otherwise (see `services::config::apply_schema`).
    if !overrides.config.is_empty() {
        let map = section
            .config
            .get_or_insert_with(|| Spanned::new(0..0, BTreeMap::new()));
        for (key, value) in &overrides.config {
            let key = Spanned::new(0..0, key.clone());
            // Replace, so the key no longer points into the file.
            map.get_mut().remove(&key);
            map.get_mut()
                .insert(key, serde_json::Value::String(value.clone()));
        }
    }
    entries(&mut section.env, &overrides.env, str::to_owned);
    if !overrides.mounts.is_empty() {
        let mounts = section
            .files
            .get_or_insert_with(|| Spanned::new(0..0, Vec::new()));
        for (host, guest, access) in &overrides.mounts {
            let host = std::path::absolute(host).unwrap_or_else(|_| host.clone());
            mounts.get_mut().push(MountPolicy {
                host: host.display().to_string(),
                guest: guest.clone(),
                access: *access,
                create: false,
            });
        }
    }
    if !overrides.allow_http.is_empty() {
        let http = section.http.get_or_insert_with(|| {
            Spanned::new(
                0..0,
                HttpPolicy {
                    allow: Vec::new(),
                    max_requests: None,
                    max_response: None,
                },
            )
        });
        http.get_mut()
            .allow
            .extend(overrides.allow_http.iter().cloned());
    }
    if let Some(namespace) = &overrides.kv {
        let kv = section
            .kv
            .get_or_insert_with(|| Spanned::new(0..0, KvPolicy::default()));
        kv.get_mut().namespace = Some(namespace.clone());
    }
    if !overrides.publish.is_empty() {
        let events = section
            .events
            .get_or_insert_with(|| Spanned::new(0..0, EventsGrant::default()));
        events
            .get_mut()
            .publish
            .extend(overrides.publish.iter().cloned());
    }
    Ok(())
}

/// 1-based line and column of a byte offset.
/// The largest secret file read.
const MAX_SECRET_BYTES: u64 = 64 << 10;

/// A file's text without the one newline an editor leaves at its end.
fn without_final_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Resolves and validates raw sections, collecting every problem with its
/// place in the text.
struct Locator<'a> {
    text: &'a str,
    file: &'a Path,
    base: &'a Path,
    errors: Vec<PolicyError>,
    /// Whether a plugin's component must exist now. A policy file names
    /// files that must; a component named on the command line is read (and
    /// a missing one reported as `io`) when it loads, like any other.
    from_file: bool,
}

impl Locator<'_> {
    fn error(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        // A value that did not come from the text (an override, a default)
        // has no position.
        let position = (span != (0..0) || self.text.is_empty())
            .then(|| line_column(self.text, span.start))
            .filter(|_| !self.text.is_empty());
        self.errors.push(PolicyError {
            file: self.file.to_owned(),
            position,
            key: Some(key.to_owned()),
            message: message.into(),
        });
    }

    /// A value that validation refused, located at `span` in `section`.
    fn invalid(&mut self, span: Range<usize>, section: &str, invalid: Invalid) {
        let key = format!("{section}.{}", invalid.field);
        self.error(span, &key, invalid.message);
    }

    fn path(&self, path: &str) -> PathBuf {
        self.base.join(path)
    }

    /// A path that must name an existing file.
    fn existing_file(&mut self, value: &Spanned<String>, key: &str) -> Option<PathBuf> {
        let path = self.path(value.get_ref());
        if path.is_file() {
            Some(path)
        } else {
            self.error(
                value.span(),
                key,
                format!("{} is not a file", path.display()),
            );
            None
        }
    }

    fn resolve(mut self, raw: RawPolicy) -> Result<Policy, PolicyErrors> {
        let host = self.host(&raw.host);
        let names: BTreeSet<String> = raw.plugins.keys().map(|n| n.get_ref().clone()).collect();
        let mut plugins = BTreeMap::new();
        for (name, section) in raw.plugins {
            if let Some(plugin) = self.plugin(&name, section, &host) {
                plugins.insert(name.into_inner(), plugin);
            }
        }
        let mut pipelines = BTreeMap::new();
        for (name, section) in &raw.pipelines {
            let key = format!("pipelines.{}", name.get_ref());
            if let Err(message) = plugin_name(name.get_ref()) {
                self.error(name.span(), &key, message);
            }
            if section.stages.is_empty() {
                self.error(name.span(), &key, "a pipeline needs at least one stage");
            }
            for (i, stage) in section.stages.iter().enumerate() {
                if !names.contains(stage.get_ref()) {
                    self.error(
                        stage.span(),
                        &format!("{key}.stages[{i}]"),
                        format!("no plugin named `{}` in this policy", stage.get_ref()),
                    );
                }
            }
            let stages = section.stages.iter().map(|s| s.get_ref().clone()).collect();
            pipelines.insert(
                name.get_ref().clone(),
                PipelinePolicy {
                    stages,
                    transaction: section.transaction,
                },
            );
        }
        let mut capabilities = BTreeMap::new();
        for (capability, plugin) in &raw.capabilities {
            let key = format!("capabilities.{}", capability.get_ref());
            if !names.contains(plugin.get_ref()) {
                self.error(
                    plugin.span(),
                    &key,
                    format!("no plugin named `{}` in this policy", plugin.get_ref()),
                );
            }
            capabilities.insert(capability.get_ref().clone(), plugin.get_ref().clone());
        }
        if let Err(invalid) = validate::plugins_fit_pool(
            plugins
                .iter()
                .map(|(name, plugin)| (name.as_str(), &plugin.limits)),
            host.engine.pooling.as_ref(),
        ) {
            self.invalid(raw.host.pool.span(), "host.pool", invalid);
        }
        if !self.errors.is_empty() {
            return Err(PolicyErrors(self.errors));
        }
        if self.from_file && host.trusted_keys.is_empty() && !host.allow_unsigned {
            tracing::warn!(
                file = %self.file.display(),
                "the policy trusts no keys: every plugin will be refused"
            );
        }
        Ok(Policy {
            file: self.file.to_owned(),
            host,
            plugins,
            pipelines,
            capabilities,
        })
    }

    fn host(&mut self, raw: &raw::RawHost) -> HostPolicy {
        let mut trusted_keys: Vec<(PathBuf, PublicKey)> = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, value) in raw.trusted_keys.iter().enumerate() {
            let key = format!("host.trusted_keys[{i}]");
            let Some(path) = self.existing_file(value, &key) else {
                continue;
            };
            match PublicKey::from_file(&path) {
                Ok(public) if !seen.insert(public.key_id()) => self.error(
                    value.span(),
                    &key,
                    format!("key {} is listed twice", public.key_id()),
                ),
                Ok(public) => trusted_keys.push((path, public)),
                Err(err) => self.error(value.span(), &key, err.to_string()),
            }
        }
        let engine = raw.pool.get_ref().apply(EngineOptions::default());
        if let Err(invalid) = validate::engine(&engine) {
            self.invalid(raw.pool.span(), "host.pool", invalid);
        }
        let bus = raw.events.get_ref().apply(BusOptions::default());
        let backend = self.backend(raw.backend.as_ref());
        let api_keys = self.api_keys(&raw.api_keys);
        let audit = self.audit(raw.audit.as_ref());
        let telemetry = self.telemetry(raw.telemetry.as_ref());
        let oci = self.oci(raw.oci.as_ref());
        if let Err(invalid) = validate::bus(&bus) {
            self.invalid(raw.events.span(), "host.events", invalid);
        }
        let default_limits = raw.limits.get_ref().apply(Limits::default());
        if let Err(invalid) = validate::limits(&default_limits) {
            self.invalid(raw.limits.span(), "host.limits", invalid);
        } else if let Err(invalid) =
            validate::limits_fit_pool(&default_limits, engine.pooling.as_ref())
        {
            // The defaults do not fit the pool: point at whichever section
            // the file has.
            let span = if raw.limits.span() == (0..0) {
                raw.pool.span()
            } else {
                raw.limits.span()
            };
            self.invalid(span, "host.limits", invalid);
        }
        for (key, dir) in [("cache_dir", &raw.cache_dir), ("data_dir", &raw.data_dir)] {
            if let Some(dir) = dir {
                let path = self.path(dir.get_ref());
                // A missing directory is created when the host starts.
                if path.exists() && !path.is_dir() {
                    self.error(
                        dir.span(),
                        &format!("host.{key}"),
                        format!("{} is not a directory", path.display()),
                    );
                }
            }
        }
        HostPolicy {
            trusted_keys,
            allow_unsigned: raw.allow_unsigned,
            allow_partial_signatures: raw.allow_partial_signatures,
            cache_dir: raw.cache_dir.as_ref().map(|d| self.path(d.get_ref())),
            cache_key: raw.cache_key.as_ref().map(|k| self.path(k)),
            data_dir: raw.data_dir.as_ref().map(|d| self.path(d.get_ref())),
            default_limits,
            bus,
            engine,
            backend,
            api_keys,
            audit,
            telemetry,
            oci,
        }
    }

    /// Reads `[host.oci]`.
    fn oci(&mut self, raw: Option<&Spanned<raw::RawOci>>) -> crate::distribution::OciOptions {
        let mut options = crate::distribution::OciOptions::default();
        let Some(raw) = raw else {
            return options;
        };
        let raw = raw.get_ref();
        options.store = raw.store.as_ref().map(|dir| {
            let path = self.path(dir.get_ref());
            if path.exists() && !path.is_dir() {
                self.error(
                    dir.span(),
                    "host.oci.store",
                    format!("{} is not a directory", path.display()),
                );
            }
            path
        });
        if let Some(size) = &raw.max_store {
            options.max_store = size.0;
        }
        if let Some(time) = &raw.timeout {
            options.timeout = time.0;
        }
        for registry in &raw.insecure {
            let text = registry.get_ref();
            if text.is_empty() || text.contains(['/', ' ']) {
                self.error(
                    registry.span(),
                    "host.oci.insecure",
                    format!(
                        "`{}` is not a registry (`host` or `host:port`)",
                        text.escape_debug()
                    ),
                );
            } else {
                options.insecure.push(text.clone());
            }
        }
        options
    }

    /// Reads `[host.telemetry]`.
    fn telemetry(
        &mut self,
        raw: Option<&Spanned<raw::RawTelemetry>>,
    ) -> crate::telemetry::TelemetryOptions {
        let mut options = crate::telemetry::TelemetryOptions::default();
        let Some(raw) = raw else {
            return options;
        };
        let span = raw.span();
        let raw = raw.get_ref();
        options.otlp = raw.otlp.clone();
        if let Some(name) = &raw.service_name {
            options.service_name = name.clone();
        }
        if let Some(sample) = raw.sample {
            options.sample = sample;
        }
        if let Some(interval) = &raw.interval {
            options.interval = interval.0;
        }
        if let Some(queue) = raw.max_queue {
            options.max_queue = queue;
        }
        if let Err(why) = options.validate() {
            self.error(span, "host.telemetry", why);
        }
        options
    }

    /// Reads `[host.audit]`.
    fn audit(&mut self, raw: Option<&Spanned<raw::RawAudit>>) -> AuditOptions {
        let mut options = AuditOptions::default();
        let Some(raw) = raw else {
            return options;
        };
        let span = raw.span();
        let raw = raw.get_ref();
        if let Some(file) = &raw.file {
            let path = self.path(file.get_ref());
            if path.is_dir() {
                self.error(
                    file.span(),
                    "host.audit.file",
                    format!("{} is a directory", path.display()),
                );
            }
            options.file = Some(path);
        }
        if let Some(size) = &raw.max_file_size {
            options.max_file_bytes = size.0;
        }
        if let Some(keep) = raw.keep_files {
            options.keep_files = keep;
        }
        if let Some(window) = &raw.window {
            options.window = window.0;
        }
        if options.max_file_bytes < 4096 {
            self.error(span.clone(), "host.audit.max_file_size", "at least 4KiB");
        }
        if options.keep_files > 1000 {
            self.error(span.clone(), "host.audit.keep_files", "at most 1000");
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&options.window) {
            self.error(span, "host.audit.window", "between 1s and 1h");
        }
        options
    }

    /// Reads `[[host.api_keys]]`: every value valid, no name or digest twice.
    fn api_keys(&mut self, raw: &[Spanned<raw::RawApiKey>]) -> Vec<ApiKey> {
        let mut keys = Vec::new();
        if raw.len() > MAX_API_KEYS {
            self.error(
                raw[MAX_API_KEYS].span(),
                "host.api_keys",
                format!("at most {MAX_API_KEYS} API keys"),
            );
        }
        let mut names = BTreeSet::new();
        let mut digests = BTreeSet::new();
        for (i, entry) in raw.iter().enumerate() {
            let at = format!("host.api_keys[{i}]");
            let entry = entry.get_ref();
            let errors_before = self.errors.len();
            let name = entry.name.get_ref();
            if let Err(message) = plugin_name(name) {
                let message = message.replace("plugin name", "key name");
                self.error(entry.name.span(), &format!("{at}.name"), message);
            } else if !names.insert(name.clone()) {
                self.error(
                    entry.name.span(),
                    &format!("{at}.name"),
                    format!("another key is named `{name}`"),
                );
            }
            let role = Role::parse(entry.role.get_ref())
                .map_err(|message| self.error(entry.role.span(), &format!("{at}.role"), message))
                .ok();
            let digest = parse_digest(entry.digest.get_ref())
                .map_err(|message| {
                    self.error(entry.digest.span(), &format!("{at}.digest"), message)
                })
                .ok();
            if let Some(digest) = digest
                && !digests.insert(digest)
            {
                self.error(
                    entry.digest.span(),
                    &format!("{at}.digest"),
                    "another key has this digest",
                );
            }
            let mut patterns = |list: &[Spanned<String>], field: &str| -> Vec<NamePattern> {
                list.iter()
                    .enumerate()
                    .filter_map(|(j, value)| {
                        NamePattern::parse(value.get_ref())
                            .map_err(|message| {
                                self.error(value.span(), &format!("{at}.{field}[{j}]"), message)
                            })
                            .ok()
                    })
                    .collect()
            };
            let plugins = patterns(&entry.plugins, "plugins");
            let pipelines = patterns(&entry.pipelines, "pipelines");
            let topics: Vec<TopicPattern> = entry
                .topics
                .iter()
                .enumerate()
                .filter_map(|(j, value)| {
                    TopicPattern::parse(value.get_ref())
                        .map_err(|message| {
                            self.error(value.span(), &format!("{at}.topics[{j}]"), message)
                        })
                        .ok()
                })
                .collect();
            let scoped = !entry.plugins.is_empty()
                || !entry.pipelines.is_empty()
                || !entry.topics.is_empty();
            if scoped && role.is_some_and(|role| role != Role::Call) {
                self.error(
                    entry.role.span(),
                    &format!("{at}.role"),
                    "only a `call` key takes `plugins`, `pipelines` or `topics` (a `view` key \
                     reads everything and calls nothing; an `admin` key may do everything)",
                );
            } else if !scoped && role == Some(Role::Call) {
                self.error(
                    entry.role.span(),
                    &format!("{at}.role"),
                    "a `call` key needs `plugins`, `pipelines` or `topics` to name what it \
                     may call (`plugins = [\"*\"]` for every plugin)",
                );
            }
            if entry.rate.is_none()
                && let Some(burst) = &entry.burst
            {
                self.error(
                    burst.span(),
                    &format!("{at}.burst"),
                    "`burst` needs a `rate`",
                );
            }
            let rate = entry.rate.as_ref().and_then(|rate| {
                Rate::parse(rate.get_ref(), entry.burst.as_ref().map(|b| *b.get_ref()))
                    .map_err(|message| self.error(rate.span(), &format!("{at}.rate"), message))
                    .ok()
            });
            if self.errors.len() > errors_before {
                continue;
            }
            if let (Some(role), Some(digest)) = (role, digest) {
                keys.push(ApiKey {
                    name: name.clone(),
                    digest,
                    role,
                    plugins,
                    pipelines,
                    topics,
                    rate,
                });
            }
        }
        keys
    }

    /// Reads `[host.backend]`.
    fn backend(&mut self, raw: Option<&Spanned<RawBackend>>) -> Backend {
        let Some(raw) = raw else {
            return Backend::Embedded;
        };
        let section = "host.backend";
        let raw_ref = raw.get_ref();
        match raw_ref.kind.get_ref().as_str() {
            "embedded" => {
                for (field, set) in [
                    ("url", raw_ref.url.as_ref().map(Spanned::span)),
                    ("prefix", raw_ref.prefix.as_ref().map(Spanned::span)),
                    (
                        "credentials",
                        raw_ref.credentials.as_ref().map(Spanned::span),
                    ),
                    ("replicas", raw_ref.replicas.as_ref().map(Spanned::span)),
                    ("host_name", raw_ref.host_name.as_ref().map(Spanned::span)),
                    (
                        "call_timeout",
                        raw_ref.call_timeout.as_ref().map(Spanned::span),
                    ),
                ] {
                    if let Some(span) = set {
                        self.error(
                            span,
                            &format!("{section}.{field}"),
                            "only a `nats` backend takes this",
                        );
                    }
                }
                Backend::Embedded
            }
            "nats" => {
                let Some(url) = &raw_ref.url else {
                    self.error(
                        raw.span(),
                        &format!("{section}.url"),
                        "a `nats` backend needs `url`, e.g. \"nats://127.0.0.1:4222\"",
                    );
                    return Backend::Embedded;
                };
                for server in url.get_ref().split(',') {
                    let server = server.trim();
                    let scheme = server.split_once("://").map(|(scheme, _)| scheme);
                    if !matches!(scheme, Some("nats" | "tls")) {
                        self.error(
                            url.span(),
                            &format!("{section}.url"),
                            format!("`{server}` is not a nats:// or tls:// URL"),
                        );
                    }
                }
                let mut options = NatsOptions::new(url.get_ref().clone());
                if let Some(prefix) = &raw_ref.prefix {
                    match check_prefix(prefix.get_ref()) {
                        Ok(()) => options.prefix = prefix.get_ref().clone(),
                        Err(err) => self.error(prefix.span(), &format!("{section}.prefix"), err),
                    }
                }
                if let Some(replicas) = &raw_ref.replicas {
                    match *replicas.get_ref() {
                        count @ 1..=5 => options.replicas = count,
                        count => self.error(
                            replicas.span(),
                            &format!("{section}.replicas"),
                            format!("{count}: JetStream keeps 1 to 5 replicas"),
                        ),
                    }
                }
                if let Some(source) = &raw_ref.credentials {
                    options.credentials = self.secret(source, &format!("{section}.credentials"));
                }
                if let Some(name) = &raw_ref.host_name {
                    let valid = !name.get_ref().is_empty()
                        && name.get_ref().len() <= 48
                        && crate::backend::host_token(name.get_ref()) == *name.get_ref();
                    if valid {
                        options.host_name = Some(name.get_ref().clone());
                    } else {
                        self.error(
                            name.span(),
                            &format!("{section}.host_name"),
                            "use 1-48 letters, digits, `-` or `_`",
                        );
                    }
                }
                if let Some(timeout) = &raw_ref.call_timeout {
                    let wait = timeout.get_ref().0;
                    if (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&wait) {
                        options.call_timeout = wait;
                    } else {
                        self.error(
                            timeout.span(),
                            &format!("{section}.call_timeout"),
                            format!("{wait:?}: a forwarded call waits 100ms to 1h"),
                        );
                    }
                }
                Backend::Nats(options)
            }
            other => {
                self.error(
                    raw_ref.kind.span(),
                    &format!("{section}.kind"),
                    format!("`{other}` is not a backend: `embedded` or `nats`"),
                );
                Backend::Embedded
            }
        }
    }

    fn plugin(
        &mut self,
        name: &Spanned<String>,
        mut raw: RawPlugin,
        host: &HostPolicy,
    ) -> Option<PluginPolicy> {
        let errors_before = self.errors.len();
        let section = format!("plugins.{}", name.get_ref());
        let key = |field: &str| format!("{section}.{field}");
        if let Err(message) = plugin_name(name.get_ref()) {
            self.error(name.span(), &section, message);
        }
        let (path, origin) = match (&raw.path, &raw.source) {
            (Some(path), None) if self.from_file => (self.existing_file(path, &key("path")), None),
            (Some(path), None) => (Some(self.path(path.get_ref())), None),
            (None, Some(source)) => match source_reference(source.get_ref()) {
                // Named so that loading an unresolved policy fails saying why.
                Ok(reference) => (
                    Some(PathBuf::from(format!(
                        "oci://{reference} (not pulled: Policy::resolve_sources was not called)"
                    ))),
                    Some(OciOrigin {
                        reference,
                        resolved: None,
                        fallback: None,
                    }),
                ),
                Err(message) => {
                    self.error(source.span(), &key("source"), message);
                    (None, None)
                }
            },
            (Some(_), Some(source)) => {
                self.error(
                    source.span(),
                    &key("source"),
                    "`path` and `source` are exclusive: name the component by one of them",
                );
                (None, None)
            }
            (None, None) => {
                self.error(
                    name.span(),
                    &section,
                    "a plugin needs `path` (a component file) or `source` (`oci://REGISTRY/REPOSITORY:TAG`)",
                );
                (None, None)
            }
        };
        let signature = raw
            .signature
            .as_ref()
            .map(|sig| self.existing_file(sig, &key("signature")));
        let limits = raw.limits.get_ref().apply(host.default_limits.clone());
        let limits_span = raw.limits.span();
        if let Err(invalid) = validate::limits(&limits)
            .and_then(|()| validate::limits_fit_pool(&limits, host.engine.pooling.as_ref()))
        {
            let span = if limits_span == (0..0) {
                name.span()
            } else {
                limits_span
            };
            self.invalid(span, &key("limits"), invalid);
        }
        let spans = raw::grant_spans(&raw);
        let mut config_at = BTreeMap::new();
        if let Some(config) = &raw.config {
            for key in config.get_ref().keys() {
                if key.span() != (0..0) {
                    config_at.insert(
                        key.get_ref().clone(),
                        line_column(self.text, key.span().start),
                    );
                }
            }
        }
        let secrets = self.secrets(&raw, &section, &mut config_at);
        let context = PolicyContext {
            plugin: name.get_ref(),
            base: self.base,
        };
        let (mut grants, errors) = raw::grants(&mut raw, &context);
        for (span, invalid) in errors {
            self.invalid(span, &section, invalid);
        }
        grants.config.secrets = secrets;
        if let Err(invalid) = grants.validate() {
            let service = invalid.field.split(['.', '[']).next().unwrap_or_default();
            let span = spans
                .iter()
                .find(|(name, _)| *name == service)
                .map_or_else(|| name.span(), |(_, span)| span.clone());
            self.invalid(span, &section, invalid);
        }
        if let (Backend::Nats(nats), Some(kv)) = (&host.backend, &grants.kv) {
            let longest = crate::backend::nats_max_key_bytes(&nats.prefix, &kv.namespace);
            if kv.max_key_bytes > longest {
                let span = spans
                    .iter()
                    .find(|(name, _)| *name == "kv")
                    .map_or_else(|| name.span(), |(_, span)| span.clone());
                self.error(
                    span,
                    &key("kv.max_key"),
                    format!(
                        "{} bytes: with the NATS backend, keys in namespace `{}` can be at most \
                         {longest} bytes (they become part of a NATS subject)",
                        kv.max_key_bytes, kv.namespace
                    ),
                );
            }
        }
        let pure_operations = match &raw.pure {
            Some(pure) => match check_operation_names(pure.get_ref()) {
                Ok(()) => pure.get_ref().clone(),
                Err(message) => {
                    self.error(pure.span(), &key("pure"), message);
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        if self.errors.len() > errors_before {
            return None;
        }
        Some(PluginPolicy {
            path: path?,
            origin,
            signature: signature.flatten(),
            limits,
            grants,
            validate_input: raw.validate_input,
            pure_operations,
            readiness: raw.readiness,
            config_at,
        })
    }

    /// Reads one secret from its environment variable or file, now, so a
    /// missing one is a policy error at its line.
    fn secret(&mut self, source: &Spanned<SecretSource>, at: &str) -> Option<Secret> {
        let value = match source.get_ref() {
            SecretSource::Env(variable) => match std::env::var(variable) {
                Ok(value) => Some(value),
                Err(err) => {
                    self.error(
                        source.span(),
                        at,
                        format!("environment variable `{variable}`: {err}"),
                    );
                    None
                }
            },
            SecretSource::File(file) => {
                let path = self.path(file);
                match crate::input::read_file(&path, MAX_SECRET_BYTES) {
                    Ok(bytes) => match String::from_utf8(bytes) {
                        Ok(text) => Some(without_final_newline(text)),
                        Err(_) => {
                            self.error(
                                source.span(),
                                at,
                                format!("{} is not UTF-8 text", path.display()),
                            );
                            None
                        }
                    },
                    Err(err) => {
                        self.error(source.span(), at, err.to_string());
                        None
                    }
                }
            }
        };
        value.map(Secret::new)
    }

    /// Reads a plugin section's secrets: each from its environment variable
    /// or file, now, so a missing one is a policy error at its line.
    fn secrets(
        &mut self,
        raw: &RawPlugin,
        section: &str,
        config_at: &mut BTreeMap<String, (usize, usize)>,
    ) -> BTreeMap<String, Secret> {
        let mut secrets = BTreeMap::new();
        for (key, source) in &raw.secrets {
            let at = format!("{section}.secrets.{}", key.get_ref());
            let value = self
                .secret(source, &at)
                .map(|secret| secret.expose().to_owned());
            if let Some(value) = value {
                if key.span() != (0..0) {
                    config_at.insert(
                        key.get_ref().clone(),
                        line_column(self.text, key.span().start),
                    );
                }
                secrets.insert(key.get_ref().clone(), Secret::new(value));
            }
        }
        secrets
    }
}

#[cfg(test)]
mod tests;

/// The most operations a policy may declare pure for one plugin.
const MAX_PURE_OPERATIONS: usize = 256;

/// Operation names a policy declares pure: at most
/// [`MAX_PURE_OPERATIONS`], each 1 to 256 bytes, none twice.
fn check_operation_names(names: &[String]) -> Result<(), String> {
    if names.len() > MAX_PURE_OPERATIONS {
        return Err(format!(
            "{} operations: at most {MAX_PURE_OPERATIONS} may be declared pure",
            names.len()
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        if name.is_empty() || name.len() > 256 {
            return Err(format!(
                "`{}` is not an operation name: 1 to 256 bytes",
                crate::text::log_field(name)
            ));
        }
        if !seen.insert(name) {
            return Err(format!("`{name}` is declared pure twice"));
        }
    }
    Ok(())
}
