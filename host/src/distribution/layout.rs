//! The CNCF Wasm OCI artifact layout, as Capsule writes and reads it: an OCI
//! image manifest, a `application/vnd.wasm.config.v0+json` config describing
//! the component's imports and exports, one `application/wasm` layer (the
//! signed component, byte for byte), and the plugin's metadata as
//! annotations so a registry listing shows it without pulling the component.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::DistributionError;
use super::store::sha256_digest;
use crate::artifact::inspect::ComponentSummary;
use crate::artifact::manifest::Manifest;

/// The OCI image manifest media type.
pub const IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The Wasm artifact's config media type.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The Wasm artifact's layer media type.
pub const WASM_LAYER: &str = "application/wasm";

/// Annotation keys beyond the `org.opencontainers.image.*` ones.
pub mod keys {
    /// Comma-separated tags.
    pub const TAGS: &str = "dev.capsule.tags";
    /// Comma-separated categories.
    pub const CATEGORIES: &str = "dev.capsule.categories";
    /// Comma-separated services the plugin needs granted.
    pub const GRANTS: &str = "dev.capsule.grants";
    /// The oldest contract version it runs against.
    pub const MIN_CONTRACT: &str = "dev.capsule.min-contract";
    /// The contract version it was built against.
    pub const CONTRACT: &str = "dev.capsule.contract";
    /// Comma-separated capabilities it provides.
    pub const CAPABILITIES: &str = "dev.capsule.capabilities";
    /// Comma-separated key ids of its signers.
    pub const SIGNERS: &str = "dev.capsule.signers";
}

/// One content descriptor of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the content is.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
}

/// An image manifest as the registry serves it (what Capsule reads of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`IMAGE_MANIFEST`] (optional in the spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers; a Wasm artifact has one.
    pub layers: Vec<Descriptor>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What to push for one signed component.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The config blob.
    pub config: Vec<u8>,
    /// The image manifest.
    pub manifest: Vec<u8>,
    /// The layer's descriptor (the component).
    pub component: Descriptor,
    /// The config's descriptor.
    pub config_descriptor: Descriptor,
}

impl Artifact {
    /// The artifact for `component` (signed by `signers`), with `summary`'s
    /// imports and exports in its config and `manifest`'s metadata in its
    /// annotations. `created` is an RFC 3339 time.
    pub fn build(
        component: &[u8],
        summary: &ComponentSummary,
        manifest: Option<&Manifest>,
        signers: &[String],
        created: &str,
    ) -> Artifact {
        let layer = Descriptor {
            media_type: WASM_LAYER.into(),
            digest: sha256_digest(component),
            size: component.len() as u64,
        };
        let names = |list: &[crate::artifact::Interface]| -> Vec<String> {
            list.iter().map(|i| i.name.clone()).collect()
        };
        let authors = manifest
            .and_then(|m| m.metadata.as_ref())
            .map(|m| m.authors.join(", "))
            .filter(|a| !a.is_empty());
        let mut config = json!({
            "created": created,
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer.digest],
            "component": {
                "exports": names(&summary.exports),
                "imports": names(&summary.imports),
                "target": summary.contract_version().map(|v| format!("capsule:plugin/plugin@{v}")),
            },
        });
        if let Some(authors) = &authors {
            config["author"] = authors.clone().into();
        }
        let config = serde_json::to_vec(&config).unwrap_or_default();
        let config_descriptor = Descriptor {
            media_type: WASM_CONFIG.into(),
            digest: sha256_digest(&config),
            size: config.len() as u64,
        };
        let image = ImageManifest {
            schema_version: 2,
            media_type: Some(IMAGE_MANIFEST.into()),
            config: config_descriptor.clone(),
            layers: vec![layer.clone()],
            annotations: annotations(summary, manifest, signers, created),
        };
        Artifact {
            config,
            manifest: serde_json::to_vec(&image).unwrap_or_default(),
            component: layer,
            config_descriptor,
        }
    }
}

/// The manifest annotations for a plugin: the standard
/// `org.opencontainers.image.*` keys where one fits, `dev.capsule.*` for
/// the rest.
fn annotations(
    summary: &ComponentSummary,
    manifest: Option<&Manifest>,
    signers: &[String],
    created: &str,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut put = |key: &str, value: String| {
        if !value.is_empty() {
            out.insert(key.to_owned(), value);
        }
    };
    put("org.opencontainers.image.created", created.to_owned());
    if let Some(version) = summary.contract_version() {
        put(keys::CONTRACT, version.to_owned());
    }
    put(keys::SIGNERS, signers.join(","));
    let Some(manifest) = manifest else {
        return out;
    };
    put("org.opencontainers.image.title", manifest.name.clone());
    put("org.opencontainers.image.version", manifest.version.clone());
    put(
        "org.opencontainers.image.description",
        manifest.description.clone(),
    );
    put(keys::CAPABILITIES, manifest.capabilities.join(","));
    let Some(metadata) = &manifest.metadata else {
        return out;
    };
    put(
        "org.opencontainers.image.authors",
        metadata.authors.join(", "),
    );
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    put("org.opencontainers.image.licenses", text(&metadata.license));
    put("org.opencontainers.image.url", text(&metadata.homepage));
    put(
        "org.opencontainers.image.source",
        text(&metadata.repository),
    );
    put(
        "org.opencontainers.image.documentation",
        text(&metadata.documentation),
    );
    put(keys::TAGS, metadata.tags.join(","));
    put(keys::CATEGORIES, metadata.categories.join(","));
    put(keys::GRANTS, metadata.grants.join(","));
    put(keys::MIN_CONTRACT, text(&metadata.min_contract));
    out
}

