//! The static manifest and what rests on it: declared operations with their
//! schemas (signed, mirrored by `describe`), requirements between plugins
//! (load order, missing plugins, versions out of range, cycles, reloads that
//! would break a dependent), and `validate_input`.
//!
//! Variants of the example plugins with other manifests are made the way an
//! author would: the unsigned content, its manifest section replaced, signed
//! with a key of the test's own.

use std::path::Path;

use capsule_host::artifact::manifest::{self, MANIFEST_SECTION, Manifest, Requirement};
use capsule_host::artifact::{sections, signature};
use capsule_host::{ErrorKind, Host, PluginHealthState, PluginSpec, Policy, Request, SecretKey};
use capsule_tests::plugins::{ALLOC_BOMB, HELLO, HELLO_V0_1, KV_COUNTER, ROUTER, THUMBNAIL};
use capsule_tests::{plugin_bytes, plugin_path, temp_dir};
use serde_json::json;

/// A signed plugin's manifest, as it carries it.
fn manifest_of(plugin: &str) -> Manifest {
    manifest::read(&plugin_bytes(plugin))
        .unwrap()
        .unwrap_or_else(|| panic!("{plugin} carries no manifest"))
}

/// `plugin` re-signed by `key` with its manifest changed by `change`.
fn variant(plugin: &str, key: &SecretKey, change: impl FnOnce(&mut Manifest)) -> Vec<u8> {
    let mut manifest = manifest_of(plugin);
    change(&mut manifest);
    with_raw_manifest(plugin, key, &manifest.to_bytes())
}

/// `plugin` re-signed by `key` with `document` as its manifest section,
/// written raw (as a hostile author would, past any SDK or `embed` check).
fn with_raw_manifest(plugin: &str, key: &SecretKey, document: &[u8]) -> Vec<u8> {
    let content = signature::unsigned_content(&plugin_bytes(plugin)).unwrap();
    let mut out = content[..8].to_vec();
    for section in sections::split(&content).unwrap() {
        if !matches!(section.custom(), Some((MANIFEST_SECTION, _))) {
            out.extend_from_slice(&content[section.range]);
        }
    }
    out.extend_from_slice(&sections::encode_custom(MANIFEST_SECTION, document));
    signature::sign(&out, key).unwrap().embedded
}

fn requiring(target: &str, range: &str) -> Requirement {
    match target.strip_prefix("capability:") {
        Some(capability) => Requirement {
            plugin: None,
            capability: Some(capability.into()),
            version: range.into(),
        },
        None => Requirement {
            plugin: Some(target.into()),
            capability: None,
            version: range.into(),
        },
    }
}

/// A host trusting the test key and `key`.
fn host_trusting(key: &SecretKey) -> Host {
    capsule_tests::host_builder()
        .trust(key.public_key())
        .build()
        .unwrap()
}

/// A policy of `plugins` (name, file) in `dir`, each with `extra` lines.
fn policy(dir: &Path, plugins: &[(&str, &Path, &str)]) -> Policy {
    let mut text = String::new();
    for (name, path, extra) in plugins {
        text.push_str(&format!(
            "[plugins.{name}]\npath = {:?}\n{extra}\n\n",
            path.display().to_string()
        ));
    }
    Policy::parse(&text, &dir.join("capsule.toml"), dir).unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test]
