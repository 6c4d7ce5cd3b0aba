//! Hostile: every call allocates (and touches) memory one megabyte at a time
//! until something stops it. Only the memory limit can.

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin};

struct AllocBomb;

const CHUNK: usize = 1 << 20;

impl Plugin for AllocBomb {
    fn handle(request: Request) -> Result<Response, PluginError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        let fill = request.payload.first().copied().unwrap_or(0xAB);
        loop {
            // Writing every byte makes the memory real, not just reserved.
            hoard.push(vec![fill; CHUNK]);
            std::hint::black_box(&hoard);
        }
    }
}

export_plugin!(AllocBomb);
