//! The compute-bound benchmark workload, shared verbatim by the native
//! baseline, the Capsule plugin and the Extism plugin: count the primes below
//! `limit` with a sieve of Eratosthenes over a `limit`-byte table.

/// The `limit` every benchmark uses: a 4 MB table.
pub const LIMIT: u32 = 4_000_000;

/// The number of primes below `LIMIT`, to check every implementation.
pub const PRIMES_BELOW_LIMIT: u32 = 283_146;

/// Counts the primes below `limit`.
pub fn count_primes(limit: u32) -> u32 {
    let limit = limit as usize;
    if limit < 3 {
        return 0;
    }
    let mut composite = vec![false; limit];
    let mut count = 0;
    for n in 2..limit {
        if composite[n] {
            continue;
        }
        count += 1;
        // n * n overflows a 32-bit usize (wasm32) once n passes 65 535.
        let Some(mut multiple) = n.checked_mul(n) else {
            continue;
        };
        while multiple < limit {
            composite[multiple] = true;
            multiple += n;
        }
    }
    count
}
