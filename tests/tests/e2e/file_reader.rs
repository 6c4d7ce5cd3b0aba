//! `file-reader`: files through preopened mounts only, read-only or
//! read-write as granted.

use capsule_host::services::files::{Access, Mount};
use capsule_host::{Grants, PluginError};
use capsule_tests::plugins::FILE_READER;
use capsule_tests::temp_dir;
use serde_json::json;

use crate::grants::{call_json, host_with, plugin_error};

fn mounts(ro: &std::path::Path, rw: &std::path::Path) -> Grants {
    Grants {
        files: vec![
            Mount::new(ro, "/data", Access::ReadOnly).unwrap(),
            Mount::new(rw, "/scratch", Access::ReadWrite).unwrap(),
        ],
        ..Grants::default()
    }
}

/// How a `denied` plugin error with `message` prints.
fn denied(message: &str) -> String {
    format!("{:?}", PluginError::Denied(message.into()))
}

/// How a `failed` plugin error with `message` prints.
fn failed(message: &str) -> String {
    format!("{:?}", PluginError::Failed(message.into()))
}

#[tokio::test]
async fn reads_lists_and_writes_within_its_mounts() {
    let (ro, rw) = (temp_dir("files-ro"), temp_dir("files-rw"));
    std::fs::write(ro.join("a.txt"), "alpha").unwrap();
    std::fs::write(ro.join("b.txt"), "beta").unwrap();
    let host = host_with(FILE_READER, mounts(&ro, &rw)).await;

    let read = call_json(&host, FILE_READER, "read", json!({"path": "/data/a.txt"})).await;
    assert_eq!(read["content"], "alpha");
    let list = call_json(&host, FILE_READER, "list", json!({"path": "/data"})).await;
    assert_eq!(list["entries"], json!(["a.txt", "b.txt"]));
    let write = call_json(
        &host,
        FILE_READER,
        "write",
        json!({"path": "/scratch/out.txt", "content": "written"}),
    )
    .await;
    assert_eq!(write["bytes"], 7);
    assert_eq!(
        std::fs::read_to_string(rw.join("out.txt")).unwrap(),
        "written"
    );
    std::fs::remove_dir_all(ro).ok();
    std::fs::remove_dir_all(rw).ok();
}

#[tokio::test]
async fn a_read_only_mount_refuses_writes() {
    let (ro, rw) = (temp_dir("files-ro2"), temp_dir("files-rw2"));
    std::fs::write(ro.join("a.txt"), "alpha").unwrap();
    let host = host_with(FILE_READER, mounts(&ro, &rw)).await;
    let err = plugin_error(
        &host,
        FILE_READER,
        "write",
        json!({"path": "/data/a.txt", "content": "overwritten"}),
    )
    .await;
    assert_eq!(
        format!("{err:?}"),
        denied("write `/data/a.txt`: Operation not permitted (os error 63)")
    );
    assert_eq!(std::fs::read_to_string(ro.join("a.txt")).unwrap(), "alpha");
    let err = plugin_error(
        &host,
        FILE_READER,
        "write",
        json!({"path": "/data/new.txt", "content": "x"}),
    )
    .await;
    assert_eq!(
        format!("{err:?}"),
        denied("write `/data/new.txt`: Operation not permitted (os error 63)")
    );
    assert!(!ro.join("new.txt").exists());
    std::fs::remove_dir_all(ro).ok();
    std::fs::remove_dir_all(rw).ok();
}

#[tokio::test]
async fn nothing_outside_the_mounts_is_visible() {
    let (ro, rw) = (temp_dir("files-ro3"), temp_dir("files-rw3"));
    let host = host_with(FILE_READER, mounts(&ro, &rw)).await;
    // Outside every mount, nothing exists; climbing out of one is refused.
    let missing = "No such file or directory (os error 44)";
    let climbing = "Operation not permitted (os error 63)";
    for (op, path, expected) in [
        (
            "read",
            "/etc/passwd",
            failed(&format!("read `/etc/passwd`: {missing}")),
        ),
        (
            "read",
            "/data/../../../etc/passwd",
            denied(&format!("read `/data/../../../etc/passwd`: {climbing}")),
        ),
        ("list", "/", failed(&format!("list `/`: {missing}"))),
    ] {
        let err = plugin_error(&host, FILE_READER, op, json!({"path": path})).await;
        assert_eq!(format!("{err:?}"), expected);
    }
    // And with no files grant, not even the mounts exist.
    let host = host_with(FILE_READER, Grants::default()).await;
    let err = plugin_error(&host, FILE_READER, "list", json!({"path": "/data"})).await;
    assert_eq!(
        format!("{err:?}"),
        failed(&format!("list `/data`: {missing}"))
    );
    std::fs::remove_dir_all(ro).ok();
    std::fs::remove_dir_all(rw).ok();
}
