//! The static manifest: what the host must know about a plugin before running
//! any of its code — the operations it offers (with JSON Schemas of their
//! input and output) and the plugins or capabilities it requires (with semver
//! ranges) — in one top-level custom section, `capsule-manifest`, that the
//! signature covers.
//!
//! The SDK builds the document (from `describe`, the typed handlers and
//! `Plugin::requires`); `capsule sign` asks the plugin for it in a throwaway
//! sandbox and embeds it before signing, so `capsule check`, load order and
//! input validation read it without compiling anything. `describe` mirrors
//! it: at load the two must agree on name, version and capabilities.
//!
//! The format is JSON, versioned by `format`, and open for later fields (the
//! config schema, distribution metadata, operation flags): unknown fields are
//! ignored by this host, so a newer SDK's manifest still loads.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::artifact::declared_metrics::{self, MetricDeclaration};
use crate::artifact::metadata::Metadata;
use crate::artifact::sections;

/// The name of the custom section that holds the manifest.
pub const MANIFEST_SECTION: &str = "capsule-manifest";
/// The manifest format this host writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
/// The largest manifest a plugin may carry (schemas included): it is read at
/// every load, and kept in memory for the plugin's life.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;
/// The most operations one plugin may declare.
pub const MAX_OPERATIONS: usize = 256;
/// The most requirements one plugin may declare.
pub const MAX_REQUIREMENTS: usize = 64;
/// The longest operation, plugin or capability name in a manifest.
pub const MAX_NAME_BYTES: usize = 128;
/// The longest description (of the plugin or of one operation).
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// The most JSON values one declared schema may expand to with every `$ref`
/// followed: validating a request visits at most this many schema nodes per
/// value of the request, so `$ref` graphs cannot make validation
/// exponential.
pub const MAX_SCHEMA_NODES: usize = 10_000;
/// The longest chain of `$ref`s in one schema.
pub const MAX_REF_DEPTH: usize = 16;
/// The most `pattern`s, `patternProperties` and `propertyNames` keywords in
/// one manifest's schemas: each compiles to a regular expression the host
/// keeps.
pub const MAX_PATTERNS: usize = 64;
/// The compiled size of one pattern (and of its lazy-DFA cache).
pub const MAX_PATTERN_BYTES: usize = 256 * 1024;

/// A plugin's static manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format ([`MANIFEST_FORMAT`]).
    pub format: u32,
    /// The plugin's own name (its crate name; the policy may load it under
    /// another).
    pub name: String,
    /// The plugin's version (semver).
    pub version: String,
    /// What the plugin does.
    #[serde(default)]
    pub description: String,
    /// Capabilities the plugin provides.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The operations the plugin offers; `None` when it does not say (its
    /// `handle` does not route through the SDK's `Dispatch`), which is not
    /// the same as offering none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operations: Option<Vec<Operation>>,
    /// What must be loaded beside this plugin for it to work.
    #[serde(default)]
    pub requires: Vec<Requirement>,
    /// The JSON Schema of the plugin's configuration (one object, keys as
    /// the operator writes them): values are coerced by it, its defaults
    /// fill unset keys, and values that do not match refuse the load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// The metrics the plugin updates through the `metrics` service, each
    /// declared with its kind and labels (see [`declared_metrics`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricDeclaration>,
    /// Distribution metadata (authors, license, links, tags, the grants it
    /// needs), for registries and marketplaces; see [`Metadata`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// One operation a plugin offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// The operation name a request carries.
    pub name: String,
    /// What the operation does.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The JSON Schema of the request payload, when the payload is JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// The JSON Schema of the response payload, when it is JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Whether the answer depends on the operation and payload alone (and
    /// the plugin's version and configuration): the host may answer a
    /// repeated request from its response cache, and runs the operation
    /// with key-value writes and publishing denied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pure: bool,
}

/// Something a plugin needs loaded beside it: a plugin (by the name the
/// policy loads it under) or any provider of a capability, whose version
/// must match `version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Requirement {
    /// A plugin name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// A capability name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// The versions that satisfy it, as a Cargo-style semver range
    /// (`^0.1`, `>=1.2, <2`, `*`).
    #[serde(default = "any_version")]
    pub version: String,
}

fn any_version() -> String {
    "*".into()
}

