//! The Extism side of the peer benchmarks (`bench/peers/extism-bench`): two
//! plugin functions mirroring Capsule's `bench-echo` and `bench-compute`.
//!
//! - `echo` answers its input bytes unchanged, so a call measures the host's
//!   overhead and nothing else;
//! - `sieve` takes a decimal limit as text (e.g. `4000000`) and answers the
//!   number of primes below it, as decimal text, computed by the kernel the
//!   native baseline and the Capsule plugin run.

use extism_pdk::{FnResult, plugin_fn};

// The kernel's constants are for the benchmarks, not the plugin.
#[allow(dead_code)]
#[path = "../../../kernel/sieve.rs"]
mod sieve;

/// Answers the input bytes unchanged.
#[plugin_fn]
pub fn echo(input: Vec<u8>) -> FnResult<Vec<u8>> {
    Ok(input)
}

/// Counts the primes below the decimal limit in the input.
#[plugin_fn]
pub fn sieve(input: String) -> FnResult<String> {
    let limit: u32 = input.trim().parse()?;
    Ok(sieve::count_primes(limit).to_string())
}
