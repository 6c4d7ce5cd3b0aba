//! Per-plugin resource limits, the memory limiter that enforces them inside a
//! store, and the one function that turns a wasmtime error into a typed
//! [`CallFailure`].

use std::time::Duration;

use serde::Serialize;
use wasmtime::{PoolConcurrencyLimitError, ResourceLimiter, Trap};

use crate::error::{Budget, CallFailure, OutputStream, chain};

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
    /// Calls an instance serves before it is replaced by a fresh one; 1 gives
    /// every call a fresh instance (the strongest isolation). An instance
    /// that traps is always discarded at once.
    pub recycle_after: u32,
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
    /// line also costs [`LOG_RECORD_OVERHEAD`] bytes of the log budget, so
    /// empty lines are not free.
    pub max_log_records: usize,
    /// Response metadata entries per call. Each entry also costs
    /// [`METADATA_ENTRY_OVERHEAD`] bytes of the response budget.
    pub max_metadata_entries: usize,
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
    /// plugin may produce, plus [`HOST_CALL_ALLOWANCE`]. A plugin cannot
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
            recycle_after: 1000,
            circuit_failures: 5,
            circuit_cooldown: Duration::from_secs(30),
            max_handles: 256,
            max_log_records: 512,
            max_metadata_entries: 64,
        }
    }
}

/// Core instances, tables and memories a single store may create: one
/// instance's share of the pool. Components from ordinary toolchains need a
/// handful; the bound stops a crafted component from exhausting the host
/// through sheer numbers, or taking other plugins' share of the pool.
const MAX_INSTANCES_PER_STORE: usize = crate::engine::CORE_INSTANCES_PER_INSTANCE as usize;
const MAX_TABLES_PER_STORE: usize = crate::engine::TABLES_PER_INSTANCE as usize;
const MAX_MEMORIES_PER_STORE: usize = crate::engine::MEMORIES_PER_INSTANCE as usize;
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The typed error the limiter raises when a plugin asks for more memory than
/// it was given. Raising an error (rather than refusing the growth) makes the
/// guest trap at once with a cause we can classify; a refused `memory.grow`
/// would make a Rust guest abort with a bare `unreachable`.
#[derive(Debug, thiserror::Error)]
#[error("linear memory limit of {limit} bytes exceeded (requested {requested} bytes in total)")]
pub(crate) struct MemoryLimitExceeded {
    limit: u64,
    requested: u64,
}

/// The typed error for a table that grows past [`MAX_TABLE_ELEMENTS`].
#[derive(Debug, thiserror::Error)]
#[error("table limit of {MAX_TABLE_ELEMENTS} elements exceeded (requested {requested})")]
pub(crate) struct TableLimitExceeded {
    requested: usize,
}

/// The typed error raised when a call's deadline passes while guest code runs.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
pub(crate) struct DeadlineExceeded;

/// The typed error raised when a plugin writes more output than allowed.
#[derive(Debug, thiserror::Error)]
#[error("{stream} exceeded its limit of {limit} {}", stream.unit())]
pub(crate) struct OutputLimitExceeded {
    pub(crate) stream: OutputStream,
    pub(crate) limit: usize,
}

/// Enforces [`Limits::memory_bytes`] for one store, across every memory the
/// component creates.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: u64,
    /// Bytes of linear memory currently granted to the store.
    total: u64,
    /// The growth approved last, undone if the allocation then fails.
    last_growth: u64,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: u64) -> Self {
        MemoryLimiter {
            limit,
            total: 0,
            last_growth: 0,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current) as u64;
        let requested = self.total.saturating_add(growth);
        if requested > self.limit {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit: self.limit,
                requested,
            }));
        }
        self.total = requested;
        self.last_growth = growth;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.total = self.total.saturating_sub(self.last_growth);
        self.last_growth = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Err(wasmtime::Error::new(TableLimitExceeded {
                requested: desired,
            }));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES_PER_STORE
    }

    fn tables(&self) -> usize {
        MAX_TABLES_PER_STORE
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES_PER_STORE
    }
}

/// What [`classify`] needs to know about the call that failed.
pub(crate) struct FailureContext<'a> {
    pub(crate) limits: &'a Limits,
    /// Whether the plugin may send HTTP requests (its header fields are
    /// capped accordingly).
    pub(crate) http_granted: bool,
    /// What the invoked export returns, for a result too large to hand
    /// over: the response (or event outcome), or the description.
    pub(crate) result: (OutputStream, usize),
    /// The last lines the plugin wrote to stderr, where a Rust panic message
    /// ends up.
    pub(crate) stderr_tail: Option<&'a str>,
    pub(crate) max_instances: usize,
}

