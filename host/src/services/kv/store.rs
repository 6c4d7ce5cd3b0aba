//! The key-value database: versioned entries with optional expiry, quotas
//! per namespace, and commits that apply a whole set of changes at once or
//! not at all.
//!
//! The store is [redb](https://docs.rs/redb): pure Rust, ACID, crash-safe, a
//! single file, with serialised write transactions. Every entry carries the
//! version of the commit that wrote it, so a transaction that read a key can
//! check at commit that nobody changed it since (optimistic concurrency: see
//! [`Changes`]). Expired entries are invisible at once and purged by every
//! write transaction and by the host's background sweep.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{
    Database, ReadableDatabase, ReadableTable, Table, TableDefinition, TableHandle,
    WriteTransaction,
};

use super::KvGrant;
use crate::contract::ServiceError;

/// Entries: (namespace, key) → (version, expiry in Unix milliseconds or 0
/// for never, value).
const ENTRIES: TableDefinition<(&str, &str), (u64, u64, &[u8])> =
    TableDefinition::new("kv.entries.v2");
/// Entries of stores written before versions existed: (namespace, key) →
/// value. Moved into [`ENTRIES`] when such a store is opened.
const LEGACY_ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("entries");
/// Usage per namespace: (key count, bytes of keys and values).
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("usage");
/// Entries that expire: (expiry, namespace, key) → ().
const EXPIRIES: TableDefinition<(u64, &str, &str), ()> = TableDefinition::new("kv.expiries");
/// Counters: `version` is the version of the last commit.
const META: TableDefinition<&str, u64> = TableDefinition::new("kv.meta");

/// Expired entries every write transaction purges on its way (the sweep
/// purges the rest), so purging never makes one commit slow.
const PURGE_PER_WRITE: usize = 64;

/// The current time in Unix milliseconds (the clock expiries are kept in).
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

/// The host's key-value database, shared by every plugin with a kv grant.
pub struct KvStore {
    db: Database,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvStore")
    }
}

pub(crate) fn unavailable(err: impl std::fmt::Display) -> ServiceError {
    ServiceError::Unavailable(format!("key-value store: {err}"))
}

