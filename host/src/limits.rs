//! What a plugin may consume, as plain data: [`Limits`] per plugin, the
//! event bus's [`BusOptions`], and the fixed per-call, per-instance and
//! per-handle budgets every plugin gets (`docs/architecture.md` lists them
//! all). Enforcing them is the sandbox's and the services' job.

use std::time::Duration;

use serde::Serialize;

/// What one plugin may consume. Every field has a host-wide default (see
/// [`crate::HostBuilder::default_limits`]) that a plugin may override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Fuel per call (roughly one unit per wasm instruction), or `None` for no
    /// fuel limit. Fuel is refilled for every call.
    pub fuel: Option<u64>,
    /// Linear memory per instance, in bytes, summed over all its memories.
    pub memory_bytes: u64,
    /// Wall-clock budget per call, including time spent in host services.
    pub timeout: Duration,
    /// Largest request (operation + payload + metadata) accepted, in bytes.
    pub max_request_bytes: usize,
    /// Largest response (payload + metadata) accepted, in bytes.
    pub max_response_bytes: usize,
    /// Log bytes per call: `log` calls plus captured stdout and stderr.
    pub max_log_bytes: usize,
    /// Instances of this plugin that may run at once.
    pub max_instances: usize,
    /// Calls that may wait for a free instance; more fail at once as `busy`.
    pub max_queued: usize,
    /// How long a queued call waits for an instance before failing as `busy`.
    pub queue_timeout: Duration,
    /// Requests one batch (`Host::call_batch`, `POST …/batch`) may carry;
    /// a larger batch is refused whole as `input_too_large`. The host
    /// holds every item's response until the batch ends, so this times
    /// `max_response_bytes` bounds what one batch keeps.
    pub max_batch: usize,
    /// Bytes of answers to pure operations the host keeps for the plugin
    /// (responses with their keys), least recently used dropped first; 0
    /// caches nothing. Only operations the manifest or the policy declares
    /// pure are cached.
    pub cache_bytes: usize,
    /// How long a cached answer is served before the operation runs again.
    pub cache_ttl: Duration,
    /// Background jobs of the plugin the store holds at once (queued,
    /// running, or finished and kept for `job_ttl`); a submit past it is
    /// refused as `quota_exceeded`. 0 turns jobs off for the plugin.
    pub max_jobs: usize,
    /// Jobs of the plugin one host runs at once.
    pub job_concurrency: usize,
    /// Attempts a job gets: a failed one is retried (after 1 s, 2 s, 4 s …,
    /// at most 60 s) until this many ran, unless the request itself was
    /// refused.
    pub job_attempts: u32,
    /// How long a finished job (its result or error) is kept.
    pub job_ttl: Duration,
    /// Calls an instance serves before it is replaced by a fresh one; 1 gives
    /// every call a fresh instance (the strongest isolation). An instance
    /// that traps is always discarded at once.
    pub recycle_after: u32,
    /// Instances started (instantiated, `init` run) when the plugin loads or
    /// a new version rolls out, so that many concurrent first calls find a
    /// warm instance; at most `max_instances`. They are idle instances like
    /// any other: recycled after `recycle_after` calls, and dropped with all
    /// idle instances when the pool runs out. 0 starts only the one that
    /// answers `describe`.
    pub prewarm: usize,
    /// Consecutive failures (traps, timeouts, limits) that open the circuit
    /// breaker; 0 disables it.
    pub circuit_failures: u32,
    /// How long an open circuit refuses calls before a probe may close it.
    pub circuit_cooldown: Duration,
    /// WASI handles (open files, streams, pollables, HTTP requests, bodies
    /// and header fields) an instance may hold at once. Every handle is host
    /// memory and an open file a host file descriptor; with the per-handle
    /// caps (see [`Limits::host_resource_bytes`]) this bounds what the
    /// host keeps for an instance's WASI resources.
    pub max_handles: usize,
    /// Log lines per call (`log` calls plus stdout and stderr lines). Each
    /// line also costs 32 (`LOG_RECORD_OVERHEAD`) bytes of the log budget, so
    /// empty lines are not free.
    pub max_log_records: usize,
    /// Response metadata entries per call. Each entry also costs
    /// 32 (`METADATA_ENTRY_OVERHEAD`) bytes of the response budget.
    pub max_metadata_entries: usize,
    /// Calls to other plugins one call may make (`plugins` service); more
    /// are refused.
    pub max_calls: u32,
    /// How deep a chain of plugins calling plugins may get, counting the
    /// first: a call that would go deeper is refused.
    pub max_call_depth: u32,
}