/// What a [`Requirement`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs<'a> {
    /// A plugin by the name the policy loads it under.
    Plugin(&'a str),
    /// Any plugin that provides a capability.
    Capability(&'a str),
}

impl Requirement {
    /// What this requirement names.
    pub fn needs(&self) -> Needs<'_> {
        match (&self.plugin, &self.capability) {
            (Some(plugin), _) => Needs::Plugin(plugin),
            (None, Some(capability)) => Needs::Capability(capability),
            // `parse` refuses a requirement that names neither.
            (None, None) => Needs::Plugin(""),
        }
    }

    /// The version range (validated by [`Manifest::parse`]).
    pub fn range(&self) -> semver::VersionReq {
        semver::VersionReq::parse(&self.version).unwrap_or(semver::VersionReq::STAR)
    }

    /// Whether a plugin at `version` satisfies this requirement's range. A
    /// version that is not semver, or a pre-release (which Cargo ranges
    /// only match when they name one), satisfies `*`.
    pub fn accepts(&self, version: &str) -> bool {
        let range = self.range();
        if range == semver::VersionReq::STAR {
            return true;
        }
        match semver::Version::parse(version) {
            Ok(version) => range.matches(&version),
            Err(_) => range == semver::VersionReq::STAR,
        }
    }
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.needs() {
            Needs::Plugin(name) => write!(f, "plugin `{name}` {}", self.version),
            Needs::Capability(name) => write!(f, "capability `{name}` {}", self.version),
        }
    }
}

impl Manifest {
    /// Parses and checks a manifest document: bounded size and counts, a
    /// semver version, valid ranges, unique operation names, schemas that
    /// are JSON Schema documents (objects or booleans).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(format!(
                "the manifest is {} bytes; at most {MAX_MANIFEST_BYTES} are allowed",
                bytes.len()
            ));
        }
        // serde_json refuses nesting deeper than 128 levels, so a hostile
        // schema cannot exhaust the host's stack.
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|err| format!("not a valid manifest: {err}"))?;
        manifest.check()?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!(
                "manifest format {} is not one this host reads (it reads {MANIFEST_FORMAT})",
                self.format
            ));
        }
        name("plugin name", &self.name)?;
        semver::Version::parse(&self.version)
            .map_err(|err| format!("version `{}` is not semver: {err}", self.version))?;
        description(&self.description)?;
        for capability in &self.capabilities {
            name("capability", capability)?;
        }
        let operations = self.operations.as_deref().unwrap_or_default();
        if operations.len() > MAX_OPERATIONS {
            return Err(format!(
                "{} operations declared; at most {MAX_OPERATIONS} are allowed",
                operations.len()
            ));
        }
        let mut seen = BTreeSet::new();
        let mut patterns = 0;
        for operation in operations {
            name("operation", &operation.name)?;
            if !seen.insert(operation.name.as_str()) {
                return Err(format!("operation `{}` is declared twice", operation.name));
            }
            description(&operation.description)?;
            for (which, schema) in [("input", &operation.input), ("output", &operation.output)] {
                let Some(schema) = schema else { continue };
                if !(schema.is_object() || schema.is_boolean()) {
                    return Err(format!(
                        "the {which} schema of operation `{}` is not a JSON Schema (an object or a boolean)",
                        operation.name
                    ));
                }
                let shape = SchemaShape::measure(schema).map_err(|err| {
                    format!("the {which} schema of operation `{}` {err}", operation.name)
                })?;
                patterns += shape.patterns;
                if patterns > MAX_PATTERNS {
                    return Err(format!(
                        "the schemas hold more than {MAX_PATTERNS} patterns (`pattern`, \
                         `patternProperties`, `propertyNames`)"
                    ));
                }
            }
        }
        if let Some(schema) = &self.config {
            if !(schema.is_object() || schema.is_boolean()) {
                return Err(
                    "the config schema is not a JSON Schema (an object or a boolean)".into(),
                );
            }
            let shape =
                SchemaShape::measure(schema).map_err(|err| format!("the config schema {err}"))?;
            patterns += shape.patterns;
            if patterns > MAX_PATTERNS {
                return Err(format!(
                    "the schemas hold more than {MAX_PATTERNS} patterns (`pattern`, \
                     `patternProperties`, `propertyNames`)"
                ));
            }
        }
        declared_metrics::check(&self.metrics)?;
        if let Some(metadata) = &self.metadata {
            metadata.check()?;
        }
        if self.requires.len() > MAX_REQUIREMENTS {
            return Err(format!(
                "{} requirements declared; at most {MAX_REQUIREMENTS} are allowed",
                self.requires.len()
            ));
        }
        for requirement in &self.requires {
            match (&requirement.plugin, &requirement.capability) {
                (Some(plugin), None) => name("required plugin", plugin)?,
                (None, Some(capability)) => name("required capability", capability)?,
                _ => {
                    return Err(
                        "a requirement names exactly one of `plugin` or `capability`".into(),
                    );
                }
            }
            semver::VersionReq::parse(&requirement.version).map_err(|err| {
                format!(
                    "the version range `{}` of {requirement} is not valid: {err}",
                    requirement.version
                )
            })?;
        }
        Ok(())
    }

    /// Compiles the schemas a load compiles (input schemas with
    /// `validate_input`, the config schema always; output schemas only
    /// document): a schema that [`Manifest::parse`] accepts can still name
    /// a type that does not exist or a pattern the regex engine refuses.
    /// Signing calls this, so no plugin is signed with a manifest its loads
    /// would refuse.
    pub fn compile_schemas(&self) -> Result<(), String> {
        for operation in self.operations.iter().flatten() {
            if let Some(schema) = &operation.input {
                compile_schema(schema).map_err(|err| {
                    format!(
                        "the input schema of operation `{}` does not compile: {err}",
                        operation.name
                    )
                })?;
            }
        }
        if let Some(schema) = &self.config {
            compile_schema(schema)
                .map_err(|err| format!("the config schema does not compile: {err}"))?;
        }
        Ok(())
    }

    /// The declared operation named `name`.
    pub fn operation(&self, name: &str) -> Option<&Operation> {
        self.operations.iter().flatten().find(|op| op.name == name)
    }

    /// The manifest as the bytes of its section's payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What bounds the cost of a declared schema: its size with every `$ref`
