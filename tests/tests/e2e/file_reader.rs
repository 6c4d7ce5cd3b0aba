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
    assert!(
        matches!(err, PluginError::Denied(_) | PluginError::Failed(_)),
        "{err:?}"
    );
    assert_eq!(std::fs::read_to_string(ro.join("a.txt")).unwrap(), "alpha");
    let err = plugin_error(
        &host,
        FILE_READER,
        "write",
        json!({"path": "/data/new.txt", "content": "x"}),
    )
    .await;
    assert!(
        matches!(err, PluginError::Denied(_) | PluginError::Failed(_)),
        "{err:?}"
    );
    assert!(!ro.join("new.txt").exists());
    std::fs::remove_dir_all(ro).ok();
    std::fs::remove_dir_all(rw).ok();
}

#[tokio::test]
async fn nothing_outside_the_mounts_is_visible() {
    let (ro, rw) = (temp_dir("files-ro3"), temp_dir("files-rw3"));
    let host = host_with(FILE_READER, mounts(&ro, &rw)).await;
    for path in ["/etc/passwd", "/data/../../../etc/passwd", "/"] {
        let op = if path == "/" { "list" } else { "read" };
        plugin_error(&host, FILE_READER, op, json!({"path": path})).await;
    }
    // And with no files grant, not even the mounts exist.
    let host = host_with(FILE_READER, Grants::default()).await;
    plugin_error(&host, FILE_READER, "list", json!({"path": "/data"})).await;
    std::fs::remove_dir_all(ro).ok();
    std::fs::remove_dir_all(rw).ok();
}
