//! `fs-escape` tries `..`, absolute paths and symlinks planted inside its
//! mount that point outside it: every attempt fails, nothing outside is read
//! or written.

use capsule_host::Grants;
use capsule_host::services::files::{Access, Mount};
use capsule_tests::plugins::FS_ESCAPE;
use capsule_tests::temp_dir;
use serde_json::{Value, json};

use crate::grants::{call_json, host_with};

#[tokio::test]
async fn no_escape_succeeds() {
    let root = temp_dir("fs-escape");
    let (jail, outside) = (root.join("jail"), root.join("outside"));
    std::fs::create_dir_all(&jail).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&outside, jail.join("link-out")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", jail.join("abs-link")).unwrap();
    }
    let grants = Grants {
        files: vec![Mount::new(&jail, "/data", Access::ReadWrite).unwrap()],
        ..Grants::default()
    };
    let host = host_with(FS_ESCAPE, grants).await;
    let report = call_json(&host, FS_ESCAPE, "run", json!({"mount": "/data"})).await;
    let attempts = report["attempts"].as_array().expect("a list of attempts");
    assert!(attempts.len() >= 8, "{report}");
    for attempt in attempts {
        assert_eq!(attempt["escaped"], Value::Bool(false), "{attempt}");
    }
    assert_eq!(report["escaped_any"], false);
    assert!(
        !root.join("escaped.txt").exists(),
        "nothing was written outside the jail"
    );
    assert!(!std::path::Path::new("/tmp/capsule-escape").exists());
    std::fs::remove_dir_all(root).ok();
}
