//! `cargo xtask fuzz`: the libFuzzer targets of `fuzz/` (see
//! `docs/fuzzing.md`), built with a pinned nightly through cargo-fuzz, both
//! of which this installs when missing (the toolchain with `--profile
//! minimal`; cargo-fuzz under `target/tools`). The project itself stays on
//! stable.
//!
//! Each target fuzzes from its committed seeds (`fuzz/corpus/<target>/`,
//! only read) into a working corpus under `target/fuzz/corpus/`. An input
//! that breaks a property is copied to `fuzz/regressions/<target>/`, where
//! the stable replay (`cargo test -p capsule-fuzz`, part of `cargo xtask
//! test`) fails on it until it is fixed, and the run fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::shell::{self, Workspace};

/// The cargo-fuzz release installed when missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The nightly the targets build with: pinned, so a new nightly cannot
/// break the build (or change what a smoke run tries) under a commit that
/// did not change. Move it forward on purpose, with a fuzz run.
pub const TOOLCHAIN: &str = "nightly-2026-05-19";

/// The targets: one binary each in `fuzz/libfuzzer/fuzz_targets/` (the
/// replay test checks every target of `fuzz/src/lib.rs` has one).
fn all_targets(workspace: &Workspace) -> Result<Vec<String>> {
    let dir = workspace.root.join("fuzz/libfuzzer/fuzz_targets");
    let mut targets: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .collect();
    targets.sort();
    Ok(targets)
}

/// What to fuzz and for how long.
pub struct Options {
    /// One target, or all of them.
    pub target: Option<String>,
    /// How long each target runs.
    pub time: Duration,
    /// A smoke run, as CI's: from the seeds alone (an empty working
    /// corpus) with a fixed random seed, so the same commit makes the same
    /// inputs here and in CI (a slower machine makes a prefix of them).
    pub smoke: bool,
}

/// How one target's run went, from libFuzzer's final statistics.
struct Run {
    target: String,
    seconds: u64,
    executions: u64,
    per_second: u64,
    coverage: Option<u64>,
    corpus: Option<u64>,
    finding: Option<PathBuf>,
}

/// Builds the targets and fuzzes each for `options.time`; fails if any
/// input broke a property.
pub fn fuzz(workspace: &Workspace, options: &Options) -> Result<()> {
    let all = all_targets(workspace)?;
    let targets: Vec<&str> = match &options.target {
        Some(name) if all.contains(name) => vec![name.as_str()],
        Some(name) => bail!("no fuzz target `{name}`; the targets: {}", all.join(", ")),
        None => all.iter().map(String::as_str).collect(),
    };
    if !ensure_nightly()? {
        if options.smoke {
            eprintln!(
                "{TOOLCHAIN} cannot be installed here: the fuzz smoke run is skipped (the corpus \
                 replay ran with the tests)"
            );
            return Ok(());
        }
        bail!(
            "the fuzzers need {TOOLCHAIN}: `rustup toolchain install {TOOLCHAIN} --profile minimal`"
        );
    }
    let cargo_fuzz = ensure_cargo_fuzz(workspace)?;
    let fuzz_dir = workspace.root.join("fuzz/libfuzzer");
    let target_dir = workspace.target.join("fuzz");
    let mut build = fuzz_command(&cargo_fuzz, "build", &fuzz_dir, &target_dir, options.smoke);
    shell::run(&mut build)?;

    let mut runs = Vec::new();
    for target in targets {
        runs.push(run_target(workspace, &cargo_fuzz, target, options)?);
    }
    println!();
    println!(
        "{:<18} {:>8} {:>13} {:>10} {:>8} {:>7}  result",
        "target", "seconds", "executions", "per second", "coverage", "corpus"
    );
    for run in &runs {
        let show = |value: Option<u64>| value.map_or("-".to_owned(), |v| v.to_string());
        println!(
            "{:<18} {:>8} {:>13} {:>10} {:>8} {:>7}  {}",
            run.target,
            run.seconds,
            run.executions,
            run.per_second,
            show(run.coverage),
            show(run.corpus),
            match &run.finding {
                Some(path) => format!("FINDING {}", path.display()),
                None => "clean".to_owned(),
            }
        );
    }
    let findings: Vec<&Run> = runs.iter().filter(|run| run.finding.is_some()).collect();
    if !findings.is_empty() {
        bail!(
            "{} target(s) found an input that breaks a property; each is now in \
             fuzz/regressions/<target>/ and fails `cargo test -p capsule-fuzz` until fixed",
            findings.len()
        );
    }
    Ok(())
}

