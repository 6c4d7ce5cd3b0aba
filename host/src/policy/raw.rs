//! The policy file's shape, as serde reads it: every section with
//! `deny_unknown_fields` (a misspelt grant must be an error, not a silently
//! missing capability) and spans kept for every value an error may point
//! at. The plugin section's grants are generated from the service list.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::engine::EngineOptions;
use crate::limits::{BusOptions, Limits};
use crate::services::{Service, for_each_service};
use crate::units::{Fuel, Size, Time};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default = "default_host")]
    pub(super) host: RawHost,
    #[serde(default)]
    pub(super) plugins: BTreeMap<Spanned<String>, RawPlugin>,
    #[serde(default)]
    pub(super) pipelines: BTreeMap<Spanned<String>, RawPipeline>,
    /// `[capabilities]`: which plugin answers calls to a capability.
    #[serde(default)]
    pub(super) capabilities: BTreeMap<Spanned<String>, Spanned<String>>,
}

/// Where a secret comes from: `{ env = "API_TOKEN" }` or
/// `{ file = "secrets/token" }` (relative to the policy file).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(super) enum SecretSource {
    /// An environment variable of the host process.
    Env(String),
    /// A file's contents, without one trailing newline.
    File(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    pub(super) stages: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) transaction: bool,
}

macro_rules! define_raw_plugin {
    ($($(#[$doc:meta])* $field:ident: $service:ty => $grant:ty, $summary:ty;)*) => {
        /// One `[plugins.NAME]` section: where the component is, its limits,
        /// and one optional key per host service.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct RawPlugin {
            /// The component file (exclusive with `source`).
            pub(super) path: Option<Spanned<String>>,
            /// Where to fetch the component: `oci://REGISTRY/REPO:TAG` or
            /// `…@sha256:…` (exclusive with `path`).
            pub(super) source: Option<Spanned<String>>,
            pub(super) signature: Option<Spanned<String>>,
            #[serde(default = "unspanned")]
            pub(super) limits: Spanned<RawLimits>,
            /// Check each request against the operation's declared input
            /// schema before the plugin runs.
            #[serde(default)]
            pub(super) validate_input: bool,
            /// Operations the operator declares pure, beside those the
            /// manifest does: cached, and run with writes denied.
            #[serde(default)]
            pub(super) pure: Option<Spanned<Vec<String>>>,
            /// Whether the plugin's health decides the host's readiness.
            #[serde(default = "counts_for_readiness")]
            pub(super) readiness: bool,
            /// `[plugins.NAME.secrets]`: configuration values read from the
            /// environment or files, never shown.
            #[serde(default)]
            pub(super) secrets: BTreeMap<Spanned<String>, Spanned<SecretSource>>,
            $(pub(super) $field: Option<Spanned<<$service as Service>::Policy>>,)*
        }

        impl RawPlugin {
            /// A section with just a component path (from the command line).
            pub(super) fn for_path(path: String) -> RawPlugin {
                RawPlugin {
                    path: Some(Spanned::new(0..0, path)),
                    source: None,
                    signature: None,
                    limits: unspanned(),
                    validate_input: false,
                    pure: None,
                    readiness: true,
                    secrets: BTreeMap::new(),
                    $($field: None,)*
                }
            }
        }

        /// Turns a raw plugin section's grants into [`crate::Grants`], each
        /// through its service; errors come with the key and span.
        pub(super) fn grants(
            raw: &mut RawPlugin,
            context: &crate::services::PolicyContext<'_>,
        ) -> (crate::Grants, Vec<(std::ops::Range<usize>, crate::bounds::Invalid)>) {
            let mut grants = crate::Grants::default();
            let mut errors = Vec::new();
            $(if let Some(policy) = raw.$field.take() {
                let span = policy.span();
                match <$service as Service>::from_policy(policy.into_inner(), context) {
                    Ok(grant) => grants.$field = grant,
                    Err(invalid) => errors.push((span, invalid.within(<$service as Service>::NAME))),
                }
            })*
            (grants, errors)
        }

        /// Replaces service `service`'s key in a plugin section with `toml`,
        /// written as the policy file would write the key's value (what
        /// `capsule run --grant SERVICE=VALUE` gives).
        pub(super) fn set_grant(raw: &mut RawPlugin, service: &str, toml: &str) -> Result<(), String> {
            $(if service == <$service as Service>::NAME {
                let value: GrantValue<<$service as Service>::Policy> =
                    toml::from_str(&format!("grant = {toml}"))
                        .map_err(|err| err.message().trim().to_owned())?;
                raw.$field = Some(Spanned::new(0..0, value.grant));
                return Ok(());
            })*
            let names: Vec<&str> = crate::services::SERVICES.iter().map(|s| s.name).collect();
            Err(format!("no service `{service}` (services: {})", names.join(", ")))
        }

        /// Where each service's key is in a plugin section, to locate what
        /// validation finds.
        pub(super) fn grant_spans(raw: &RawPlugin) -> Vec<(&'static str, std::ops::Range<usize>)> {
            let mut spans = Vec::new();
            $(if let Some(policy) = &raw.$field {
                spans.push((<$service as Service>::NAME, policy.span()));
            })*
            spans
        }
    };
}
for_each_service!(define_raw_plugin);

/// One service's grant, parsed on its own as `grant = VALUE`.
#[derive(Deserialize)]
struct GrantValue<P> {
    grant: P,
}

/// `[host.events]`: the event bus.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBus {
    pub(super) queue: Option<usize>,
    pub(super) queue_bytes: Option<Size>,
    pub(super) queue_timeout: Option<Time>,
    pub(super) max_attempts: Option<u32>,
    pub(super) max_retry_delay: Option<Time>,
    pub(super) max_hops: Option<u32>,
    pub(super) dead_letters: Option<usize>,
    pub(super) dead_letter_bytes: Option<Size>,
    pub(super) ack_wait: Option<Time>,
}

