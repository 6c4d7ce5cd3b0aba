//! `bench-echo`, the benchmarks' overhead workload: it answers any operation
//! with the request's own payload.

use capsule_host::{PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::BENCH_ECHO;

#[tokio::test]
async fn echoes_any_payload() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(BENCH_ECHO)))
        .await
        .unwrap();
    for payload in [&b""[..], b"0123456789abcdef", &[0u8, 255, 7, 1][..]] {
        let outcome = host
            .call(BENCH_ECHO, Request::new("anything", payload.to_vec()))
            .await
            .unwrap();
        assert_eq!(outcome.response.payload, payload);
    }
}
