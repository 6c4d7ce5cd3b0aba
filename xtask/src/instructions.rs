//! `cargo xtask bench --instructions [--update]`: counts the CPU instructions
//! of a warm call, a fresh-instance call and the sieve under
//! `valgrind --tool=callgrind`, and compares them with the budgets in
//! `bench/instructions.toml`. Instruction counts do not depend on what else
//! the machine is doing, so this check cannot flake the way a timing can;
//! `cargo xtask test` (and so CI) runs it after the tests.
//!
//! The workload is `bench/src/bin/capsule-instructions.rs`, built with the
//! tests (the dev profile: dependencies at `opt-level = 2` without debug
//! assertions, `capsule-host` and `capsule-bench` at `opt-level = 2` with
//! them; see the workspace `Cargo.toml`), so CI compiles wasmtime once.
//! Only its `capsule_measure` function is counted: loading and compiling the
//! plugins and the warm-up calls are not.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::plugins::Built;
use crate::shell::{Workspace, describe};

/// The budgets, relative to the workspace root.
pub const BUDGETS: &str = "bench/instructions.toml";
/// A count above budget × this fails.
const OVER: f64 = 1.10;
/// A count below budget × this is worth a lower budget.
const UNDER: f64 = 0.80;
/// The measurement binary (package `capsule-bench`).
const BIN: &str = "capsule-instructions";
/// The test of package `capsule-bench` that runs the binary natively.
const WORKLOAD_TEST: &str = "workload";
/// The function in it that callgrind counts, as valgrind demangles it.
/// `--dump-after` takes no wildcards, and `--toggle-collect` must not match
/// anything inside the function as well, so the exact name for both.
const MEASURED: &str = "capsule_instructions::capsule_measure";
/// Set to `1` to skip the check in `cargo xtask test` (never in CI).
pub const SKIP_ENV: &str = "CAPSULE_SKIP_INSTRUCTIONS";

/// What to do with the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Compare them with the budgets; fail above budget + 10%.
    Check,
    /// Write them into the budgets file as the new budgets.
    Update,
}

/// Whether this run is CI's (`CI=true`, as `.ci/run` runs).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false" && value != "0")
}

/// The check as `cargo xtask test` runs it: skipped with a message when
/// valgrind is missing or `CAPSULE_SKIP_INSTRUCTIONS=1`, except in CI, where
/// a missing valgrind fails.
pub fn check_after_tests(workspace: &Workspace, built: &Built) -> Result<()> {
    if std::env::var_os(SKIP_ENV).is_some_and(|value| value == "1") {
        if in_ci() {
            bail!("{SKIP_ENV}=1 is not honoured in CI: the instruction budgets are checked there");
        }
        eprintln!("{SKIP_ENV}=1: skipping the instruction-count check");
        return Ok(());
    }
    if valgrind_version().is_none() {
        if in_ci() {
            bail!(
                "valgrind is not installed, and CI must check the instruction budgets \
                 (.ci/run installs it: apt-get install -y valgrind)"
            );
        }
        eprintln!(
            "\nvalgrind is not installed: SKIPPING the instruction-count check \
             (bench/instructions.toml). Install it (Debian: apt-get install valgrind) to \
             run it; CI always does."
        );
        return Ok(());
    }
    instructions(workspace, built, Mode::Check)
}

