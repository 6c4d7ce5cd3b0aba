//! Project automation, run as `cargo xtask <command>`:
//!
//! - `build-plugins`: build every crate under `example-plugins/` for
//!   `wasm32-wasip2`, and the Python and JavaScript examples with their
//!   pinned toolchains (installed under `target/tools/`), into
//!   `target/plugins/`;
//! - `build-component-plugins`: `build-plugins`, then build `hello` with
//!   `cargo component build` too (installing cargo-component if missing);
//! - `test`: build the plugins both ways, then run every test in the
//!   workspace, check that `capsule-guest` (with `capsule-guest-macros`)
//!   packages for publishing (`cargo publish --dry-run`), then check the instruction budgets
//!   (`bench/instructions.toml`) under callgrind;
//! - `demo`: build the plugins and the CLI, then run the examples and show
//!   what they did and what the sandbox stopped;
//! - `bench`: the criterion benchmarks and their summary table, or with
//!   `--instructions` the instruction counts and their budgets;
//! - `layers`: the host library's modules form no cycle (also run by
//!   `test`);
//! - `fuzz`: the libFuzzer targets of `fuzz/` with nightly, one or all,
//!   for a while each (`--smoke`: briefly, as CI does);
//! - `ci`: formatting, lints, then `test`.

mod bench;
mod component;
mod demo;
mod demo_setup;
mod discover;
mod fuzz;
mod instructions;
mod layers;
mod plugins;
mod polyglot;
mod shell;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Capsule project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build every example plugin (release) into target/plugins/.
    BuildPlugins,
    /// Build the plugins, then `hello` with `cargo component build` into
    /// target/plugins/hello-cargo-component.wasm (installs cargo-component
    /// if missing; CAPSULE_SKIP_CARGO_COMPONENT=1 skips it).
    BuildComponentPlugins,
    /// Build the plugins (with cargo-component too), run all workspace
    /// tests, then check the instruction budgets under valgrind (skipped
    /// with a message where valgrind is missing, except with CI=true).
    /// Extra arguments go to `cargo test`.
    Test {
        /// Passed through to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
    /// Build and run the example plugins, showing what they do and what the
    /// sandbox stops.
    Demo,
    /// Check formatting and lints, then run `test`.
    Ci,
    /// Check that the host library's top-level modules form no cycle.
    Layers,
    /// Fuzz the parsers of untrusted input (docs/fuzzing.md): build the
    /// libFuzzer targets with nightly (installed if missing, with
    /// cargo-fuzz) and run one target or all, each for `--time`. An input
    /// that breaks a property is kept in fuzz/regressions/ and fails the run.
    Fuzz {
        /// The target to run (all of them if omitted).
        target: Option<String>,
        /// How long each target runs: `90s`, `10m`, `2h`.
        #[arg(long, default_value = "10m", value_parser = parse_time)]
        time: std::time::Duration,
        /// Every target briefly (15 s each), as CI runs them.
        #[arg(long, conflicts_with_all = ["target", "time"])]
        smoke: bool,
    },
    /// Run the benchmarks (release) and print a summary table of ratios.
    Bench {
        /// Also benchmark the Extism peer (builds a second wasmtime, outside
        /// the workspace).
        #[arg(long, conflicts_with = "instructions")]
        peers: bool,
        /// Instead, count the instructions of a warm call, a fresh-instance
        /// call and the sieve under callgrind and check them against
        /// bench/instructions.toml.
        #[arg(long)]
        instructions: bool,
        /// With --instructions: record the counts as the new budgets.
        #[arg(long, requires = "instructions")]
        update: bool,
        /// Run nothing: print the table of the last run again (with
        /// --peers, its Extism rows too).
        #[arg(long, conflicts_with = "instructions")]
        table: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let workspace = shell::Workspace::locate()?;
    match cli.command {
        Command::BuildPlugins => {
            plugins::build(&workspace, plugins::Cli::WithTests)?;
        }
        Command::BuildComponentPlugins => {
            let built = plugins::build(&workspace, plugins::Cli::WithTests)?;
            component::build(&workspace, &built)?;
        }
        Command::Test { cargo_args } => test(&workspace, &cargo_args)?,
        Command::Demo => demo::run(&workspace)?,
        Command::Layers => layers::check(&workspace.root.join("host/src"))?,
        Command::Fuzz {
            target,
            time,
            smoke,
        } => {
            let time = if smoke {
                std::time::Duration::from_secs(15)
            } else {
                time
            };
            fuzz::fuzz(
                &workspace,
                &fuzz::Options {
                    target,
                    time,
                    smoke,
                },
            )?;
        }
        Command::Bench {
            instructions: true,
            update,
            ..
        } => {
            let built = plugins::build(&workspace, plugins::Cli::WithTests)?;
            let mode = if update {
                instructions::Mode::Update
            } else {
                instructions::Mode::Check
            };
            instructions::instructions(&workspace, &built, mode)?;
        }
        Command::Bench {
            peers, table: true, ..
        } => bench::table(&workspace, peers)?,
        Command::Bench { peers, .. } => bench::bench(&workspace, peers)?,
        Command::Ci => {
            workspace.cargo(&["fmt", "--all", "--", "--check"])?;
            workspace.cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            test(&workspace, &[])?;
        }
    }
    Ok(())
}

fn test(workspace: &shell::Workspace, extra: &[String]) -> Result<()> {
    // Seconds, and it fails for reasons no test would show.
    layers::check(&workspace.root.join("host/src"))?;
    let built = plugins::build(workspace, plugins::Cli::WithTests)?;
    component::build(workspace, &built)?;
    let mut args = vec!["test".to_owned(), "--workspace".to_owned()];
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    workspace.cargo_with_env(&args, &[("CAPSULE_PLUGIN_DIR", built.dir.as_os_str())])?;
    // The guest SDK is publishable as it is (authors can switch from the
    // vendored copy to the published crate); uncommitted changes are part
    // of what is checked. Its metadata macros go with it: cargo packages
    // the two together, the SDK against the macros it just packaged.
    workspace.cargo(&[
        "publish",
        "--dry-run",
        "--allow-dirty",
        "-p",
        "capsule-guest-macros",
        "-p",
        "capsule-guest",
    ])?;
    // After the tests, so a failing test is reported first; instruction
    // counts catch a slower call path without a flaky timing test.
    instructions::check_after_tests(workspace, &built)
}

/// A duration on the command line: a number with `s`, `m` or `h`.
fn parse_time(text: &str) -> Result<std::time::Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 90s, 10m or 2h"))?;
    let seconds = match unit {
        "" | "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => return Err(format!("`{text}` is not a duration such as 90s, 10m or 2h")),
    };
    Ok(std::time::Duration::from_secs(seconds))
}
