//! Reads a component's top-level imports and exports, and the contract version
//! it targets, by parsing (never compiling) its bytes.

use serde::Serialize;
use wasmparser::{Parser, Payload};

use crate::contract::{CONTRACT_PACKAGE, CONTRACT_VERSIONS};

/// One imported or exported item, split into package, item and version where
/// the name has that shape (`wasi:cli/stdout@0.2.6`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    /// The full name as written in the component.
    pub name: String,
    /// `namespace:package`, e.g. `wasi:cli`; empty for plain names.
    pub package: String,
    /// The interface or item name, e.g. `stdout`.
    pub item: String,
    /// The semver version, if the name carries one.
    pub version: Option<String>,
}

impl Interface {
    /// Parses a component import/export name.
    pub fn parse(name: &str) -> Interface {
        let (path, version) = match name.split_once('@') {
            Some((path, version)) => (path, Some(version.to_owned())),
            None => (name, None),
        };
        let (package, item) = match path.split_once('/') {
            Some((package, item)) => (package.to_owned(), item.to_owned()),
            None => (String::new(), path.to_owned()),
        };
        Interface {
            name: name.to_owned(),
            package,
            item,
            version,
        }
    }

    /// Whether this is one of Capsule's own contract interfaces.
    pub fn is_contract(&self) -> bool {
        self.package == CONTRACT_PACKAGE
    }
}

/// What a component declares at its top level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentSummary {
    /// Top-level imports, in declaration order.
    pub imports: Vec<Interface>,
    /// Top-level exports, in declaration order.
    pub exports: Vec<Interface>,
    /// Names of top-level custom sections, in order.
    pub custom_sections: Vec<String>,
    /// Bytes of linear memory its core modules define at their initial
    /// size: the least memory limit under which the component can start.
    pub initial_memory_bytes: u64,
}

impl ComponentSummary {
    /// The `capsule:plugin` version the component was built against, read
    /// from its `handler` export (or, failing that, any contract import).
    pub fn contract_version(&self) -> Option<&str> {
        self.exports
            .iter()
            .chain(&self.imports)
            .find(|i| i.is_contract())
            .and_then(|i| i.version.as_deref())
    }

    /// Whether the component's contract version is on one of this host's
    /// compatibility tracks: the same major version, or for 0.x the same
    /// minor version. Whether every function it uses exists is then up to
    /// linking.
    pub fn contract_compatible(&self) -> bool {
        self.contract_version().is_some_and(version_compatible)
    }
}

/// Whether a plugin built against contract `version` runs on this host: it
/// is on the track of one of [`CONTRACT_VERSIONS`].
pub fn version_compatible(version: &str) -> bool {
    served_version(version).is_some()
}

/// The version this host serves on `version`'s track, if any.
pub fn served_version(version: &str) -> Option<&'static str> {
    let plugin = semver_parts(version)?;
    CONTRACT_VERSIONS.iter().copied().find(|served| {
        semver_parts(served).is_some_and(|host| {
            if host.0 == 0 {
                plugin.0 == 0 && plugin.1 == host.1
            } else {
                plugin.0 == host.0
            }
        })
    })
}

fn semver_parts(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Why some bytes are not a component this host will consider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotAComponent(pub String);

/// Parses `bytes` as a component and summarises its top level. Fails for
/// anything that is not a well-formed component binary: empty or truncated
/// files, core modules, precompiled artifacts, other file types.
pub fn inspect(bytes: &[u8]) -> Result<ComponentSummary, NotAComponent> {
    check_header(bytes)?;
    let mut summary = ComponentSummary {
        imports: Vec::new(),
        exports: Vec::new(),
        custom_sections: Vec::new(),
        initial_memory_bytes: 0,
    };
    // Nested modules and components have their own imports and exports; only
    // the outermost level is the plugin's face.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|err| NotAComponent(format!("invalid component: {err}")))?;
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(|err| NotAComponent(err.to_string()))?;
                    summary.imports.push(Interface::parse(import.name.name));
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export.map_err(|err| NotAComponent(err.to_string()))?;
                    summary.exports.push(Interface::parse(export.name.name));
                }
            }
            Payload::CustomSection(reader) if depth == 0 => {
                summary.custom_sections.push(reader.name().to_owned());
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory.map_err(|err| NotAComponent(err.to_string()))?;
                    let page = 1u64 << memory.page_size_log2.unwrap_or(16);
                    summary.initial_memory_bytes = summary
                        .initial_memory_bytes
                        .saturating_add(memory.initial.saturating_mul(page));
                }
            }
            _ => {}
        }
    }
    Ok(summary)
}

/// Recognises what kind of file `bytes` is from its first eight bytes, and
/// refuses anything but a component.
pub fn check_header(bytes: &[u8]) -> Result<(), NotAComponent> {
    if bytes.is_empty() {
        return Err(NotAComponent("the file is empty".into()));
    }
    if wasmtime::Engine::detect_precompiled(bytes).is_some() {
        return Err(NotAComponent(
            "this is a precompiled wasmtime artifact; only WebAssembly components are accepted"
                .into(),
        ));
    }
    if !bytes.starts_with(b"\0asm") {
        return Err(NotAComponent(
            "not a WebAssembly binary (the `\\0asm` magic number is missing)".into(),
        ));
    }
    if bytes.len() < 8 {
        return Err(NotAComponent(
            "truncated WebAssembly header (fewer than 8 bytes)".into(),
        ));
    }
    if Parser::is_core_wasm(bytes) {
        return Err(NotAComponent(
            "this is a core WebAssembly module, not a component; build the plugin with \
             `cargo build --target wasm32-wasip2` or `cargo component build`"
                .into(),
        ));
    }
    if !Parser::is_component(bytes) {
        return Err(NotAComponent(
            "unsupported WebAssembly version or layer in the header".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_interface_names() {
        let i = Interface::parse("wasi:cli/stdout@0.2.6");
        assert_eq!(
            (i.package.as_str(), i.item.as_str(), i.version.as_deref()),
            ("wasi:cli", "stdout", Some("0.2.6"))
        );
        let plain = Interface::parse("run");
        assert_eq!((plain.package.as_str(), plain.item.as_str()), ("", "run"));
    }

    #[test]
    fn contract_versions_follow_semver_for_zero_major() {
        assert!(version_compatible("0.1.0"));
        assert!(version_compatible("0.2.0"));
        assert_eq!(served_version("0.1.7"), Some("0.1.0"));
        assert_eq!(served_version("0.2.3"), Some("0.2.0"));
        assert!(!version_compatible("0.3.0"));
        assert!(!version_compatible("1.0.0"));
        assert!(version_compatible("0.1.99"));
        assert!(!version_compatible("banana"));
    }

    #[test]
    fn refuses_non_components_with_reasons() {
        assert!(inspect(b"").unwrap_err().0.contains("empty"));
        assert!(inspect(b"\x7fELF....").unwrap_err().0.contains("magic"));
        assert!(inspect(b"\0asm").unwrap_err().0.contains("truncated"));
        let core_module = b"\0asm\x01\0\0\0";
        assert!(
            inspect(core_module)
                .unwrap_err()
                .0
                .contains("core WebAssembly module")
        );
    }
}
