//! Bytes that are not a usable component are refused with `malformed` (or
//! `io` when unreadable), before anything is compiled, and the host keeps
//! serving. These tests let unsigned plugins load, so what they see is the
//! structural check, not the signature check (see `signing`).

use capsule_host::{ErrorKind, PluginSpec, Request};
use capsule_tests::{plugin_bytes, plugin_path, plugins::HELLO};

use crate::host;

async fn load_error(name: &str, bytes: Vec<u8>) -> capsule_host::LoadError {
    capsule_tests::host_builder()
        .allow_unsigned(true)
        .build()
        .unwrap()
        .load(PluginSpec::from_bytes(name, bytes))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn garbage_empty_truncated_and_core_modules_are_malformed() {
    let hello = plugin_bytes(HELLO);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("garbage", b"this is not wasm at all".to_vec()),
        ("header-only", b"\0asm".to_vec()),
        ("truncated", hello[..hello.len() / 2].to_vec()),
        ("core-module", b"\0asm\x01\0\0\0".to_vec()),
    ];
    for (name, bytes) in cases {
        let err = load_error(name, bytes).await;
        assert_eq!(err.kind(), ErrorKind::Malformed, "{name}: {err}");
        assert_eq!(err.plugin, name);
    }
}

#[tokio::test]
async fn a_corrupted_body_is_malformed() {
    let mut bytes = plugin_bytes(HELLO);
    // Overwrite a stretch in the middle of the code with 0xff bytes.
    let middle = bytes.len() / 2;
    bytes[middle..middle + 64].fill(0xff);
    let err = load_error("corrupt", bytes).await;
    assert!(
        matches!(err.kind(), ErrorKind::Malformed | ErrorKind::Compile),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_file_is_an_io_error() {
    let err = host()
        .load(PluginSpec::from_path("/nonexistent/plugin.wasm"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(err.plugin, "plugin");
}

#[tokio::test]
async fn the_host_keeps_serving_after_refusing_a_plugin() {
    let host = host();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    let err = host
        .load(PluginSpec::from_bytes(
            "bad",
            b"\0asm\x02\0\0\0garbage".to_vec(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Malformed);
    let outcome = host
        .call(HELLO, Request::new("greet", r#"{"name":"Ada"}"#))
        .await
        .unwrap();
    assert_eq!(
        outcome.response.text(),
        Some(r#"{"greeting":"Hello, Ada!"}"#)
    );
}
