//! `ingest-enrich` on its own: tiers, domains, and the configured source.

use capsule_host::{PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::INGEST_ENRICH;
use serde_json::json;

use crate::grants::json_of;

#[tokio::test]
async fn tiers_follow_the_amount_and_source_comes_from_config() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(INGEST_ENRICH)).config("source", "crm"))
        .await
        .unwrap();
    for (cents, tier) in [
        (100_000, "gold"),
        (99_999, "silver"),
        (10_000, "silver"),
        (9_999, "bronze"),
    ] {
        let input = json!({"id": "1", "name": "A", "email": "a@b.org", "amount_cents": cents});
        let outcome = host
            .call(INGEST_ENRICH, Request::new("process", input.to_string()))
            .await
            .unwrap();
        let out = json_of(&outcome.response);
        assert_eq!(out["tier"], tier, "{cents}");
        assert_eq!(out["domain"], "b.org");
        assert_eq!(out["source"], "crm");
    }
}
