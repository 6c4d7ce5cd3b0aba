//! The one function that turns a wasmtime error into a typed
//! [`CallFailure`]: by downcasting to the types this crate, wasmtime and
//! wasmtime-wasi(-http) raise, and for wasmtime's budgets of private types by
//! their message, in one place.

use wasmtime::{PoolConcurrencyLimitError, Trap};

use super::limiter::{
    DeadlineExceeded, MAX_INSTANCES_PER_STORE, MemoryLimitExceeded, TableLimitExceeded,
};
use crate::error::{Budget, CallFailure, OutputLimitExceeded, OutputStream};
use crate::limits::{Limits, MAX_RANDOM_BYTES, http_fields_limit};
use crate::text::chain;

/// What [`classify`] needs to know about the call that failed.
pub(crate) struct FailureContext<'a> {
    pub(crate) limits: &'a Limits,
    /// Whether the plugin may send HTTP requests (its header fields are
    /// capped accordingly).
    pub(crate) http_granted: bool,
    /// What the invoked export returns, for a result too large to hand
    /// over: the response (or event outcome), or the description.
    pub(crate) result: (OutputStream, usize),
    /// The last lines the plugin wrote to stderr, where a Rust panic message,
    /// a Python traceback or a JavaScript exception ends up.
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
                detail: context.stderr_tail.and_then(failure_message),
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

/// What a plugin that trapped said about why, from what it wrote to stderr,
/// whatever language it is written in: the exception line of a Python
/// traceback (componentize-py prints the traceback, then its runtime
/// panics), the error a JavaScript export threw (componentize-js names it
/// while failing to convert it into the export's error type), or a Rust
/// panic's message.
///
/// stderr is the plugin's to write, so the report written last wins: a Rust
/// plugin that prints a traceback-like line before it panics still gets its
/// panic message. componentize-py's own panic after a traceback (its
/// message is [`PYTHON_RUNTIME_PANIC`]) defers to the traceback.
pub(crate) fn failure_message(stderr: &str) -> Option<String> {
    let python = stderr.rfind(PYTHON_TRACEBACK).zip(python_exception(stderr));
    let javascript = stderr
        .rfind(JAVASCRIPT_RECEIVED)
        .zip(javascript_exception(stderr));
    let rust = stderr
        .rfind(RUST_PANIC)
        .zip(panic_message(stderr))
        .filter(|(_, message)| !(python.is_some() && message == PYTHON_RUNTIME_PANIC));
    [python, javascript, rust]
        .into_iter()
        .flatten()
        .max_by_key(|(at, _)| *at)
        .map(|(_, message)| message)
}

/// How a Python traceback starts.
const PYTHON_TRACEBACK: &str = "Traceback (most recent call last):";
/// What componentize-py's runtime panics with after printing a traceback.
const PYTHON_RUNTIME_PANIC: &str = "Python function threw an unexpected exception";
/// Where componentize-js names the error an export threw.
const JAVASCRIPT_RECEIVED: &str = "(received `";
/// How a Rust panic message starts.
const RUST_PANIC: &str = "panicked at ";

/// The last line of the last Python traceback: `RuntimeError: message`.
fn python_exception(stderr: &str) -> Option<String> {
    let start = stderr.rfind(PYTHON_TRACEBACK)? + PYTHON_TRACEBACK.len();
    // Frames are indented; the exception is the first line that is not.
    stderr[start..]
        .lines()
        .find(|line| !line.is_empty() && !line.starts_with(char::is_whitespace))
        .map(|line| line.trim().to_owned())
}

/// The error a componentize-js export threw that was not its result's
/// error case: `… (received `TypeError: message`) specified for …`.
fn javascript_exception(stderr: &str) -> Option<String> {
    let start = stderr.rfind(JAVASCRIPT_RECEIVED)? + JAVASCRIPT_RECEIVED.len();
    let end = stderr[start..].find("`)")?;
    let message = stderr[start..start + end].trim();
    (!message.is_empty()).then(|| message.to_owned())
}

/// Extracts the message of a Rust panic from what the guest wrote to stderr:
/// the text after `panicked at <location>:` up to the backtrace note.
fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.rfind(RUST_PANIC)?;
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
        assert_eq!(failure_message("just some output\n"), None);
    }

    #[test]
    fn a_python_traceback_gives_its_exception_line_not_the_runtime_panic() {
        let stderr = "Traceback (most recent call last):\n  File \"/0/app.py\", line 7, in handle\n    raise RuntimeError(\"boom\")\nRuntimeError: boom\n\nthread '<unnamed>' panicked at src/lib.rs:1:1:\nPython function threw an unexpected exception\n";
        assert_eq!(
            failure_message(stderr).as_deref(),
            Some("RuntimeError: boom")
        );
    }

    #[test]
    fn the_report_written_last_wins() {
        let stderr = "Traceback (most recent call last):\nValueError: printed by the plugin\n\nthread '<unnamed>' panicked at src/lib.rs:3:5:\nthe real panic\n";
        assert_eq!(failure_message(stderr).as_deref(), Some("the real panic"));
    }

    #[test]
    fn a_javascript_error_gives_its_text() {
        let stderr = "invalid variant tag value `undefined` (received `TypeError: boom`) specified for `PluginError`\nStack:\n  handle@app.js:3:17\n";
        assert_eq!(failure_message(stderr).as_deref(), Some("TypeError: boom"));
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
}
