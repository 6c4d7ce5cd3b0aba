//! Bindings of `capsule:plugin@0.1.0`, generated from `wit/v0.1/` (frozen).
//! Its types are the host's own (re-exported by `contract`); later
//! versions map their identical `types` interface onto them.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit/v0.1",
    world: "plugin",
    // Exports run on wasmtime fibers so deadlines can interrupt them and a
    // long-running guest yields to other tasks. The key-value store does
    // disk I/O, so its functions are async; the other services answer
    // from memory.
    imports: { "capsule:plugin/kv": async },
    exports: { default: async },
});
