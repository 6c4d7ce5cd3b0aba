//! `event-storm` turns the bus against the host: a forward loop ends as a
//! dead letter at the hop limit; a retry after 49 days is clamped; a plugin
//! that fans out onto its own queue is refused at once instead of waiting on
//! itself; a slow subscriber does not slow down the calls that publish to
//! it; dead letters stay bounded. `hello` keeps answering throughout.

use std::time::{Duration, Instant};

use capsule_host::services::events::TopicPattern;
use capsule_host::{BusOptions, Grants, Host, Limits, PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{EVENT_STORM, HELLO};

use crate::order_intake::{bus_quiet, eventually};
use crate::sandbox::assert_hello_answers;

fn storm_grants() -> Grants {
    let mut grants = Grants::default();
    grants.events.publish = vec![TopicPattern::parse("storm.>").unwrap()];
    grants.events.subscribe = vec![TopicPattern::parse("storm.>").unwrap()];
    grants
}

async fn storm_host(options: BusOptions) -> Host {
    let host = capsule_tests::host_builder()
        .bus_options(options)
        .build()
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(EVENT_STORM)).grants(storm_grants()))
        .await
        .unwrap();
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_loop_ends_as_a_dead_letter_at_the_hop_limit() {
    let host = storm_host(BusOptions {
        max_hops: 5,
        ..BusOptions::default()
    })
    .await;
    host.publish("storm.loop", "round and round").await.unwrap();
    let dead = eventually(|| async { host.dead_letters().into_iter().next() }).await;
    assert!(dead.reason.contains("hop limit"), "{}", dead.reason);
    assert_eq!(dead.event.hops, 6, "one hop past the limit");
    assert_eq!(dead.event.topic, "storm.loop");
    // It ended: nothing more circulates.
    bus_quiet(&host).await;
    assert_eq!(host.dead_letters().len(), 1);
    assert_hello_answers(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_49_days_is_clamped_to_the_bus_maximum() {
    let host = storm_host(BusOptions {
        max_retry_delay: Duration::from_millis(50),
        max_attempts: 3,
        ..BusOptions::default()
    })
    .await;
    host.publish("storm.retry", "later").await.unwrap();
    let dead = eventually(|| async { host.dead_letters().into_iter().next() }).await;
    assert!(
        dead.reason.contains("gave up after 3 attempts"),
        "{}",
        dead.reason
    );
    assert_eq!(dead.attempts, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_fanning_out_onto_its_own_queue_is_refused_without_waiting() {
    // Waiting for room in its own queue would make the delivery worker wait
    // on itself for the queue timeout, per event.
    let host = storm_host(BusOptions {
        queue: 4,
        queue_timeout: Duration::from_secs(30),
        max_hops: 2,
        ..BusOptions::default()
    })
    .await;
    host.publish("storm.fanout", "x").await.unwrap();
    let refused = eventually(|| async {
        let dead = host.dead_letters();
        (dead.len() >= 60).then_some(dead)
    })
    .await;
    assert!(
        refused
            .iter()
            .any(|d| d.reason.contains("queue stayed full")),
        "{:?}",
        refused.first()
    );
    assert_hello_answers(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_does_not_slow_its_publishers_down() {
    let host = storm_host(BusOptions {
        queue: 2,
        queue_bytes: 64 << 10,
        queue_timeout: Duration::from_secs(60),
        ..BusOptions::default()
    })
    .await;
    // A slow subscriber (200 ms per event) with room for two events.
    let mut sink = Grants::default();
    sink.events.subscribe = vec![TopicPattern::parse("storm.slow").unwrap()];
    host.load(
        PluginSpec::from_path(plugin_path(EVENT_STORM))
            .with_name("sink")
            .grants(sink),
    )
    .await
    .unwrap();
    host.unload(EVENT_STORM).await;
    host.load(
        PluginSpec::from_path(plugin_path(EVENT_STORM))
            .grants({
                let mut grants = Grants::default();
                grants.events.publish = vec![TopicPattern::parse("storm.>").unwrap()];
                grants
            })
            .limits(Limits {
                timeout: Duration::from_millis(300),
                queue_timeout: Duration::from_millis(200),
                ..Limits::default()
            }),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let outcome = host
        .call(
            EVENT_STORM,
            Request::new(
                "publish",
                r#"{"topic":"storm.slow","count":40,"bytes":1024}"#,
            ),
        )
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(
        outcome.response.text(),
        Some("40"),
        "the plugin published all 40"
    );
    // What does not fit the sink's queue now is a dead letter at once: the
    // caller does not wait for the sink (40 events × 200 ms).
    assert!(took < Duration::from_secs(2), "the caller waited {took:?}");
    let dead = eventually(|| async {
        let dead = host.dead_letters();
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert!(
        dead.iter()
            .all(|d| d.subscriber == "sink" && d.reason.contains("not queued")),
        "{:?}",
        dead.first()
    );
    assert_hello_answers(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_keep_bounded_reasons_and_bytes() {
    let budget = 64 << 10;
    let host = storm_host(BusOptions {
        dead_letter_bytes: budget,
        ..BusOptions::default()
    })
    .await;
    // 60 KiB payloads (spaces, then the reason's length) with 500 KB
    // reasons: far more than the budget keeps.
    let payload = format!("{}500000", " ".repeat(60 << 10));
    for _ in 0..20 {
        host.publish("storm.reject", payload.clone()).await.unwrap();
    }
    // Every one was delivered and rejected before we look at what is kept.
    bus_quiet(&host).await;
    assert!(
        host.metrics_text()
            .contains(r#"capsule_events_total{plugin="event-storm",outcome="reject"} 20"#)
    );
    let dead = host.dead_letters();
    assert!(!dead.is_empty());
    for letter in &dead {
        assert!(letter.reason.len() <= capsule_host::DeadLetter::MAX_REASON_BYTES + 3);
        assert!(
            letter.reason.starts_with("rejected: r"),
            "{}",
            letter.reason
        );
        assert!(
            letter.payload_truncated,
            "a 60 KiB payload is kept truncated"
        );
        assert!(letter.event.payload.len() <= budget / 8);
    }
    let kept: usize = dead
        .iter()
        .map(|d| d.reason.len() + d.event.payload.len() + d.subscriber.len() + d.event.topic.len())
        .sum();
    assert!(kept <= budget, "{kept} bytes kept");
    assert!(
        dead.len() < 20,
        "older letters were dropped: {}",
        dead.len()
    );
}
