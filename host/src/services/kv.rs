//! The `kv` service: a persistent key-value store, one namespace per grant,
//! with quotas on key size, value size, key count and total bytes.
//!
//! The store is [redb](https://docs.rs/redb): pure Rust, ACID, crash-safe, a
//! single file, maintained, with serialised write transactions — so an
//! `increment` (read, add, write in one transaction) never loses an update to
//! a concurrent one, and quota accounting is exact. Every operation runs on
//! tokio's blocking pool so a disk flush never stalls the async runtime.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use wasmtime::component::{HasData, Linker};

use super::{Availability, Holds, HostShared, Import, PolicyContext, Service, StoreContext, Views};
use crate::bounds::{Invalid, KIB, MIB, bytes, range};
use crate::contract::{ServiceError, interfaces, interfaces_v0_2};
use crate::units::Size;

/// Entries: (namespace, key) → value.
const ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("entries");
/// Usage per namespace: (key count, bytes of keys and values).
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("usage");

/// A plugin's key-value grant: its namespace and quotas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvGrant {
    /// The namespace; plugins with different namespaces never see each
    /// other's keys. Two plugins may share one on purpose.
    pub namespace: String,
    /// Largest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Most keys the namespace may hold.
    pub max_keys: u64,
    /// Most bytes (keys plus values) the namespace may hold.
    pub max_total_bytes: u64,
}

impl KvGrant {
    /// A grant of `namespace` with default quotas: 256-byte keys, 64 KiB
    /// values, 10 000 keys, 16 MiB in total.
    pub fn new(namespace: impl Into<String>) -> Self {
        KvGrant {
            namespace: namespace.into(),
            max_key_bytes: 256,
            max_value_bytes: 64 << 10,
            max_keys: 10_000,
            max_total_bytes: 16 << 20,
        }
    }
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

/// The host's key-value database, shared by every plugin with a kv grant.
pub struct KvStore {
    db: Database,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvStore")
    }
}

fn unavailable(err: impl std::fmt::Display) -> ServiceError {
    ServiceError::Unavailable(format!("key-value store: {err}"))
}

impl KvStore {
    /// Opens (creating if needed) the database file at `path`.
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
        txn.open_table(ENTRIES)?;
        txn.open_table(USAGE)?;
        txn.commit()?;
        Ok(KvStore { db })
    }

    /// The value under `key` in `namespace`.
    pub fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, ServiceError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(ENTRIES).map_err(unavailable)?;
        let value = table.get((namespace, key)).map_err(unavailable)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Stores `value` under `key`, within the grant's quotas.
    pub fn set(&self, grant: &KvGrant, key: &str, value: &[u8]) -> Result<(), ServiceError> {
        check_key(grant, key)?;
        check_value(grant, value.len())?;
        let txn = self.db.begin_write().map_err(unavailable)?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(unavailable)?;
            let mut usage = txn.open_table(USAGE).map_err(unavailable)?;
            let ns = grant.namespace.as_str();
            let previous = entries
                .get((ns, key))
                .map_err(unavailable)?
                .map(|v| v.value().len());
            let (keys, bytes) = usage
                .get(ns)
                .map_err(unavailable)?
                .map_or((0, 0), |u| u.value());
            let (keys, bytes) = account(grant, (keys, bytes), key, previous, Some(value.len()))?;
            entries.insert((ns, key), value).map_err(unavailable)?;
            usage.insert(ns, (keys, bytes)).map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)
    }

    /// Removes `key`; returns whether it existed.
    pub fn delete(&self, namespace: &str, key: &str) -> Result<bool, ServiceError> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        let existed = {
            let mut entries = txn.open_table(ENTRIES).map_err(unavailable)?;
            let mut usage = txn.open_table(USAGE).map_err(unavailable)?;
            let removed = entries
                .remove((namespace, key))
                .map_err(unavailable)?
                .map(|v| v.value().len());
            if let Some(len) = removed {
                let (keys, bytes) = usage
                    .get(namespace)
                    .map_err(unavailable)?
                    .map_or((0, 0), |u| u.value());
                let freed = (key.len() + len) as u64;
                usage
                    .insert(
                        namespace,
                        (keys.saturating_sub(1), bytes.saturating_sub(freed)),
                    )
                    .map_err(unavailable)?;
            }
            removed.is_some()
        };
        txn.commit().map_err(unavailable)?;
        Ok(existed)
    }

    /// Keys of `namespace` starting with `prefix`, in order, at most `limit`.
    pub fn list_keys(
        &self,
        namespace: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, ServiceError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(ENTRIES).map_err(unavailable)?;
        let mut keys = Vec::new();
        for entry in table.range((namespace, prefix)..).map_err(unavailable)? {
            let (key, _) = entry.map_err(unavailable)?;
            let (ns, key) = key.value();
            if ns != namespace || !key.starts_with(prefix) || keys.len() >= limit {
                break;
            }
            keys.push(key.to_owned());
        }
        Ok(keys)
    }

    /// Adds `delta` to the little-endian `i64` under `key` (missing counts as
    /// 0) in one write transaction, and returns the new value.
    pub fn increment(&self, grant: &KvGrant, key: &str, delta: i64) -> Result<i64, ServiceError> {
        check_key(grant, key)?;
        let txn = self.db.begin_write().map_err(unavailable)?;
        let value = {
            let mut entries = txn.open_table(ENTRIES).map_err(unavailable)?;
            let mut usage = txn.open_table(USAGE).map_err(unavailable)?;
            let ns = grant.namespace.as_str();
            let previous = entries
                .get((ns, key))
                .map_err(unavailable)?
                .map(|v| v.value().to_vec());
            let current = match &previous {
                None => 0,
                Some(bytes) => {
                    let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                        ServiceError::Invalid(format!(
                            "key `{key}` holds {} bytes, not a counter (8-byte integer)",
                            bytes.len()
                        ))
                    })?;
                    i64::from_le_bytes(bytes)
                }
            };
            let value = current.checked_add(delta).ok_or_else(|| {
                ServiceError::Invalid(format!("incrementing `{key}` by {delta} overflows"))
            })?;
            let (keys, bytes) = usage
                .get(ns)
                .map_err(unavailable)?
                .map_or((0, 0), |u| u.value());
            let (keys, bytes) = account(
                grant,
                (keys, bytes),
                key,
                previous.map(|p| p.len()),
                Some(8),
            )?;
            entries
                .insert((ns, key), value.to_le_bytes().as_slice())
                .map_err(unavailable)?;
            usage.insert(ns, (keys, bytes)).map_err(unavailable)?;
            value
        };
        txn.commit().map_err(unavailable)?;
        Ok(value)
    }
}

