//! `ingest-transform` on its own: normalises a validated record.

use capsule_host::Request;
use serde_json::json;

use crate::grants::json_of;
use crate::ingest_validate::ingest_host;

#[tokio::test]
async fn normalises_name_email_and_amount() {
    let host = ingest_host().await;
    let input = json!({"id": "1", "name": "grace  hopper", "email": "G@NAVY.MIL", "amount": 0.005, "validated": true});
    let outcome = host
        .call("transform", Request::new("process", input.to_string()))
        .await
        .unwrap();
    let out = json_of(&outcome.response);
    assert_eq!(out["name"], "Grace Hopper");
    assert_eq!(out["email"], "g@navy.mil");
    assert_eq!(out["amount_cents"], 1, "rounded half away from zero");
    assert!(out.get("amount").is_none());
    let err = host
        .call("transform", Request::new("process", "[1,2,3]"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), capsule_host::ErrorKind::PluginError);
}
