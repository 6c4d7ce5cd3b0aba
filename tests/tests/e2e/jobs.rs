//! Background jobs (`Host::submit_job`): stored at once, run by the host's
//! runner when due, read back by id; failed attempts retried with backoff
//! up to `job_attempts`; cancelled queued or running; kept for `job_ttl`;
//! bounded by `max_jobs`; and still there, and run again, after the host
//! that held them stopped.

use std::time::{Duration, Instant, SystemTime};

use capsule_host::services::kv::KvGrant;
use capsule_host::{
    Grants, Host, Job, JobError, JobState, JobSubmission, Limits, PluginSpec, Request,
};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{HELLO, KV_COUNTER, REPORT, SPIN_LOOP};
use serde_json::{Value, json};

/// A host whose store survives it, in `dir`.
fn host_in(dir: &std::path::Path) -> Host {
    capsule_tests::host_builder()
        .data_dir(dir)
        .build()
        .expect("host builds")
}

fn job(op: &str, input: Value) -> JobSubmission {
    JobSubmission {
        operation: op.into(),
        payload: input.to_string().into_bytes(),
        ..JobSubmission::default()
    }
}

/// Waits until job `id` is finished (at most `within`).
async fn finished(host: &Host, id: &str, within: Duration) -> Job {
    let until = Instant::now() + within;
    loop {
        let job = host.job(id).await.unwrap();
        if job.state.is_finished() {
            return job;
        }
        assert!(Instant::now() < until, "job still {:?}", job.state);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until job `id` is in `state`.
async fn reaches(host: &Host, id: &str, state: JobState) -> Job {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let job = host.job(id).await.unwrap();
        if job.state == state {
            return job;
        }
        assert!(Instant::now() < until, "job still {:?}", job.state);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_in_the_background_and_is_read_back_by_its_id() {
    let dir = capsule_tests::temp_dir("jobs-lifecycle");
    let host = host_in(&dir);
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    // Stored before any runner exists: queued, with an unguessable id.
    let submitted = host
        .submit_job(HELLO, job("greet", json!({"name": "Ada"})))
        .await
        .unwrap();
    assert_eq!(submitted.state, JobState::Queued);
    let (plugin, random) = submitted.id.rsplit_once('.').unwrap();
    assert_eq!(plugin, HELLO);
    assert_eq!(random.len(), 32);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        host.job(&submitted.id).await.unwrap().state,
        JobState::Queued
    );
    let _runner = host.start_jobs();
    let done = finished(&host, &submitted.id, Duration::from_secs(10)).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.attempts, 1);
    let result = done.result.unwrap();
    assert_eq!(result.payload, br#"{"greeting":"Hello, Ada!"}"#);
    assert!(done.finished_ms.unwrap() >= done.created_ms);

    // Unknown ids, plugins and malformed ids are typed errors.
    let other = format!("{HELLO}.{}", "0".repeat(32));
    assert_eq!(
        host.job(&other).await.unwrap_err(),
        JobError::UnknownJob(other.clone())
    );
    for bad in [
        "nonsense",
        "hello.xyz",
        "../etc.00000000000000000000000000000000",
    ] {
        assert!(matches!(
            host.job(bad).await.unwrap_err(),
            JobError::UnknownJob(_)
        ));
    }
    assert_eq!(
        host.submit_job("nobody", job("greet", json!({})))
            .await
            .unwrap_err(),
        JobError::UnknownPlugin("nobody".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_with_backoff_and_refused_requests_are_not() {
    let dir = capsule_tests::temp_dir("jobs-retry");
    let host = host_in(&dir);
    let limits = Limits {
        job_attempts: 3,
        ..Limits::default()
    };
    let grants = Grants {
        kv: Some(KvGrant::new("jobs-retry")),
        ..Grants::default()
    };
    host.load(
        PluginSpec::from_path(plugin_path(KV_COUNTER))
            .grants(grants)
            .limits(limits.clone()),
    )
    .await
    .unwrap();
    host.load(PluginSpec::from_path(plugin_path(HELLO)).limits(limits))
        .await
        .unwrap();
    let _runner = host.start_jobs();
    // Always fails after its writes: three attempts, 1 s then 2 s apart,
    // none of which kept a write.
    let failing = host
        .submit_job(
            KV_COUNTER,
            job("increment-all", json!({"keys": ["k"], "then": "error"})),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let done = finished(&host, &failing.id, Duration::from_secs(20)).await;
    assert_eq!(done.state, JobState::Failed);
    assert_eq!(done.attempts, 3);
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "backoff 1 s + 2 s"
    );
    let error = done.error.unwrap();
    assert_eq!(error.kind, "plugin_error");
    let count = host
        .call(KV_COUNTER, Request::new("get", r#"{"key":"k"}"#))
        .await
        .unwrap();
    assert!(count.response.text().unwrap().contains(r#""count":0"#));
    let metrics = host.metrics_text();
    for (outcome, n) in [("retried", 2), ("failed", 1)] {
        let line =
            format!("capsule_jobs_total{{plugin=\"{KV_COUNTER}\",outcome=\"{outcome}\"}} {n}");
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }

    // A request the plugin refuses as invalid is not tried again.
    let refused = host
        .submit_job(HELLO, job("greet", json!({"nom": "Ada"})))
        .await
        .unwrap();
    let done = finished(&host, &refused.id, Duration::from_secs(10)).await;
    assert_eq!((done.state, done.attempts), (JobState::Failed, 1));
    assert_eq!(done.error.unwrap().kind, "plugin_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_jobs_never_run_or_stop_running() {
    let dir = capsule_tests::temp_dir("jobs-cancel");
    let host = host_in(&dir);
    let limits = Limits {
        max_instances: 1,
        max_response_bytes: 512 << 20,
        timeout: Duration::from_secs(120),
        queue_timeout: Duration::from_secs(20),
        ..Limits::default()
    };
    crate::report::load_report(&host, limits).await;
    let _runner = host.start_jobs();
    // A job for a minute from now, cancelled while it waits.
    let later = host
        .submit_job(
            REPORT,
            JobSubmission {
                run_at: Some(SystemTime::now() + Duration::from_secs(60)),
                ..job("sales", json!({"rows": 10}))
            },
        )
        .await
        .unwrap();
    let cancelled = host.cancel_job(&later.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(cancelled.attempts, 0);
    // A job cancelled while it runs: its call is stopped, its instance
    // slot is free again, and its writes are gone.
    let long = host
        .submit_job(
            REPORT,
            job("sales", json!({"rows": 5_000_000, "chunk_rows": 100})),
        )
        .await
        .unwrap();
    reaches(&host, &long.id, JobState::Running).await;
    let stopped = host.cancel_job(&long.id).await.unwrap();
    assert_eq!(stopped.state, JobState::Cancelled);
    let count = host.call(REPORT, Request::new("count", "")).await.unwrap();
    assert_eq!(count.response.payload, br#"{"reports":0}"#);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in [&later.id, &long.id] {
        let job = host.job(id).await.unwrap();
        assert_eq!(job.state, JobState::Cancelled, "{id}");
        assert!(job.result.is_none());
    }
    // Cancelling a finished job leaves it as it is.
    assert_eq!(
        host.cancel_job(&later.id).await.unwrap().state,
        JobState::Cancelled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_for_their_time_and_expire_after_their_ttl() {
    let dir = capsule_tests::temp_dir("jobs-time");
    let host = host_in(&dir);
    let limits = Limits {
        job_ttl: Duration::from_secs(1),
        ..Limits::default()
    };
    host.load(PluginSpec::from_path(plugin_path(HELLO)).limits(limits))
        .await
        .unwrap();
    let _runner = host.start_jobs();
    let submitted = host
        .submit_job(
            HELLO,
            JobSubmission {
                run_at: Some(SystemTime::now() + Duration::from_millis(1500)),
                ..job("greet", json!({"name": "Ada"}))
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        host.job(&submitted.id).await.unwrap().state,
        JobState::Queued
    );
    let done = finished(&host, &submitted.id, Duration::from_secs(10)).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert!(done.finished_ms.unwrap() >= submitted.created_ms + 1500);
    // Kept for its TTL, then gone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(matches!(
        host.job(&submitted.id).await.unwrap_err(),
        JobError::UnknownJob(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_holds_at_most_max_jobs_and_jobs_need_a_lasting_store() {
    let dir = capsule_tests::temp_dir("jobs-bounds");
    let host = host_in(&dir);
    let limits = Limits {
        max_jobs: 2,
        max_request_bytes: 1024,
        ..Limits::default()
    };
    host.load(PluginSpec::from_path(plugin_path(HELLO)).limits(limits))
        .await
        .unwrap();
    let later = || JobSubmission {
        run_at: Some(SystemTime::now() + Duration::from_secs(3600)),
        ..job("greet", json!({"name": "Ada"}))
    };
    for _ in 0..2 {
        host.submit_job(HELLO, later()).await.unwrap();
    }
    assert_eq!(
        host.submit_job(HELLO, later()).await.unwrap_err(),
        JobError::TooMany {
            plugin: HELLO.into(),
            limit: 2
        }
    );
    let big = JobSubmission {
        payload: vec![b'x'; 2048],
        ..later()
    };
    assert!(matches!(
        host.submit_job(HELLO, big).await.unwrap_err(),
        JobError::InputTooLarge { limit: 1024, .. }
    ));
    // Without a data_dir the store is in memory: jobs would not survive.
    let fleeting = crate::host();
    fleeting
        .load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    assert_eq!(
        fleeting.submit_job(HELLO, later()).await.unwrap_err(),
        JobError::NotPersistent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_its_host_and_a_running_one_runs_again() {
    let dir = capsule_tests::temp_dir("jobs-restart");
    let limits = Limits {
        fuel: None,
        timeout: Duration::from_millis(1500),
        queue_timeout: Duration::ZERO,
        job_attempts: 2,
        ..Limits::default()
    };
    let spec = || PluginSpec::from_path(plugin_path(SPIN_LOOP)).limits(limits.clone());
    let id = {
        let host = host_in(&dir);
        host.load(spec()).await.unwrap();
        let runner = host.start_jobs();
        let submitted = host
            .submit_job(SPIN_LOOP, job("run", json!({})))
            .await
            .unwrap();
        // Spinning until its deadline: the host "crashes" meanwhile.
        reaches(&host, &submitted.id, JobState::Running).await;
        drop(runner);
        drop(host);
        submitted.id
    };
    // The first host's store closes once its last task let go of it.
    let started = Instant::now();
    let host = loop {
        match capsule_tests::host_builder().data_dir(&dir).build() {
            Ok(host) => break host,
            Err(err) => {
                assert!(started.elapsed() < Duration::from_secs(10), "{err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    host.load(spec()).await.unwrap();
    let job = host.job(&id).await.unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Running, 1));
    let _runner = host.start_jobs();
    // Its lease (timeout + 2 s) runs out, and the second host runs it as
    // its second and last attempt, which spins to its deadline too.
    let done = finished(&host, &id, Duration::from_secs(20)).await;
    assert_eq!((done.state, done.attempts), (JobState::Failed, 2));
    assert_eq!(done.error.unwrap().kind, "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_job_recurs_until_cancelled() {
    let dir = capsule_tests::temp_dir("jobs-schedule");
    let host = host_in(&dir);
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    let _runner = host.start_jobs();
    let every_second = JobSubmission {
        schedule: Some("* * * * * *".into()),
        ..job("greet", json!({"name": "Ada"}))
    };
    let submitted = host.submit_job(HELLO, every_second).await.unwrap();
    assert_eq!(submitted.state, JobState::Queued);
    // Its first time is the next whole second.
    assert_eq!(submitted.run_at_ms % 1000, 0);
    let until = Instant::now() + Duration::from_secs(15);
    let ran = loop {
        let job = host.job(&submitted.id).await.unwrap();
        if job.runs >= 2 {
            break job;
        }
        assert!(Instant::now() < until, "{job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Between runs it waits for its next time, its last result kept.
    assert!(matches!(ran.state, JobState::Queued | JobState::Running));
    assert!(ran.result.is_some());
    let cancelled = host.cancel_job(&submitted.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    let runs = cancelled.runs;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = host.job(&submitted.id).await.unwrap();
    assert_eq!((after.state, after.runs), (JobState::Cancelled, runs));
    // A pattern that is not one is refused before anything is stored.
    let bad = JobSubmission {
        schedule: Some("every day".into()),
        ..job("greet", json!({"name": "Ada"}))
    };
    assert!(matches!(
        host.submit_job(HELLO, bad).await.unwrap_err(),
        JobError::Schedule { .. }
    ));
}
