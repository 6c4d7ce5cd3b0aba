//! Benchmark workload: `sieve` with a decimal limit as the payload (e.g.
//! `4000000`) answers the number of primes below it, computed by the same
//! kernel the native and Extism baselines run.

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin};

// The kernel's constants are for the benchmarks, not the plugin.
#[allow(dead_code)]
#[path = "../../../bench/kernel/sieve.rs"]
mod sieve;

struct Compute;

impl Plugin for Compute {
    fn handle(request: Request) -> Result<Response, PluginError> {
        request
            .dispatch()
            .raw("sieve", |request| {
                let limit: u32 = request.text()?.trim().parse().map_err(|err| {
                    PluginError::invalid_input(format!("the limit is not a number: {err}"))
                })?;
                Ok(Response::bytes(sieve::count_primes(limit).to_string()))
            })
            .finish()
    }
}

export_plugin!(Compute);