fn check_key(grant: &KvGrant, key: &str) -> Result<(), ServiceError> {
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

fn check_value(grant: &KvGrant, len: usize) -> Result<(), ServiceError> {
    if len > grant.max_value_bytes {
        return Err(ServiceError::QuotaExceeded(format!(
            "value of {len} bytes exceeds the limit of {} bytes",
            grant.max_value_bytes
        )));
    }
    Ok(())
}

/// The namespace's usage after replacing an entry of `previous` value bytes
/// (or none) with one of `next` bytes, or the quota it would break.
fn account(
    grant: &KvGrant,
    (keys, bytes): (u64, u64),
    key: &str,
    previous: Option<usize>,
    next: Option<usize>,
) -> Result<(u64, u64), ServiceError> {
    let entry = |len: Option<usize>| len.map_or(0, |len| (key.len() + len) as u64);
    let keys = keys + u64::from(previous.is_none() && next.is_some());
    let bytes = (bytes + entry(next)).saturating_sub(entry(previous));
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
    Ok((keys, bytes))
}

/// Per-store state of the `kv` service: the plugin's grant, if any, and the
/// host's store.
pub(crate) struct KvState {
    pub(crate) access: Option<(Arc<KvGrant>, Arc<KvStore>)>,
}

/// Most keys one `list-keys` call returns.
const LIST_LIMIT: usize = 1000;

impl KvState {
    fn access(&self) -> Result<(Arc<KvGrant>, Arc<KvStore>), ServiceError> {
        self.access.clone().ok_or_else(|| {
            ServiceError::Denied("no key-value namespace was granted to this plugin".into())
        })
    }
}

/// Runs a store operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| Err(unavailable(format!("worker failed: {err}"))))
}

impl interfaces_v0_2::kv::Host for KvState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, ServiceError> {
        interfaces::kv::Host::get(self, key).await
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), ServiceError> {
        interfaces::kv::Host::set(self, key, value).await
    }

    async fn delete(&mut self, key: String) -> Result<bool, ServiceError> {
        interfaces::kv::Host::delete(self, key).await
    }

    async fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, ServiceError> {
        interfaces::kv::Host::list_keys(self, prefix).await
    }

    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, ServiceError> {
        interfaces::kv::Host::increment(self, key, delta).await
    }
}