/// Counts the instructions and checks (or updates) the budgets.
pub fn instructions(workspace: &Workspace, built: &Built, mode: Mode) -> Result<()> {
    let Some(valgrind) = valgrind_version() else {
        bail!("valgrind is not installed (Debian: apt-get install valgrind)");
    };
    let binary = workload_binary(workspace)?;
    let out = workspace.target.join("instructions");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("remove {}", out.display()))?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;

    let mut command = Command::new("valgrind");
    command
        .args([
            "--tool=callgrind",
            "--quiet",
            "--collect-atstart=no",
            &format!("--toggle-collect={MEASURED}"),
            &format!("--dump-after={MEASURED}"),
        ])
        .arg(format!(
            "--callgrind-out-file={}",
            out.join("callgrind.out").display()
        ))
        .arg(&binary)
        .env("CAPSULE_PLUGIN_DIR", &built.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!(
        "(valgrind 3.19 warns that syscall 440, process_madvise, is unhandled: expected; \
         wasmtime then decommits with one madvise per region, and syscalls are not counted)"
    );
    eprintln!("$ {}", describe(&command));
    let started = std::time::Instant::now();
    let output = command
        .output()
        .with_context(|| format!("cannot start {}", describe(&command)))?;
    if !output.status.success() {
        bail!("`{}` failed with {}", describe(&command), output.status);
    }
    eprintln!(
        "valgrind ran for {:.1} s; the profile of each round is in {} \
         (callgrind_annotate callgrind.out.N)",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    let manifest = String::from_utf8_lossy(&output.stdout);
    let counts = per_call_counts(&manifest, &out)?;

    let path = workspace.root.join(BUDGETS);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let budgets = Budgets::parse(&text).with_context(|| format!("parse {}", path.display()))?;
    let measured_with = MeasuredWith::now(valgrind);
    let report = report(&counts, &budgets, &measured_with);
    println!("\n{}", report.table);
    write_summary(workspace, &counts, &report)?;
    match mode {
        Mode::Update => {
            let updated = budgets.updated(&text, &counts, &measured_with)?;
            std::fs::write(&path, updated).with_context(|| format!("write {}", path.display()))?;
            println!("budgets updated in {BUDGETS}");
            Ok(())
        }
        Mode::Check => {
            for note in &report.notes {
                println!("note: {note}");
            }
            // A plain summary line, as test runners close with.
            println!(
                "instructions: {} passed, {} failed",
                counts.len().saturating_sub(report.failures.len()),
                report.failures.len()
            );
            if report.failures.is_empty() {
                println!("instruction counts within budget ({BUDGETS})");
                Ok(())
            } else {
                bail!(
                    "instruction-count check failed:\n  {}\nIf an increase is intended, run \
                     `cargo xtask bench --instructions --update` and commit {BUDGETS} with the \
                     reason.",
                    report.failures.join("\n  ")
                )
            }
        }
    }
}

/// The binary as `cargo test --workspace` builds it (its workload test
/// needs it): the same profile and, with `--workspace`, the same features,
/// so after the tests this builds nothing, and alone it builds only what the
/// binary needs. Its path is the one cargo reports, wherever the target
/// directory is.
fn workload_binary(workspace: &Workspace) -> Result<std::path::PathBuf> {
    let mut command = Command::new(crate::shell::cargo());
    command
        .args(["test", "--workspace", "--no-run", "--test", WORKLOAD_TEST])
        .args(["--message-format", "json-render-diagnostics"])
        .current_dir(&workspace.root)
        .env_remove("CARGO_MANIFEST_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!("$ {}", describe(&command));
    let output = command
        .output()
        .with_context(|| format!("cannot start {}", describe(&command)))?;
    if !output.status.success() {
        bail!("`{}` failed with {}", describe(&command), output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    built_executable(&stdout, BIN).with_context(|| {
        format!(
            "`{}` reported no executable for the binary `{BIN}`",
            describe(&command)
        )
    })
}

/// The executable cargo's JSON messages report for the binary `name`.
fn built_executable(messages: &str, name: &str) -> Option<std::path::PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| {
            message["target"]["name"] == name
                && message["target"]["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"))
        })
        .find_map(|message| message["executable"].as_str().map(std::path::PathBuf::from))
}

/// `valgrind --version`, if valgrind runs.
fn valgrind_version() -> Option<String> {
    let output = Command::new("valgrind").arg("--version").output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// One measurement's counts: instructions per call in each round.
#[derive(Debug)]
struct Counts {
    rounds: Vec<f64>,
}

impl Counts {
    /// The lowest round: a round can only gain instructions from events
    /// outside the workload (a timer or yield landing in it), never lose any.
    fn per_call(&self) -> u64 {
        self.rounds
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .round() as u64
    }

    /// How far the highest round is above the lowest, as a fraction.
    fn spread(&self) -> f64 {
        let min = self.rounds.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.rounds.iter().copied().fold(0.0, f64::max);
        if min > 0.0 { max / min - 1.0 } else { 0.0 }
    }
}

/// Pairs the binary's `measure NAME CALLS` lines with callgrind's profile
/// parts (one per `capsule_measure` call, in order).
fn per_call_counts(manifest: &str, out: &Path) -> Result<BTreeMap<String, Counts>> {
    let rounds: Vec<(String, u64)> = manifest
        .lines()
        .filter_map(|line| line.strip_prefix("measure "))
        .map(|rest| {
            let (name, calls) = rest
                .split_once(' ')
                .with_context(|| format!("bad line from {BIN}: {rest}"))?;
            let calls: u64 = calls
                .trim()
                .parse()
                .with_context(|| format!("bad call count from {BIN}: {rest}"))?;
            Ok((name.to_owned(), calls))
        })
        .collect::<Result<_>>()?;
    let parts = profile_parts(out)?;
    if parts.len() != rounds.len() {
        bail!(
            "callgrind wrote {} profile parts in {} for {} measured rounds: does `{MEASURED}` \
             still name the measured function in {BIN}?",
            parts.len(),
            out.display(),
            rounds.len()
        );
    }
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    for ((name, calls), (_, total)) in rounds.into_iter().zip(parts) {
        counts
            .entry(name)
            .or_insert(Counts { rounds: Vec::new() })
            .rounds
            .push(total as f64 / calls as f64);
    }
    Ok(counts)
}

/// The `totals:` of every `callgrind.out.N` part, by part number.
fn profile_parts(out: &Path) -> Result<Vec<(u32, u64)>> {
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(out).with_context(|| format!("list {}", out.display()))? {
        let path = entry?.path();
        let Some(number) = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix("callgrind.out."))
            .and_then(|suffix| suffix.parse::<u32>().ok())
        else {
            continue;
        };
        parts.push((number, totals(&path)?));
    }
    parts.sort_unstable();
    Ok(parts)
}

/// The instruction total of one callgrind profile.
fn totals(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("totals:"))
        .or_else(|| text.lines().find_map(|line| line.strip_prefix("summary:")))
        .with_context(|| format!("no totals in {}", path.display()))?;
    // `--tool=callgrind` collects one event, Ir: the first number.
    let first = line.split_whitespace().next().unwrap_or("0");
    first
        .parse()
        .with_context(|| format!("bad totals in {}: {line}", path.display()))
}