/// The tables a write transaction changes.
struct Tables<'txn> {
    entries: Table<'txn, (&'static str, &'static str), (u64, u64, &'static [u8])>,
    usage: Table<'txn, &'static str, (u64, u64)>,
    expiries: Table<'txn, (u64, &'static str, &'static str), ()>,
    /// The version this transaction's writes get.
    version: u64,
    now: u64,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction, now: u64) -> Result<Self, ServiceError> {
        let mut meta = txn.open_table(META).map_err(unavailable)?;
        let version = meta
            .get("version")
            .map_err(unavailable)?
            .map_or(0, |v| v.value())
            + 1;
        meta.insert("version", version).map_err(unavailable)?;
        Ok(Tables {
            entries: txn.open_table(ENTRIES).map_err(unavailable)?,
            usage: txn.open_table(USAGE).map_err(unavailable)?,
            expiries: txn.open_table(EXPIRIES).map_err(unavailable)?,
            version,
            now,
        })
    }

    /// The live entry under `key`; an expired one reads as none.
    fn current(&self, namespace: &str, key: &str) -> Result<Option<Entry>, ServiceError> {
        let entry = self.entries.get((namespace, key)).map_err(unavailable)?;
        Ok(entry.and_then(|v| live_entry(v.value(), self.now)))
    }

    /// Stored bytes of the entry under `key`, expired or not.
    fn stored(&self, namespace: &str, key: &str) -> Result<Option<(usize, u64)>, ServiceError> {
        let entry = self.entries.get((namespace, key)).map_err(unavailable)?;
        Ok(entry.map(|v| {
            let (_, expires, value) = v.value();
            (value.len(), expires)
        }))
    }

    /// The namespace's usage: (keys, bytes).
    fn usage_of(&self, namespace: &str) -> Result<(u64, u64), ServiceError> {
        let usage = self.usage.get(namespace).map_err(unavailable)?;
        Ok(usage.map_or((0, 0), |u| u.value()))
    }

    /// Applies `write` to `key`, keeping the namespace's usage; quotas are
    /// the caller's to check, on what all its writes leave.
    fn apply(&mut self, grant: &KvGrant, key: &str, write: &Write) -> Result<(), ServiceError> {
        let ns = grant.namespace.as_str();
        let previous = self.stored(ns, key)?;
        let next = match write {
            Write::Put { value, .. } => Some(value.len()),
            Write::Delete => None,
        };
        if previous.is_none() && next.is_none() {
            return Ok(());
        }
        let usage = account(self.usage_of(ns)?, key, previous.map(|p| p.0), next);
        if let Some((_, expires)) = previous
            && expires != 0
        {
            self.expiries
                .remove((expires, ns, key))
                .map_err(unavailable)?;
        }
        match write {
            Write::Put { value, expires_at } => {
                let expires = expires_at.unwrap_or(0);
                self.entries
                    .insert((ns, key), (self.version, expires, value.as_slice()))
                    .map_err(unavailable)?;
                if expires != 0 {
                    self.expiries
                        .insert((expires, ns, key), ())
                        .map_err(unavailable)?;
                }
            }
            Write::Delete => {
                self.entries.remove((ns, key)).map_err(unavailable)?;
            }
        }
        self.usage.insert(ns, usage).map_err(unavailable)?;
        Ok(())
    }

    /// Applies `writes` to `grant`'s namespace; fails if what they leave
    /// breaks the quotas of any of `writers` (unless it holds no more than
    /// before: an operator may have lowered a quota under what a namespace
    /// held).
    fn apply_all<'w>(
        &mut self,
        grant: &KvGrant,
        writers: &[Arc<KvGrant>],
        writes: impl IntoIterator<Item = (&'w str, &'w Write)>,
    ) -> Result<(), ServiceError> {
        let before = self.usage_of(&grant.namespace)?;
        for (key, write) in writes {
            self.apply(grant, key, write)?;
        }
        let after = self.usage_of(&grant.namespace)?;
        if after.0 > before.0 || after.1 > before.1 {
            for writer in writers {
                check_quota(writer, after)?;
            }
        }
        Ok(())
    }

    /// Removes up to `max` entries that expired by now; returns how many.
    fn purge(&mut self, max: usize) -> Result<usize, ServiceError> {
        let due: Vec<(u64, String, String)> = self
            .expiries
            .range(..(self.now + 1, "", ""))
            .map_err(unavailable)?
            .take(max)
            .map(|item| {
                item.map(|(key, _)| {
                    let (at, ns, key) = key.value();
                    (at, ns.to_owned(), key.to_owned())
                })
            })
            .collect::<Result<_, _>>()
            .map_err(unavailable)?;
        for (at, ns, key) in &due {
            self.expiries
                .remove((*at, ns.as_str(), key.as_str()))
                .map_err(unavailable)?;
            let Some((len, expires)) = self.stored(ns, key)? else {
                continue;
            };
            if expires != *at {
                continue;
            }
            self.entries
                .remove((ns.as_str(), key.as_str()))
                .map_err(unavailable)?;
            let (keys, bytes) = self
                .usage
                .get(ns.as_str())
                .map_err(unavailable)?
                .map_or((0, 0), |u| u.value());
            let freed = (key.len() + len) as u64;
            self.usage
                .insert(
                    ns.as_str(),
                    (keys.saturating_sub(1), bytes.saturating_sub(freed)),
                )
                .map_err(unavailable)?;
        }
        Ok(due.len())
    }
}

fn live_entry((version, expires, value): (u64, u64, &[u8]), now: u64) -> Option<Entry> {
    if expires != 0 && expires <= now {
        return None;
    }
    Some(Entry {
        version,
        expires_at: (expires != 0).then_some(expires),
        value: value.to_vec(),
    })
}

