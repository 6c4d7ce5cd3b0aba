//! The event bus with `order-intake` (producer) and `order-audit` (consumer):
//! delivery, retry-after, dead letters, forwarding (granted or not), a
//! subscriber without the grant, and embedder publish/subscribe.

use std::time::{Duration, Instant};

use capsule_host::services::events::TopicPattern;
use capsule_host::services::kv::KvGrant;
use capsule_host::{BusOptions, Grants, Host, PluginError, PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{ORDER_AUDIT, ORDER_INTAKE};
use serde_json::{Value, json};

use crate::grants::{call_json, json_of, plugin_error};

fn patterns(list: &[&str]) -> Vec<TopicPattern> {
    list.iter()
        .map(|p| TopicPattern::parse(p).unwrap())
        .collect()
}

fn intake_grants() -> Grants {
    let mut grants = Grants::default();
    grants.events.publish = patterns(&["orders.*"]);
    grants
}

pub fn audit_grants(namespace: &str, subscribe: &[&str], publish: &[&str]) -> Grants {
    let mut grants = Grants {
        kv: Some(KvGrant::new(namespace)),
        ..Grants::default()
    };
    grants.events.subscribe = patterns(subscribe);
    grants.events.publish = patterns(publish);
    grants
}

/// A host with the intake and an audit plugin, with a short retry backoff.
pub async fn order_host(audit: Grants) -> Host {
    let host = capsule_tests::host_builder()
        .bus_options(BusOptions {
            max_attempts: 4,
            ..BusOptions::default()
        })
        .build()
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(ORDER_INTAKE)).grants(intake_grants()))
        .await
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(ORDER_AUDIT)).grants(audit))
        .await
        .unwrap();
    host
}