impl RawBus {
    pub(super) fn apply(&self, mut options: BusOptions) -> BusOptions {
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
        if let Some(time) = &self.ack_wait {
            options.ack_wait = time.0;
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
pub(super) fn default_host() -> RawHost {
    toml::from_str("").expect("an empty [host] section parses")
}

/// A section the file leaves out: its defaults, located nowhere.
/// A plugin's health decides the host's readiness unless the policy says
/// `readiness = false`.
fn counts_for_readiness() -> bool {
    true
}

pub(super) fn unspanned<T: Default>() -> Spanned<T> {
    Spanned::new(0..0, T::default())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    #[serde(default)]
    pub(super) trusted_keys: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) allow_unsigned: bool,
    #[serde(default)]
    pub(super) allow_partial_signatures: bool,
    pub(super) cache_dir: Option<Spanned<String>>,
    pub(super) cache_key: Option<String>,
    pub(super) data_dir: Option<Spanned<String>>,
    #[serde(default = "unspanned")]
    pub(super) limits: Spanned<RawLimits>,
    #[serde(default = "unspanned")]
    pub(super) events: Spanned<RawBus>,
    #[serde(default = "unspanned")]
    pub(super) pool: Spanned<RawPool>,
    pub(super) backend: Option<Spanned<RawBackend>>,
    #[serde(default)]
    pub(super) api_keys: Vec<Spanned<RawApiKey>>,
    pub(super) audit: Option<Spanned<RawAudit>>,
    pub(super) telemetry: Option<Spanned<RawTelemetry>>,
    pub(super) oci: Option<Spanned<RawOci>>,
}

/// `[host.oci]`: where plugins named by `source = "oci://…"` are kept, and
/// how registries are reached (see [`crate::distribution`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOci {
    pub(super) store: Option<Spanned<String>>,
    pub(super) max_store: Option<Size>,
    #[serde(default)]
    pub(super) insecure: Vec<Spanned<String>>,
    pub(super) timeout: Option<Time>,
}

/// `[host.telemetry]`: where traces go (see [`crate::telemetry`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    pub(super) otlp: Option<String>,
    pub(super) service_name: Option<String>,
    pub(super) sample: Option<f64>,
    pub(super) interval: Option<Time>,
    pub(super) max_queue: Option<usize>,
}

/// `[host.audit]`: where the audit log goes (see [`crate::audit`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) file: Option<Spanned<String>>,
    pub(super) max_file_size: Option<Size>,
    pub(super) keep_files: Option<u32>,
    pub(super) window: Option<Time>,
}

