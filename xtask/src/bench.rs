//! `cargo xtask bench [--peers]`: builds and signs the plugins, runs the
//! Capsule benchmarks (and with `--peers` the Extism ones) in release, then
//! reads criterion's estimates and prints one table of measurements and
//! ratios. The table is also written to `target/bench/summary.md` and the
//! numbers to `target/bench/summary.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::plugins;
use crate::shell::{Workspace, cargo, run};

/// Calls per sample in the `throughput` group (bench/benches/host.rs).
const BATCH: f64 = 2000.0;
/// Requests per sample in the `long_work` group's batch rows.
const BATCH_ITEMS: f64 = 100.0;
/// Bytes verified per sample in the `verify` group.
const VERIFY_MIB: f64 = 4.0;

/// Runs the benchmarks and prints the summary.
pub fn bench(workspace: &Workspace, peers: bool) -> Result<()> {
    run_benchmarks(workspace, peers)?;
    table(workspace, peers)
}

fn run_benchmarks(workspace: &Workspace, peers: bool) -> Result<()> {
    let built = plugins::build(workspace, plugins::Cli::WithTests)?;
    let criterion = workspace.target.join("criterion");
    let mut command = Command::new(cargo());
    command
        .args(["bench", "--package", "capsule-bench", "--bench", "host"])
        .current_dir(&workspace.root)
        .env("CAPSULE_PLUGIN_DIR", &built.dir)
        .env("CRITERION_HOME", &criterion);
    run(&mut command)?;
    // Memory, measured once in a process of its own.
    let density_file = workspace.target.join("bench/density.json");
    let _ = std::fs::remove_file(&density_file);
    run(Command::new(cargo())
        .args(["bench", "--package", "capsule-bench", "--bench", "density"])
        .current_dir(&workspace.root)
        .env("CAPSULE_PLUGIN_DIR", &built.dir))?;
    if peers {
        run_extism(workspace, &criterion)?;
    }
    Ok(())
}

/// Prints (and writes) the table of what the last run measured, from
/// criterion's estimates and the density file, without running anything.
pub fn table(workspace: &Workspace, peers: bool) -> Result<()> {
    let criterion = workspace.target.join("criterion");
    let density_file = workspace.target.join("bench/density.json");
    let mut table = Summary::read(&criterion)?;
    table.density = Density::read(&density_file)?;
    let markdown = table.markdown(peers);
    println!();
    println!("{markdown}");
    let out = workspace.target.join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("summary.md"), &markdown)?;
    std::fs::write(out.join("summary.json"), table.json())?;
    println!("written to {}", out.display());
    Ok(())
}

/// Builds the Extism plugin (wasm32-unknown-unknown) and runs its benchmark,
/// both outside the workspace and in their own target directory, so the
/// workspace never depends on a second wasmtime.
fn run_extism(workspace: &Workspace, criterion: &Path) -> Result<()> {
    plugins::ensure_target("wasm32-unknown-unknown")?;
    let peers = workspace.root.join("bench/peers");
    let target = workspace.target.join("peers");
    run(Command::new(cargo())
        .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .current_dir(peers.join("extism-plugin"))
        .env("CARGO_TARGET_DIR", &target))?;
    let wasm = target.join("wasm32-unknown-unknown/release/extism_plugin.wasm");
    run(Command::new(cargo())
        .args(["bench", "--bench", "extism"])
        .current_dir(peers.join("extism-bench"))
        .env("CARGO_TARGET_DIR", &target)
        .env("CRITERION_HOME", criterion)
        .env("EXTISM_PLUGIN_WASM", &wasm))
}

/// Mean times in nanoseconds, by `group/id`.
struct Summary {
    criterion: PathBuf,
    rows: Vec<(String, Option<f64>)>,
    density: Option<Density>,
}

/// What `bench/benches/density.rs` measured.
struct Density {
    instances: u64,
    load_seconds: f64,
    resident_before: f64,
    resident_after: f64,
    per_instance_bytes: f64,
    json: serde_json::Value,
}

impl Density {
    fn read(path: &Path) -> Result<Option<Density>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("read {}", path.display())),
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        let number = |field: &str| {
            json[field]
                .as_f64()
                .with_context(|| format!("{} has no number `{field}`", path.display()))
        };
        Ok(Some(Density {
            instances: number("instances")? as u64,
            load_seconds: number("load_seconds")?,
            resident_before: number("resident_before")?,
            resident_after: number("resident_after")?,
            per_instance_bytes: number("per_instance_bytes")?,
            json: json.clone(),
        }))
    }
}

