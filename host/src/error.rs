//! Typed failures. Every error names the plugin and the cause, and maps to a
//! stable [`ErrorKind`] string used in JSON output, metrics and exit codes.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::contract::PluginError;
use crate::outcome::{CallStats, LogRecord};

/// The stable, machine-readable name of a failure (`"out_of_fuel"`, ...).
///
/// These strings appear in `capsule run --json`, in the HTTP API and in
/// metrics labels; they never change meaning once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The plugin file could not be read.
    Io,
    /// The bytes are not a valid WebAssembly component.
    Malformed,
    /// The plugin carries no signature and unsigned plugins are not allowed.
    Unsigned,
    /// A signature is present but does not verify.
    BadSignature,
    /// The signature verifies, but with a key the host does not trust.
    UntrustedKey,
    /// The component targets a contract version this host cannot serve.
    IncompatibleContract,
    /// The component imports something no grant provides.
    MissingGrant,
    /// Compiling the component failed.
    Compile,
    /// The plugin's `init` failed or trapped while loading.
    InitFailed,
    /// The host's configuration (policy, limits, grants) is invalid.
    Config,
    /// The plugin's static manifest (its `capsule-manifest` section) is
    /// malformed or disagrees with what the plugin's `describe` says.
    InvalidManifest,
    /// Something the plugin's manifest requires is not loaded, or not in the
    /// required version range; or a reload would break a plugin that
    /// requires this one.
    MissingDependency,
    /// Plugins require each other in a cycle.
    DependencyCycle,
    /// The request does not match the input schema the plugin declared for
    /// the operation (checked before the plugin runs, when the policy sets
    /// `validate_input`).
    InvalidInput,
    /// The call's key-value commit lost to a concurrent call; nothing it
    /// wrote or published was kept.
    Conflict,
    /// What the call's key-value writes would leave breaks a namespace
    /// quota; nothing it wrote or published was kept.
    QuotaExceeded,
    /// A backend the call needed (the NATS key-value store) could not be
    /// reached; nothing the call wrote or published was kept.
    Unavailable,
    /// The call ran out of its fuel budget.
    OutOfFuel,
    /// The call ran past its wall-clock deadline.
    Timeout,
    /// The plugin tried to grow linear memory past its limit.
    MemoryLimit,
    /// The plugin overflowed the wasm stack.
    StackOverflow,
    /// The plugin made the host spend more than one of its host-side budgets
    /// allows (handles, bytes handed to the host in one call, random bytes,
    /// instances per store); the error names the budget.
    BudgetExceeded,
    /// The plugin trapped (a Rust panic, an out-of-bounds access, ...).
    Trap,
    /// The plugin produced more output (response, log, stdout/stderr) than allowed.
    OutputTooLarge,
    /// The request was larger than the plugin's input limit.
    InputTooLarge,
    /// The plugin returned its own error value.
    PluginError,
    /// Every instance was in use and the wait queue was full or timed out.
    Busy,
    /// No plugin with that name is loaded.
    UnknownPlugin,
    /// The plugin is paused and refuses calls until resumed.
    Paused,
    /// The plugin's circuit breaker is open after repeated failures.
    CircuitOpen,
    /// A host middleware refused the call.
    Rejected,
    /// The host itself failed (a bug or an exhausted host resource).
    Host,
}

