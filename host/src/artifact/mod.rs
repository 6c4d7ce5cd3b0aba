//! Plugin artifacts before they run: their structure, digest and signatures,
//! read without compiling anything, and the cache of compiled components.

pub mod cache;
pub mod inspect;
pub mod keys;
pub mod sections;
pub mod signature;

pub use inspect::{ComponentSummary, Interface, inspect};
pub use keys::{KeyError, KeyId, PublicKey, SecretKey};
pub use signature::{SignatureError, SignatureInfo, Verified};

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
