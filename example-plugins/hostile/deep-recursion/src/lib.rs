//! Hostile: every call recurses without bound. Frames hold only scalars, so
//! they live on the wasm stack (not Rust's shadow stack in linear memory) and
//! the engine's `max_wasm_stack` is what stops it.

use std::sync::atomic::{AtomicU64, Ordering};

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin};

struct DeepRecursion;

static SIDE_EFFECT: AtomicU64 = AtomicU64::new(0);

/// Not a tail call: the store after the recursive call keeps every frame
/// alive, and the side effect stops the optimiser from turning it into a loop.
#[inline(never)]
fn descend(depth: u64) -> u64 {
    if depth == 0 {
        return 0;
    }
    let below = descend(depth - 1);
    SIDE_EFFECT.fetch_add(below, Ordering::Relaxed);
    below + 1
}

impl Plugin for DeepRecursion {
    fn handle(request: Request) -> Result<Response, PluginError> {
        let depth = u64::MAX - request.payload.len() as u64;
        let reached = descend(depth);
        Ok(Response::bytes(reached.to_string()))
    }
}

export_plugin!(DeepRecursion);
