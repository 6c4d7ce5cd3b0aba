//! The key-value store every plugin with a kv grant shares: versioned
//! entries with optional expiry, quotas per namespace, and commits that
//! apply a whole set of changes at once or not at all.
//!
//! [`KvStore`] is the one face the services see; where entries live is a
//! [`KvBackend`]: the embedded redb file (`super::embedded`, the default)
//! or NATS JetStream KV shared by several hosts (`super::nats`). Every
//! entry carries the version it was written at, so a transaction that read
//! a key can check at commit that nobody changed it since (optimistic
//! concurrency: see [`Changes`]). What each backend guarantees beyond that
//! is stated on it and proven by the one conformance suite both run.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::KvGrant;
use super::embedded::EmbeddedKv;
use crate::contract::ServiceError;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Why the key-value store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("key-value store {path}: {reason}")]
pub struct KvError {
    /// The database file.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// One stored value, as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The version of the commit that wrote it (never 0).
    pub(crate) version: u64,
    /// When it expires, in Unix milliseconds.
    pub(crate) expires_at: Option<u64>,
    /// The bytes.
    pub(crate) value: Vec<u8>,
}

/// What a version-checked reader saw of a key: the entry's version, or 0
/// for no (or an expired) entry.
pub(crate) fn version_of(entry: Option<&Entry>) -> u64 {
    entry.map_or(0, |entry| entry.version)
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    /// Store `value`, expiring at `expires_at` (Unix milliseconds) if set.
    Put {
        value: Vec<u8>,
        expires_at: Option<u64>,
    },
    /// Remove the key.
    Delete,
}

impl Write {
    /// What a reader of the key sees once this write applies.
    pub(crate) fn visible(&self, now: u64) -> Option<&[u8]> {
        match self {
            Write::Put { value, expires_at } if expires_at.is_none_or(|at| at > now) => Some(value),
            _ => None,
        }
    }

    /// Host memory the write holds while buffered.
    pub(crate) fn size(&self) -> usize {
        match self {
            Write::Put { value, .. } => value.len(),
            Write::Delete => 0,
        }
    }
}

/// The changes of one transaction in one namespace: what it read (the
/// version it saw) and what it writes.
#[derive(Debug)]
pub(crate) struct NamespaceChanges {
    /// The grant that first touched the namespace.
    pub(crate) grant: Arc<KvGrant>,
    /// The grants of every plugin that wrote to it: what the commit leaves
    /// must fit each one's quotas (two plugins may share a namespace under
    /// different quotas).
    pub(crate) writers: Vec<Arc<KvGrant>>,
    /// Keys read, with the version seen (0: absent).
    pub(crate) reads: HashMap<String, u64>,
    /// Keys written, with their last write.
    pub(crate) writes: BTreeMap<String, Write>,
}

impl NamespaceChanges {
    /// Notes that a plugin with `grant` wrote to the namespace.
    pub(crate) fn add_writer(&mut self, grant: &Arc<KvGrant>) {
        if !self.writers.iter().any(|known| **known == **grant) {
            self.writers.push(Arc::clone(grant));
        }
    }

    /// Notes every writer of `other`.
    pub(crate) fn add_writers(&mut self, other: &NamespaceChanges) {
        for grant in &other.writers {
            self.add_writer(grant);
        }
    }

    pub(crate) fn new(grant: Arc<KvGrant>) -> Self {
        NamespaceChanges {
            grant,
            writers: Vec::new(),
            reads: HashMap::new(),
            writes: BTreeMap::new(),
        }
    }
}

/// Everything one transaction read and wrote, by namespace. Committed with
/// [`KvStore::commit`]: if any key read changed since, nothing is written
/// and the commit reports the conflict.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub(crate) namespaces: BTreeMap<Arc<str>, NamespaceChanges>,
    /// The cluster-wide gate this commit holds (a rerun's, see
    /// [`KvBackend::try_gate`]): commits of others wait while it is held.
    pub(crate) holder: Option<u64>,
}

impl Changes {
    /// Whether there is nothing to check or write.
    pub(crate) fn is_empty(&self) -> bool {
        self.namespaces
            .values()
            .all(|ns| ns.reads.is_empty() && ns.writes.is_empty())
    }

