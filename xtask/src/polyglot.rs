//! Building the example plugins written in Python and JavaScript: their
//! toolchains, pinned in the repository, are installed under
//! `target/tools/` (never globally) when missing or when the pins change,
//! and each plugin is componentized against `wit/` (world `plugin`) with its
//! language's helper beside it.
//!
//! - Python: `componentize-py` from `example-plugins/python/requirements.txt`
//!   in a virtual environment at `target/tools/python`;
//! - JavaScript: `componentize-js` (and `jco`) from
//!   `example-plugins/js/package.json` and its lock file, `npm ci` into
//!   `target/tools/node`.
//!
//! Both need only `python3` (with `venv`) and `node`/`npm` on the machine;
//! `.ci/run` installs those when they are missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::discover::{ExamplePlugin, Lang};
use crate::shell::{Workspace, run};

/// The contract world every plugin is built against.
const WORLD: &str = "plugin";

/// The installed toolchains, found or installed by [`Toolchains::ensure`].
#[derive(Default)]
pub struct Toolchains {
    componentize_py: Option<PathBuf>,
    componentize_js: Option<PathBuf>,
}

impl Toolchains {
    /// Installs (or finds, already installed at the pinned versions) the
    /// toolchain of every language among `plugins`.
    pub fn ensure(workspace: &Workspace, plugins: &[ExamplePlugin]) -> Result<Toolchains> {
        let mut tools = Toolchains::default();
        if plugins.iter().any(|plugin| plugin.lang == Lang::Python) {
            tools.componentize_py = Some(ensure_python(workspace)?);
        }
        if plugins.iter().any(|plugin| plugin.lang == Lang::JavaScript) {
            tools.componentize_js = Some(ensure_node(workspace)?);
        }
        Ok(tools)
    }

    /// Builds one Python or JavaScript plugin into `dest`.
    pub fn build(&self, workspace: &Workspace, plugin: &ExamplePlugin, dest: &Path) -> Result<()> {
        let wit = workspace.root.join("wit");
        match plugin.lang {
            Lang::Python => {
                let tool = self
                    .componentize_py
                    .as_ref()
                    .context("no componentize-py")?;
                // The helper's directory is on the module path, as a copy of
                // `capsule.py` next to `app.py` would be.
                run(Command::new(tool)
                    // Keep the source tree free of `__pycache__`.
                    .env("PYTHONDONTWRITEBYTECODE", "1")
                    .arg("-d")
                    .arg(&wit)
                    .args(["-w", WORLD, "componentize", "-p"])
                    .arg(&plugin.dir)
                    .arg("-p")
                    .arg(workspace.root.join("guest-sdk/python"))
                    .args(["app", "-o"])
                    .arg(dest))?;
            }
            Lang::JavaScript => {
                let tool = self
                    .componentize_js
                    .as_ref()
                    .context("no componentize-js")?;
                // componentize-js resolves `./capsule.js` next to `app.js`:
                // build from a copy of the plugin's directory with the
                // helper beside it.
                let stage = workspace.target.join("js-build").join(&plugin.name);
                let _ = std::fs::remove_dir_all(&stage);
                copy_dir(&plugin.dir, &stage)?;
                std::fs::copy(
                    workspace.root.join("guest-sdk/js/capsule.js"),
                    stage.join("capsule.js"),
                )
                .context("cannot copy the JavaScript helper")?;
                run(Command::new(tool)
                    .arg("--wit")
                    .arg(&wit)
                    .args(["--world-name", WORLD, "-o"])
                    .arg(dest)
                    .arg(stage.join("app.js")))?;
            }
            Lang::Rust => bail!("{} is a Rust crate, built by cargo", plugin.name),
        }
        Ok(())
    }
}

/// `target/tools/python/bin/componentize-py`, installed from
/// `example-plugins/python/requirements.txt` into a virtual environment.
fn ensure_python(workspace: &Workspace) -> Result<PathBuf> {
    let pins = workspace
        .root
        .join("example-plugins/python/requirements.txt");
    let venv = workspace.target.join("tools/python");
    let tool = venv.join("bin/componentize-py");
    let stamp = venv.join("installed-requirements.txt");
    if is_current(&pins, &stamp, &tool)? {
        return Ok(tool);
    }
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new(&python).args(["-m", "venv"]).arg(&venv))
        .context("cannot create a Python virtual environment: install python3 and python3-venv")?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&pins))?;
    std::fs::copy(&pins, &stamp).context("cannot record the installed pins")?;
    Ok(tool)
}

/// `target/tools/node/node_modules/.bin/componentize-js`, installed by
/// `npm ci` from `example-plugins/js/package.json` and its lock file.
fn ensure_node(workspace: &Workspace) -> Result<PathBuf> {
    let source = workspace.root.join("example-plugins/js");
    let prefix = workspace.target.join("tools/node");
    let tool = prefix.join("node_modules/.bin/componentize-js");
    let stamp = prefix.join("installed-package-lock.json");
    let lock = source.join("package-lock.json");
    if is_current(&lock, &stamp, &tool)? {
        return Ok(tool);
    }
    std::fs::create_dir_all(&prefix)
        .with_context(|| format!("cannot create {}", prefix.display()))?;
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(source.join(file), prefix.join(file))
            .with_context(|| format!("cannot copy {file}"))?;
    }
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&prefix))
    .context("cannot install the JavaScript toolchain: install node and npm")?;
    std::fs::copy(&lock, &stamp).context("cannot record the installed lock file")?;
    Ok(tool)
}

/// Whether `tool` exists and was installed from exactly `pins`.
fn is_current(pins: &Path, stamp: &Path, tool: &Path) -> Result<bool> {
    let wanted = std::fs::read(pins).with_context(|| format!("cannot read {}", pins.display()))?;
    Ok(tool.is_file() && std::fs::read(stamp).is_ok_and(|installed| installed == wanted))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}
