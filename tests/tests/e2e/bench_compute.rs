//! `bench-compute`, the benchmarks' compute-bound workload: the same sieve
//! kernel as the native baseline must give the same answer inside wasm32.

use capsule_host::{PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::BENCH_COMPUTE;

#[path = "../../../bench/kernel/sieve.rs"]
mod sieve;

#[tokio::test]
async fn the_sieve_agrees_with_the_native_kernel() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(BENCH_COMPUTE)))
        .await
        .unwrap();
    assert_eq!(sieve::count_primes(sieve::LIMIT), sieve::PRIMES_BELOW_LIMIT);
    for limit in [0, 2, 3, 100, 65_537, 1_000_000, sieve::LIMIT] {
        let outcome = host
            .call(BENCH_COMPUTE, Request::new("sieve", limit.to_string()))
            .await
            .unwrap();
        assert_eq!(
            outcome.response.text(),
            Some(sieve::count_primes(limit).to_string().as_str()),
            "limit {limit}"
        );
    }
    let err = host
        .call(BENCH_COMPUTE, Request::new("sieve", "many"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), capsule_host::ErrorKind::PluginError);
}
