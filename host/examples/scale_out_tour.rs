//! The scale-out part of `cargo xtask demo`: two hosts share one key-value
//! store and one event stream through NATS JetStream, as two `capsule
//! serve` processes behind a load balancer would with `[host.backend] kind
//! = "nats"`.
//!
//! Starts a private `nats-server` on a free loopback port (or says how to
//! install it and stops), builds two hosts from the demo policy with the
//! backend switched to that server, loads `kv-counter` and `order-audit` on
//! both, counts on both at once, then publishes orders on host A and shows
//! each handled once, by one host or the other, and a rejected one as the
//! deployment's dead letter, read on host B. Last, host B alone loads
//! `hello`: host A answers calls for it by forwarding them to B, the
//! deployment's listing shows who serves what, and once B stops, A says no
//! host serves it.
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

    let options = NatsOptions::new(server.url()).prefix("demo");
    let spec = PluginSpec::from_policy(&policy, "kv-counter")
        .ok_or_else(|| anyhow!("the demo policy has kv-counter"))?;
    let audit = PluginSpec::from_policy(&policy, "order-audit")
        .ok_or_else(|| anyhow!("the demo policy has order-audit"))?;
    let mut hosts = Vec::new();
    for (name, host_name) in [("host A", "host-a"), ("host B", "host-b")] {
        let host = HostBuilder::from_policy(&policy)
            .backend(Backend::Nats(options.clone().host_name(host_name)))
            .build()?;
        host.load(spec.clone()).await?;
        host.load(audit.clone()).await?;
        show(
            name,
            "kv-counter and order-audit loaded: kv in bucket demo-kv, events in stream \
             demo-events",
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

    events(&hosts).await?;
    let hello = PluginSpec::from_policy(&policy, "hello")
        .ok_or_else(|| anyhow!("the demo policy has hello"))?;
    remote_calls(hosts, hello).await?;

    println!();
    println!(
        "scale-out tour: two hosts shared one counter exactly, handled each event once and \
         answered calls for each other's plugins"
    );
    Ok(())
}

/// Host B alone loads `hello`; host A answers for it through B; the
/// listing shows who serves what; once B stops, A finds no host for it.
async fn remote_calls(hosts: Vec<Host>, hello: PluginSpec) -> Result<()> {
    let (a, b) = (&hosts[0], &hosts[1]);
    b.load(hello).await?;
    show("host B", "loads hello; host A does not");
    let outcome = a
        .call(
            "hello",
            Request::new("greet", json!({"name": "Ada"}).to_string()),
        )
        .await?;
    show(
        "host A",
        format!(
            "hello greet → {} (run on host B through NATS)",
            String::from_utf8_lossy(&outcome.response.payload)
        ),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let cluster = loop {
        let cluster = a.cluster().await.map_err(|err| anyhow!(err))?;
        let b_lists_hello = cluster
            .hosts
            .iter()
            .any(|h| h.host == "host-b" && h.plugins.iter().any(|p| p.name == "hello"));
        if b_lists_hello || std::time::Instant::now() > deadline {
            break cluster;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    for host in &cluster.hosts {
        let names: Vec<&str> = host.plugins.iter().map(|p| p.name.as_str()).collect();
        show(
            "cluster",
            format!("{} serves {}", host.host, names.join(", ")),
        );
    }
    ensure!(cluster.hosts.len() == 2, "both hosts are listed");
    b.shutdown(std::time::Duration::from_secs(2)).await;
    let err = a
        .call(
            "hello",
            Request::new("greet", json!({"name": "Ada"}).to_string()),
        )
        .await
        .err()
        .ok_or_else(|| anyhow!("a call for hello was answered after host B stopped"))?;
    show("host B", "stopped");
    show("host A", format!("hello greet → {}: {err}", err.kind()));
    ensure!(
        err.kind() == capsule_host::ErrorKind::UnknownPlugin,
        "no host serves hello any more"
    );
    Ok(())
}

/// Events this host's `order-audit` acknowledged, from its metrics.
fn acks(host: &Host) -> u64 {
    let line = r#"capsule_events_total{plugin="order-audit",outcome="ack"} "#;
    host.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

async fn stored_orders(host: &Host) -> Result<i64> {
    let outcome = host
        .call("order-audit", Request::new("count", "{}"))
        .await?;
    let value: Value = serde_json::from_slice(&outcome.response.payload)?;
    value["count"]
        .as_i64()
        .ok_or_else(|| anyhow!("no count in {value}"))
}

/// 40 orders published on host A, handled once each across both hosts; a
/// malformed one becomes one dead letter that host B reads.
async fn events(hosts: &[Host]) -> Result<()> {
    let (a, b) = (&hosts[0], &hosts[1]);
    for i in 0..40 {
        let order = json!({"order_id": format!("demo-{i}"), "item": "teapot", "quantity": 1});
        a.publish("orders.created", order.to_string())
            .await
            .map_err(|err| anyhow!(err))?;
    }
    a.publish("orders.created", "not an order")
        .await
        .map_err(|err| anyhow!(err))?;
    show("published", "40 orders and 1 malformed one on host A");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stored_orders(b).await? < 40 {
        ensure!(
            std::time::Instant::now() < deadline,
            "the orders were not handled in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let letters = loop {
        let letters = b
            .deployment_dead_letters()
            .await
            .map_err(|err| anyhow!(err))?;
        if !letters.is_empty() || std::time::Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let (on_a, on_b) = (acks(a), acks(b));
    show(
        "handled",
        format!(
            "{on_a} on host A + {on_b} on host B = {} orders, each once",
            on_a + on_b
        ),
    );
    ensure!(on_a + on_b == 40, "each event was handled exactly once");
    ensure!(
        stored_orders(a).await? == 40,
        "both hosts see the 40 orders"
    );
    let letter = letters
        .first()
        .ok_or_else(|| anyhow!("the malformed order left no dead letter"))?;
    show(
        "dead letter",
        format!(
            "read on host B: {} after {} attempt(s): {}",
            letter.subscriber, letter.attempts, letter.reason
        ),
    );
    Ok(())
}