/// expanded, and how many regular expressions it compiles to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaShape {
    /// JSON values in the schema with every `$ref` followed (each target
    /// counted every time it is referred to).
    pub nodes: usize,
    /// `pattern`, `patternProperties` entries and `propertyNames`.
    pub patterns: usize,
}

/// Keywords that re-scope or re-enter a schema in ways the measure below
/// cannot follow statically; declared schemas may not use them.
const UNSUPPORTED_KEYWORDS: [&str; 6] = [
    "$id",
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
    "$recursiveRef",
    "$recursiveAnchor",
];

impl SchemaShape {
    /// Measures `schema`, refusing what could make validating a request
    /// cost more than [`MAX_SCHEMA_NODES`] visits per request value: a
    /// larger expansion, a `$ref` chain deeper than [`MAX_REF_DEPTH`], a
    /// recursive `$ref`, a reference outside the schema, or a keyword that
    /// re-scopes references.
    pub fn measure(schema: &Value) -> Result<SchemaShape, String> {
        let mut measure = Measure {
            root: schema,
            sizes: HashMap::new(),
            following: Vec::new(),
            patterns: 0,
        };
        let nodes = measure.size(schema)?;
        Ok(SchemaShape {
            nodes,
            patterns: measure.patterns,
        })
    }
}

struct Measure<'a> {
    root: &'a Value,
    /// Expanded sizes of `$ref` targets already measured.
    sizes: HashMap<&'a str, usize>,
    /// The `$ref`s being followed, outermost first.
    following: Vec<&'a str>,
    patterns: usize,
}

impl<'a> Measure<'a> {
    fn size(&mut self, node: &'a Value) -> Result<usize, String> {
        let children: Vec<(Option<&'a str>, &'a Value)> = match node {
            Value::Object(map) => map.iter().map(|(k, v)| (Some(k.as_str()), v)).collect(),
            Value::Array(items) => items.iter().map(|v| (None, v)).collect(),
            _ => return Ok(1),
        };
        let mut total: usize = 1;
        for (key, value) in children {
            let size = match (key, value) {
                (Some(keyword), _) if UNSUPPORTED_KEYWORDS.contains(&keyword) => {
                    return Err(format!(
                        "uses `{keyword}`, which declared schemas may not use"
                    ));
                }
                (Some("$ref"), Value::String(reference)) => self.reference(reference)?,
                (Some("pattern" | "propertyNames"), _) => {
                    self.patterns += 1;
                    self.size(value)?
                }
                (Some("patternProperties"), Value::Object(entries)) => {
                    self.patterns += entries.len();
                    self.size(value)?
                }
                _ => self.size(value)?,
            };
            total = total.saturating_add(size);
            if total > MAX_SCHEMA_NODES {
                return Err(format!(
                    "expands to more than {MAX_SCHEMA_NODES} nodes with its `$ref`s followed"
                ));
            }
        }
        Ok(total)
    }

