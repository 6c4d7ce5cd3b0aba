//! Hostile: attacks the host through its `health` check, which `/readyz`
//! asks. Every check first counts itself in the `health_checks` counter (so
//! tests see how often the host asked), then does what the `health` config
//! value says:
//!
//! - `spin`: loops for ever — stopped by the health timeout, reported as a
//!   failed check (`timeout`), the plugin degraded.
//! - `flood`: fails with half a megabyte of reason (within its response
//!   limit; more fails the check as `output_too_large`) — kept cut to a few
//!   hundred bytes.
//! - anything else: healthy.
//!
//! Its `handle` answers `ok`, so tests can tell its calls still work.

use capsule_guest::metrics::{self, Metric};
use capsule_guest::{Plugin, PluginError, Request, Response, config, export_plugin};

struct SickHealth;

impl Plugin for SickHealth {
    fn metrics() -> Vec<Metric> {
        vec![Metric::counter(
            "health_checks",
            "Health checks the host asked this plugin for",
        )]
    }

    fn handle(_: Request) -> Result<Response, PluginError> {
        Ok(Response::bytes("ok"))
    }

    fn health() -> Result<(), String> {
        let _ = metrics::add("health_checks", &[], 1.0);
        match config::get("health").ok().flatten().as_deref() {
            Some("spin") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("flood") => Err("sick ".repeat(100_000)),
            _ => Ok(()),
        }
    }
}

export_plugin!(SickHealth);
