//! `hello-py`: the hello example written in Python (componentize-py and the
//! helper in `guest-sdk/`), under grants and denials like the Rust one.

use capsule_tests::plugins::HELLO_PY;

use crate::polyglot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greets_under_grants_and_is_denied_without() {
    polyglot::hello_under_grants_and_denials(HELLO_PY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_manifest_is_embedded_and_enforced() {
    polyglot::hello_manifest_is_embedded_and_enforced(HELLO_PY).await;
}
