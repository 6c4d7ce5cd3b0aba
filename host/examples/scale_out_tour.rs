//! The scale-out part of `cargo xtask demo`: two hosts share one key-value
//! store through NATS JetStream, as two `capsule serve` processes behind a
//! load balancer would with `[host.backend] kind = "nats"`.
//!
//! Starts a private `nats-server` on a free loopback port (or says how to
//! install it and stops), builds two hosts from the demo policy with the
//! backend switched to that server, loads `kv-counter` on both, and counts
//! on both at once.
//!
//! Run with: `cargo run -p capsule-host --features nats --example
//! scale_out_tour -- example-plugins/capsule.toml`

use anyhow::{Result, anyhow, ensure};
use capsule_host::backend::local::{INSTALL_HINT, NatsServer};
use capsule_host::backend::{Backend, NatsOptions};
use capsule_host::{Host, HostBuilder, PluginSpec, Policy, Request};
use serde_json::{Value, json};

fn show(label: &str, value: impl std::fmt::Display) {
    println!("   {label:<12} {value}");
}

async fn increment(host: &Host) -> Result<i64> {
    let outcome = host
        .call(
            "kv-counter",
            Request::new("increment", json!({"key": "visits"}).to_string()),
        )
        .await?;
    let value: Value = serde_json::from_slice(&outcome.response.payload)?;
    value["count"]
        .as_i64()
        .ok_or_else(|| anyhow!("no count in {value}"))
}

#[tokio::main]
async fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "example-plugins/capsule.toml".into());
    let policy = Policy::load(path.as_ref()).map_err(|err| anyhow!("{err}"))?;
    let server = match NatsServer::start() {
        Ok(server) => server,
        Err(err) if err.contains(INSTALL_HINT) => {
            println!("   skipped: nats-server is not installed here; {INSTALL_HINT}");
            return Ok(());
        }
        Err(err) => return Err(anyhow!(err)),
    };
    show("nats-server", server.url());

    let backend = Backend::Nats(NatsOptions::new(server.url()).prefix("demo"));
    let spec = PluginSpec::from_policy(&policy, "kv-counter")
        .ok_or_else(|| anyhow!("the demo policy has kv-counter"))?;
    let mut hosts = Vec::new();
    for name in ["host A", "host B"] {
        let host = HostBuilder::from_policy(&policy)
            .backend(backend.clone())
            .build()?;
        host.load(spec.clone()).await?;
        show(
            name,
            "kv-counter loaded, its namespace in NATS bucket demo-kv",
        );
        hosts.push(host);
    }

    // Alternate between the hosts, as a load balancer would.
    for round in 0..3 {
        for (name, host) in ["host A", "host B"].iter().zip(&hosts) {
            let count = increment(host).await?;
            show(name, format!("increment → {count}"));
            ensure!(
                count == round * 2 + if *name == "host A" { 1 } else { 2 },
                "each host sees the other's increments"
            );
        }
    }

    // Both at once: 2 hosts × 4 tasks × 25 increments.
    let mut tasks = Vec::new();
    for host in &hosts {
        for _ in 0..4 {
            let host = host.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    increment(&host).await?;
                }
                anyhow::Ok(())
            }));
        }
    }
    for task in tasks {
        task.await??;
    }
    let total = increment(&hosts[0]).await? - 1;
    show(
        "concurrent",
        format!("after 200 more increments on both hosts at once: {total}"),
    );
    ensure!(total == 206, "no increment was lost between the hosts");

    println!();
    println!("scale-out tour: two hosts shared one counter exactly");
    Ok(())
}
