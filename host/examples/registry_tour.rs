//! The distribution part of `cargo xtask demo`: a signed plugin pushed to an
//! OCI registry, found by `capsule search`, and run from a policy that names
//! it by `oci://` reference; then the tag re-pointed at an unsigned copy,
//! which the same policy refuses.
//!
//! Starts a private `docker-registry` on a free loopback port (or says how
//! to install it and stops) and drives the `capsule` binary, printing each
//! command as the demo's other steps do.
//!
//! Run with: `cargo run -p capsule-host --features oci --example
//! registry_tour -- target/debug/capsule target/plugins target/demo`

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, anyhow, ensure};
use capsule_host::artifact::{inspect, manifest, signature};
use capsule_host::distribution::layout::Artifact;
use capsule_host::distribution::local::{INSTALL_HINT, RegistryServer};
use capsule_host::distribution::{OciOptions, OciReference, Registry};

/// Runs `capsule ARGS`, prints the command and its output, and returns
/// whether it succeeded and its stderr.
fn capsule(binary: &Path, args: &[&str]) -> Result<(bool, String)> {
    println!("   $ capsule {}", args.join(" "));
    let output = Command::new(binary).args(args).output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    for line in stdout.lines() {
        println!("   │ {line}");
    }
    for line in stderr.lines().filter(|l| l.starts_with("error")) {
        println!("   ┆ {line}");
    }
    Ok((output.status.success(), stderr))
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let binary = PathBuf::from(args.next().unwrap_or_else(|| "target/debug/capsule".into()));
    let plugins = PathBuf::from(args.next().unwrap_or_else(|| "target/plugins".into()));
    let work = PathBuf::from(args.next().unwrap_or_else(|| "target/demo".into()));
    let registry = match RegistryServer::start() {
        Ok(server) => server,
        Err(err) if err.contains(INSTALL_HINT) => {
            println!("   skipped: docker-registry is not installed here; {INSTALL_HINT}");
            return Ok(());
        }
        Err(err) => return Err(anyhow!(err)),
    };
    // The policy resolves relative paths against its own folder.
    let plugins = std::path::absolute(&plugins)?;
    let work = std::path::absolute(&work)?;
    let hello = plugins.join("hello.wasm");
    let key = plugins.join("test-key.pub");
    let text = |p: &Path| p.display().to_string();
    let tag = format!("{}/demo/hello:0.1.0", registry.address());

    println!("   a registry on {}", registry.address());
    let (pushed, _) = capsule(
        &binary,
        &["push", &text(&hello), &tag, "--trust", &text(&key)],
    )?;
    ensure!(pushed, "capsule push failed");
    let (searched, _) = capsule(
        &binary,
        &["search", &registry.address(), "--tag", "greeting"],
    )?;
    ensure!(searched, "capsule search failed");

    let policy = work.join("registry.toml");
    std::fs::write(
        &policy,
        format!(
            "[host]\ntrusted_keys = [{:?}]\n[host.oci]\nstore = {:?}\n\n\
             [plugins.hello]\nsource = \"oci://{tag}\"\n",
            text(&key),
            text(&work.join("plugin-store")),
        ),
    )?;
    println!(
        "   {} names hello by `source = \"oci://{tag}\"`",
        policy.display()
    );
    let greet = [
        "run",
        "hello",
        "--config",
        &text(&policy),
        "--op",
        "greet",
        "--input",
        r#"{"name":"Ada"}"#,
    ];
    let (ran, _) = capsule(&binary, &greet)?;
    ensure!(ran, "hello did not run from the registry");

    // Someone with push rights re-points the tag at a copy without the
    // signature (what `capsule push` would refuse, so straight to the
    // registry): the policy now refuses what the tag names.
    let bytes = std::fs::read(&hello)?;
    let unsigned = signature::unsigned_content(&bytes).map_err(|e| anyhow!(e))?;
    let summary = inspect::inspect(&unsigned)?;
    let found = manifest::read(&unsigned).map_err(|e| anyhow!(e))?;
    let artifact = Artifact::build(
        &unsigned,
        &summary,
        found.as_ref(),
        &[],
        "2026-01-01T00:00:00Z",
    );
    Registry::new(&OciOptions::default())?
        .push(&OciReference::parse(&tag)?, &unsigned, &artifact)
        .await?;
    println!("   the tag now names an unsigned copy of hello");
    let (ran, stderr) = capsule(&binary, &greet)?;
    ensure!(
        !ran && stderr.contains("[unsigned]"),
        "the unsigned copy should have been refused"
    );
    println!("   ✓ refused: only what a trusted key signed runs, wherever it came from");
    Ok(())
}
