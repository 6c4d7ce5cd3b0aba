//! The plugin's persistent key-value namespace.
//!
//! Keys are strings, values bytes; the JSON helpers store serde values. Every
//! call fails with [`ServiceError::Denied`] unless the operator granted a
//! namespace, and with [`ServiceError::QuotaExceeded`] past the grant's quotas.
//!
//! ```no_run
//! let visits = capsule_guest::kv::increment("visits", 1)?;
//! capsule_guest::kv::set_json("last", &visits)?;
//! # Ok::<(), capsule_guest::PluginError>(())
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::host;
use crate::{PluginError, ServiceError};

/// The bytes stored under `key`, if any.
///
/// ```no_run
/// if let Some(bytes) = capsule_guest::kv::get("avatar")? {
///     capsule_guest::log::info!("avatar is {} bytes", bytes.len());
/// }
/// # Ok::<(), capsule_guest::ServiceError>(())
/// ```
pub fn get(key: &str) -> Result<Option<Vec<u8>>, ServiceError> {
    host::kv_get(key)
}

/// Stores `value` under `key`, replacing any previous value. Fails with
/// [`ServiceError::QuotaExceeded`] when the key, the value, the key count or
/// the namespace's total size would exceed the grant's quotas.
///
/// ```no_run
/// capsule_guest::kv::set("greeting", b"Hello")?;
/// # Ok::<(), capsule_guest::ServiceError>(())
/// ```
pub fn set(key: &str, value: &[u8]) -> Result<(), ServiceError> {
    host::kv_set(key, value)
}

/// Removes `key`; returns whether it existed.
///
/// ```no_run
/// let existed = capsule_guest::kv::delete("session:42")?;
/// # Ok::<(), capsule_guest::ServiceError>(())
/// ```
pub fn delete(key: &str) -> Result<bool, ServiceError> {
    host::kv_delete(key)
}

/// Keys starting with `prefix`, in order (`""` lists every key).
///
/// ```no_run
/// for key in capsule_guest::kv::list_keys("session:")? {
///     capsule_guest::kv::delete(&key)?;
/// }
/// # Ok::<(), capsule_guest::ServiceError>(())
/// ```
pub fn list_keys(prefix: &str) -> Result<Vec<String>, ServiceError> {
    host::kv_list_keys(prefix)
}

/// Atomically adds `delta` to the integer under `key` (missing counts as 0)
/// and returns the new value. Concurrent increments never lose updates.
/// The counter is stored as 8 little-endian bytes ([`get`] returns them).
/// Fails with [`ServiceError::Invalid`] if the key holds anything else, or
/// if the sum overflows.
///
/// ```no_run
/// let visits = capsule_guest::kv::increment("visits", 1)?;
/// let left = capsule_guest::kv::increment("tickets", -1)?;
/// # Ok::<(), capsule_guest::ServiceError>(())
/// ```
pub fn increment(key: &str, delta: i64) -> Result<i64, ServiceError> {
    host::kv_increment(key, delta)
}

/// The JSON value stored under `key`, if any. A value that is not the
/// expected JSON is [`PluginError::Failed`].
///
/// ```no_run
/// #[derive(serde::Deserialize)]
/// struct Profile { name: String }
///
/// let profile: Option<Profile> = capsule_guest::kv::get_json("profile:ada")?;
/// # Ok::<(), capsule_guest::PluginError>(())
/// ```
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, PluginError> {
    match get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|err| {
            PluginError::failed(format!("kv key `{key}` holds invalid JSON: {err}"))
        }),
    }
}

/// Stores `value` as JSON under `key`.
///
/// ```no_run
/// capsule_guest::kv::set_json("profile:ada", &serde_json::json!({"name": "Ada"}))?;
/// # Ok::<(), capsule_guest::PluginError>(())
/// ```
pub fn set_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), PluginError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|err| PluginError::failed(format!("could not serialise kv value: {err}")))?;
    Ok(set(key, &bytes)?)
}
