//! `runaway-js`: a hostile JavaScript plugin that loops, hoards memory,
//! throws and recurses — stopped as `timeout`/`out_of_fuel`, `memory_limit`
//! and `trap` (with the error's text), as a Rust plugin would be.

use capsule_tests::plugins::RUNAWAY_JS;

use crate::polyglot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_misdeed_is_a_typed_error() {
    polyglot::runaway_is_contained(
        RUNAWAY_JS,
        "throw",
        "TypeError: runaway-js gave up on purpose",
        "InternalError: too much recursion",
    )
    .await;
}
