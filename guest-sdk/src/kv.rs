//! The plugin's persistent key-value namespace.
//!
//! Keys are strings, values bytes; the JSON helpers store serde values. Every
//! call fails with [`ServiceError::Denied`] unless the operator granted a
//! namespace, and with [`ServiceError::QuotaExceeded`] past the grant's quotas.
//!
//! **Transactions.** Unless the operator set `kv.atomic = false`, the writes
//! of one call are buffered and committed together with the events it
//! published, only if the call returns `Ok`: an error, a panic, a limit hit
//! leave nothing behind. Reads see the call's own writes. If another call
//! changed a key this call read before it committed, Capsule runs the call
//! again (when it made no outbound requests) or fails it as `conflict` —
//! so a read-modify-write in one call never loses an update. Namespace
//! quotas (`max_keys`, `max_total`) are checked on what the commit would
//! leave; key and value sizes at once.
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

/// Keys starting with `prefix`, in order (`""` lists every key); fails with
/// [`ServiceError::QuotaExceeded`] when more than 1000 match (walk those
/// with [`keys`]).
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

/// Stores `new` under `key` only if the key holds exactly `expected`
/// (`None`: the key is absent); returns whether it did.
///
/// ```no_run
/// let swapped = capsule_guest::kv::compare_and_swap("owner", None, b"ada")?;
/// # Ok::<(), capsule_guest::ServiceError>(())
/// ```
pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    new: &[u8],
) -> Result<bool, ServiceError> {
    host::kv_compare_and_swap(key, expected, new)
}

/// Stores `value` under `key` for `ttl`; after that the key reads as absent
/// and the host removes it. A `ttl` under a millisecond is refused.
///
/// ```no_run
/// use std::time::Duration;
/// capsule_guest::kv::set_with_ttl("session:42", b"token", Duration::from_secs(900))?;
/// # Ok::<(), capsule_guest::ServiceError>(())
/// ```
pub fn set_with_ttl(key: &str, value: &[u8], ttl: std::time::Duration) -> Result<(), ServiceError> {
    let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    host::kv_set_with_ttl(key, value, millis)
}

/// The values under `keys` (at most 256), in the same order.
///
/// ```no_run
/// let values = capsule_guest::kv::get_many(&["a", "b"])?;
/// # Ok::<(), capsule_guest::ServiceError>(())
/// ```
pub fn get_many(keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, ServiceError> {
    let keys: Vec<String> = keys.iter().map(|key| (*key).to_owned()).collect();
    host::kv_get_many(&keys)
}

/// Stores every entry (at most 256), all or none.
///
/// ```no_run
/// capsule_guest::kv::set_many(&[("a", b"1"), ("b", b"2")])?;
/// # Ok::<(), capsule_guest::ServiceError>(())
/// ```
pub fn set_many(entries: &[(&str, &[u8])]) -> Result<(), ServiceError> {
    let entries: Vec<(String, Vec<u8>)> = entries
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.to_vec()))
        .collect();
    host::kv_set_many(&entries)
}

/// One page of the keys that start with `prefix` and sort after `after`:
/// at most `limit` (at most 1000) keys, and where the next page starts
/// (`None` after the last). A page may hold fewer keys than `limit` even
/// when more follow. [`keys`] walks every page for you.
pub fn list_keys_page(
    prefix: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<(Vec<String>, Option<String>), ServiceError> {
    host::kv_list_keys_page(prefix, after, limit)
}

/// Every key that starts with `prefix`, in order, fetched a page of 500 at
/// a time — however many there are (unlike [`list_keys`], which refuses
/// more than 1000).
///
/// ```no_run
/// for key in capsule_guest::kv::keys("session:") {
///     capsule_guest::kv::delete(&key?)?;
/// }
/// # Ok::<(), capsule_guest::ServiceError>(())
/// ```
pub fn keys(prefix: &str) -> Keys {
    Keys {
        prefix: prefix.to_owned(),
        page: Vec::new().into_iter(),
        next: Some(None),
    }
}

/// The iterator [`keys`] returns.
pub struct Keys {
    prefix: String,
    page: std::vec::IntoIter<String>,
    /// Where the next page starts: `Some(None)` before the first page,
    /// `None` after the last.
    next: Option<Option<String>>,
}

impl Iterator for Keys {
    type Item = Result<String, ServiceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(key) = self.page.next() {
                return Some(Ok(key));
            }
            let after = self.next.take()?;
            match list_keys_page(&self.prefix, after.as_deref(), 500) {
                Ok((keys, next)) => {
                    self.page = keys.into_iter();
                    self.next = next.map(Some);
                }
                Err(err) => return Some(Err(err)),
            }
        }
    }
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