impl ErrorKind {
    /// The kind as its stable snake_case string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::Malformed => "malformed",
            ErrorKind::Unsigned => "unsigned",
            ErrorKind::BadSignature => "bad_signature",
            ErrorKind::UntrustedKey => "untrusted_key",
            ErrorKind::IncompatibleContract => "incompatible_contract",
            ErrorKind::MissingGrant => "missing_grant",
            ErrorKind::Compile => "compile",
            ErrorKind::InitFailed => "init_failed",
            ErrorKind::Config => "config",
            ErrorKind::OutOfFuel => "out_of_fuel",
            ErrorKind::Timeout => "timeout",
            ErrorKind::MemoryLimit => "memory_limit",
            ErrorKind::StackOverflow => "stack_overflow",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::Trap => "trap",
            ErrorKind::OutputTooLarge => "output_too_large",
            ErrorKind::InputTooLarge => "input_too_large",
            ErrorKind::PluginError => "plugin_error",
            ErrorKind::Busy => "busy",
            ErrorKind::UnknownPlugin => "unknown_plugin",
            ErrorKind::Paused => "paused",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Rejected => "rejected",
            ErrorKind::InvalidManifest => "invalid_manifest",
            ErrorKind::MissingDependency => "missing_dependency",
            ErrorKind::DependencyCycle => "dependency_cycle",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Conflict => "conflict",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Host => "host",
        }
    }

    /// The kind named `name` ([`ErrorKind::as_str`]), if this host knows it.
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
    }

    /// Whether this kind means the sandbox stopped the plugin at one of its
    /// limits (as opposed to the plugin failing on its own).
    pub fn is_limit(self) -> bool {
        matches!(
            self,
            ErrorKind::OutOfFuel
                | ErrorKind::Timeout
                | ErrorKind::MemoryLimit
                | ErrorKind::StackOverflow
                | ErrorKind::BudgetExceeded
                | ErrorKind::OutputTooLarge
                | ErrorKind::InputTooLarge
                | ErrorKind::Busy
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why loading a plugin failed.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}` was not loaded: {cause}")]
pub struct LoadError {
    /// The name the plugin was being loaded under.
    pub plugin: String,
    /// What went wrong.
    pub cause: LoadFailure,
}

impl LoadError {
    pub(crate) fn new(plugin: impl Into<String>, cause: LoadFailure) -> Self {
        LoadError {
            plugin: plugin.into(),
            cause,
        }
    }

    /// The stable kind of this failure.
    pub fn kind(&self) -> ErrorKind {
        self.cause.kind()
    }
}

/// The cause of a [`LoadError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadFailure {
    /// Reading the plugin file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that could not be read.
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a WebAssembly component this host can use.
    #[error("malformed component: {0}")]
    Malformed(String),
    /// The plugin carries no signature and unsigned plugins are not allowed.
    #[error("{0}")]
    Unsigned(String),
    /// A signature is present but does not verify.
    #[error("{0}")]
    BadSignature(String),
    /// The signatures verify only with keys the host does not trust.
    #[error("{0}")]
    UntrustedKey(String),
    /// The component does not speak a contract version this host serves.
    #[error("incompatible contract: {0}")]
    IncompatibleContract(String),
    /// The component imports something that no grant provides.
    #[error("import `{import}` needs a grant the plugin does not have: {detail}")]
    MissingGrant {
        /// The import's name, e.g. `wasi:sockets/tcp@0.2.0`.
        import: String,
        /// More about the mismatch.
        detail: String,
    },
    /// Cranelift could not compile the component.
    #[error("compilation failed: {0}")]
    Compile(String),
    /// The plugin failed while being initialised or described.
    #[error("initialisation failed: {0}")]
    InitFailed(Box<CallFailure>),
    /// The plugin's grants or limits are invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The plugin's static manifest is malformed or disagrees with
    /// `describe`.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// A requirement of the plugin's manifest is not met (or, for a reload,
    /// the new version would break a plugin that requires this one).
    #[error("missing dependency: {0}")]
    MissingDependency(String),
    /// The plugin is part of a cycle of requirements.
    #[error("dependency cycle: {0}")]
    DependencyCycle(String),
    /// The shared backend (NATS) did not answer what loading needs from it
    /// (the plugin's event consumer).
    #[error("the shared backend is unavailable: {0}")]
    Unavailable(String),
}

impl LoadFailure {
    /// The stable kind of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LoadFailure::Io { .. } => ErrorKind::Io,
            LoadFailure::Malformed(_) => ErrorKind::Malformed,
            LoadFailure::Unsigned(_) => ErrorKind::Unsigned,
            LoadFailure::BadSignature(_) => ErrorKind::BadSignature,
            LoadFailure::UntrustedKey(_) => ErrorKind::UntrustedKey,
            LoadFailure::IncompatibleContract(_) => ErrorKind::IncompatibleContract,
            LoadFailure::MissingGrant { .. } => ErrorKind::MissingGrant,
            LoadFailure::Compile(_) => ErrorKind::Compile,
            LoadFailure::InitFailed(cause) => match cause.kind() {
                // A limit hit during init is still that limit: an operator who
                // set memory too low for the plugin should read `memory_limit`.
                kind if kind.is_limit() => kind,
                _ => ErrorKind::InitFailed,
            },
            LoadFailure::Config(_) => ErrorKind::Config,
            LoadFailure::InvalidManifest(_) => ErrorKind::InvalidManifest,
            LoadFailure::MissingDependency(_) => ErrorKind::MissingDependency,
            LoadFailure::DependencyCycle(_) => ErrorKind::DependencyCycle,
            LoadFailure::Unavailable(_) => ErrorKind::Unavailable,
        }
    }
}

