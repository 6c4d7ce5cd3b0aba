//! `runaway-py`: a hostile Python plugin that loops, hoards memory, raises
//! and recurses — stopped as `timeout`/`out_of_fuel`, `memory_limit` and
//! `trap` (with the exception's text), as a Rust plugin would be.

use capsule_tests::plugins::RUNAWAY_PY;

use crate::polyglot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_misdeed_is_a_typed_error() {
    polyglot::runaway_is_contained(
        RUNAWAY_PY,
        "raise",
        "RuntimeError: runaway-py gave up on purpose",
        "RecursionError: maximum recursion depth exceeded",
    )
    .await;
}
