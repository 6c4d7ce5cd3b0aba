//! Running cargo and other tools from the workspace root, loudly.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace this xtask belongs to.
pub struct Workspace {
    /// The repository root (where the workspace `Cargo.toml` is).
    pub root: PathBuf,
    /// The shared target directory.
    pub target: PathBuf,
}

impl Workspace {
    /// Finds the workspace root from this crate's manifest directory, and the
    /// target directory from `CARGO_TARGET_DIR` or `<root>/target`.
    pub fn locate() -> Result<Workspace> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => root.join(dir),
            None => root.join("target"),
        };
        Ok(Workspace { root, target })
    }

    /// Runs `cargo <args>` in the workspace root; fails if cargo fails.
    pub fn cargo(&self, args: &[&str]) -> Result<()> {
        self.cargo_with_env(args, &[])
    }

    /// Runs `cargo <args>` with extra environment variables.
    pub fn cargo_with_env(&self, args: &[&str], env: &[(&str, &OsStr)]) -> Result<()> {
        let mut command = Command::new(cargo());
        command.args(args).current_dir(&self.root);
        for (key, value) in env {
            command.env(key, value);
        }
        run(&mut command)
    }
}

/// The cargo that invoked us, so toolchain overrides carry through.
pub fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Runs a command, echoing it first, and fails with its exit status.
pub fn run(command: &mut Command) -> Result<()> {
    // `cargo run` set this for xtask; passed on to cargo, it makes build
    // scripts that watch it (ring's) rerun, and everything above them
    // rebuild, whenever plain `cargo` and `cargo xtask` alternate.
    command.env_remove("CARGO_MANIFEST_DIR");
    eprintln!("$ {}", describe(command));
    let status = command
        .status()
        .with_context(|| format!("cannot start {}", describe(command)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", describe(command));
    }
    Ok(())
}

/// A command as a shell-like line, for messages.
pub fn describe(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}
