//! Hostile: spends its time inside host calls, where no guest fuel is burned
//! and no epoch check runs. Only the host's outer timeout can stop it.
//!
//! - `log`: a tight loop of `log` calls (fuel is burned only between them);
//! - any other operation: logs once, then sleeps for an hour inside the host
//!   (`wasi:clocks` + `wasi:io/poll`), where only the outer timeout applies.

use std::time::Duration;

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin, log};

struct SlowHostCalls;

impl Plugin for SlowHostCalls {
    fn handle(request: Request) -> Result<Response, PluginError> {
        if request.operation == "log" {
            loop {
                let _ = log::write(log::Level::Trace, "busy in the host");
            }
        }
        log::info!("going to sleep inside the host");
        std::thread::sleep(Duration::from_secs(3600));
        Ok(Response::bytes("woke up"))
    }
}

export_plugin!(SlowHostCalls);
