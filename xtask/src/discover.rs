//! Finds the example plugin crates: every directory under `example-plugins/`
//! (and `example-plugins/hostile/`) with a `Cargo.toml`. Shared by xtask and
//! the tests crate's build script, so both always agree on the list.

use std::path::{Path, PathBuf};

/// One example plugin crate.
// Shared with tests/build.rs, which reads every field; xtask needs only some.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct PluginCrate {
    /// The package name, which is also the name of the built `.wasm`.
    pub name: String,
    /// The crate's directory.
    pub dir: PathBuf,
    /// Whether it lives under `example-plugins/hostile/`.
    pub hostile: bool,
}

/// Lists the plugin crates under `<root>/example-plugins`, sorted by name.
pub fn plugin_crates(root: &Path) -> std::io::Result<Vec<PluginCrate>> {
    let base = root.join("example-plugins");
    let mut found = Vec::new();
    for (dir, hostile) in [(base.clone(), false), (base.join("hostile"), true)] {
        if !dir.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let manifest = path.join("Cargo.toml");
            if !manifest.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&manifest)?;
            let name = package_name(&text).ok_or_else(|| {
                std::io::Error::other(format!("{} has no package name", manifest.display()))
            })?;
            found.push(PluginCrate {
                name,
                dir: path,
                hostile,
            });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// The `name` of the `[package]` table of a manifest.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if let Some(value) = line.strip_prefix("name").filter(|_| in_package) {
            let value = value.trim_start().strip_prefix('=')?.trim();
            return Some(value.trim_matches('"').to_owned());
        }
    }
    None
}
