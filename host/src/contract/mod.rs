//! The `capsule:plugin` contract as seen from the host: one bindings module
//! per contract version (`v0_1`, generated from the repository's `wit/`), so
//! a later version can sit beside it; the version this host serves; and
//! conveniences on the generated request/response types.

mod v0_1;

pub(crate) use v0_1::Plugin as PluginBindings;
pub(crate) use v0_1::PluginPre;
pub(crate) use v0_1::capsule::plugin as interfaces;
/// The generated handle on a plugin's `handler` export.
pub(crate) use v0_1::exports::capsule::plugin::handler::Guest;

/// The level of a plugin log line.
pub use v0_1::capsule::plugin::log::Level as LogLevel;
/// An event delivered to a plugin's `on-event`.
pub use v0_1::capsule::plugin::types::Event;
/// How a plugin disposed of an event.
pub use v0_1::capsule::plugin::types::EventOutcome;
/// An event a plugin forwards to another topic.
pub use v0_1::capsule::plugin::types::ForwardedEvent;
/// The error value a plugin returns when it refuses or fails a request.
pub use v0_1::capsule::plugin::types::PluginError;
/// What a plugin reports about itself from `describe`.
pub use v0_1::capsule::plugin::types::PluginInfo;
/// A request to a plugin: an operation name, a payload and metadata.
pub use v0_1::capsule::plugin::types::Request;
/// A successful plugin response: a payload and metadata.
pub use v0_1::capsule::plugin::types::Response;
/// A denial or failure a host service reports to a plugin.
pub use v0_1::capsule::plugin::types::ServiceError;

/// The WIT package name of the contract.
pub const CONTRACT_PACKAGE: &str = "capsule:plugin";

/// The contract version this host implements.
pub const CONTRACT_VERSION: &str = "0.1.0";

impl Request {
    /// A request for `operation` carrying `payload` and no metadata.
    pub fn new(operation: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Request {
            operation: operation.into(),
            payload: payload.into(),
            metadata: Vec::new(),
        }
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Bytes this request occupies: payload, operation and metadata (each
    /// entry with a fixed overhead of 32 bytes).
    pub fn size(&self) -> usize {
        self.operation.len() + self.payload.len() + metadata_size(&self.metadata)
    }
}

impl Response {
    /// Bytes this response occupies: payload and metadata (each entry with
    /// a fixed overhead of 32 bytes).
    pub fn size(&self) -> usize {
        self.payload.len() + metadata_size(&self.metadata)
    }

    /// The payload as UTF-8 text, if it is.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }
}

impl LogLevel {
    /// The level's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Bytes metadata occupies: every key and value, plus a fixed overhead per
/// entry so that many empty entries are not free.
fn metadata_size(metadata: &[(String, String)]) -> usize {
    metadata
        .iter()
        .map(|(k, v)| k.len() + v.len() + crate::limits::METADATA_ENTRY_OVERHEAD)
        .sum()
}

impl PluginError {
    /// The message the plugin gave with its error.
    pub fn message(&self) -> &str {
        match self {
            PluginError::InvalidInput(msg)
            | PluginError::Unsupported(msg)
            | PluginError::Denied(msg)
            | PluginError::Failed(msg) => msg,
        }
    }
}

impl PluginInfo {
    /// Bytes this description occupies: every string, plus a fixed overhead
    /// per capability.
    pub fn size(&self) -> usize {
        self.name.len()
            + self.version.len()
            + self.description.len()
            + self
                .capabilities
                .iter()
                .map(|c| c.len() + crate::limits::METADATA_ENTRY_OVERHEAD)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_served_is_the_one_in_wit() {
        let wit = include_str!("../../../wit/plugin.wit");
        let package = format!("package {CONTRACT_PACKAGE}@{CONTRACT_VERSION};");
        assert!(
            wit.lines().any(|line| line.trim() == package),
            "wit/plugin.wit does not declare `{package}`"
        );
    }
}
