//! `handle-flood` makes the host create WASI resources that need no grant:
//! pollables, HTTP header fields, buffered HTTP bodies, random bytes, and one
//! host call whose entries all alias the same megabyte. Each attack ends
//! with `budget_exceeded` naming its budget, and `hello` keeps answering.
//! (`host/tests/budgets.rs` runs the same attacks against `capsule serve`
//! and bounds the server's peak memory.)

use capsule_host::{Budget, CallFailure, ErrorKind, Limits};
use capsule_tests::plugins::HANDLE_FLOOD;

use crate::sandbox::{assert_contained, host_with, tight_limits};

async fn stopped_by(op: &str, budget: Budget, limits: Limits) -> CallFailure {
    let host = host_with(HANDLE_FLOOD, limits.clone()).await;
    let (err, _) = assert_contained(
        &host,
        HANDLE_FLOOD,
        op,
        ErrorKind::BudgetExceeded,
        limits.timeout,
    )
    .await;
    assert!(
        matches!(err.cause, CallFailure::BudgetExceeded { budget: b, .. } if b == budget),
        "{op}: {err}"
    );
    assert!(err.to_string().contains(budget.as_str()), "{err}");
    err.cause
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_pollables_stop_at_the_handle_budget() {
    let limits = Limits {
        max_handles: 128,
        ..tight_limits()
    };
    let cause = stopped_by("pollables", Budget::Handles, limits).await;
    assert!(
        matches!(cause, CallFailure::BudgetExceeded { limit: 128, .. }),
        "{cause}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_fields_without_an_http_grant_stay_tiny() {
    let cause = stopped_by("fields", Budget::HttpFieldsBytes, tight_limits()).await;
    assert!(
        matches!(cause, CallFailure::BudgetExceeded { limit: 1024, .. }),
        "{cause}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsent_request_bodies_stop_at_the_handle_budget() {
    stopped_by("bodies", Budget::Handles, tight_limits()).await;
}

/// Misusing a host interface is the plugin's fault: a trap, not `host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misusing_an_interface_is_a_trap_not_a_host_fault() {
    let limits = tight_limits();
    let host = host_with(HANDLE_FLOOD, limits.clone()).await;
    for op in ["empty-poll", "body-overwrite"] {
        let (err, _) =
            assert_contained(&host, HANDLE_FLOOD, op, ErrorKind::Trap, limits.timeout).await;
        assert!(
            matches!(&err.cause, CallFailure::Trap { trap, .. } if trap == "host_call_error"),
            "{op}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_of_randomness_is_refused() {
    stopped_by("random", Budget::RandomBytes, tight_limits()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliased_header_values_are_not_copied_a_hundred_thousand_times() {
    let limits = tight_limits();
    let cause = stopped_by("alias-fields", Budget::HostCallBytes, limits.clone()).await;
    assert!(
        matches!(cause, CallFailure::BudgetExceeded { limit, .. } if limit == limits.host_call_bytes() as u64),
        "{cause}"
    );
}
