//! The `files` service: standard `wasi:filesystem`, reaching only the host
//! directories the operator mounted, each read-only or read-write.
//!
//! wasmtime-wasi resolves every guest path inside its preopened directory
//! with capability-based lookups (cap-std): `..` cannot climb out of a
//! mount, absolute paths only name other mounts, and symlinks are followed
//! only while they stay inside the mount.

use std::path::{Path, PathBuf};

use serde::Serialize;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// What a plugin may do inside a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Read files and list directories.
    ReadOnly,
    /// Also create, write, rename and delete.
    ReadWrite,
}

/// One host directory made visible to a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// The host directory, canonical (absolute, symlinks resolved).
    pub host: PathBuf,
    /// Where the plugin sees it, e.g. `/data`.
    pub guest: String,
    /// Read-only or read-write.
    pub access: Access,
}

impl Mount {
    /// A mount of `host` (canonicalised here; it must be an existing
    /// directory) at the absolute guest path `guest`.
    pub fn new(host: &Path, guest: &str, access: Access) -> Result<Mount, String> {
        if !guest.starts_with('/') || guest.split('/').any(|part| part == "..") {
            return Err(format!(
                "guest path `{guest}` must be absolute and must not contain `..`"
            ));
        }
        let canonical = host
            .canonicalize()
            .map_err(|err| format!("mount {}: {err}", host.display()))?;
        if !canonical.is_dir() {
            return Err(format!("mount {} is not a directory", host.display()));
        }
        let trimmed = guest.trim_end_matches('/');
        Ok(Mount {
            host: canonical,
            guest: if trimmed.is_empty() { "/" } else { trimmed }.to_owned(),
            access,
        })
    }
}

/// Preopens every mount in a WASI context.
pub(crate) fn preopen(builder: &mut WasiCtxBuilder, mounts: &[Mount]) -> Result<(), String> {
    for mount in mounts {
        let perms = match mount.access {
            Access::ReadOnly => FsPerms::ReadOnly,
            Access::ReadWrite => FsPerms::ReadWrite,
        };
        builder
            .preopened_dir(&mount.host, &mount.guest, perms)
            .map_err(|err| format!("cannot open mount {}: {err}", mount.host.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_canonical_and_guest_paths_absolute() {
        let dir = std::env::temp_dir();
        let mount = Mount::new(&dir.join("."), "/data/", Access::ReadOnly).unwrap();
        assert_eq!(mount.host, dir.canonicalize().unwrap());
        assert_eq!(mount.guest, "/data");
        assert!(Mount::new(&dir, "data", Access::ReadOnly).is_err());
        assert!(Mount::new(&dir, "/data/../etc", Access::ReadOnly).is_err());
        assert!(Mount::new(Path::new("/nonexistent/dir"), "/d", Access::ReadOnly).is_err());
    }
}