async fn the_signed_manifest_declares_operations_and_describe_mirrors_it() {
    let hello = manifest_of(HELLO);
    assert_eq!(
        (hello.name.as_str(), hello.version.as_str()),
        ("hello", "0.1.0")
    );
    assert_eq!(hello.capabilities, ["greeting"]);
    let names: Vec<&str> = hello
        .operations
        .iter()
        .flatten()
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(names, ["greet", "env", "announce", "calls"]);
    let greet = hello.operation("greet").unwrap();
    assert!(greet.description.starts_with("Greets someone by name"));
    // From schemars, through `Dispatch::typed`.
    let input = greet.input.as_ref().unwrap();
    assert_eq!(input["required"], json!(["name"]));
    assert_eq!(input["properties"]["name"]["maxLength"], 64);
    assert!(greet.output.as_ref().unwrap()["properties"]["greeting"].is_object());
    assert_eq!(manifest_of(ROUTER).requires.len(), 2);
    // The router's `handle` routes by config, not through a `Dispatch`: its
    // operations are unknown, which is not "none".
    assert_eq!(manifest_of(ROUTER).operations, None);

    let host = crate::host();
    let details = host
        .load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    assert_eq!(details.manifest.as_deref(), Some(&hello));
    // A 0.1 plugin has no manifest and still loads.
    let old = host
        .load(PluginSpec::from_path(plugin_path(HELLO_V0_1)))
        .await
        .unwrap();
    assert!(old.manifest.is_none());
}

#[tokio::test]
async fn the_signature_covers_the_manifest() {
    let mut bytes = plugin_bytes(THUMBNAIL);
    let section = sections::split(&bytes)
        .unwrap()
        .into_iter()
        .find(|s| matches!(s.custom(), Some((MANIFEST_SECTION, _))))
        .unwrap()
        .range;
    // Loosen the declared bound on `max` without touching anything else.
    let text = String::from_utf8_lossy(&bytes[section.clone()]).into_owned();
    let at = text
        .find("\"minimum\":0")
        .expect("thumbnail declares a minimum")
        + 11;
    bytes[section.start + at - 1] = b'1';
    let err = crate::host()
        .load(PluginSpec::from_bytes("thumbnail", bytes))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadSignature, "{err}");
}

#[tokio::test]
async fn a_manifest_that_is_not_the_plugins_own_is_refused() {
    let key = SecretKey::generate().unwrap();
    let host = host_trusting(&key);
    let lying = variant(HELLO, &key, |m| m.version = "9.9.9".into());
    let err = host
        .load(PluginSpec::from_bytes("hello", lying))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidManifest, "{err}");
    assert!(
        err.to_string()
            .contains(r#"version is "9.9.9" but `describe` says "0.1.0""#),
        "{err}"
    );
    let stolen = variant(HELLO, &key, |m| m.capabilities = vec!["thumbnail".into()]);
    let err = host
        .load(PluginSpec::from_bytes("hello", stolen))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidManifest, "{err}");
}

