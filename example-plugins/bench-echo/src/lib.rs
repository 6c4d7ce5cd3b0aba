//! Benchmark workload: every operation answers with the request's own
//! payload, so a call measures the host's overhead and nothing else.

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin};

struct Echo;

impl Plugin for Echo {
    fn handle(request: Request) -> Result<Response, PluginError> {
        Ok(Response::bytes(request.payload))
    }
}

export_plugin!(Echo);
