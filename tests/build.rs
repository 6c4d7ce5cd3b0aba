//! Generates one constant per example plugin and a `foreach_plugin!` macro,
//! so the end-to-end suite can require a test module for every plugin: adding
//! a plugin without tests fails to compile.

#[path = "../xtask/src/discover.rs"]
mod discover;

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    println!(
        "cargo:rerun-if-changed={}",
        root.join("example-plugins").display()
    );
    for dir in [
        "example-plugins/hostile",
        "example-plugins/python",
        "example-plugins/js",
        "example-plugins/hostile/python",
        "example-plugins/hostile/js",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let plugins = discover::example_plugins(root).expect("cannot list example plugins");

    let mut code = String::new();
    let mut all = Vec::new();
    let mut hostile = Vec::new();
    let mut idents = Vec::new();
    for plugin in &plugins {
        let definition = match plugin.lang {
            discover::Lang::Rust => "Cargo.toml",
            discover::Lang::Python => "app.py",
            discover::Lang::JavaScript => "app.js",
        };
        println!(
            "cargo:rerun-if-changed={}",
            plugin.dir.join(definition).display()
        );
        let ident = plugin.name.replace('-', "_");
        writeln!(code, "/// The `{}` example plugin.", plugin.name).unwrap();
        writeln!(
            code,
            "pub const {}: &str = {:?};",
            ident.to_uppercase(),
            plugin.name
        )
        .unwrap();
        all.push(format!("{:?}", plugin.name));
        if plugin.hostile {
            hostile.push(format!("{:?}", plugin.name));
        }
        idents.push(ident);
    }
    writeln!(code, "/// Every example plugin.").unwrap();
    writeln!(code, "pub const ALL: &[&str] = &[{}];", all.join(", ")).unwrap();
    writeln!(code, "/// The plugins under `example-plugins/hostile/`.").unwrap();
    writeln!(
        code,
        "pub const HOSTILE: &[&str] = &[{}];",
        hostile.join(", ")
    )
    .unwrap();
    writeln!(
        code,
        "/// Invokes `$m!(plugin_ident)` once per example plugin."
    )
    .unwrap();
    writeln!(code, "#[macro_export]").unwrap();
    writeln!(code, "macro_rules! foreach_plugin {{").unwrap();
    writeln!(code, "    ($m:ident) => {{").unwrap();
    for ident in &idents {
        writeln!(code, "        $m!({ident});").unwrap();
    }
    writeln!(code, "    }};").unwrap();
    writeln!(code, "}}").unwrap();

    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("plugins.rs");
    std::fs::write(out, code).unwrap();
}
