//! Service contracts enforced at the door: with `validate_input = true`, a
//! request must name an operation the plugin's manifest declares and carry a
//! payload that matches its input schema, or it is refused as
//! `invalid_input` before any plugin code runs.

use std::collections::HashMap;

use crate::artifact::manifest::{Manifest, compile_schema};
use crate::contract::Request;
use crate::error::CallFailure;

/// The most schema violations one refusal lists.
const MAX_REPORTED_ERRORS: usize = 3;

/// The compiled input schemas of one plugin version's declared operations.
pub(crate) struct InputSchemas {
    /// Each declared operation, with its validator if it declares an input
    /// schema (an operation without one accepts any payload).
    operations: HashMap<String, Option<jsonschema::Validator>>,
}

impl InputSchemas {
    /// Compiles every declared input schema; an error names the operation
    /// whose schema does not compile.
    pub(crate) fn compile(manifest: &Manifest) -> Result<InputSchemas, String> {
        let mut operations = HashMap::with_capacity(manifest.operations.len());
        for operation in &manifest.operations {
            let validator = match &operation.input {
                Some(schema) => Some(compile_schema(schema).map_err(|err| {
                    format!(
                        "the input schema of operation `{}` does not compile: {err}",
                        operation.name
                    )
                })?),
                None => None,
            };
            operations.insert(operation.name.clone(), validator);
        }
        Ok(InputSchemas { operations })
    }

    /// Whether `request` may reach the plugin.
    pub(crate) fn check(&self, request: &Request) -> Result<(), CallFailure> {
        let refuse = |reason: String| {
            Err(CallFailure::InvalidInput {
                operation: request.operation.clone(),
                reason,
            })
        };
        let Some(validator) = self.operations.get(&request.operation) else {
            let mut declared: Vec<&str> = self.operations.keys().map(String::as_str).collect();
            declared.sort_unstable();
            return refuse(format!(
                "the plugin declares no such operation (it declares: {})",
                declared.join(", ")
            ));
        };
        let Some(validator) = validator else {
            return Ok(());
        };
        // The payload is already within the plugin's request limit, and
        // serde_json bounds nesting, so parsing cannot run away.
        let payload: serde_json::Value = match serde_json::from_slice(&request.payload) {
            Ok(payload) => payload,
            Err(err) => return refuse(format!("the payload is not JSON: {err}")),
        };
        let errors: Vec<String> = validator
            .iter_errors(&payload)
            .take(MAX_REPORTED_ERRORS)
            .map(|err| {
                let path = err.instance_path().to_string();
                if path.is_empty() {
                    err.to_string()
                } else {
                    format!("at {path}: {err}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            refuse(errors.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::manifest::{MANIFEST_FORMAT, Operation};
    use crate::error::ErrorKind;

    fn schemas() -> InputSchemas {
        InputSchemas::compile(&Manifest {
            format: MANIFEST_FORMAT,
            name: "greeter".into(),
            version: "1.0.0".into(),
            description: String::new(),
            capabilities: Vec::new(),
            operations: vec![
                Operation {
                    name: "greet".into(),
                    description: String::new(),
                    input: Some(serde_json::json!({
                        "type": "object",
                        "properties": {"name": {"type": "string", "maxLength": 8}},
                        "required": ["name"]
                    })),
                    output: None,
                },
                Operation {
                    name: "echo".into(),
                    description: String::new(),
                    input: None,
                    output: None,
                },
            ],
            requires: Vec::new(),
        })
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
}
