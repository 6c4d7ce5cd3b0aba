//! Sampling a call's guest stack (`capsule run --profile`, `Host::call_profiled`)
//! with wasmtime's `GuestProfiler`: on an engine with epoch interruption (not
//! the default; `capsule run --profile` asks for it), the store's epoch
//! tick, which also checks the deadline, takes a sample while a profiler
//! rides in the store.
//! The result is the Firefox profiler's processed format (JSON), which
//! <https://profiler.firefox.com> opens.
//!
//! Samples come at function entries and loop headers on the epoch tick (5 ms
//! by default), never during host calls; a call stopped by its deadline
//! loses its instance and with it the samples.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use wasmtime::{AsContext, GuestProfiler};

/// A profile asked for one call; the finished profiler is left here.
#[derive(Default)]
pub(crate) struct ProfileRequest {
    pub(crate) finished: Mutex<Option<GuestProfiler>>,
}

impl std::fmt::Debug for ProfileRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProfileRequest")
    }
}

impl ProfileRequest {
    /// The profile in the Firefox profiler's format, if the call returned
    /// (or trapped) with a profiler in its store.
    pub(crate) fn take_json(&self) -> Option<Vec<u8>> {
        let profiler = self
            .finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        let mut out = Vec::new();
        profiler.finish(&mut out).ok()?;
        Some(out)
    }
}

/// The profiler riding in a store during one call.
pub(crate) struct Sampler {
    pub(crate) profiler: GuestProfiler,
    last: Instant,
}

impl Sampler {
    /// A profiler for `component`'s modules, sampled about every `interval`.
    pub(crate) fn new(
        engine: &wasmtime::Engine,
        name: &str,
        interval: Duration,
        component: &wasmtime::component::Component,
    ) -> wasmtime::Result<Sampler> {
        let profiler = GuestProfiler::new_component(engine, name, interval, component.clone(), [])?;
        Ok(Sampler {
            profiler,
            last: Instant::now(),
        })
    }

    /// Records the guest's stack now, with the time since the last sample.
    pub(crate) fn sample(&mut self, store: impl AsContext) {
        let now = Instant::now();
        self.profiler.sample(store, now - self.last);
        self.last = now;
    }
}
