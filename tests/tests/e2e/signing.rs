//! Signatures: only plugins signed by a trusted key load, every kind of
//! tampering is refused before compilation, wasmsign2 and Capsule read each
//! other's signatures, and compiled code comes back from the cache.

use std::ops::Range;

use capsule_host::artifact::signature;
use capsule_host::{ErrorKind, Host, PluginSource, PluginSpec, Request, SecretKey};
use capsule_tests::{host_builder, plugin_bytes, plugins::HELLO, temp_dir, test_key};

/// hello exactly as the compiler produced it, without the test signature.
fn unsigned_hello() -> Vec<u8> {
    signature::unsigned_content(&plugin_bytes(HELLO)).unwrap()
}

fn signed_by(bytes: &[u8], key: &SecretKey) -> Vec<u8> {
    signature::sign(bytes, key).unwrap().embedded
}

async fn load(
    host: &Host,
    bytes: Vec<u8>,
) -> Result<capsule_host::PluginDetails, capsule_host::LoadError> {
    host.load(PluginSpec::from_bytes(HELLO, bytes)).await
}

async fn assert_greets(host: &Host) {
    let outcome = host
        .call(HELLO, Request::new("greet", r#"{"name":"Ada"}"#))
        .await
        .unwrap();
    assert_eq!(
        outcome.response.text(),
        Some(r#"{"greeting":"Hello, Ada!"}"#)
    );
}

#[tokio::test]
async fn a_plugin_signed_by_a_trusted_key_loads_and_names_its_signer() {
    let key = SecretKey::generate().unwrap();
    let host = Host::builder().trust(key.public_key()).build().unwrap();
    let details = load(&host, signed_by(&unsigned_hello(), &key))
        .await
        .unwrap();
    assert_eq!(details.signers, [key.public_key().key_id().to_hex()]);
    assert_greets(&host).await;
}

#[tokio::test]
async fn unsigned_is_refused_by_default_and_loads_with_the_opt_out() {
    let err = load(&host_builder().build().unwrap(), unsigned_hello())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsigned, "{err}");

    let lenient = host_builder().allow_unsigned(true).build().unwrap();
    let details = load(&lenient, unsigned_hello()).await.unwrap();
    assert!(details.signers.is_empty());
    assert_greets(&lenient).await;
}

#[tokio::test]
async fn a_valid_signature_by_an_untrusted_key_is_refused() {
    let stranger = SecretKey::generate().unwrap();
    let err = load(
        &host_builder().build().unwrap(),
        signed_by(&unsigned_hello(), &stranger),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UntrustedKey, "{err}");
    assert!(
        err.to_string()
            .contains(&stranger.public_key().key_id().to_hex()),
        "{err}"
    );
}

/// Where code, data, a custom section and the signature lie in a signed
/// component.
struct Regions {
    code: Range<usize>,
    data: Range<usize>,
    custom: Range<usize>,
    signature: Range<usize>,
}

fn regions(bytes: &[u8]) -> Regions {
    use wasmparser::{Parser, Payload};
    let (mut code, mut data, mut custom, mut signature) = (None, None, None, None);
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.unwrap() {
            Payload::CodeSectionStart { range, .. } if code.is_none() => code = Some(range),
            Payload::DataSection(reader) if data.is_none() => data = Some(reader.range()),
            Payload::CustomSection(reader) => {
                let range = reader.data_offset()..reader.data_offset() + reader.data().len();
                match reader.name() {
                    "signature" => signature = Some(range),
                    "producers" | "component-name" if custom.is_none() => custom = Some(range),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Regions {
        code: code.expect("hello has code"),
        data: data.expect("hello has data"),
        custom: custom.expect("hello has a producers or name section"),
        signature: signature.expect("hello is signed"),
    }
}

#[tokio::test]
async fn one_flipped_byte_anywhere_is_refused_before_compiling() {
    let signed = plugin_bytes(HELLO);
    let regions = regions(&signed);
    let cache = temp_dir("flip-cache");
    let host = host_builder().cache_dir(&cache).build().unwrap();
    let places = [
        (
            "code",
            regions.code.start + regions.code.len() / 2,
            &[ErrorKind::BadSignature][..],
        ),
        (
            "data",
            regions.data.start + regions.data.len() / 2,
            &[ErrorKind::BadSignature],
        ),
        (
            "custom section",
            regions.custom.start + 1,
            &[ErrorKind::BadSignature],
        ),
        // The last byte of the signature itself; a flipped key id would
        // instead name a key nobody trusts.
        (
            "signature",
            regions.signature.end - 1,
            &[ErrorKind::BadSignature],
        ),
        (
            "signature key id",
            regions.signature.start + 8,
            &[ErrorKind::BadSignature, ErrorKind::UntrustedKey],
        ),
    ];
    for (what, offset, kinds) in places {
        let mut tampered = signed.clone();
        tampered[offset] ^= 0x01;
        let err = load(&host, tampered).await.unwrap_err();
        assert!(kinds.contains(&err.kind()), "flip in {what}: {err}");
    }
    let stats = host.cache_stats().unwrap();
    assert_eq!(
        (stats.hits, stats.misses),
        (0, 0),
        "no tampered plugin got as far as compilation"
    );
    load(&host, signed).await.expect("the original still loads");
    std::fs::remove_dir_all(cache).ok();
}

#[tokio::test]
async fn truncated_and_empty_files_get_clear_errors() {
    let signed = plugin_bytes(HELLO);
    let host = host_builder().build().unwrap();
    let err = load(&host, signed[..signed.len() - 100].to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadSignature);
    assert!(err.to_string().contains("truncated"), "{err}");
    let err = load(&host, Vec::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Malformed);
    assert!(err.to_string().contains("empty"), "{err}");
}

#[tokio::test]
async fn two_signers_each_suffice() {
    let (a, b) = (
        SecretKey::generate().unwrap(),
        SecretKey::generate().unwrap(),
    );
    let twice = signed_by(&signed_by(&unsigned_hello(), &a), &b);
    assert_eq!(signature::list(&twice, None).unwrap().len(), 2);
    for key in [&a, &b] {
        let host = Host::builder().trust(key.public_key()).build().unwrap();
        let details = load(&host, twice.clone()).await.unwrap();
        assert_eq!(details.signers, [key.public_key().key_id().to_hex()]);
    }
    let both = Host::builder()
        .trust(a.public_key())
        .trust(b.public_key())
        .build()
        .unwrap();
    assert_eq!(load(&both, twice).await.unwrap().signers.len(), 2);
}

#[tokio::test]
async fn a_detached_signature_verifies_the_unmodified_component() {
    let key = SecretKey::generate().unwrap();
    let unsigned = unsigned_hello();
    let detached = signature::sign(&unsigned, &key).unwrap().signature;
    let host = Host::builder().trust(key.public_key()).build().unwrap();
    let spec = PluginSpec::from_bytes(HELLO, unsigned.clone())
        .detached_signature(PluginSource::Bytes(detached.into()));
    host.load(spec).await.unwrap();
    assert_greets(&host).await;

    // Someone else's detached signature does not vouch for it.
    let other = signature::sign(&unsigned, &SecretKey::generate().unwrap())
        .unwrap()
        .signature;
    let spec = PluginSpec::from_bytes("hello2", unsigned)
        .detached_signature(PluginSource::Bytes(other.into()));
    let err = host.load(spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UntrustedKey, "{err}");
}

#[tokio::test]
async fn wasmsign2_signatures_verify_in_capsule() {
    let key = SecretKey::generate().unwrap();
    let theirs = wasmsign2::SecretKey::from_bytes(&key.to_raw()).unwrap();
    let module = wasmsign2::Module::deserialize(&mut unsigned_hello().as_slice()).unwrap();
    let key_id = wasmsign2::PublicKey::from_bytes(&key.public_key().to_raw())
        .unwrap()
        .attach_default_key_id()
        .key_id()
        .cloned();
    let signed = theirs.sign(module, key_id.as_ref()).unwrap();
    let mut bytes = Vec::new();
    signed.serialize(&mut bytes).unwrap();

    let host = Host::builder().trust(key.public_key()).build().unwrap();
    let details = load(&host, bytes).await.unwrap();
    assert_eq!(details.signers, [key.public_key().key_id().to_hex()]);
    assert_greets(&host).await;

    // A key id names the same key in both tools.
    assert_eq!(key_id.unwrap(), key.public_key().key_id().0.to_vec());
}

#[tokio::test]
async fn capsule_signatures_verify_in_wasmsign2() {
    let (a, b) = (
        SecretKey::generate().unwrap(),
        SecretKey::generate().unwrap(),
    );
    let once = signed_by(&unsigned_hello(), &a);
    let pk_a = wasmsign2::PublicKey::from_bytes(&a.public_key().to_raw()).unwrap();
    pk_a.verify(&mut once.as_slice(), None)
        .expect("wasmsign2 verifies Capsule's signature");

    // Two signers, checked as a key set.
    let twice = signed_by(&once, &b);
    let pk_b = wasmsign2::PublicKey::from_bytes(&b.public_key().to_raw()).unwrap();
    let set = wasmsign2::PublicKeySet::new([pk_a.clone(), pk_b].into_iter().collect());
    assert_eq!(set.verify(&mut twice.as_slice(), None).unwrap().len(), 2);

    // A detached Capsule signature, too.
    let unsigned = unsigned_hello();
    let detached = signature::sign(&unsigned, &a).unwrap().signature;
    pk_a.verify(&mut unsigned.as_slice(), Some(&detached))
        .unwrap();

    // And wasmsign2 refuses what Capsule refuses.
    let mut tampered = once.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(pk_a.verify(&mut tampered.as_slice(), None).is_err());
}

#[tokio::test]
async fn partial_signatures_are_refused_unless_allowed() {
    let key = SecretKey::generate().unwrap();
    let theirs = wasmsign2::SecretKey::from_bytes(&key.to_raw()).unwrap();
    let module = wasmsign2::Module::deserialize(&mut unsigned_hello().as_slice()).unwrap();
    // Signed with room for extensions, then extended: the signature now
    // covers everything but the appended section.
    let (signed, _) = theirs.sign_multi(module, None, false, true).unwrap();
    let mut bytes = Vec::new();
    signed.serialize(&mut bytes).unwrap();
    bytes.extend(capsule_host::artifact::sections::encode_custom(
        "appended-later",
        b"unsigned",
    ));

    let strict = Host::builder().trust(key.public_key()).build().unwrap();
    let err = load(&strict, bytes.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadSignature);
    assert!(err.to_string().contains("only part"), "{err}");

    let lenient = Host::builder()
        .trust(key.public_key())
        .allow_partial_signatures(true)
        .build()
        .unwrap();
    load(&lenient, bytes).await.unwrap();
    assert_greets(&lenient).await;

    // A manifest appended past the signed prefix is nobody's word: hello
    // without its manifest, partially signed, then given one.
    use capsule_host::artifact::manifest::{self, MANIFEST_SECTION};
    let with = unsigned_hello();
    let document = manifest::read(&with).unwrap().unwrap().to_bytes();
    let mut without = with[..8].to_vec();
    for section in capsule_host::artifact::sections::split(&with).unwrap() {
        if !matches!(section.custom(), Some((MANIFEST_SECTION, _))) {
            without.extend_from_slice(&with[section.range]);
        }
    }
    let module = wasmsign2::Module::deserialize(&mut without.as_slice()).unwrap();
    let (signed, _) = theirs.sign_multi(module, None, false, true).unwrap();
    let mut bytes = Vec::new();
    signed.serialize(&mut bytes).unwrap();
    bytes.extend(capsule_host::artifact::sections::encode_custom(
        MANIFEST_SECTION,
        &document,
    ));
    let lenient = Host::builder()
        .trust(key.public_key())
        .allow_partial_signatures(true)
        .build()
        .unwrap();
    let err = load(&lenient, bytes).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidManifest, "{err}");
    assert!(
        err.to_string()
            .contains("past what the trusted signature covers"),
        "{err}"
    );
}

#[tokio::test]
async fn the_second_load_comes_from_the_compile_cache() {
    let dir = temp_dir("compile-cache");
    let cache = dir.join("compiled");
    let first = host_builder().cache_dir(&cache).build().unwrap();
    let details = load(&first, plugin_bytes(HELLO)).await.unwrap();
    assert!(!details.compiled_from_cache);
    let stats = first.cache_stats().unwrap();
    assert_eq!((stats.hits, stats.misses, stats.stored), (0, 1, 1));
    drop(first);

    let second = host_builder().cache_dir(&cache).build().unwrap();
    let details = load(&second, plugin_bytes(HELLO)).await.unwrap();
    assert!(details.compiled_from_cache);
    assert_eq!(second.cache_stats().unwrap().hits, 1);
    assert_greets(&second).await;

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the cache is private");
    }

    // A compiled artifact is never accepted as a plugin.
    let artifact = std::fs::read_dir(&cache)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|e| e == "cwasm"))
        .expect("the cache holds the compiled plugin");
    let lenient = host_builder().allow_unsigned(true).build().unwrap();
    let err = lenient
        .load(PluginSpec::from_path(&artifact).with_name("precompiled"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Malformed);
    assert!(err.to_string().contains("precompiled"), "{err}");

    // A corrupted cache entry is discarded and the plugin recompiled.
    std::fs::write(&artifact, b"garbage").unwrap();
    let third = host_builder().cache_dir(&cache).build().unwrap();
    let details = load(&third, plugin_bytes(HELLO)).await.unwrap();
    assert!(!details.compiled_from_cache);
    assert_eq!(third.cache_stats().unwrap().errors, 1);
    assert_greets(&third).await;
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_test_key_signed_every_plugin() {
    for name in capsule_tests::plugins::ALL {
        let bytes = plugin_bytes(name);
        signature::verify(&bytes, None, &[test_key()], false)
            .unwrap_or_else(|err| panic!("{name}: {err}"));
    }
}