/// One `[[host.api_keys]]` entry (see [`crate::access`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApiKey {
    pub(super) name: Spanned<String>,
    pub(super) role: Spanned<String>,
    pub(super) digest: Spanned<String>,
    #[serde(default)]
    pub(super) plugins: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) pipelines: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) topics: Vec<Spanned<String>>,
    pub(super) rate: Option<Spanned<String>>,
    pub(super) burst: Option<Spanned<u32>>,
}

/// `[host.backend]`: where the key-value store lives.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    /// `embedded` (the default) or `nats`.
    pub(super) kind: Spanned<String>,
    /// `nats://host:4222` (comma-separated for several servers).
    pub(super) url: Option<Spanned<String>>,
    /// Names this deployment's buckets and streams in NATS.
    pub(super) prefix: Option<Spanned<String>>,
    /// A NATS credentials file's contents, from a file or a variable.
    pub(super) credentials: Option<Spanned<SecretSource>>,
    /// Copies JetStream keeps of the bucket it creates.
    pub(super) replicas: Option<Spanned<usize>>,
    /// This host's name in the deployment.
    pub(super) host_name: Option<Spanned<String>>,
    /// How long a call forwarded to another host waits by default.
    pub(super) call_timeout: Option<Spanned<crate::units::Time>>,
}

/// `[host.pool]`: how many instances the pooling allocator reserves room
/// for, how large a memory may grow, and the engine-wide wasm stack.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    /// `false` allocates instances on demand instead.
    pub(super) enabled: Option<bool>,
    pub(super) instances: Option<u32>,
    pub(super) max_memory: Option<Size>,
    pub(super) max_wasm_stack: Option<Size>,
}

impl RawPool {
    pub(super) fn apply(&self, mut options: EngineOptions) -> EngineOptions {
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
pub(super) struct RawLimits {
    pub(super) fuel: Option<Fuel>,
    pub(super) memory: Option<Size>,
    pub(super) timeout: Option<Time>,
    pub(super) max_request: Option<Size>,
    pub(super) max_response: Option<Size>,
    pub(super) max_log: Option<Size>,
    pub(super) max_instances: Option<usize>,
    pub(super) max_queued: Option<usize>,
    pub(super) queue_timeout: Option<Time>,
    pub(super) max_batch: Option<usize>,
    pub(super) cache: Option<Size>,
    pub(super) cache_ttl: Option<Time>,
    pub(super) max_jobs: Option<usize>,
    pub(super) job_concurrency: Option<usize>,
    pub(super) job_attempts: Option<u32>,
    pub(super) job_ttl: Option<Time>,
    pub(super) recycle_after: Option<u32>,
    pub(super) prewarm: Option<usize>,
    pub(super) circuit_failures: Option<u32>,
    pub(super) circuit_cooldown: Option<Time>,
    pub(super) max_handles: Option<usize>,
    pub(super) max_log_records: Option<usize>,
    pub(super) max_metadata_entries: Option<usize>,
    pub(super) max_calls: Option<u32>,
    pub(super) max_call_depth: Option<u32>,
}

impl RawLimits {
    pub(super) fn apply(&self, mut limits: Limits) -> Limits {
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
        if let Some(count) = self.max_batch {
            limits.max_batch = count;
        }
        if let Some(size) = &self.cache {
            limits.cache_bytes = bytes(size);
        }
        if let Some(time) = &self.cache_ttl {
            limits.cache_ttl = time.0;
        }
        if let Some(count) = self.max_jobs {
            limits.max_jobs = count;
        }
        if let Some(count) = self.job_concurrency {
            limits.job_concurrency = count;
        }
        if let Some(count) = self.job_attempts {
            limits.job_attempts = count;
        }
        if let Some(time) = &self.job_ttl {
            limits.job_ttl = time.0;
        }
        if let Some(calls) = self.recycle_after {
            limits.recycle_after = calls;
        }
        if let Some(count) = self.prewarm {
            limits.prewarm = count;
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
        if let Some(calls) = self.max_calls {
            limits.max_calls = calls;
        }
        if let Some(depth) = self.max_call_depth {
            limits.max_call_depth = depth;
        }
        limits
    }
}
