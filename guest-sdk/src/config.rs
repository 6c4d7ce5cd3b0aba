//! Read-only configuration values the operator set for this plugin.
//!
//! Values come from the policy file (`config = { greeting = "Hi", retries =
//! 3 }`), from `capsule run --set greeting=Hi`, or from secrets the operator
//! keeps in the environment or files (`[plugins.NAME.secrets]`, which reach
//! the plugin like any value). A plugin cannot change them. [`get`] answers
//! a string as it is and any other value as JSON text; [`typed`] reads them
//! all into a struct, checked against the schema the plugin declares
//! ([`Plugin::config_schema`](crate::Plugin::config_schema)).
//!
//! ```no_run
//! let greeting = capsule_guest::config::get("greeting")?.unwrap_or_else(|| "Hello".into());
//! # Ok::<(), capsule_guest::ServiceError>(())
//! ```

use serde::de::DeserializeOwned;

use crate::{PluginError, ServiceError};

/// Every value as one JSON object: strings, numbers, booleans, arrays and
/// tables as the operator wrote them (coerced by the plugin's config schema,
/// its defaults filled in), secrets as strings.
pub fn json() -> Result<serde_json::Value, PluginError> {
    let text = crate::host::config_get_json()?;
    serde_json::from_str(&text)
        .map_err(|err| PluginError::failed(format!("the host's config is not JSON: {err}")))
}

/// Every value, deserialised into `T`: declare `T`'s schema with
/// [`Plugin::config_schema`](crate::Plugin::config_schema) (and
/// [`schema`]) so the host checks the operator's values before the plugin
/// ever runs.
///
/// ```no_run
/// #[derive(serde::Deserialize)]
/// struct Settings { endpoint: String, retries: u32 }
///
/// let settings: Settings = capsule_guest::config::typed()?;
/// # Ok::<(), capsule_guest::PluginError>(())
/// ```
pub fn typed<T: DeserializeOwned>() -> Result<T, PluginError> {
    serde_json::from_value(json()?)
        .map_err(|err| PluginError::failed(format!("the config does not fit: {err}")))
}

/// The JSON Schema of `T`, for [`Plugin::config_schema`](crate::Plugin::config_schema).
#[cfg(feature = "schema")]
pub fn schema<T: schemars::JsonSchema>() -> serde_json::Value {
    crate::manifest::schema_of::<T>()
}

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
