//! __NAME__: a Capsule plugin.
//!
//! - `greet` with `{"name": "Ada"}` answers `{"greeting": "Hello, Ada!"}`. The
//!   operator can change the greeting word with the config value `greeting`.
//! - Any other operation is answered with `PluginError::Unsupported`.

use capsule_guest::{Plugin, PluginError, Request, Response, config, export_plugin, log};
use serde::{Deserialize, Serialize};

/// The input of `greet`.
#[derive(Deserialize)]
struct GreetIn {
    name: String,
}

/// The output of `greet`.
#[derive(Serialize)]
struct GreetOut {
    greeting: String,
}

fn greet(input: GreetIn) -> Result<GreetOut, PluginError> {
    if input.name.trim().is_empty() {
        return Err(PluginError::invalid_input("`name` must not be empty"));
    }
    // `?` turns a denied or failed host service into a `PluginError`.
    let word = config::get("greeting")?.unwrap_or_else(|| "Hello".to_owned());
    log::info!("greeting {}", input.name);
    Ok(GreetOut {
        greeting: format!("{word}, {}!", input.name),
    })
}

struct __TYPE__;

impl Plugin for __TYPE__ {
    fn handle(request: Request) -> Result<Response, PluginError> {
        request
            .dispatch()
            // JSON in, JSON out; a payload that does not parse as `GreetIn`
            // is answered with `PluginError::InvalidInput`.
            .json("greet", greet)
            .finish()
    }
}

export_plugin!(__TYPE__);

// `cargo test --target <your host triple>` (see README.md) runs the plugin
// natively against `MockHost`, a fake of every host service: grant it what
// the test needs, call the plugin, assert on what it answered and logged.
#[cfg(test)]
mod tests {
    use capsule_guest::testing::MockHost;

    use super::*;

    #[test]
    fn greets_with_the_configured_word_and_logs_it() {
        let host = MockHost::new().config("greeting", "Hej");
        let answer = host
            .call::<__TYPE__>(Request::new("greet", r#"{"name": "Ada"}"#))
            .unwrap();
        assert_eq!(answer.payload, br#"{"greeting":"Hej, Ada!"}"#);
        assert_eq!(host.logs()[0].message, "greeting Ada");
    }

    #[test]
    fn unknown_operations_are_unsupported() {
        let answer = MockHost::new().call::<__TYPE__>(Request::new("nope", ""));
        assert!(matches!(answer, Err(PluginError::Unsupported(_))));
    }

    #[test]
    fn an_empty_name_is_invalid_input() {
        let answer = MockHost::new().call::<__TYPE__>(Request::new("greet", r#"{"name": " "}"#));
        assert!(matches!(answer, Err(PluginError::InvalidInput(_))));
    }
}
