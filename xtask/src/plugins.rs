//! `cargo xtask build-plugins`: build every example plugin crate as a
//! wasm32-wasip2 component, once, in the `plugin` profile, and the Python
//! and JavaScript examples with their pinned toolchains (`polyglot.rs`);
//! collect them in `target/plugins/<name>.wasm` and sign them all with a
//! fresh test key.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::discover::{Lang, example_plugins};
use crate::polyglot::Toolchains;
use crate::shell::{Workspace, run};

/// The target every plugin is built for.
pub const TARGET: &str = "wasm32-wasip2";
/// The cargo profile plugins are built in (release, LTO).
pub const PROFILE: &str = "plugin";

/// What `build` produced.
pub struct Built {
    /// `target/plugins`.
    pub dir: PathBuf,
    /// The `capsule` CLI (debug build) used to sign them.
    pub capsule: PathBuf,
    /// The public half of the run's test key, which signed every plugin.
    pub test_key: PathBuf,
    /// hello as the compiler produced it, before signing.
    pub unsigned_hello: PathBuf,
}

/// How the `capsule` CLI that signs the plugins is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cli {
    /// As `cargo test --workspace` builds it (with every test, so the test
    /// run that follows compiles nothing twice).
    WithTests,
    /// Just the CLI and the runtime and scale-out tour examples: what the
    /// demo runs, without waiting for the test suite to compile.
    Alone,
}

/// Builds every plugin and copies the components into `target/plugins/`.
pub fn build(workspace: &Workspace, cli: Cli) -> Result<Built> {
    ensure_target(TARGET)?;
    check_sdk_wit(workspace)?;
    let plugins = example_plugins(&workspace.root).context("cannot list example plugins")?;
    let (crates, others): (Vec<_>, Vec<_>) = plugins
        .into_iter()
        .partition(|plugin| plugin.lang == Lang::Rust);
    if crates.is_empty() {
        bail!("no plugin crates found under example-plugins/");
    }
    let mut args = vec!["build", "--profile", PROFILE, "--target", TARGET];
    for plugin in &crates {
        args.push("-p");
        args.push(&plugin.name);
    }
    workspace.cargo(&args)?;

    let out_dir = workspace.target.join("plugins");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let built_dir = workspace.target.join(TARGET).join(PROFILE);
    let mut built = Vec::new();
    for plugin in &crates {
        let artifact = built_dir.join(format!("{}.wasm", plugin.name.replace('-', "_")));
        let dest = out_dir.join(format!("{}.wasm", plugin.name));
        std::fs::copy(&artifact, &dest)
            .with_context(|| format!("cannot copy {} to {}", artifact.display(), dest.display()))?;
        built.push((dest, plugin.manifest));
    }
    // Plugins in other languages, each with its pinned toolchain.
    let toolchains = Toolchains::ensure(workspace, &others)?;
    for plugin in &others {
        let dest = out_dir.join(format!("{}.wasm", plugin.name));
        toolchains.build(workspace, plugin, &dest)?;
        built.push((dest, plugin.manifest));
    }

    // A fresh test key for every run signs every plugin; tests and the demo
    // trust its public half. No secret key is ever committed.
    //
    // The CLI is built the way `cargo test --workspace` builds it: with the
    // features the whole workspace (dev-dependencies included) unifies to.
    // Building just `capsule-host` would unify them differently, and the test
    // run would then compile wasmtime a second time.
    match cli {
        Cli::WithTests => workspace.cargo(&["test", "--workspace", "--no-run"])?,
        Cli::Alone => workspace.cargo(&[
            "build",
            "-p",
            "capsule-cli",
            "-p",
            "capsule-host",
            "--bin",
            "capsule",
            "--example",
            "runtime_tour",
            "--example",
            "scale_out_tour",
            "--example",
            "registry_tour",
        ])?,
    }
    let capsule = workspace
        .target
        .join("debug")
        .join(format!("capsule{}", std::env::consts::EXE_SUFFIX));
    let key_prefix = out_dir.join("test-key");
    run(Command::new(&capsule)
        .args(["keygen", "--force", "--out"])
        .arg(&key_prefix))?;
    let secret = key_prefix.with_extension("key");
    for (plugin, with_manifest) in &built {
        let mut sign = Command::new(&capsule);
        sign.arg("sign").arg(plugin).arg("--key").arg(&secret);
        // A hostile plugin's `handle` is the attack, and building the
        // manifest probes `handle`: sign those as they are (see
        // `PluginCrate::manifest`).
        if !with_manifest {
            sign.arg("--no-manifest");
        }
        run(&mut sign)?;
    }
    eprintln!(
        "built and signed {} plugins into {}",
        built.len(),
        out_dir.display()
    );
    Ok(Built {
        dir: out_dir,
        capsule,
        test_key: key_prefix.with_extension("pub"),
        unsigned_hello: built_dir.join("hello.wasm"),
    })
}

/// Installs the rustup target if it is missing (CI starts from a bare
/// toolchain).
pub fn ensure_target(target: &str) -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(output) if output.status.success() => {
            let list = String::from_utf8_lossy(&output.stdout);
            if list.lines().any(|line| line.trim() == target) {
                return Ok(());
            }
            run(Command::new("rustup").args(["target", "add", target]))
        }
        // Without rustup the toolchain must already have the target; cargo
        // will say so clearly if it does not.
        _ => {
            eprintln!("rustup not found; assuming the {target} target is installed");
            Ok(())
        }
    }
}

/// The SDK ships a copy of the contract; it must be identical to `wit/`.
fn check_sdk_wit(workspace: &Workspace) -> Result<()> {
    let canonical = workspace.root.join("wit/plugin.wit");
    let shipped = workspace.root.join("guest-sdk/wit/plugin.wit");
    let a = std::fs::read(&canonical).with_context(|| format!("read {}", canonical.display()))?;
    let b = std::fs::read(&shipped).with_context(|| format!("read {}", shipped.display()))?;
    if a != b {
        bail!(
            "{} differs from {}: the SDK must ship the contract it was generated from \
             (copy wit/plugin.wit over it)",
            shipped.display(),
            canonical.display()
        );
    }
    Ok(())
}