    /// Whether the transaction writes anything.
    pub(crate) fn writes(&self) -> bool {
        self.namespaces.values().any(|ns| !ns.writes.is_empty())
    }
}

/// Why a commit wrote nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitError {
    /// A key the transaction read was changed by another commit since.
    #[error("`{key}` in namespace `{namespace}` was changed by a concurrent call")]
    Conflict { namespace: String, key: String },
    /// What the transaction would leave breaks a quota, or the store failed.
    #[error("{0}")]
    Refused(ServiceError),
}

/// Decides, from the live entry under a key, the write to apply (if any).
/// A backend may call it again when the entry changed under it.
pub(crate) type Decide<'a> = dyn FnMut(Option<&Entry>) -> Result<Option<Write>, ServiceError> + 'a;

/// Where entries live. Every method is blocking: the services call them on
/// tokio's blocking pool.
pub(crate) trait KvBackend: Send + Sync {
    /// A short name for logs and errors: `embedded` or `nats`.
    fn kind(&self) -> &'static str;

    /// The live entry under `key` in `namespace`.
    fn read(&self, namespace: &str, key: &str) -> Result<Option<Entry>, ServiceError>;

    /// The live entries under `keys`; refused (before reading more) once
    /// their values pass `max_bytes`.
    fn read_many(
        &self,
        namespace: &str,
        keys: &[String],
        max_bytes: usize,
    ) -> Result<Vec<Option<Entry>>, ServiceError>;

    /// Reads the entry under `key` and applies the write `decide` chooses,
    /// atomically for that key, within `grant`'s quotas.
    fn update(
        &self,
        grant: &KvGrant,
        key: &str,
        decide: &mut Decide<'_>,
    ) -> Result<(), ServiceError>;

    /// Commits `changes`: every key read must still have the version it was
    /// read at, then every write applies within its namespace's quotas.
    fn commit(&self, changes: &Changes) -> Result<(), CommitError>;

    /// Live keys of `namespace` that start with `prefix` and sort after
    /// `after`, in order, at most `limit`; and whether more follow.
    fn list_keys(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), ServiceError>;

    /// Removes up to `max` expired entries; returns how many it looked at
    /// (fewer than `max`: none are left).
    fn purge_expired(&self, max: usize) -> Result<usize, ServiceError>;

    /// Takes the gate of `namespace` for `holder` until `lease` ends, if no
    /// one else holds it; returns whether it did. While a backend gate is
    /// held, commits to the namespace by anyone else conflict, so a call
    /// rerun after a conflict cannot lose again to other hosts. The
    /// embedded store has no other hosts: the host's own gates suffice.
    fn try_gate(
        &self,
        _namespace: &str,
        _holder: u64,
        _lease: Duration,
    ) -> Result<bool, ServiceError> {
        Ok(true)
    }

    /// Gives back a gate `holder` took.
    fn release_gate(&self, _namespace: &str, _holder: u64) {}

    /// Whether other hosts share the store (gates must be taken in it).
    fn shared(&self) -> bool {
        false
    }

    /// How often the background sweep runs [`KvBackend::purge_expired`].
    fn sweep_every(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// Keys and bytes `namespace` holds (expired entries not yet purged
    /// included): what its quotas are checked against.
    fn usage(&self, namespace: &str) -> Result<(u64, u64), ServiceError>;
}

/// The host's key-value store, shared by every plugin with a kv grant.
pub struct KvStore {
    backend: Box<dyn KvBackend>,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KvStore({})", self.backend.kind())
    }
}

pub(crate) fn unavailable(err: impl std::fmt::Display) -> ServiceError {
    ServiceError::Unavailable(format!("key-value store: {err}"))
}

impl KvStore {
    /// Opens (creating if needed) the embedded database file at `path`; a
    /// store written by an earlier Capsule is upgraded in place.
    pub fn open(path: &Path) -> Result<KvStore, KvError> {
        Ok(KvStore::with_backend(EmbeddedKv::open(path)?))
    }

    /// An embedded store that lives only as long as the host (for tests and
    /// for hosts configured without a data directory).
    pub fn in_memory() -> KvStore {
        KvStore::with_backend(EmbeddedKv::in_memory())
    }