/// Reads a pulled image manifest and checks it is a Wasm component
/// artifact: a Wasm config, exactly one `application/wasm` layer of at most
/// `max_component` bytes.
pub fn parse_manifest(
    reference: &str,
    bytes: &[u8],
    max_component: u64,
) -> Result<ImageManifest, DistributionError> {
    let malformed = |cause: String| DistributionError::Malformed {
        reference: reference.to_owned(),
        what: "manifest",
        cause,
    };
    let manifest: ImageManifest = serde_json::from_slice(bytes)
        .map_err(|err| malformed(format!("not an OCI image manifest ({err})")))?;
    if manifest.schema_version != 2 {
        return Err(malformed(format!(
            "schemaVersion {} (expected 2)",
            manifest.schema_version
        )));
    }
    if let Some(media_type) = &manifest.media_type
        && media_type != IMAGE_MANIFEST
    {
        return Err(malformed(format!(
            "media type `{media_type}` is not an OCI image manifest (an index or a Docker image is not a plugin)"
        )));
    }
    if manifest.config.media_type != WASM_CONFIG {
        return Err(malformed(format!(
            "its config is `{}`, not `{WASM_CONFIG}`: it is not a Wasm artifact",
            manifest.config.media_type
        )));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(malformed(format!(
            "it has {} layers; a Wasm component artifact has exactly one",
            manifest.layers.len()
        )));
    };
    if layer.media_type != WASM_LAYER {
        return Err(malformed(format!(
            "its layer is `{}`, not `{WASM_LAYER}`",
            layer.media_type
        )));
    }
    if !is_sha256_digest(&layer.digest) {
        return Err(malformed(format!(
            "the layer digest `{}` is not `sha256:<64 hex>`",
            layer.digest.escape_debug()
        )));
    }
    if layer.size > max_component {
        return Err(DistributionError::TooLarge {
            reference: reference.to_owned(),
            what: "component",
            limit: max_component,
        });
    }
    Ok(manifest)
}

/// Whether `digest` is `sha256:` and 64 lowercase hex digits.
pub fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> ComponentSummary {
        ComponentSummary {
            imports: vec![crate::artifact::Interface::parse(
                "capsule:plugin/log@0.2.0",
            )],
            exports: vec![crate::artifact::Interface::parse(
                "capsule:plugin/handler@0.2.0",
            )],
            custom_sections: Vec::new(),
            initial_memory_bytes: 0,
        }
    }

    #[test]
    fn a_built_artifact_reads_back_with_its_metadata() {
        let doc = serde_json::json!({
            "format": 1, "name": "hello", "version": "0.1.0", "description": "greets",
            "metadata": {"license": "MIT", "tags": ["greeting"], "grants": ["kv"]},
        });
        let manifest = Manifest::parse(doc.to_string().as_bytes()).unwrap();
        let artifact = Artifact::build(
            b"\0asm",
            &summary(),
            Some(&manifest),
            &["ab12".into()],
            "2026-12-05T00:00:00Z",
        );
        let read = parse_manifest("r", &artifact.manifest, 1024).unwrap();
        assert_eq!(read.layers[0], artifact.component);
        assert_eq!(read.config, artifact.config_descriptor);
        let a = &read.annotations;
        assert_eq!(a["org.opencontainers.image.title"], "hello");
        assert_eq!(a["org.opencontainers.image.licenses"], "MIT");
        assert_eq!(a[keys::TAGS], "greeting");
        assert_eq!(a[keys::GRANTS], "kv");
        assert_eq!(a[keys::CONTRACT], "0.2.0");
        assert_eq!(a[keys::SIGNERS], "ab12");
        let config: serde_json::Value = serde_json::from_slice(&artifact.config).unwrap();
        assert_eq!(config["component"]["target"], "capsule:plugin/plugin@0.2.0");
        assert_eq!(config["layerDigests"][0], artifact.component.digest);
        // The component must fit the bound the caller gives.
        let err = parse_manifest("r", &artifact.manifest, 3).unwrap_err();
        assert_eq!(err.kind(), "too_large");
    }

    #[test]
    fn manifests_that_are_not_wasm_component_artifacts_are_refused() {
        let digest = format!("sha256:{}", "0".repeat(64));
        let base = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": IMAGE_MANIFEST,
            "config": {"mediaType": WASM_CONFIG, "digest": digest, "size": 2},
            "layers": [{"mediaType": WASM_LAYER, "digest": digest, "size": 10}],
        });
        assert!(parse_manifest("r", base.to_string().as_bytes(), 100).is_ok());
        type Change = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|m| m["schemaVersion"] = 1.into()), "schemaVersion"),
            (
                Box::new(|m| m["mediaType"] = "application/vnd.oci.image.index.v1+json".into()),
                "not an OCI image manifest",
            ),
            (
                Box::new(|m| {
                    m["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json".into()
                }),
                "not a Wasm artifact",
            ),
            (
                Box::new(|m| m["layers"] = serde_json::json!([])),
                "exactly one",
            ),
            (
                Box::new(|m| {
                    m["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into()
                }),
                "its layer is",
            ),
            (
                Box::new(|m| m["layers"][0]["digest"] = "md5:00".into()),
                "not `sha256",
            ),
        ];
        for (change, expected) in cases {
            let mut bad = base.clone();
            change(&mut bad);
            let err = parse_manifest("r", bad.to_string().as_bytes(), 100)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
        let err = parse_manifest("r", b"{not json", 100).unwrap_err();
        assert_eq!(err.kind(), "malformed_artifact");
    }
}
