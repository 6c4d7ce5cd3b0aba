//! The cache of compiled components: a host-private directory (mode 0700,
//! owned by this user) of wasmtime artifacts keyed by the plugin's SHA-256
//! digest and the engine's compatibility hash.
//!
//! Deserializing a compiled artifact runs native code without validation,
//! so an entry must only ever run as the code of the wasm whose signature
//! was verified. The file name only says where to look; what authenticates
//! an entry is a MAC in it:
//!
//! ```text
//! entry = "capsule-cache\0v1" ‖ tag (32 bytes) ‖ serialized artifact
//! tag   = HMAC-SHA-256(cache key, "capsule compile cache entry v1"
//!                      ‖ wasm SHA-256 digest ‖ engine compatibility hash ‖ artifact)
//! ```
//!
//! The [`CacheKey`] is host-private and kept outside the cache directory
//! (the CLI keeps it in `$XDG_STATE_HOME/capsule/cache.key`, else
//! `~/.local/state/capsule/cache.key`), so an entry that was swapped for
//! another plugin's, planted, corrupted or written under another key fails
//! the tag check. Such an entry — or anything at an entry's path that is not
//! a regular file owned by this user of a plausible size (a symlink, a FIFO,
//! a device) — is removed, counted as an error, and the plugin is compiled
//! again from its verified wasm: it is never deserialized and never waited
//! on.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::{hex, sha256_hex};

/// The first bytes of every entry: what it is and the format's version.
const MAGIC: &[u8; 16] = b"capsule-cache\0v1";
/// The length of an entry's HMAC-SHA-256 tag.
const TAG_BYTES: usize = 32;
/// Domain separation: this MAC authenticates cache entries and nothing else.
const TAG_DOMAIN: &[u8] = b"capsule compile cache entry v1";
/// The largest entry read (or written). Compiled plugins are a few times
/// their wasm, which is at most [`crate::input::MAX_COMPONENT_BYTES`].
const MAX_ENTRY_BYTES: u64 = 512 * 1024 * 1024;
/// The smallest possible entry: the header, the tag and one byte.
const MIN_ENTRY_BYTES: u64 = (MAGIC.len() + TAG_BYTES + 1) as u64;

/// Why the cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("compile cache {dir}: {reason}")]
pub struct CacheError {
    /// The directory.
    pub dir: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Why the compile cache key cannot be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheKeyError {
    /// The key file cannot be created or read, or is unsafe to trust.
    #[error("compile cache key {}: {reason}", path.display())]
    File {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The operating system gave no randomness for a new key.
    #[error("no randomness for a compile cache key: {0}")]
    Random(String),
}

/// The secret that authenticates compile cache entries: only code this host
/// (or another holding the same key) compiled from verified wasm is ever
/// deserialized.
///
/// Keep it outside the cache directory: whoever can read it can plant
/// entries that run as native code.
#[derive(Clone)]
pub struct CacheKey([u8; 32]);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str("CacheKey(..)")
    }
}

impl CacheKey {
    /// A new key from the operating system's generator.
    pub fn random() -> Result<CacheKey, CacheKeyError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|err| CacheKeyError::Random(err.to_string()))?;
        Ok(CacheKey(bytes))
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> CacheKey {
        CacheKey(bytes)
    }

    /// Reads the key file at `path`, first creating it from fresh randomness
    /// (mode 0600, its folder 0700 if it has to be made) if it does not
    /// exist. Refuses a file that is not a regular file owned by this user
    /// without permissions for group or others, or not exactly 32 bytes.
    pub fn load_or_create(path: &Path) -> Result<CacheKey, CacheKeyError> {
        let fail = |reason: String| CacheKeyError::File {
            path: path.to_owned(),
            reason,
        };
        match read_key_file(path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                create_key_file(path).map_err(|err| fail(format!("cannot create: {err}")))?;
                read_key_file(path).map_err(|err| fail(err.to_string()))
            }
            read => read.map_err(|err| fail(err.to_string())),
        }
    }

    /// Where the CLI keeps its key: `$XDG_STATE_HOME/capsule/cache.key`,
    /// else `~/.local/state/capsule/cache.key`; `None` without either
    /// variable.
    pub fn default_path() -> Option<PathBuf> {
        default_path_from(|name| std::env::var_os(name))
    }

    /// The key of a cache configured without one: random, made once per
    /// process (with a warning), so entries written by other processes
    /// simply miss and are recompiled.
    pub(crate) fn per_process() -> Result<CacheKey, CacheKeyError> {
        static KEY: OnceLock<Result<CacheKey, CacheKeyError>> = OnceLock::new();
        KEY.get_or_init(|| {
            tracing::warn!(
                "the compile cache has no key file: using a random key for this process, \
                 so compiled plugins are only reused within it"
            );
            CacheKey::random()
        })
        .clone()
    }
}

