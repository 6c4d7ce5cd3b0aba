//! `sick-health` (hostile): a `health` check that never returns, or that
//! fails with half a megabyte of reason. Readiness stops the first at the health
//! timeout and cuts the second's reason; either way the plugin is shown as
//! degraded, its calls keep working, and however often readiness is asked
//! the host runs one check per plugin per `HEALTH_TTL`.

use std::time::{Duration, Instant};

use capsule_host::services::metrics::MetricsGrant;
use capsule_host::{
    Grants, HEALTH_TIMEOUT, HealthCheck, Host, Limits, PluginHealth, PluginHealthState, PluginSpec,
    Readiness, Request,
};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{HELLO, HELLO_V0_1, SICK_HEALTH};

/// The grant its check counts itself with.
fn counting() -> Grants {
    Grants {
        metrics: Some(MetricsGrant::default()),
        ..Grants::default()
    }
}

async fn load_sick(host: &Host, name: &str, mode: &str) {
    // Without fuel metering only the clock stops a spinning check.
    let limits = Limits {
        fuel: None,
        ..Limits::default()
    };
    host.load(
        PluginSpec::from_path(plugin_path(SICK_HEALTH))
            .with_name(name)
            .grants(counting())
            .config("health", mode)
            .limits(limits),
    )
    .await
    .unwrap();
}

fn plugin<'a>(readiness: &'a Readiness, name: &str) -> &'a PluginHealth {
    readiness
        .plugins
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("{name} is not in {readiness:?}"))
}

/// How many checks the host ran on `name`, from its own counter.
fn checks_counted(host: &Host, name: &str) -> f64 {
    let text = host.metrics_text();
    let prefix = format!("capsule_plugin_health_checks_total{{plugin=\"{name}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sick_check_degrades_its_plugin_within_the_health_budget() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(HELLO_V0_1)))
        .await
        .unwrap();
    load_sick(&host, "spinner", "spin").await;
    load_sick(&host, "flooder", "flood").await;
    load_sick(&host, "fine", "ok").await;

    // An asker who gives up (a client hanging up) cancels nothing: the
    // check goes on, and the next asker gets its answer, not a second run.
    let impatient = tokio::spawn({
        let host = host.clone();
        async move { host.readiness().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    impatient.abort();

    // Twenty askers at once: one check each, all answered by the timeout.
    let started = Instant::now();
    let mut askers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let host = host.clone();
        askers.spawn(async move { host.readiness().await });
    }
    let answers = askers.join_all().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < HEALTH_TIMEOUT + Duration::from_secs(2),
        "readiness took {elapsed:?}"
    );
    for readiness in &answers {
        assert!(!readiness.ready);
        assert_eq!(
            plugin(readiness, "spinner").state,
            PluginHealthState::Degraded
        );
    }
    let readiness = &answers[0];
    match &plugin(readiness, "spinner").check {
        HealthCheck::Failed { kind, .. } => assert_eq!(kind, "timeout"),
        other => panic!("spinner: {other:?}"),
    }
    match &plugin(readiness, "flooder").check {
        HealthCheck::Unhealthy { reason } => {
            assert!(reason.starts_with("sick sick"), "{reason}");
            assert!(
                reason.len() < 512,
                "the reason is kept cut: {}",
                reason.len()
            );
        }
        other => panic!("flooder: {other:?}"),
    }
    assert_eq!(
        plugin(readiness, "flooder").state,
        PluginHealthState::Degraded
    );
    assert_eq!(plugin(readiness, "fine").check, HealthCheck::Healthy);
    assert_eq!(plugin(readiness, "fine").state, PluginHealthState::Ok);
    // Built with the SDK: the default check. Contract 0.1: none.
    assert_eq!(plugin(readiness, HELLO).check, HealthCheck::Healthy);
    assert_eq!(plugin(readiness, HELLO_V0_1).check, HealthCheck::NoCheck);
    assert_eq!(plugin(readiness, HELLO_V0_1).state, PluginHealthState::Ok);

    // One check per plugin however many asked, and the answer is reused.
    host.readiness().await;
    for name in ["spinner", "flooder", "fine"] {
        assert_eq!(checks_counted(&host, name), 1.0, "{name}");
    }
    // A sick check does not stop the plugin's calls.
    for name in ["spinner", "flooder"] {
        let outcome = host.call(name, Request::new("any", "")).await.unwrap();
        assert_eq!(outcome.response.payload, b"ok");
    }
    // Paused: not asked, not counted against readiness.
    host.pause("spinner");
    host.pause("flooder");
    let readiness = host.readiness().await;
    assert!(readiness.ready, "{readiness:?}");
    assert_eq!(
        plugin(&readiness, "spinner").state,
        PluginHealthState::Paused
    );
    assert_eq!(plugin(&readiness, "spinner").check, HealthCheck::NotAsked);
}

#[tokio::test]
async fn a_plugin_the_policy_keeps_out_of_readiness_is_shown_but_does_not_decide_it() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    host.load(
        PluginSpec::from_path(plugin_path(SICK_HEALTH))
            .grants(counting())
            .config("health", "flood")
            .readiness(false),
    )
    .await
    .unwrap();
    let readiness = host.readiness().await;
    assert!(readiness.ready, "{readiness:?}");
    let sick = plugin(&readiness, SICK_HEALTH);
    assert_eq!(sick.state, PluginHealthState::Degraded);
    assert!(!sick.counts);
    assert!(plugin(&readiness, HELLO).counts);
}
