//! How many warm instances one host holds, and what each costs in resident
//! memory: `hello` with `prewarm` = `max_instances` = 10,000 (or
//! `CAPSULE_DENSITY_INSTANCES`), in a process of its own so nothing else
//! the benchmarks allocate is counted. Not a criterion benchmark: it
//! measures memory once. Writes `target/bench/density.json`, which
//! `cargo xtask bench` turns into rows of its table.
//!
//! Method: a host with a compile cache loads `hello` once as `probe` (which
//! compiles it and warms the allocator), then reads its resident set; then
//! loads it again as `dense` (from the cache, so no compiler memory) with
//! every instance started at load, and reads the resident set again. The
//! difference over the instance count is the cost of one idle instance,
//! plus a share of the second copy of the code (a few hundred kilobytes
//! over all of them).

use std::path::PathBuf;
use std::time::Instant;

use capsule_host::{EngineOptions, Host, Limits, PluginSpec, PoolingOptions, PublicKey, Request};

fn plugin_dir() -> PathBuf {
    std::env::var_os("CAPSULE_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"))
}

/// The process's resident set in bytes (`VmRSS` in `/proc/self/status`).
fn resident_bytes() -> u64 {
    let status =
        std::fs::read_to_string("/proc/self/status").expect("/proc/self/status is readable");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("/proc/self/status has VmRSS");
    kib * 1024
}

fn main() {
    // `cargo bench` passes `--bench` (and a filter, if any): run only when
    // unfiltered or when the filter names this benchmark.
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with("--"));
    if filter.as_deref().is_some_and(|f| !"density".contains(f)) {
        return;
    }
    let instances: usize = std::env::var("CAPSULE_DENSITY_INSTANCES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let dir = plugin_dir();
    let hello = dir.join("hello.wasm");
    assert!(
        hello.is_file(),
        "{} is missing: run `cargo xtask bench`",
        hello.display()
    );
    let key = PublicKey::from_file(&dir.join("test-key.pub")).expect("the test key exists");
    let cache = std::env::temp_dir().join(format!("capsule-density-{}", std::process::id()));
    let limits = Limits::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(async {
        let host = Host::builder()
            .trust(key)
            .cache_dir(&cache)
            .engine_options(EngineOptions {
                // Only the pool's instance count raised: its memory slots
                // (two per instance) keep the default 4 GiB of address
                // space each (about 80 TiB in all, reserved, never
                // resident).
                pooling: Some(PoolingOptions {
                    total_instances: u32::try_from(instances + 1).unwrap(),
                    ..PoolingOptions::default()
                }),
                ..EngineOptions::default()
            })
            .build()
            .expect("the host builds");
        host.load(PluginSpec::from_path(&hello).with_name("probe"))
            .await
            .unwrap();
        host.call("probe", Request::new("greet", r#"{"name":"Ada"}"#))
            .await
            .unwrap();
        let before = resident_bytes();
        let started = Instant::now();
        host.load(
            PluginSpec::from_path(&hello)
                .with_name("dense")
                .limits(Limits {
                    max_instances: instances,
                    prewarm: instances,
                    ..limits.clone()
                }),
        )
        .await
        .unwrap();
        let load_seconds = started.elapsed().as_secs_f64();
        let after = resident_bytes();
        let held = host.status("dense").unwrap().live_instances;
        assert_eq!(held, instances, "every instance was started");
        // They are warm: calls find them so.
        for _ in 0..100 {
            let outcome = host
                .call("dense", Request::new("greet", r#"{"name":"Ada"}"#))
                .await
                .unwrap();
            assert!(!outcome.stats.fresh_instance);
        }
        serde_json::json!({
            "instances": held,
            "load_seconds": load_seconds,
            "resident_before": before,
            "resident_after": after,
            "per_instance_bytes": (after.saturating_sub(before)) as f64 / held as f64,
        })
    });
    let _ = std::fs::remove_dir_all(&cache);
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("density.json"), report.to_string()).unwrap();
    println!(
        "density: {} warm instances of hello loaded in {:.2} s; resident {:.1} MiB -> {:.1} MiB, \
         {:.1} KiB per idle instance",
        report["instances"],
        report["load_seconds"].as_f64().unwrap(),
        report["resident_before"].as_f64().unwrap() / (1 << 20) as f64,
        report["resident_after"].as_f64().unwrap() / (1 << 20) as f64,
        report["per_instance_bytes"].as_f64().unwrap() / 1024.0
    );
}
