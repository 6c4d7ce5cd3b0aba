//! `call-bomb` turns plugin-to-plugin calls against the host: a plugin that
//! calls itself, two that call each other, a chain past the depth limit, a
//! fan-out past `max_calls`, calls it was not granted, and a callee that
//! spins past its caller's deadline. Each ends in a typed refusal within
//! the deadline, and `hello` keeps answering.

use std::time::{Duration, Instant};

use capsule_host::services::calls::CallTarget;
use capsule_host::{ErrorKind, Grants, Host, Limits, PluginSpec};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{CALL_BOMB, HELLO, SPIN_LOOP};
use serde_json::json;

use crate::grants::call_json;
use crate::host;
use crate::sandbox::assert_hello_answers;

/// Loads call-bomb as `name`, calling `next` in a chain and granted `edges`.
async fn bomb(host: &Host, name: &str, next: Option<&str>, edges: &[&str]) {
    let mut spec = PluginSpec::from_path(plugin_path(CALL_BOMB))
        .with_name(name)
        .grants(Grants {
            calls: edges
                .iter()
                .map(|e| CallTarget::parse(e).unwrap())
                .collect(),
            ..Grants::default()
        })
        .config("self", name);
    if let Some(next) = next {
        spec = spec.config("next", next);
    }
    host.load(spec).await.unwrap();
}

async fn with_hello() -> Host {
    let host = host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calling_itself_or_each_other_is_refused_as_a_cycle() {
    let host = with_hello().await;
    bomb(&host, "solo", None, &["solo"]).await;
    let answer = call_json(&host, "solo", "recurse", json!({})).await;
    assert_eq!(
        answer["error"],
        json!({"kind": "refused", "message": "a cycle: solo → solo"})
    );

    bomb(&host, "ping", Some("pong"), &["pong"]).await;
    bomb(&host, "pong", Some("ping"), &["ping"]).await;
    let answer = call_json(&host, "ping", "chain", json!({})).await;
    assert_eq!(
        answer["error"],
        json!({"kind": "refused", "message": "a cycle: ping → pong → ping"}),
        "{answer}"
    );
    assert_hello_answers(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_deeper_than_the_limit_is_refused_where_it_would_go_too_deep() {
    let host = with_hello().await;
    for i in 1..=10 {
        let next = format!("link-{}", i + 1);
        let next = (i < 10).then_some(next.as_str());
        let edges: Vec<&str> = next.into_iter().collect();
        bomb(&host, &format!("link-{i}"), next, &edges).await;
    }
    // Depth counts the first plugin: link-8 may not call a ninth.
    let answer = call_json(&host, "link-1", "chain", json!({})).await;
    assert_eq!(answer["at"], "link-9", "{answer}");
    assert_eq!(answer["error"]["kind"], "refused");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("9 plugins deep, over the limit of 8"),
        "{answer}"
    );
    // From link-3 the chain is 8 deep: it reaches the bottom.
    let answer = call_json(&host, "link-3", "chain", json!({})).await;
    assert_eq!(answer, json!({"ok": "bottom"}));
    assert_hello_answers(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_stops_at_max_calls() {
    let host = with_hello().await;
    bomb(&host, "fan", None, &["hello"]).await;
    let answer = call_json(
        &host,
        "fan",
        "fanout",
        json!({"target": "hello", "times": 40}),
    )
    .await;
    assert_eq!(answer["made"], 16, "{answer}");
    assert_eq!(answer["error"]["kind"], "refused");
    // A new call has a new allowance.
    let answer = call_json(
        &host,
        "fan",
        "fanout",
        json!({"target": "hello", "times": 3}),
    )
    .await;
    assert_eq!(answer, json!({"made": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_calls_are_denied_without_saying_what_exists() {
    let host = with_hello().await;
    bomb(&host, "nosy", None, &["hello:greet", "ghost"]).await;
    for (target, kind) in [
        // Loaded but not granted, and not even loaded: the same denial.
        ("spin-loop", "denied"),
        ("nobody", "denied"),
        // Only `greet` of hello was granted.
        ("hello", "denied"),
        // Granted, but no such plugin is loaded.
        ("ghost", "unknown_target"),
    ] {
        let answer = call_json(&host, "nosy", "ungranted", json!({"target": target})).await;
        assert_eq!(answer["error"]["kind"], kind, "{target}: {answer}");
    }
    // The three denials are counted in the audit log as one record.
    host.audit().flush();
    let denied: Vec<_> = host
        .audit()
        .recent(100)
        .into_iter()
        .filter(|r| r.who == "plugin:nosy" && r.action == "calls")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0].count, Some(3));
    let answer = call_json(
        &host,
        "nosy",
        "fanout",
        json!({"target": "hello", "times": 1}),
    )
    .await;
    assert_eq!(answer, json!({"made": 1}), "greet was granted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_callee_is_stopped_at_its_callers_deadline() {
    let host = with_hello().await;
    host.load(
        PluginSpec::from_path(plugin_path(SPIN_LOOP)).limits(Limits {
            timeout: Duration::from_secs(20),
            fuel: None,
            ..Limits::default()
        }),
    )
    .await
    .unwrap();
    host.load(
        PluginSpec::from_path(plugin_path(CALL_BOMB))
            .with_name("impatient")
            .grants(Grants {
                calls: vec![CallTarget::parse("spin-loop").unwrap()],
                ..Grants::default()
            })
            .limits(Limits {
                timeout: Duration::from_millis(500),
                fuel: None,
                ..Limits::default()
            }),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let err = host
        .call(
            "impatient",
            capsule_host::Request::new("spin", json!({"target": SPIN_LOOP}).to_string()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // Stopped by the caller's 500 ms, not the callee's 20 s.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let metrics = host.metrics_text();
    assert!(
        metrics.contains(r#"capsule_calls_total{plugin="spin-loop",outcome="timeout"} 1"#),
        "{metrics}"
    );
    assert_hello_answers(&host).await;
}
