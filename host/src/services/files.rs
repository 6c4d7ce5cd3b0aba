//! The `files` service: standard `wasi:filesystem`, reaching only the host
//! directories the operator mounted, each read-only or read-write.
//!
//! wasmtime-wasi resolves every guest path inside its preopened directory
//! with capability-based lookups (cap-std): `..` cannot climb out of a
//! mount, absolute paths only name other mounts, and symlinks are followed
//! only while they stay inside the mount.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wasmtime::component::Linker;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::{
    Availability, Holds, Import, PolicyContext, PrepareContext, Service, StoreContext, Views,
};
use crate::bounds::Invalid;

/// What a plugin may do inside a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Whether the host directory is created when the plugin loads (if it
    /// does not exist yet, `host` is absolute but not canonical until then).
    pub create: bool,
}

impl Mount {
    /// A mount of `host` (canonicalised here; it must be an existing
    /// directory) at the absolute guest path `guest`.
    pub fn new(host: &Path, guest: &str, access: Access) -> Result<Mount, String> {
        check_guest(guest)?;
        let canonical = host
            .canonicalize()
            .map_err(|err| format!("mount {}: {err}", host.display()))?;
        if !canonical.is_dir() {
            return Err(format!("mount {} is not a directory", host.display()));
        }
        Ok(Mount {
            host: canonical,
            guest: normal_guest(guest),
            access,
            create: false,
        })
    }

    /// A mount of a host directory that is created when the plugin loads.
    /// Nothing on disk changes until then.
    pub fn created(host: &Path, guest: &str, access: Access) -> Result<Mount, String> {
        check_guest(guest)?;
        if !host.is_absolute() {
            return Err(format!("mount {} must be an absolute path", host.display()));
        }
        Ok(Mount {
            host: host.to_owned(),
            guest: normal_guest(guest),
            access,
            create: true,
        })
    }

    /// The directory on disk, created first if the mount asks for it and
    /// it is missing.
    fn materialise(&self) -> Result<Mount, String> {
        if self.create && !self.host.exists() {
            std::fs::create_dir_all(&self.host)
                .map_err(|err| format!("cannot create mount {}: {err}", self.host.display()))?;
        }
        Mount::new(&self.host, &self.guest, self.access)
    }
}

fn check_guest(guest: &str) -> Result<(), String> {
    if !guest.starts_with('/') || guest.split('/').any(|part| part == "..") {
        return Err(format!(
            "guest path `{guest}` must be absolute and must not contain `..`"
        ));
    }
    Ok(())
}

fn normal_guest(guest: &str) -> String {
    let trimmed = guest.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }.to_owned()
}

/// How a policy file writes one mount:
/// `{ host = "data/in", guest = "/data", access = "read-only", create = true }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MountPolicy {
    pub(crate) host: String,
    pub(crate) guest: String,
    pub(crate) access: Access,
    /// Create the host directory (when the plugin loads) if it is missing.
    #[serde(default)]
    pub(crate) create: bool,
}

/// A mount without its host path, for anyone who may list plugins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountSummary {
    /// Where the plugin sees it.
    pub guest: String,
    /// Read-only or read-write.
    pub access: Access,
}

/// The `files` service.
pub(crate) struct Files;

impl Service for Files {
    const NAME: &'static str = "files";
    const IMPORTS: &'static [Import] = &[Import::package("wasi:filesystem")];
    const BUDGETS: &'static str = "open files and directories count in the instance's \
        `max_handles`; a read allocates at most 64 KiB at a time";

    type Grant = Vec<Mount>;
    type Policy = Vec<MountPolicy>;
    type Summary = Vec<MountSummary>;
    type Prepared = Vec<Mount>;
    type State = ();

    fn from_policy(
        mounts: Vec<MountPolicy>,
        context: &PolicyContext<'_>,
    ) -> Result<Vec<Mount>, Invalid> {
        mounts
            .into_iter()
            .enumerate()
            .map(|(i, mount)| {
                let host = context.base.join(&mount.host);
                let resolved = if mount.create && !host.exists() {
                    std::path::absolute(&host)
                        .map_err(|err| err.to_string())
                        .and_then(|absolute| Mount::created(&absolute, &mount.guest, mount.access))
                } else {
                    // `create` is kept once the directory exists, so the
                    // policy read again (an apply) is the same grant.
                    Mount::new(&host, &mount.guest, mount.access).map(|resolved| Mount {
                        create: mount.create,
                        ..resolved
                    })
                };
                resolved.map_err(|message| Invalid::new(format!("[{i}].host"), message))
            })
            .collect()
    }

