//! Several hosts on one NATS (`[host.backend] kind = "nats"`): they share
//! one key-value store, exactly; an event published on one host is handled
//! by one host's subscriber, retried and dead-lettered across hosts, and
//! survives the host handling it going away; a host whose NATS goes away
//! fails the calls that need it with `unavailable` until NATS is back; a
//! plugin loaded on one host is called from another, within its own limits.

use std::time::Duration;

use capsule_host::backend::local::NatsServer;
use capsule_host::backend::{Backend, NatsOptions};
use capsule_host::services::kv::KvGrant;
use capsule_host::{
    BusOptions, CallFailure, ErrorKind, Grants, HealthCheck, Host, Limits, PluginError,
    PluginHealthState, PluginSpec, Request,
};
use capsule_tests::plugins::{
    EVENT_STORM, HELLO, KV_COUNTER, ORDER_AUDIT, ORDER_INTAKE, SPIN_LOOP,
};
use capsule_tests::{host_builder, plugin_path};
use serde_json::{Value, json};

use crate::grants::call_json;
use crate::order_intake::{audit_count, audit_grants};

async fn counter_host(url: &str, prefix: &str) -> Host {
    let backend = Backend::Nats(NatsOptions::new(url).prefix(prefix));
    let host = host_builder().backend(backend).build().unwrap();
    host.load(
        PluginSpec::from_path(plugin_path(KV_COUNTER)).grants(Grants {
            kv: Some(KvGrant::new("counter")),
            ..Grants::default()
        }),
    )
    .await
    .unwrap();
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_stays_exact_across_two_hosts() {
    let server = NatsServer::shared();
    let hosts = [
        counter_host(&server.url(), "exact").await,
        counter_host(&server.url(), "exact").await,
    ];
    let mut tasks = Vec::new();
    for host in &hosts {
        for _ in 0..8 {
            let host = host.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..100 {
                    let out =
                        call_json(&host, KV_COUNTER, "increment", json!({"key": "hits"})).await;
                    seen.push(out["count"].as_i64().unwrap());
                }
                seen
            }));
        }
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.extend(task.await.unwrap());
    }
    seen.sort_unstable();
    // Every increment committed exactly once, each saw a distinct count.
    assert_eq!(seen, (1..=1600).collect::<Vec<_>>());
    for host in &hosts {
        let out = call_json(host, KV_COUNTER, "get", json!({"key": "hits"})).await;
        assert_eq!(out["count"], 1600);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_with_different_prefixes_do_not_share() {
    let server = NatsServer::shared();
    let left = counter_host(&server.url(), "left").await;
    let right = counter_host(&server.url(), "right").await;
    call_json(&left, KV_COUNTER, "increment", json!({"key": "k"})).await;
    let out = call_json(&right, KV_COUNTER, "get", json!({"key": "k"})).await;
    assert_eq!(out["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_nats_fails_kv_calls_as_unavailable_until_it_returns() {
    // A server of this test's own: it is stopped and started again.
    let mut server = NatsServer::start().unwrap();
    let host = counter_host(&server.url(), "restart").await;
    let increment = || {
        let host = host.clone();
        async move {
            host.call(
                KV_COUNTER,
                Request::new("increment", json!({"key": "k"}).to_string()),
            )
            .await
        }
    };
    let count = |out: capsule_host::CallOutcome| -> i64 {
        let value: Value = serde_json::from_slice(&out.response.payload).unwrap();
        value["count"].as_i64().unwrap()
    };
    assert_eq!(count(increment().await.unwrap()), 1);

    server.stop();
    // Loading a plugin does not wait for NATS (it is served to other hosts
    // once NATS is back).
    let loaded = tokio::time::timeout(
        Duration::from_secs(10),
        host.load(PluginSpec::from_path(plugin_path(HELLO)).with_name("late")),
    )
    .await
    .expect("a load does not wait for NATS to come back");
    loaded.unwrap();
    let err = increment().await.unwrap_err();
    assert!(matches!(&err.cause, CallFailure::Unavailable(_)), "{err:?}");
    // Not ready: the backend is gone, and kv-counter's own check (a read
    // of its store) fails.
    let readiness = host.readiness().await;
    assert!(!readiness.ready);
    assert_eq!(readiness.backend.kind, "nats");
    assert!(!readiness.backend.reachable);
    let counter = readiness
        .plugins
        .iter()
        .find(|p| p.name == KV_COUNTER)
        .unwrap();
    assert_eq!(counter.state, PluginHealthState::Degraded, "{counter:?}");
    match &counter.check {
        HealthCheck::Unhealthy { reason } => assert!(reason.contains("Unavailable"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // An event NATS did not store is never reported published.
    let refused = host.publish("orders.created", "{}").await.unwrap_err();
    assert!(refused.contains("did not store"), "{refused}");

    server.restart().unwrap();
    // The client reconnects by itself; nothing acknowledged was lost.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        match increment().await {
            Ok(out) => break count(out),
            Err(err) if std::time::Instant::now() < deadline => {
                assert!(matches!(&err.cause, CallFailure::Unavailable(_)), "{err:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("NATS came back but calls still fail: {err:?}"),
        }
    };
    assert_eq!(after, 2);
    assert!(host.readiness().await.backend.reachable);
}

/// A host of deployment `prefix` with `order-audit` subscribed to
/// `subscribe`; events that no host settles come back after `ack_wait`.
async fn audit_host(url: &str, prefix: &str, subscribe: &str, ack_wait: Duration) -> Host {
    let host = host_builder()
        .backend(Backend::Nats(NatsOptions::new(url).prefix(prefix)))
        .bus_options(BusOptions {
            max_attempts: 4,
            ack_wait,
            ..BusOptions::default()
        })
        .build()
        .unwrap();
    host.load(
        PluginSpec::from_path(plugin_path(ORDER_AUDIT)).grants(audit_grants(
            "audit",
            &[subscribe],
            &["orders.large"],
        )),
    )
    .await
    .unwrap();
    host
}

/// Events this host's `order-audit` acknowledged, from its metrics.
fn acks(host: &Host) -> u64 {
    let line = format!(r#"capsule_events_total{{plugin="{ORDER_AUDIT}",outcome="ack"}} "#);
    host.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Polls `probe` until it returns `Some`, for up to 30 seconds (events
/// across hosts may wait for an `ack_wait` to pass).
async fn within_30s<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: not in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stored(host: &Host, order_id: &str) -> bool {
    !call_json(host, ORDER_AUDIT, "get", json!({"order_id": order_id})).await["order"].is_null()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_on_one_host_is_handled_once_across_two() {
    let server = NatsServer::shared();
    let wait = Duration::from_secs(30);
    let a = audit_host(&server.url(), "once", "orders.created", wait).await;
    let b = audit_host(&server.url(), "once", "orders.created", wait).await;
    for i in 0..200 {
        let order = json!({"order_id": format!("o-{i}"), "quantity": 1});
        let took = a
            .publish("orders.created", order.to_string())
            .await
            .unwrap();
        assert_eq!(took, 1, "stored on the deployment's stream");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while audit_count(&b, ORDER_AUDIT).await < 200 {
        if std::time::Instant::now() > deadline {
            let letters = a.deployment_dead_letters().await.unwrap();
            panic!(
                "stored {} of 200; acks a {} b {}; dead letters {letters:#?}",
                audit_count(&b, ORDER_AUDIT).await,
                acks(&a),
                acks(&b)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing handled twice: no more acknowledgements than events, and the
    // count (one kv increment per handled event) stays at 200.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(audit_count(&a, ORDER_AUDIT).await, 200);
    let (on_a, on_b) = (acks(&a), acks(&b));
    assert_eq!(on_a + on_b, 200, "a {on_a}, b {on_b}");
    // Both hosts pull from the one consumer: each handled a share.
    assert!(on_a > 0 && on_b > 0, "a {on_a}, b {on_b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_dead_letters_work_across_hosts() {
    let server = NatsServer::shared();
    let wait = Duration::from_secs(30);
    let a = audit_host(&server.url(), "retry", "orders.created", wait).await;
    let b = audit_host(&server.url(), "retry", "orders.created", wait).await;
    // Asks for a retry twice (any host may take the next attempt), then
    // stores it.
    let flaky = json!({"order_id": "F-1", "flaky": true});
    a.publish("orders.created", flaky.to_string())
        .await
        .unwrap();
    a.publish("orders.created", "not json").await.unwrap();
    within_30s("the flaky order stored", || async {
        stored(&b, "F-1").await.then_some(())
    })
    .await;
    let attempts = call_json(&a, ORDER_AUDIT, "attempts", json!({"order_id": "F-1"})).await;
    assert_eq!(
        attempts["attempts"], 3,
        "two retry-after answers, then an ack"
    );
    // The rejected event is one dead letter of the deployment, read from
    // either host, whichever handled it.
    for host in [&a, &b] {
        let letters = within_30s("the dead letter", || async {
            let letters = host.deployment_dead_letters().await.unwrap();
            (!letters.is_empty()).then_some(letters)
        })
        .await;
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(letters[0].subscriber, ORDER_AUDIT);
        assert_eq!(letters[0].event.payload, b"not json");
        assert!(
            letters[0].reason.starts_with("rejected: malformed order"),
            "{}",
            letters[0].reason
        );
    }
    assert_eq!(audit_count(&a, ORDER_AUDIT).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_goes_away_mid_stream_loses_no_event() {
    let server = NatsServer::shared();
    // Events the stopped host took and never settled come back this soon.
    let wait = Duration::from_secs(2);
    let a = audit_host(&server.url(), "crash", "orders.created", wait).await;
    let b = audit_host(&server.url(), "crash", "orders.created", wait).await;
    for i in 0..300 {
        let order = json!({"order_id": format!("c-{i}"), "quantity": 1});
        a.publish("orders.created", order.to_string())
            .await
            .unwrap();
    }
    within_30s("b handled some", || async { (acks(&b) > 0).then_some(()) }).await;
    // Host B stops at once, in the middle of the stream.
    b.shutdown(Duration::ZERO).await;
    drop(b);
    within_30s("every order stored", || async {
        (audit_count(&a, ORDER_AUDIT).await >= 300).then_some(())
    })
    .await;
    for i in 0..300 {
        assert!(stored(&a, &format!("c-{i}")).await, "order c-{i} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_must_agree_on_a_plugins_topics() {
    let server = NatsServer::shared();
    let wait = Duration::from_secs(30);
    let _a = audit_host(&server.url(), "filters", "orders.created", wait).await;
    // Host A is pulling from the consumer; B's policy would give it
    // another filter.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = host_builder()
        .backend(Backend::Nats(
            NatsOptions::new(server.url()).prefix("filters"),
        ))
        .build()
        .unwrap();
    let err = b
        .load(
            PluginSpec::from_path(plugin_path(ORDER_AUDIT)).grants(audit_grants(
                "audit",
                &["orders.>"],
                &[],
            )),
        )
        .await
        .unwrap_err();
    assert_eq!(err.cause.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("orders.created"), "{err}");
    // The same topics, but in order: the consumer would differ as well.
    let mut ordered = audit_grants("audit", &["orders.created"], &["orders.large"]);
    ordered.events.ordered = true;
    let err = b
        .load(PluginSpec::from_path(plugin_path(ORDER_AUDIT)).grants(ordered))
        .await
        .unwrap_err();
    assert_eq!(err.cause.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("in order"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_order_and_hosts_left_behind_stand_aside() {
    let server = NatsServer::shared();
    let wait = Duration::from_secs(30);
    let a = audit_host(&server.url(), "reorder", "orders.created", wait).await;
    let b = audit_host(&server.url(), "reorder", "orders.created", wait).await;
    // Host A is reloaded to take the events in order, while both pull.
    let mut ordered = audit_grants("audit", &["orders.created"], &["orders.large"]);
    ordered.events.ordered = true;
    a.reload_with(PluginSpec::from_path(plugin_path(ORDER_AUDIT)).grants(ordered))
        .await
        .unwrap();
    // B, still on the old grant, notices within 5 s and takes no events.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for i in 0..20 {
        let order = json!({"order_id": format!("R-{i}"), "item": "cup", "quantity": 1});
        b.publish("orders.created", order.to_string())
            .await
            .unwrap();
    }
    within_30s("the orders are handled", || async {
        (audit_count(&a, ORDER_AUDIT).await == 20).then_some(())
    })
    .await;
    assert_eq!((acks(&a), acks(&b)), (20, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_events_wait_for_a_retried_one_across_hosts() {
    let server = NatsServer::shared();
    for ordered in [true, false] {
        let prefix = format!("ordered-{ordered}");
        let mut hosts = Vec::new();
        for _ in 0..2 {
            let host = host_builder()
                .backend(Backend::Nats(
                    NatsOptions::new(server.url()).prefix(&prefix),
                ))
                .build()
                .unwrap();
            let mut grants = audit_grants("audit", &["orders.created"], &[]);
            grants.events.ordered = ordered;
            host.load(PluginSpec::from_path(plugin_path(ORDER_AUDIT)).grants(grants))
                .await
                .unwrap();
            hosts.push(host);
        }
        // Without order, the plain ones have two retries' time (2 s) to go
        // first, however slow the machine.
        let retry_ms = if ordered { 20 } else { 1000 };
        for (_, order) in crate::order_audit::flaky_then_plain(retry_ms) {
            hosts[0]
                .publish("orders.created", order.to_string())
                .await
                .unwrap();
        }
        // In order, neither host takes a later event while the flaky one
        // waits for its retry; without, they are stored meanwhile.
        let positions = crate::order_audit::positions(&hosts[1], &["F-1", "P-1", "P-2"]).await;
        if ordered {
            assert_eq!(positions, [1, 2, 3]);
        } else {
            // The two plain ones may land on either host, in either order.
            assert_eq!(positions[0], 3, "{positions:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_events_end_in_dead_letters_across_hosts() {
    let server = NatsServer::shared();
    let mut hosts = Vec::new();
    for _ in 0..2 {
        let host = host_builder()
            .backend(Backend::Nats(
                NatsOptions::new(server.url()).prefix("storm"),
            ))
            .bus_options(BusOptions {
                max_hops: 5,
                max_attempts: 3,
                max_retry_delay: Duration::from_millis(50),
                ..BusOptions::default()
            })
            .build()
            .unwrap();
        let mut grants = Grants::default();
        let storm = capsule_host::services::events::TopicPattern::parse("storm.>").unwrap();
        grants.events.publish = vec![storm.clone()];
        grants.events.subscribe = vec![storm];
        host.load(PluginSpec::from_path(plugin_path(EVENT_STORM)).grants(grants))
            .await
            .unwrap();
        hosts.push(host);
    }
    // A forward loop hops from host to host; the hop count travels with
    // the event through NATS, so the loop still ends at the limit.
    hosts[0].publish("storm.loop", "round").await.unwrap();
    // A retry asked for in 49 days is clamped to 50 ms, and the attempts
    // count across hosts.
    hosts[0].publish("storm.retry", "later").await.unwrap();
    let letters = within_30s("two dead letters", || async {
        let letters = hosts[1].deployment_dead_letters().await.unwrap();
        (letters.len() >= 2).then_some(letters)
    })
    .await;
    let hop = letters
        .iter()
        .find(|l| l.event.topic == "storm.loop")
        .unwrap();
    assert!(hop.reason.contains("hop limit"), "{}", hop.reason);
    assert_eq!(hop.event.hops, 6, "one hop past the limit");
    let retry = letters
        .iter()
        .find(|l| l.event.topic == "storm.retry")
        .unwrap();
    assert!(
        retry.reason.contains("gave up after 3 attempts"),
        "{}",
        retry.reason
    );
    assert_eq!(retry.attempts, 3);
    // Nothing more circulates.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hosts[0].deployment_dead_letters().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_larger_than_the_stream_takes_fails_the_call_before_it_commits() {
    let server = NatsServer::shared();
    let host = host_builder()
        .backend(Backend::Nats(NatsOptions::new(server.url()).prefix("big")))
        .bus_options(BusOptions {
            queue_bytes: 4 << 10,
            ..BusOptions::default()
        })
        .build()
        .unwrap();
    let mut grants = Grants::default();
    grants.events.publish =
        vec![capsule_host::services::events::TopicPattern::parse("orders.*").unwrap()];
    host.load(PluginSpec::from_path(plugin_path(ORDER_INTAKE)).grants(grants))
        .await
        .unwrap();
    let order = json!({"order_id": "B-1", "item": "x".repeat(8 << 10), "quantity": 1});
    let err = host
        .call(ORDER_INTAKE, Request::new("place", order.to_string()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded, "{err}");
    assert!(
        err.to_string().contains("event stream takes at most"),
        "{err}"
    );
    // A small order still goes through.
    let order = json!({"order_id": "B-2", "item": "teapot", "quantity": 1});
    host.call(ORDER_INTAKE, Request::new("place", order.to_string()))
        .await
        .unwrap();
}

/// A host of deployment `prefix` named `name`, loading `plugins`.
async fn named_host(url: &str, prefix: &str, name: &str, plugins: Vec<PluginSpec>) -> Host {
    let options = NatsOptions::new(url).prefix(prefix).host_name(name);
    let host = host_builder()
        .backend(Backend::Nats(options))
        .build()
        .unwrap();
    for spec in plugins {
        host.load(spec).await.unwrap();
    }
    host
}

/// A host of deployment `prefix` named `host-a`, loading nothing, whose
/// forwarded calls wait `call_timeout`.
fn impatient_host(url: &str, prefix: &str, call_timeout: Duration) -> Host {
    let mut options = NatsOptions::new(url).prefix(prefix).host_name("host-a");
    options.call_timeout = call_timeout;
    host_builder()
        .backend(Backend::Nats(options))
        .build()
        .unwrap()
}

/// `spin-loop`, stopped by `timeout` alone (no fuel limit, no circuit).
fn spin_loop(timeout: Duration) -> PluginSpec {
    PluginSpec::from_path(plugin_path(SPIN_LOOP)).limits(Limits {
        fuel: None,
        timeout,
        circuit_failures: 0,
        ..Limits::default()
    })
}

/// The plugins `host` reads in the deployment's listing, by host name.
async fn listing(host: &Host) -> Vec<(String, Vec<String>)> {
    let cluster = host.cluster().await.unwrap();
    assert_eq!(cluster.backend, "nats");
    cluster
        .hosts
        .into_iter()
        .map(|entry| {
            let plugins = entry
                .plugins
                .into_iter()
                .filter(|plugin| plugin.serving)
                .map(|plugin| plugin.name)
                .collect();
            (entry.host, plugins)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_loaded_only_on_host_b_is_called_from_host_a() {
    let server = NatsServer::shared();
    let a = named_host(&server.url(), "remote", "host-a", vec![]).await;
    let b = named_host(
        &server.url(),
        "remote",
        "host-b",
        vec![
            PluginSpec::from_path(plugin_path(HELLO)),
            spin_loop(Duration::from_millis(300)),
        ],
    )
    .await;

    // Host A has no plugin loaded; the call runs on B.
    let out = call_json(&a, HELLO, "greet", json!({"name": "Ada"})).await;
    assert!(out["greeting"].as_str().unwrap().contains("Ada"), "{out}");
    let served = format!("capsule_calls_total{{plugin=\"{HELLO}\",outcome=\"ok\"}} 1\n");
    assert!(b.metrics_text().contains(&served), "B ran it");
    assert!(!a.metrics_text().contains(&served), "A did not");

    // Errors keep their kind; a plugin's own error keeps its variant.
    let err = a
        .call(HELLO, Request::new("greet", "not json"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err.cause,
            CallFailure::Plugin(PluginError::InvalidInput(_))
        ),
        "{err:?}"
    );
    let err = a
        .call(HELLO, Request::new("no-such-op", "{}"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err.cause, CallFailure::Plugin(PluginError::Unsupported(_))),
        "{err:?}"
    );
    let err = a
        .call(SPIN_LOOP, Request::new("spin", "{}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        matches!(&err.cause, CallFailure::Remote { host, .. } if host == "host-b"),
        "{err:?}"
    );
    // No host serves it: refused at once, not after a timeout.
    let started = std::time::Instant::now();
    let err = a
        .call(
            "nowhere",
            Request::new("greet", json!({"name": "Ada"}).to_string()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownPlugin, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a plugin no host serves is refused at once, not after a timeout"
    );

    // The deployment's listing, from NATS.
    let hosts = within_30s("both hosts listed", || async {
        let hosts = listing(&a).await;
        (hosts.len() == 2).then_some(hosts)
    })
    .await;
    assert_eq!(hosts[0], ("host-a".to_owned(), vec![]));
    assert_eq!(
        hosts[1],
        (
            "host-b".to_owned(),
            vec![HELLO.to_owned(), SPIN_LOOP.to_owned()]
        )
    );

    // Paused on B: B answers `paused`, as it would locally, and the
    // listing says so.
    assert!(b.pause(HELLO));
    let err = a
        .call(HELLO, Request::new("greet", r#"{"name":"x"}"#))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Paused, "{err}");
    within_30s("the listing shows it paused", || async {
        let hosts = listing(&a).await;
        (hosts[1].1 == [SPIN_LOOP]).then_some(())
    })
    .await;
    assert!(b.resume(HELLO));
    call_json(&a, HELLO, "greet", json!({"name": "Ada"})).await;

    // Unloaded on B: calls find no host at once.
    assert!(b.unload(SPIN_LOOP).await);
    within_30s("an unloaded plugin is not served", || async {
        let err = a.call(SPIN_LOOP, Request::new("spin", "{}")).await.err()?;
        (err.kind() == ErrorKind::UnknownPlugin).then_some(())
    })
    .await;

    // B stops: A's calls find no host at once, and B leaves the listing,
    // without anyone telling A.
    b.shutdown(Duration::from_secs(2)).await;
    within_30s("B's plugins are no longer served", || async {
        let err = a
            .call(HELLO, Request::new("greet", r#"{"name":"x"}"#))
            .await
            .err()?;
        (err.kind() == ErrorKind::UnknownPlugin).then_some(())
    })
    .await;
    // (A listing is read from NATS at most once a second.)
    within_30s("B leaves the listing", || async {
        (listing(&a).await == [("host-a".to_owned(), vec![])]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_deadline_travels_with_the_call() {
    let server = NatsServer::shared();
    let a = impatient_host(&server.url(), "deadline", Duration::from_millis(400));
    let b = named_host(
        &server.url(),
        "deadline",
        "host-b",
        vec![spin_loop(Duration::from_secs(20))],
    )
    .await;
    let err = a
        .call(SPIN_LOOP, Request::new("spin", "{}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // B stopped the plugin by A's 400 ms, not by its own 20 s.
    let stopped = format!("capsule_calls_total{{plugin=\"{SPIN_LOOP}\",outcome=\"timeout\"}} 1\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !b.metrics_text().contains(&stopped) {
        assert!(
            std::time::Instant::now() < deadline,
            "B still runs a call its caller gave up on"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_running_for_other_hosts_are_answered_through_a_shutdown() {
    let server = NatsServer::shared();
    let a = impatient_host(&server.url(), "draining", Duration::from_secs(20));
    let b = named_host(
        &server.url(),
        "draining",
        "host-b",
        vec![spin_loop(Duration::from_secs(1))],
    )
    .await;
    let running = {
        let a = a.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let err = a
                .call(SPIN_LOOP, Request::new("spin", "{}"))
                .await
                .unwrap_err();
            (err, started.elapsed())
        })
    };
    // The call is running on B when B is asked to stop.
    within_30s("the call runs on B", || async {
        (b.status(SPIN_LOOP).unwrap().calls_in_flight == 1).then_some(())
    })
    .await;
    b.shutdown(Duration::from_secs(5)).await;
    let (err, took) = running.await.unwrap();
    // B's answer (its plugin's 1 s timeout) reached A, not A's own 20 s.
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        matches!(&err.cause, CallFailure::Remote { host, .. } if host == "host-b"),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_no_plugin_can_have_is_not_sent_to_nats() {
    let server = NatsServer::shared();
    let host = counter_host(&server.url(), "names").await;
    // Longer than the server's control line: sent as a subject, it would
    // make NATS drop the connection every plugin of the host shares.
    for name in ["x".repeat(5000), "a b".into(), "a.>".into(), String::new()] {
        let err = host
            .call(&name, Request::new("greet", "{}"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownPlugin, "{err}");
    }
    let out = call_json(&host, KV_COUNTER, "increment", json!({"key": "k"})).await;
    assert_eq!(out["count"], 1, "the host's connection to NATS is intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_dropped_without_shutdown_stops_taking_calls() {
    let server = NatsServer::shared();
    // A call in flight to a host that dies waits out its deadline (nobody
    // can tell it will never be answered): keep the probes' short.
    let a = impatient_host(&server.url(), "dropped", Duration::from_secs(1));
    let b = named_host(
        &server.url(),
        "dropped",
        "host-b",
        vec![PluginSpec::from_path(plugin_path(HELLO))],
    )
    .await;
    call_json(&a, HELLO, "greet", json!({"name": "Ada"})).await;
    // No shutdown: the host and its connections simply go away.
    drop(b);
    within_30s("a dropped host takes no calls", || async {
        let err = a
            .call(HELLO, Request::new("greet", r#"{"name":"x"}"#))
            .await
            .err()?;
        (err.kind() == ErrorKind::UnknownPlugin).then_some(())
    })
    .await;
    // Its presence expires by itself.
    within_30s("a dropped host leaves the listing", || async {
        (listing(&a).await.len() == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_other_hosts_run_within_the_plugins_own_concurrency() {
    let server = NatsServer::shared();
    let a = named_host(&server.url(), "flood", "host-a", vec![]).await;
    let b = named_host(
        &server.url(),
        "flood",
        "host-b",
        vec![
            PluginSpec::from_path(plugin_path(SPIN_LOOP)).limits(Limits {
                fuel: None,
                timeout: Duration::from_millis(500),
                max_instances: 1,
                max_queued: 1,
                circuit_failures: 0,
                ..Limits::default()
            }),
            PluginSpec::from_path(plugin_path(HELLO)),
        ],
    )
    .await;
    // 40 calls at once from A for a plugin B runs one at a time, with one
    // waiting: the rest are refused `busy` at once, not queued on B.
    let mut calls = Vec::new();
    for _ in 0..40 {
        let a = a.clone();
        calls.push(tokio::spawn(async move {
            a.call(SPIN_LOOP, Request::new("spin", "{}"))
                .await
                .unwrap_err()
                .kind()
        }));
    }
    let mut kinds = Vec::new();
    for call in calls {
        kinds.push(call.await.unwrap());
    }
    let timeouts = kinds.iter().filter(|k| **k == ErrorKind::Timeout).count();
    let busy = kinds.iter().filter(|k| **k == ErrorKind::Busy).count();
    assert_eq!(timeouts + busy, 40, "{kinds:?}");
    assert!(timeouts >= 1 && busy >= 20, "{kinds:?}");
    let metrics = b.metrics_text();
    let ran =
        format!("capsule_calls_total{{plugin=\"{SPIN_LOOP}\",outcome=\"timeout\"}} {timeouts}\n");
    assert!(metrics.contains(&ran), "{metrics}");
    // Every `busy` came from B's bound on calls from other hosts, before
    // any reached the plugin's own queue (which would count them).
    assert!(!metrics.contains(r#"outcome="busy""#), "{metrics}");
    // B's other plugins are served meanwhile and after.
    call_json(&a, HELLO, "greet", json!({"name": "Ada"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_crosses_hosts_with_events_and_forwarded_calls() {
    use capsule_host::telemetry::TelemetryOptions;
    use capsule_tests::otlp::Collector;

    let server = NatsServer::shared();
    let collector = Collector::start().await;
    let traced_host = |name: &str, plugins: Vec<PluginSpec>| {
        let options = NatsOptions::new(server.url())
            .prefix("traced")
            .host_name(name);
        let host = host_builder()
            .backend(Backend::Nats(options))
            .telemetry(TelemetryOptions {
                otlp: Some(collector.url.clone()),
                service_name: name.to_owned(),
                interval: Duration::from_millis(200),
                ..TelemetryOptions::default()
            })
            .build()
            .unwrap();
        async move {
            for spec in plugins {
                host.load(spec).await.unwrap();
            }
            host
        }
    };
    // Host a takes orders; host b audits them and greets.
    let a = traced_host(
        "host-a",
        vec![
            PluginSpec::from_path(plugin_path(ORDER_INTAKE)).grants(audit_grants(
                "intake",
                &[],
                &["orders.*"],
            )),
        ],
    )
    .await;
    let _b = traced_host(
        "host-b",
        vec![
            PluginSpec::from_path(plugin_path(ORDER_AUDIT)).grants(audit_grants(
                "audit",
                &["orders.created"],
                &[],
            )),
            PluginSpec::from_path(plugin_path(HELLO)),
        ],
    )
    .await;
    let caller = format!("00-{}-{}-01", "2".repeat(32), "3".repeat(16));
    let mut place = Request::new(
        "place",
        json!({"order_id": "X-1", "item": "lamp", "quantity": 1}).to_string(),
    );
    place.metadata.push(("traceparent".into(), caller.clone()));
    a.call(ORDER_INTAKE, place).await.unwrap();
    let intake = collector.span("call order-intake").await;
    let delivery = collector.span("deliver order-audit").await;
    // The event took host a's span to host b through the NATS stream.
    assert_eq!(delivery.trace_id, intake.trace_id);
    assert_eq!(delivery.parent_span_id, intake.span_id);
    let services = |name: &str| {
        collector
            .spans()
            .into_iter()
            .filter(|(_, span)| span.name == name)
            .map(|(service, _)| service)
            .collect::<Vec<_>>()
    };
    assert_eq!(services("call order-intake"), ["host-a"]);
    assert_eq!(services("deliver order-audit"), ["host-b"]);

    // A call host a forwards to host b keeps the caller's trace context.
    let mut greet = Request::new("greet", r#"{"name":"Nats"}"#);
    greet.metadata.push(("traceparent".into(), caller));
    a.call(HELLO, greet).await.unwrap();
    let hello = collector.span("call hello").await;
    assert_eq!(services("call hello"), ["host-b"]);
    assert_eq!(hello.trace_id, intake.trace_id);
    assert_eq!(hello.parent_span_id, vec![0x33; 8]);
}

/// The number in `host`'s metrics line that starts with `prefix`.
fn metric(host: &Host, prefix: &str) -> u64 {
    host.metrics_text()
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .map_or(0, |rest| rest.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_jobs_are_shared_and_each_runs_once_across_hosts() {
    let server = NatsServer::shared();
    let hosts = [
        counter_host(&server.url(), "jobs").await,
        counter_host(&server.url(), "jobs").await,
    ];
    let runners: Vec<_> = hosts.iter().map(Host::start_jobs).collect();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let job = hosts[0]
            .submit_job(
                KV_COUNTER,
                capsule_host::JobSubmission {
                    operation: "increment".into(),
                    payload: br#"{"key":"jobbed"}"#.to_vec(),
                    ..capsule_host::JobSubmission::default()
                },
            )
            .await
            .unwrap();
        ids.push(job.id);
    }
    for id in &ids {
        // Either host reads any job.
        let job = within_30s("a job to finish", || async {
            let job = hosts[1].job(id).await.unwrap();
            job.state.is_finished().then_some(job)
        })
        .await;
        assert_eq!(job.state, capsule_host::JobState::Succeeded, "{job:?}");
        assert_eq!(job.attempts, 1);
    }
    // Claimed by compare-and-swap: every job ran exactly once.
    let out = call_json(&hosts[0], KV_COUNTER, "get", json!({"key": "jobbed"})).await;
    assert_eq!(out["count"], 20);
    let succeeded = format!("capsule_jobs_total{{plugin=\"{KV_COUNTER}\",outcome=\"succeeded\"}} ");
    let ran: u64 = hosts.iter().map(|host| metric(host, &succeeded)).sum();
    assert_eq!(ran, 20);
    drop(runners);
}
