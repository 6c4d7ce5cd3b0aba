//! What Capsule's fuzz targets check.
//!
//! Capsule reads bytes from people it does not trust — components and
//! their signature sections, key files, policy files, metadata headers,
//! messages from other hosts. Each [`Target`] here takes one fuzzer input
//! and asserts properties of the parser it feeds, not only that nothing
//! panics: a valid signature never survives a changed byte, parse and
//! re-encode agree, what validation accepts the host loads. A property that
//! does not hold panics with what broke.
//!
//! The same functions run two ways: under libFuzzer (`fuzz/libfuzzer`,
//! nightly, `cargo xtask fuzz`), and on stable in `cargo xtask test`, which
//! replays every committed corpus and regression input
//! (`tests/replay.rs`). See `docs/fuzzing.md`.

#![deny(missing_docs)]

pub mod access;
pub mod differential;
pub mod fixtures;
pub mod keys;
pub mod manifest;
pub mod metadata;
pub mod oci;
pub mod patterns;
pub mod policy;
pub mod sections;
pub mod signature;
pub mod trace;
pub mod units;
pub mod wire;

/// One fuzz target: a parser and the properties checked on every input.
#[derive(Clone, Copy)]
pub struct Target {
    /// The target's name: its libFuzzer binary, its corpus folder.
    pub name: &'static str,
    /// What it feeds and what it asserts.
    pub about: &'static str,
    /// Checks one input; panics when a property does not hold.
    pub check: fn(&[u8]),
    /// Inputs worth starting from, written to `fuzz/corpus/<name>/`.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target, in the order `cargo xtask fuzz --smoke` runs them.
pub const TARGETS: &[Target] = &[
    signature::TARGET,
    signature::SIGN_TARGET,
    differential::TARGET,
    sections::TARGET,
    keys::TARGET,
    policy::TEXT_TARGET,
    policy::STRUCTURED_TARGET,
    patterns::TARGET,
    units::TARGET,
    metadata::TARGET,
    manifest::TARGET,
    wire::TARGET,
    trace::TARGET,
    access::TARGET,
    oci::TARGET,
];

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|target| target.name == name)
}