impl interfaces::kv::Host for KvState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, ServiceError> {
        let (grant, store) = self.access()?;
        blocking(move || store.get(&grant.namespace, &key)).await
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), ServiceError> {
        let (grant, store) = self.access()?;
        blocking(move || store.set(&grant, &key, &value)).await
    }

    async fn delete(&mut self, key: String) -> Result<bool, ServiceError> {
        let (grant, store) = self.access()?;
        blocking(move || store.delete(&grant.namespace, &key)).await
    }

    async fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, ServiceError> {
        let (grant, store) = self.access()?;
        blocking(move || store.list_keys(&grant.namespace, &prefix, LIST_LIMIT)).await
    }

    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, ServiceError> {
        let (grant, store) = self.access()?;
        blocking(move || store.increment(&grant, &key, delta)).await
    }
}

/// How a policy file writes a kv grant:
/// `kv = { namespace = "counter", max_keys = 100, max_total = "64KiB" }`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct KvPolicy {
    pub(crate) namespace: Option<String>,
    max_key: Option<Size>,
    max_value: Option<Size>,
    max_keys: Option<u64>,
    max_total: Option<Size>,
}

/// The `kv` service.
pub(crate) struct Kv;

struct KvData;

impl HasData for KvData {
    type Data<'a> = &'a mut KvState;
}

impl Service for Kv {
    const NAME: &'static str = "kv";
    const IMPORTS: &'static [Import] = &[Import::contract("kv")];
    const BUDGETS: &'static str = "per namespace: `max_key`, `max_value`, `max_keys`, \
        `max_total` (`quota-exceeded` past them); `list-keys` answers at most 1000 keys";

    type Grant = Option<KvGrant>;
    type Policy = KvPolicy;
    type Summary = Option<KvGrant>;
    type Prepared = Option<(Arc<KvGrant>, Arc<KvStore>)>;
    type State = KvState;

    fn from_policy(policy: KvPolicy, context: &PolicyContext<'_>) -> Result<Self::Grant, Invalid> {
        let mut grant = KvGrant::new(
            policy
                .namespace
                .unwrap_or_else(|| context.plugin.to_owned()),
        );
        if let Some(size) = policy.max_key {
            grant.max_key_bytes = size.usize();
        }
        if let Some(size) = policy.max_value {
            grant.max_value_bytes = size.usize();
        }
        if let Some(keys) = policy.max_keys {
            grant.max_keys = keys;
        }
        if let Some(size) = policy.max_total {
            grant.max_total_bytes = size.0;
        }
        Ok(Some(grant))
    }

    fn validate(grant: &Self::Grant) -> Result<(), Invalid> {
        let Some(kv) = grant else { return Ok(()) };
        if kv.namespace.is_empty() || kv.namespace.len() > 128 || kv.namespace.contains(['\0', '/'])
        {
            return Err(Invalid::new(
                "namespace",
                "a namespace is 1 to 128 bytes, without `/` or NUL",
            ));
        }
        bytes("max_key", kv.max_key_bytes as u64, 1, 64 * KIB)?;
        bytes("max_value", kv.max_value_bytes as u64, 0, 64 * MIB)?;
        range("max_keys", kv.max_keys, 0, 1 << 40, "keys")?;
        bytes("max_total", kv.max_total_bytes, 0, 1 << 50)
    }

    fn availability(grant: &Self::Grant) -> Availability {
        Availability::granted_if(grant.is_some())
    }

    fn summary(grant: &Self::Grant) -> Self::Summary {
        grant.clone()
    }

    fn prepare(grant: &Self::Grant, host: &HostShared) -> Result<Self::Prepared, String> {
        Ok(grant
            .clone()
            .map(|grant| (Arc::new(grant), Arc::clone(&host.kv_store))))
    }

    fn new_state(
        prepared: &Self::Prepared,
        _store: &mut StoreContext<'_>,
    ) -> Result<KvState, String> {
        Ok(KvState {
            access: prepared.clone(),
        })
    }