impl Summary {
    fn read(criterion: &Path) -> Result<Summary> {
        let ids = [
            "echo/native",
            "echo/capsule_warm",
            "echo/capsule_warm_stream",
            "echo/capsule_fresh",
            "echo/extism_warm",
            "echo/extism_fresh",
            "throughput/native/1_worker",
            "throughput/native/2_workers",
            "throughput/warm/1_worker",
            "throughput/warm/2_workers",
            "throughput/fresh/1_worker",
            "throughput/fresh/2_workers",
            "serve/axum_native",
            "serve/capsule",
            "load/cold",
            "load/cached",
            "load/distinct_1000",
            "verify/4MiB",
            "compute/native",
            "compute/capsule",
            "compute/capsule_epoch",
            "compute/capsule_nofuel",
            "compute/capsule_fuelonly",
            "compute/capsule_bare",
            "compute/extism",
            "kv/atomic/1",
            "kv/atomic/10",
            "kv/atomic/100",
            "kv/direct/1",
            "kv/direct/10",
            "kv/direct/100",
            "languages/rust/cold",
            "languages/rust/cached",
            "languages/rust/fresh",
            "languages/rust/warm",
            "languages/python/cold",
            "languages/python/cached",
            "languages/python/fresh",
            "languages/python/warm",
            "languages/js/cold",
            "languages/js/cached",
            "languages/js/fresh",
            "languages/js/warm",
            "long_work/warm/single_calls",
            "long_work/warm/batch",
            "long_work/fresh/single_calls",
            "long_work/fresh/batch",
            "cache/hit",
        ];
        let rows = ids
            .iter()
            .map(|id| Ok((id.to_string(), mean_ns(criterion, id)?)))
            .collect::<Result<_>>()?;
        Ok(Summary {
            criterion: criterion.to_owned(),
            rows,
            density: None,
        })
    }