/// Bytes of the log budget every log line costs on top of its text: the
/// host keeps a record per line.
pub const LOG_RECORD_OVERHEAD: usize = 32;

/// Bytes of the request or response budget every metadata entry costs on
/// top of its key and value.
pub const METADATA_ENTRY_OVERHEAD: usize = 32;

/// Largest description a plugin's `describe` may return, in bytes (name,
/// version, description and capabilities, each capability with
/// [`METADATA_ENTRY_OVERHEAD`]). It is shown by every listing of plugins.
pub const MAX_DESCRIBE_BYTES: usize = 16 << 10;

/// Largest `wasi:random` request, in bytes. Seeding a generator takes a few
/// dozen; the host allocates whatever is asked for before handing it over.
pub const MAX_RANDOM_BYTES: u64 = 64 << 10;

/// What one host call may hand the host on top of the largest output the
/// plugin may legitimately produce: room for framing and small arguments.
const HOST_CALL_ALLOWANCE: usize = 64 << 10;

/// Bytes one `wasi:http` header-fields resource may hold, by whether the
/// plugin may send HTTP requests at all. An ungranted plugin can still
/// create fields (a denial is a value, not a missing import), so they stay
/// tiny.
pub const HTTP_FIELDS_BYTES_GRANTED: usize = 32 << 10;
/// See [`HTTP_FIELDS_BYTES_GRANTED`].
pub const HTTP_FIELDS_BYTES_UNGRANTED: usize = 1 << 10;
/// Bytes an outgoing `wasi:http` body buffers before the request is sent,
/// by whether the plugin may send requests.
pub const HTTP_BODY_CHUNK_GRANTED: usize = 64 << 10;
/// See [`HTTP_BODY_CHUNK_GRANTED`].
pub const HTTP_BODY_CHUNK_UNGRANTED: usize = 1 << 10;

/// Bytes one header-fields resource may hold, by whether HTTP is granted.
pub(crate) fn http_fields_limit(http_granted: bool) -> usize {
    if http_granted {
        HTTP_FIELDS_BYTES_GRANTED
    } else {
        HTTP_FIELDS_BYTES_UNGRANTED
    }
}

/// Bytes an outgoing body buffers, by whether HTTP is granted.
pub(crate) fn http_body_chunk(http_granted: bool) -> usize {
    if http_granted {
        HTTP_BODY_CHUNK_GRANTED
    } else {
        HTTP_BODY_CHUNK_UNGRANTED
    }
}

impl Limits {
    /// Bytes one host call may hand the host (wasmtime's "hostcall fuel"):
    /// enough for the largest response, log line or published payload the
    /// plugin may produce, plus 64 KiB (`HOST_CALL_ALLOWANCE`). A plugin cannot
    /// make the host copy more than this per call, however it aliases its
    /// own memory.
    pub fn host_call_bytes(&self) -> usize {
        let largest_output = self
            .max_response_bytes
            .saturating_add(
                self.max_metadata_entries
                    .saturating_mul(METADATA_ENTRY_OVERHEAD + 48),
            )
            .max(self.max_log_bytes)
            .max(self.max_request_bytes);
        largest_output.saturating_add(HOST_CALL_ALLOWANCE)
    }

