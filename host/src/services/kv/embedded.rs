//! The embedded key-value backend: one [redb](https://docs.rs/redb) file
//! (or memory) in this host process — pure Rust, ACID, crash-safe, with
//! serialised write transactions. Every entry carries the version of the
//! commit that wrote it; expired entries are invisible at once and purged
//! by every write transaction and by the host's background sweep.

use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, ReadableDatabase, ReadableTable, Table, TableDefinition, TableHandle,
    WriteTransaction,
};

use super::KvGrant;
use super::store::{
    Changes, CommitError, Decide, Entry, KvBackend, KvError, Write, account, check_quota,
    collect_within, now_ms, unavailable, version_of,
};
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

/// The embedded backend: a redb database.
pub(crate) struct EmbeddedKv {
    db: Database,
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

impl EmbeddedKv {
    /// Opens (creating if needed) the database file at `path`; a store
    /// written by an earlier Capsule is upgraded in place.
    pub(crate) fn open(path: &Path) -> Result<EmbeddedKv, KvError> {
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
    pub(crate) fn in_memory() -> EmbeddedKv {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database always opens");
        Self::init(db).expect("an in-memory database always initialises")
    }

    fn init(db: Database) -> Result<EmbeddedKv, redb::Error> {
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
        Ok(EmbeddedKv { db })
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
}

impl KvBackend for EmbeddedKv {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    /// The live entry under `key` in `namespace`.
    fn read(&self, namespace: &str, key: &str) -> Result<Option<Entry>, ServiceError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(ENTRIES).map_err(unavailable)?;
        let entry = table.get((namespace, key)).map_err(unavailable)?;
        Ok(entry.and_then(|v| live_entry(v.value(), now_ms())))
    }

    /// The live entries under `keys`, read from one snapshot; refused
    /// (before reading more) once their values pass `max_bytes`.
    fn read_many(
        &self,
        namespace: &str,
        keys: &[String],
        max_bytes: usize,
    ) -> Result<Vec<Option<Entry>>, ServiceError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(ENTRIES).map_err(unavailable)?;
        let now = now_ms();
        let entries = keys.iter().map(|key| {
            let entry = table.get((namespace, key.as_str())).map_err(unavailable)?;
            Ok(entry.and_then(|v| live_entry(v.value(), now)))
        });
        collect_within(entries, max_bytes)
    }

    /// Reads the entry under `key` and, in the same write transaction,
    /// applies the write `decide` chooses (if any); returns what it says.
    fn update(
        &self,
        grant: &KvGrant,
        key: &str,
        decide: &mut Decide<'_>,
    ) -> Result<(), ServiceError> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        {
            let mut tables = Tables::open(&txn, now_ms())?;
            tables.purge(PURGE_PER_WRITE)?;
            let current = tables.current(&grant.namespace, key)?;
            if let Some(write) = decide(current.as_ref())? {
                let writers = [Arc::new(grant.clone())];
                tables.apply_all(grant, &writers, [(key, &write)])?;
            }
        }
        txn.commit().map_err(unavailable)
    }

    /// Commits `changes` in one write transaction: every key read must
    /// still have the version it was read at, then every write applies
    /// within its namespace's quotas. On any error nothing is written.
    fn commit(&self, changes: &Changes) -> Result<(), CommitError> {
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

    /// Live keys of `namespace` that start with `prefix` and sort after
    /// `after`, in order, at most `limit`; and whether more follow.
    fn list_keys(
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
    fn purge_expired(&self, max: usize) -> Result<usize, ServiceError> {
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

    /// Keys and bytes `namespace` holds (expired entries not yet purged
    /// included).
    fn usage(&self, namespace: &str) -> Result<(u64, u64), ServiceError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let usage = txn.open_table(USAGE).map_err(unavailable)?;
        let value = usage.get(namespace).map_err(unavailable)?;
        Ok(value.map_or((0, 0), |u| u.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let store = super::super::KvStore::with_backend(EmbeddedKv::init(db).unwrap());
        let entry = store.read("ns", "k").unwrap().unwrap();
        assert_eq!((entry.version, entry.value.as_slice()), (1, &b"old"[..]));
        store.set(&KvGrant::new("ns"), "k2", b"v").unwrap();
        assert!(store.read("ns", "k2").unwrap().unwrap().version > 1);
        assert_eq!(store.usage("ns").unwrap(), (2, 4 + 3));
    }
}
