//! Bindings of `capsule:plugin@0.2.0`, generated from `wit/`. Its `types`
//! interface is 0.1's, unchanged, so it is mapped onto 0.1's bindings: one
//! set of Rust types serves both tracks and nothing is converted.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    // As 0.1; calls to other plugins wait for the callee, and a response
    // chunk waits for room in the caller's buffer, so they are async.
    imports: {
        "capsule:plugin/kv": async,
        "capsule:plugin/plugins": async,
        "capsule:plugin/response": async,
    },
    exports: { default: async },
    with: {
        "capsule:plugin/types": super::v0_1::capsule::plugin::types,
    },
});
