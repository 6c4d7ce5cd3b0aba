//! `hello-js`: the hello example written in JavaScript (componentize-js and the
//! helper in `guest-sdk/`), under grants and denials like the Rust one.

use capsule_tests::plugins::HELLO_JS;

use crate::polyglot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greets_under_grants_and_is_denied_without() {
    polyglot::hello_under_grants_and_denials(HELLO_JS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_manifest_is_embedded_and_enforced() {
    polyglot::hello_manifest_is_embedded_and_enforced(HELLO_JS).await;
}
