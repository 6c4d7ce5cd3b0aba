//! Hostile: every call spins forever. Only the deadline (epoch
//! interruption) or the fuel budget can stop it.

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin};

struct SpinLoop;

impl Plugin for SpinLoop {
    fn handle(request: Request) -> Result<Response, PluginError> {
        let mut counter = request.payload.len() as u64;
        loop {
            counter =
                std::hint::black_box(counter.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

export_plugin!(SpinLoop);
