//! Plugins pushed to and pulled from a real OCI registry (Debian's
//! `docker-registry`, started on a free loopback port): by tag and by
//! digest, named in a policy by `source = "oci://…"`, verified against the
//! trusted keys after the pull; a tag re-pointed at unsigned or untrusted
//! content is refused while the old version keeps serving; a registry that
//! is down gives a typed error and the local store keeps serving; and a
//! hostile registry's oversized or malformed answers are refused without
//! reading them whole.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use capsule_host::SecretKey;
use capsule_host::artifact::signature;
use capsule_host::artifact::{inspect, manifest};
use capsule_host::distribution::layout::{self, Artifact, keys};
use capsule_host::distribution::local::RegistryServer;
use capsule_host::distribution::{
    DistributionError, Fetch, OciOptions, OciReference, Pushed, Registry, Store,
};
use capsule_host::{HostBuilder, Policy, Request};
use capsule_tests::plugins::{HELLO, HELLO_V0_1};
use capsule_tests::{plugin_bytes, plugin_dir, temp_dir};

/// Pushes `bytes` to `reference` as a Wasm artifact, as anyone with push
/// rights could (no signature check: that is `capsule push`'s, and a
/// hostile pusher skips it).
async fn push(reference: &str, bytes: &[u8]) -> Pushed {
    let reference = OciReference::parse(reference).unwrap();
    let summary = inspect::inspect(bytes).unwrap();
    let manifest = manifest::read(bytes).ok().flatten();
    let artifact = Artifact::build(
        bytes,
        &summary,
        manifest.as_ref(),
        &[],
        "2026-12-05T00:00:00Z",
    );
    Registry::new(&OciOptions::default())
        .unwrap()
        .push(&reference, bytes, &artifact)
        .await
        .unwrap()
}

fn options(store: &Path) -> OciOptions {
    OciOptions {
        store: Some(store.to_owned()),
        ..OciOptions::default()
    }
}