impl KvStore {
    /// Opens (creating if needed) the database file at `path`; a store
    /// written by an earlier Capsule is upgraded in place.
    pub fn open(path: &Path) -> Result<KvStore, KvError> {
        let fail = |reason: String| KvError {
            path: path.display().to_string(),
            reason,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|err| fail(err.to_string()))?;
        }
        let db = Database::create(path).map_err(|err| fail(err.to_string()))?;
        Self::init(db).map_err(|err| fail(err.to_string()))
    }

    /// A store that lives only as long as the host (for tests and for hosts
    /// configured without a data directory).
    pub fn in_memory() -> KvStore {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database always opens");
        Self::init(db).expect("an in-memory database always initialises")
    }

    fn init(db: Database) -> Result<KvStore, redb::Error> {
        let txn = db.begin_write()?;
        let legacy = txn
            .list_tables()?
            .any(|table| table.name() == LEGACY_ENTRIES.name());
        {
            let mut entries = txn.open_table(ENTRIES)?;
            txn.open_table(USAGE)?;
            txn.open_table(EXPIRIES)?;
            txn.open_table(META)?;
            if legacy {
                // Entries from before versions: version 1, no expiry.
                let old = txn.open_table(LEGACY_ENTRIES)?;
                for item in old.iter()? {
                    let (key, value) = item?;
                    let (ns, key) = key.value();
                    entries.insert((ns, key), (1, 0, value.value()))?;
                }
            }
        }
        if legacy {
            txn.open_table(META)?.insert("version", 1)?;
            txn.delete_table(LEGACY_ENTRIES)?;
        }
        txn.commit()?;
        Ok(KvStore { db })
    }

    /// The live entry under `key` in `namespace`.
    pub(crate) fn read(&self, namespace: &str, key: &str) -> Result<Option<Entry>, ServiceError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(ENTRIES).map_err(unavailable)?;
        let entry = table.get((namespace, key)).map_err(unavailable)?;
        Ok(entry.and_then(|v| live_entry(v.value(), now_ms())))
    }

    /// The live entries under `keys`, read from one snapshot; refused
    /// (before reading more) once their values pass `max_bytes`.
    pub(crate) fn read_many(
        &self,
        namespace: &str,
        keys: &[String],
        max_bytes: usize,
    ) -> Result<Vec<Option<Entry>>, ServiceError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(ENTRIES).map_err(unavailable)?;
        let now = now_ms();
        let mut size = 0usize;
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            let entry = table.get((namespace, key.as_str())).map_err(unavailable)?;
            let entry = entry.and_then(|v| live_entry(v.value(), now));
            size += entry.as_ref().map_or(0, |e| e.value.len());
            if size > max_bytes {
                return Err(ServiceError::QuotaExceeded(format!(
                    "get-many would answer more than {max_bytes} bytes"
                )));
            }
            entries.push(entry);
        }
        Ok(entries)
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
    /// 0) in one write transaction, and returns the new value.
    pub fn increment(&self, grant: &KvGrant, key: &str, delta: i64) -> Result<i64, ServiceError> {
        check_key(grant, key)?;
        self.update(grant, key, |current| {
            let value = incremented(key, current.map(|entry| entry.value.as_slice()), delta)?;
            Ok((Some(counter(value, current)), value))
        })
    }

    /// Reads the entry under `key` and, in the same write transaction,
    /// applies the write `decide` chooses (if any); returns what it says.
    pub(crate) fn update<R>(
        &self,
        grant: &KvGrant,
        key: &str,
        decide: impl FnOnce(Option<&Entry>) -> Result<(Option<Write>, R), ServiceError>,
    ) -> Result<R, ServiceError> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        let answer = {
            let mut tables = Tables::open(&txn, now_ms())?;
            tables.purge(PURGE_PER_WRITE)?;
            let current = tables.current(&grant.namespace, key)?;
            let (write, answer) = decide(current.as_ref())?;
            if let Some(write) = &write {
                let writers = [Arc::new(grant.clone())];
                tables.apply_all(grant, &writers, [(key, write)])?;
            }
            answer
        };
        txn.commit().map_err(unavailable)?;
        Ok(answer)
    }

    /// Commits `changes` in one write transaction: every key read must
    /// still have the version it was read at, then every write applies
    /// within its namespace's quotas. On any error nothing is written.
    pub(crate) fn commit(&self, changes: &Changes) -> Result<(), CommitError> {
        let refused = CommitError::Refused;
        if !changes.writes() {
            return self.validate(changes);
        }
        let txn = self.db.begin_write().map_err(|e| refused(unavailable(e)))?;
        {
            let mut tables = Tables::open(&txn, now_ms()).map_err(refused)?;
            tables.purge(PURGE_PER_WRITE).map_err(refused)?;
            for (namespace, ns) in &changes.namespaces {
                for (key, seen) in &ns.reads {
                    let current = tables.current(namespace, key).map_err(refused)?;
                    if version_of(current.as_ref()) != *seen {
                        return Err(CommitError::Conflict {
                            namespace: namespace.to_string(),
                            key: key.clone(),
                        });
                    }
                }
                let writes = ns.writes.iter().map(|(key, write)| (key.as_str(), write));
                let writers: &[Arc<KvGrant>] = if ns.writers.is_empty() {
                    std::slice::from_ref(&ns.grant)
                } else {
                    &ns.writers
                };
                tables
                    .apply_all(&ns.grant, writers, writes)
                    .map_err(refused)?;
            }
        }
        txn.commit().map_err(|e| refused(unavailable(e)))
    }

    /// Checks that every key `changes` read still has the version it was
    /// read at (a read-only transaction's commit).
    fn validate(&self, changes: &Changes) -> Result<(), CommitError> {
        fn refused(err: impl std::fmt::Display) -> CommitError {
            CommitError::Refused(unavailable(err))
        }
        let txn = self.db.begin_read().map_err(refused)?;
        let table = txn.open_table(ENTRIES).map_err(refused)?;
        let now = now_ms();
        for (namespace, ns) in &changes.namespaces {
            for (key, seen) in &ns.reads {
                let current = table
                    .get((&**namespace, key.as_str()))
                    .map_err(refused)?
                    .and_then(|v| live_entry(v.value(), now));
                if version_of(current.as_ref()) != *seen {
                    return Err(CommitError::Conflict {
                        namespace: namespace.to_string(),
                        key: key.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Live keys of `namespace` that start with `prefix` and sort after
    /// `after`, in order, at most `limit`; and whether more follow.
    pub(crate) fn list_keys(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), ServiceError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(ENTRIES).map_err(unavailable)?;
        let now = now_ms();
        let start = match after {
            Some(after) if after >= prefix => after,
            _ => prefix,
        };
        let mut keys = Vec::new();
        for entry in table.range((namespace, start)..).map_err(unavailable)? {
            let (key, value) = entry.map_err(unavailable)?;
            let (ns, key) = key.value();
            if ns != namespace || !key.starts_with(prefix) {
                break;
            }
            if after == Some(key) || live_entry(value.value(), now).is_none() {
                continue;
            }
            if keys.len() == limit {
                return Ok((keys, true));
            }
            keys.push(key.to_owned());
        }
        Ok((keys, false))
    }

    /// Removes up to `max` expired entries; returns how many it looked at
    /// (fewer than `max`: none are left).
    pub(crate) fn purge_expired(&self, max: usize) -> Result<usize, ServiceError> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        let purged = {
            let mut tables = Tables::open(&txn, now_ms())?;
            tables.purge(max)?
        };
        if purged == 0 {
            txn.abort().map_err(unavailable)?;
        } else {
            txn.commit().map_err(unavailable)?;
        }
        Ok(purged)
    }

    /// Starts the background sweep that purges expired entries, at most
    /// 16 × 1024 a second so it never holds the write lock for long. The
    /// sweep stops once the store is dropped.
    pub fn start_sweeper(store: &Arc<KvStore>) {
        let store = Arc::downgrade(store);
        let spawned = std::thread::Builder::new()
            .name("capsule-kv-sweep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(1));
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

    /// Keys and bytes `namespace` holds (expired entries not yet purged
    /// included).
    #[cfg(test)]
    pub(crate) fn usage(&self, namespace: &str) -> Result<(u64, u64), ServiceError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let usage = txn.open_table(USAGE).map_err(unavailable)?;
        let value = usage.get(namespace).map_err(unavailable)?;
        Ok(value.map_or((0, 0), |u| u.value()))
    }

    /// Entries the store holds, expired or not.
    #[cfg(test)]
    pub(crate) fn len(&self) -> Result<u64, ServiceError> {
        use redb::ReadableTableMetadata as _;
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(ENTRIES).map_err(unavailable)?;
        table.len().map_err(unavailable)
    }
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
fn account(
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
fn check_quota(grant: &KvGrant, (keys, bytes): (u64, u64)) -> Result<(), ServiceError> {
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
    use super::*;

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

    #[test]
    fn a_commit_whose_reads_changed_writes_nothing() {
        let store = KvStore::in_memory();
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

    #[test]
    fn quotas_count_what_a_commit_leaves() {
        let store = KvStore::in_memory();
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

    #[test]
    fn expired_entries_are_invisible_and_purged_with_their_usage() {
        let store = KvStore::in_memory();
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
        assert_eq!(store.len().unwrap(), 3);
        assert_eq!(store.purge_expired(100).unwrap(), 1);
        assert_eq!(store.len().unwrap(), 2);
        assert_eq!(store.usage("t").unwrap(), (2, 4 + 3 + 5 + 1));
        // Overwriting a key that expires drops its old expiry.
        store.set(&g, "kept", b"forever").unwrap();
        assert_eq!(store.read("t", "kept").unwrap().unwrap().expires_at, None);
    }

    #[test]
    fn keys_page_after_a_cursor() {
        let store = KvStore::in_memory();
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

    #[test]
    fn a_store_from_before_versions_is_upgraded() {
        let backend = redb::backends::InMemoryBackend::new();
        let db = Database::builder().create_with_backend(backend).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(LEGACY_ENTRIES)
            .unwrap()
            .insert(("ns", "k"), b"old".as_slice())
            .unwrap();
        txn.open_table(USAGE).unwrap().insert("ns", (1, 4)).unwrap();
        txn.commit().unwrap();
        let store = KvStore::init(db).unwrap();
        let entry = store.read("ns", "k").unwrap().unwrap();
        assert_eq!((entry.version, entry.value.as_slice()), (1, &b"old"[..]));
        store.set(&KvGrant::new("ns"), "k2", b"v").unwrap();
        assert!(store.read("ns", "k2").unwrap().unwrap().version > 1);
        assert_eq!(store.usage("ns").unwrap(), (2, 4 + 3));
    }

    #[test]
    fn a_shared_namespace_holds_every_writers_quota() {
        let store = KvStore::in_memory();
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

    #[test]
    fn reading_many_stops_at_its_byte_limit() {
        let store = KvStore::in_memory();
        let g = KvGrant::new("m");
        store.set(&g, "big", &[0; 1000]).unwrap();
        let keys = vec!["big".to_owned(), "big".to_owned()];
        assert!(store.read_many("m", &keys, 2000).is_ok());
        assert!(matches!(
            store.read_many("m", &keys, 1999),
            Err(ServiceError::QuotaExceeded(_))
        ));
    }
}
