//! Read-only configuration values the operator set for this plugin.
//!
//! Values come from the policy file (`config = { greeting = "Hi" }`) or from
//! `capsule run --set greeting=Hi`. A plugin cannot change them.
//!
//! ```no_run
//! let greeting = capsule_guest::config::get("greeting")?.unwrap_or_else(|| "Hello".into());
//! # Ok::<(), capsule_guest::ServiceError>(())
//! ```

use crate::{PluginError, ServiceError};

/// The value the operator set for `key`, or `None`.
///
/// ```no_run
/// use capsule_guest::config;
///
/// match config::get("endpoint")? {
///     Some(url) => capsule_guest::log::info!("using {url}"),
///     None => capsule_guest::log::warn!("no endpoint configured"),
/// }
/// # Ok::<(), capsule_guest::ServiceError>(())
/// ```
pub fn get(key: &str) -> Result<Option<String>, ServiceError> {
    crate::host::config_get(key)
}

/// The value the operator set for `key`, or `default` when unset.
///
/// ```no_run
/// let word = capsule_guest::config::get_or("greeting", "Hello")?;
/// # Ok::<(), capsule_guest::ServiceError>(())
/// ```
pub fn get_or(key: &str, default: &str) -> Result<String, ServiceError> {
    Ok(get(key)?.unwrap_or_else(|| default.to_owned()))
}

/// The value the operator set for `key`, or [`PluginError::Failed`] saying
/// that the plugin needs it.
///
/// ```no_run
/// use capsule_guest::{PluginError, config};
///
/// fn endpoint() -> Result<String, PluginError> {
///     config::require("endpoint") // "missing config value `endpoint`" if unset
/// }
/// ```
pub fn require(key: &str) -> Result<String, PluginError> {
    get(key)?.ok_or_else(|| {
        PluginError::Failed(format!(
            "missing config value `{key}`: the operator must set it \
             (policy `config = {{ {key} = ... }}` or `capsule run --set {key}=...`)"
        ))
    })
}

/// Every key/value pair the operator set, sorted by key.
///
/// ```no_run
/// for (key, value) in capsule_guest::config::all()? {
///     capsule_guest::log::debug!("{key} = {value}");
/// }
/// # Ok::<(), capsule_guest::ServiceError>(())
/// ```
pub fn all() -> Result<Vec<(String, String)>, ServiceError> {
    crate::host::config_get_all()
}
