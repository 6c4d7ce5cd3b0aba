//! `oci`: what an OCI registry or a policy hands the host about a plugin —
//! references (`registry/repo:tag@sha256:…`, from policies and the command
//! line) and image manifests (from registries, which may be hostile).

use capsule_host::distribution::OciReference;
use capsule_host::distribution::layout::{
    self, ImageManifest, WASM_CONFIG, WASM_LAYER, is_sha256_digest,
};

use crate::Target;

/// The component bound the manifest checks are run with.
const MAX_COMPONENT: u64 = 1 << 20;

/// The target.
pub const TARGET: Target = Target {
    name: "oci",
    about: "the first byte chooses: parse the rest as an OCI reference (an accepted one \
            prints as text that parses back to it, with a sha256 digest if any and a \
            non-empty registry, repository and tag or digest), or as a registry's image \
            manifest (an accepted one is a Wasm artifact: a Wasm config, exactly one \
            `application/wasm` layer within the bound with a sha256 digest, and it \
            re-encodes to a manifest accepted alike)",
    check,
    seeds: || {
        let digest = format!("sha256:{}", "a".repeat(64));
        let mut seeds: Vec<Vec<u8>> = [
            "oci://localhost:5000/acme/hello:0.1.0",
            "ghcr.io/acme/hello@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "hello",
            "[::1]:5000/a__b/c-d.e:v1",
            "localhost:5000/Acme/hello:-1",
        ]
        .iter()
        .map(|text| [b"r".as_slice(), text.as_bytes()].concat())
        .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": layout::IMAGE_MANIFEST,
            "config": {"mediaType": WASM_CONFIG, "digest": digest, "size": 2},
            "layers": [{"mediaType": WASM_LAYER, "digest": digest, "size": 10}],
            "annotations": {"org.opencontainers.image.title": "hello"},
        });
        seeds.push([b"m".as_slice(), manifest.to_string().as_bytes()].concat());
        seeds
    },
};

fn check(data: &[u8]) {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    if choice % 2 == 0 {
        check_reference(rest);
    } else {
        check_manifest(rest);
    }
}

fn check_reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(reference) = OciReference::parse(text) else {
        return;
    };
    assert!(!reference.registry.is_empty() && !reference.repository.is_empty());
    assert!(reference.tag.is_some() || reference.digest.is_some());
    if let Some(digest) = &reference.digest {
        assert!(is_sha256_digest(digest), "{digest}");
    }
    assert!(!reference.manifest_reference().is_empty());
    let printed = reference.to_string();
    let again = OciReference::parse(&printed).unwrap_or_else(|err| {
        panic!("{text:?} printed as {printed:?}, which does not parse: {err}")
    });
    assert_eq!(again, reference, "{text:?} printed as {printed:?}");
}

fn check_manifest(data: &[u8]) {
    let Ok(manifest) = layout::parse_manifest("fuzz", data, MAX_COMPONENT) else {
        return;
    };
    assert_wasm_artifact(&manifest);
    let encoded = serde_json::to_vec(&manifest).expect("a manifest encodes");
    let again = layout::parse_manifest("fuzz", &encoded, MAX_COMPONENT)
        .unwrap_or_else(|err| panic!("an accepted manifest re-encodes to one refused: {err}"));
    assert_eq!(again, manifest);
}

fn assert_wasm_artifact(manifest: &ImageManifest) {
    assert_eq!(manifest.schema_version, 2);
    assert_eq!(manifest.config.media_type, WASM_CONFIG);
    let [layer] = manifest.layers.as_slice() else {
        panic!("{} layers accepted", manifest.layers.len());
    };
    assert_eq!(layer.media_type, WASM_LAYER);
    assert!(layer.size <= MAX_COMPONENT);
    assert!(is_sha256_digest(&layer.digest));
}