    fn reference(&mut self, reference: &'a str) -> Result<usize, String> {
        if let Some(size) = self.sizes.get(reference) {
            return Ok(*size);
        }
        let Some(pointer) = reference.strip_prefix('#') else {
            return Err(format!(
                "refers to `{reference}`; only references within the schema (`#/…`) are allowed"
            ));
        };
        if self.following.contains(&reference) {
            return Err(format!(
                "is recursive (`{reference}` refers back to itself), which declared schemas may not be"
            ));
        }
        if self.following.len() >= MAX_REF_DEPTH {
            return Err(format!("chains more than {MAX_REF_DEPTH} `$ref`s"));
        }
        let target = self
            .root
            .pointer(pointer)
            .ok_or_else(|| format!("refers to `{reference}`, which it does not define"))?;
        self.following.push(reference);
        let size = self.size(target);
        self.following.pop();
        let size = size?;
        self.sizes.insert(reference, size);
        Ok(size)
    }
}

fn name(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_NAME_BYTES || value.chars().any(char::is_control) {
        return Err(format!(
            "{what} `{}` must be 1 to {MAX_NAME_BYTES} bytes without control characters",
            value.escape_debug()
        ));
    }
    Ok(())
}

fn description(value: &str) -> Result<(), String> {
    if value.len() > MAX_DESCRIPTION_BYTES {
        return Err(format!(
            "a description of {} bytes is longer than the {MAX_DESCRIPTION_BYTES} allowed",
            value.len()
        ));
    }
    Ok(())
}

/// The manifest a component carries, if any: `Ok(None)` when it has no
/// `capsule-manifest` section, an error when the section is malformed or
/// appears twice. Reads only the outer framing: nothing is compiled.
pub fn read(bytes: &[u8]) -> Result<Option<Manifest>, String> {
    let mut found = None;
    for section in sections::split(bytes)? {
        if let Some((MANIFEST_SECTION, data)) = section.custom() {
            if found.is_some() {
                return Err(format!("more than one `{MANIFEST_SECTION}` section"));
            }
            found = Some(Manifest::parse(data)?);
        }
    }
    Ok(found)
}

/// `bytes` (an unsigned component without a manifest) with `document`
/// appended as its `capsule-manifest` section, ready to be signed. The
/// document is checked first — every schema it declares must compile, as
/// a load would compile it — and embedded exactly as written: fields this
/// host does not know (from a newer SDK) are kept.
pub fn embed(bytes: &[u8], document: &[u8]) -> Result<Vec<u8>, String> {
    Manifest::parse(document)?.compile_schemas()?;
    if read(bytes)?.is_some() {
        return Err(format!(
            "the component already has a `{MANIFEST_SECTION}` section"
        ));
    }
    let mut out = bytes.to_vec();
    out.extend_from_slice(&sections::encode_custom(MANIFEST_SECTION, document));
    Ok(out)
}