/// A policy trusting the test key, its store in `dir`, loading `hello` from
/// `source`.
fn write_policy(dir: &Path, source: &str) -> PathBuf {
    let path = dir.join("capsule.toml");
    let text = format!(
        "[host]\ntrusted_keys = [{key:?}]\n[host.oci]\nstore = {store:?}\n\
         [plugins.hello]\nsource = {source:?}\nconfig = {{ greeting = \"Hi\" }}\n",
        key = plugin_dir().join("test-key.pub").display().to_string(),
        store = dir.join("store").display().to_string(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn load(policy: &Path, fetch: Fetch) -> Result<Policy, String> {
    let policy = policy.to_owned();
    tokio::task::spawn_blocking(move || Policy::load_fetching(&policy, None, fetch))
        .await
        .unwrap()
        .map_err(|errors| errors.to_string())
}

async fn greet(host: &capsule_host::Host) -> String {
    let out = host
        .call(HELLO, Request::new("greet", r#"{"name":"Ada"}"#))
        .await
        .unwrap();
    String::from_utf8(out.response.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_pushed_by_tag_pulls_by_tag_and_by_digest_byte_for_byte() {
    let registry = RegistryServer::shared();
    let reference = format!("{}/e2e/hello:0.1.0", registry.address());
    let hello = plugin_bytes(HELLO);
    let pushed = push(&reference, &hello).await;
    assert!(layout::is_sha256_digest(&pushed.manifest_digest));

    let dir = temp_dir("oci-pull");
    let store = Store::open(&dir, 1 << 30).unwrap();
    let client = Registry::new(&options(&dir)).unwrap();
    let by_tag = client
        .pull(&OciReference::parse(&reference).unwrap(), &store)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&by_tag.path).unwrap(), hello);
    assert!(!by_tag.cached);
    assert_eq!(by_tag.stored.manifest_digest, pushed.manifest_digest);
    // The metadata travels as annotations, readable without the component.
    let annotations = &by_tag.stored.annotations;
    assert_eq!(annotations["org.opencontainers.image.title"], "hello");
    assert_eq!(
        annotations["org.opencontainers.image.licenses"],
        "Apache-2.0"
    );
    assert_eq!(annotations[keys::TAGS], "greeting,example");
    assert_eq!(annotations[keys::GRANTS], "events");
    assert_eq!(annotations[keys::CONTRACT], "0.2.0");

    let by_digest = client.pull(&pushed.reference, &store).await.unwrap();
    assert!(
        by_digest.cached,
        "the same component is not downloaded twice"
    );
    assert_eq!(std::fs::read(&by_digest.path).unwrap(), hello);
    // A digest that is not the manifest's is refused.
    let wrong = OciReference::parse(&format!(
        "{}/e2e/hello@sha256:{}",
        registry.address(),
        "0".repeat(64)
    ))
    .unwrap();
    let err = client.pull(&wrong, &store).await.unwrap_err();
    assert_eq!(err.kind(), "not_found", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_names_a_plugin_by_reference_and_it_runs_verified() {
    let registry = RegistryServer::shared();
    let reference = format!("{}/e2e/policy-hello:1", registry.address());
    let pushed = push(&reference, &plugin_bytes(HELLO)).await;
    let dir = temp_dir("oci-policy");
    let file = write_policy(&dir, &format!("oci://{reference}"));

    let started = Instant::now();
    let policy = load(&file, Fetch::Online).await.unwrap();
    let pulled = started.elapsed();
    let origin = policy.plugins["hello"].origin.clone().unwrap();
    assert_eq!(
        origin.resolved.unwrap().manifest_digest,
        pushed.manifest_digest
    );
    assert!(policy.plugins["hello"].path.starts_with(dir.join("store")));
    let host = HostBuilder::from_policy(&policy).build().unwrap();
    let started = Instant::now();
    assert!(host.load_policy(&policy).await.is_empty());
    let loaded = started.elapsed();
    assert_eq!(greet(&host).await, r#"{"greeting":"Hi, Ada!"}"#);
    assert_eq!(host.status(HELLO).unwrap().details.signers.len(), 1);
    eprintln!(
        "hello from a registry: pull + resolve {pulled:.1?}, verify + compile + load {loaded:.1?}"
    );

    // Pinned by digest, it loads from the store without asking the registry.
    let pinned = write_policy(&dir, &format!("oci://{}", pushed.reference));
    let policy = load(&pinned, Fetch::Offline).await.unwrap();
    assert_eq!(
        policy.plugins["hello"]
            .origin
            .as_ref()
            .unwrap()
            .fallback
            .as_deref(),
        Some("offline")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_moved_to_unsigned_or_untrusted_content_is_refused_and_the_old_version_serves_on() {
    let registry = RegistryServer::shared();
    let reference = format!("{}/e2e/moving:stable", registry.address());
    push(&reference, &plugin_bytes(HELLO)).await;
    let dir = temp_dir("oci-moving");
    let file = write_policy(&dir, &format!("oci://{reference}"));
    let policy = load(&file, Fetch::Online).await.unwrap();
    let host = HostBuilder::from_policy(&policy).build().unwrap();
    assert!(host.load_policy(&policy).await.is_empty());
    let serving = host.status(HELLO).unwrap().details.digest.clone();

    // The tag now names the same code without its signature, then signed
    // by a key the host does not trust.
    let unsigned = signature::unsigned_content(&plugin_bytes(HELLO_V0_1)).unwrap();
    let stranger = SecretKey::generate().unwrap();
    let untrusted = signature::sign(&unsigned, &stranger).unwrap().embedded;
    for (content, kind) in [(unsigned, "unsigned"), (untrusted, "untrusted_key")] {
        push(&reference, &content).await;
        let moved = load(&file, Fetch::Online).await.unwrap();
        assert_ne!(moved.plugins["hello"].path, policy.plugins["hello"].path);
        let changes = host.apply_policy(&moved).await.unwrap();
        assert_eq!(changes.failed.len(), 1, "{changes:?}");
        assert_eq!(changes.failed[0].kind, kind, "{changes:?}");
        assert_eq!(host.status(HELLO).unwrap().details.digest, serving);
        assert_eq!(greet(&host).await, r#"{"greeting":"Hi, Ada!"}"#);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_down_is_a_typed_error_and_the_store_keeps_serving() {
    // A registry of its own: this test stops it.
    let mut registry = RegistryServer::start().unwrap();
    let reference = format!("{}/e2e/down:1", registry.address());
    let pushed = push(&reference, &plugin_bytes(HELLO)).await;
    let dir = temp_dir("oci-down");
    let file = write_policy(&dir, &format!("oci://{reference}"));
    load(&file, Fetch::Online).await.unwrap();

    registry.stop();
    let policy = load(&file, Fetch::Online).await.unwrap();
    let origin = policy.plugins["hello"].origin.clone().unwrap();
    assert_eq!(
        origin.resolved.unwrap().manifest_digest,
        pushed.manifest_digest
    );
    let why = origin.fallback.unwrap();
    assert!(why.contains("cannot be reached"), "{why}");
    let host = HostBuilder::from_policy(&policy).build().unwrap();
    assert!(host.load_policy(&policy).await.is_empty());
    assert_eq!(greet(&host).await, r#"{"greeting":"Hi, Ada!"}"#);

    // What the store never had is an error naming the reference and cause.
    let never = write_policy(&dir, &format!("oci://{}/e2e/never:1", registry.address()));
    let err = load(&never, Fetch::Online).await.unwrap_err();
    assert!(
        err.contains("plugins.hello.source") && err.contains("[registry_unreachable]"),
        "{err}"
    );
    let err = load(&never, Fetch::Offline).await.unwrap_err();
    assert!(err.contains("[not_stored]"), "{err}");
}

/// What a hostile registry answers, by repository.
fn hostile_answer(path: &str, sent: &AtomicU64, stream: &mut std::net::TcpStream) {
    let wasm_manifest = |size: u64, digest: &str| {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": layout::IMAGE_MANIFEST,
            "config": {"mediaType": layout::WASM_CONFIG, "digest": format!("sha256:{}", "0".repeat(64)), "size": 2},
            "layers": [{"mediaType": layout::WASM_LAYER, "digest": digest, "size": size}],
        })
        .to_string()
    };
    let ok = |stream: &mut std::net::TcpStream, body: &str| {
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    let small = capsule_host::distribution::store::sha256_digest(b"small");
    match path {
        "/v2/" => ok(stream, "{}"),
        // A manifest that never ends, with no length given.
        "/v2/endless/manifests/v1" => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            );
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..(4u64 << 30) / chunk.len() as u64 {
                if write!(stream, "{:x}\r\n", chunk.len()).is_err()
                    || stream.write_all(&chunk).is_err()
                    || stream.write_all(b"\r\n").is_err()
                {
                    break;
                }
                sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        }
        // A manifest that says at once it is ten gigabytes.
        "/v2/declared/manifests/v1" => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: 10737418240\r\nConnection: close\r\n\r\n{{"
            );
        }
        "/v2/notwasm/manifests/v1" => ok(
            stream,
            &serde_json::json!({
                "schemaVersion": 2,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": small, "size": 5},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": small, "size": 5}],
            })
            .to_string(),
        ),
        "/v2/garbage/manifests/v1" => ok(stream, "<html>not a manifest</html>"),
        // A layer that is longer than its manifest says.
        "/v2/longer/manifests/v1" => ok(stream, &wasm_manifest(5, &small)),
        // A layer whose bytes are not its digest.
        "/v2/tampered/manifests/v1" => ok(stream, &wasm_manifest(5, &small)),
        // A layer larger than any component may be.
        "/v2/huge/manifests/v1" => ok(stream, &wasm_manifest(1 << 40, &small)),
        _ if path.starts_with("/v2/longer/blobs/") => {
            let body = vec![b'x'; 8 << 20];
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(&body);
        }
        _ if path.starts_with("/v2/tampered/blobs/") => ok(stream, "evil!"),
        _ => {
            let _ = write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    }
}

/// A loopback "registry" answering with [`hostile_answer`]; returns its
/// address and the count of endless-manifest bytes it managed to send.
fn hostile_registry() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                }
                let path = path.split('?').next().unwrap_or("").to_owned();
                hostile_answer(&path, &counter, &mut stream);
            });
        }
    });
    (address, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_registrys_oversized_or_malformed_answers_are_refused_unread() {
    let (address, sent) = hostile_registry();
    let dir = temp_dir("oci-hostile");
    let store = Store::open(&dir, 1 << 30).unwrap();
    let client = Registry::new(&options(&dir)).unwrap();
    let pull = |repository: &str| {
        let reference = OciReference::parse(&format!("{address}/{repository}:v1")).unwrap();
        let client = &client;
        let store = &store;
        async move { client.pull(&reference, store).await.unwrap_err() }
    };

    let peak_before = capsule_tests::peak_resident();
    let err = pull("endless").await;
    assert!(
        matches!(err, DistributionError::TooLarge { what: "manifest", limit, .. } if limit == capsule_host::distribution::MAX_OCI_MANIFEST_BYTES),
        "{err}"
    );
    // The client stopped reading at the bound: the server could send little
    // more than the bound and its socket buffers, not its 4 GiB.
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        sent < 64 << 20,
        "the registry sent {sent} bytes before the client hung up"
    );
    let grown = capsule_tests::peak_resident().saturating_sub(peak_before);
    assert!(grown < 64 << 20, "peak memory grew by {grown} bytes");

    let err = pull("declared").await;
    assert!(
        matches!(
            err,
            DistributionError::TooLarge {
                what: "manifest",
                ..
            }
        ),
        "{err}"
    );
    let err = pull("notwasm").await;
    assert!(err.to_string().contains("not a Wasm artifact"), "{err}");
    let err = pull("garbage").await;
    assert_eq!(err.kind(), "malformed_artifact", "{err}");
    let err = pull("longer").await;
    assert!(
        matches!(
            err,
            DistributionError::TooLarge {
                what: "component",
                limit: 5,
                ..
            }
        ),
        "{err}"
    );
    let err = pull("tampered").await;
    assert!(
        matches!(
            err,
            DistributionError::DigestMismatch {
                what: "component",
                ..
            }
        ),
        "{err}"
    );
    let err = pull("huge").await;
    assert!(
        matches!(
            err,
            DistributionError::TooLarge {
                what: "component",
                ..
            }
        ),
        "{err}"
    );
    // Nothing of any of them reached the store.
    assert_eq!(store.used_bytes(), 0);
    assert!(std::fs::read_dir(dir.join("tmp")).unwrap().next().is_none());
}
