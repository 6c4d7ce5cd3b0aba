//! Inputs the targets share: fixed test keys and small components.
//!
//! The keys are **test keys** derived from constant seeds, published here
//! on purpose so every run (and every replay) signs the same bytes. Never
//! trust them anywhere.

use capsule_host::artifact::sections::{self, COMPONENT_HEADER, MODULE_HEADER};
use capsule_host::{PublicKey, SecretKey};
use ed25519_dalek::SigningKey;

/// The seed of the test key the signature targets trust.
const TRUSTED_SEED: [u8; 32] = [0x5e; 32];
/// The seed of a second test key, for files signed twice.
const OTHER_SEED: [u8; 32] = [0xa7; 32];

/// The trusted test key as an `ed25519-dalek` key, to sign what
/// [`capsule_host::artifact::signature::sign`] cannot (partial signatures).
pub fn trusted_signing_key() -> SigningKey {
    SigningKey::from_bytes(&TRUSTED_SEED)
}

fn secret(seed: [u8; 32]) -> SecretKey {
    let signing = SigningKey::from_bytes(&seed);
    let mut raw = vec![0x81];
    raw.extend_from_slice(&seed);
    raw.extend_from_slice(signing.verifying_key().as_bytes());
    SecretKey::from_any(&raw).expect("a well-formed raw test key")
}

/// The test key the targets trust (a test key: never trust it elsewhere).
pub fn trusted_secret() -> SecretKey {
    secret(TRUSTED_SEED)
}

/// The public half of [`trusted_secret`].
pub fn trusted() -> PublicKey {
    trusted_secret().public_key()
}

/// A second test key, trusted only where a target says so.
pub fn other_secret() -> SecretKey {
    secret(OTHER_SEED)
}

/// A component made of `sections` (already framed) after the header.
pub fn component(sections: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = COMPONENT_HEADER.to_vec();
    for section in sections {
        bytes.extend_from_slice(section);
    }
    bytes
}

/// A core module made of `sections` after the header.
pub fn module(sections: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = MODULE_HEADER.to_vec();
    for section in sections {
        bytes.extend_from_slice(section);
    }
    bytes
}

/// A section with id `id` (not a custom one) and `payload`.
pub fn section(id: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![id];
    sections::write_bytes(&mut out, payload);
    out
}

/// A few small components and modules, unsigned.
pub fn samples() -> Vec<Vec<u8>> {
    vec![
        component(&[]),
        component(&[sections::encode_custom("name", b"sample")]),
        component(&[
            sections::encode_custom("producers", b"\x01\x08language\x01\x04Rust\x00"),
            section(1, &[0xaa, 0xbb, 0xcc]),
            sections::encode_custom("signature_delimiter", &[7; 16]),
            section(7, b"later"),
        ]),
        module(&[section(1, &[0x60, 0x00, 0x00])]),
    ]
}

/// Up to `count` positions in `range`, spread by `salt`, always including
/// its first and last.
pub fn positions(range: std::ops::Range<usize>, salt: &[u8], count: usize) -> Vec<usize> {
    if range.is_empty() {
        return Vec::new();
    }
    let len = range.end - range.start;
    let mut out = vec![range.start, range.end - 1];
    let mut state = salt.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    for _ in 0..count.saturating_sub(2) {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        out.push(range.start + (state >> 33) as usize % len);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The byte that separates the text fields of a target's input: never part
/// of UTF-8, so any text can be a field and seeds read as what they are.
pub const SEPARATOR: u8 = 0xff;

/// An input's text fields (invalid UTF-8 read lossily), at least `count`
/// (missing ones empty).
pub fn fields(data: &[u8], count: usize) -> Vec<String> {
    let mut fields: Vec<String> = data
        .split(|&b| b == SEPARATOR)
        .map(|field| String::from_utf8_lossy(field).into_owned())
        .collect();
    if fields.len() < count {
        fields.resize(count, String::new());
    }
    fields
}

/// The input whose fields are `fields`: what [`fields`] reads back.
pub fn join(fields: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        out.extend_from_slice(field.as_bytes());
    }
    out
}