    pub(crate) fn with_backend(backend: impl KvBackend + 'static) -> KvStore {
        KvStore {
            backend: Box::new(backend),
        }
    }

    /// Which backend holds the entries: `embedded` or `nats`.
    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// The live entry under `key` in `namespace`.
    pub(crate) fn read(&self, namespace: &str, key: &str) -> Result<Option<Entry>, ServiceError> {
        self.backend.read(namespace, key)
    }

    /// The live entries under `keys`; refused once their values pass
    /// `max_bytes`.
    pub(crate) fn read_many(
        &self,
        namespace: &str,
        keys: &[String],
        max_bytes: usize,
    ) -> Result<Vec<Option<Entry>>, ServiceError> {
        self.backend.read_many(namespace, keys, max_bytes)
    }

    /// Commits `changes` (see [`KvBackend::commit`]); on any error nothing
    /// is written (on NATS, see `super::nats` for the one exception).
    pub(crate) fn commit(&self, changes: &Changes) -> Result<(), CommitError> {
        self.backend.commit(changes)
    }

    /// Live keys of `namespace` under `prefix` after `after`, at most
    /// `limit`; and whether more follow.
    pub(crate) fn list_keys(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), ServiceError> {
        self.backend.list_keys(namespace, prefix, after, limit)
    }

    /// Removes up to `max` expired entries; returns how many it looked at.
    pub(crate) fn purge_expired(&self, max: usize) -> Result<usize, ServiceError> {
        self.backend.purge_expired(max)
    }

    /// Whether other hosts share this store.
    pub(crate) fn shared(&self) -> bool {
        self.backend.shared()
    }

    /// See [`KvBackend::try_gate`].
    pub(crate) fn try_gate(
        &self,
        namespace: &str,
        holder: u64,
        lease: Duration,
    ) -> Result<bool, ServiceError> {
        self.backend.try_gate(namespace, holder, lease)
    }

    /// See [`KvBackend::release_gate`].
    pub(crate) fn release_gate(&self, namespace: &str, holder: u64) {
        self.backend.release_gate(namespace, holder);
    }

    /// Keys and bytes `namespace` holds.
    pub fn usage(&self, namespace: &str) -> Result<(u64, u64), ServiceError> {
        self.backend.usage(namespace)
    }

    /// Reads the entry under `key` and applies the write `decide` chooses
    /// (if any), atomically for that key; returns what `decide` said last.
    pub(crate) fn update<R>(
        &self,
        grant: &KvGrant,
        key: &str,
        mut decide: impl FnMut(Option<&Entry>) -> Result<(Option<Write>, R), ServiceError>,
    ) -> Result<R, ServiceError> {
        let mut answer = None;
        self.backend.update(grant, key, &mut |current| {
            let (write, said) = decide(current)?;
            answer = Some(said);
            Ok(write)
        })?;
        Ok(answer.expect("a backend calls `decide` before it returns Ok"))
    }

    /// The value under `key` in `namespace`.
    pub fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, ServiceError> {
        Ok(self.read(namespace, key)?.map(|entry| entry.value))
    }

    /// Stores `value` under `key`, within the grant's quotas.
    pub fn set(&self, grant: &KvGrant, key: &str, value: &[u8]) -> Result<(), ServiceError> {
        check_key(grant, key)?;
        check_value(grant, value.len())?;
        self.update(grant, key, |_| {
            Ok((
                Some(Write::Put {
                    value: value.to_vec(),
                    expires_at: None,
                }),
                (),
            ))
        })
    }

    /// Removes `key`; returns whether it existed.
    pub fn delete(&self, grant: &KvGrant, key: &str) -> Result<bool, ServiceError> {
        self.update(grant, key, |current| {
            Ok((current.map(|_| Write::Delete), current.is_some()))
        })
    }

    /// Adds `delta` to the little-endian `i64` under `key` (missing counts as
    /// 0) atomically, and returns the new value.
    pub fn increment(&self, grant: &KvGrant, key: &str, delta: i64) -> Result<i64, ServiceError> {
        check_key(grant, key)?;
        self.update(grant, key, |current| {
            let value = incremented(key, current.map(|entry| entry.value.as_slice()), delta)?;
            Ok((Some(counter(value, current)), value))
        })
    }

