//! Conveniences on the generated contract types: JSON payloads, error
//! constructors and conversions so `?` works inside `handle`.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Dispatch, PluginError, Request, Response, ServiceError};

impl Request {
    /// A request for `operation` with a raw payload and no metadata.
    pub fn new(operation: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Request {
            operation: operation.into(),
            payload: payload.into(),
            metadata: Vec::new(),
        }
    }

    /// Parses the payload as JSON into `T`.
    ///
    /// A payload that is not valid JSON for `T` becomes
    /// [`PluginError::InvalidInput`] naming the operation and the parse error.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        serde_json::from_slice(&self.payload).map_err(|err| {
            PluginError::InvalidInput(format!(
                "operation `{}`: payload is not the expected JSON: {err}",
                self.operation
            ))
        })
    }

    /// The payload as UTF-8 text, or [`PluginError::InvalidInput`].
    pub fn text(&self) -> Result<&str, PluginError> {
        std::str::from_utf8(&self.payload).map_err(|err| {
            PluginError::InvalidInput(format!(
                "operation `{}`: payload is not UTF-8: {err}",
                self.operation
            ))
        })
    }

    /// The first metadata value stored under `key`.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Routes this request by operation; see [`Dispatch`].
    pub fn dispatch(self) -> Dispatch {
        Dispatch::new(self)
    }
}

impl Response {
    /// A response carrying `payload` as is.
    pub fn bytes(payload: impl Into<Vec<u8>>) -> Self {
        Response {
            payload: payload.into(),
            metadata: Vec::new(),
        }
    }

    /// A response whose payload is `value` serialised as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, PluginError> {
        serde_json::to_vec(value)
            .map(Response::bytes)
            .map_err(|err| PluginError::Failed(format!("could not serialise the response: {err}")))
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }
}

impl PluginError {
    /// The error for an operation this plugin does not implement.
    pub fn unsupported_operation(operation: &str) -> Self {
        PluginError::Unsupported(format!("unknown operation `{operation}`"))
    }

    /// Shorthand for [`PluginError::InvalidInput`].
    pub fn invalid_input(message: impl std::fmt::Display) -> Self {
        PluginError::InvalidInput(message.to_string())
    }

    /// Shorthand for [`PluginError::Failed`].
    pub fn failed(message: impl std::fmt::Display) -> Self {
        PluginError::Failed(message.to_string())
    }
}

/// A denied host service stays a denial for the caller; every other service
/// failure is the plugin's failure.
impl From<ServiceError> for PluginError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::Denied(msg) => PluginError::Denied(msg),
            ServiceError::QuotaExceeded(msg) => {
                PluginError::Failed(format!("quota exceeded: {msg}"))
            }
            ServiceError::Invalid(msg) => {
                PluginError::Failed(format!("invalid service request: {msg}"))
            }
            ServiceError::Unavailable(msg) => {
                PluginError::Failed(format!("service unavailable: {msg}"))
            }
        }
    }
}