#[tokio::test]
async fn a_policy_loads_dependencies_first_and_refuses_what_is_missing() {
    let dir = temp_dir("deps-order");
    let (hello, router, thumbnail) = (
        plugin_path(HELLO),
        plugin_path(ROUTER),
        plugin_path(THUMBNAIL),
    );
    let routes = r#"calls = ["capability:greeting", "capability:thumbnail"]
config = { routes = "greet=greeting,make=thumbnail" }"#;
    // By name, `router` would come before `thumbnail`; it requires it, so it
    // loads after it.
    let full = policy(
        &dir,
        &[
            ("hello", &hello, ""),
            ("router", &router, routes),
            ("thumbnail", &thumbnail, ""),
        ],
    );
    let host = crate::host();
    assert!(host.load_policy(&full).await.is_empty());
    let routed = host
        .call(ROUTER, Request::new("greet", r#"{"name":"Ada"}"#))
        .await
        .unwrap();
    assert_eq!(routed.response.payload, br#"{"greeting":"Hello, Ada!"}"#);

    let partial = policy(&dir, &[("hello", &hello, ""), ("router", &router, routes)]);
    let host = crate::host();
    let failures = host.load_policy(&partial).await;
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].plugin, "router");
    assert_eq!(failures[0].kind(), ErrorKind::MissingDependency);
    assert!(
        failures[0]
            .to_string()
            .contains("requires capability `thumbnail`, which no loaded plugin provides"),
        "{}",
        failures[0]
    );
    // The rest serves.
    assert!(
        host.call(HELLO, Request::new("greet", r#"{"name":"Bo"}"#))
            .await
            .is_ok()
    );
    // The host is not ready: the policy names a plugin it could not load.
    let readiness = host.readiness().await;
    assert!(!readiness.ready);
    assert_eq!(readiness.not_loaded.len(), 1, "{readiness:?}");
    assert_eq!(readiness.not_loaded[0].name, "router");
    assert_eq!(readiness.not_loaded[0].kind, "missing_dependency");
    assert_eq!(readiness.plugins.len(), 1);
    assert_eq!(readiness.plugins[0].state, PluginHealthState::Ok);
    // Once a policy whose plugins all load is applied, it is.
    let applied = host.apply_policy(&full).await.unwrap();
    assert!(applied.failed.is_empty(), "{applied:?}");
    let readiness = host.readiness().await;
    assert!(readiness.ready, "{readiness:?}");
}

#[tokio::test]
async fn a_version_outside_the_range_is_refused_at_load() {
    let key = SecretKey::generate().unwrap();
    let host = host_trusting(&key);
    host.load(PluginSpec::from_path(plugin_path(THUMBNAIL)))
        .await
        .unwrap();
    let picky = variant(ROUTER, &key, |m| {
        m.requires = vec![requiring("thumbnail", "^0.2")];
    });
    let err = host
        .load(PluginSpec::from_bytes("router", picky))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingDependency, "{err}");
    assert!(
        err.to_string()
            .contains("requires plugin `thumbnail` ^0.2, but only `thumbnail` 0.1.0 is loaded"),
        "{err}"
    );
    let content = variant(ROUTER, &key, |m| {
        m.requires = vec![requiring("thumbnail", ">=0.1, <0.2")]
    });
    host.load(PluginSpec::from_bytes("router", content))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_dependency_cycle_is_an_error_and_the_rest_loads() {
    let key = SecretKey::generate().unwrap();
    let dir = temp_dir("deps-cycle");
    let hello = write(
        &dir,
        "hello",
        &variant(HELLO, &key, |m| {
            m.requires = vec![requiring("counter", "*")];
        }),
    );
    let counter = write(
        &dir,
        "counter",
        &variant(KV_COUNTER, &key, |m| {
            m.requires = vec![requiring("capability:greeting", "0.1")];
        }),
    );
    let thumbnail = plugin_path(THUMBNAIL);
    let cyclic = policy(
        &dir,
        &[
            ("hello", &hello, ""),
            ("counter", &counter, "kv = { namespace = \"c\" }"),
            ("thumbnail", &thumbnail, ""),
        ],
    );
    let host = host_trusting(&key);
    let failures = host.load_policy(&cyclic).await;
    let mut refused: Vec<(String, ErrorKind, String)> = failures
        .iter()
        .map(|f| (f.plugin.clone(), f.kind(), f.to_string()))
        .collect();
    refused.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0].0, "counter");
    assert_eq!(refused[0].1, ErrorKind::DependencyCycle);
    assert!(
        refused[0].2.contains("counter → hello → counter"),
        "{}",
        refused[0].2
    );
    assert_eq!(refused[1].0, "hello");
    assert_eq!(refused[1].1, ErrorKind::DependencyCycle);
    assert!(host.details("thumbnail").is_some());
    assert!(host.details("hello").is_none());
}

#[tokio::test]
async fn a_reload_that_would_break_a_dependent_is_refused_unless_forced() {
    let key = SecretKey::generate().unwrap();
    let host = host_trusting(&key);
    for plugin in [HELLO, THUMBNAIL] {
        host.load(PluginSpec::from_path(plugin_path(plugin)))
            .await
            .unwrap();
    }
    // The router, also pinned to the plugin `thumbnail` in 0.1.x.
    let pinned = variant(ROUTER, &key, |m| {
        m.requires.push(requiring("thumbnail", "^0.1"))
    });
    host.load(PluginSpec::from_bytes("router", pinned))
        .await
        .unwrap();

    // `thumbnail` replaced by kv-counter 0.2.0: a version outside the
    // router's range, and no `thumbnail` capability.
    let replacement = PluginSpec::from_path(plugin_path(KV_COUNTER))
        .with_name("thumbnail")
        .grants(capsule_host::Grants {
            kv: Some(capsule_host::services::kv::KvGrant::new("t")),
            ..Default::default()
        });
    let err = host.reload_with(replacement.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingDependency, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("version 0.2.0 would break what depends on it"),
        "{message}"
    );
    assert!(
        message.contains("`router` requires capability `thumbnail` ^0.1"),
        "{message}"
    );
    assert!(
        message.contains("`router` requires plugin `thumbnail` ^0.1"),
        "{message}"
    );
    // Refused means unchanged: the old version keeps serving.
    assert_eq!(host.details("thumbnail").unwrap().info.name, "thumbnail");
    assert_eq!(host.status("thumbnail").unwrap().generation, 0);
    let made = host
        .call(
            "thumbnail",
            Request::new(
                "make",
                r#"{"image":{"width":1,"height":1,"pixels":[5]},"max":1}"#,
            ),
        )
        .await;
    assert!(made.is_ok());

    // The dependent's own requirements are checked when it is reloaded.
    let picky = variant(ROUTER, &key, |m| {
        m.requires = vec![requiring("thumbnail", "^0.2")]
    });
    let err = host
        .reload_with(PluginSpec::from_bytes("router", picky))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingDependency, "{err}");
    assert!(
        err.to_string().contains("only `thumbnail` 0.1.0 is loaded"),
        "{err}"
    );

    // Forced, the reload goes through.
    let forced = host.force_reload_with(replacement).await.unwrap();
    assert_eq!(
        (forced.info.name.as_str(), forced.info.version.as_str()),
        ("kv-counter", "0.2.0")
    );
    assert_eq!(host.status("thumbnail").unwrap().generation, 1);
    // The router is now broken, but that is not the doing of a reload of
    // anything else: `hello` reloads.
    host.reload("hello").await.unwrap();
}

