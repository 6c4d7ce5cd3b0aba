//! A tour of the Capsule runtime as an embedder uses it: load a policy, run
//! a pipeline, watch an event flow from a producer plugin to a consumer
//! plugin, reload a plugin while it serves, roll new versions out (one that
//! fails and rolls back by itself, one that steps up and is promoted),
//! stream a report, run background jobs, ask whether the host is ready,
//! and read the metrics.
//!
//! `cargo xtask demo` runs it against `example-plugins/capsule.toml`:
//!
//! ```text
//! cargo run -p capsule-host --example runtime_tour -- example-plugins/capsule.toml
//! ```
//!
//! Every step checks what it shows; the tour exits non-zero if anything
//! behaves unexpectedly.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use capsule_host::{
    Host, HostBuilder, JobState, JobSubmission, PluginSpec, Policy, Request, RequestId,
    RolloutPlan, RolloutState, StreamItem,
};
use serde_json::{Value, json};

fn section(title: &str) {
    println!();
    println!("── {title}");
}

fn show(label: &str, value: impl std::fmt::Display) {
    println!("   {label:<12} {value}");
}

fn payload(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "example-plugins/capsule.toml".into());
    let policy = Policy::load(path.as_ref()).map_err(|err| anyhow::anyhow!("{err}"))?;
    let host = HostBuilder::from_policy(&policy)
        .middleware(RequestId)
        .build()?;

    section(&format!("loading every plugin of {path}"));
    let failures = host.load_policy(&policy).await;
    for failure in &failures {
        println!("   not loaded: {failure}");
    }
    ensure!(failures.is_empty(), "every plugin of the demo policy loads");
    for status in host.statuses() {
        let details = &status.details;
        show(
            &details.name,
            format!(
                "v{} sha256:{}… signed by {}",
                details.info.version,
                &details.digest[..12],
                details.signers.join(", ")
            ),
        );
    }
    let pipelines = host.pipelines();
    for pipeline in &pipelines {
        show(
            "pipeline",
            format!("{}: {}", pipeline.name, pipeline.stages.join(" → ")),
        );
    }

    section("pipeline `ingest`: validate → transform → enrich, one JSON record");
    let record =
        json!({"id": " 42 ", "name": "ada lovelace", "email": "Ada@Example.COM", "amount": 1234.5});
    show("input", &record);
    let outcome = host
        .call_pipeline("ingest", Request::new("process", record.to_string()))
        .await?;
    let enriched = payload(&outcome.response.payload);
    show("output", &enriched);
    ensure!(
        enriched["tier"] == "gold" && enriched["amount_cents"] == 123450,
        "the record went through every stage"
    );

    let bad = json!({"id": "43", "name": "", "email": "nobody", "amount": -1});
    show("input", &bad);
    match host
        .call_pipeline("ingest", Request::new("process", bad.to_string()))
        .await
    {
        Ok(_) => bail!("an invalid record must stop the pipeline"),
        Err(err) => {
            show("stopped", &err);
            ensure!(
                err.to_string().contains("stage 1 of 3"),
                "the error names the stage"
            );
        }
    }

    section(
        "pipeline `ingest-tx` (transaction = true): the stages' writes commit together, or not at all",
    );
    let mut stored_events = host.subscribe("ingest.>").map_err(anyhow::Error::msg)?;
    let small = json!({"id": "t-1", "name": "ada", "email": "ada@example.com", "amount": 12.5});
    let outcome = host
        .call_pipeline("ingest-tx", Request::new("process", small.to_string()))
        .await?;
    show("committed", format!("{} event(s)", outcome.events.len()));
    ensure!(
        outcome.events.len() == 2,
        "the archive and the store both published"
    );
    let large = json!({"id": "t-2", "name": "bob", "email": "bob@example.com", "amount": 5000});
    match host
        .call_pipeline("ingest-tx", Request::new("process", large.to_string()))
        .await
    {
        Ok(_) => bail!("the store stage refuses amounts over its limit"),
        Err(err) => show("refused", &err),
    }
    let mut sources = Vec::new();
    while let Some(event) = stored_events.try_recv() {
        sources.push(format!("{} from {}", event.topic, event.source));
    }
    show("events", sources.join(", "));
    ensure!(
        sources.len() == 2,
        "the refused record's archive write and event were discarded with it"
    );

    section("events: order-intake publishes orders.created, order-audit consumes it");
    let mut large_orders = host.subscribe("orders.large").map_err(anyhow::Error::msg)?;
    let order = json!({"order_id": "A-1", "item": "teapot", "quantity": 2});
    let placed = host
        .call("order-intake", Request::new("place", order.to_string()))
        .await?;
    show("placed", payload(&placed.response.payload));
    for event in &placed.events {
        show(
            "published",
            format!("{} {}", event.topic, payload(&event.payload)),
        );
    }
    let count = wait_for_count(&host, 1).await?;
    show(
        "audited",
        format!("order-audit has stored {count} order(s)"),
    );
    let stored = host
        .call(
            "order-audit",
            Request::new("get", json!({"order_id": "A-1"}).to_string()),
        )
        .await?;
    show("stored", payload(&stored.response.payload));

    let big = json!({"order_id": "B-7", "item": "pallet", "quantity": 500});
    host.call("order-intake", Request::new("place", big.to_string()))
        .await?;
    let forwarded = tokio::time::timeout(Duration::from_secs(5), large_orders.recv())
        .await
        .context("order-audit forwards large orders to orders.large")?
        .context("the subscription is open")?;
    show(
        "forwarded",
        format!(
            "{} from {}: {}",
            forwarded.topic,
            forwarded.source,
            payload(&forwarded.payload)
        ),
    );

    host.publish("orders.created", "this is not an order")
        .await
        .map_err(anyhow::Error::msg)?;
    let dead = wait_for_dead_letter(&host).await?;
    show(
        "dead letter",
        format!("{} ({})", dead.reason, dead.subscriber),
    );

    section("reload hello while it serves");
    let before = host.status("hello").context("hello is loaded")?;
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let host = host.clone();
            tokio::spawn(async move {
                host.call(
                    "hello",
                    Request::new("greet", json!({"name": format!("n{i}")}).to_string()),
                )
                .await
            })
        })
        .collect();
    let reloaded = host.reload("hello").await?;
    let mut served = 0;
    for call in calls {
        call.await?.context("no call is lost during a reload")?;
        served += 1;
    }
    let after = host.status("hello").context("hello is loaded")?;
    show("calls", format!("{served} of 50 served during the reload"));
    show(
        "generation",
        format!("{} → {}", before.generation, after.generation),
    );
    show(
        "version",
        format!(
            "v{} sha256:{}…",
            reloaded.info.version,
            &reloaded.digest[..12]
        ),
    );
    ensure!(
        after.generation == before.generation + 1,
        "the reload switched versions"
    );

    section("pause and resume");
    host.pause("hello");
    let refused = host
        .call("hello", Request::new("greet", r#"{"name":"Ada"}"#))
        .await
        .expect_err("a paused plugin refuses calls");
    show("paused", format!("{} ({})", refused, refused.kind()));
    host.resume("hello");
    let greeted = host
        .call("hello", Request::new("greet", r#"{"name":"Ada"}"#))
        .await?;
    show("resumed", payload(&greeted.response.payload));

    section("canary: a new version of `greeter` that panics takes 50 % of the calls");
    let hello_path = &policy
        .plugins
        .get("hello")
        .context("the policy has hello")?
        .path;
    let plugins = hello_path
        .parent()
        .context("hello's directory holds the other builds")?
        .to_owned();
    // hello under another name, without hello's input validation (the
    // panicking build declares no operations to validate against).
    host.load(PluginSpec::from_path(hello_path).with_name("greeter"))
        .await?;
    let mut plan = RolloutPlan::new(plugins.join("panic.wasm"), 50.0);
    plan.min_calls = 4;
    host.start_rollout("greeter", plan).await?;
    let mut failed = 0;
    for i in 0..20 {
        let greet = Request::new("greet", json!({"name": format!("n{i}")}).to_string());
        if host.call("greeter", greet).await.is_err() {
            failed += 1;
        }
    }
    let rolled = host.rollout("greeter").context("the rollout is kept")?;
    show(
        "calls",
        format!("{failed} of 20 failed, all on the new version"),
    );
    show(
        "rolled back",
        rolled.reason.as_deref().unwrap_or("(no reason)"),
    );
    ensure!(
        rolled.state == RolloutState::RolledBack && failed == 4,
        "the failing version rolled back by itself after its 4 judged calls"
    );

    section("canary: `greeter` gets hello v0.1, 25 % → 100 % while healthy, then is promoted");
    let mut plan = RolloutPlan::new(plugins.join("hello-v0-1.wasm"), 25.0);
    plan.min_calls = 3;
    plan.step = Some((25.0, Duration::from_millis(100)));
    plan.sticky = Some("user".into());
    host.start_rollout("greeter", plan).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut shares = Vec::new();
    let promoted = loop {
        let status = host.rollout("greeter").context("the rollout is kept")?;
        if shares.last() != Some(&status.share) {
            shares.push(status.share);
        }
        if status.state == RolloutState::Promoted {
            break status;
        }
        ensure!(
            Instant::now() < deadline,
            "the healthy version was promoted"
        );
        for i in 0..10 {
            let greet = Request::new("greet", json!({"name": "Ada"}).to_string())
                .with_metadata("user", format!("user-{i}"));
            host.call("greeter", greet).await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    show(
        "share",
        shares
            .iter()
            .map(|share| format!("{share} %"))
            .collect::<Vec<_>>()
            .join(" → "),
    );
    show(
        "promoted",
        format!(
            "v{} after {} calls, {} failed",
            promoted.canary.version, promoted.canary.calls, promoted.canary.failures
        ),
    );
    let greeted = host.call("greeter", Request::new("greet", "Ada")).await?;
    show("now", payload(&greeted.response.payload));

    section(
        "streaming: report writes a CSV in chunks; the caller holds the first before the call ends",
    );
    let started = Instant::now();
    let mut stream = host.call_stream(
        "report",
        Request::new("sales", r#"{"rows":5000,"chunk_rows":1000}"#),
    );
    let mut first = None;
    let mut chunks = 0;
    let ended = loop {
        match stream.next().await {
            Some(StreamItem::Chunk(chunk)) => {
                chunks += 1;
                if first.is_none() {
                    first = Some(started.elapsed());
                    let text = String::from_utf8_lossy(&chunk);
                    show(
                        "first rows",
                        text.lines().take(3).collect::<Vec<_>>().join(" | "),
                    );
                }
            }
            Some(StreamItem::End(end)) => break end?,
            None => bail!("a stream ends with its end"),
        }
    };
    let first = first.context("report wrote chunks")?;
    show(
        "chunks",
        format!(
            "{chunks}, the first after {first:?}; the call took {:?}",
            ended.stats.duration
        ),
    );
    ensure!(chunks == 5, "5,000 rows in chunks of 1,000");

    section("background jobs: thumbnail scales an image as a job; a greeting recurs every second");
    let _runner = host.start_jobs();
    let side = 64usize;
    let pixels: Vec<u8> = (0..side * side).map(|i| (i % 251) as u8).collect();
    let image = json!({"image": {"width": side, "height": side, "pixels": pixels}, "max": 8});
    let submitted = host
        .submit_job(
            "thumbnail",
            JobSubmission {
                operation: "make".into(),
                payload: image.to_string().into_bytes(),
                ..JobSubmission::default()
            },
        )
        .await?;
    show(
        "submitted",
        format!("{} ({:?})", submitted.id, submitted.state),
    );
    let done = wait_for_job(&host, &submitted.id, |job| job.state.is_finished()).await?;
    let result = done.result.context("the job succeeded")?;
    let thumbnail = payload(&result.payload);
    show(
        "finished",
        format!(
            "{:?} after {} attempt(s): {}×{}",
            done.state, done.attempts, thumbnail["width"], thumbnail["height"]
        ),
    );
    ensure!(done.state == JobState::Succeeded && thumbnail["width"] == 8);
    let recurring = host
        .submit_job(
            "hello",
            JobSubmission {
                operation: "greet".into(),
                payload: br#"{"name":"Ada"}"#.to_vec(),
                schedule: Some("* * * * * *".into()),
                ..JobSubmission::default()
            },
        )
        .await?;
    let ran = wait_for_job(&host, &recurring.id, |job| job.runs >= 2).await?;
    show(
        "recurring",
        format!("`* * * * * *`: {} runs so far", ran.runs),
    );
    let cancelled = host.cancel_job(&recurring.id).await?;
    show("cancelled", format!("{:?}", cancelled.state));

    section("readiness (`capsule serve` answers it at /readyz: 200, or 503 with what is wrong)");
    let readiness = host.readiness().await;
    for plugin in &readiness.plugins {
        println!(
            "   {:<16} {:?}, check {}",
            plugin.name,
            plugin.state,
            serde_json::to_string(&plugin.check)?
        );
    }
    show(
        "ready",
        format!("{} (backend {})", readiness.ready, readiness.backend.kind),
    );
    for failed in &readiness.not_loaded {
        println!(
            "   not loaded: {} ({}): {}",
            failed.name, failed.kind, failed.message
        );
    }
    ensure!(readiness.ready, "every plugin loaded and healthy");

    section("metrics (Prometheus text; `capsule serve` exposes them at /metrics)");
    let metrics = host.metrics_text();
    for line in metrics.lines().filter(|line| {
        line.starts_with("capsule_calls_total")
            || line.starts_with("capsule_events_total")
            || line.starts_with("capsule_reloads_total")
            || line.starts_with("capsule_rollouts_total")
    }) {
        println!("   {line}");
    }
    ensure!(metrics.contains(r#"capsule_reloads_total{plugin="hello",outcome="ok"} 1"#));

    host.shutdown(Duration::from_secs(2)).await;
    println!();
    println!("runtime tour: every step behaved as expected");
    Ok(())
}

async fn wait_for_job(
    host: &Host,
    id: &str,
    done: impl Fn(&capsule_host::Job) -> bool,
) -> Result<capsule_host::Job> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let job = host.job(id).await?;
        if done(&job) {
            return Ok(job);
        }
        ensure!(Instant::now() < until, "job {id} is still {:?}", job.state);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_count(host: &Host, at_least: i64) -> Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let outcome = host
            .call("order-audit", Request::new("count", "{}"))
            .await?;
        let count = payload(&outcome.response.payload)["count"]
            .as_i64()
            .unwrap_or(0);
        if count >= at_least {
            return Ok(count);
        }
        ensure!(
            Instant::now() < deadline,
            "order-audit did not receive the event in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_dead_letter(host: &Host) -> Result<capsule_host::DeadLetter> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(dead) = host.dead_letters().into_iter().last() {
            return Ok(dead);
        }
        ensure!(
            Instant::now() < deadline,
            "the malformed event became a dead letter"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
