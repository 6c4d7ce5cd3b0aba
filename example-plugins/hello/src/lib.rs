//! The hello plugin: `greet` with `{"name": "..."}` answers
//! `{"greeting": "Hello, <name>!"}`. The operator may change the greeting word
//! with the config key `greeting`.

use capsule_guest::{Plugin, PluginError, Request, Response, config, export_plugin, log};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct GreetIn {
    name: String,
}

#[derive(Serialize)]
struct GreetOut {
    greeting: String,
}

struct Hello;

impl Plugin for Hello {
    fn handle(request: Request) -> Result<Response, PluginError> {
        log::info!("handling `{}`", request.operation);
        request
            .dispatch()
            .json("greet", |input: GreetIn| {
                let word = config::get("greeting")?.unwrap_or_else(|| "Hello".to_owned());
                Ok(GreetOut {
                    greeting: format!("{word}, {}!", input.name),
                })
            })
            .finish()
    }
}

export_plugin!(Hello);
