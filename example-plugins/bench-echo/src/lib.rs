//! Benchmark workload: every operation answers with the request's own
//! payload, so a call measures the host's overhead and nothing else.
//!
//! `relay` instead passes the payload on, as `echo`, to the plugin named by
//! the config value `relay_to` and answers what it answered: measured next
//! to a direct `echo`, the difference is what one plugin-to-plugin call
//! costs.

use capsule_guest::{Plugin, PluginError, Request, Response, config, export_plugin, plugins};

struct Echo;

impl Plugin for Echo {
    fn handle(request: Request) -> Result<Response, PluginError> {
        if request.operation == "relay" {
            let target = config::require("relay_to")?;
            let echoed = plugins::call(&target, &Request::new("echo", request.payload))?;
            return Ok(Response::bytes(echoed.payload));
        }
        Ok(Response::bytes(request.payload))
    }
}

export_plugin!(Echo);