#[tokio::test]
async fn validate_input_refuses_requests_that_do_not_match_the_declared_schema() {
    let host = crate::host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)).validate_input(true))
        .await
        .unwrap();
    let ok = host
        .call(HELLO, Request::new("greet", r#"{"name":"Ada"}"#))
        .await
        .unwrap();
    assert_eq!(ok.response.payload, br#"{"greeting":"Hello, Ada!"}"#);
    for (operation, payload, expected) in [
        ("greet", r#"{"name":""}"#, "at /name"),
        (
            "greet",
            r#"{"nom":"Ada"}"#,
            "\"name\" is a required property",
        ),
        ("greet", "Ada", "not JSON"),
        ("shout", "{}", "declares: announce, calls, env, greet"),
    ] {
        let err = host
            .call(HELLO, Request::new(operation, payload))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(
            err.to_string().contains(expected),
            "{err} should say {expected}"
        );
        // Refused before the plugin ran: no fuel, no instance.
        assert_eq!(err.stats.fuel_used, None);
    }
    // A plugin without a manifest cannot have its input validated.
    let err = host
        .load(PluginSpec::from_path(plugin_path(HELLO_V0_1)).validate_input(true))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("carries no manifest"), "{err}");
}

#[tokio::test]
async fn building_a_manifest_runs_the_plugin_under_limits() {
    // What `capsule sign` does: ask the plugin for its manifest. A hostile
    // plugin's `handle` (probed for operations) is stopped at its limits
    // with a typed error, and nothing is registered.
    let host = Host::builder().allow_unsigned(true).build().unwrap();
    let content = signature::unsigned_content(&plugin_bytes(ALLOC_BOMB)).unwrap();
    let err = host
        .ask_manifest(PluginSpec::from_bytes("alloc-bomb", content))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MemoryLimit, "{err}");
    assert!(host.details("alloc-bomb").is_none());
    let content = signature::unsigned_content(&plugin_bytes(THUMBNAIL)).unwrap();
    let asked = host
        .ask_manifest(PluginSpec::from_bytes("thumbnail", content))
        .await
        .unwrap();
    let (asked, document) = asked.unwrap();
    assert_eq!(asked, manifest_of(THUMBNAIL));
    assert_eq!(Manifest::parse(document.as_bytes()).unwrap(), asked);
}

#[tokio::test]
async fn validate_input_needs_declared_operations() {
    let host = crate::host();
    for plugin in [HELLO, THUMBNAIL] {
        host.load(PluginSpec::from_path(plugin_path(plugin)))
            .await
            .unwrap();
    }
    let err = host
        .load(PluginSpec::from_path(plugin_path(ROUTER)).validate_input(true))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("does not list them"), "{err}");
}

