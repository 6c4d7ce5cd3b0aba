//! Service contracts enforced at the door: with `validate_input = true`, a
//! request must name an operation the plugin's manifest declares and carry a
//! payload that matches its input schema, or it is refused as
//! `invalid_input` before any plugin code runs.

use std::collections::HashMap;

use crate::artifact::manifest::{Manifest, SchemaShape, compile_schema};
use crate::contract::Request;
use crate::error::{CallFailure, LoadFailure};
use crate::text::for_log;

/// The most node visits validating one request may cost: schema nodes
/// (with `$ref`s expanded) times values in the payload. A payload that
/// would cost more is refused unchecked, whatever it holds.
pub(crate) const MAX_VALIDATION_VISITS: u64 = 1 << 24;
/// The longest refusal reason, so a request cannot make the host build (and
/// a calling plugin receive) a message the size of its payload.
const MAX_REASON_BYTES: usize = 512;

/// One declared operation: its input schema, compiled, and its expanded
/// size.
struct Declared {
    validator: jsonschema::Validator,
    nodes: u64,
}

/// The compiled input schemas of one plugin version's declared operations.
pub(crate) struct InputSchemas {
    /// Each declared operation, with its schema if it declares one (an
    /// operation without one accepts any payload).
    operations: HashMap<String, Option<Declared>>,
}

impl InputSchemas {
    /// Compiles the input schemas of a plugin's declared operations. A
    /// plugin without a manifest, or whose manifest does not list its
    /// operations, cannot have its input validated: a configuration error.
    /// A schema that does not compile is an invalid manifest.
    pub(crate) fn for_manifest(manifest: Option<&Manifest>) -> Result<InputSchemas, LoadFailure> {
        let Some(manifest) = manifest else {
            return Err(LoadFailure::Config(
                "`validate_input` needs the operations the plugin declares, but the component \
                 carries no manifest (sign it with `capsule sign`, which embeds one)"
                    .into(),
            ));
        };
        let Some(operations) = &manifest.operations else {
            return Err(LoadFailure::Config(
                "`validate_input` needs the operations the plugin declares, but its manifest \
                 does not list them (its `handle` does not route through the SDK's `Dispatch`)"
                    .into(),
            ));
        };
        let mut compiled = HashMap::with_capacity(operations.len());
        for operation in operations {
            let declared = match &operation.input {
                Some(schema) => {
                    let invalid = |err: String| {
                        LoadFailure::InvalidManifest(format!(
                            "the input schema of operation `{}` {err}",
                            operation.name
                        ))
                    };
                    let shape = SchemaShape::measure(schema).map_err(invalid)?;
                    let validator = compile_schema(schema)
                        .map_err(|err| invalid(format!("does not compile: {err}")))?;
                    Some(Declared {
                        validator,
                        nodes: shape.nodes as u64,
                    })
                }
                None => None,
            };
            compiled.insert(operation.name.clone(), declared);
        }
        Ok(InputSchemas {
            operations: compiled,
        })
    }

