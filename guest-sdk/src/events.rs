//! Publishing events onto the host's bus.
//!
//! Publishing succeeds only for topics matching a pattern the operator granted;
//! others fail with [`ServiceError::Denied`].
//!
//! ```no_run
//! capsule_guest::events::publish_json("orders.created", &serde_json::json!({"id": 7}))?;
//! # Ok::<(), capsule_guest::PluginError>(())
//! ```

use serde::Serialize;

use crate::bindings::capsule::plugin::events as raw;
use crate::{PluginError, ServiceError};

/// Publishes `payload` on `topic`.
pub fn publish(topic: &str, payload: &[u8]) -> Result<(), ServiceError> {
    raw::publish(topic, payload)
}

/// Publishes `value` serialised as JSON on `topic`.
pub fn publish_json<T: Serialize + ?Sized>(topic: &str, value: &T) -> Result<(), PluginError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|err| PluginError::failed(format!("could not serialise event: {err}")))?;
    Ok(publish(topic, &bytes)?)
}
