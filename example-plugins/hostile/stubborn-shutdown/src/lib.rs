//! Hostile: its `shutdown` export never returns. With the config value
//! `shutdown = "spin"` it loops in guest code (only the deadline can
//! stop it); with `shutdown = "sleep"` (the default) it waits an hour inside
//! a host call (only the host's outer timeout can stop it). A host shutting
//! down many such instances must still finish within its one deadline.
//!
//! Its `nap` operation sleeps for the milliseconds in the payload (default
//! 100) and answers `rested`, so that concurrent calls leave several warm
//! instances behind.

use std::time::Duration;

use capsule_guest::{Plugin, PluginError, Request, Response, config, export_plugin};

struct StubbornShutdown;

impl Plugin for StubbornShutdown {
    fn handle(request: Request) -> Result<Response, PluginError> {
        let millis = request
            .text()
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100u64);
        std::thread::sleep(Duration::from_millis(millis));
        Ok(Response::bytes("rested"))
    }

    fn shutdown() {
        if config::get("shutdown").ok().flatten().as_deref() == Some("spin") {
            let mut counter = 0u64;
            loop {
                counter = std::hint::black_box(counter.wrapping_add(1));
            }
        }
        // An hour inside `wasi:io/poll`.
        wasi::clocks::monotonic_clock::subscribe_duration(3_600_000_000_000).block();
    }
}

export_plugin!(StubbornShutdown);
