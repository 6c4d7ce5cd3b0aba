//! The cache of compiled components: a host-private directory (mode 0700,
//! owned by this user) of wasmtime artifacts keyed by the plugin's SHA-256
//! digest and the engine's compatibility hash.
//!
//! Deserializing a compiled artifact runs native code without validation,
//! so this is the only place Capsule ever deserializes, and only files it
//! wrote itself into a directory nobody else can write, for plugins whose
//! signature has already been verified.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use wasmtime::Engine;
use wasmtime::component::Component;

use super::sha256_hex;

/// Why the cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("compile cache {dir}: {reason}")]
pub struct CacheError {
    /// The directory.
    pub dir: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Counters of cache use since the host started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Loads served from a cached artifact.
    pub hits: u64,
    /// Loads that had to compile.
    pub misses: u64,
    /// Artifacts written.
    pub stored: u64,
    /// Cached artifacts that failed to load (and were removed) or to be
    /// written.
    pub errors: u64,
}

/// A directory of compiled components.
pub(crate) struct CompileCache {
    dir: PathBuf,
    hits: AtomicU64,
    misses: AtomicU64,
    stored: AtomicU64,
    errors: AtomicU64,
}

impl CompileCache {
    /// Opens (creating if needed) a private cache directory.
    pub(crate) fn open(dir: &Path) -> Result<CompileCache, CacheError> {
        let fail = |reason: String| CacheError {
            dir: dir.display().to_string(),
            reason,
        };
        create_private_dir(dir).map_err(|err| fail(format!("cannot create: {err}")))?;
        check_private(dir).map_err(fail)?;
        Ok(CompileCache {
            dir: dir.to_owned(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// The file holding the artifact of `digest` for `engine`.
    fn path_for(&self, engine: &Engine, digest: &str) -> PathBuf {
        // The compatibility hash changes with the wasmtime version and every
        // setting that affects compiled code, so an artifact built by another
        // engine is never even looked at.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let key = format!("{digest}-{:016x}", hasher.finish());
        self.dir
            .join(format!("{}.cwasm", sha256_hex(key.as_bytes())))
    }

    /// The cached component for `digest`, if a usable one exists.
    pub(crate) fn load(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path_for(engine, digest);
        // Read into memory rather than map the file: a mapped file that is
        // truncated underneath a running host would crash it with SIGBUS.
        let Ok(bytes) = std::fs::read(&path) else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        // SAFETY: `path` is in a directory that only this user can write
        // (checked when the cache was opened), it was written by `store`
        // from `Component::serialize`, and its name binds it to this plugin
        // digest and this engine's compatibility hash.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(component)
            }
            Err(err) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %crate::error::chain(&err),
                    "discarding an unusable compiled artifact"
                );
                let _ = std::fs::remove_file(&path);
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Stores a freshly compiled component. Failure only costs a recompile
    /// next time, so it is logged, not returned.
    pub(crate) fn store(&self, engine: &Engine, digest: &str, component: &Component) {
        let path = self.path_for(engine, digest);
        let written = component
            .serialize()
            .map_err(|err| crate::error::chain(&err))
            .and_then(|bytes| write_atomically(&path, &bytes).map_err(|err| err.to_string()));
        match written {
            Ok(()) => {
                self.stored.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %path.display(), error = %err, "cannot cache a compiled plugin");
            }
        }
    }
}

/// Writes to a temporary file in the same directory, then renames it into
/// place, so a reader never sees half an artifact.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = private_file_options().open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn private_file_options() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    options
}

#[cfg(not(unix))]
fn private_file_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    options
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// The directory must be a real directory (not a symlink), owned by this
/// user, with no permissions for group or others.
#[cfg(unix)]
fn check_private(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(dir).map_err(|err| err.to_string())?;
    if !meta.is_dir() {
        return Err("is not a directory (symlinks are refused)".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(format!(
            "is owned by uid {}, not by this user ({uid})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        // Our own directory with loose permissions (e.g. made by hand):
        // tighten it rather than trust it as it is.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|err| {
            format!(
                "has permissions {:o} and cannot be made private: {err}",
                meta.mode() & 0o777
            )
        })?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_dir: &Path) -> Result<(), String> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("capsule-cache-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn creates_a_private_directory() {
        let dir = temp_dir("create");
        CompileCache::open(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tightens_loose_permissions_and_refuses_symlinks() {
        let dir = temp_dir("loose");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        CompileCache::open(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        let link = temp_dir("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = CompileCache::open(&link)
            .err()
            .expect("a symlink is refused");
        assert!(err.reason.contains("symlink"), "{err}");
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