/// `cargo fuzz <verb>` on the pinned nightly with the settings every call
/// shares: optimised, with debug assertions and overflow checks (an
/// arithmetic overflow in a parser is a finding), no sanitizer (the checks
/// are safe Rust; libFuzzer's coverage guidance is what matters, and ASan
/// would slow wasmtime's build and every execution several times over).
///
/// A smoke run builds at `opt-level = 1`, in a folder of its own (so a
/// smoke and a long run do not rebuild each other's binaries): its build
/// took 6 min 45 s on two cores instead of 8 min 10–35 s (most of what a
/// 15 s run of every target costs CI), and its executions ran 4–25%
/// slower, which matters to long runs, not to a smoke run.
fn fuzz_command(
    cargo_fuzz: &Path,
    verb: &str,
    fuzz_dir: &Path,
    target_dir: &Path,
    smoke: bool,
) -> Command {
    let build_dir = if smoke {
        target_dir.join("smoke-build")
    } else {
        target_dir.to_path_buf()
    };
    let mut command = Command::new("rustup");
    command
        .args(["run", TOOLCHAIN])
        .arg(cargo_fuzz)
        .args([
            "fuzz",
            verb,
            "--release",
            "--debug-assertions",
            "--sanitizer",
            "none",
            "--fuzz-dir",
        ])
        .arg(fuzz_dir)
        .arg("--target-dir")
        .arg(build_dir);
    // The stable toolchain that runs xtask must not leak into nightly's
    // build.
    // `cargo run` set CARGO_MANIFEST_DIR for xtask; build scripts that
    // watch it would rebuild everything above them between calls.
    for var in [
        "CARGO",
        "CARGO_MANIFEST_DIR",
        "RUSTC",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
    ] {
        command.env_remove(var);
    }
    if smoke {
        command.env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "1");
    } else {
        command.env_remove("CARGO_PROFILE_RELEASE_OPT_LEVEL");
    }
    command
}

