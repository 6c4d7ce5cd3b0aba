//! Build-time helpers of the Capsule guest SDK.
//!
//! [`cargo_metadata!`] reads the plugin crate's `Cargo.toml` while the plugin
//! compiles and turns `[package]` and `[package.metadata.capsule]` into the
//! distribution metadata of the plugin's manifest (a JSON object as a string
//! literal). `capsule_guest::export_plugin!` calls it; authors write no code
//! for it:
//!
//! ```toml
//! [package]
//! name = "hello"
//! authors = ["Ada <ada@example.com>"]
//! license = "Apache-2.0"
//! repository = "https://github.com/acme/hello"
//! keywords = ["greeting"]          # the tags, unless metadata.capsule.tags says otherwise
//!
//! [package.metadata.capsule]
//! tags = ["greeting", "demo"]
//! categories = ["examples/basics"]
//! grants = ["kv", "log"]           # the services it needs granted to be useful
//! min-contract = "0.2.0"           # default: the SDK's contract version
//! ```

use std::path::{Path, PathBuf};

use proc_macro::TokenStream;
use serde_json::{Map, Value};

/// The keys `[package.metadata.capsule]` may hold.
const CAPSULE_KEYS: &[&str] = &[
    "tags",
    "categories",
    "grants",
    "min-contract",
    "documentation",
];

/// The plugin crate's distribution metadata as a JSON string literal. Takes
/// no arguments. A malformed `[package.metadata.capsule]` is a compile
/// error naming the key.
#[proc_macro]
pub fn cargo_metadata(_input: TokenStream) -> TokenStream {
    match metadata() {
        Ok((json, manifest)) => {
            // `include_bytes!` makes Cargo rebuild the plugin when its
            // Cargo.toml changes, as the metadata comes from it.
            format!(
                "{{ const _: &[u8] = ::core::include_bytes!({:?}); {:?} }}",
                manifest.display().to_string(),
                json
            )
        }
        Err(message) => format!(
            "::core::compile_error!({:?})",
            format!("capsule metadata: {message}")
        ),
    }
    .parse()
    .expect("the expansion is valid Rust")
}

fn metadata() -> Result<(String, PathBuf), String> {
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .map_err(|_| "CARGO_MANIFEST_DIR is not set: build the plugin with cargo".to_owned())?;
    let manifest = Path::new(&dir).join("Cargo.toml");
    let table = read_toml(&manifest)?;
    let package = table
        .get("package")
        .and_then(toml::Value::as_table)
        .ok_or_else(|| format!("{} has no [package]", manifest.display()))?;
    let capsule = package
        .get("metadata")
        .and_then(|m| m.get("capsule"))
        .map(|c| {
            c.as_table()
                .cloned()
                .ok_or("[package.metadata.capsule] must be a table")
        })
        .transpose()?
        .unwrap_or_default();
    if let Some(unknown) = capsule.keys().find(|k| !CAPSULE_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "[package.metadata.capsule] has no key `{unknown}` (keys: {})",
            CAPSULE_KEYS.join(", ")
        ));
    }

    let mut out = Map::new();
    // Cargo resolves workspace inheritance for these and hands them to the
    // compiler as environment variables.
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(authors) = env("CARGO_PKG_AUTHORS") {
        let authors: Vec<Value> = authors
            .split(':')
            .filter(|a| !a.is_empty())
            .map(|a| Value::from(a.trim()))
            .collect();
        out.insert("authors".into(), Value::Array(authors));
    }
    for (key, var) in [
        ("license", "CARGO_PKG_LICENSE"),
        ("homepage", "CARGO_PKG_HOMEPAGE"),
        ("repository", "CARGO_PKG_REPOSITORY"),
    ] {
        if let Some(value) = env(var) {
            out.insert(key.into(), Value::from(value));
        }
    }
    let documentation = match capsule.get("documentation") {
        Some(value) => Some(string(value, "documentation")?),
        None => inherited(package, "documentation", &manifest)?
            .map(|v| string(&v, "package.documentation"))
            .transpose()?,
    };
    if let Some(documentation) = documentation {
        out.insert("documentation".into(), Value::from(documentation));
    }
    for (key, fallback) in [("tags", "keywords"), ("categories", "categories")] {
        let list = match capsule.get(key) {
            Some(value) => strings(value, key)?,
            None => inherited(package, fallback, &manifest)?
                .map(|v| strings(&v, &format!("package.{fallback}")))
                .transpose()?
                .unwrap_or_default(),
        };
        // crates.io writes nested categories `a::b`; the manifest, `a/b`.
        let list: Vec<String> = list
            .into_iter()
            .map(|item| item.replace("::", "/"))
            .collect();
        if !list.is_empty() {
            out.insert(key.into(), list.into());
        }
    }
    if let Some(grants) = capsule.get("grants") {
        out.insert("grants".into(), strings(grants, "grants")?.into());
    }
    if let Some(version) = capsule.get("min-contract") {
        out.insert(
            "min_contract".into(),
            string(version, "min-contract")?.into(),
        );
    }
    Ok((Value::Object(out).to_string(), manifest))
}

fn read_toml(path: &Path) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    text.parse()
        .map_err(|err| format!("{} does not parse: {err}", path.display()))
}

/// `package.KEY`, following `KEY.workspace = true` to the workspace's
/// `[workspace.package]`.
fn inherited(
    package: &toml::Table,
    key: &str,
    manifest: &Path,
) -> Result<Option<toml::Value>, String> {
    let Some(value) = package.get(key) else {
        return Ok(None);
    };
    let from_workspace = value
        .get("workspace")
        .and_then(toml::Value::as_bool)
        .unwrap_or(false);
    if !from_workspace {
        return Ok(Some(value.clone()));
    }
    let mut dir = manifest.parent().and_then(Path::parent);
    while let Some(candidate) = dir {
        let path = candidate.join("Cargo.toml");
        if path.is_file() {
            let table = read_toml(&path)?;
            if let Some(workspace) = table.get("workspace") {
                return Ok(workspace.get("package").and_then(|p| p.get(key)).cloned());
            }
        }
        dir = candidate.parent();
    }
    Err(format!(
        "package.{key} is inherited from a workspace, and no workspace Cargo.toml is above {}",
        manifest.display()
    ))
}

fn string(value: &toml::Value, key: &str) -> Result<String, String> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("`{key}` must be a string"))
}

fn strings(value: &toml::Value, key: &str) -> Result<Vec<String>, String> {
    value
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .ok_or_else(|| format!("`{key}` must be a list of strings"))
}
