//! The `log` service: levelled plugin logs, bounded per call, tagged with the
//! plugin's name and forwarded into `tracing` (target `capsule::plugin`).
//!
//! The same `LogSink` receives the plugin's captured stdout and stderr (see
//! `services::wasi`), so one budget bounds everything a plugin can make the
//! host buffer as log output during a call.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use wasmtime::component::{HasData, Linker};

use super::{
    Availability, Holds, Import, PolicyContext, PrepareContext, Service, StoreContext, Views,
};
use crate::bounds::Invalid;
use crate::contract::{LogLevel, ServiceError, interfaces, interfaces_v0_2};
use crate::error::{OutputLimitExceeded, OutputStream};
use crate::limits::LOG_RECORD_OVERHEAD;
use crate::outcome::{LogRecord, LogSource};

/// Bytes of stderr kept to recover a panic message after a trap.
const STDERR_TAIL_BYTES: usize = 4096;

/// Collects one store's log output under a byte and a line budget that are
/// reset for every call.
pub(crate) struct LogSink {
    plugin: Arc<str>,
    buffer: Mutex<LogBuffer>,
}

#[derive(Default)]
struct LogBuffer {
    limit: usize,
    used: usize,
    max_records: usize,
    records: Vec<LogRecord>,
    refused: usize,
    stdout_partial: Vec<u8>,
    stderr_partial: Vec<u8>,
    stderr_tail: String,
}

