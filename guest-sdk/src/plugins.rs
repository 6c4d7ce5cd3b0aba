//! Calling other plugins through the host (contract 0.2).
//!
//! The operator grants each edge in the policy — `calls = ["storage",
//! "images:resize", "capability:thumbnail"]` — and every other call is
//! refused with [`CallError::Denied`]. The callee runs under its own grants
//! and limits; its time counts against this call's deadline.
//!
//! ```no_run
//! use capsule_guest::plugins;
//!
//! #[derive(serde::Serialize)]
//! struct Resize { width: u32 }
//! #[derive(serde::Deserialize)]
//! struct Resized { bytes: usize }
//!
//! let resized: Resized = plugins::call_json("images", "resize", &Resize { width: 64 })?;
//! let any: Resized = plugins::call_capability_json("thumbnail", "make", &Resize { width: 64 })?;
//! # Ok::<(), capsule_guest::PluginError>(())
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::bindings::capsule::plugin::plugins::{CallError, CallFailure};
use crate::{PluginError, Request, Response};

/// Calls `target`'s `handle` with `request`.
pub fn call(target: &str, request: &Request) -> Result<Response, CallError> {
    crate::host::call(target, request)
}

/// Calls the plugin that provides `capability` (the operator pins one when
/// several do; otherwise that is [`CallError::Ambiguous`]).
pub fn call_capability(capability: &str, request: &Request) -> Result<Response, CallError> {
    crate::host::call_capability(capability, request)
}

/// Calls `target`'s `operation` with `input` as JSON and decodes its JSON
/// answer.
pub fn call_json<In: Serialize + ?Sized, Out: DeserializeOwned>(
    target: &str,
    operation: &str,
    input: &In,
) -> Result<Out, PluginError> {
    let request = json_request(operation, input)?;
    decode(target, operation, call(target, &request)?)
}

/// [`call_json`] to whichever plugin provides `capability`.
pub fn call_capability_json<In: Serialize + ?Sized, Out: DeserializeOwned>(
    capability: &str,
    operation: &str,
    input: &In,
) -> Result<Out, PluginError> {
    let request = json_request(operation, input)?;
    decode(
        capability,
        operation,
        call_capability(capability, &request)?,
    )
}

fn json_request<In: Serialize + ?Sized>(
    operation: &str,
    input: &In,
) -> Result<Request, PluginError> {
    let payload = serde_json::to_vec(input).map_err(|err| {
        PluginError::Failed(format!(
            "could not serialise the input of `{operation}`: {err}"
        ))
    })?;
    Ok(Request::new(operation, payload))
}

fn decode<Out: DeserializeOwned>(
    target: &str,
    operation: &str,
    response: Response,
) -> Result<Out, PluginError> {
    serde_json::from_slice(&response.payload).map_err(|err| {
        PluginError::Failed(format!(
            "`{target}` answered `{operation}` with unexpected JSON: {err}"
        ))
    })
}

/// A denied call stays a denial; the callee's own error comes back as it
/// was (so an `invalid-input` from the callee is this plugin's too); every
/// other failure is this plugin's failure, naming the cause.
impl From<CallError> for PluginError {
    fn from(err: CallError) -> Self {
        match err {
            CallError::Denied(why) => PluginError::Denied(format!("call denied: {why}")),
            CallError::Plugin(error) => error,
            CallError::UnknownTarget(why) => PluginError::Failed(format!("unknown target: {why}")),
            CallError::Ambiguous(why) => PluginError::Failed(format!("ambiguous: {why}")),
            CallError::Refused(why) => PluginError::Failed(format!("call refused: {why}")),
            CallError::Failed(failure) => PluginError::Failed(format!(
                "the callee failed ({}): {}",
                failure.kind, failure.message
            )),
        }
    }
}