/// [`CacheKey::default_path`] with the environment given by `var`.
fn default_path_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    // The XDG base directory spec says to ignore relative paths.
    let absolute = |name| {
        var(name)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    let state = absolute("XDG_STATE_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".local").join("state")))?;
    Some(state.join("capsule").join("cache.key"))
}

/// Where a host's cache key comes from.
#[derive(Debug, Clone)]
pub(crate) enum KeySource {
    /// Given by the embedder.
    Key(CacheKey),
    /// Read (or created) when the host is built.
    File(PathBuf),
}

impl KeySource {
    /// The key; without a source, the per-process random key.
    pub(crate) fn resolve(source: Option<&KeySource>) -> Result<CacheKey, CacheKeyError> {
        match source {
            Some(KeySource::Key(key)) => Ok(key.clone()),
            Some(KeySource::File(path)) => CacheKey::load_or_create(path),
            None => CacheKey::per_process(),
        }
    }
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
    key: CacheKey,
    hits: AtomicU64,
    misses: AtomicU64,
    stored: AtomicU64,
    errors: AtomicU64,
}

impl CompileCache {
    /// Opens (creating if needed) a private cache directory whose entries
    /// are authenticated with `key`.
    pub(crate) fn open(dir: &Path, key: CacheKey) -> Result<CompileCache, CacheError> {
        let fail = |reason: String| CacheError {
            dir: dir.display().to_string(),
            reason,
        };
        create_private_dir(dir).map_err(|err| fail(format!("cannot create: {err}")))?;
        check_private(dir).map_err(fail)?;
        Ok(CompileCache {
            dir: dir.to_owned(),
            key,
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
        let key = format!("{digest}-{}", hex(&compatibility_digest(engine)));
        self.dir
            .join(format!("{}.cwasm", sha256_hex(key.as_bytes())))
    }

    /// The MAC binding `artifact` to the wasm `digest` and `engine`.
    fn mac(&self, engine: &Engine, digest: &str, artifact: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256>>::new_from_slice(&self.key.0).expect("HMAC takes any key length");
        // Every variable-length field is length-prefixed, so no two
        // different (digest, artifact) pairs feed the MAC the same bytes.
        for field in [TAG_DOMAIN, digest.as_bytes()] {
            mac.update(&(field.len() as u64).to_le_bytes());
            mac.update(field);
        }
        mac.update(&compatibility_digest(engine));
        mac.update(&(artifact.len() as u64).to_le_bytes());
        mac.update(artifact);
        mac
    }

    /// The cached component for `digest`, if an authentic one exists.
    pub(crate) fn load(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path_for(engine, digest);
        let entry = match read_entry(&path) {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(reason) => return self.discard(&path, &reason),
        };
        let artifact = match self.authenticate(engine, digest, &entry) {
            Ok(artifact) => artifact,
            Err(reason) => return self.discard(&path, reason),
        };
        // SAFETY: the artifact carries a valid MAC under this host's private
        // key over this plugin's digest and this engine's compatibility hash,
        // and only `store` computes that MAC, over the output of
        // `Component::serialize` for a component compiled by this engine from
        // the wasm of this digest, whose signature was verified before it was
        // compiled.
        match unsafe { Component::deserialize(engine, artifact) } {
            Ok(component) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(component)
            }
            Err(err) => self.discard(&path, &crate::text::chain(&err)),
        }
    }

    /// The artifact in `entry`, if its header and tag are right.
    fn authenticate<'a>(
        &self,
        engine: &Engine,
        digest: &str,
        entry: &'a [u8],
    ) -> Result<&'a [u8], &'static str> {
        let Some((magic, rest)) = entry.split_first_chunk::<{ MAGIC.len() }>() else {
            return Err("truncated entry");
        };
        if magic != MAGIC {
            return Err("not a Capsule cache entry of this version");
        }
        let Some((tag, artifact)) = rest.split_first_chunk::<TAG_BYTES>() else {
            return Err("truncated entry");
        };
        // Constant-time comparison: timing must not reveal a right prefix.
        self.mac(engine, digest, artifact)
            .verify_slice(tag)
            .map_err(|_| "its tag does not match: not written by this host for this plugin")?;
        Ok(artifact)
    }

    /// Forgets a bad entry: removed (best effort), counted, and the plugin
    /// compiled again.
    fn discard(&self, path: &Path, reason: &str) -> Option<Component> {
        tracing::warn!(
            path = %path.display(),
            reason,
            "discarding an unusable compiled artifact"
        );
        let _ = std::fs::remove_file(path);
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Stores a freshly compiled component. Failure only costs a recompile
    /// next time, so it is logged, not returned.
    pub(crate) fn store(&self, engine: &Engine, digest: &str, component: &Component) {
        let path = self.path_for(engine, digest);
        let written = component
            .serialize()
            .map_err(|err| crate::text::chain(&err))
            .and_then(|artifact| {
                let len = (MAGIC.len() + TAG_BYTES + artifact.len()) as u64;
                if len > MAX_ENTRY_BYTES {
                    return Err(format!(
                        "the artifact is larger than the cache's limit of {MAX_ENTRY_BYTES} bytes"
                    ));
                }
                let tag = self.mac(engine, digest, &artifact).finalize().into_bytes();
                write_atomically(&path, &[MAGIC, &tag, &artifact]).map_err(|err| err.to_string())
            });
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

/// SHA-256 over the engine's compatibility hash: a fixed-size, stable
/// summary of everything that makes its compiled code loadable.
fn compatibility_digest(engine: &Engine) -> [u8; 32] {
    /// Feeds whatever a `Hash` implementation writes into SHA-256.
    struct Sha256Hasher(Sha256);
    impl Hasher for Sha256Hasher {
        fn finish(&self) -> u64 {
            // Never called: the digest is taken from the inner SHA-256.
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.0.finalize().into()
}

/// The entry at `path`: `None` if there is none, an error (and the entry is
/// to be discarded) if something other than a plausible entry of ours is
/// there.
fn read_entry(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let mut file = match open_entry(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(open_error(&err)),
    };
    // fstat the handle: what was opened is what is checked and read.
    let meta = file
        .metadata()
        .map_err(|err| format!("cannot inspect: {err}"))?;
    if !meta.is_file() {
        return Err(format!(
            "it is a {}, not a regular file",
            crate::input::kind_of(&meta.file_type())
        ));
    }
    check_owner(&meta)?;
    let len = meta.len();
    if !(MIN_ENTRY_BYTES..=MAX_ENTRY_BYTES).contains(&len) {
        return Err(format!(
            "its size ({len} bytes) is outside {MIN_ENTRY_BYTES}..={MAX_ENTRY_BYTES}"
        ));
    }
    // Read into memory rather than map the file: a mapped file that is
    // truncated underneath a running host would crash it with SIGBUS.
    let mut entry = vec![0; len as usize];
    file.read_exact(&mut entry)
        .map_err(|err| format!("cannot read {len} bytes: {err}"))?;
    Ok(Some(entry))
}

/// Opens an entry without following a symlink and without waiting on a FIFO.
#[cfg(unix)]
fn open_entry(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

#[cfg(not(unix))]
fn open_entry(path: &Path) -> std::io::Result<File> {
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(std::io::Error::other("it is a symbolic link"));
    }
    File::open(path)
}

fn open_error(err: &std::io::Error) -> String {
    #[cfg(unix)]
    if err.raw_os_error() == Some(libc::ELOOP) {
        return "it is a symbolic link".into();
    }
    format!("cannot open: {err}")
}

/// The file must belong to this user: nobody else's bytes are run.
#[cfg(unix)]
fn check_owner(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(format!(
            "it is owned by uid {}, not by this user ({uid})",
            meta.uid()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner(_meta: &std::fs::Metadata) -> Result<(), String> {
    Ok(())
}

/// Reads a key file: a regular file (symlinks are followed: the file they
/// reach is checked) owned by this user, private to it, of exactly 32 bytes.
fn read_key_file(path: &Path) -> std::io::Result<CacheKey> {
    let invalid = |reason: String| std::io::Error::new(std::io::ErrorKind::InvalidData, reason);
    let mut file = crate::input::open_nonblocking(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(invalid(format!(
            "it is a {}, not a regular file",
            crate::input::kind_of(&meta.file_type())
        )));
    }
    check_owner(&meta).map_err(invalid)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if meta.mode() & 0o077 != 0 {
            return Err(invalid(format!(
                "its permissions {:o} let others read or change it (make it 0600)",
                meta.mode() & 0o777
            )));
        }
    }
    if meta.len() != 32 {
        return Err(invalid(format!("it is {} bytes long, not 32", meta.len())));
    }
    let mut bytes = [0u8; 32];
    file.read_exact(&mut bytes)?;
    Ok(CacheKey(bytes))
}

/// Creates a key file from fresh randomness: written in full beside it,
/// then linked into place, so a concurrent reader never sees half a key and
/// two processes creating it at once agree on one.
fn create_key_file(path: &Path) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    let key = CacheKey::random().map_err(std::io::Error::other)?;
    let tmp = temporary_beside(path);
    let linked = (|| {
        let mut file = private_file_options().open(&tmp)?;
        file.write_all(&key.0)?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match linked {
        // Another process made it first: use theirs.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        linked => linked,
    }
}

/// A fresh name beside `path` for a file about to replace it.
fn temporary_beside(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    path.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes `parts` to a temporary file in the same directory, then renames
/// it into place, so a reader never sees half an artifact.
fn write_atomically(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    let tmp = temporary_beside(path);
    let result = (|| {
        let mut file = private_file_options().open(&tmp)?;
        for part in parts {
            file.write_all(part)?;
        }
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
        CompileCache::open(&dir, CacheKey::from_bytes([7; 32])).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tightens_loose_permissions_and_refuses_symlinks() {
        let dir = temp_dir("loose");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        CompileCache::open(&dir, CacheKey::from_bytes([7; 32])).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        let link = temp_dir("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = CompileCache::open(&link, CacheKey::from_bytes([7; 32]))
            .err()
            .expect("a symlink is refused");
        assert!(err.reason.contains("symlink"), "{err}");
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The smallest valid component: just the component header.
    const EMPTY_COMPONENT: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    /// An engine, a cache in a fresh directory, and a compiled component.
    fn setup(name: &str) -> (Engine, CompileCache, Component, PathBuf) {
        let engine = Engine::default();
        let dir = temp_dir(name);
        let cache = CompileCache::open(&dir, CacheKey::random().unwrap()).unwrap();
        let component = Component::new(&engine, EMPTY_COMPONENT).unwrap();
        (engine, cache, component, dir)
    }

    /// Loads `digest`, expecting the entry to be refused and removed.
    fn assert_refused(cache: &CompileCache, engine: &Engine, digest: &str, what: &str) {
        let before = cache.stats();
        let path = cache.path_for(engine, digest);
        assert!(cache.load(engine, digest).is_none(), "{what}: refused");
        let after = cache.stats();
        assert_eq!(
            after.errors,
            before.errors + 1,
            "{what}: counted as an error"
        );
        assert_eq!(after.misses, before.misses + 1, "{what}: and as a miss");
        assert_eq!(after.hits, before.hits);
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "{what}: {} is removed",
            path.display()
        );
    }

    #[test]
    fn a_stored_entry_is_a_hit() {
        let (engine, cache, component, dir) = setup("hit");
        assert!(cache.load(&engine, A).is_none());
        cache.store(&engine, A, &component);
        assert!(cache.load(&engine, A).is_some());
        let stats = cache.stats();
        assert_eq!(
            (stats.hits, stats.misses, stats.stored, stats.errors),
            (1, 1, 1, 0)
        );
        // A cache opened later with the same key reads it too.
        let again = CompileCache::open(&dir, cache.key.clone()).unwrap();
        assert!(again.load(&engine, A).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_entry_moved_to_another_digest_is_refused() {
        let (engine, cache, component, dir) = setup("swap");
        cache.store(&engine, A, &component);
        // A valid entry, but for another plugin: under B's name it must
        // never run as B's code.
        std::fs::copy(cache.path_for(&engine, A), cache.path_for(&engine, B)).unwrap();
        assert_refused(&cache, &engine, B, "A's entry under B's name");
        assert!(cache.load(&engine, B).is_none(), "B now simply misses");
        assert!(cache.load(&engine, A).is_some(), "A is untouched");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_entries_are_refused() {
        let (engine, cache, component, dir) = setup("damaged");
        let path = cache.path_for(&engine, A);
        type Damage = (&'static str, fn(&mut Vec<u8>));
        let damages: [Damage; 5] = [
            ("truncated by one byte", |entry| {
                entry.pop();
            }),
            ("truncated to its header", |entry| {
                entry.truncate(MAGIC.len() + 3)
            }),
            ("a flipped artifact byte", |entry| {
                let last = entry.len() - 1;
                entry[last] ^= 1;
            }),
            ("a flipped tag byte", |entry| entry[MAGIC.len()] ^= 1),
            ("a wrong magic", |entry| entry[0] ^= 1),
        ];
        for (what, damage) in damages {
            cache.store(&engine, A, &component);
            let mut entry = std::fs::read(&path).unwrap();
            damage(&mut entry);
            std::fs::write(&path, &entry).unwrap();
            assert_refused(&cache, &engine, A, what);
        }
        // An artifact without the header and tag (the old format, or one
        // planted by hand) is never deserialized either.
        std::fs::write(&path, component.serialize().unwrap()).unwrap();
        assert_refused(&cache, &engine, A, "a bare artifact");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_entry_written_with_another_key_is_refused() {
        let (engine, cache, component, dir) = setup("other-key");
        let other = CompileCache::open(&dir, CacheKey::random().unwrap()).unwrap();
        other.store(&engine, A, &component);
        assert_refused(&cache, &engine, A, "another key's entry");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlink_in_place_of_an_entry_is_refused() {
        let (engine, cache, component, dir) = setup("symlink");
        // The link points at a perfectly valid entry: only the link itself
        // is wrong, so only refusing symlinks refuses it.
        cache.store(&engine, A, &component);
        let target = dir.join("elsewhere");
        std::fs::rename(cache.path_for(&engine, A), &target).unwrap();
        std::os::unix::fs::symlink(&target, cache.path_for(&engine, A)).unwrap();
        assert_refused(&cache, &engine, A, "a symlink");
        assert!(target.exists(), "only the link is removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fifo_in_place_of_an_entry_is_refused_promptly() {
        let (engine, cache, _component, dir) = setup("fifo");
        let path = cache.path_for(&engine, A);
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c_path` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let cache = std::sync::Arc::new(cache);
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn({
            let (cache, engine) = (std::sync::Arc::clone(&cache), engine.clone());
            move || sender.send(cache.load(&engine, A).is_none())
        });
        // A blocking open would wait for a writer forever.
        let refused = receiver
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("a FIFO is not waited on");
        assert!(refused);
        assert_eq!(cache.stats().errors, 1);
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "the FIFO is removed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_key_file_is_created_private_and_reused() {
        let dir = temp_dir("key");
        let path = dir.join("state").join("cache.key");
        let created = CacheKey::load_or_create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o700);
        let again = CacheKey::load_or_create(&path).unwrap();
        assert_eq!(created.0, again.0, "the same key is read back");
        assert_ne!(created.0, CacheKey::random().unwrap().0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unsafe_key_files_are_refused() {
        let dir = temp_dir("bad-key");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cache.key");
        CacheKey::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = CacheKey::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("permissions 640"), "{err}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, [1u8; 31]).unwrap();
        let err = CacheKey::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("not 32"), "{err}");

        let err = CacheKey::load_or_create(&dir).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");

        let fifo = dir.join("fifo.key");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c_path` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || sender.send(CacheKey::load_or_create(&fifo).map(|_| ())));
        let err = receiver
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("a FIFO key file is not waited on")
            .unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_default_key_path_is_in_the_state_directory() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(var, _)| *var == name)
                    .map(|(_, value)| value.into())
            }
        };
        let path = |vars| default_path_from(env(vars));
        assert_eq!(
            path(&[("XDG_STATE_HOME", "/state"), ("HOME", "/home/u")]),
            Some(PathBuf::from("/state/capsule/cache.key"))
        );
        assert_eq!(
            path(&[("XDG_STATE_HOME", "relative"), ("HOME", "/home/u")]),
            Some(PathBuf::from("/home/u/.local/state/capsule/cache.key"))
        );
        assert_eq!(path(&[]), None);
    }
}