    fn ns(&self, id: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|(k, _)| k == id)
            .and_then(|(_, v)| *v)
    }

    fn calls_per_second(&self, id: &str) -> Option<f64> {
        self.ns(id).map(|ns| BATCH / (ns / 1e9))
    }

    fn json(&self) -> String {
        let means: serde_json::Map<String, serde_json::Value> = self
            .rows
            .iter()
            .filter_map(|(id, ns)| ns.map(|ns| (id.clone(), serde_json::Value::from(ns))))
            .collect();
        let summary = serde_json::json!({
            "mean_ns": means,
            "throughput_batch_calls": BATCH,
            "verify_mib": VERIFY_MIB,
            "density": self.density.as_ref().map(|density| density.json.clone()),
            "criterion": self.criterion.display().to_string(),
        });
        serde_json::to_string_pretty(&summary).expect("a JSON value always serialises")
    }

    fn markdown(&self, peers: bool) -> String {
        let mut table = String::from(
            "| measurement | result | compared with | ratio | target |\n|---|---|---|---|---|\n",
        );
        let mut row = |what: &str, result: String, against: String, ratio: String, target: &str| {
            let _ = writeln!(
                table,
                "| {what} | {result} | {against} | {ratio} | {target} |"
            );
        };
        let time = |ns: Option<f64>| ns.map_or("—".to_owned(), format_time);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "—".to_owned(),
        };
        let (native, warm, fresh) = (
            self.ns("echo/native"),
            self.ns("echo/capsule_warm"),
            self.ns("echo/capsule_fresh"),
        );
        row(
            "16-byte echo, warm call through the host API",
            time(warm),
            format!("native fn {}", time(native)),
            format!(
                "overhead {}",
                warm.zip(native)
                    .map_or("—".into(), |(w, n)| format_time(w - n))
            ),
            "overhead < 1 µs",
        );
        row(
            "16-byte echo, fresh instance per call",
            time(fresh),
            format!("warm {}", time(warm)),
            ratio(fresh, warm),
            "< 25 µs",
        );
        let streamed = self.ns("echo/capsule_warm_stream");
        row(
            "16-byte echo, warm, read through `Host::call_stream` (it cannot stream: inline)",
            time(streamed),
            format!("`Host::call` {}", time(warm)),
            ratio(streamed, warm),
            "—",
        );
        for kind in ["native", "warm", "fresh"] {
            let one = self.calls_per_second(&format!("throughput/{kind}/1_worker"));
            let two = self.calls_per_second(&format!("throughput/{kind}/2_workers"));
            let what = match kind {
                "native" => "machine reference: small native tasks/s, 2 workers".to_owned(),
                _ => format!("hello greetings/s, {kind} instances, 2 workers"),
            };
            row(
                &what,
                one.zip(two)
                    .map_or("—".into(), |(_, t)| format!("{t:.0}/s")),
                one.map_or("—".into(), |o| format!("1 worker {o:.0}/s")),
                ratio(two, one),
                "scaling ≥ 1.8×",
            );
        }
        let (served, native_http) = (
            self.calls_per_second("serve/capsule"),
            self.calls_per_second("serve/axum_native"),
        );
        row(
            "`capsule serve`, hello greet over loopback HTTP/1.1 keep-alive (16 connections), 2 workers",
            served.map_or("—".into(), |s| format!("{s:.0}/s")),
            native_http.map_or("—".into(), |n| {
                format!("plain axum handler, same JSON work {n:.0}/s")
            }),
            served
                .zip(native_http)
                .map_or("—".into(), |(s, n)| format!("{:.0}%", 100.0 * s / n)),
            "≥ 50%",
        );
        for kind in ["warm", "fresh"] {
            let single = self.ns(&format!("long_work/{kind}/single_calls"));
            let batch = self.ns(&format!("long_work/{kind}/batch"));
            let per_second = |ns: Option<f64>| {
                ns.map_or("—".into(), |ns| {
                    format!("{:.0}/s", BATCH_ITEMS / (ns / 1e9))
                })
            };
            row(
                &format!("100 small requests in one batch, {kind} instances"),
                per_second(batch),
                format!("one call at a time {}", per_second(single)),
                ratio(single, batch).replace('×', "× faster"),
                "—",
            );
        }
        row(
            "16-byte echo declared pure, answered from the response cache",
            time(self.ns("cache/hit")),
            format!("the call run, warm {}", time(warm)),
            ratio(warm, self.ns("cache/hit")).replace('×', "× faster"),
            "—",
        );
        let (cold, cached) = (self.ns("load/cold"), self.ns("load/cached"));
        row(
            "load a signed plugin from the compile cache (verify + deserialize)",
            time(cached),
            format!("cold (verify + compile) {}", time(cold)),
            ratio(cold, cached).replace('×', "× faster"),
            "< 5 ms",
        );
        let distinct = self.ns("load/distinct_1000");
        row(
            "1000 distinct signed plugins loaded into one host from the compile cache (2 loaders)",
            time(distinct),
            format!(
                "1000 × one cached load {}",
                time(cached.map(|c| c * 1000.0))
            ),
            ratio(distinct, cached.map(|c| c * 1000.0)),
            "≤ 2 s",
        );
        let verify = self.ns("verify/4MiB");
        row(
            "signature verification (SHA-256 + Ed25519)",
            verify.map_or("—".into(), |ns| {
                format!("{} per MiB", format_time(ns / VERIFY_MIB))
            }),
            verify.map_or("—".into(), |ns| {
                format!("{:.0} MiB/s", VERIFY_MIB / (ns / 1e9))
            }),
            "—".into(),
            "—",
        );
        let (c_native, c_all, c_epoch, c_nofuel, c_fuelonly, c_bare) = (
            self.ns("compute/native"),
            self.ns("compute/capsule"),
            self.ns("compute/capsule_epoch"),
            self.ns("compute/capsule_nofuel"),
            self.ns("compute/capsule_fuelonly"),
            self.ns("compute/capsule_bare"),
        );
        row(
            "4 MB prime sieve, fuel + deadline at fuel yields (the default)",
            time(c_all),
            format!("native {}", time(c_native)),
            ratio(c_all, c_native),
            "—",
        );
        row(
            "full protection (fuel + deadline) ÷ no metering (compute)",
            time(c_all),
            format!("no metering {}", time(c_bare)),
            ratio(c_all, c_bare),
            "≤ 1.25×",
        );
        row(
            "deadline at fuel yields ÷ fuel alone (compute)",
            time(c_all),
            format!("fuel alone {}", time(c_fuelonly)),
            ratio(c_all, c_fuelonly),
            "—",
        );
        row(
            "fuel + epochs (the earlier default) ÷ fuel yields (compute)",
            time(c_epoch),
            format!("fuel yields {}", time(c_all)),
            ratio(c_epoch, c_all),
            "—",
        );
        row(
            "epochs alone (no fuel) ÷ no metering (compute)",
            time(c_nofuel),
            format!("no metering {}", time(c_bare)),
            ratio(c_nofuel, c_bare),
            "—",
        );
        row(
            "no metering at all (compute)",
            time(c_bare),
            format!("native {}", time(c_native)),
            ratio(c_bare, c_native),
            "—",
        );
        match &self.density {
            Some(density) => {
                row(
                    "warm instances of hello held by one host (`prewarm`)",
                    format!("{}", density.instances),
                    format!("started in {:.2} s", density.load_seconds),
                    "—".into(),
                    "≥ 10,000",
                );
                row(
                    "resident memory per idle instance",
                    format!("{:.1} KiB", density.per_instance_bytes / 1024.0),
                    format!(
                        "host {:.0} MiB → {:.0} MiB",
                        density.resident_before / f64::from(1 << 20),
                        density.resident_after / f64::from(1 << 20)
                    ),
                    "—".into(),
                    "≤ 256 KiB",
                );
            }
            None => row(
                "warm instances of hello held by one host (`prewarm`)",
                "—".into(),
                "—".into(),
                "—".into(),
                "≥ 10,000",
            ),
        }
        for writes in [1, 10, 100] {
            let (atomic, direct) = (
                self.ns(&format!("kv/atomic/{writes}")),
                self.ns(&format!("kv/direct/{writes}")),
            );
            row(
                &format!("call incrementing {writes} counter(s) on disk, atomic (default)"),
                time(atomic),
                format!("writing through {}", time(direct)),
                ratio(atomic, direct),
                "—",
            );
        }
        for (id, what) in [
            ("warm", "hello greet, warm instance"),
            ("fresh", "hello greet, fresh instance per call"),
            ("cached", "load hello from the compile cache"),
            ("cold", "load hello cold (verify + compile)"),
        ] {
            let [rust, python, js] =
                ["rust", "python", "js"].map(|lang| self.ns(&format!("languages/{lang}/{id}")));
            row(
                &format!("{what}: Python, JavaScript"),
                format!("{} · {}", time(python), time(js)),
                format!("Rust {}", time(rust)),
                format!("{} · {}", ratio(python, rust), ratio(js, rust)),
                "—",
            );
        }
        if peers {
            let (e_warm, e_fresh, e_compute) = (
                self.ns("echo/extism_warm"),
                self.ns("echo/extism_fresh"),
                self.ns("compute/extism"),
            );
            row(
                "16-byte echo, warm: Extism ÷ Capsule",
                time(warm),
                format!("Extism {}", time(e_warm)),
                ratio(e_warm, warm).replace('×', "× faster"),
                "≥ 2×",
            );
            row(
                "16-byte echo, fresh instance: Extism ÷ Capsule",
                time(fresh),
                format!("Extism {}", time(e_fresh)),
                ratio(e_fresh, fresh).replace('×', "× faster"),
                "—",
            );
            row(
                "4 MB prime sieve: Extism ÷ Capsule",
                time(c_all),
                format!("Extism {}", time(e_compute)),
                ratio(e_compute, c_all).replace('×', "× faster"),
                "—",
            );
        }
        table
    }
}