    /// Starts the background sweep that purges expired entries, at most
    /// 16 × 1024 per round so it never holds the store for long. The sweep
    /// stops once the store is dropped.
    pub fn start_sweeper(store: &Arc<KvStore>) {
        let every = store.backend.sweep_every();
        let store = Arc::downgrade(store);
        let spawned = std::thread::Builder::new()
            .name("capsule-kv-sweep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(store) = store.upgrade() else { return };
                    for _ in 0..16 {
                        match store.purge_expired(1024) {
                            Ok(1024) => continue,
                            Ok(_) => break,
                            Err(err) => {
                                tracing::warn!(error = ?err, "purging expired kv entries failed");
                                break;
                            }
                        }
                    }
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(%err, "expired kv entries will be purged only by writes");
        }
    }
}

/// Collects `entries` until their values pass `max_bytes`, then refuses
/// (before reading more): what `get-many` may answer.
pub(crate) fn collect_within(
    entries: impl Iterator<Item = Result<Option<Entry>, ServiceError>>,
    max_bytes: usize,
) -> Result<Vec<Option<Entry>>, ServiceError> {
    let mut size = 0usize;
    let mut collected = Vec::with_capacity(entries.size_hint().0);
    for entry in entries {
        let entry = entry?;
        size += entry.as_ref().map_or(0, |e| e.value.len());
        if size > max_bytes {
            return Err(ServiceError::QuotaExceeded(format!(
                "get-many would answer more than {max_bytes} bytes"
            )));
        }
        collected.push(entry);
    }
    Ok(collected)
}

/// The counter after adding `delta` to `current` (none counts as 0).
pub(crate) fn incremented(
    key: &str,
    current: Option<&[u8]>,
    delta: i64,
) -> Result<i64, ServiceError> {
    let value = match current {
        None => 0,
        Some(bytes) => {
            let bytes: [u8; 8] = bytes.try_into().map_err(|_| {
                ServiceError::Invalid(format!(
                    "key `{key}` holds {} bytes, not a counter (8-byte integer)",
                    bytes.len()
                ))
            })?;
            i64::from_le_bytes(bytes)
        }
    };
    value
        .checked_add(delta)
        .ok_or_else(|| ServiceError::Invalid(format!("incrementing `{key}` by {delta} overflows")))
}

/// The write storing counter `value`, keeping the entry's expiry.
pub(crate) fn counter(value: i64, current: Option<&Entry>) -> Write {
    Write::Put {
        value: value.to_le_bytes().to_vec(),
        expires_at: current.and_then(|entry| entry.expires_at),
    }
}

pub(crate) fn check_key(grant: &KvGrant, key: &str) -> Result<(), ServiceError> {
    if key.is_empty() {
        return Err(ServiceError::Invalid("keys must not be empty".into()));
    }
    if key.len() > grant.max_key_bytes {
        return Err(ServiceError::QuotaExceeded(format!(
            "key of {} bytes exceeds the limit of {} bytes",
            key.len(),
            grant.max_key_bytes
        )));
    }
    Ok(())
}

pub(crate) fn check_value(grant: &KvGrant, len: usize) -> Result<(), ServiceError> {
    if len > grant.max_value_bytes {
        return Err(ServiceError::QuotaExceeded(format!(
            "value of {len} bytes exceeds the limit of {} bytes",
            grant.max_value_bytes
        )));
    }
    Ok(())
}

/// The namespace's usage after replacing an entry of `previous` value bytes
/// (or none) with one of `next` bytes (or none).
pub(crate) fn account(
    (keys, bytes): (u64, u64),
    key: &str,
    previous: Option<usize>,
    next: Option<usize>,
) -> (u64, u64) {
    let entry = |len: Option<usize>| len.map_or(0, |len| (key.len() + len) as u64);
    let keys = match (previous, next) {
        (None, Some(_)) => keys + 1,
        (Some(_), None) => keys.saturating_sub(1),
        _ => keys,
    };
    (keys, (bytes + entry(next)).saturating_sub(entry(previous)))
}

