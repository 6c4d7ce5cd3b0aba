//! `order-audit` as an embedder's subscriber target: events the embedder
//! publishes are delivered like a plugin's, and a paused auditor keeps its
//! events until it is resumed.

use std::time::Duration;

use capsule_host::Request;
use capsule_tests::plugins::ORDER_AUDIT;
use serde_json::json;

use crate::order_intake::{audit_count, audit_grants, eventually, order_host};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedder_events_are_delivered_and_wait_while_paused() {
    let host = order_host(audit_grants("audit", &["orders.created"], &[])).await;
    host.pause(ORDER_AUDIT);
    let order = json!({"order_id": "E-1", "item": "lamp", "quantity": 1});
    assert_eq!(
        host.publish("orders.created", order.to_string())
            .await
            .unwrap(),
        1
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    host.resume(ORDER_AUDIT);
    eventually(|| async { (audit_count(&host, ORDER_AUDIT).await == 1).then_some(()) }).await;
    let outcome = host
        .call(
            ORDER_AUDIT,
            Request::new("get", json!({"order_id": "E-1"}).to_string()),
        )
        .await
        .unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&outcome.response.payload).unwrap();
    assert_eq!(stored["order"]["item"], "lamp");
}
