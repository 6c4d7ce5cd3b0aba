//! A plugin built against the frozen `capsule:plugin@0.1.0` contract
//! (`wit/v0.1/`) with plain `wit-bindgen`, as 0.1 plugins in the field were
//! built: it must keep loading and answering on a host that serves 0.2.
//!
//! - `greet` with the payload `Ada` answers `<greeting>, Ada!`, the word
//!   from the config value `greeting` (default `Hello`), and logs a line.
//! - `count` increments `greets` in kv and answers the new value.
//! - Anything else is `unsupported`.

wit_bindgen::generate!({
    path: "../../wit/v0.1",
    world: "plugin",
});

use capsule::plugin::types::{Event, EventOutcome, PluginError, PluginInfo, Request, Response};
use capsule::plugin::{config, kv, log};
use exports::capsule::plugin::handler::Guest;

struct Fixture;

impl Guest for Fixture {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: env!("CARGO_PKG_DESCRIPTION").into(),
            capabilities: vec!["greeting-v0-1".into()],
        }
    }

    fn init() -> Result<(), PluginError> {
        Ok(())
    }

    fn handle(request: Request) -> Result<Response, PluginError> {
        let denied = |err| PluginError::Denied(format!("{err:?}"));
        match request.operation.as_str() {
            "greet" => {
                let name = String::from_utf8_lossy(&request.payload).into_owned();
                let word = config::get("greeting")
                    .map_err(denied)?
                    .unwrap_or_else(|| "Hello".into());
                let _ = log::log(log::Level::Info, &format!("greeting {name}"));
                Ok(Response {
                    payload: format!("{word}, {name}!").into_bytes(),
                    metadata: Vec::new(),
                })
            }
            "count" => {
                let count = kv::increment("greets", 1).map_err(denied)?;
                Ok(Response {
                    payload: count.to_string().into_bytes(),
                    metadata: Vec::new(),
                })
            }
            other => Err(PluginError::Unsupported(format!(
                "unknown operation `{other}`"
            ))),
        }
    }

    fn on_event(event: Event) -> Result<EventOutcome, PluginError> {
        Err(PluginError::Unsupported(format!(
            "no events (topic `{}`)",
            event.topic
        )))
    }

    fn shutdown() {}
}

export!(Fixture);