/// Whether a namespace holding `(keys, bytes)` is within the grant's quotas.
pub(crate) fn check_quota(grant: &KvGrant, (keys, bytes): (u64, u64)) -> Result<(), ServiceError> {
    if keys > grant.max_keys {
        return Err(ServiceError::QuotaExceeded(format!(
            "namespace `{}` is full ({} keys)",
            grant.namespace, grant.max_keys
        )));
    }
    if bytes > grant.max_total_bytes {
        return Err(ServiceError::QuotaExceeded(format!(
            "namespace `{}` would hold {bytes} bytes, over its limit of {} bytes",
            grant.namespace, grant.max_total_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The conformance suite: every test runs against each backend, on a
    //! store of its own (NATS: a bucket of its own on one `nats-server`
    //! this test binary starts).

    use super::*;

    macro_rules! conformance {
        ($($test:ident),* $(,)?) => {
            mod embedded {
                $(#[test]
                fn $test() {
                    super::$test(&super::KvStore::in_memory());
                })*
            }
            #[cfg(feature = "nats")]
            mod nats {
                $(#[test]
                fn $test() {
                    super::$test(&super::nats_store());
                })*
            }
        };
    }

    conformance!(
        a_commit_whose_reads_changed_writes_nothing,
        quotas_count_what_a_commit_leaves,
        expired_entries_are_invisible_and_purged_with_their_usage,
        keys_page_after_a_cursor,
        a_shared_namespace_holds_every_writers_quota,
        reading_many_stops_at_its_byte_limit,
        concurrent_increments_lose_nothing,
        of_two_commits_that_read_the_same_version_one_wins,
        updates_see_the_live_entry_and_keep_quotas,
        a_write_based_on_a_key_another_commit_wrote_conflicts,
    );

    /// A store in a bucket no other test uses.
    #[cfg(feature = "nats")]
    fn nats_store() -> KvStore {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let server = crate::backend::local::NatsServer::shared();
        let prefix = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let options = crate::backend::NatsOptions::new(server.url()).prefix(prefix);
        let connection = crate::backend::NatsConnection::connect(&options).unwrap();
        KvStore::with_backend(super::super::NatsKv::open(connection).unwrap())
    }

    fn grant(ns: &str) -> KvGrant {
        KvGrant {
            max_keys: 3,
            max_total_bytes: 64,
            max_value_bytes: 32,
            max_key_bytes: 8,
            ..KvGrant::new(ns)
        }
    }

    fn put(value: &[u8], expires_at: Option<u64>) -> Write {
        Write::Put {
            value: value.to_vec(),
            expires_at,
        }
    }

    fn changes(grant: &KvGrant, reads: &[(&str, u64)], writes: &[(&str, Write)]) -> Changes {
        let mut ns = NamespaceChanges::new(Arc::new(grant.clone()));
        ns.reads = reads.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        ns.writes = writes
            .iter()
            .map(|(k, w)| (k.to_string(), w.clone()))
            .collect();
        let mut changes = Changes::default();
        changes
            .namespaces
            .insert(Arc::from(grant.namespace.as_str()), ns);
        changes
    }

    fn a_commit_whose_reads_changed_writes_nothing(store: &KvStore) {
        let g = grant("n");
        store.set(&g, "a", b"1").unwrap();
        let seen = store.read("n", "a").unwrap().unwrap().version;
        // Someone else commits `a` after our read.
        store.set(&g, "a", b"2").unwrap();
        let stale = changes(&g, &[("a", seen), ("b", 0)], &[("b", put(b"x", None))]);
        let err = store.commit(&stale).unwrap_err();
        assert!(
            matches!(&err, CommitError::Conflict { namespace, key } if namespace == "n" && key == "a"),
            "{err:?}"
        );
        assert_eq!(store.get("n", "b").unwrap(), None, "nothing was written");
        let fresh_version = store.read("n", "a").unwrap().unwrap().version;
        let fresh = changes(
            &g,
            &[("a", fresh_version), ("b", 0)],
            &[("b", put(b"x", None))],
        );
        store.commit(&fresh).unwrap();
        assert_eq!(store.get("n", "b").unwrap().as_deref(), Some(&b"x"[..]));
        // A read-only transaction is checked too.
        let read_only = changes(&g, &[("b", 0)], &[]);
        assert!(matches!(
            store.commit(&read_only),
            Err(CommitError::Conflict { .. })
        ));
    }

    fn quotas_count_what_a_commit_leaves(store: &KvStore) {
        let g = grant("q");
        for key in ["a", "b", "c"] {
            store.set(&g, key, b"v").unwrap();
        }
        // Full at 3 keys: adding `d` alone is refused, but deleting `c` and
        // adding `d` together is not ("d" sorts after "c", but order does
        // not matter: the total is what counts).
        let add = changes(&g, &[], &[("d", put(b"v", None))]);
        assert!(matches!(
            store.commit(&add),
            Err(CommitError::Refused(ServiceError::QuotaExceeded(_)))
        ));
        let swap = changes(&g, &[], &[("a", Write::Delete), ("d", put(b"v", None))]);
        store.commit(&swap).unwrap();
        assert_eq!(store.usage("q").unwrap(), (3, 6));
        assert_eq!(store.get("q", "a").unwrap(), None);
    }

    fn expired_entries_are_invisible_and_purged_with_their_usage(store: &KvStore) {
        let g = KvGrant::new("t");
        let past = now_ms() - 1;
        let future = now_ms() + 3_600_000;
        let batch = changes(
            &g,
            &[],
            &[
                ("gone", put(b"old", Some(past))),
                ("kept", put(b"new", Some(future))),
                ("plain", put(b"p", None)),
            ],
        );
        store.commit(&batch).unwrap();
        assert_eq!(store.get("t", "gone").unwrap(), None);
        assert_eq!(
            store.get("t", "kept").unwrap().as_deref(),
            Some(&b"new"[..])
        );
        let (keys, more) = store.list_keys("t", "", None, 10).unwrap();
        assert_eq!((keys, more), (vec!["kept".into(), "plain".into()], false));
        assert_eq!(store.usage("t").unwrap(), (3, 4 + 3 + 4 + 3 + 5 + 1));
        assert_eq!(store.purge_expired(100).unwrap(), 1);
        assert_eq!(store.usage("t").unwrap(), (2, 4 + 3 + 5 + 1));
        // Overwriting a key that expires drops its old expiry.
        store.set(&g, "kept", b"forever").unwrap();
        assert_eq!(store.read("t", "kept").unwrap().unwrap().expires_at, None);
    }

    fn keys_page_after_a_cursor(store: &KvStore) {
        let g = KvGrant::new("p");
        for i in 0..25 {
            store.set(&g, &format!("k{i:02}"), b"").unwrap();
        }
        store.set(&g, "other", b"").unwrap();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (keys, more) = store.list_keys("p", "k", after.as_deref(), 10).unwrap();
            seen.extend(keys.iter().cloned());
            if !more {
                break;
            }
            after = keys.last().cloned();
        }
        assert_eq!(seen.len(), 25);
        assert_eq!(seen[24], "k24");
    }

    fn a_shared_namespace_holds_every_writers_quota(store: &KvStore) {
        let roomy = KvGrant::new("shared");
        let tight = KvGrant {
            max_keys: 1,
            ..KvGrant::new("shared")
        };
        let mut batch = changes(
            &roomy,
            &[],
            &[("a", put(b"1", None)), ("b", put(b"2", None))],
        );
        let ns = batch.namespaces.get_mut("shared").unwrap();
        ns.add_writer(&Arc::new(roomy.clone()));
        ns.add_writer(&Arc::new(tight.clone()));
        let err = store.commit(&batch).unwrap_err();
        assert!(
            matches!(&err, CommitError::Refused(ServiceError::QuotaExceeded(m)) if m.contains("1 keys")),
            "{err:?}"
        );
        let roomy_only = changes(
            &roomy,
            &[],
            &[("a", put(b"1", None)), ("b", put(b"2", None))],
        );
        store.commit(&roomy_only).unwrap();
    }

    fn reading_many_stops_at_its_byte_limit(store: &KvStore) {
        let g = KvGrant::new("m");
        store.set(&g, "big", &[0; 1000]).unwrap();
        let keys = vec!["big".to_owned(), "big".to_owned()];
        assert!(store.read_many("m", &keys, 2000).is_ok());
        assert!(matches!(
            store.read_many("m", &keys, 1999),
            Err(ServiceError::QuotaExceeded(_))
        ));
    }

    fn concurrent_increments_lose_nothing(store: &KvStore) {
        let g = KvGrant::new("c");
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..25 {
                        store.increment(&g, "hits", 1).unwrap();
                    }
                });
            }
        });
        assert_eq!(store.increment(&g, "hits", 0).unwrap(), 100);
        assert_eq!(store.usage("c").unwrap(), (1, 4 + 8));
    }

    fn of_two_commits_that_read_the_same_version_one_wins(store: &KvStore) {
        let g = KvGrant::new("w");
        store.set(&g, "balance", b"10").unwrap();
        let seen = store.read("w", "balance").unwrap().unwrap().version;
        let first = changes(&g, &[("balance", seen)], &[("balance", put(b"5", None))]);
        let second = changes(&g, &[("balance", seen)], &[("balance", put(b"7", None))]);
        store.commit(&first).unwrap();
        assert!(matches!(
            store.commit(&second),
            Err(CommitError::Conflict { key, .. }) if key == "balance"
        ));
        assert_eq!(
            store.get("w", "balance").unwrap().as_deref(),
            Some(&b"5"[..])
        );
        // An absent key read as absent conflicts once someone creates it.
        let create = changes(&g, &[("new", 0)], &[("new", put(b"a", None))]);
        store.set(&g, "new", b"b").unwrap();
        assert!(matches!(
            store.commit(&create),
            Err(CommitError::Conflict { .. })
        ));
    }

    fn updates_see_the_live_entry_and_keep_quotas(store: &KvStore) {
        let g = grant("u");
        assert!(!store.delete(&g, "missing").unwrap());
        store.set(&g, "a", b"1").unwrap();
        store.set(&g, "b", b"2").unwrap();
        store.set(&g, "c", b"3").unwrap();
        assert!(matches!(
            store.set(&g, "d", b"4"),
            Err(ServiceError::QuotaExceeded(_))
        ));
        assert!(store.delete(&g, "c").unwrap());
        store.set(&g, "d", b"4").unwrap();
        assert_eq!(store.usage("u").unwrap(), (3, 6));
        // A key whose entry expired reads as absent and can be written again.
        let expired = changes(&g, &[], &[("a", put(b"x", Some(now_ms() - 1)))]);
        store.commit(&expired).unwrap();
        assert_eq!(store.get("u", "a").unwrap(), None);
        let created = store
            .update(&g, "a", |current| {
                Ok((
                    Some(put(b"fresh", None)),
                    current.map(|entry| entry.value.clone()),
                ))
            })
            .unwrap();
        assert_eq!(created, None);
        assert_eq!(store.get("u", "a").unwrap().as_deref(), Some(&b"fresh"[..]));
        assert_eq!(store.usage("u").unwrap(), (3, 2 + 2 + 6));
    }

    fn a_write_based_on_a_key_another_commit_wrote_conflicts(store: &KvStore) {
        // Write skew: each reads both, each writes the other's key.
        let g = KvGrant::new("skew");
        store.set(&g, "alice", b"on").unwrap();
        store.set(&g, "bob", b"on").unwrap();
        let a = store.read("skew", "alice").unwrap().unwrap().version;
        let b = store.read("skew", "bob").unwrap().unwrap().version;
        let first = changes(
            &g,
            &[("alice", a), ("bob", b)],
            &[("alice", put(b"off", None))],
        );
        let second = changes(
            &g,
            &[("alice", a), ("bob", b)],
            &[("bob", put(b"off", None))],
        );
        store.commit(&first).unwrap();
        assert!(matches!(
            store.commit(&second),
            Err(CommitError::Conflict { key, .. }) if key == "alice"
        ));
        assert_eq!(
            store.get("skew", "bob").unwrap().as_deref(),
            Some(&b"on"[..])
        );
    }
}
