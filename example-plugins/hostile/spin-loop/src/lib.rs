//! Hostile: every call spins forever. Only the deadline or the fuel budget
//! can stop it. `run` (or any operation) spins in guest code, stopped at a
//! fuel yield or an epoch tick; `host-calls` spins calling the host (a log
//! line the budget soon refuses, over and over), which burns little fuel per
//! turn: the host stops it as it returns from a call past the deadline.

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin, log};

struct SpinLoop;

impl Plugin for SpinLoop {
    fn handle(request: Request) -> Result<Response, PluginError> {
        if request.operation == "host-calls" {
            loop {
                let _ = log::write(log::Level::Debug, "");
            }
        }
        let mut counter = request.payload.len() as u64;
        loop {
            counter =
                std::hint::black_box(counter.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

export_plugin!(SpinLoop);
