//! Stage 1 of the `ingest` pipeline (`ingest-validate` → `ingest-transform` →
//! `ingest-enrich`): checks one JSON record and passes it on.
//!
//! It demonstrates a pipeline stage: the plugin handles *every* operation the
//! same way, because a pipeline passes its caller's operation to each stage,
//! and its response payload becomes the next stage's request payload.
//!
//! Input: a JSON object `{"id": string, "name": string, "email": string,
//! "amount": number}`; other fields are allowed and kept as they are.
//!
//! - `id`, `name` and `email` must be strings, and not empty once trimmed;
//! - `email` must contain exactly one `@` with text on both sides;
//! - `amount` must be a finite number `>= 0`.
//!
//! A record breaking any rule is refused with `invalid-input` listing every
//! problem at once, e.g. ``invalid record: `email` must contain one @ with
//! text on both sides; `amount` must be >= 0``. A valid record comes back
//! with `id`, `name` and `email` trimmed and `"validated": true` added.

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin, log};
use serde_json::{Map, Value};

/// The string fields every record needs; they are trimmed in place.
const STRING_FIELDS: [&str; 3] = ["id", "name", "email"];

/// Trims the record's string fields in place and returns every problem found,
/// in field order (empty when the record is valid).
fn check(record: &mut Map<String, Value>) -> Vec<String> {
    let mut problems = Vec::new();
    for field in STRING_FIELDS {
        match record.get_mut(field) {
            Some(Value::String(text)) => {
                let trimmed = text.trim();
                if trimmed.len() != text.len() {
                    *text = trimmed.to_owned();
                }
                if text.is_empty() {
                    problems.push(format!("`{field}` must not be empty"));
                } else if field == "email" && !is_address(text) {
                    problems.push("`email` must contain one @ with text on both sides".into());
                }
            }
            Some(other) => {
                problems.push(format!("`{field}` must be a string, not {}", kind(other)))
            }
            None => problems.push(format!("`{field}` is missing")),
        }
    }
    match record.get("amount") {
        Some(Value::Number(number)) => match number.as_f64() {
            Some(amount) if amount.is_finite() && amount >= 0.0 => {}
            Some(amount) if amount.is_finite() => problems.push("`amount` must be >= 0".into()),
            _ => problems.push("`amount` must be a finite number".into()),
        },
        Some(other) => problems.push(format!("`amount` must be a number, not {}", kind(other))),
        None => problems.push("`amount` is missing".into()),
    }
    problems
}

/// Exactly one `@`, with text before and after it.
fn is_address(email: &str) -> bool {
    match email.split_once('@') {
        Some((local, domain)) => !local.is_empty() && !domain.is_empty() && !domain.contains('@'),
        None => false,
    }
}

/// The JSON type of `value`, for error messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Validates `record`: the trimmed record marked `"validated": true`, or the
/// `invalid-input` message listing every problem.
fn validate(record: Value) -> Result<Map<String, Value>, String> {
    let Value::Object(mut record) = record else {
        return Err(format!(
            "invalid record: expected a JSON object, got {}",
            kind(&record)
        ));
    };
    let problems = check(&mut record);
    if !problems.is_empty() {
        return Err(format!("invalid record: {}", problems.join("; ")));
    }
    record.insert("validated".into(), Value::Bool(true));
    Ok(record)
}

struct IngestValidate;

impl Plugin for IngestValidate {
    fn handle(request: Request) -> Result<Response, PluginError> {
        log::info!("validating a record (operation `{}`)", request.operation);
        match validate(request.json::<Value>()?) {
            Ok(record) => {
                log::info!(
                    "record {} is valid",
                    record.get("id").unwrap_or(&Value::Null)
                );
                Response::json(&record)
            }
            Err(problems) => {
                log::info!("refused a record: {problems}");
                Err(PluginError::InvalidInput(problems))
            }
        }
    }
}

export_plugin!(IngestValidate);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_valid_record_is_trimmed_marked_and_keeps_extra_fields() {
        let record = json!({"id": " 7 ", "name": " ada ", "email": "Ada@Example.COM ",
                            "amount": 1234.5, "note": " kept "});
        assert_eq!(
            Value::Object(validate(record).unwrap()),
            json!({"id": "7", "name": "ada", "email": "Ada@Example.COM",
                   "amount": 1234.5, "note": " kept ", "validated": true})
        );
        let zero = json!({"id": "1", "name": "a", "email": "a@b", "amount": 0});
        assert!(validate(zero).is_ok());
    }

    #[test]
    fn every_problem_is_listed() {
        let record = json!({"id": 1, "name": "  ", "email": "nobody", "amount": -1});
        assert_eq!(
            validate(record).unwrap_err(),
            "invalid record: `id` must be a string, not a number; `name` must not be empty; \
             `email` must contain one @ with text on both sides; `amount` must be >= 0"
        );
        let empty = validate(json!({})).unwrap_err();
        for field in ["id", "name", "email", "amount"] {
            assert!(empty.contains(&format!("`{field}` is missing")), "{empty}");
        }
        assert!(validate(json!([1])).unwrap_err().contains("JSON object"));
    }

    #[test]
    fn an_email_needs_exactly_one_at_with_text_around_it() {
        for good in ["a@b", "ada@example.com"] {
            assert!(is_address(good), "{good}");
        }
        for bad in ["ada", "@b", "a@", "a@b@c", "@"] {
            assert!(!is_address(bad), "{bad}");
        }
    }
}