impl LogSink {
    pub(crate) fn new(plugin: Arc<str>, limit: usize, max_records: usize) -> Self {
        LogSink {
            plugin,
            buffer: Mutex::new(LogBuffer {
                limit,
                max_records,
                ..LogBuffer::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogBuffer> {
        // A panic while holding this lock cannot leave the buffer in a state
        // worse than "some lines missing", so a poisoned lock is still usable.
        self.buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a new call with a fresh budget of `limit` bytes and
    /// `max_records` lines.
    pub(crate) fn begin_call(&self, limit: usize, max_records: usize) {
        *self.lock() = LogBuffer {
            limit,
            max_records,
            ..LogBuffer::default()
        };
    }

    /// Ends a call: flushes unterminated stdout/stderr lines and hands back
    /// what was logged.
    pub(crate) fn end_call(&self) -> CallLog {
        let mut buffer = self.lock();
        for source in [LogSource::Stdout, LogSource::Stderr] {
            let partial = std::mem::take(buffer.partial(source));
            // The bytes were charged when written; a last line past the line
            // budget is dropped like a refused `log` call.
            if !partial.is_empty() && buffer.charge_record(0).is_ok() {
                let line = String::from_utf8_lossy(&partial).into_owned();
                buffer.push(&self.plugin, stream_level(source), source, line);
            } else if !partial.is_empty() {
                buffer.refused += 1;
            }
        }
        CallLog {
            records: std::mem::take(&mut buffer.records),
            refused: std::mem::take(&mut buffer.refused),
        }
    }

    /// The last few kilobytes the plugin wrote to stderr during this call.
    pub(crate) fn stderr_tail(&self) -> String {
        let buffer = self.lock();
        let mut tail = buffer.stderr_tail.clone();
        tail.push_str(&String::from_utf8_lossy(&buffer.stderr_partial));
        tail
    }

    /// Logs one line from the `log` import; refuses it once the budget is
    /// spent.
    fn log(&self, level: LogLevel, message: String) -> Result<(), ServiceError> {
        let mut buffer = self.lock();
        if let Err(exceeded) = buffer.charge_record(message.len()) {
            buffer.refused += 1;
            return Err(ServiceError::QuotaExceeded(format!(
                "the log budget of this call is spent: {exceeded}"
            )));
        }
        buffer.push(&self.plugin, level, LogSource::Log, message);
        Ok(())
    }

    /// Takes bytes the plugin wrote to stdout or stderr. Exceeding the budget
    /// is an error that traps the plugin: unlike a `log` call, a write to a
    /// standard stream has no way to report a refusal the plugin would read.
    pub(crate) fn write_stream(
        &self,
        source: LogSource,
        bytes: &[u8],
    ) -> Result<(), OutputLimitExceeded> {
        let mut buffer = self.lock();
        if buffer.used.saturating_add(bytes.len()) > buffer.limit {
            return Err(OutputLimitExceeded {
                stream: OutputStream::Log,
                limit: buffer.limit,
            });
        }
        buffer.used += bytes.len();
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            let partial = buffer.partial(source);
            partial.extend_from_slice(&rest[..newline]);
            let line = String::from_utf8_lossy(&std::mem::take(partial)).into_owned();
            rest = &rest[newline + 1..];
            if source == LogSource::Stderr {
                buffer.remember_stderr(&line);
            }
            // Blank lines (a panic message starts with one) carry nothing.
            if !line.trim().is_empty() {
                buffer.charge_record(0)?;
                buffer.push(&self.plugin, stream_level(source), source, line);
            }
        }
        buffer.partial(source).extend_from_slice(rest);
        Ok(())
    }
}

/// What a plugin logged during one call.
#[derive(Debug, Default)]
pub(crate) struct CallLog {
    pub(crate) records: Vec<LogRecord>,
    /// `log` calls refused because the budget was spent.
    pub(crate) refused: usize,
}

impl LogBuffer {
    /// Charges one line of `text_bytes` against both budgets: its text plus
    /// [`LOG_RECORD_OVERHEAD`] bytes, and one of the call's lines.
    fn charge_record(&mut self, text_bytes: usize) -> Result<(), OutputLimitExceeded> {
        if self.records.len() >= self.max_records {
            return Err(OutputLimitExceeded {
                stream: OutputStream::LogRecords,
                limit: self.max_records,
            });
        }
        let cost = text_bytes.saturating_add(LOG_RECORD_OVERHEAD);
        if self.used.saturating_add(cost) > self.limit {
            return Err(OutputLimitExceeded {
                stream: OutputStream::Log,
                limit: self.limit,
            });
        }
        self.used += cost;
        Ok(())
    }

    fn partial(&mut self, source: LogSource) -> &mut Vec<u8> {
        match source {
            LogSource::Stderr => &mut self.stderr_partial,
            _ => &mut self.stdout_partial,
        }
    }

    fn remember_stderr(&mut self, line: &str) {
        self.stderr_tail.push_str(line);
        self.stderr_tail.push('\n');
        if self.stderr_tail.len() > STDERR_TAIL_BYTES {
            let mut cut = self.stderr_tail.len() - STDERR_TAIL_BYTES;
            while !self.stderr_tail.is_char_boundary(cut) {
                cut += 1;
            }
            self.stderr_tail.drain(..cut);
        }
    }

    fn push(&mut self, plugin: &str, level: LogLevel, source: LogSource, message: String) {
        emit(plugin, level, source, &message);
        self.records.push(LogRecord {
            level,
            source,
            message,
        });
    }
}

fn stream_level(source: LogSource) -> LogLevel {
    match source {
        LogSource::Stderr => LogLevel::Warn,
        _ => LogLevel::Info,
    }
}

fn emit(plugin: &str, level: LogLevel, source: LogSource, message: &str) {
    // The host's own log gets one escaped, truncated line per record; the
    // caller still receives the record as the plugin wrote it.
    let message = crate::text::log_field(message);
    let source = match source {
        LogSource::Log => "log",
        LogSource::Stdout => "stdout",
        LogSource::Stderr => "stderr",
    };
    macro_rules! at {
        ($level:expr) => {
            tracing::event!(target: "capsule::plugin", $level, plugin, source, "{message}")
        };
    }
    match level {
        LogLevel::Trace => at!(tracing::Level::TRACE),
        LogLevel::Debug => at!(tracing::Level::DEBUG),
        LogLevel::Info => at!(tracing::Level::INFO),
        LogLevel::Warn => at!(tracing::Level::WARN),
        LogLevel::Error => at!(tracing::Level::ERROR),
    }
}

/// Whether a plugin may log. Granted by default: logging reveals nothing to
/// the plugin and is bounded per call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogGrant {
    /// Whether the `log` import works at all.
    pub enabled: bool,
}

impl Default for LogGrant {
    fn default() -> Self {
        LogGrant { enabled: true }
    }
}

/// Per-store state of the `log` service.
pub(crate) struct LogState {
    pub(crate) sink: Arc<LogSink>,
    pub(crate) enabled: bool,
    pub(crate) denials: Arc<super::Denials>,
}

impl interfaces_v0_2::log::Host for LogState {
    fn log(
        &mut self,
        level: interfaces_v0_2::log::Level,
        message: String,
    ) -> Result<(), ServiceError> {
        use interfaces_v0_2::log::Level;
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        interfaces::log::Host::log(self, level, message)
    }
}

/// `wasi:logging@0.1.0-draft` (`logging`): a line in the same log, under the
/// same grant and per-call budget as `capsule:plugin/log`. The standard
/// function returns nothing, so a line refused (not granted, or past the
/// budget) is dropped and counted as the contract's would be; `critical`
/// is logged as `error`, and a non-empty `context` prefixes the message.
impl crate::contract::standard_interfaces::logging::logging::Host for LogState {
    fn log(
        &mut self,
        level: crate::contract::standard_interfaces::logging::logging::Level,
        context: String,
        message: String,
    ) {
        use crate::contract::standard_interfaces::logging::logging::Level;
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error | Level::Critical => LogLevel::Error,
        };
        let message = if context.is_empty() {
            message
        } else {
            format!("{context}: {message}")
        };
        let _ = interfaces::log::Host::log(self, level, message);
    }
}

impl interfaces::log::Host for LogState {
    fn log(&mut self, level: LogLevel, message: String) -> Result<(), ServiceError> {
        if !self.enabled {
            let message = "logging was not granted to this plugin";
            self.denials.record("log", message);
            return Err(ServiceError::Denied(message.into()));
        }
        self.sink.log(level, message)
    }
}

/// The `log` service.
pub(crate) struct Log;

struct LogData;

impl HasData for LogData {
    type Data<'a> = &'a mut LogState;
}

impl Service for Log {
    const NAME: &'static str = "log";
    const IMPORTS: &'static [Import] = &[
        Import::contract("log"),
        Import::interface("wasi:logging", "logging"),
    ];
    const BUDGETS: &'static str = "per call: `max_log` bytes (32 more per line) and \
        `max_log_records` lines, stdout and stderr included; past them `log` answers \
        `quota-exceeded` and stdout/stderr trap as `output_too_large`";

    type Grant = LogGrant;
    type Policy = bool;
    type Summary = bool;
    type Prepared = bool;
    type State = LogState;

    fn from_policy(enabled: bool, _context: &PolicyContext<'_>) -> Result<LogGrant, Invalid> {
        Ok(LogGrant { enabled })
    }

    fn validate(_grant: &LogGrant) -> Result<(), Invalid> {
        Ok(())
    }

    fn availability(grant: &LogGrant) -> Availability {
        Availability::granted_if(grant.enabled)
    }

    fn summary(grant: &LogGrant) -> bool {
        grant.enabled
    }

    fn prepare(grant: &LogGrant, _context: &PrepareContext<'_>) -> Result<bool, String> {
        Ok(grant.enabled)
    }

    fn new_state(enabled: &bool, store: &mut StoreContext<'_>) -> Result<LogState, String> {
        Ok(LogState {
            sink: Arc::clone(store.sink),
            enabled: *enabled,
            denials: Arc::clone(store.denials),
        })
    }

    fn add_to_linker<T: Holds<Self> + Views>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        interfaces::log::add_to_linker::<T, LogData>(linker, |store| store.state())?;
        interfaces_v0_2::log::add_to_linker::<T, LogData>(linker, |store| store.state())?;
        crate::contract::standard_interfaces::logging::logging::add_to_linker::<T, LogData>(
            linker,
            |store| store.state(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::contract::interfaces::log::Host as _;
    use crate::limits::Limits;
    use crate::services::harness::Harness;

    #[test]
    fn a_plugin_without_the_log_grant_is_denied() {
        let mut log = Harness::<Log>::from_policy("false", Path::new(".")).unwrap();
        let err = log.state.log(LogLevel::Info, "hello".into()).unwrap_err();
        assert!(
            matches!(&err, ServiceError::Denied(m) if m == "logging was not granted to this plugin"),
            "{err:?}"
        );
        assert!(log.end_call().records.is_empty());
    }

    #[test]
    fn the_log_budget_refuses_lines_past_it_and_is_fresh_every_call() {
        let limits = Limits {
            max_log_bytes: 100,
            max_log_records: 3,
            ..Limits::default()
        };
        let mut log = Harness::<Log>::granted(&LogGrant::default(), limits);
        // 60 bytes of text and 32 of overhead fit in 100; one more line does not.
        log.state.log(LogLevel::Info, "x".repeat(60)).unwrap();
        let err = log.state.log(LogLevel::Info, "y".into()).unwrap_err();
        assert!(matches!(err, ServiceError::QuotaExceeded(_)), "{err:?}");
        let call = log.end_call();
        assert_eq!((call.records.len(), call.refused), (1, 1));

        log.begin_call();
        for line in ["a", "b", "c"] {
            log.state.log(LogLevel::Warn, line.into()).unwrap();
        }
        let err = log.state.log(LogLevel::Warn, "d".into()).unwrap_err();
        assert!(matches!(err, ServiceError::QuotaExceeded(_)), "{err:?}");
        let call = log.end_call();
        let lines: Vec<_> = call.records.iter().map(|r| r.message.as_str()).collect();
        assert_eq!((lines, call.refused), (vec!["a", "b", "c"], 1));
    }
}
