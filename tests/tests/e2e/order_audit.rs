//! `order-audit` as an embedder's subscriber target: events the embedder
//! publishes are delivered like a plugin's, and a paused auditor keeps its
//! events until it is resumed.

use std::time::{Duration, Instant};

use capsule_host::{ErrorKind, Request};
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
    // Nothing reaches the paused auditor: the event stays in its queue, no
    // delivery is counted, and calls are refused, for as long as we watch.
    let watch_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < watch_until {
        assert_eq!(host.status(ORDER_AUDIT).unwrap().queued_events, 1);
        assert!(
            !host
                .metrics_text()
                .contains(r#"capsule_events_total{plugin="order-audit""#),
            "an event was delivered to a paused plugin"
        );
        let refused = host
            .call(ORDER_AUDIT, Request::new("count", "{}"))
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Paused);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
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
    // The delivery leaves the queue when `on-event` has returned, a moment
    // after its kv write is visible.
    eventually(|| async { (host.status(ORDER_AUDIT).unwrap().queued_events == 0).then_some(()) })
        .await;
    assert!(
        host.metrics_text()
            .contains(r#"capsule_events_total{plugin="order-audit",outcome="ack"} 1"#)
    );
}

/// Where each of `orders` was stored among the stored orders (1 = first),
/// once all are stored.
pub async fn positions(host: &capsule_host::Host, orders: &[&str]) -> Vec<i64> {
    let mut positions = Vec::new();
    for order_id in orders {
        let position = eventually(|| async {
            let outcome = host
                .call(
                    ORDER_AUDIT,
                    Request::new("get", json!({"order_id": order_id}).to_string()),
                )
                .await
                .unwrap();
            let stored: serde_json::Value =
                serde_json::from_slice(&outcome.response.payload).unwrap();
            stored["position"].as_i64()
        })
        .await;
        positions.push(position);
    }
    positions
}

/// A flaky order (retried twice, `retry_ms` apart) published before two
/// plain ones.
pub fn flaky_then_plain(retry_ms: u64) -> [(&'static str, serde_json::Value); 3] {
    [
        (
            "F-1",
            json!({"order_id": "F-1", "item": "vase", "quantity": 1, "flaky": true,
                   "retry_ms": retry_ms}),
        ),
        (
            "P-1",
            json!({"order_id": "P-1", "item": "cup", "quantity": 1}),
        ),
        (
            "P-2",
            json!({"order_id": "P-2", "item": "jug", "quantity": 1}),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_events_wait_for_a_retried_one() {
    // Without order, the plain ones have two retries' time (2 s) to go
    // first, however slow the machine.
    for (ordered, retry_ms, expected) in [(true, 20, [1, 2, 3]), (false, 1000, [3, 1, 2])] {
        let mut grants = audit_grants("audit", &["orders.created"], &[]);
        grants.events.ordered = ordered;
        let host = order_host(grants).await;
        for (_, order) in flaky_then_plain(retry_ms) {
            host.publish("orders.created", order.to_string())
                .await
                .unwrap();
        }
        // In order, the flaky order's retries hold the others back; without,
        // they are stored while it waits.
        assert_eq!(
            positions(&host, &["F-1", "P-1", "P-2"]).await,
            expected,
            "ordered = {ordered}"
        );
    }
}
