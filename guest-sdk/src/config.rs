//! Read-only configuration values the operator set for this plugin.
//!
//! ```no_run
//! let greeting = capsule_guest::config::get("greeting")?.unwrap_or_else(|| "Hello".into());
//! # Ok::<(), capsule_guest::ServiceError>(())
//! ```

use crate::ServiceError;
use crate::bindings::capsule::plugin::config as raw;

/// The value the operator set for `key`, or `None`.
pub fn get(key: &str) -> Result<Option<String>, ServiceError> {
    raw::get(key)
}

/// Every key/value pair the operator set, sorted by key.
pub fn all() -> Result<Vec<(String, String)>, ServiceError> {
    raw::get_all()
}