/// Polls `probe` until it returns `Some`, for up to five seconds.
pub async fn eventually<T, F, Fut>(mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "the expected event effect did not happen in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to five seconds) until no plugin has an event queued, being
/// delivered or parked for a retry: whatever the bus was going to do, it did.
pub async fn bus_quiet(host: &Host) {
    eventually(|| async {
        host.statuses()
            .iter()
            .all(|status| status.queued_events == 0)
            .then_some(())
    })
    .await;
}

pub async fn audit_count(host: &Host, plugin: &str) -> i64 {
    call_json(host, plugin, "count", json!({})).await["count"]
        .as_i64()
        .unwrap()
}

fn order(id: &str, quantity: u32) -> Value {
    json!({"order_id": id, "item": "teapot", "quantity": quantity})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_order_reaches_the_auditor() {
    let host = order_host(audit_grants("audit", &["orders.created"], &[])).await;
    let outcome = host
        .call(
            ORDER_INTAKE,
            Request::new("place", order("A-1", 2).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(
        json_of(&outcome.response),
        json!({"accepted": true, "order_id": "A-1"})
    );
    assert_eq!(outcome.events.len(), 1);
    assert_eq!(outcome.events[0].topic, "orders.created");
    eventually(|| async { (audit_count(&host, ORDER_AUDIT).await == 1).then_some(()) }).await;
    let stored = call_json(&host, ORDER_AUDIT, "get", json!({"order_id": "A-1"})).await;
    assert_eq!(stored["order"]["item"], "teapot");
    assert!(host.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_redelivers_until_the_plugin_acks() {
    let host = order_host(audit_grants("audit", &["orders.created"], &[])).await;
    let flaky = json!({"order_id": "F-1", "item": "vase", "quantity": 1, "flaky": true});
    host.call(ORDER_INTAKE, Request::new("place", flaky.to_string()))
        .await
        .unwrap();
    eventually(|| async { (audit_count(&host, ORDER_AUDIT).await == 1).then_some(()) }).await;
    let attempts = call_json(&host, ORDER_AUDIT, "attempts", json!({"order_id": "F-1"})).await;
    assert_eq!(
        attempts["attempts"], 3,
        "two retry-after answers, then an ack"
    );
    assert!(
        host.metrics_text()
            .contains(r#"capsule_events_total{plugin="order-audit",outcome="retry"} 2"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_events_become_dead_letters() {
    let host = order_host(audit_grants("audit", &["orders.created"], &[])).await;
    let delivered = host
        .publish("orders.created", "not json at all")
        .await
        .unwrap();
    assert_eq!(delivered, 1);
    let dead = eventually(|| async { host.dead_letters().into_iter().next() }).await;
    assert_eq!(dead.subscriber, ORDER_AUDIT);
    assert!(
        dead.reason.contains("rejected: malformed order"),
        "{}",
        dead.reason
    );
    assert_eq!(dead.event.source, "host");
    assert_eq!(audit_count(&host, ORDER_AUDIT).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_orders_are_forwarded_when_granted() {
    let host = order_host(audit_grants(
        "audit",
        &["orders.created"],
        &["orders.large"],
    ))
    .await;
    let mut large = host.subscribe("orders.large").unwrap();
    host.call(
        ORDER_INTAKE,
        Request::new("place", order("L-1", 500).to_string()),
    )
    .await
    .unwrap();
    let forwarded = tokio::time::timeout(Duration::from_secs(5), large.recv())
        .await
        .expect("the forward arrives")
        .unwrap();
    assert_eq!(forwarded.topic, "orders.large");
    assert_eq!(forwarded.source, ORDER_AUDIT);
    let payload: Value = serde_json::from_slice(&forwarded.payload).unwrap();
    assert_eq!(payload["order_id"], "L-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_without_a_publish_grant_is_a_dead_letter() {
    let host = order_host(audit_grants("audit", &["orders.created"], &[])).await;
    let mut large = host.subscribe("orders.large").unwrap();
    host.call(
        ORDER_INTAKE,
        Request::new("place", order("L-2", 500).to_string()),
    )
    .await
    .unwrap();
    let dead = eventually(|| async { host.dead_letters().into_iter().next() }).await;
    assert!(
        dead.reason
            .contains("forwarding to `orders.large` was not granted"),
        "{}",
        dead.reason
    );
    assert!(large.try_recv().is_none(), "nothing was forwarded");
    // The subscriber that tried to forward is counted as refused.
    host.audit().flush();
    let records = host.audit().recent(100);
    assert!(
        records
            .iter()
            .any(|r| r.who == "plugin:order-audit" && r.action == "events" && r.count == Some(1)),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_without_the_subscribe_grant_receives_nothing() {
    let host = order_host(audit_grants("audit", &["orders.created"], &[])).await;
    host.load(
        PluginSpec::from_path(plugin_path(ORDER_AUDIT))
            .with_name("audit-ungranted")
            .grants(audit_grants("audit-ungranted", &["invoices.*"], &[])),
    )
    .await
    .unwrap();
    for i in 0..3 {
        host.call(
            ORDER_INTAKE,
            Request::new("place", order(&format!("N-{i}"), 1).to_string()),
        )
        .await
        .unwrap();
    }
    eventually(|| async { (audit_count(&host, ORDER_AUDIT).await == 3).then_some(()) }).await;
    // Events are routed before `call` returns: none was ever queued for the
    // plugin without the grant.
    assert_eq!(host.status("audit-ungranted").unwrap().queued_events, 0);
    assert!(
        !host
            .metrics_text()
            .contains(r#"capsule_events_total{plugin="audit-ungranted""#)
    );
    assert_eq!(audit_count(&host, "audit-ungranted").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_deliveries_give_up_after_the_bounded_attempts() {
    // The auditor has no kv grant: storing fails on every delivery.
    let mut grants = Grants::default();
    grants.events.subscribe = patterns(&["orders.created"]);
    let host = order_host(grants).await;
    host.call(
        ORDER_INTAKE,
        Request::new("place", order("X-1", 1).to_string()),
    )
    .await
    .unwrap();
    let dead = eventually(|| async { host.dead_letters().into_iter().next() }).await;
    assert_eq!(dead.attempts, 4);
    assert!(
        dead.reason.contains("gave up after 4 attempts"),
        "{}",
        dead.reason
    );
    assert!(dead.reason.contains("denied"), "{}", dead.reason);
}

#[tokio::test]
async fn publishing_without_a_grant_is_denied() {
    let host = capsule_tests::host_builder().build().unwrap();
    host.load(PluginSpec::from_path(plugin_path(ORDER_INTAKE)))
        .await
        .unwrap();
    let err = plugin_error(&host, ORDER_INTAKE, "place", order("D-1", 1)).await;
    assert!(matches!(err, PluginError::Denied(_)), "{err:?}");
    assert!(host.publish("bad topic", "x").await.is_err());
}

#[tokio::test]
async fn without_tracing_an_events_trace_context_is_handed_on_unchanged() {
    // No `[host.telemetry]`: no spans, but a caller's trace context still
    // reaches the events its call publishes.
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(ORDER_INTAKE)).grants(intake_grants()))
        .await
        .unwrap();
    let mut events = host.subscribe("orders.>").unwrap();
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let place =
        Request::new("place", order("T-9", 1).to_string()).with_metadata("traceparent", caller);
    host.call(ORDER_INTAKE, place).await.unwrap();
    let event = events.try_recv().expect("the order was published");
    assert_eq!(event.traceparent.as_deref(), Some(caller));
    // A malformed one is not handed on.
    let place = Request::new("place", order("T-10", 1).to_string())
        .with_metadata("traceparent", "not-a-trace");
    host.call(ORDER_INTAKE, place).await.unwrap();
    assert_eq!(events.try_recv().unwrap().traceparent, None);
}
