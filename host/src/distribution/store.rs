//! The local store of pulled plugins: components by content digest
//! (`blobs/sha256/<hex>`), and for each reference pulled by tag the last
//! digest it resolved to (`refs/<hash of the reference>.json`), so a host
//! whose registry is down, or that runs `--offline`, still finds what it
//! pulled before.
//!
//! Budgets: the store holds at most `max_bytes` of components. Making room
//! removes the least recently written components that no remembered
//! reference names; when that is not enough the pull fails as
//! [`DistributionError::StoreFull`]. A component is written to `tmp/` while
//! its digest is computed, and renamed into place only when it matches.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{DistributionError, OciReference};

/// The largest `refs/*.json` record read back.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// The user's default store: `$XDG_CACHE_HOME/capsule/plugins`, else
/// `~/.cache/capsule/plugins`, else `.capsule/plugins`.
pub fn default_dir() -> PathBuf {
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(cache).join("capsule/plugins");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".cache/capsule/plugins");
    }
    PathBuf::from(".capsule/plugins")
}

/// What a reference resolved to when it was last pulled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRef {
    /// The reference as written (`localhost:5000/acme/hello:0.1.0`).
    pub reference: String,
    /// The digest of its image manifest.
    pub manifest_digest: String,
    /// The digest of its component (the `application/wasm` layer).
    pub component_digest: String,
    /// The manifest's annotations (the plugin's metadata).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When it was pulled, in seconds since the Unix epoch.
    pub pulled_at: u64,
}

/// A content-addressed directory of pulled components.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    max_bytes: u64,
}

