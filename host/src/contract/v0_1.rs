//! Bindings of `capsule:plugin@0.1.0`, generated from `wit/`.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    // Exports run on wasmtime fibers so deadlines can interrupt them and a
    // long-running guest yields to other tasks. The key-value store does
    // disk I/O, so its functions are async; the other services answer
    // from memory.
    imports: { "capsule:plugin/kv": async },
    exports: { default: async },
});