/// Turns any error from instantiating or calling a plugin into a typed
/// [`CallFailure`], by downcasting to the types wasmtime and this crate raise
/// (never by reading counters or matching message text).
pub(crate) fn classify(err: &wasmtime::Error, context: &FailureContext<'_>) -> CallFailure {
    if let Some(exceeded) = err.downcast_ref::<MemoryLimitExceeded>() {
        return CallFailure::MemoryLimit {
            limit: exceeded.limit,
            requested: exceeded.requested,
        };
    }
    if err.downcast_ref::<DeadlineExceeded>().is_some() {
        return CallFailure::Timeout {
            limit: context.limits.timeout,
        };
    }
    if let Some(exceeded) = err.downcast_ref::<OutputLimitExceeded>() {
        return CallFailure::OutputTooLarge {
            stream: exceeded.stream,
            limit: exceeded.limit,
        };
    }
    if err.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        return CallFailure::Busy {
            max_instances: context.max_instances,
            queued: 0,
        };
    }
    if let Some(table_error) = err.downcast_ref::<wasmtime::component::ResourceTableError>() {
        return match table_error {
            wasmtime::component::ResourceTableError::Full => CallFailure::BudgetExceeded {
                budget: Budget::Handles,
                limit: context.limits.max_handles as u64,
            },
            // A handle the plugin does not hold, or of the wrong type: the
            // plugin misused its own handles.
            other => CallFailure::Trap {
                trap: "bad_handle".into(),
                detail: Some(other.to_string()),
            },
        };
    }
    if let Some(field_error) = err.downcast_ref::<wasmtime_wasi_http::FieldMapError>() {
        use wasmtime_wasi_http::FieldMapError;
        return match field_error {
            FieldMapError::TotalSizeTooBig | FieldMapError::TooManyFields => {
                CallFailure::BudgetExceeded {
                    budget: Budget::HttpFieldsBytes,
                    limit: http_fields_limit(context.http_granted) as u64,
                }
            }
            other => CallFailure::Trap {
                trap: "bad_http_fields".into(),
                detail: Some(other.to_string()),
            },
        };
    }
    if let Some(budget) = wasmtime_budget(err) {
        // Without a wasm backtrace the data was not handed over by a host
        // call the guest made but is the export's result, lifted after the
        // guest returned: that result was larger than it may be.
        if budget == Budget::HostCallBytes
            && err.downcast_ref::<wasmtime::WasmBacktrace>().is_none()
        {
            let (stream, limit) = context.result;
            return CallFailure::OutputTooLarge { stream, limit };
        }
        let limit = match budget {
            Budget::Handles => context.limits.max_handles as u64,
            Budget::HostCallBytes => context.limits.host_call_bytes() as u64,
            Budget::RandomBytes => MAX_RANDOM_BYTES,
            Budget::ComponentParts => MAX_INSTANCES_PER_STORE as u64,
            Budget::HttpFieldsBytes => http_fields_limit(context.http_granted) as u64,
        };
        return CallFailure::BudgetExceeded { budget, limit };
    }
    if let Some(exceeded) = err.downcast_ref::<TableLimitExceeded>() {
        return CallFailure::Trap {
            trap: "table_limit".into(),
            detail: Some(exceeded.to_string()),
        };
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        return match trap {
            Trap::OutOfFuel => CallFailure::OutOfFuel {
                limit: context.limits.fuel.unwrap_or(u64::MAX),
            },
            Trap::StackOverflow => CallFailure::StackOverflow,
            Trap::Interrupt => CallFailure::Timeout {
                limit: context.limits.timeout,
            },
            other => CallFailure::Trap {
                trap: trap_name(other),
                detail: context.stderr_tail.and_then(panic_message),
            },
        };
    }
    // Raised by a host function while the plugin's code was on the stack:
    // the plugin misused a host interface (an empty poll list, a write past
    // what `check-write` allowed, a handle it does not hold). Real host
    // faults reach the plugin as error values, or happen outside its code.
    if err.downcast_ref::<wasmtime::WasmBacktrace>().is_some() {
        return CallFailure::Trap {
            trap: "host_call_error".into(),
            detail: Some(crate::text::for_log(&root_message(err), 512).into_owned()),
        };
    }
    CallFailure::Host(chain(err))
}

