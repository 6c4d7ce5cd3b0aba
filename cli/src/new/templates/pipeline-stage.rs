//! __NAME__: a pipeline stage.
//!
//! A pipeline passes its caller's operation to every stage and each stage's
//! answer to the next, so a stage handles every operation the same: it
//! takes a JSON object and answers it reshaped.
//!
//! This one normalises a contact: `email` is trimmed and lowercased, `name`
//! has its whitespace collapsed, fields it does not know are kept, and
//! `stages` records that it ran. A payload that is not a JSON object, or has
//! no string `email`, is refused with `invalid-input`, which stops the
//! pipeline and names this stage.

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin, log};
use serde_json::{Map, Value};

fn process(mut record: Map<String, Value>) -> Result<Map<String, Value>, PluginError> {
    let email = match record.get("email") {
        Some(Value::String(email)) => email.trim().to_lowercase(),
        _ => return Err(PluginError::invalid_input("`email` must be a string")),
    };
    if !email.contains('@') {
        return Err(PluginError::invalid_input(format!(
            "`{email}` is not an email address"
        )));
    }
    record.insert("email".into(), Value::String(email));
    if let Some(Value::String(name)) = record.get("name") {
        let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
        record.insert("name".into(), Value::String(name));
    }
    let stages = record
        .entry("stages")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(stages) = stages {
        stages.push(Value::String("__NAME__".into()));
    }
    log::debug!("normalised a record of {} fields", record.len());
    Ok(record)
}

struct __TYPE__;

impl Plugin for __TYPE__ {
    fn handle(request: Request) -> Result<Response, PluginError> {
        let record: Map<String, Value> = request.json()?;
        Response::json(&process(record)?)
    }
}

export_plugin!(__TYPE__);

// `cargo test --target <your host triple>` (see README.md) runs the plugin
// natively against `MockHost`, a fake of every host service.
#[cfg(test)]
mod tests {
    use capsule_guest::testing::MockHost;
    use serde_json::json;

    use super::*;

    fn run(input: Value) -> Result<Value, PluginError> {
        let request = Request::new("process", input.to_string());
        let answer = MockHost::new().call::<__TYPE__>(request)?;
        Ok(serde_json::from_slice(&answer.payload).unwrap())
    }

    #[test]
    fn a_contact_is_normalised_and_unknown_fields_kept() {
        let out = run(json!({"email": " Ada@Example.ORG ", "name": "Ada   Lovelace", "id": 7}));
        assert_eq!(
            out.unwrap(),
            json!({"email": "ada@example.org", "name": "Ada Lovelace", "id": 7,
                   "stages": ["__NAME__"]})
        );
    }

    #[test]
    fn a_record_without_an_email_stops_the_pipeline() {
        assert!(matches!(run(json!({"name": "Ada"})), Err(PluginError::InvalidInput(_))));
        assert!(matches!(run(json!([1, 2])), Err(PluginError::InvalidInput(_))));
    }
}