    /// The most host memory an instance's WASI resources can hold: every
    /// handle at the largest per-handle cap (header fields or a buffered
    /// body chunk), which depends on whether HTTP is granted.
    pub fn host_resource_bytes(&self, http_granted: bool) -> u64 {
        let per_handle = http_fields_limit(http_granted).max(http_body_chunk(http_granted));
        (self.max_handles as u64).saturating_mul(per_handle as u64)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: Some(2_000_000_000),
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(5),
            max_request_bytes: 1 << 20,
            max_response_bytes: 1 << 20,
            max_log_bytes: 64 << 10,
            max_instances: 16,
            max_queued: 64,
            queue_timeout: Duration::from_secs(5),
            max_batch: 100,
            cache_bytes: 1 << 20,
            cache_ttl: Duration::from_secs(60),
            max_jobs: 1000,
            job_concurrency: 2,
            job_attempts: 3,
            job_ttl: Duration::from_secs(24 * 60 * 60),
            recycle_after: 1000,
            prewarm: 0,
            circuit_failures: 5,
            circuit_cooldown: Duration::from_secs(30),
            max_handles: 256,
            max_log_records: 512,
            max_metadata_entries: 64,
            max_calls: 16,
            max_call_depth: 8,
        }
    }
}

/// What one plugin instance may take of the instance pool. Every store is
/// held to these (the sandbox's limiter), so an instance of one plugin can
/// never use up the share of others: a component that declares more fails
/// with `budget_exceeded` (`component_parts`). A Rust component is one core
/// module plus a few adapter shims, with one or two memories; a Python one
/// (componentize-py) links CPython and its libraries as 14 core modules
/// sharing one memory. A core instance costs the pool no memory of its own
/// (only memories and tables are reserved), so the count is generous.
pub const CORE_INSTANCES_PER_INSTANCE: u32 = 32;
/// See [`CORE_INSTANCES_PER_INSTANCE`].
pub const MEMORIES_PER_INSTANCE: u32 = 2;
/// See [`CORE_INSTANCES_PER_INSTANCE`].
pub const TABLES_PER_INSTANCE: u32 = 4;
/// Elements one table may grow to.
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Bus settings: the budgets of every queue and of the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusOptions {
    /// Events one subscriber's queue holds (waiting, being delivered, or
    /// parked for a retry).
    pub queue: usize,
    /// Bytes one subscriber's queue holds (topics, payloads and a fixed
    /// overhead per event).
    pub queue_bytes: usize,
    /// How long the embedder's `Host::publish` waits for room in a
    /// full queue before the event becomes a dead letter for that
    /// subscriber. Publishing a plugin causes never waits.
    pub queue_timeout: Duration,
    /// Deliveries of one event to one plugin (retries included) before it
    /// becomes a dead letter.
    pub max_attempts: u32,
    /// The longest delay a plugin's `retry-after` gets; longer requests are
    /// shortened to this.
    pub max_retry_delay: Duration,
    /// How many plugins in a row may publish or forward in reaction to an
    /// event before the next event in the chain becomes a dead letter. Ends
    /// loops such as a plugin forwarding to a topic it subscribes to.
    pub max_hops: u32,
    /// Dead letters kept (oldest dropped first).
    pub dead_letters: usize,
    /// Bytes of dead letters kept (oldest dropped first); a payload larger
    /// than an eighth of this is kept truncated.
    pub dead_letter_bytes: usize,
    /// With the NATS backend: how long an event handed to a host may stay
    /// unsettled before NATS gives it to another host. A running handler
    /// extends it (so a long handler is not delivered twice); a host that
    /// dies mid-delivery delays its events by this much.
    pub ack_wait: Duration,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            queue: 1024,
            queue_bytes: 16 << 20,
            queue_timeout: Duration::from_secs(5),
            max_attempts: 5,
            max_retry_delay: Duration::from_secs(60),
            max_hops: 8,
            dead_letters: 1000,
            dead_letter_bytes: 8 << 20,
            ack_wait: Duration::from_secs(30),
        }
    }
}