    fn validate(mounts: &Vec<Mount>) -> Result<(), Invalid> {
        for (i, mount) in mounts.iter().enumerate() {
            let field = || format!("[{i}]");
            check_guest(&mount.guest).map_err(|message| Invalid::new(field(), message))?;
            for other in &mounts[..i] {
                if nested(&mount.guest, &other.guest) {
                    return Err(Invalid::new(
                        field(),
                        format!(
                            "guest path `{}` is inside (or is) the mount at `{}`",
                            mount.guest, other.guest
                        ),
                    ));
                }
                if mount.host == other.host && mount.access != other.access {
                    return Err(Invalid::new(
                        field(),
                        format!(
                            "{} is mounted both read-only and read-write",
                            mount.host.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn availability(mounts: &Vec<Mount>) -> Availability {
        Availability::granted_if(!mounts.is_empty())
    }

    fn summary(mounts: &Vec<Mount>) -> Vec<MountSummary> {
        mounts
            .iter()
            .map(|mount| MountSummary {
                guest: mount.guest.clone(),
                access: mount.access,
            })
            .collect()
    }

    fn prepare(mounts: &Vec<Mount>, _context: &PrepareContext<'_>) -> Result<Vec<Mount>, String> {
        mounts.iter().map(Mount::materialise).collect()
    }

    fn new_state(mounts: &Vec<Mount>, store: &mut StoreContext<'_>) -> Result<(), String> {
        preopen(store.wasi, mounts)
    }

    fn add_to_linker<T: Holds<Self> + Views>(_linker: &mut Linker<T>) -> wasmtime::Result<()> {
        // `wasi:filesystem` is linked with the rest of WASI.
        Ok(())
    }
}

/// Whether one guest path is the other or inside it.
fn nested(a: &str, b: &str) -> bool {
    let inside = |inner: &str, outer: &str| {
        inner == outer
            || outer == "/"
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    inside(a, b) || inside(b, a)
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
    use wasmtime::component::Resource;
    use wasmtime_wasi::filesystem::Descriptor;
    use wasmtime_wasi::p2::bindings::filesystem::preopens::Host as _;
    use wasmtime_wasi::p2::bindings::filesystem::types::{
        DescriptorFlags, ErrorCode, HostDescriptor as _, OpenFlags, PathFlags,
    };

    use crate::services::harness::Harness;

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

    #[test]
    fn mounts_may_not_nest_or_disagree_on_access() {
        let dir = std::env::temp_dir();
        let ro = |guest| Mount::new(&dir, guest, Access::ReadOnly).unwrap();
        let rw = |guest| Mount::new(&dir, guest, Access::ReadWrite).unwrap();
        assert!(Files::validate(&vec![ro("/a"), ro("/b")]).is_ok());
        assert!(Files::validate(&vec![ro("/a"), ro("/a/b")]).is_err());
        assert!(Files::validate(&vec![ro("/a/b"), ro("/a")]).is_err());
        assert!(Files::validate(&vec![ro("/"), ro("/x")]).is_err());
        assert!(Files::validate(&vec![ro("/ab"), ro("/a")]).is_ok());
        assert_eq!(
            Files::validate(&vec![ro("/a"), rw("/b")])
                .unwrap_err()
                .field,
            "[1]"
        );
    }

    #[test]
    fn a_mount_to_create_changes_nothing_until_the_plugin_loads() {
        let dir =
            std::env::temp_dir().join(format!("capsule-created-mount-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mount = Mount::created(&dir, "/out", Access::ReadWrite).unwrap();
        assert!(!dir.exists());
        let real = mount.materialise().unwrap();
        assert!(dir.is_dir());
        assert_eq!(real.host, dir.canonicalize().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The directories a plugin's store preopens, by guest path.
    fn preopens(files: &mut Harness<Files>) -> Vec<(Resource<Descriptor>, String)> {
        files.filesystem().get_directories().unwrap()
    }

    /// Opens `path` in preopen `dir` as a plugin would.
    async fn open(
        files: &mut Harness<Files>,
        dir: &Resource<Descriptor>,
        path: &str,
        create: bool,
        flags: DescriptorFlags,
    ) -> Result<(), ErrorCode> {
        let dir = Resource::new_borrow(dir.rep());
        let oflags = if create {
            OpenFlags::CREATE
        } else {
            OpenFlags::empty()
        };
        match files
            .filesystem()
            .open_at(dir, PathFlags::empty(), path.into(), oflags, flags)
            .await
        {
            Ok(_) => Ok(()),
            Err(err) => Err(err.downcast().unwrap()),
        }
    }

    #[tokio::test]
    async fn without_a_grant_no_directory_exists() {
        let mut files = Harness::<Files>::not_granted();
        assert!(preopens(&mut files).is_empty());
    }

    #[tokio::test]
    async fn a_read_only_mount_reads_and_refuses_every_write() {
        let dir = crate::test_support::temp_dir("files-harness-ro");
        std::fs::write(dir.join("a.txt"), "alpha").unwrap();
        let policy = r#"[{ host = "files-harness-ro", guest = "/data", access = "read-only" }]"#;
        let base = dir.parent().unwrap();
        let policy = policy.replace(
            "files-harness-ro",
            dir.file_name().unwrap().to_str().unwrap(),
        );
        let mut files = Harness::<Files>::from_policy(&policy, base).unwrap();
        let mounted = preopens(&mut files);
        assert_eq!(mounted.len(), 1);
        assert_eq!(mounted[0].1, "/data");
        let root = &mounted[0].0;
        open(&mut files, root, "a.txt", false, DescriptorFlags::READ)
            .await
            .unwrap();
        for (path, create) in [("a.txt", false), ("new.txt", true)] {
            let err = open(&mut files, root, path, create, DescriptorFlags::WRITE).await;
            assert_eq!(err, Err(ErrorCode::NotPermitted), "{path}");
        }
        let err = open(
            &mut files,
            root,
            "../escape.txt",
            true,
            DescriptorFlags::WRITE,
        )
        .await;
        assert_eq!(err, Err(ErrorCode::NotPermitted));
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "alpha");
        assert!(!dir.join("new.txt").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_mount_to_create_exists_once_the_plugin_loads_and_takes_writes() {
        let dir = std::env::temp_dir().join(format!("capsule-harness-rw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let policy = format!(
            r#"[{{ host = "{}", guest = "/out", access = "read-write", create = true }}]"#,
            dir.display()
        );
        let mut files = Harness::<Files>::from_policy(&policy, Path::new("/")).unwrap();
        let mounted = preopens(&mut files);
        open(
            &mut files,
            &mounted[0].0,
            "new.txt",
            true,
            DescriptorFlags::WRITE,
        )
        .await
        .unwrap();
        assert!(dir.join("new.txt").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