/// Why a call failed, with what the plugin logged before it failed (a panic
/// message, for example) and what the call had consumed.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}`: {cause}")]
pub struct CallError {
    /// The plugin that was called.
    pub plugin: String,
    /// What went wrong.
    pub cause: CallFailure,
    /// Lines the plugin logged before the failure.
    pub logs: Vec<LogRecord>,
    /// What the call consumed before it failed.
    pub stats: CallStats,
}

impl CallError {
    pub(crate) fn new(plugin: impl Into<String>, cause: CallFailure) -> Self {
        CallError {
            plugin: plugin.into(),
            cause,
            logs: Vec::new(),
            stats: CallStats::default(),
        }
    }

    /// The stable kind of this failure.
    pub fn kind(&self) -> ErrorKind {
        self.cause.kind()
    }
}

/// Which output a plugin produced too much of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OutputStream {
    /// The response payload and metadata, in bytes (each metadata entry
    /// also costs a fixed overhead).
    Response,
    /// The number of response metadata entries.
    ResponseMetadata,
    /// Log bytes, including captured stdout and stderr (each line also
    /// costs a fixed overhead).
    Log,
    /// The number of log lines, including stdout and stderr lines.
    LogRecords,
    /// The message of the error value the plugin returned, in bytes.
    Error,
    /// What `describe` returned (name, version, description,
    /// capabilities), in bytes.
    Describe,
    /// The answers of one batch together, in bytes: once they pass the
    /// plugin's `max_response_bytes`, the batch's remaining requests are
    /// answered with this instead of run.
    Batch,
}

impl OutputStream {
    /// What the limit of this output counts.
    pub fn unit(self) -> &'static str {
        match self {
            OutputStream::ResponseMetadata => "entries",
            OutputStream::LogRecords => "lines",
            _ => "bytes",
        }
    }
}

impl fmt::Display for OutputStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputStream::Response => "response",
            OutputStream::ResponseMetadata => "response metadata",
            OutputStream::Log => "log output (log calls, stdout and stderr)",
            OutputStream::LogRecords => "log lines (log calls, stdout and stderr)",
            OutputStream::Error => "error message",
            OutputStream::Describe => "describe output",
            OutputStream::Batch => "the batch's answers together",
        })
    }
}

