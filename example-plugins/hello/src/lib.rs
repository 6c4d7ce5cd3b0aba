//! The hello plugin.
//!
//! - `greet` with `{"name": "..."}` answers `{"greeting": "Hello, <name>!"}`;
//!   the operator may change the greeting word with the config key
//!   `greeting`.
//! - `env` answers `{"vars": {...}}`: the environment the plugin sees, which
//!   is exactly what the operator granted.
//! - `announce` with `{"topic": "...", "name": "..."}` publishes the greeting
//!   as an event; topics the operator did not grant are denied.

use std::collections::BTreeMap;

use capsule_guest::{Plugin, PluginError, Request, Response, config, events, export_plugin, log};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct GreetIn {
    name: String,
}

#[derive(Serialize)]
struct GreetOut {
    greeting: String,
}

#[derive(Serialize)]
struct EnvOut {
    vars: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct AnnounceIn {
    topic: String,
    name: String,
}

#[derive(Serialize)]
struct AnnounceOut {
    topic: String,
    published: bool,
}

fn greeting(name: &str) -> Result<String, PluginError> {
    let word = config::get("greeting")?.unwrap_or_else(|| "Hello".to_owned());
    Ok(format!("{word}, {name}!"))
}

struct Hello;

impl Plugin for Hello {
    fn handle(request: Request) -> Result<Response, PluginError> {
        log::info!("handling `{}`", request.operation);
        request
            .dispatch()
            .json("greet", |input: GreetIn| {
                Ok(GreetOut {
                    greeting: greeting(&input.name)?,
                })
            })
            .raw("env", |_| {
                Response::json(&EnvOut {
                    vars: std::env::vars().collect(),
                })
            })
            .json("announce", |input: AnnounceIn| {
                let greeting = GreetOut {
                    greeting: greeting(&input.name)?,
                };
                events::publish_json(&input.topic, &greeting)?;
                Ok(AnnounceOut {
                    topic: input.topic,
                    published: true,
                })
            })
            .finish()
    }
}

export_plugin!(Hello);
