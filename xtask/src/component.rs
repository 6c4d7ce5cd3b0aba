//! `cargo xtask build-component-plugins`: the cargo-component path. Installs
//! `cargo-component` if it is missing, builds the `hello` example with
//! `cargo component build --release` (a wasm32-wasip1 core module made a
//! component with the WASI preview 1 adapter), and signs it into
//! `target/plugins/hello-cargo-component.wasm` next to the wasm32-wasip2
//! build of the same crate, so the tests can run both and compare.
//!
//! The artifact's name is not a crate under `example-plugins/`, so the
//! tests' per-plugin machinery (`foreach_plugin!`) never sees it.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::plugins::{Built, ensure_target};
use crate::shell::{Workspace, cargo, describe, run};

/// Set to `1` to skip the cargo-component build (and the tests that need
/// it). Only for machines that cannot install cargo-component; `test`
/// normally installs it.
pub const SKIP_ENV: &str = "CAPSULE_SKIP_CARGO_COMPONENT";
/// The example plugin built both ways.
pub const PLUGIN: &str = "hello";
/// Its cargo-component build in `target/plugins/`, without `.wasm`.
pub const ARTIFACT: &str = "hello-cargo-component";
/// The target cargo-component builds core modules for.
pub const TARGET: &str = "wasm32-wasip1";
/// The cargo-component release installed when it is missing: the newest one
/// verified to build with this repository's toolchain (Rust 1.95).
pub const CARGO_COMPONENT_VERSION: &str = "0.21.1";

/// Whether `CAPSULE_SKIP_CARGO_COMPONENT=1` asks to skip this path. Never
/// in CI (`CI=true`): there the path is installed and tested, or fails.
pub fn skip_requested() -> bool {
    let asked = std::env::var_os(SKIP_ENV).is_some_and(|value| value == "1");
    if asked && std::env::var_os("CI").is_some_and(|value| value == "true") {
        eprintln!("{SKIP_ENV}=1 is ignored in CI: the cargo-component path is always tested there");
        return false;
    }
    asked
}

/// Builds `hello` with cargo-component and signs it with the run's test key.
pub fn build(workspace: &Workspace, built: &Built) -> Result<()> {
    if skip_requested() {
        eprintln!(
            "{SKIP_ENV}=1: skipping the cargo-component build; the tests that need it are \
             skipped too"
        );
        return Ok(());
    }
    ensure_target(TARGET)?;
    let version = ensure_cargo_component()?;
    eprintln!("using {version}");

    workspace.cargo(&[
        "component",
        "build",
        "--release",
        "--package",
        PLUGIN,
        "--target",
        TARGET,
    ])?;
    let artifact = workspace
        .target
        .join(TARGET)
        .join("release")
        .join(format!("{}.wasm", PLUGIN.replace('-', "_")));
    let bytes =
        std::fs::read(&artifact).with_context(|| format!("cannot read {}", artifact.display()))?;
    // A component's header has layer 1 (bytes 6..8); a core module's has 0.
    if bytes.len() < 8 || !bytes.starts_with(b"\0asm") || bytes[6..8] != [1, 0] {
        bail!(
            "{} is not a WebAssembly component: cargo-component did not componentize it",
            artifact.display()
        );
    }
    let dest = built.dir.join(format!("{ARTIFACT}.wasm"));
    std::fs::copy(&artifact, &dest)
        .with_context(|| format!("cannot copy {} to {}", artifact.display(), dest.display()))?;
    run(Command::new(&built.capsule)
        .arg("sign")
        .arg(&dest)
        .arg("--key")
        .arg(built.test_key.with_extension("key")))?;
    eprintln!(
        "built {PLUGIN} with cargo-component ({TARGET} + adapter) into {}",
        dest.display()
    );
    Ok(())
}

/// Returns `cargo component --version`, installing cargo-component first if
/// the subcommand is missing.
fn ensure_cargo_component() -> Result<String> {
    if let Some(version) = cargo_component_version() {
        return Ok(version);
    }
    eprintln!(
        "cargo-component is not installed; installing {CARGO_COMPONENT_VERSION} \
         (this compiles it from source and takes a few minutes)"
    );
    // An unoptimised build (5 min here on two cores): its release profile
    // compiles 400 crates with LTO and one codegen unit, far slower, and
    // cargo-component only drives cargo, so its own speed does not show.
    run(Command::new(cargo()).args([
        "install",
        "--debug",
        "cargo-component",
        "--locked",
        "--version",
        CARGO_COMPONENT_VERSION,
    ]))?;
    cargo_component_version().with_context(|| {
        format!(
            "`cargo component` still does not run after installing it; is \
             $CARGO_HOME/bin on PATH? (tried `{}`)",
            describe(Command::new(cargo()).args(["component", "--version"]))
        )
    })
}

/// `cargo component --version`, or `None` if the subcommand does not run.
fn cargo_component_version() -> Option<String> {
    let output = Command::new(cargo())
        .args(["component", "--version"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
