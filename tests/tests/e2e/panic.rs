//! `panic` panics: the call fails as a `trap` of kind `unreachable` carrying
//! the panic message the plugin wrote to stderr.

use capsule_host::{CallFailure, ErrorKind, LogSource};
use capsule_tests::plugins::PANIC;

use crate::sandbox::{assert_contained, host_with, tight_limits};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_is_a_trap_naming_the_message() {
    let limits = tight_limits();
    let host = host_with(PANIC, limits.clone()).await;
    let (err, _) = assert_contained(&host, PANIC, "run", ErrorKind::Trap, limits.timeout).await;
    match &err.cause {
        CallFailure::Trap { trap, detail } => {
            assert_eq!(trap, "unreachable");
            assert_eq!(
                detail.as_deref(),
                Some("hostile plugin panicked on purpose during `run`")
            );
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(err.to_string().contains("panicked on purpose"), "{err}");
    assert!(err.logs.iter().any(|r| r.source == LogSource::Stderr));
}
