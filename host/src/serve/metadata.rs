//! Request and response metadata as HTTP headers: each entry is an
//! `x-capsule-meta-<key>` header.
//!
//! Header names are case-insensitive, so a key arrives lowercase
//! (`Trace-Id` → `x-capsule-meta-trace-id` → `trace-id`). Values are UTF-8
//! both ways (sent as the header's raw bytes). An entry that cannot be a
//! header at all — a key that is not an HTTP token, a value with a control
//! character — is left out. Response metadata is bounded by a
//! [`HeaderBudget`] checked before any header is built.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// Prefix of headers that carry request and response metadata.
pub const META_HEADER_PREFIX: &str = "x-capsule-meta-";

/// How much response metadata may become headers: what HTTP clients accept
/// (64 entries and 16 KiB by default, `ServeOptions::max_response_headers`
/// and `max_response_header_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderBudget {
    /// Entries at most.
    pub entries: usize,
    /// Bytes of header names and values at most.
    pub bytes: usize,
}

/// The request metadata in `headers`: every `x-capsule-meta-*` header whose
/// value is UTF-8, in the order they came.
pub fn request_metadata(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let key = name.as_str().strip_prefix(META_HEADER_PREFIX)?;
            let value = std::str::from_utf8(value.as_bytes()).ok()?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Bytes `metadata` takes as headers, as the budget counts them.
pub fn header_bytes(metadata: &[(String, String)]) -> usize {
    metadata
        .iter()
        .map(|(key, value)| META_HEADER_PREFIX.len() + key.len() + value.len())
        .sum()
}

/// Response metadata as headers, within `budget`. The budget is checked
/// before any header is built, so no amount of metadata can grow a header
/// map past what `http` (or any client) accepts. Entries whose key or value
/// cannot be a header are left out.
pub fn response_headers(
    metadata: &[(String, String)],
    budget: HeaderBudget,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let bytes = header_bytes(metadata);
    if metadata.len() > budget.entries || bytes > budget.bytes {
        return Err(format!(
            "the response metadata ({} entries, {bytes} bytes as headers) does not fit in HTTP \
             headers: at most {} entries and {} bytes",
            metadata.len(),
            budget.entries,
            budget.bytes
        ));
    }
    Ok(metadata
        .iter()
        .filter_map(|(key, value)| {
            let name = HeaderName::from_bytes(format!("{META_HEADER_PREFIX}{key}").as_bytes());
            match (name, HeaderValue::from_bytes(value.as_bytes())) {
                (Ok(name), Ok(value)) => Some((name, value)),
                _ => None,
            }
        })
        .collect())
}