fn format_time(ns: f64) -> String {
    if ns.abs() >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns.abs() >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// The mean of a benchmark from criterion's `estimates.json`, if it ran.
fn mean_ns(criterion: &Path, id: &str) -> Result<Option<f64>> {
    let Some(path) = estimates_path(criterion, id) else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let estimates: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    Ok(estimates["mean"]["point_estimate"].as_f64())
}

/// Where criterion keeps the estimates of `group/function[/parameter]`.
/// A `BenchmarkId`'s parameter is a directory of its own
/// (`throughput/warm/1_worker`), but a `/` inside a function name is
/// written as `_` (`bench_function("js/cold")` in group `languages` lands
/// in `languages/js_cold`), so both spellings are tried.
fn estimates_path(criterion: &Path, id: &str) -> Option<PathBuf> {
    let estimates = |dir: &str| criterion.join(dir).join("new/estimates.json");
    let as_given = estimates(id);
    if as_given.is_file() {
        return Some(as_given);
    }
    let (group, function) = id.split_once('/')?;
    let flattened = estimates(&format!("{group}/{}", function.replace('/', "_")));
    flattened.is_file().then_some(flattened)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate(criterion: &Path, dir: &str, mean: f64) {
        let dir = criterion.join(dir).join("new");
        std::fs::create_dir_all(&dir).unwrap();
        let json = serde_json::json!({ "mean": { "point_estimate": mean } });
        std::fs::write(dir.join("estimates.json"), json.to_string()).unwrap();
    }

    #[test]
    fn estimates_are_found_under_both_of_criterions_spellings() {
        let criterion =
            std::env::temp_dir().join(format!("xtask-criterion-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&criterion);
        // A BenchmarkId's parameter is a directory; a `/` in a function
        // name becomes `_`.
        estimate(&criterion, "throughput/warm/1_worker", 1.0);
        estimate(&criterion, "languages/js_cold", 2.0);
        estimate(&criterion, "long_work/warm_batch", 3.0);
        assert_eq!(
            mean_ns(&criterion, "throughput/warm/1_worker").unwrap(),
            Some(1.0)
        );
        assert_eq!(mean_ns(&criterion, "languages/js/cold").unwrap(), Some(2.0));
        assert_eq!(
            mean_ns(&criterion, "long_work/warm/batch").unwrap(),
            Some(3.0)
        );
        assert_eq!(mean_ns(&criterion, "languages/js/warm").unwrap(), None);
        std::fs::remove_dir_all(&criterion).unwrap();
    }
}
