//! `alloc-bomb` grows memory without bound: the limiter stops it as
//! `memory_limit`, a typed error rather than a bare `unreachable`.

use capsule_host::{CallFailure, ErrorKind, Limits};
use capsule_tests::plugins::ALLOC_BOMB;

use crate::sandbox::{assert_contained, host_with, tight_limits};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_stops_it() {
    let limits = Limits {
        memory_bytes: 16 << 20,
        ..tight_limits()
    };
    let host = host_with(ALLOC_BOMB, limits.clone()).await;
    let (err, _) = assert_contained(
        &host,
        ALLOC_BOMB,
        "run",
        ErrorKind::MemoryLimit,
        limits.timeout,
    )
    .await;
    match err.cause {
        CallFailure::MemoryLimit { limit, requested } => {
            assert_eq!(limit, 16 << 20);
            assert!(requested > limit);
        }
        other => panic!("expected a memory limit, got {other:?}"),
    }
}
