//! Bindings of the standard WASI proposals Capsule answers as adapters over
//! its own services (`wit/standard/`): `wasi:keyvalue@0.2.0-draft2`,
//! `wasi:config@0.2.0-draft` and `wasi:logging@0.1.0-draft`.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit/standard",
    world: "adapters",
    // The key-value store answers on the blocking pool, as `capsule:plugin/kv`.
    imports: {
        "wasi:keyvalue/store": async,
        "wasi:keyvalue/atomics": async,
        "wasi:keyvalue/batch": async,
    },
});
