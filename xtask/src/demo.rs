//! `cargo xtask demo`: builds the example plugins and the `capsule` CLI, then
//! runs each example the way an operator would, printing what each plugin did
//! and what the sandbox stopped. Every step states what it expects, and the
//! demo fails if any step does something else.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::plugins;
use crate::shell::Workspace;

/// What a demo step should end in.
enum Expect {
    /// Exit 0.
    Success,
    /// A non-zero exit whose `--json` output names this error kind.
    Refused(&'static str),
}

struct Step {
    title: String,
    args: Vec<String>,
    expect: Expect,
}

impl Step {
    fn new<S: AsRef<str>>(title: &str, args: &[S], expect: Expect) -> Step {
        Step {
            title: title.to_owned(),
            args: args.iter().map(|a| a.as_ref().to_owned()).collect(),
            expect,
        }
    }
}

/// Runs the demo.
pub fn run(workspace: &Workspace) -> Result<()> {
    let built = plugins::build(workspace)?;
    workspace.cargo(&["build", "--package", "capsule-host", "--bin", "capsule"])?;
    let capsule = workspace
        .target
        .join("debug")
        .join(format!("capsule{}", std::env::consts::EXE_SUFFIX));
    let demo_dir = workspace.target.join("demo");
    std::fs::create_dir_all(&demo_dir)?;

    let plugin = |name: &str| built.dir.join(format!("{name}.wasm")).display().to_string();
    let hello = plugin("hello");
    let truncated = truncated_copy(Path::new(&hello), &demo_dir)?;
    let truncated = truncated.display().to_string();
    let [
        spin_loop,
        alloc_bomb,
        deep_recursion,
        panic,
        huge_output,
        slow_host_calls,
    ] = [
        "spin-loop",
        "alloc-bomb",
        "deep-recursion",
        "panic",
        "huge-output",
        "slow-host-calls",
    ]
    .map(plugin);
    // Every hostile plugin attacks whatever operation it is asked for.
    let hostile = |path: &str, limits: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["run", path, "--op", "run", "--input", "x", "--json"]
            .map(str::to_owned)
            .to_vec();
        args.extend(limits.iter().map(|a| (*a).to_owned()));
        args
    };

    let steps = [
        Step::new(
            "hello greets Ada",
            &[
                "run",
                &hello,
                "--op",
                "greet",
                "--input",
                r#"{"name":"Ada"}"#,
            ],
            Expect::Success,
        ),
        Step::new(
            "the operator configures the greeting word",
            &[
                "run",
                &hello,
                "--op",
                "greet",
                "--input",
                r#"{"name":"Ada"}"#,
                "--config",
                "greeting=Bonjour",
                "--json",
            ],
            Expect::Success,
        ),
        Step::new(
            "an operation hello does not implement is the plugin's typed error",
            &["run", &hello, "--op", "nope", "--json"],
            Expect::Refused("plugin_error"),
        ),
        Step::new(
            "a truncated component is refused before it is compiled",
            &["run", &truncated, "--op", "greet", "--json"],
            Expect::Refused("malformed"),
        ),
        Step::new(
            "spin-loop never returns: the 500 ms deadline stops it",
            &hostile(&spin_loop, &["--timeout", "500ms", "--fuel", "none"]),
            Expect::Refused("timeout"),
        ),
        Step::new(
            "spin-loop again, this time stopped by a fuel budget",
            &hostile(&spin_loop, &["--fuel", "5000000"]),
            Expect::Refused("out_of_fuel"),
        ),
        Step::new(
            "alloc-bomb grabs memory without end: stopped at 32 MiB",
            &hostile(&alloc_bomb, &["--memory", "32MiB"]),
            Expect::Refused("memory_limit"),
        ),
        Step::new(
            "deep-recursion overflows the wasm stack",
            &hostile(&deep_recursion, &[]),
            Expect::Refused("stack_overflow"),
        ),
        Step::new(
            "panic panics: a trap that names the panic",
            &hostile(&panic, &[]),
            Expect::Refused("trap"),
        ),
        Step::new(
            "huge-output returns 16 MiB: refused over the 1 MiB output limit",
            &hostile(&huge_output, &["--max-output", "1MiB"]),
            Expect::Refused("output_too_large"),
        ),
        Step::new(
            "slow-host-calls sleeps inside a host call: the outer timeout stops it",
            &hostile(&slow_host_calls, &["--timeout", "500ms"]),
            Expect::Refused("timeout"),
        ),
    ];

    let mut failures = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        if let Err(err) = run_step(&capsule, index + 1, step) {
            println!("   !! {err:#}");
            failures.push(step.title.clone());
        }
    }
    println!();
    if failures.is_empty() {
        println!("demo: all {} steps behaved as expected", steps.len());
        Ok(())
    } else {
        bail!(
            "demo steps did not behave as expected: {}",
            failures.join("; ")
        )
    }
}

fn run_step(capsule: &Path, number: usize, step: &Step) -> Result<()> {
    println!();
    println!("── {number}. {}", step.title);
    println!("   $ capsule {}", quote_args(&step.args));
    let output = Command::new(capsule)
        .args(&step.args)
        .output()
        .with_context(|| format!("cannot run {}", capsule.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stdout.lines() {
        println!("   │ {line}");
    }
    for line in stderr.lines() {
        println!("   ┆ {line}");
    }
    let code = output.status.code().unwrap_or(-1);
    match step.expect {
        Expect::Success if output.status.success() => {
            println!("   ✓ ok");
            Ok(())
        }
        Expect::Success => bail!("expected success, got exit code {code}"),
        Expect::Refused(kind) => {
            let wanted = format!(r#""kind":"{kind}""#);
            if output.status.success() {
                bail!("expected the sandbox to refuse with `{kind}`, but the call succeeded")
            } else if !stdout.contains(&wanted) {
                bail!("expected error kind `{kind}` (exit code {code})")
            } else {
                println!("   ✓ stopped: {kind} (exit code {code})");
                Ok(())
            }
        }
    }
}

/// Writes the first half of a component, to show how broken input is met.
fn truncated_copy(original: &Path, dir: &Path) -> Result<PathBuf> {
    let bytes = std::fs::read(original)?;
    let path = dir.join("hello-truncated.wasm");
    std::fs::write(&path, &bytes[..bytes.len() / 2])?;
    Ok(path)
}

fn quote_args(args: &[String]) -> String {
    args.iter()
        .map(|arg| {
            if arg.contains(|c: char| c.is_whitespace() || "\"'{}$".contains(c)) {
                format!("'{arg}'")
            } else {
                arg.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
