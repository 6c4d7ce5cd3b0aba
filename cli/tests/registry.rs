//! `capsule push`, `pull` and `search` against a real OCI registry (Debian's
//! `docker-registry` on a free loopback port), and a policy naming a plugin
//! by `oci://` reference through `capsule check`, `run` and `serve`.

mod common;

use capsule_host::distribution::local::RegistryServer;
use common::*;

fn key() -> String {
    path_str(&plugin_dir().join("test-key.pub")).to_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn push_verifies_the_signature_before_anything_is_sent() {
    let registry = RegistryServer::shared();
    let target = format!("{}/cli/refused:1", registry.address());
    let hello = plugin("hello");

    // No key named: nothing to verify against.
    let out = capsule(&["push", path_str(&hello), &target]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--trust"), "{}", stderr(&out));

    // An unsigned copy is refused, and the tag never appears.
    let content =
        capsule_host::artifact::signature::unsigned_content(&std::fs::read(&hello).unwrap())
            .unwrap();
    let unsigned = scratch("unsigned-hello.wasm");
    std::fs::write(&unsigned, content).unwrap();
    let out = capsule(&["push", path_str(&unsigned), &target, "--trust", &key()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error [unsigned]"),
        "{}",
        stderr(&out)
    );
    let out = capsule(&[
        "pull",
        &target,
        "--store",
        path_str(&scratch("store-refused")),
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error [not_found]"),
        "{}",
        stderr(&out)
    );

    // A malformed reference is a usage error.
    let out = capsule(&[
        "push",
        path_str(&hello),
        "localhost:5000/Bad Name",
        "--trust",
        &key(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error [bad_reference]"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_pushed_plugin_is_pulled_searched_checked_run_and_served_by_reference() {
    let registry = RegistryServer::shared();
    let target = format!("{}/cli/hello:0.1.0", registry.address());
    let hello = plugin("hello");

    let out = capsule(&[
        "push",
        path_str(&hello),
        &target,
        "--trust",
        &key(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pushed = json(&out);
    let digest = pushed["manifest_digest"].as_str().unwrap().to_owned();
    assert_eq!(pushed["signers"].as_array().unwrap().len(), 1);

    let copy = scratch("pulled-hello.wasm");
    let store = scratch("store-cli");
    let out = capsule(&[
        "pull",
        &target,
        "-o",
        path_str(&copy),
        "--store",
        path_str(&store),
        "--trust",
        &key(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&hello).unwrap()
    );
    let pulled = json(&out);
    assert_eq!(pulled["manifest_digest"], digest.as_str());
    assert_eq!(
        pulled["annotations"]["org.opencontainers.image.title"],
        "hello"
    );

    // By digest, from the store: nothing is downloaded again.
    let pinned = format!("{}/cli/hello@{digest}", registry.address());
    let out = capsule(&["pull", &pinned, "--store", path_str(&store), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["cached"], true);

    let out = capsule(&["search", &registry.address(), "--tag", "greeting", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let found = json(&out);
    let repositories = found["repositories"].as_array().unwrap();
    let listed = repositories
        .iter()
        .find(|r| r["repository"] == "cli/hello")
        .unwrap_or_else(|| panic!("cli/hello not found: {found}"));
    assert_eq!(listed["tags"][0]["tag"], "0.1.0");
    assert_eq!(
        listed["tags"][0]["annotations"]["org.opencontainers.image.licenses"],
        "Apache-2.0"
    );
    // A tag no plugin carries finds nothing.
    let out = capsule(&[
        "search",
        &registry.address(),
        "--tag",
        "no-such-tag",
        "--json",
    ]);
    assert_eq!(json(&out)["repositories"].as_array().unwrap().len(), 0);
    let out = capsule(&["search", &registry.address()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cli/hello:0.1.0  hello 0.1.0"), "{text}");
    assert!(text.contains("needs:       events"), "{text}");

    let file = policy(
        "oci-policy.toml",
        &format!(
            "[host]\ntrusted_keys = [\"{{key}}\"]\n[host.oci]\nstore = \"{{scratch}}store-policy\"\n\
             [plugins.hello]\nsource = \"oci://{target}\"\n"
        ),
    );
    let out = capsule(&["check", "--config", path_str(&file), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let checked = json(&out);
    assert_eq!(
        checked["plugins"][0]["source"]["manifest_digest"],
        digest.as_str()
    );
    // hello's metadata says it needs `events`; this policy does not grant it.
    assert_eq!(
        checked["plugins"][0]["missing_grants"],
        serde_json::json!(["events"])
    );
    // Offline, from the store the first check filled.
    let out = capsule(&["check", "--config", path_str(&file), "--offline"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("source:    oci://{target} → {digest}")),
        "{text}"
    );

    let out = capsule(&[
        "run",
        "hello",
        "--config",
        path_str(&file),
        "--op",
        "greet",
        "--input",
        r#"{"name":"Ada"}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"greeting\":\"Hello, Ada!\"}\n"
    );

    let server = ServeProcess::start(&file, &[]);
    let (status, body) = server.http(
        "POST",
        "/v1/plugins/hello/call?op=greet",
        r#"{"name":"Bo"}"#,
    );
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"greeting":"Hello, Bo!"}"#)
    );
    let (status, body) = server.http("GET", "/v1/plugins", "");
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let metadata = &listed["plugins"][0]["manifest"]["metadata"];
    assert_eq!(
        metadata["tags"],
        serde_json::json!(["greeting", "example"]),
        "{listed}"
    );
    assert_eq!(metadata["grants"], serde_json::json!(["events"]));
}
