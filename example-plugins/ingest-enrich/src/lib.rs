//! Stage 3 of the `ingest` pipeline (`ingest-validate` → `ingest-transform` →
//! `ingest-enrich`): adds derived and configured fields to a record.
//!
//! It demonstrates a pipeline stage that reads operator configuration: the
//! `source` it stamps on each record is the config key `source` (policy
//! `config = { source = "crm" }` or `capsule run --set source=crm`), and
//! `capsule` when the operator set none. Like every stage it handles any
//! operation the same way.
//!
//! Input: a JSON object with an integer `amount_cents` and a string `email`
//! (what `ingest-transform` answers). Output: the same object plus
//!
//! - `tier`: `gold` from 100000 cents, `silver` from 10000, else `bronze`;
//! - `domain`: the part of `email` after its `@`;
//! - `source`: the configured source.
//!
//! A record without those fields is refused with `invalid-input`.

use capsule_guest::{Plugin, PluginError, Request, Response, config, export_plugin, log};
use serde_json::{Map, Value};

/// The `source` when the operator configured none.
const DEFAULT_SOURCE: &str = "capsule";

/// The customer tier for an amount in cents.
fn tier(cents: i64) -> &'static str {
    match cents {
        100_000.. => "gold",
        10_000.. => "silver",
        _ => "bronze",
    }
}

/// `record` with `tier`, `domain` and `source` added, or the `invalid-input`
/// message.
fn enrich(record: Value, source: String) -> Result<Map<String, Value>, String> {
    let Value::Object(mut record) = record else {
        return Err("invalid record: expected a JSON object".into());
    };
    let cents = match record.get("amount_cents") {
        Some(value) => value
            .as_i64()
            .ok_or("invalid record: `amount_cents` must be an integer")?,
        None => return Err("invalid record: `amount_cents` is missing".into()),
    };
    let domain = match record.get("email") {
        Some(value) => value
            .as_str()
            .and_then(|email| email.split_once('@'))
            .map(|(_, domain)| domain.to_owned())
            .ok_or("invalid record: `email` must be a string with an @")?,
        None => return Err("invalid record: `email` is missing".into()),
    };
    record.insert("tier".into(), Value::from(tier(cents)));
    record.insert("domain".into(), Value::String(domain));
    record.insert("source".into(), Value::String(source));
    Ok(record)
}

struct IngestEnrich;

impl Plugin for IngestEnrich {
    fn handle(request: Request) -> Result<Response, PluginError> {
        log::info!("enriching a record (operation `{}`)", request.operation);
        let record = request.json::<Value>()?;
        let source = config::get("source")?.unwrap_or_else(|| DEFAULT_SOURCE.to_owned());
        let record = enrich(record, source).map_err(PluginError::InvalidInput)?;
        log::info!(
            "record {} is tier {}",
            record.get("id").unwrap_or(&Value::Null),
            record.get("tier").unwrap_or(&Value::Null)
        );
        Response::json(&record)
    }
}

export_plugin!(IngestEnrich);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tiers_start_at_their_thresholds() {
        for (cents, expected) in [
            (100_000, "gold"),
            (99_999, "silver"),
            (10_000, "silver"),
            (9_999, "bronze"),
            (0, "bronze"),
            (-5, "bronze"),
        ] {
            assert_eq!(tier(cents), expected, "{cents}");
        }
    }

    #[test]
    fn a_record_gains_tier_domain_and_source() {
        let record = json!({"id": "7", "email": "ada@example.com", "amount_cents": 123450});
        assert_eq!(
            Value::Object(enrich(record, "crm".into()).unwrap()),
            json!({"id": "7", "email": "ada@example.com", "amount_cents": 123450,
                   "tier": "gold", "domain": "example.com", "source": "crm"})
        );
    }

    #[test]
    fn bad_records_are_refused() {
        let source = || DEFAULT_SOURCE.to_owned();
        assert!(enrich(json!("x"), source()).is_err());
        assert_eq!(
            enrich(json!({"email": "a@b"}), source()).unwrap_err(),
            "invalid record: `amount_cents` is missing"
        );
        assert_eq!(
            enrich(json!({"email": "a@b", "amount_cents": 1.5}), source()).unwrap_err(),
            "invalid record: `amount_cents` must be an integer"
        );
        assert!(
            enrich(json!({"email": "nobody", "amount_cents": 1}), source())
                .unwrap_err()
                .contains("`email`")
        );
    }
}
