//! The response cache of pure operations: `order-intake`'s `price` is
//! declared pure by its manifest; `kv-counter`'s and `hello`'s writes are
//! declared pure by the operator to show what purity denies.

use std::time::Duration;

use capsule_host::services::calls::CallTarget;
use capsule_host::services::events::{EventsGrant, TopicPattern};
use capsule_host::services::kv::KvGrant;
use capsule_host::{CallOutcome, ErrorKind, Grants, Limits, PluginError, PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{HELLO, KV_COUNTER, ORDER_INTAKE};
use serde_json::{Value, json};

use crate::grants::{json_of, plugin_error};

async fn price(host: &capsule_host::Host, plugin: &str, input: Value) -> CallOutcome {
    host.call(plugin, Request::new("price", input.to_string()))
        .await
        .unwrap_or_else(|err| panic!("{plugin} price: {err}"))
}

/// `capsule_response_cache_total` for `plugin` and `outcome`, 0 if absent.
fn lookups(host: &capsule_host::Host, plugin: &str, outcome: &str) -> u64 {
    let series =
        format!("capsule_response_cache_total{{plugin=\"{plugin}\",outcome=\"{outcome}\"}} ");
    host.metrics_text()
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_pure_answer_is_served_from_the_cache_until_a_reload() {
    let host = crate::host();
    let details = host
        .load(PluginSpec::from_path(plugin_path(ORDER_INTAKE)))
        .await
        .unwrap();
    assert_eq!(details.pure_operations, ["price"]);
    let teapots = json!({"item": "teapot", "quantity": 2});
    let first = price(&host, ORDER_INTAKE, teapots.clone()).await;
    assert!(!first.stats.cached);
    assert!(first.stats.fuel_used.is_some_and(|fuel| fuel > 0));
    assert!(!first.logs.is_empty(), "the plugin ran and logged");
    assert_eq!(json_of(&first.response)["total_cents"], 5_000);

    // Asked again: the same answer, and the plugin did not run.
    let again = price(&host, ORDER_INTAKE, teapots.clone()).await;
    assert!(again.stats.cached);
    assert_eq!(again.response.payload, first.response.payload);
    assert!(again.logs.is_empty());
    assert_eq!(again.stats.fuel_used, None);
    // Metadata is not part of the key.
    let mut tagged = Request::new("price", teapots.to_string());
    tagged.metadata.push(("request-id".into(), "r-9".into()));
    assert!(host.call(ORDER_INTAKE, tagged).await.unwrap().stats.cached);
    // Another payload is another answer.
    let cups = price(&host, ORDER_INTAKE, json!({"item": "cup", "quantity": 2})).await;
    assert!(!cups.stats.cached);
    assert_eq!(json_of(&cups.response)["total_cents"], 1_600);
    // Errors are never kept: the plugin runs every time.
    for _ in 0..2 {
        let err = host
            .call(
                ORDER_INTAKE,
                Request::new("price", json!({"item": "anvil", "quantity": 1}).to_string()),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PluginError);
        assert!(err.stats.fuel_used.is_some(), "the plugin ran");
    }
    assert_eq!(lookups(&host, ORDER_INTAKE, "hit"), 2);
    assert_eq!(lookups(&host, ORDER_INTAKE, "miss"), 4);
    let text = host.metrics_text();
    assert!(
        text.lines().any(|line| line
            .strip_prefix("capsule_response_cache_bytes{plugin=\"order-intake\"} ")
            .is_some_and(|bytes| bytes.parse::<u64>().unwrap() > 0)),
        "{text}"
    );

    // A reload starts with an empty cache.
    host.reload(ORDER_INTAKE).await.unwrap();
    assert!(
        !price(&host, ORDER_INTAKE, teapots.clone())
            .await
            .stats
            .cached
    );
    assert!(
        price(&host, ORDER_INTAKE, teapots.clone())
            .await
            .stats
            .cached
    );
    // Another plugin (the same component under another name) has its own.
    host.load(PluginSpec::from_path(plugin_path(ORDER_INTAKE)).with_name("intake-b"))
        .await
        .unwrap();
    assert!(!price(&host, "intake-b", teapots).await.stats.cached);
}

#[tokio::test]
async fn answers_expire_and_the_operator_can_turn_the_cache_off() {
    let host = crate::host();
    for (name, limits) in [
        (
            "short",
            Limits {
                cache_ttl: Duration::from_millis(50),
                ..Limits::default()
            },
        ),
        (
            "uncached",
            Limits {
                cache_bytes: 0,
                ..Limits::default()
            },
        ),
    ] {
        host.load(
            PluginSpec::from_path(plugin_path(ORDER_INTAKE))
                .with_name(name)
                .limits(limits),
        )
        .await
        .unwrap();
    }
    let cup = json!({"item": "cup", "quantity": 1});
    price(&host, "short", cup.clone()).await;
    assert!(price(&host, "short", cup.clone()).await.stats.cached);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(!price(&host, "short", cup.clone()).await.stats.cached);
    for _ in 0..2 {
        assert!(!price(&host, "uncached", cup.clone()).await.stats.cached);
    }
}

#[tokio::test]
async fn a_pure_operation_may_not_write_publish_or_have_its_callees_write() {
    let host = crate::host();
    let kv = |namespace: &str| Grants {
        kv: Some(KvGrant::new(namespace)),
        ..Grants::default()
    };
    let front = Grants {
        calls: vec![CallTarget::parse("back").unwrap()],
        ..kv("front")
    };
    // The operator declares the counters' writes pure, which they are not:
    // the host holds them to it.
    for (name, grants, pure) in [
        (
            "front",
            front,
            vec!["increment".to_owned(), "get".to_owned()],
        ),
        ("back", kv("back"), Vec::new()),
    ] {
        host.load(
            PluginSpec::from_path(plugin_path(KV_COUNTER))
                .with_name(name)
                .grants(grants)
                .pure_operations(pure),
        )
        .await
        .unwrap();
    }
    let denied = plugin_error(&host, "front", "increment", json!({"key": "k"})).await;
    assert!(
        matches!(&denied, PluginError::Denied(m) if m.contains("declared pure")),
        "{denied:?}"
    );
    // Reads are allowed, and the answer is cached.
    let read = host
        .call(
            "front",
            Request::new("get", json!({"key": "k"}).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(json_of(&read.response)["count"], 0);
    // What a pure call calls is held to it too, though the callee's own
    // operation is not pure.
    let front_pure = Grants {
        calls: vec![CallTarget::parse("back").unwrap()],
        ..kv("front-2")
    };
    host.load(
        PluginSpec::from_path(plugin_path(KV_COUNTER))
            .with_name("front-2")
            .grants(front_pure)
            .pure_operations(vec!["increment-all".to_owned()]),
    )
    .await
    .unwrap();
    let through = plugin_error(
        &host,
        "front-2",
        "increment-all",
        json!({"keys": ["k"], "via": "back"}),
    )
    .await;
    assert!(
        format!("{through:?}").contains("declared pure"),
        "{through:?}"
    );
    let back = host
        .call("back", Request::new("get", json!({"key": "k"}).to_string()))
        .await
        .unwrap();
    assert_eq!(json_of(&back.response)["count"], 0);

    // Publishing is denied to a pure operation, granted or not.
    let events = Grants {
        events: EventsGrant {
            publish: vec![TopicPattern::parse("greetings.>").unwrap()],
            ..EventsGrant::default()
        },
        ..Grants::default()
    };
    host.load(
        PluginSpec::from_path(plugin_path(HELLO))
            .grants(events)
            .pure_operations(vec!["announce".to_owned()]),
    )
    .await
    .unwrap();
    let refused = plugin_error(
        &host,
        HELLO,
        "announce",
        json!({"name": "Ada", "topic": "greetings.new"}),
    )
    .await;
    assert!(
        matches!(&refused, PluginError::Denied(m) if m.contains("may not publish")),
        "{refused:?}"
    );
}