    fn add_to_linker<T: Holds<Self> + Views>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        interfaces::kv::add_to_linker::<T, KvData>(linker, |store| store.state())?;
        interfaces_v0_2::kv::add_to_linker::<T, KvData>(linker, |store| store.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::contract::interfaces::kv::Host as _;
    use crate::services::harness::Harness;

    fn grant(ns: &str) -> KvGrant {
        KvGrant {
            max_keys: 3,
            max_total_bytes: 64,
            max_value_bytes: 32,
            max_key_bytes: 8,
            ..KvGrant::new(ns)
        }
    }

    #[test]
    fn namespaces_are_isolated() {
        let store = KvStore::in_memory();
        store.set(&grant("a"), "k", b"one").unwrap();
        store.set(&grant("b"), "k", b"two").unwrap();
        assert_eq!(store.get("a", "k").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(store.get("b", "k").unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(store.list_keys("a", "", 10).unwrap(), ["k"]);
        assert!(store.delete("a", "k").unwrap());
        assert_eq!(store.get("a", "k").unwrap(), None);
        assert_eq!(store.get("b", "k").unwrap().as_deref(), Some(&b"two"[..]));
    }

    #[test]
    fn quotas_hold_and_deletes_give_space_back() {
        let store = KvStore::in_memory();
        let g = grant("q");
        assert!(matches!(
            store.set(&g, "toolongkey", b"x"),
            Err(ServiceError::QuotaExceeded(_))
        ));
        assert!(matches!(
            store.set(&g, "k", &[0; 33]),
            Err(ServiceError::QuotaExceeded(_))
        ));
        for key in ["a", "b", "c"] {
            store.set(&g, key, b"v").unwrap();
        }
        assert!(matches!(
            store.set(&g, "d", b"v"),
            Err(ServiceError::QuotaExceeded(_))
        ));
        // Replacing an existing key is not a new key.
        store.set(&g, "a", b"w").unwrap();
        store.delete("q", "a").unwrap();
        store.set(&g, "d", b"v").unwrap();
        // 3 keys × 1 byte + values: fill the byte budget.
        assert!(matches!(store.set(&g, "b", &[0; 32]), Ok(())));
        assert!(matches!(
            store.set(&g, "c", &[0; 32]),
            Err(ServiceError::QuotaExceeded(_))
        ));
    }

    #[test]
    fn increments_are_atomic_counters() {
        let store = Arc::new(KvStore::in_memory());
        let g = Arc::new(KvGrant::new("n"));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (store, g) = (Arc::clone(&store), Arc::clone(&g));
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        store.increment(&g, "hits", 1).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.increment(&g, "hits", 0).unwrap(), 400);
        store.set(&g, "text", b"abc").unwrap();
        assert!(matches!(
            store.increment(&g, "text", 1),
            Err(ServiceError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn a_plugin_without_a_namespace_is_denied() {
        let mut kv = Harness::<Kv>::not_granted();
        let err = kv.state.get("k".into()).await.unwrap_err();
        assert!(
            matches!(&err, ServiceError::Denied(m) if m == "no key-value namespace was granted to this plugin"),
            "{err:?}"
        );
        let err = kv.state.set("k".into(), b"v".to_vec()).await.unwrap_err();
        assert!(matches!(err, ServiceError::Denied(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_policy_grant_defaults_its_namespace_and_enforces_its_quotas() {
        let mut kv = Harness::<Kv>::from_policy(
            r#"{ max_keys = 2, max_value = "8B", max_key = "4B" }"#,
            Path::new("."),
        )
        .unwrap();
        let grant = kv.state.access.as_ref().unwrap().0.clone();
        assert_eq!(grant.namespace, crate::services::harness::PLUGIN);
        kv.state
            .set("a".into(), b"12345678".to_vec())
            .await
            .unwrap();
        let quota = |err: ServiceError| matches!(err, ServiceError::QuotaExceeded(_));
        assert!(quota(
            kv.state
                .set("b".into(), b"123456789".to_vec())
                .await
                .unwrap_err()
        ));
        assert!(quota(
            kv.state
                .set("toolong".into(), b"1".to_vec())
                .await
                .unwrap_err()
        ));
        kv.state.set("b".into(), b"1".to_vec()).await.unwrap();
        let err = kv.state.set("c".into(), b"1".to_vec()).await.unwrap_err();
        assert!(
            matches!(&err, ServiceError::QuotaExceeded(m) if m.contains("is full (2 keys)")),
            "{err:?}"
        );
        assert!(kv.state.delete("a".into()).await.unwrap());
        kv.state.set("c".into(), b"1".to_vec()).await.unwrap();
        assert_eq!(kv.state.list_keys(String::new()).await.unwrap(), ["b", "c"]);
    }

    #[test]
    fn quotas_out_of_range_are_refused() {
        for (bad, field) in [
            (r#"{ max_key = "0B" }"#, "max_key"),
            (r#"{ max_keys = 2000000000000 }"#, "max_keys"),
            (r#"{ max_value = "1TiB" }"#, "max_value"),
            (r#"{ namespace = "" }"#, "namespace"),
            (r#"{ namespace = "a/b" }"#, "namespace"),
        ] {
            let err = Harness::<Kv>::from_policy(bad, Path::new(".")).err();
            assert_eq!(err.map(|e| e.field).as_deref(), Some(field), "{bad}");
        }
        // A namespace that may hold nothing is a reader's grant, not a mistake.
        assert!(Harness::<Kv>::from_policy("{ max_keys = 0 }", Path::new(".")).is_ok());
    }
}
