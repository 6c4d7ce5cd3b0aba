//! The hello plugin.
//!
//! - `greet` with `{"name": "..."}` answers `{"greeting": "Hello, <name>!"}`;
//!   the operator may change the greeting word with the config key
//!   `greeting`.
//! - `env` answers `{"vars": {...}}`: the environment the plugin sees, which
//!   is exactly what the operator granted.
//! - `announce` with `{"topic": "...", "name": "..."}` publishes the greeting
//!   as an event; topics the operator did not grant are denied.
//! - `calls` answers `{"calls": N}`: how many calls this instance has served,
//!   which shows whether the host reuses instances (`recycle_after`).
//!
//! It counts its greetings by greeting word in the metric `greetings`
//! (`capsule_plugin_greetings_total` in `/metrics`) when the operator grants
//! `metrics`; without the grant the count is dropped and greeting goes on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use capsule_guest::metrics::{self, Metric};
use capsule_guest::{
    Plugin, PluginError, PluginInfo, Request, Response, config, events, export_plugin, log,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Who to greet.
#[derive(Deserialize, JsonSchema)]
struct GreetIn {
    /// The name to greet (1 to 64 characters).
    #[schemars(length(min = 1, max = 64))]
    name: String,
}

/// The greeting.
#[derive(Serialize, JsonSchema)]
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
    // A metric is never worth failing a greeting for.
    let _ = metrics::add("greetings", &[&word], 1.0);
    Ok(format!("{word}, {name}!"))
}

#[derive(Serialize)]
struct CallsOut {
    calls: u64,
}

/// Calls served by this instance; lives as long as the instance does.
static CALLS: AtomicU64 = AtomicU64::new(0);

struct Hello;

impl Plugin for Hello {
    fn describe(from_cargo: PluginInfo) -> PluginInfo {
        PluginInfo {
            capabilities: vec!["greeting".into()],
            ..from_cargo
        }
    }

    fn metrics() -> Vec<Metric> {
        vec![Metric::counter("greetings", "Greetings given, by greeting word").labels(&["word"])]
    }

    fn handle(request: Request) -> Result<Response, PluginError> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        log::info!("handling `{}`", request.operation);
        request
            .dispatch()
            .typed("greet", |input: GreetIn| {
                Ok(GreetOut {
                    greeting: greeting(&input.name)?,
                })
            })
            .about("Greets someone by name, with the operator's greeting word")
            .raw("env", |_| {
                Response::json(&EnvOut {
                    vars: std::env::vars().collect(),
                })
            })
            .about("The environment variables the plugin was granted")
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
            .about("Publishes a greeting as an event on a granted topic")
            .raw("calls", |_| Response::json(&CallsOut { calls }))
            .about("How many calls this instance has served")
            .finish()
    }
}

export_plugin!(Hello);