/// A host-side budget that what a plugin does is charged to (see
/// `docs/architecture.md`, "Budgets"). Exceeding one fails the call with
/// [`CallFailure::BudgetExceeded`] naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Budget {
    /// WASI handles an instance holds at once: open files and directories,
    /// streams, pollables, HTTP requests, bodies and header fields. Each is
    /// host memory (and an open file a host file descriptor).
    Handles,
    /// Bytes one host call may hand the host (its strings and lists,
    /// counted as the host stores them), and the bytes of an export's
    /// result. Stops a plugin from making the host copy one region of its
    /// memory many times over.
    HostCallBytes,
    /// Bytes of randomness one `wasi:random` request may ask for.
    RandomBytes,
    /// Bytes one `wasi:http` header-fields resource may hold (far fewer for
    /// a plugin without an HTTP grant).
    HttpFieldsBytes,
    /// Core instances, tables and memories one instance of the component
    /// may create.
    ComponentParts,
}

impl Budget {
    /// The budget's stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Budget::Handles => "handles",
            Budget::HostCallBytes => "host_call_bytes",
            Budget::RandomBytes => "random_bytes",
            Budget::HttpFieldsBytes => "http_fields_bytes",
            Budget::ComponentParts => "component_parts",
        }
    }

    /// What the budget's limit counts.
    pub fn unit(self) -> &'static str {
        match self {
            Budget::Handles => "handles held at once",
            Budget::HostCallBytes => "bytes per host call",
            Budget::RandomBytes => "bytes per request",
            Budget::HttpFieldsBytes => "bytes per header-fields resource",
            Budget::ComponentParts => "instances, tables or memories per store",
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The cause of a [`CallError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallFailure {
    /// The call consumed all the fuel it was given.
    #[error("ran out of fuel (limit {limit} units)")]
    OutOfFuel {
        /// The fuel budget of the call.
        limit: u64,
    },
    /// The call ran past its deadline.
    #[error("timed out after {limit:?}")]
    Timeout {
        /// The wall-clock budget of the call.
        limit: Duration,
    },
    /// The plugin tried to grow its linear memory beyond its limit.
    #[error("memory limit exceeded: wanted {requested} bytes, limit is {limit} bytes")]
    MemoryLimit {
        /// The instance's memory limit in bytes.
        limit: u64,
        /// The total size the plugin asked for.
        requested: u64,
    },
    /// The plugin overflowed the wasm stack.
    #[error("wasm stack overflow")]
    StackOverflow,
    /// The plugin made the host spend more than one of its budgets allows.
    #[error("exceeded its {budget} budget ({}: {limit})", budget.unit())]
    BudgetExceeded {
        /// Which budget.
        budget: Budget,
        /// The budget's size, in the budget's unit.
        limit: u64,
    },
    /// The plugin trapped.
    #[error("trapped ({trap}){}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Trap {
        /// The trap code, e.g. `unreachable` for a Rust panic.
        trap: String,
        /// The panic message or other context, when the plugin printed one.
        detail: Option<String>,
    },
    /// The plugin produced more output than allowed.
    #[error("{stream} exceeded its limit of {limit} {}", stream.unit())]
    OutputTooLarge {
        /// Which output overflowed.
        stream: OutputStream,
        /// The limit, in the stream's unit (bytes, entries or lines).
        limit: usize,
    },
    /// The request was larger than allowed.
    #[error("request of {size} bytes exceeds the limit of {limit} bytes")]
    InputTooLarge {
        /// The request's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A batch carried more requests than the plugin's `max_batch`; none
    /// of them ran.
    #[error("batch of {items} requests exceeds the limit of {limit} (max_batch)")]
    BatchTooLarge {
        /// The requests in the batch.
        items: usize,
        /// The plugin's `max_batch`.
        limit: usize,
    },
    /// The plugin returned an error value.
    #[error("{}", describe_plugin_error(.0))]
    Plugin(PluginError),
    /// No instance became free in time.
    #[error("busy: all {max_instances} instances in use and {queued} calls already waiting")]
    Busy {
        /// The plugin's concurrency limit.
        max_instances: usize,
        /// How many calls were waiting when this one gave up.
        queued: usize,
    },
    /// No plugin with this name is loaded.
    #[error("no such plugin is loaded")]
    UnknownPlugin,
    /// The plugin is paused.
    #[error("the plugin is paused")]
    Paused,
    /// The circuit breaker is open.
    #[error("circuit open after repeated failures; retry in {retry_in:?}")]
    CircuitOpen {
        /// When a probe call will be let through.
        retry_in: Duration,
    },
    /// A middleware refused the call.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The request does not match the operation's declared input schema.
    #[error("invalid input for operation `{operation}`: {reason}")]
    InvalidInput {
        /// The operation requested.
        operation: String,
        /// Why the payload does not match.
        reason: String,
    },
    /// The call's key-value commit lost to a concurrent call that changed
    /// a key it read (after the reruns it was allowed, if any).
    #[error("conflict: `{key}` in namespace `{namespace}` was changed by a concurrent call")]
    Conflict {
        /// The namespace.
        namespace: String,
        /// The key.
        key: String,
    },
    /// What the call's writes would leave breaks a namespace quota; none
    /// of them was written.
    #[error("key-value quota exceeded at commit: {0}")]
    QuotaExceeded(String),
    /// A backend the call needed could not be reached (the plugin failed
    /// after a host service told it so, or its commit could not be made).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The host failed; the message says how.
    #[error("host error: {0}")]
    Host(String),
    /// The plugin ran on another host of the deployment and failed there;
    /// the kind is the one that host reported.
    #[error("{message} (on host `{host}`)")]
    Remote {
        /// The host that ran the call.
        host: String,
        /// The failure's kind there.
        kind: ErrorKind,
        /// The failure as that host described it.
        message: String,
    },
}

impl CallFailure {
    /// The stable kind of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CallFailure::OutOfFuel { .. } => ErrorKind::OutOfFuel,
            CallFailure::Timeout { .. } => ErrorKind::Timeout,
            CallFailure::MemoryLimit { .. } => ErrorKind::MemoryLimit,
            CallFailure::StackOverflow => ErrorKind::StackOverflow,
            CallFailure::BudgetExceeded { .. } => ErrorKind::BudgetExceeded,
            CallFailure::Trap { .. } => ErrorKind::Trap,
            CallFailure::OutputTooLarge { .. } => ErrorKind::OutputTooLarge,
            CallFailure::InputTooLarge { .. } | CallFailure::BatchTooLarge { .. } => {
                ErrorKind::InputTooLarge
            }
            CallFailure::Plugin(_) => ErrorKind::PluginError,
            CallFailure::Busy { .. } => ErrorKind::Busy,
            CallFailure::UnknownPlugin => ErrorKind::UnknownPlugin,
            CallFailure::Paused => ErrorKind::Paused,
            CallFailure::CircuitOpen { .. } => ErrorKind::CircuitOpen,
            CallFailure::Rejected(_) => ErrorKind::Rejected,
            CallFailure::InvalidInput { .. } => ErrorKind::InvalidInput,
            CallFailure::Conflict { .. } => ErrorKind::Conflict,
            CallFailure::QuotaExceeded(_) => ErrorKind::QuotaExceeded,
            CallFailure::Unavailable(_) => ErrorKind::Unavailable,
            CallFailure::Host(_) => ErrorKind::Host,
            CallFailure::Remote { kind, .. } => *kind,
        }
    }
}

fn describe_plugin_error(err: &PluginError) -> String {
    match err {
        PluginError::InvalidInput(msg) => format!("invalid input: {msg}"),
        PluginError::Unsupported(msg) => format!("unsupported: {msg}"),
        PluginError::Denied(msg) => format!("denied: {msg}"),
        PluginError::Failed(msg) => format!("failed: {msg}"),
    }
}

/// The typed error raised when a plugin writes more output than allowed.
#[derive(Debug, thiserror::Error)]
#[error("{stream} exceeded its limit of {limit} {}", stream.unit())]
pub(crate) struct OutputLimitExceeded {
    pub(crate) stream: OutputStream,
    pub(crate) limit: usize,
}
