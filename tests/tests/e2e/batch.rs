//! `Host::call_batch`: many requests through one instance, in order, each
//! its own call (fuel, transaction, result), the batch one instance use.

use capsule_host::services::kv::KvGrant;
use capsule_host::{CallFailure, ErrorKind, Grants, Limits, OutputStream, PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{HELLO, HUGE_OUTPUT, KV_COUNTER};
use serde_json::{Value, json};

use crate::grants::{call_json, json_of};

fn request(op: &str, input: Value) -> Request {
    Request::new(op, input.to_string())
}

/// `hello`'s `calls`: how many calls its instance has served.
fn calls_of(result: &Result<capsule_host::CallOutcome, capsule_host::CallError>) -> u64 {
    let outcome = result.as_ref().expect("calls answers");
    json_of(&outcome.response)["calls"].as_u64().unwrap()
}

#[tokio::test]
async fn a_batch_runs_on_one_instance_and_counts_once_toward_recycle_after() {
    let host = crate::host();
    let limits = Limits {
        recycle_after: 2,
        max_batch: 5,
        ..Limits::default()
    };
    host.load(PluginSpec::from_path(plugin_path(HELLO)).limits(limits))
        .await
        .unwrap();
    let batch = (0..5).map(|_| request("calls", json!({}))).collect();
    let results = host.call_batch(HELLO, batch).await.unwrap();
    // One instance (the one that answered `describe` at load) served all
    // five, though it may serve two calls.
    let counts: Vec<u64> = results.iter().map(calls_of).collect();
    assert_eq!(counts, [1, 2, 3, 4, 5]);
    assert!(
        results
            .iter()
            .all(|r| !r.as_ref().unwrap().stats.fresh_instance)
    );
    // The batch was one use: one more call on the same instance, then a
    // fresh one.
    let next = host.call(HELLO, request("calls", json!({}))).await;
    assert_eq!(calls_of(&next), 6);
    let after = host.call(HELLO, request("calls", json!({}))).await;
    assert_eq!(calls_of(&after), 1);

    // More than `max_batch` is refused whole: nothing ran.
    let too_many = (0..6).map(|_| request("calls", json!({}))).collect();
    let err = host.call_batch(HELLO, too_many).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InputTooLarge);
    assert_eq!(err.plugin, HELLO);
    assert!(
        matches!(err.cause, CallFailure::BatchTooLarge { items: 6, limit: 5 }),
        "{err}"
    );
    let untouched = host.call(HELLO, request("calls", json!({}))).await;
    assert_eq!(calls_of(&untouched), 2);

    let unknown = host.call_batch("nobody", Vec::new()).await.unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::UnknownPlugin);
}

#[tokio::test]
async fn each_item_commits_or_fails_on_its_own_and_a_trap_costs_only_the_instance() {
    let host = crate::host();
    let grants = Grants {
        kv: Some(KvGrant::new("batch")),
        ..Grants::default()
    };
    host.load(PluginSpec::from_path(plugin_path(KV_COUNTER)).grants(grants))
        .await
        .unwrap();
    let bump = || request("increment", json!({"key": "k"}));
    let bump_then = |then: &str| request("increment-all", json!({"keys": ["k"], "then": then}));
    let batch = vec![
        bump(),
        bump_then("error"),
        bump(),
        bump_then("panic"),
        bump(),
        request("no-such-operation", json!({})),
        bump(),
    ];
    let results = host.call_batch(KV_COUNTER, batch).await.unwrap();
    assert_eq!(results.len(), 7);
    let count = |index: usize| {
        let outcome = results[index]
            .as_ref()
            .unwrap_or_else(|err| panic!("{err}"));
        json_of(&outcome.response)["count"].as_i64().unwrap()
    };
    // Each item saw the commits of those before it; the failed ones left
    // nothing behind.
    assert_eq!([count(0), count(2), count(4), count(6)], [1, 2, 3, 4]);
    let kind = |index: usize| results[index].as_ref().unwrap_err().kind();
    assert_eq!(kind(1), ErrorKind::PluginError);
    assert_eq!(kind(3), ErrorKind::Trap);
    assert_eq!(kind(5), ErrorKind::PluginError);
    // Every item was metered on its own.
    for index in [0, 2, 4, 6] {
        let fuel = results[index].as_ref().unwrap().stats.fuel_used;
        assert!(fuel.is_some_and(|fuel| fuel > 0), "item {index}: {fuel:?}");
    }
    // The trap dropped the instance: the next item got a fresh one, which
    // served the rest.
    let fresh: Vec<bool> = [0, 2, 4, 6]
        .iter()
        .map(|&i| results[i].as_ref().unwrap().stats.fresh_instance)
        .collect();
    assert_eq!(fresh, [false, false, true, false]);
    let stored = call_json(&host, KV_COUNTER, "get", json!({"key": "k"})).await;
    assert_eq!(stored["count"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_huge_answers_holds_at_most_twice_one_answers_limit() {
    let host = crate::host();
    // 16 MiB answers are allowed one at a time; a hundred would be 1.6 GB.
    let limits = Limits {
        max_response_bytes: 32 << 20,
        ..Limits::default()
    };
    host.load(PluginSpec::from_path(plugin_path(HUGE_OUTPUT)).limits(limits))
        .await
        .unwrap();
    let before = capsule_tests::peak_resident();
    let batch = (0..100).map(|_| request("flood", json!({}))).collect();
    let results = host.call_batch(HUGE_OUTPUT, batch).await.unwrap();
    let grown = capsule_tests::peak_resident().saturating_sub(before);
    // Three answers pass 32 MiB; the rest never ran.
    let ran = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ran, 3);
    for refused in &results[3..] {
        let err = refused.as_ref().unwrap_err();
        assert_eq!(err.plugin, HUGE_OUTPUT);
        assert!(
            matches!(
                err.cause,
                CallFailure::OutputTooLarge {
                    stream: OutputStream::Batch,
                    limit
                } if limit == 32 << 20
            ),
            "{err}"
        );
        assert_eq!(err.kind(), ErrorKind::OutputTooLarge);
    }
    drop(results);
    assert!(grown < 400 << 20, "peak memory grew by {grown} bytes");
}
