//! Plugin artifacts before they run: their structure, digest and signatures,
//! read without compiling anything, and the cache of compiled components.

// Keys and the cache are reached through the crate root (`PublicKey`,
// `CacheKey`, …); inspection, sections and signatures through their own
// modules. One public path per type.
pub(crate) mod cache;
pub mod declared_metrics;
pub mod inspect;
pub(crate) mod keys;
pub mod manifest;
pub mod metadata;
pub mod sections;
pub mod signature;

pub(crate) use inspect::{ComponentSummary, Interface};
pub(crate) use keys::PublicKey;

use sha2::{Digest, Sha256};

/// The SHA-256 digest of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// `bytes` as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}