/// What the counts were measured with; recorded with the budgets, since a
/// different valgrind, compiler or CPU can move them.
struct MeasuredWith {
    valgrind: String,
    rustc: String,
    cpu: String,
    kernel: String,
}

impl MeasuredWith {
    fn now(valgrind: String) -> MeasuredWith {
        let rustc = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
            .arg("--version")
            .output()
            .ok()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .unwrap_or_default();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|line| line.strip_prefix("model name"))
                    .and_then(|rest| rest.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
        // Linux 6.7+ lets wasmtime find the pages a fresh instance touched
        // (PAGEMAP_SCAN); older kernels make it clear more of them.
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|release| format!("{} {}", std::env::consts::OS, release.trim()))
            .unwrap_or_else(|_| std::env::consts::OS.to_owned());
        MeasuredWith {
            valgrind,
            rustc,
            cpu,
            kernel,
        }
    }

    fn fields(&self) -> [(&'static str, &str); 4] {
        [
            ("valgrind", &self.valgrind),
            ("rustc", &self.rustc),
            ("cpu", &self.cpu),
            ("kernel", &self.kernel),
        ]
    }
}

/// `bench/instructions.toml`: `[budgets]` (name = instructions per call) and
/// `[measured]` (what they were measured with). A small subset of TOML, read
/// and rewritten line by line so its comments survive `--update`.
struct Budgets {
    budgets: BTreeMap<String, u64>,
    measured: BTreeMap<String, String>,
}

