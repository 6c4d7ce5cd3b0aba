//! Embeds the guest SDK of this checkout (`guest-sdk/`: its sources, its
//! WIT contract and a standalone manifest) into the `capsule` binary, so
//! `capsule new` can vendor exactly the SDK of its own version into a new
//! plugin on a machine with no checkout of this repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let sdk = root.join("guest-sdk");
    println!("cargo:rerun-if-changed={}", sdk.display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );

    let mut files = BTreeMap::new();
    for dir in ["src", "wit", "macros"] {
        collect(&sdk, &sdk.join(dir), &mut files);
    }
    let manifest = standalone_manifest(&root, &sdk);

    let mut out = String::from(
        "/// The guest SDK's files, relative to its folder, as this binary was built.\n\
         pub const SDK_FILES: &[(&str, &str)] = &[\n",
    );
    for (relative, path) in &files {
        out.push_str(&format!(
            "    ({relative:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n\n");
    out.push_str(
        "/// The SDK's manifest with every workspace-inherited value written out.\n\
         pub const SDK_MANIFEST: &str = ",
    );
    out.push_str(&format!("{manifest:?};\n"));
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("sdk_files.rs");
    std::fs::write(dest, out).unwrap();
}

/// Every file below `dir`, keyed by its path relative to `base` (with `/`).
fn collect(base: &Path, dir: &Path, files: &mut BTreeMap<String, PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(base, &path, files);
        } else {
            let relative = path.strip_prefix(base).unwrap();
            let relative: Vec<_> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            files.insert(relative.join("/"), path);
        }
    }
}

/// `guest-sdk/Cargo.toml` as a package of its own: `x.workspace = true` is
/// replaced by the workspace's value, and workspace lints are dropped.
fn standalone_manifest(root: &Path, sdk: &Path) -> String {
    let read = |path: &Path| -> toml::Table {
        let text = std::fs::read_to_string(path).unwrap();
        text.parse()
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    };
    let workspace = read(&root.join("Cargo.toml"));
    let workspace = workspace["workspace"].as_table().unwrap();
    let mut manifest = read(&sdk.join("Cargo.toml"));

    let inherited = |value: &toml::Value| {
        value
            .as_table()
            .and_then(|t| t.get("workspace"))
            .and_then(toml::Value::as_bool)
            .unwrap_or(false)
    };
    let package = manifest["package"].as_table_mut().unwrap();
    let shared = workspace["package"].as_table().unwrap();
    for (key, value) in package.iter_mut() {
        if inherited(value) {
            *value = shared
                .get(key)
                .unwrap_or_else(|| panic!("workspace.package.{key} is missing"))
                .clone();
        }
    }
    let shared_deps = workspace["dependencies"].as_table().unwrap();
    if let Some(deps) = manifest
        .get_mut("dependencies")
        .and_then(|d| d.as_table_mut())
    {
        for (name, value) in deps.iter_mut() {
            if !inherited(value) {
                continue;
            }
            let mut resolved = match shared_deps[name].clone() {
                toml::Value::String(version) => {
                    let mut table = toml::Table::new();
                    table.insert("version".into(), toml::Value::String(version));
                    table
                }
                toml::Value::Table(table) => table,
                other => panic!("workspace.dependencies.{name} is {other}"),
            };
            // What the member adds (features, optional) on top of the
            // workspace's entry.
            for (key, extra) in value.as_table().unwrap() {
                if key == "features" {
                    let features = resolved
                        .entry("features")
                        .or_insert_with(|| toml::Value::Array(Vec::new()));
                    let list = features.as_array_mut().unwrap();
                    list.extend(extra.as_array().unwrap().iter().cloned());
                } else if key != "workspace" {
                    resolved.insert(key.clone(), extra.clone());
                }
            }
            *value = toml::Value::Table(resolved);
        }
    }
    manifest.remove("lints");
    let body = toml::to_string(&manifest).unwrap();
    format!(
        "# The Capsule guest SDK, vendored by `capsule new` from the `capsule` binary\n\
         # that created this plugin (the SDK of that binary's own version).\n\n{body}"
    )
}