/// Hostile schemas, from an author who writes the manifest section by hand:
/// refused at load when their cost is unbounded, and bounded per request
/// when it is merely large. The host keeps serving throughout.
#[tokio::test]
async fn hostile_schemas_cannot_make_the_host_spend_unbounded_work() {
    let key = SecretKey::generate().unwrap();
    let host = host_trusting(&key);
    host.load(PluginSpec::from_path(plugin_path(HELLO)).with_name("bystander"))
        .await
        .unwrap();
    let manifest_with = |input: serde_json::Value| {
        serde_json::to_vec(&json!({
            "format": 1, "name": "hello", "version": "0.1.0", "capabilities": ["greeting"],
            "operations": [{"name": "greet", "input": input}]
        }))
        .unwrap()
    };

    // 2^15 nodes through a chain of shared definitions, each used twice.
    let mut defs = serde_json::Map::new();
    for i in 0..15 {
        let next = format!("#/$defs/a{}", i + 1);
        defs.insert(
            format!("a{i}"),
            json!({"anyOf": [{"$ref": next}, {"$ref": next}]}),
        );
    }
    defs.insert("a15".into(), json!({"type": "string"}));
    let exponential = with_raw_manifest(
        HELLO,
        &key,
        &manifest_with(json!({"$ref": "#/$defs/a0", "$defs": defs})),
    );
    let err = host
        .load(PluginSpec::from_bytes("exponential", exponential).validate_input(true))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidManifest, "{err}");
    assert!(err.to_string().contains("more than 10000 nodes"), "{err}");

    // 4,000 alternatives for every item: legal, but half a million items
    // would cost two billion visits. Refused unchecked, at once.
    let branches: Vec<serde_json::Value> = (0..4_000).map(|i| json!({"const": i})).collect();
    let wide = with_raw_manifest(
        HELLO,
        &key,
        &manifest_with(json!({"type": "array", "items": {"anyOf": branches}})),
    );
    host.load(
        PluginSpec::from_bytes("wide", wide)
            .validate_input(true)
            .limits(capsule_host::Limits {
                max_request_bytes: 4 << 20,
                ..Default::default()
            }),
    )
    .await
    .unwrap();
    let items = format!("[{}]", vec!["3999"; 500_000].join(","));
    let err = host
        .call("wide", Request::new("greet", items))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("send a smaller payload"), "{err}");
    // A payload within the budget is checked: a value outside the choices is
    // refused with a bounded message, a valid one reaches the plugin (which
    // then fails on its own: an array is not a greeting).
    let err = host
        .call("wide", Request::new("greet", "[1, 2, 9999]"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(
        err.to_string().len() < 1024,
        "{} bytes",
        err.to_string().len()
    );
    let err = host
        .call("wide", Request::new("greet", "[1, 2, 3]"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PluginError, "{err}");
    // The bystander never noticed.
    assert!(
        host.call("bystander", Request::new("greet", r#"{"name":"Ada"}"#))
            .await
            .is_ok()
    );
}