/// The innermost message of an error chain: what actually went wrong,
/// without wasmtime's backtrace context.
fn root_message(err: &wasmtime::Error) -> String {
    err.chain()
        .last()
        .map(ToString::to_string)
        .unwrap_or_default()
}

/// Budgets that wasmtime and wasmtime-wasi enforce with errors of private
/// types: the only way to tell them apart is their message. Each message is
/// pinned by a hostile plugin's test (`example-plugins/hostile/`), so an
/// upgrade that rewords one fails the tests instead of turning a plugin's
/// limit into a host fault.
fn wasmtime_budget(err: &wasmtime::Error) -> Option<Budget> {
    const PATTERNS: &[(&str, Budget)] = &[
        // wasmtime: `Store::set_hostcall_fuel` ran out while lifting.
        (
            "fuel allocated for hostcalls has been exhausted",
            Budget::HostCallBytes,
        ),
        // wasmtime: `Store::set_max_component_handles`.
        ("store handle limit exceeded", Budget::Handles),
        // wasmtime-wasi: `WasiCtxBuilder::max_random_size`.
        ("exceeds limit", Budget::RandomBytes),
        // wasmtime: the limiter's `instances`/`tables`/`memories`.
        ("resource limit exceeded:", Budget::ComponentParts),
    ];
    err.chain().find_map(|cause| {
        let text = cause.to_string();
        PATTERNS.iter().find_map(|(needle, budget)| {
            let matches = match budget {
                Budget::RandomBytes => text.starts_with("requested len") && text.contains(needle),
                _ => text.contains(needle),
            };
            matches.then_some(*budget)
        })
    })
}

/// A short snake_case name for a trap code: `unreachable` for a Rust panic
/// or abort, otherwise wasmtime's code name (`memory_out_of_bounds`, ...).
fn trap_name(trap: &Trap) -> String {
    if matches!(trap, Trap::UnreachableCodeReached) {
        return "unreachable".into();
    }
    let debug = format!("{trap:?}");
    let mut name = String::with_capacity(debug.len() + 4);
    for (i, ch) in debug.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                name.push('_');
            }
            name.push(ch.to_ascii_lowercase());
        } else {
            name.push(ch);
        }
    }
    name
}

/// Extracts the message of a Rust panic from what the guest wrote to stderr:
/// the text after `panicked at <location>:` up to the backtrace note.
pub(crate) fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.rfind("panicked at ")?;
    let after = &stderr[start..];
    // The location ends at the first colon followed by a newline (Rust
    // 1.73+: "panicked at src/lib.rs:10:5:\nmessage").
    let message = match after.find(":\n") {
        Some(end) => &after[end + 2..],
        None => after,
    };
    let message = match message.find("\nnote: ") {
        Some(end) => &message[..end],
        None => message,
    };
    let message = message.trim();
    (!message.is_empty()).then(|| message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_message_is_the_text_after_the_location() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:12:9:\nthe plugin gave up: 42\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("the plugin gave up: 42")
        );
    }

    #[test]
    fn panic_message_absent_without_a_panic() {
        assert_eq!(panic_message("just some output\n"), None);
    }

    #[test]
    fn trap_names_are_snake_case() {
        assert_eq!(trap_name(&Trap::UnreachableCodeReached), "unreachable");
        assert_eq!(
            trap_name(&Trap::IntegerDivisionByZero),
            "integer_division_by_zero"
        );
        assert_eq!(trap_name(&Trap::MemoryOutOfBounds), "memory_out_of_bounds");
    }

    #[test]
    fn limiter_counts_growth_across_memories_and_refuses_with_a_typed_error() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        // A second memory of 50 bytes would bring the total to 110.
        let err = limiter.memory_growing(0, 50, None).unwrap_err();
        let exceeded = err.downcast_ref::<MemoryLimitExceeded>().unwrap();
        assert_eq!((exceeded.limit, exceeded.requested), (100, 110));
        // A failed allocation gives its growth back.
        assert!(limiter.memory_growing(60, 90, None).unwrap());
        limiter
            .memory_grow_failed(wasmtime::Error::msg("no"))
            .unwrap();
        assert!(limiter.memory_growing(60, 100, None).unwrap());
    }
}
