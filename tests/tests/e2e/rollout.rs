//! Rollouts through the host library: the second version needs room in the
//! instance pool, its failures are judged by the rollout (not the plugin's
//! circuit breaker), and a reload or unload ends it.

use std::time::Duration;

use capsule_host::{
    ApplyError, EngineOptions, ErrorKind, Limits, PluginSpec, Policy, PoolingOptions, Request,
    RolloutError, RolloutPlan, RolloutState,
};
use capsule_tests::plugins::{HELLO, HELLO_V0_1, PANIC};
use capsule_tests::{host_builder, plugin_path};
use serde_json::json;

fn greet() -> Request {
    Request::new("greet", json!({ "name": "Ada" }).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_starts_only_when_the_pool_holds_the_second_version() {
    let host_with = |max_instances: usize| {
        host_builder()
            .engine_options(EngineOptions {
                pooling: Some(PoolingOptions {
                    total_instances: 8,
                    max_memory_bytes: 64 << 20,
                }),
                ..EngineOptions::default()
            })
            .default_limits(Limits {
                max_instances,
                ..Limits::default()
            })
            .build()
            .unwrap()
    };
    // 4 instances (and one for a reload) for each version: 10 > 8.
    let host = host_with(4);
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    let err = host
        .start_rollout(HELLO, RolloutPlan::new(plugin_path(HELLO_V0_1), 10.0))
        .await
        .unwrap_err();
    assert!(matches!(err, RolloutError::PoolTooSmall { .. }), "{err}");
    assert!(err.to_string().contains("raise `instances`"), "{err}");
    assert!(host.rollout(HELLO).is_none());

    // 3 each: 8 fits.
    let host = host_with(3);
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    let status = host
        .start_rollout(HELLO, RolloutPlan::new(plugin_path(HELLO_V0_1), 10.0))
        .await
        .unwrap();
    assert_eq!(status.state, RolloutState::Running);
    for _ in 0..20 {
        host.call(HELLO, greet()).await.unwrap();
    }
    let status = host.rollout(HELLO).unwrap();
    assert_eq!((status.stable.calls, status.canary.calls), (18, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_versions_failures_roll_it_back_without_opening_the_circuit() {
    let host = capsule_tests::host_builder()
        .default_limits(Limits {
            circuit_failures: 3,
            ..Limits::default()
        })
        .build()
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    let mut plan = RolloutPlan::new(plugin_path(PANIC), 99.99);
    plan.min_calls = 10;
    plan.max_error_rate = 50.0;
    host.start_rollout(HELLO, plan).await.unwrap();
    // The first call is the stable version's, the next ten the new one's:
    // ten traps in a row, more than the breaker's three, yet it stays
    // closed; the tenth rolls the new version back.
    host.call(HELLO, greet()).await.unwrap();
    for _ in 0..10 {
        let err = host.call(HELLO, greet()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Trap);
    }
    let status = host.rollout(HELLO).unwrap();
    assert_eq!(status.state, RolloutState::RolledBack);
    host.call(HELLO, greet()).await.unwrap();
    assert_eq!(
        host.status(HELLO).unwrap().state,
        capsule_host::PluginState::Active
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_or_an_unload_ends_a_rollout() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    host.start_rollout(HELLO, RolloutPlan::new(plugin_path(HELLO_V0_1), 50.0))
        .await
        .unwrap();
    assert!(host.status(HELLO).unwrap().rollout.is_some());
    host.reload(HELLO).await.unwrap();
    let ended = host.rollout(HELLO).unwrap();
    assert_eq!(ended.state, RolloutState::Aborted);
    assert_eq!(ended.reason.as_deref(), Some("replaced by a reload"));
    // Every call is the reloaded version's now.
    for _ in 0..4 {
        let outcome = host.call(HELLO, greet()).await.unwrap();
        assert!(serde_json::from_slice::<serde_json::Value>(&outcome.response.payload).is_ok());
    }

    host.start_rollout(HELLO, RolloutPlan::new(plugin_path(HELLO_V0_1), 50.0))
        .await
        .unwrap();
    host.call(HELLO, greet()).await.unwrap();
    host.call(HELLO, greet()).await.unwrap();
    assert!(host.unload(HELLO).await);
    assert!(host.rollout(HELLO).is_none());
    assert_eq!(
        host.call(HELLO, greet()).await.unwrap_err().kind(),
        ErrorKind::UnknownPlugin
    );
    // Both ends are counted like any other.
    let metrics = host.metrics_text();
    assert!(
        metrics.contains(r#"capsule_rollouts_total{plugin="hello",outcome="aborted"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_version_called_less_than_min_calls_per_window_never_steps_up() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    // The window (1 s) never holds 3 of the new version's calls when it is
    // called every 0.6 s; the calls since the last step still judge it.
    let mut plan = RolloutPlan::new(plugin_path(PANIC), 50.0);
    plan.window = Duration::from_secs(1);
    plan.min_calls = 3;
    plan.step = Some((10.0, Duration::from_millis(100)));
    host.start_rollout(HELLO, plan).await.unwrap();
    let mut failed = 0;
    for _ in 0..20 {
        if host.call(HELLO, greet()).await.is_err() {
            failed += 1;
        }
        let status = host.rollout(HELLO).unwrap();
        assert_eq!(status.share, 50.0, "a failing version never steps up");
        if status.state == RolloutState::RolledBack {
            assert!(
                status
                    .reason
                    .as_deref()
                    .unwrap()
                    .contains("3 of its last 3 calls failed"),
                "{status:?}"
            );
            assert!(
                status
                    .reason
                    .unwrap()
                    .contains("since its share last stepped"),
                "judged over the calls since the last step, not the window"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(failed, 3);
    assert_eq!(host.rollout(HELLO).unwrap().state, RolloutState::RolledBack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_apply_leaves_room_for_a_running_rollout_or_changes_nothing() {
    let dir = capsule_tests::temp_dir("rollout-apply");
    let policy = |copies: &[&str]| {
        let mut text = "[host.pool]\ninstances = 8\n[host.limits]\nmax_instances = 2\n".to_owned();
        for name in copies {
            text.push_str(&format!(
                "[plugins.{name}]\npath = {:?}\n",
                plugin_path(HELLO).display().to_string()
            ));
        }
        Policy::parse(&text, &dir.join("capsule.toml"), &dir).unwrap()
    };
    let first = policy(&[HELLO]);
    let host = capsule_host::HostBuilder::from_policy(&first)
        .trust(capsule_tests::test_key())
        .build()
        .unwrap();
    assert!(host.load_policy(&first).await.is_empty());
    // hello (2 + 1) and its new version (2 + 1) fit in 8.
    host.start_rollout(HELLO, RolloutPlan::new(plugin_path(HELLO_V0_1), 50.0))
        .await
        .unwrap();
    // A second plugin fits the policy's own check (6 of 8), not next to
    // the new version (9).
    let second = policy(&[HELLO, "hello-2"]);
    let err = host.apply_policy(&second).await.unwrap_err();
    assert!(matches!(err, ApplyError::RolloutsNeedRoom(_)), "{err}");
    assert!(err.to_string().contains("rollouts of hello"), "{err}");
    assert!(host.status("hello-2").is_none(), "nothing was changed");
    assert_eq!(host.rollout(HELLO).unwrap().state, RolloutState::Running);
    host.abort_rollout(HELLO).await.unwrap();
    let changes = host.apply_policy(&second).await.unwrap();
    assert_eq!(changes.loaded, ["hello-2"]);
}