/// Compiles an operation's input schema for validating requests. Schemas
/// come from untrusted plugins: [`Manifest::parse`] already bounded their
/// expanded size and pattern count; here references to anything outside the
/// schema are refused (no network, no files) and `pattern`s run on the
/// linear-time `regex` engine within [`MAX_PATTERN_BYTES`].
pub fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .offline()
        .with_pattern_options(
            jsonschema::PatternOptions::regex()
                .size_limit(MAX_PATTERN_BYTES)
                .dfa_size_limit(MAX_PATTERN_BYTES),
        )
        .build(schema)
        .map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            name: "images".into(),
            version: "0.2.1".into(),
            description: "resizes images".into(),
            capabilities: vec!["thumbnail".into()],
            operations: Some(vec![Operation {
                name: "resize".into(),
                description: "makes it smaller".into(),
                input: Some(serde_json::json!({
                    "type": "object",
                    "properties": {"width": {"type": "integer", "minimum": 1}},
                    "required": ["width"]
                })),
                output: None,
                pure: false,
            }]),
            requires: vec![Requirement {
                plugin: None,
                capability: Some("storage".into()),
                version: "^1.2".into(),
            }],
            config: None,
            metrics: Vec::new(),
            metadata: Some(Metadata {
                license: Some("MIT".into()),
                tags: vec!["images".into()],
                ..Metadata::default()
            }),
        }
    }

    const EMPTY_COMPONENT: &[u8] = &[0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    #[test]
    fn a_manifest_round_trips_through_its_section() {
        let embedded = embed(EMPTY_COMPONENT, &manifest().to_bytes()).unwrap();
        assert_eq!(read(&embedded).unwrap(), Some(manifest()));
        assert_eq!(read(EMPTY_COMPONENT).unwrap(), None);
        let twice = embed(&embedded, &manifest().to_bytes()).unwrap_err();
        assert!(twice.contains("already has"), "{twice}");
        // A newer SDK's fields survive embedding as they were written.
        let newer = br#"{"format":1,"name":"x","version":"1.0.0","config_schema":{}}"#;
        let embedded = embed(EMPTY_COMPONENT, newer).unwrap();
        assert!(embedded.ends_with(newer));
    }

    /// Found by the `manifest` fuzz target: a schema naming a type that
    /// does not exist passed `parse`, so a plugin could be signed with a
    /// manifest every `validate_input` load refuses.
    #[test]
    fn signing_refuses_schemas_a_load_cannot_compile() {
        let mut bad = manifest();
        bad.operations.as_mut().unwrap()[0].input = Some(serde_json::json!({"type": "integep"}));
        Manifest::parse(&bad.to_bytes()).unwrap();
        let err = embed(EMPTY_COMPONENT, &bad.to_bytes()).unwrap_err();
        assert!(
            err.contains("input schema of operation `resize` does not compile"),
            "{err}"
        );

        let mut config = manifest();
        config.config = Some(serde_json::json!({"properties": {"x": {"pattern": "(?<=a)b"}}}));
        let err = embed(EMPTY_COMPONENT, &config.to_bytes()).unwrap_err();
        assert!(err.contains("config schema does not compile"), "{err}");
    }

    #[test]
    fn unknown_fields_from_a_newer_sdk_are_ignored() {
        let mut doc = serde_json::to_value(manifest()).unwrap();
        doc["config_schema"] = serde_json::json!({"type": "object"});
        let parsed = Manifest::parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!(parsed, manifest());
    }

    #[test]
    fn malformed_manifests_are_refused_with_the_reason() {
        type Change = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|m| m.format = 9), "format 9"),
            (Box::new(|m| m.version = "one".into()), "not semver"),
            (
                Box::new(|m| m.requires[0].version = "^^1".into()),
                "not valid",
            ),
            (
                Box::new(|m| m.requires[0].plugin = Some("x".into())),
                "exactly one",
            ),
            (
                Box::new(|m| {
                    let ops = m.operations.as_mut().unwrap();
                    ops.push(ops[0].clone());
                }),
                "declared twice",
            ),
            (
                Box::new(|m| m.operations.as_mut().unwrap()[0].input = Some(Value::from(3))),
                "not a JSON Schema",
            ),
            (
                Box::new(|m| m.operations.as_mut().unwrap()[0].name = String::new()),
                "1 to 128",
            ),
            (
                Box::new(|m| m.description = "x".repeat(MAX_DESCRIPTION_BYTES + 1)),
                "longer than",
            ),
            (
                Box::new(|m| m.metadata.as_mut().unwrap().tags[0] = "Big Images".into()),
                "metadata.tags",
            ),
        ];
        for (change, expected) in cases {
            let mut bad = manifest();
            change(&mut bad);
            let err = Manifest::parse(&bad.to_bytes()).unwrap_err();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
        let err = Manifest::parse(&vec![b' '; MAX_MANIFEST_BYTES + 1]).unwrap_err();
        assert!(err.contains("at most"), "{err}");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(Manifest::parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn requirements_match_semver_ranges() {
        let requirement = &manifest().requires[0];
        assert!(requirement.accepts("1.2.0"));
        assert!(requirement.accepts("1.9.3"));
        assert!(!requirement.accepts("2.0.0"));
        assert!(!requirement.accepts("1.1.9"));
        assert!(!requirement.accepts("not-semver"));
        let any = Requirement {
            version: "*".into(),
            ..requirement.clone()
        };
        assert!(any.accepts("2.0.0-beta.1") && any.accepts("not-semver"));
        assert_eq!(requirement.to_string(), "capability `storage` ^1.2");
    }

    #[test]
    fn schemas_compile_offline_with_linear_time_patterns() {
        let validator = compile_schema(
            manifest()
                .operation("resize")
                .unwrap()
                .input
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        assert!(validator.is_valid(&serde_json::json!({"width": 3})));
        assert!(!validator.is_valid(&serde_json::json!({"width": 0})));
        // A remote reference is never fetched.
        let remote = serde_json::json!({"$ref": "https://example.com/schema.json"});
        assert!(compile_schema(&remote).is_err());
        // Backreferences need a backtracking engine: refused, not run.
        let backtracking = serde_json::json!({"type": "string", "pattern": "(a+)\\1"});
        assert!(compile_schema(&backtracking).is_err());
        // The classic catastrophic pattern runs in linear time here.
        let evil =
            compile_schema(&serde_json::json!({"type": "string", "pattern": "^(a+)+$"})).unwrap();
        let input = Value::from(format!("{}!", "a".repeat(100_000)));
        assert!(!evil.is_valid(&input));
    }
}

#[cfg(test)]
mod schema_shape_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_ref_dag_that_would_expand_exponentially_is_refused() {
        // a0 → a1 twice → a2 twice …: a few KiB, 2^15 nodes expanded.
        let mut defs = serde_json::Map::new();
        for i in 0..15 {
            let next = format!("#/$defs/a{}", i + 1);
            defs.insert(
                format!("a{i}"),
                json!({"anyOf": [{"$ref": next}, {"$ref": next}]}),
            );
        }
        defs.insert("a15".into(), json!({"type": "string"}));
        let schema = json!({"$ref": "#/$defs/a0", "$defs": defs});
        let err = SchemaShape::measure(&schema).unwrap_err();
        assert!(err.contains("more than 10000 nodes"), "{err}");
    }

    #[test]
    fn recursion_long_chains_and_rescoping_are_refused() {
        let recursive = json!({
            "$defs": {"t": {"properties": {"kids": {"items": {"$ref": "#/$defs/t"}}}}},
            "$ref": "#/$defs/t"
        });
        let err = SchemaShape::measure(&recursive).unwrap_err();
        assert!(err.contains("recursive"), "{err}");
        let mut defs = serde_json::Map::new();
        for i in 0..40 {
            defs.insert(
                format!("c{i}"),
                json!({"$ref": format!("#/$defs/c{}", i + 1)}),
            );
        }
        defs.insert("c40".into(), json!(true));
        let chain = json!({"$ref": "#/$defs/c0", "$defs": defs});
        let err = SchemaShape::measure(&chain).unwrap_err();
        assert!(err.contains("more than 16"), "{err}");
        let remote = json!({"$ref": "https://example.com/s.json"});
        let err = SchemaShape::measure(&remote).unwrap_err();
        assert!(err.contains("only references within"), "{err}");
        let rescoped = json!({"properties": {"a": {"$id": "other", "type": "string"}}});
        let err = SchemaShape::measure(&rescoped).unwrap_err();
        assert!(err.contains("`$id`"), "{err}");
        let dangling = json!({"$ref": "#/$defs/none"});
        let err = SchemaShape::measure(&dangling).unwrap_err();
        assert!(err.contains("does not define"), "{err}");
    }

    #[test]
    fn shared_definitions_count_each_time_they_are_used() {
        let pt = json!({"type": "integer"});
        let once = json!({"properties": {"x": pt}});
        let twice = json!({
            "$defs": {"pt": pt},
            "properties": {"x": {"$ref": "#/$defs/pt"}, "y": {"$ref": "#/$defs/pt"}, "s": {"pattern": "^a"}}
        });
        let shape = SchemaShape::measure(&twice).unwrap();
        assert_eq!(shape.patterns, 1);
        assert!(
            shape.nodes > 2 * SchemaShape::measure(&once).unwrap().nodes,
            "{shape:?}"
        );
    }

    #[test]
    fn a_manifest_with_too_many_patterns_is_refused() {
        let props: serde_json::Map<String, Value> = (0..65)
            .map(|i| (format!("p{i}"), json!({"type": "string", "pattern": "^x"})))
            .collect();
        let doc = json!({
            "format": 1, "name": "p", "version": "1.0.0",
            "operations": [{"name": "op", "input": {"properties": props}}]
        });
        let err = Manifest::parse(&serde_json::to_vec(&doc).unwrap()).unwrap_err();
        assert!(err.contains("more than 64 patterns"), "{err}");
    }
}
