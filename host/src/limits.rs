//! Per-plugin resource limits, the memory limiter that enforces them inside a
//! store, and the one function that turns a wasmtime error into a typed
//! [`CallFailure`].

use std::time::Duration;

use serde::Serialize;
use wasmtime::{PoolConcurrencyLimitError, ResourceLimiter, Trap};

use crate::error::{CallFailure, OutputStream, chain};

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
        }
    }
}

/// Tables and instances a single store may create. Components from ordinary
/// toolchains need a handful; the bound stops a crafted component from
/// exhausting the host through sheer numbers.
const MAX_INSTANCES_PER_STORE: usize = 64;
const MAX_TABLES_PER_STORE: usize = 64;
const MAX_MEMORIES_PER_STORE: usize = 16;
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
#[error("{stream} exceeded its limit of {limit} bytes")]
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
    CallFailure::Host(chain(err))
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
