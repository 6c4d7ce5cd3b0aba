//! `stubborn-shutdown`'s `shutdown` export never returns, in guest code
//! (`spin`) or inside a host call (`sleep`). Shutting a host down with several
//! such idle instances takes one deadline in all, not one per instance.

use std::time::{Duration, Instant};

use capsule_host::{Limits, PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::STUBBORN_SHUTDOWN;

const INSTANCES: usize = 4;

async fn host_with_idle_instances(how: &str) -> capsule_host::Host {
    let host = crate::host();
    host.load(
        PluginSpec::from_path(plugin_path(STUBBORN_SHUTDOWN))
            .config("shutdown", how)
            .limits(Limits {
                max_instances: INSTANCES,
                recycle_after: 100,
                timeout: Duration::from_secs(5),
                ..Limits::default()
            }),
    )
    .await
    .unwrap();
    // Overlapping calls leave INSTANCES warm instances behind.
    let calls: Vec<_> = (0..INSTANCES)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move {
                host.call(STUBBORN_SHUTDOWN, Request::new("nap", "300"))
                    .await
                    .map(|outcome| outcome.response.payload)
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), b"rested");
    }
    let status = host.status(STUBBORN_SHUTDOWN).unwrap();
    assert_eq!(status.live_instances, INSTANCES);
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_shutdowns_share_one_deadline() {
    for how in ["spin", "sleep"] {
        let host = host_with_idle_instances(how).await;
        let deadline = Duration::from_millis(500);
        let started = Instant::now();
        host.shutdown(deadline).await;
        let took = started.elapsed();
        // One deadline plus a margin, not one deadline per instance.
        assert!(
            took < deadline + Duration::from_millis(400),
            "{how}: shutting down {INSTANCES} instances took {took:?}"
        );
        assert_eq!(
            host.status(STUBBORN_SHUTDOWN).unwrap().live_instances,
            0,
            "{how}"
        );
    }
}
