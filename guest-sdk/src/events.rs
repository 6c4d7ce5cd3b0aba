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

use crate::{PluginError, ServiceError};

/// Publishes `payload` on `topic`. Topics are dot-separated names
/// (`orders.created`); the host refuses topics the operator did not grant
/// with [`ServiceError::Denied`] and malformed ones with
/// [`ServiceError::Invalid`].
///
/// ```no_run
/// capsule_guest::events::publish("audit.login", b"ada")?;
/// # Ok::<(), capsule_guest::ServiceError>(())
/// ```
pub fn publish(topic: &str, payload: &[u8]) -> Result<(), ServiceError> {
    crate::host::publish(topic, payload)
}

/// Publishes `value` serialised as JSON on `topic`.
///
/// ```no_run
/// #[derive(serde::Serialize)]
/// struct Created { id: u64 }
///
/// capsule_guest::events::publish_json("orders.created", &Created { id: 7 })?;
/// # Ok::<(), capsule_guest::PluginError>(())
/// ```
pub fn publish_json<T: Serialize + ?Sized>(topic: &str, value: &T) -> Result<(), PluginError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|err| PluginError::failed(format!("could not serialise event: {err}")))?;
    Ok(publish(topic, &bytes)?)
}