    /// Whether `request` may reach the plugin.
    pub(crate) fn check(&self, request: &Request) -> Result<(), CallFailure> {
        let refuse = |reason: String| {
            Err(CallFailure::InvalidInput {
                operation: for_log(&request.operation, 128).into_owned(),
                reason: for_log(&reason, MAX_REASON_BYTES).into_owned(),
            })
        };
        let Some(declared) = self.operations.get(&request.operation) else {
            let mut names: Vec<&str> = self.operations.keys().map(String::as_str).collect();
            names.sort_unstable();
            return refuse(format!(
                "the plugin declares no such operation (it declares: {})",
                names.join(", ")
            ));
        };
        let Some(Declared { validator, nodes }) = declared else {
            return Ok(());
        };
        // The payload is already within the plugin's request limit, and
        // serde_json bounds nesting, so parsing cannot run away.
        let payload: serde_json::Value = match serde_json::from_slice(&request.payload) {
            Ok(payload) => payload,
            Err(err) => return refuse(format!("the payload is not JSON: {err}")),
        };
        let visits = values(&payload).saturating_mul(*nodes);
        if visits > MAX_VALIDATION_VISITS {
            return refuse(format!(
                "checking this payload against the declared schema would take {visits} steps, \
                 more than the {MAX_VALIDATION_VISITS} one request may cost; send a smaller payload"
            ));
        }
        // `validate` stops at the first violation (collecting them all would
        // cost an error per offending value).
        match validator.validate(&payload) {
            Ok(()) => Ok(()),
            Err(err) => {
                let path = err.instance_path().to_string();
                let message = for_log(&err.to_string(), MAX_REASON_BYTES).into_owned();
                if path.is_empty() {
                    refuse(message)
                } else {
                    refuse(format!("at {path}: {message}"))
                }
            }
        }
    }
}

/// The JSON values in `value`, itself included.
fn values(value: &serde_json::Value) -> u64 {
    let mut count = 0u64;
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        count += 1;
        match value {
            serde_json::Value::Array(items) => pending.extend(items),
            serde_json::Value::Object(map) => pending.extend(map.values()),
            _ => {}
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::manifest::{MANIFEST_FORMAT, Operation};
    use crate::error::ErrorKind;

    fn schemas() -> InputSchemas {
        InputSchemas::for_manifest(Some(&Manifest {
            format: MANIFEST_FORMAT,
            name: "greeter".into(),
            version: "1.0.0".into(),
            description: String::new(),
            capabilities: Vec::new(),
            operations: Some(vec![
                Operation {
                    name: "greet".into(),
                    description: String::new(),
                    input: Some(serde_json::json!({
                        "type": "object",
                        "properties": {"name": {"type": "string", "maxLength": 8}},
                        "required": ["name"]
                    })),
                    output: None,
                    pure: false,
                },
                Operation {
                    name: "echo".into(),
                    description: String::new(),
                    input: None,
                    output: None,
                    pure: false,
                },
            ]),
            requires: Vec::new(),
            config: None,
            metrics: Vec::new(),
            metadata: None,
        }))
        .unwrap()
    }

    fn refusal(request: Request) -> String {
        let failure = schemas().check(&request).unwrap_err();
        assert_eq!(failure.kind(), ErrorKind::InvalidInput);
        failure.to_string()
    }

    #[test]
    fn matching_requests_pass_and_others_are_refused_with_the_reason() {
        assert!(
            schemas()
                .check(&Request::new("greet", r#"{"name":"Ada"}"#))
                .is_ok()
        );
        assert!(schemas().check(&Request::new("echo", "not json")).is_ok());
        let missing = refusal(Request::new("greet", "{}"));
        assert!(
            missing.contains("\"name\" is a required property"),
            "{missing}"
        );
        let long = refusal(Request::new("greet", r#"{"name":"Bartholomew"}"#));
        assert!(long.contains("at /name"), "{long}");
        let not_json = refusal(Request::new("greet", "hello"));
        assert!(not_json.contains("not JSON"), "{not_json}");
        let undeclared = refusal(Request::new("shout", "{}"));
        assert!(undeclared.contains("declares: echo, greet"), "{undeclared}");
    }

    #[test]
    fn refusals_are_bounded_whatever_the_payload() {
        // A 400 KiB name: the message would quote it whole.
        let name = "x".repeat(400 << 10);
        let long = refusal(Request::new("greet", format!(r#"{{"name":"{name}"}}"#)));
        assert!(long.len() < 1024, "{} bytes", long.len());
        // A payload whose check would cost more than the budget is refused
        // unchecked.
        let many = format!("[{}]", vec!["0"; 1 << 22].join(","));
        let costly = refusal(Request::new("greet", many));
        assert!(costly.contains("send a smaller payload"), "{costly}");
    }
}
