//! Hostile: every call panics with a message. The host reports a trap naming
//! the panic (`unreachable`, with the message the plugin wrote to stderr).

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin};

struct Panic;

impl Plugin for Panic {
    fn handle(request: Request) -> Result<Response, PluginError> {
        panic!(
            "hostile plugin panicked on purpose during `{}`",
            request.operation
        );
    }
}

export_plugin!(Panic);
