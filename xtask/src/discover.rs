//! Finds the example plugins: every directory under `example-plugins/` (and
//! `example-plugins/hostile/`) with a `Cargo.toml` is a Rust crate; every
//! directory under their `python/` with an `app.py` and under their `js/`
//! with an `app.js` is a plugin in that language, named after its
//! directory. Shared by xtask and the tests crate's build script, so both
//! always agree on the list.

use std::path::{Path, PathBuf};

/// The language an example plugin is written in, which decides how it is
/// built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// A crate built by cargo for wasm32-wasip2 with the Rust SDK.
    Rust,
    /// `app.py`, built by componentize-py with the helper
    /// `guest-sdk/python/capsule.py`.
    Python,
    /// `app.js`, built by componentize-js with the helper
    /// `guest-sdk/js/capsule.js`.
    JavaScript,
}

/// One example plugin.
// Shared with tests/build.rs, which reads every field; xtask needs only some.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct ExamplePlugin {
    /// The package (or directory) name, which is also the name of the built
    /// `.wasm`.
    pub name: String,
    /// The plugin's directory.
    pub dir: PathBuf,
    /// What it is written in.
    pub lang: Lang,
    /// Whether it lives under `example-plugins/hostile/`.
    pub hostile: bool,
    /// Whether `capsule sign` embeds its manifest: every plugin but the
    /// hostile ones, whose `handle` is the attack the manifest probe would
    /// run — unless one says `manifest = true` under
    /// `[package.metadata.capsule-examples]` in its `Cargo.toml` (`[package.metadata.capsule]`
    /// is the distribution metadata the SDK reads).
    pub manifest: bool,
}

/// Every example plugin, sorted by name.
pub fn example_plugins(root: &Path) -> std::io::Result<Vec<ExamplePlugin>> {
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
            let wants_manifest =
                table_value(&text, "package.metadata.capsule-examples", "manifest").as_deref()
                    == Some("true");
            found.push(ExamplePlugin {
                name,
                dir: path,
                lang: Lang::Rust,
                hostile,
                manifest: !hostile || wants_manifest,
            });
        }
        for (subdir, entry_file, lang) in [
            ("python", "app.py", Lang::Python),
            ("js", "app.js", Lang::JavaScript),
        ] {
            let langs = dir.join(subdir);
            if !langs.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&langs)? {
                let path = entry?.path();
                if !path.join(entry_file).is_file() {
                    continue;
                }
                let name = path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .ok_or_else(|| {
                        std::io::Error::other(format!("{} has no UTF-8 name", path.display()))
                    })?
                    .to_owned();
                found.push(ExamplePlugin {
                    name,
                    dir: path,
                    lang,
                    hostile,
                    manifest: !hostile,
                });
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}
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
