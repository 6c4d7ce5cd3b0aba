//! `deep-recursion` recurses without bound: the engine's wasm stack limit
//! stops it as `stack_overflow`.

use capsule_host::ErrorKind;
use capsule_tests::plugins::DEEP_RECURSION;

use crate::sandbox::{assert_contained, host_with, tight_limits};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_limit_stops_it() {
    let limits = tight_limits();
    let host = host_with(DEEP_RECURSION, limits.clone()).await;
    assert_contained(
        &host,
        DEEP_RECURSION,
        "run",
        ErrorKind::StackOverflow,
        limits.timeout,
    )
    .await;
}
