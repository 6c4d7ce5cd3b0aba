//! Hostile: everything it says about itself is markup — its description is
//! `<script>alert(1)</script>` (from `Cargo.toml`), and every call fails
//! with an error message and a log line that try to inject an element with
//! an event handler. A console or any other page that shows plugin text
//! must show it as text.

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin, log};

struct Markup;

/// What every failure says.
const INJECTION: &str = "<img src=x onerror=\"document.title='pwned'\">";

impl Plugin for Markup {
    fn handle(request: Request) -> Result<Response, PluginError> {
        log::warn!("{INJECTION} during `{}`", request.operation);
        Err(PluginError::failed(INJECTION))
    }
}

export_plugin!(Markup);