fn run_target(
    workspace: &Workspace,
    cargo_fuzz: &Path,
    target: &str,
    options: &Options,
) -> Result<Run> {
    let fuzz_dir = workspace.root.join("fuzz/libfuzzer");
    let target_dir = workspace.target.join("fuzz");
    let work_corpus = if options.smoke {
        let dir = target_dir.join("smoke-corpus").join(target);
        let _ = std::fs::remove_dir_all(&dir);
        dir
    } else {
        target_dir.join("corpus").join(target)
    };
    let artifacts = target_dir.join("artifacts").join(target);
    std::fs::create_dir_all(&work_corpus)?;
    // A fresh artifact folder: whatever is in it afterwards is this run's.
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts)?;
    let seeds = workspace.root.join("fuzz/corpus").join(target);

    let mut command = fuzz_command(cargo_fuzz, "run", &fuzz_dir, &target_dir, options.smoke);
    command.arg(target).arg(&work_corpus);
    if seeds.is_dir() {
        command.arg(&seeds);
    }
    command
        .arg("--")
        .arg(format!("-max_total_time={}", options.time.as_secs().max(1)))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // An input that takes this long is a finding (a hang), as is one
        // that makes the checks use this much memory.
        .arg("-timeout=20")
        .arg("-rss_limit_mb=4096")
        .arg("-print_final_stats=1");
    if options.smoke {
        command.arg("-seed=1");
    }
    eprintln!("$ {}", shell::describe(&command));
    let started = Instant::now();
    let output = command
        .stdout(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start the fuzzer for {target}"))?;
    let log = String::from_utf8_lossy(&output.stderr);
    // libFuzzer reports on stderr; keep it visible, but only its summary
    // lines and anything after a failure.
    let failed = !output.status.success();
    for line in log.lines() {
        if failed || line.contains("DONE") || line.starts_with("stat::") || line.contains("INITED")
        {
            eprintln!("{line}");
        }
    }
    let stat = |name: &str| {
        log.lines()
            .find_map(|line| line.strip_prefix(&format!("stat::{name}:")))
            .and_then(|value| value.trim().parse::<u64>().ok())
    };
    // The last status line, e.g. `#570646 DONE cov: 544 ft: 1472 corp: 528/26Kb …`.
    let status = log
        .lines()
        .rev()
        .find(|line| line.starts_with('#') && line.contains("cov:"));
    let field = |name: &str| {
        status.and_then(|line| {
            let mut words = line.split_whitespace();
            words.find(|word| *word == name)?;
            words.next()?.split('/').next()?.parse::<u64>().ok()
        })
    };
    let finding = if failed {
        Some(keep_finding(workspace, target, &artifacts)?)
    } else {
        None
    };
    Ok(Run {
        target: target.to_owned(),
        seconds: started.elapsed().as_secs(),
        executions: stat("number_of_executed_units").unwrap_or(0),
        per_second: stat("average_exec_per_sec").unwrap_or(0),
        coverage: field("cov:"),
        corpus: field("corp:"),
        finding,
    })
}

/// Copies the inputs libFuzzer saved for a failure (`crash-`, `timeout-`,
/// `oom-`, `leak-`; not `slow-unit-`, which it saves without failing) to
/// `fuzz/regressions/<target>/`, and prints each as hex (a CI log is all a
/// remote run leaves). Returns the first.
fn keep_finding(workspace: &Workspace, target: &str, artifacts: &Path) -> Result<PathBuf> {
    let mut saved: Vec<PathBuf> = std::fs::read_dir(artifacts)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            ["crash-", "timeout-", "oom-", "leak-"]
                .iter()
                .any(|kind| name.starts_with(kind))
        })
        .collect();
    saved.sort();
    if saved.is_empty() {
        bail!("the fuzzer for {target} failed without saving an input (see its output above)");
    }
    let dir = workspace.root.join("fuzz/regressions").join(target);
    std::fs::create_dir_all(&dir)?;
    let mut kept = Vec::new();
    for path in saved {
        let bytes = std::fs::read(&path)?;
        let copy = dir.join(path.file_name().context("an artifact has a name")?);
        std::fs::write(&copy, &bytes)?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        eprintln!(
            "{target}: the failing input ({} bytes), kept as {}:\n{hex}",
            bytes.len(),
            copy.display()
        );
        kept.push(copy);
    }
    Ok(kept.swap_remove(0))
}

/// Whether the pinned nightly is there, installing it if need be.
fn ensure_nightly() -> Result<bool> {
    let works = || {
        Command::new("rustup")
            .args(["run", TOOLCHAIN, "rustc", "--version"])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if works() {
        return Ok(true);
    }
    let installed = Command::new("rustup")
        .args(["toolchain", "install", TOOLCHAIN, "--profile", "minimal"])
        .status()
        .context("rustup is needed to run the fuzzers")?;
    Ok(installed.success() && works())
}

fn ensure_cargo_fuzz(workspace: &Workspace) -> Result<PathBuf> {
    let root = workspace.target.join("tools");
    let binary = root.join("bin/cargo-fuzz");
    let installed = Command::new(&binary)
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(CARGO_FUZZ_VERSION));
    if !installed {
        let mut install = Command::new(shell::cargo());
        install
            .args([
                "install",
                "cargo-fuzz",
                "--locked",
                "--version",
                CARGO_FUZZ_VERSION,
                "--root",
            ])
            .arg(&root);
        shell::run(&mut install)?;
    }
    Ok(binary)
}