impl Budgets {
    fn parse(text: &str) -> Result<Budgets> {
        let mut budgets = BTreeMap::new();
        let mut measured = BTreeMap::new();
        let mut section = String::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().to_owned();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .with_context(|| format!("line {}: expected `key = value`", number + 1))?;
            let (key, value) = (key.trim().to_owned(), value.trim());
            match section.as_str() {
                "budgets" => {
                    let value: u64 = value.replace('_', "").parse().with_context(|| {
                        format!("line {}: {key} is not a whole number", number + 1)
                    })?;
                    budgets.insert(key, value);
                }
                "measured" => {
                    let value = value
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .with_context(|| format!("line {}: {key} is not a string", number + 1))?;
                    measured.insert(key, value.to_owned());
                }
                other => bail!("line {}: unknown section [{other}]", number + 1),
            }
        }
        Ok(Budgets { budgets, measured })
    }

    /// `text` with every budget set to its count and `[measured]` to what
    /// measured them; comments and order are kept, new names appended.
    fn updated(
        &self,
        text: &str,
        counts: &BTreeMap<String, Counts>,
        with: &MeasuredWith,
    ) -> Result<String> {
        let mut out = String::new();
        let mut section = String::new();
        let mut seen: Vec<String> = Vec::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if let Some(name) = trimmed.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().to_owned();
            } else if !trimmed.starts_with('#')
                && let Some((key, _)) = trimmed.split_once('=')
            {
                let key = key.trim();
                let value = match section.as_str() {
                    "budgets" => counts.get(key).map(|c| group_digits(c.per_call())),
                    "measured" => with
                        .fields()
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, v)| format!("{v:?}")),
                    _ => None,
                };
                if let Some(value) = value {
                    seen.push(format!("{section}.{key}"));
                    let _ = writeln!(out, "{key} = {value}");
                    continue;
                }
                if section == "budgets" {
                    bail!("{BUDGETS} has a budget for `{key}`, which is no longer measured");
                }
            }
            let _ = writeln!(out, "{line}");
        }
        let missing: Vec<_> = counts
            .iter()
            .filter(|(name, _)| !seen.contains(&format!("budgets.{name}")))
            .collect();
        if !missing.is_empty() {
            bail!(
                "{BUDGETS} has no line for {}: add `NAME = 0` under [budgets], then update",
                missing
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for (key, _) in with.fields() {
            if !seen.contains(&format!("measured.{key}")) {
                bail!("{BUDGETS} has no `{key}` under [measured]");
            }
        }
        Ok(out)
    }
}

/// `1234567` as `1_234_567`.
fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('_');
        }
        out.push(c);
    }
    out
}

struct Report {
    table: String,
    failures: Vec<String>,
    notes: Vec<String>,
}

