//! What a call produced, as plain data: the response, the log lines, the
//! published events and what the call cost. Errors, the runtime and the
//! services all speak in these types, so they sit below all of them.

use std::time::Duration;

use serde::Serialize;

use crate::contract::{LogLevel, Response};

/// A successful call: the plugin's response, what it logged and published,
/// and what the call cost.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    /// The plugin's response.
    pub response: Response,
    /// Lines the plugin logged during the call (log calls, stdout, stderr).
    pub logs: Vec<LogRecord>,
    /// Events the plugin published (to topics it was granted) during the call.
    pub events: Vec<PublishedEvent>,
    /// What the call consumed.
    pub stats: CallStats,
}

/// What one call consumed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallStats {
    /// Wall-clock time from admission to result, excluding time queued.
    pub duration: Duration,
    /// Fuel the call burned (a fresh instance's `init` has a budget of its
    /// own). `None` when the plugin trapped or was cut off (other than by
    /// running out of fuel, which reports the whole budget): wasmtime cannot
    /// tell how much fuel an interrupted function had burned.
    pub fuel_used: Option<u64>,
    /// Fuel the plugins this call called burned, in their own budgets (and
    /// the plugins they called, transitively): reported apart from the
    /// call's own `fuel_used`.
    pub callee_fuel: u64,
    /// The fuel the call was allowed (its plugin's `fuel` limit); `None`
    /// when fuel is not metered. With `fuel_used`, how close it came.
    pub fuel_limit: Option<u64>,
    /// Bytes of linear memory the instance held when the call ended: the
    /// most it ever held, since WebAssembly memory only grows (a warm
    /// instance's includes what earlier calls grew it to). `None` when the
    /// instance is gone (a timeout) or the call ran on another host.
    pub memory_bytes: Option<u64>,
    /// The plugin's linear memory limit.
    pub memory_limit: u64,
    /// `log` calls refused because the per-call log budget was spent.
    pub logs_refused: usize,
    /// Whether the call ran on a fresh instance (instantiated and `init`ed
    /// for it) rather than a warm one from the pool.
    pub fresh_instance: bool,
    /// Whether the answer came from the plugin's response cache (a pure
    /// operation asked again): the plugin did not run, so no fuel, memory
    /// or host calls are reported.
    pub cached: bool,
    /// Its calls into host services, per service, in the order first made
    /// (after a trap, those made before it; empty when the instance is
    /// gone, after a timeout).
    pub host_calls: Vec<crate::ServiceCalls>,
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// A call to the `log` import.
    Log,
    /// A line the plugin wrote to stdout.
    Stdout,
    /// A line the plugin wrote to stderr (panic messages land here).
    Stderr,
}

/// One line a plugin logged during a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogRecord {
    /// The line's level; stdout counts as `info`, stderr as `warn`.
    #[serde(serialize_with = "serialize_level")]
    pub level: LogLevel,
    /// Where the line came from.
    pub source: LogSource,
    /// The text, without a trailing newline.
    pub message: String,
}

fn serialize_level<S: serde::Serializer>(level: &LogLevel, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(level.as_str())
}

/// An event a plugin published during a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishedEvent {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The span of the call that published it, when the host traces: the
    /// parent of its deliveries' spans.
    #[serde(skip)]
    pub(crate) trace: Option<crate::telemetry::TraceParent>,
}