impl Store {
    /// Opens (creating it, readable by this user only) the store in `dir`,
    /// bounded to `max_bytes` of components.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Store, DistributionError> {
        let store = Store {
            dir: dir.to_owned(),
            max_bytes,
        };
        for sub in ["blobs/sha256", "refs", "tmp"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|err| store.io(&path, err))?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the component with `digest` (`sha256:<hex>`) lives, whether or
    /// not it is there.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join("blobs/sha256").join(hex)
    }

    /// The component with `digest`, if the store has it and its bytes still
    /// hash to it (a damaged file is removed).
    pub fn verified_blob(&self, digest: &str) -> Option<PathBuf> {
        let path = self.blob_path(digest);
        let bytes = crate::input::read_file(&path, crate::input::MAX_COMPONENT_BYTES).ok()?;
        if sha256_digest(&bytes) == digest {
            Some(path)
        } else {
            tracing::warn!(path = %path.display(), "removing a damaged component from the plugin store");
            let _ = std::fs::remove_file(&path);
            None
        }
    }

    /// What `reference` resolved to when it was last pulled.
    pub fn recall(&self, reference: &OciReference) -> Option<StoredRef> {
        let path = self.record_path(reference);
        let bytes = crate::input::read_file(&path, MAX_RECORD_BYTES).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Records what `reference` resolved to, under the reference and under
    /// its manifest digest (so the same plugin named by digest is found
    /// without asking the registry).
    pub fn remember(
        &self,
        reference: &OciReference,
        record: &StoredRef,
    ) -> Result<(), DistributionError> {
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        self.write_atomically(&self.record_path(reference), &bytes)?;
        let by_digest = reference.pinned(&record.manifest_digest);
        self.write_atomically(&self.record_path(&by_digest), &bytes)
    }

    /// Starts writing a component of (at most) `size` bytes that should
    /// hash to `digest`, making room for it first.
    pub fn writer(
        &self,
        reference: &str,
        digest: &str,
        size: u64,
    ) -> Result<BlobWriter, DistributionError> {
        self.make_room(size, digest)?;
        let tmp = self.dir.join("tmp").join(format!(
            "{}.{}",
            digest.trim_start_matches("sha256:"),
            std::process::id()
        ));
        let file = std::fs::File::create(&tmp).map_err(|err| self.io(&tmp, err))?;
        Ok(BlobWriter {
            store: self.clone(),
            reference: reference.to_owned(),
            expected: digest.to_owned(),
            limit: size,
            written: 0,
            hasher: Sha256::new(),
            file: Some(file),
            tmp,
        })
    }

    /// Bytes of components the store holds.
    pub fn used_bytes(&self) -> u64 {
        self.blobs().iter().map(|(_, size, _)| size).sum()
    }

    /// Removes unnamed components, oldest first, until `needed` more bytes
    /// fit; `keep` is never removed.
    fn make_room(&self, needed: u64, keep: &str) -> Result<(), DistributionError> {
        let full = || DistributionError::StoreFull {
            store: self.dir.clone(),
            needed,
            limit: self.max_bytes,
        };
        if needed > self.max_bytes {
            return Err(full());
        }
        let mut blobs = self.blobs();
        let mut used: u64 = blobs.iter().map(|(_, size, _)| size).sum();
        if used + needed <= self.max_bytes {
            return Ok(());
        }
        let named = self.named_digests();
        blobs.sort_by_key(|(_, _, modified)| *modified);
        for (digest, size, _) in blobs {
            if used + needed <= self.max_bytes {
                break;
            }
            if named.contains(&digest) || digest == keep {
                continue;
            }
            if std::fs::remove_file(self.blob_path(&digest)).is_ok() {
                used -= size;
            }
        }
        if used + needed <= self.max_bytes {
            Ok(())
        } else {
            Err(full())
        }
    }

    /// Every component: digest, size, modification time.
    fn blobs(&self) -> Vec<(String, u64, std::time::SystemTime)> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("blobs/sha256")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let meta = entry.metadata().ok()?;
                meta.is_file().then(|| {
                    (
                        format!("sha256:{}", entry.file_name().to_string_lossy()),
                        meta.len(),
                        meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                    )
                })
            })
            .collect()
    }

    /// Components some remembered reference names.
    fn named_digests(&self) -> HashSet<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("refs")) else {
            return HashSet::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let bytes = crate::input::read_file(&entry.path(), MAX_RECORD_BYTES).ok()?;
                serde_json::from_slice::<StoredRef>(&bytes).ok()
            })
            .map(|record| record.component_digest)
            .collect()
    }

    /// Where the record of `reference` is: keyed by registry, repository
    /// and digest when it has one (a tag beside a digest changes nothing),
    /// else by its tag.
    fn record_path(&self, reference: &OciReference) -> PathBuf {
        let key = match &reference.digest {
            Some(digest) => format!("{}/{}@{digest}", reference.registry, reference.repository),
            None => reference.to_string(),
        };
        let key = sha256_digest(key.as_bytes());
        self.dir
            .join("refs")
            .join(format!("{}.json", &key["sha256:".len()..]))
    }

    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<(), DistributionError> {
        let tmp = self.dir.join("tmp").join(format!(
            "{}.{}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        std::fs::write(&tmp, bytes).map_err(|err| self.io(&tmp, err))?;
        std::fs::rename(&tmp, path).map_err(|err| self.io(path, err))
    }

    fn io(&self, path: &Path, err: std::io::Error) -> DistributionError {
        DistributionError::Store {
            store: self.dir.clone(),
            cause: format!("{}: {err}", path.display()),
        }
    }
}

/// A component being written into the store: hashed as it is written,
/// bounded to the size its manifest declared, and moved into place only if
/// its digest matches.
pub struct BlobWriter {
    store: Store,
    reference: String,
    expected: String,
    limit: u64,
    written: u64,
    hasher: Sha256,
    file: Option<std::fs::File>,
    tmp: PathBuf,
}

impl BlobWriter {
    /// Appends `chunk`; more bytes than declared is an error.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), DistributionError> {
        self.written += chunk.len() as u64;
        if self.written > self.limit {
            return Err(DistributionError::TooLarge {
                reference: self.reference.clone(),
                what: "component",
                limit: self.limit,
            });
        }
        self.hasher.update(chunk);
        let file = self.file.as_mut().expect("written before finish");
        file.write_all(chunk)
            .map_err(|err| self.store.io(&self.tmp, err))
    }

    /// Checks the digest and moves the component into place; returns its
    /// path.
    pub fn finish(mut self) -> Result<PathBuf, DistributionError> {
        let file = self.file.take().expect("finished once");
        file.sync_all()
            .map_err(|err| self.store.io(&self.tmp, err))?;
        drop(file);
        let actual = format!(
            "sha256:{}",
            crate::artifact::hex(&std::mem::take(&mut self.hasher).finalize())
        );
        if actual != self.expected {
            return Err(DistributionError::DigestMismatch {
                reference: self.reference.clone(),
                what: "component",
                expected: self.expected.clone(),
                actual,
            });
        }
        let path = self.store.blob_path(&self.expected);
        std::fs::rename(&self.tmp, &path).map_err(|err| self.store.io(&path, err))?;
        Ok(path)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // A write that failed or was abandoned leaves nothing behind.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::artifact::sha256_hex(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "capsule-store-{}-{}",
            std::process::id(),
            crate::artifact::sha256_hex(format!("{:?}", std::time::Instant::now()).as_bytes())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn put(store: &Store, bytes: &[u8]) -> Result<PathBuf, DistributionError> {
        let digest = sha256_digest(bytes);
        let mut writer = store.writer("test", &digest, bytes.len() as u64)?;
        writer.write(bytes)?;
        writer.finish()
    }

    #[test]
    fn components_are_kept_by_digest_and_checked_as_written() {
        let dir = temp();
        let store = Store::open(&dir, 1024).unwrap();
        let path = put(&store, b"component").unwrap();
        assert_eq!(
            store.verified_blob(&sha256_digest(b"component")),
            Some(path)
        );

        // Bytes that do not hash to the digest never land.
        let mut writer = store.writer("test", &sha256_digest(b"other"), 5).unwrap();
        writer.write(b"wrong").unwrap();
        let err = writer.finish().unwrap_err();
        assert_eq!(err.kind(), "digest_mismatch", "{err}");
        assert_eq!(store.verified_blob(&sha256_digest(b"other")), None);
        // More than the declared size is refused while writing.
        let mut writer = store.writer("test", &sha256_digest(b"abc"), 2).unwrap();
        assert_eq!(writer.write(b"abc").unwrap_err().kind(), "too_large");
        drop(writer);
        assert!(std::fs::read_dir(dir.join("tmp")).unwrap().next().is_none());

        // A damaged file is not served.
        std::fs::write(store.blob_path(&sha256_digest(b"component")), b"damaged").unwrap();
        assert_eq!(store.verified_blob(&sha256_digest(b"component")), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_store_stays_within_its_bound_and_keeps_what_tags_name() {
        let dir = temp();
        let store = Store::open(&dir, 100).unwrap();
        let named = [b'n'; 60];
        put(&store, &named).unwrap();
        let reference = OciReference::parse("localhost:5000/a/b:1").unwrap();
        store
            .remember(
                &reference,
                &StoredRef {
                    reference: reference.to_string(),
                    manifest_digest: sha256_digest(b"m"),
                    component_digest: sha256_digest(&named),
                    annotations: BTreeMap::new(),
                    pulled_at: 0,
                },
            )
            .unwrap();
        assert_eq!(
            store.recall(&reference).unwrap().component_digest,
            sha256_digest(&named)
        );
        put(&store, &[b'u'; 30]).unwrap();
        // 60 + 30 + 30 > 100: the unnamed one goes, the named one stays.
        put(&store, &[b'v'; 30]).unwrap();
        assert!(store.verified_blob(&sha256_digest(&[b'u'; 30])).is_none());
        assert!(store.verified_blob(&sha256_digest(&named)).is_some());
        assert!(store.used_bytes() <= 100);
        // 50 more cannot fit even with every unnamed component gone.
        let err = put(&store, &[b'w'; 50]).unwrap_err();
        assert_eq!(err.kind(), "store_full", "{err}");
        assert_eq!(put(&store, &[b'x'; 101]).unwrap_err().kind(), "store_full");
        let _ = std::fs::remove_dir_all(dir);
    }
}
