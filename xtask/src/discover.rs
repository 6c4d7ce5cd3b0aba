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
    /// Whether `capsule sign` embeds its manifest: every plugin but the
    /// hostile ones, whose `handle` is the attack the manifest probe would
    /// run — unless one says `manifest = true` under
    /// `[package.metadata.capsule]` (its `handle` dispatches, and it needs
    /// its declared metrics).
    pub manifest: bool,
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
            let name = table_value(&text, "package", "name").ok_or_else(|| {
                std::io::Error::other(format!("{} has no package name", manifest.display()))
            })?;
            let wants_manifest = table_value(&text, "package.metadata.capsule", "manifest")
                .as_deref()
                == Some("true");
            found.push(PluginCrate {
                name,
                dir: path,
                hostile,
                manifest: !hostile || wants_manifest,
            });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// The value of `key` in `[table]` of a Cargo manifest, unquoted.
fn table_value(manifest: &str, table: &str, key: &str) -> Option<String> {
    let header = format!("[{table}]");
    let mut in_table = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_table = line == header;
            continue;
        }
        if let Some(value) = line.strip_prefix(key).filter(|_| in_table) {
            let Some(value) = value.trim_start().strip_prefix('=') else {
                continue;
            };
            return Some(value.trim().trim_matches('"').to_owned());
        }
    }
    None
}
