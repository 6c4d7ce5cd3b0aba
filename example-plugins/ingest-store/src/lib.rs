//! A pipeline stage that keeps what passes through it: it stores the record
//! in its kv namespace under `<prefix>:<id>`, counts it under
//! `<prefix>:count`, publishes `ingest.stored` with the key, and answers the
//! record unchanged for the next stage.
//!
//! It demonstrates transactional pipelines (`[pipelines.NAME] transaction =
//! true`): in the demo's `ingest-tx`, one instance archives the raw record
//! early and another stores the enriched one last; when the last stage
//! refuses a record, the archive's write, its count and its event are
//! discarded with it, because the stages commit together or not at all.
//!
//! It also demonstrates typed configuration: its settings are a struct
//! whose JSON Schema goes into the signed manifest (`config_schema`), so the
//! host checks the operator's values before the plugin runs — `max_cents =
//! "lots"` or an unknown key refuses the load, naming the policy line — and
//! the plugin reads them with `config::typed`:
//!
//! - `prefix` (a string, default `record`);
//! - `max_cents` (an integer ≥ 0, optional): a record whose integer
//!   `amount_cents` is larger is refused with `invalid-input` before
//!   anything is written.

use capsule_guest::{Plugin, PluginError, Request, Response, config, events, export_plugin, kv};
use serde::Deserialize;
use serde_json::{Value, json};

/// The operator's settings.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Keys are `<prefix>:<id>`.
    #[serde(default = "default_prefix")]
    #[schemars(length(min = 1, max = 64))]
    prefix: String,
    /// The largest `amount_cents` stored; larger records are refused.
    #[serde(default)]
    #[schemars(range(min = 0))]
    max_cents: Option<i64>,
}

fn default_prefix() -> String {
    "record".to_owned()
}

struct IngestStore;

impl Plugin for IngestStore {
    fn config_schema() -> Option<Value> {
        Some(config::schema::<Settings>())
    }

    fn handle(request: Request) -> Result<Response, PluginError> {
        let settings: Settings = config::typed()?;
        let record: Value = request.json()?;
        let id = match record.get("id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => {
                return Err(PluginError::InvalidInput(
                    "a record needs a string `id`".into(),
                ));
            }
        };
        let prefix = settings.prefix;
        if let Some(max) = settings.max_cents {
            let cents = record.get("amount_cents").and_then(Value::as_i64);
            if cents.is_some_and(|cents| cents > max) {
                return Err(PluginError::InvalidInput(format!(
                    "record {id}: amount_cents over the limit of {max}"
                )));
            }
        }
        let key = format!("{prefix}:{id}");
        kv::set(&key, &request.payload)?;
        let count = kv::increment(&format!("{prefix}:count"), 1)?;
        events::publish_json("ingest.stored", &json!({ "key": key, "count": count }))?;
        Ok(Response::bytes(request.payload))
    }
}

export_plugin!(IngestStore);

#[cfg(test)]
mod tests {
    use capsule_guest::testing::MockHost;

    use super::*;

    #[test]
    fn stores_counts_and_announces_or_refuses_before_writing() {
        let host = MockHost::new()
            .kv()
            .publish("ingest.*")
            .config("prefix", "final")
            .config_value("max_cents", json!(100));
        let ok = r#"{"id":"a","amount_cents":100}"#;
        let response = host.call::<IngestStore>(Request::new("x", ok)).unwrap();
        assert_eq!(response.payload, ok.as_bytes());
        assert_eq!(host.kv_value("final:a").as_deref(), Some(ok.as_bytes()));
        assert_eq!(host.published().len(), 1);
        let big = r#"{"id":"b","amount_cents":101}"#;
        let err = host
            .call::<IngestStore>(Request::new("x", big))
            .unwrap_err();
        assert!(matches!(err, PluginError::InvalidInput(_)), "{err:?}");
        assert_eq!(host.kv_value("final:b"), None);
        assert_eq!(host.kv_keys(), ["final:a", "final:count"]);
    }
}