fn report(counts: &BTreeMap<String, Counts>, budgets: &Budgets, with: &MeasuredWith) -> Report {
    let mut table = String::from(
        "| measurement | instructions per call | rounds spread | budget | of budget |\n\
         |---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    let mut notes = Vec::new();
    for (name, count) in counts {
        let per_call = count.per_call();
        let budget = budgets.budgets.get(name).copied();
        let ratio = budget
            .filter(|&b| b > 0)
            .map(|b| per_call as f64 / b as f64);
        let _ = writeln!(
            table,
            "| {name} | {} | {:.3}% | {} | {} |",
            group_digits(per_call),
            count.spread() * 100.0,
            budget.map_or("—".to_owned(), group_digits),
            ratio.map_or("—".to_owned(), |r| format!("{:.1}%", r * 100.0)),
        );
        match (budget, ratio) {
            (None, _) => failures.push(format!("{name}: no budget in {BUDGETS}")),
            (Some(_), None) => failures.push(format!("{name}: the budget is 0 (never measured)")),
            (Some(b), Some(r)) if r > OVER => failures.push(format!(
                "{name}: {} instructions per call, {:.1}% of its budget {} (limit {:.0}%)",
                group_digits(per_call),
                r * 100.0,
                group_digits(b),
                OVER * 100.0
            )),
            (Some(b), Some(r)) if r < UNDER => notes.push(format!(
                "{name}: {} instructions per call is {:.1}% of its budget {}: lower the budget \
                 (`cargo xtask bench --instructions --update`) so the gain is kept",
                group_digits(per_call),
                r * 100.0,
                group_digits(b)
            )),
            _ => {}
        }
    }
    for name in budgets.budgets.keys() {
        if !counts.contains_key(name) {
            failures.push(format!("{name}: budgeted in {BUDGETS} but not measured"));
        }
    }
    let mut elsewhere = false;
    for (key, now) in with.fields() {
        match budgets.measured.get(key) {
            Some(then) if !then.is_empty() && then != now => {
                // The CPU and the kernel change what glibc's memset and a
                // pool slot's reset cost: an over-budget count measured on
                // another machine says nothing about our code.
                elsewhere |= matches!(key, "cpu" | "kernel") && !same_release(then, now);
                notes.push(format!(
                    "the budgets were measured with {key} `{then}`, this run used `{now}`: \
                     counts can differ by that alone"
                ));
            }
            _ => {}
        }
    }
    if elsewhere && !failures.is_empty() {
        notes.extend(failures.drain(..).map(|failure| {
            format!("{failure} (not failed: the budgets come from another CPU or kernel)")
        }));
    }
    Report {
        table,
        failures,
        notes,
    }
}

/// Whether two `cpu` or `kernel` descriptions name the same vendor or the
/// same major.minor release (patch releases do not change the counts).
fn same_release(then: &str, now: &str) -> bool {
    let release = |text: &str| -> String {
        let mut parts = text.split(['.', '-', ' ']);
        let head: Vec<&str> = parts.by_ref().take(3).collect();
        head.join(".")
    };
    release(then) == release(now)
}

/// `target/bench/instructions.{md,json}`.
fn write_summary(
    workspace: &Workspace,
    counts: &BTreeMap<String, Counts>,
    report: &Report,
) -> Result<()> {
    let dir = workspace.target.join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let json: serde_json::Map<String, serde_json::Value> = counts
        .iter()
        .map(|(name, c)| {
            (
                name.clone(),
                serde_json::json!({ "per_call": c.per_call(), "rounds": c.rounds }),
            )
        })
        .collect();
    let json = serde_json::to_string_pretty(&json).expect("a JSON value always serialises");
    std::fs::write(dir.join("instructions.json"), json)?;
    std::fs::write(dir.join("instructions.md"), &report.table)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# comment = kept\n\n[budgets]\n# warm\necho_warm = 10_000\nsieve = 500\n\n\
                        [measured]\nvalgrind = \"old\"\nrustc = \"\"\ncpu = \"\"\nkernel = \"\"\n";

    fn with() -> MeasuredWith {
        MeasuredWith {
            valgrind: "valgrind-3.19.0".into(),
            rustc: "rustc 1.95.0".into(),
            cpu: "AMD EPYC".into(),
            kernel: "linux 6.18".into(),
        }
    }

    fn counts(pairs: &[(&str, &[f64])]) -> BTreeMap<String, Counts> {
        pairs
            .iter()
            .map(|(name, rounds)| {
                (
                    name.to_string(),
                    Counts {
                        rounds: rounds.to_vec(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn parses_budgets_and_what_measured_them() {
        let budgets = Budgets::parse(FILE).unwrap();
        assert_eq!(budgets.budgets["echo_warm"], 10_000);
        assert_eq!(budgets.budgets["sieve"], 500);
        assert_eq!(budgets.measured["valgrind"], "old");
        assert!(Budgets::parse("[budgets]\nx = ten\n").is_err());
        assert!(Budgets::parse("[other]\nx = 1\n").is_err());
    }

    #[test]
    fn the_lowest_round_counts() {
        let c = Counts {
            rounds: vec![101.0, 100.4, 102.0],
        };
        assert_eq!(c.per_call(), 100);
        assert!((c.spread() - (102.0 / 100.4 - 1.0)).abs() < 1e-12);
    }

    #[test]
    fn over_ten_percent_fails_and_far_under_is_noted() {
        let budgets = Budgets::parse(FILE).unwrap();
        let ok = report(
            &counts(&[("echo_warm", &[11_000.0]), ("sieve", &[401.0])]),
            &budgets,
            &with(),
        );
        assert!(ok.failures.is_empty(), "{:?}", ok.failures);
        // Only the valgrind version differs from what the file records.
        assert_eq!(ok.notes.len(), 1, "{:?}", ok.notes);
        let bad = report(
            &counts(&[("echo_warm", &[11_001.0]), ("sieve", &[399.0])]),
            &budgets,
            &with(),
        );
        assert_eq!(bad.failures.len(), 1, "{:?}", bad.failures);
        assert!(bad.failures[0].starts_with("echo_warm"));
        assert!(bad.notes.iter().any(|note| note.starts_with("sieve")));
        let missing = report(&counts(&[("echo_warm", &[1.0])]), &budgets, &with());
        assert!(missing.failures.iter().any(|f| f.starts_with("sieve")));
    }

    #[test]
    fn another_kernel_or_cpu_turns_failures_into_notes() {
        let here = FILE
            .replace("cpu = \"\"", "cpu = \"AMD EPYC\"")
            .replace("kernel = \"\"", "kernel = \"linux 6.18.44-fc\"");
        let over = counts(&[("echo_warm", &[20_000.0]), ("sieve", &[500.0])]);
        let same = report(&over, &Budgets::parse(&here).unwrap(), &with());
        assert_eq!(same.failures.len(), 1, "a patch release is the same setup");
        let older = here.replace("linux 6.18.44-fc", "linux 6.1.0");
        let elsewhere = report(&over, &Budgets::parse(&older).unwrap(), &with());
        assert!(elsewhere.failures.is_empty(), "{:?}", elsewhere.failures);
        assert!(
            elsewhere
                .notes
                .iter()
                .any(|note| note.contains("echo_warm") && note.contains("another CPU or kernel"))
        );
    }

    #[test]
    fn update_rewrites_numbers_and_keeps_comments() {
        let budgets = Budgets::parse(FILE).unwrap();
        let updated = budgets
            .updated(
                FILE,
                &counts(&[("echo_warm", &[12_345.6]), ("sieve", &[1_234_567.0])]),
                &with(),
            )
            .unwrap();
        assert!(updated.starts_with("# comment = kept\n\n[budgets]\n# warm\n"));
        assert!(updated.contains("\necho_warm = 12_346\nsieve = 1_234_567\n"));
        assert!(updated.contains("valgrind = \"valgrind-3.19.0\"\n"));
        let again = Budgets::parse(&updated).unwrap();
        assert_eq!(again.budgets["sieve"], 1_234_567);
        assert_eq!(again.measured["kernel"], "linux 6.18");
        // A measurement without a line is an error, not silently appended.
        assert!(
            budgets
                .updated(FILE, &counts(&[("new_one", &[1.0])]), &with())
                .is_err()
        );
    }

    #[test]
    fn the_binary_is_found_in_cargos_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"capsule-instructions","kind":["bin"]},"executable":"/t/debug/capsule-instructions"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"workload","kind":["test"]},"executable":"/t/debug/deps/workload-1"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            built_executable(messages, BIN),
            Some(std::path::PathBuf::from("/t/debug/capsule-instructions"))
        );
        assert_eq!(built_executable(messages, "other"), None);
    }

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1_000");
        assert_eq!(group_digits(347_486_450), "347_486_450");
    }
}
