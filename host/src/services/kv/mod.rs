//! The `kv` service: a persistent key-value store, one namespace per grant,
//! with quotas on key size, value size, key count and total bytes, and
//! per-call transactions.
//!
//! In an atomic grant (the default) a call's writes are buffered in its
//! [`Transaction`](super::transaction::Transaction) and reads record the
//! version they saw; the runtime commits them with the call's events when
//! the call succeeds. A grant with `atomic = false` writes through at once,
//! each operation its own store transaction. Every store operation runs on
//! tokio's blocking pool so a disk flush never stalls the async runtime.

mod embedded;
#[cfg(feature = "nats")]
pub(crate) mod nats;
mod standard;
pub(crate) mod store;

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use wasmtime::component::{HasData, Linker};

use super::calls::CallScope;
use super::transaction::{SharedTransaction, TransactionBudget, lock};
use super::{
    Availability, Holds, Import, PolicyContext, PrepareContext, Service, StoreContext, Views,
};
use crate::bounds::{Invalid, KIB, MIB, bytes, range};
use crate::contract::{ServiceError, interfaces, interfaces_v0_2};
use crate::units::Size;
#[cfg(feature = "nats")]
pub(crate) use nats::NatsKv;
use store::{Changes, Entry, NamespaceChanges, Write, check_key, check_value, unavailable};
pub use store::{KvError, KvStore};

/// A plugin's key-value grant: its namespace, quotas and transactions.
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
    /// Whether a call's writes commit together, only when it succeeds.
    pub atomic: bool,
    /// Most distinct keys one atomic call may read or write.
    pub max_call_keys: usize,
    /// Most bytes of keys and values one atomic call may buffer.
    pub max_call_bytes: usize,
}

impl KvGrant {
    /// A grant of `namespace` with default quotas: 256-byte keys, 64 KiB
    /// values, 10 000 keys, 16 MiB in total; atomic calls touching at most
    /// 4096 keys and buffering at most 4 MiB.
    pub fn new(namespace: impl Into<String>) -> Self {
        KvGrant {
            namespace: namespace.into(),
            max_key_bytes: 256,
            max_value_bytes: 64 << 10,
            max_keys: 10_000,
            max_total_bytes: 16 << 20,
            atomic: true,
            max_call_keys: 4096,
            max_call_bytes: 4 << 20,
        }
    }

    fn budget(&self) -> TransactionBudget {
        TransactionBudget {
            max_keys: self.max_call_keys,
            max_bytes: self.max_call_bytes,
        }
    }
}

/// Most keys `list-keys` answers (past them it refuses) and one page holds.
const LIST_LIMIT: usize = 1000;
/// Most keys one `get-many` or `set-many` names.
const MANY_LIMIT: usize = 256;
/// Longest time to live: ten years.
const MAX_TTL_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// Per-store state of the `kv` service: the plugin's grant, if any, the
/// host's store, and the store's transaction.
pub(crate) struct KvState {
    pub(crate) access: Option<(Arc<KvGrant>, Arc<KvStore>)>,
    pub(crate) denials: Arc<crate::services::Denials>,
    pub(crate) transaction: SharedTransaction,
    /// Whether a call is running: `init` is not a call, so what it writes
    /// is applied at once.
    in_call: bool,
    /// The call runs a pure operation: it may read, never write.
    pure: bool,
    /// When a store operation must have answered for the call to still
    /// report why it failed (`unavailable`) instead of timing out: four
    /// fifths of the call's time, set when it begins.
    answer_by: Option<Instant>,
    /// The `wasi:keyvalue` adapter's open buckets and cas handles.
    standard: standard::StandardKv,
}

/// Runs a store operation on the blocking pool; a store found unreachable,
/// or one that does not answer by `answer_by` (a NATS server that just
/// went away, before the client noticed), is noted on the call's
/// transaction (see `Transaction::unavailable`).
async fn blocking<T: Send + 'static>(
    (transaction, answer_by): (&SharedTransaction, Option<Instant>),
    work: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    let late = || Err(unavailable("no answer within the call's time"));
    let result = match answer_by {
        // Past it, no new operation starts: a call cannot leave more than
        // one behind on the pool (bounded by the store's own retries and
        // request timeouts).
        Some(at) if at <= Instant::now() => late(),
        Some(at) => {
            match tokio::time::timeout_at(at.into(), tokio::task::spawn_blocking(work)).await {
                Ok(joined) => {
                    joined.unwrap_or_else(|err| Err(unavailable(format!("worker failed: {err}"))))
                }
                Err(_) => late(),
            }
        }
        None => tokio::task::spawn_blocking(work)
            .await
            .unwrap_or_else(|err| Err(unavailable(format!("worker failed: {err}")))),
    };
    if let Err(ServiceError::Unavailable(why)) = &result {
        lock(transaction)
            .unavailable
            .get_or_insert_with(|| why.clone());
    }
    result
}

/// What a transactional read found: buffered by the transaction (no
/// version to check) or read from the store.
enum Seen {
    Buffered(Option<Vec<u8>>, Option<u64>),
    Stored(Option<Entry>),
}

impl Seen {
    fn value(&self) -> Option<&[u8]> {
        match self {
            Seen::Buffered(value, _) => value.as_deref(),
            Seen::Stored(entry) => entry.as_ref().map(|e| e.value.as_slice()),
        }
    }

    fn into_value(self) -> Option<Vec<u8>> {
        match self {
            Seen::Buffered(value, _) => value,
            Seen::Stored(entry) => entry.map(|e| e.value),
        }
    }

    fn expires_at(&self) -> Option<u64> {
        match self {
            Seen::Buffered(_, expires) => *expires,
            Seen::Stored(entry) => entry.as_ref().and_then(|e| e.expires_at),
        }
    }
}

impl KvState {
    /// What a store operation of this call reports to and waits for.
    fn waits(&self) -> (&SharedTransaction, Option<Instant>) {
        (&self.transaction, self.answer_by)
    }

    /// The grant (atomic only within a call) and the store.
    fn access(&self) -> Result<(Arc<KvGrant>, Arc<KvStore>), ServiceError> {
        match &self.access {
            Some((grant, store)) if grant.atomic && !self.in_call => {
                let direct = KvGrant {
                    atomic: false,
                    ..KvGrant::clone(grant)
                };
                Ok((Arc::new(direct), Arc::clone(store)))
            }
            Some((grant, store)) => Ok((Arc::clone(grant), Arc::clone(store))),
            None => {
                let message = "no key-value namespace was granted to this plugin";
                self.denials.record("kv", message);
                Err(ServiceError::Denied(message.into()))
            }
        }
    }

    /// [`KvState::access`] for a write: denied to a pure operation.
    fn access_to_write(&self) -> Result<(Arc<KvGrant>, Arc<KvStore>), ServiceError> {
        if self.pure {
            let message = "the operation is declared pure: it may not write to key-value storage";
            self.denials.record("kv", message);
            return Err(ServiceError::Denied(message.into()));
        }
        self.access()
    }

    /// What the call sees under `key`: its transaction's own write (or an
    /// enclosing one's), else the store's entry, whose version is recorded.
    async fn read(
        &self,
        grant: &Arc<KvGrant>,
        store: &Arc<KvStore>,
        key: &str,
    ) -> Result<Seen, ServiceError> {
        let now = store::now_ms();
        if let Some(write) = lock(&self.transaction).written(&grant.namespace, key) {
            let value = write.visible(now).map(<[u8]>::to_vec);
            // An expired buffered value is gone, its expiry with it.
            let expires = match (&write, &value) {
                (Write::Put { expires_at, .. }, Some(_)) => *expires_at,
                _ => None,
            };
            return Ok(Seen::Buffered(value, expires));
        }
        let entry = {
            let (store, ns, key) = (Arc::clone(store), grant.namespace.clone(), key.to_owned());
            blocking(self.waits(), move || store.read(&ns, &key)).await?
        };
        lock(&self.transaction).record_read(
            grant,
            key,
            store::version_of(entry.as_ref()),
            grant.budget(),
        )?;
        Ok(Seen::Stored(entry))
    }

    fn buffer(&self, grant: &Arc<KvGrant>, key: &str, write: Write) -> Result<(), ServiceError> {
        lock(&self.transaction).write(grant, key, write, grant.budget())
    }

    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, ServiceError> {
        let (grant, store) = self.access()?;
        check_key(&grant, &key)?;
        if !grant.atomic {
            return blocking(self.waits(), move || store.get(&grant.namespace, &key)).await;
        }
        Ok(self.read(&grant, &store, &key).await?.into_value())
    }

    async fn put(
        &mut self,
        key: String,
        value: Vec<u8>,
        expires_at: Option<u64>,
    ) -> Result<(), ServiceError> {
        let (grant, store) = self.access_to_write()?;
        check_key(&grant, &key)?;
        check_value(&grant, value.len())?;
        let write = Write::Put { value, expires_at };
        if !grant.atomic {
            return blocking(self.waits(), move || {
                store.update(&grant, &key, |_| Ok((Some(write.clone()), ())))
            })
            .await;
        }
        self.buffer(&grant, &key, write)
    }

    async fn delete(&mut self, key: String) -> Result<bool, ServiceError> {
        let (grant, store) = self.access_to_write()?;
        check_key(&grant, &key)?;
        if !grant.atomic {
            return blocking(self.waits(), move || store.delete(&grant, &key)).await;
        }
        let existed = self.read(&grant, &store, &key).await?.value().is_some();
        if existed {
            self.buffer(&grant, &key, Write::Delete)?;
        }
        Ok(existed)
    }

    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, ServiceError> {
        let (grant, store) = self.access_to_write()?;
        check_key(&grant, &key)?;
        if !grant.atomic {
            return blocking(self.waits(), move || store.increment(&grant, &key, delta)).await;
        }
        let seen = self.read(&grant, &store, &key).await?;
        let value = store::incremented(&key, seen.value(), delta)?;
        let write = Write::Put {
            value: value.to_le_bytes().to_vec(),
            expires_at: seen.expires_at(),
        };
        self.buffer(&grant, &key, write)?;
        Ok(value)
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<bool, ServiceError> {
        let (grant, store) = self.access_to_write()?;
        check_key(&grant, &key)?;
        check_value(&grant, new.len())?;
        let write = Write::Put {
            value: new,
            expires_at: None,
        };
        if !grant.atomic {
            return blocking(self.waits(), move || {
                store.update(&grant, &key, |current| {
                    let current = current.map(|entry| entry.value.as_slice());
                    Ok(if current == expected.as_deref() {
                        (Some(write.clone()), true)
                    } else {
                        (None, false)
                    })
                })
            })
            .await;
        }
        let seen = self.read(&grant, &store, &key).await?;
        if seen.value() != expected.as_deref() {
            return Ok(false);
        }
        self.buffer(&grant, &key, write)?;
        Ok(true)
    }

    async fn get_many(&mut self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, ServiceError> {
        let (grant, store) = self.access()?;
        if keys.len() > MANY_LIMIT {
            return Err(ServiceError::QuotaExceeded(format!(
                "get-many reads at most {MANY_LIMIT} keys"
            )));
        }
        for key in &keys {
            check_key(&grant, key)?;
        }
        let now = store::now_ms();
        let buffered: Vec<Option<Write>> = if grant.atomic {
            let txn = lock(&self.transaction);
            keys.iter()
                .map(|key| txn.written(&grant.namespace, key))
                .collect()
        } else {
            vec![None; keys.len()]
        };
        // Each key the store must answer, once.
        let missing: Vec<String> = keys
            .iter()
            .zip(&buffered)
            .filter(|(_, write)| write.is_none())
            .map(|(key, _)| key.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let limit = (4 * MIB as usize).max(grant.max_value_bytes);
        let entries = {
            let (store, ns) = (Arc::clone(&store), grant.namespace.clone());
            let missing = missing.clone();
            blocking(self.waits(), move || store.read_many(&ns, &missing, limit)).await?
        };
        if grant.atomic {
            let mut txn = lock(&self.transaction);
            for (key, entry) in missing.iter().zip(&entries) {
                txn.record_read(
                    &grant,
                    key,
                    store::version_of(entry.as_ref()),
                    grant.budget(),
                )?;
            }
        }
        let stored: std::collections::HashMap<&str, &Option<Entry>> =
            missing.iter().map(String::as_str).zip(&entries).collect();
        let mut answer = Vec::with_capacity(keys.len());
        let mut size = 0usize;
        for (key, write) in keys.iter().zip(buffered) {
            let value = match write {
                Some(write) => write.visible(now).map(<[u8]>::to_vec),
                None => stored
                    .get(key.as_str())
                    .and_then(|entry| entry.as_ref())
                    .map(|entry| entry.value.clone()),
            };
            size += value.as_ref().map_or(0, Vec::len);
            if size > limit {
                return Err(ServiceError::QuotaExceeded(format!(
                    "get-many would answer more than {limit} bytes"
                )));
            }
            answer.push(value);
        }
        Ok(answer)
    }

    async fn set_many(&mut self, entries: Vec<(String, Vec<u8>)>) -> Result<(), ServiceError> {
        let (grant, store) = self.access_to_write()?;
        if entries.len() > MANY_LIMIT {
            return Err(ServiceError::QuotaExceeded(format!(
                "set-many writes at most {MANY_LIMIT} keys"
            )));
        }
        for (key, value) in &entries {
            check_key(&grant, key)?;
            check_value(&grant, value.len())?;
        }
        let writes = entries.into_iter().map(|(key, value)| {
            (
                key,
                Write::Put {
                    value,
                    expires_at: None,
                },
            )
        });
        if !grant.atomic {
            let mut changes = NamespaceChanges::new(Arc::clone(&grant));
            changes.writes.extend(writes);
            let mut batch = Changes::default();
            batch
                .namespaces
                .insert(Arc::from(grant.namespace.as_str()), changes);
            return blocking(self.waits(), move || {
                store.commit(&batch).map_err(|err| match err {
                    store::CommitError::Refused(err) => err,
                    conflict => unavailable(conflict),
                })
            })
            .await;
        }
        let writes: Vec<(String, Write)> = writes.collect();
        lock(&self.transaction).write_all(&grant, writes, grant.budget())
    }

    async fn list_page(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<String>, Option<String>), ServiceError> {
        let (grant, store) = self.access()?;
        let limit = limit.clamp(1, LIST_LIMIT);
        let (stored, more) = {
            let (store, ns) = (Arc::clone(&store), grant.namespace.clone());
            let (prefix, after) = (prefix.clone(), after.clone());
            blocking(self.waits(), move || {
                store.list_keys(&ns, &prefix, after.as_deref(), limit)
            })
            .await?
        };
        if !grant.atomic {
            let next = more.then(|| stored.last().cloned()).flatten();
            return Ok((stored, next));
        }
        // The call's own writes (and its callers') change what it sees: up
        // to the last stored key of this page (or everywhere, on the last
        // page), buffered puts appear and buffered deletes hide.
        let now = store::now_ms();
        let writes = lock(&self.transaction).writes_under(&grant.namespace, &prefix);
        let bound = if more { stored.last().cloned() } else { None };
        let mut keys: std::collections::BTreeSet<String> = stored.into_iter().collect();
        for (key, write) in writes {
            let in_page = after.as_ref().is_none_or(|after| key > *after)
                && bound.as_ref().is_none_or(|bound| key <= *bound);
            if !in_page {
                continue;
            }
            if write.visible(now).is_some() {
                keys.insert(key);
            } else {
                keys.remove(&key);
            }
        }
        let mut keys: Vec<String> = keys.into_iter().collect();
        let mut next = bound;
        if keys.len() > limit {
            keys.truncate(limit);
            next = keys.last().cloned();
        }
        Ok((keys, next))
    }

    async fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, ServiceError> {
        let (keys, next) = self.list_page(prefix.clone(), None, LIST_LIMIT).await?;
        if next.is_some() {
            return Err(ServiceError::QuotaExceeded(format!(
                "more than {LIST_LIMIT} keys start with `{prefix}`: page through them with \
                 list-keys-page"
            )));
        }
        Ok(keys)
    }
}

impl interfaces_v0_2::kv::Host for KvState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, ServiceError> {
        KvState::get(self, key).await
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), ServiceError> {
        self.put(key, value, None).await
    }

    async fn delete(&mut self, key: String) -> Result<bool, ServiceError> {
        KvState::delete(self, key).await
    }

    async fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, ServiceError> {
        KvState::list_keys(self, prefix).await
    }

    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, ServiceError> {
        KvState::increment(self, key, delta).await
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<bool, ServiceError> {
        KvState::compare_and_swap(self, key, expected, new).await
    }

    async fn set_with_ttl(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<(), ServiceError> {
        if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
            return Err(ServiceError::Invalid(format!(
                "a time to live is 1 to {MAX_TTL_MS} milliseconds"
            )));
        }
        self.put(key, value, Some(store::now_ms() + ttl_ms)).await
    }

    async fn get_many(&mut self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, ServiceError> {
        KvState::get_many(self, keys).await
    }

    async fn set_many(&mut self, entries: Vec<(String, Vec<u8>)>) -> Result<(), ServiceError> {
        KvState::set_many(self, entries).await
    }

    async fn list_keys_page(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<interfaces_v0_2::kv::KeyPage, ServiceError> {
        let (keys, next) = self.list_page(prefix, after, limit as usize).await?;
        Ok(interfaces_v0_2::kv::KeyPage { keys, next })
    }
}

impl interfaces::kv::Host for KvState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, ServiceError> {
        KvState::get(self, key).await
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), ServiceError> {
        self.put(key, value, None).await
    }

    async fn delete(&mut self, key: String) -> Result<bool, ServiceError> {
        KvState::delete(self, key).await
    }

    /// Contract 0.1 has no pages to offer instead: it keeps its answer of
    /// the first 1000 keys.
    async fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, ServiceError> {
        Ok(self.list_page(prefix, None, LIST_LIMIT).await?.0)
    }

    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, ServiceError> {
        KvState::increment(self, key, delta).await
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
    atomic: Option<bool>,
    max_call_keys: Option<usize>,
    max_call_bytes: Option<Size>,
}

/// The `kv` service.
pub(crate) struct Kv;

struct KvData;

impl HasData for KvData {
    type Data<'a> = &'a mut KvState;
}

impl Service for Kv {
    const NAME: &'static str = "kv";
    const IMPORTS: &'static [Import] = &[
        Import::contract("kv"),
        Import::interface("wasi:keyvalue", "store"),
        Import::interface("wasi:keyvalue", "atomics"),
        Import::interface("wasi:keyvalue", "batch"),
    ];
    const BUDGETS: &'static str = "per namespace: `max_key`, `max_value`, `max_keys`, \
        `max_total` (`quota-exceeded` past them; an atomic call's are checked on what its \
        commit would leave); per atomic call: `max_call_keys` distinct keys read or written \
        (4096) and `max_call_bytes` buffered (4 MiB); `list-keys` answers at most 1000 keys, \
        a page at most 1000, `get-many`/`set-many` at most 256 keys; `wasi:keyvalue` (the \
        same grant): 16 open buckets and 16 cas handles per instance, each handle keeping its \
        key and a digest of the value";

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
        if let Some(atomic) = policy.atomic {
            grant.atomic = atomic;
        }
        if let Some(keys) = policy.max_call_keys {
            grant.max_call_keys = keys;
        }
        if let Some(size) = policy.max_call_bytes {
            grant.max_call_bytes = size.usize();
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
        bytes("max_total", kv.max_total_bytes, 0, 1 << 50)?;
        range("max_call_keys", kv.max_call_keys as u64, 1, 1 << 20, "keys")?;
        bytes("max_call_bytes", kv.max_call_bytes as u64, 1, 256 * MIB)
    }

    fn availability(grant: &Self::Grant) -> Availability {
        Availability::granted_if(grant.is_some())
    }

    fn summary(grant: &Self::Grant) -> Self::Summary {
        grant.clone()
    }

    fn prepare(
        grant: &Self::Grant,
        context: &PrepareContext<'_>,
    ) -> Result<Self::Prepared, String> {
        Ok(grant
            .clone()
            .map(|grant| (Arc::new(grant), Arc::clone(&context.host.kv_store))))
    }

    fn new_state(
        prepared: &Self::Prepared,
        store: &mut StoreContext<'_>,
    ) -> Result<KvState, String> {
        Ok(KvState {
            access: prepared.clone(),
            denials: Arc::clone(store.denials),
            transaction: Arc::clone(store.transaction),
            in_call: false,
            pure: false,
            answer_by: None,
            standard: standard::StandardKv::default(),
        })
    }

    fn begin_call(state: &mut KvState, limits: &crate::limits::Limits, scope: &CallScope) {
        state.in_call = true;
        state.pure = scope.pure;
        let now = Instant::now();
        let deadline = (now + limits.timeout).min(scope.deadline.unwrap_or(now + limits.timeout));
        state.answer_by = Some(now + deadline.saturating_duration_since(now) * 4 / 5);
    }

    fn end_call(state: &mut KvState) {
        // `shutdown` after a pure call may write again.
        state.pure = false;
    }

    fn add_to_linker<T: Holds<Self> + Views>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        interfaces::kv::add_to_linker::<T, KvData>(linker, |store| store.state())?;
        interfaces_v0_2::kv::add_to_linker::<T, KvData>(linker, |store| store.state())?;
        use crate::contract::standard_interfaces::keyvalue;
        keyvalue::store::add_to_linker::<T, KvData>(linker, |store| store.state())?;
        keyvalue::atomics::add_to_linker::<T, KvData>(linker, |store| store.state())?;
        keyvalue::batch::add_to_linker::<T, KvData>(linker, |store| store.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::contract::interfaces_v0_2::kv::Host as _;
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

    fn quota(err: ServiceError) -> bool {
        matches!(err, ServiceError::QuotaExceeded(_))
    }

    #[test]
    fn namespaces_are_isolated() {
        let store = KvStore::in_memory();
        store.set(&grant("a"), "k", b"one").unwrap();
        store.set(&grant("b"), "k", b"two").unwrap();
        assert_eq!(store.get("a", "k").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(store.get("b", "k").unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(store.list_keys("a", "", None, 10).unwrap().0, ["k"]);
        assert!(store.delete(&grant("a"), "k").unwrap());
        assert_eq!(store.get("a", "k").unwrap(), None);
        assert_eq!(store.get("b", "k").unwrap().as_deref(), Some(&b"two"[..]));
    }

    #[test]
    fn quotas_hold_and_deletes_give_space_back() {
        let store = KvStore::in_memory();
        let g = grant("q");
        assert!(quota(store.set(&g, "toolongkey", b"x").unwrap_err()));
        assert!(quota(store.set(&g, "k", &[0; 33]).unwrap_err()));
        for key in ["a", "b", "c"] {
            store.set(&g, key, b"v").unwrap();
        }
        assert!(quota(store.set(&g, "d", b"v").unwrap_err()));
        // Replacing an existing key is not a new key.
        store.set(&g, "a", b"w").unwrap();
        store.delete(&g, "a").unwrap();
        store.set(&g, "d", b"v").unwrap();
        // 3 keys × 1 byte + values: fill the byte budget.
        assert!(matches!(store.set(&g, "b", &[0; 32]), Ok(())));
        assert!(quota(store.set(&g, "c", &[0; 32]).unwrap_err()));
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
        let err = kv
            .state
            .compare_and_swap("k".into(), None, vec![])
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::Denied(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_write_through_grant_enforces_its_quotas_at_once() {
        let mut kv = Harness::<Kv>::from_policy(
            r#"{ max_keys = 2, max_value = "8B", max_key = "4B", atomic = false }"#,
            Path::new("."),
        )
        .unwrap();
        let grant = kv.state.access.as_ref().unwrap().0.clone();
        assert_eq!(grant.namespace, crate::services::harness::PLUGIN);
        kv.state
            .set("a".into(), b"12345678".to_vec())
            .await
            .unwrap();
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
        // Nothing was buffered: every write went through.
        assert!(!lock(&kv.transaction).kv.writes());
    }

    #[tokio::test]
    async fn an_atomic_call_sees_its_own_writes_and_others_see_them_at_commit() {
        let mut kv = Harness::<Kv>::from_policy(r#"{ max_keys = 2 }"#, Path::new(".")).unwrap();
        let ns = crate::services::harness::PLUGIN;
        kv.state.set("a".into(), b"1".to_vec()).await.unwrap();
        kv.state.set("b".into(), b"2".to_vec()).await.unwrap();
        assert_eq!(kv.state.increment("n".into(), 5).await.unwrap(), 5);
        assert_eq!(kv.state.increment("n".into(), 1).await.unwrap(), 6);
        assert!(kv.state.delete("b".into()).await.unwrap());
        assert_eq!(
            kv.state.get("a".into()).await.unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(kv.state.get("b".into()).await.unwrap(), None);
        assert_eq!(kv.state.list_keys(String::new()).await.unwrap(), ["a", "n"]);
        assert_eq!(kv.kv_store.get(ns, "a").unwrap(), None, "not yet committed");
        kv.commit().unwrap();
        assert_eq!(
            kv.kv_store.get(ns, "a").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(
            kv.kv_store.get(ns, "n").unwrap(),
            Some(6i64.to_le_bytes().to_vec())
        );
        // The next call starts empty; a third key breaks `max_keys` only
        // when it commits.
        kv.begin_call();
        kv.state.set("c".into(), b"3".to_vec()).await.unwrap();
        let err = kv.commit().unwrap_err();
        assert!(
            matches!(
                &err,
                store::CommitError::Refused(ServiceError::QuotaExceeded(_))
            ),
            "{err:?}"
        );
        assert_eq!(kv.kv_store.get(ns, "c").unwrap(), None);
        // A call that is not committed leaves nothing.
        kv.begin_call();
        kv.state.set("d".into(), b"4".to_vec()).await.unwrap();
        kv.begin_call();
        assert_eq!(kv.state.get("d".into()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn compare_and_swap_swaps_only_what_it_expects() {
        for atomic in [true, false] {
            let mut kv =
                Harness::<Kv>::from_policy(&format!("{{ atomic = {atomic} }}"), Path::new("."))
                    .unwrap();
            let cas =
                |expected: Option<&[u8]>, new: &[u8]| (expected.map(<[u8]>::to_vec), new.to_vec());
            let (e, n) = cas(None, b"1");
            assert!(kv.state.compare_and_swap("k".into(), e, n).await.unwrap());
            let (e, n) = cas(None, b"2");
            assert!(!kv.state.compare_and_swap("k".into(), e, n).await.unwrap());
            let (e, n) = cas(Some(b"0"), b"2");
            assert!(!kv.state.compare_and_swap("k".into(), e, n).await.unwrap());
            let (e, n) = cas(Some(b"1"), b"2");
            assert!(kv.state.compare_and_swap("k".into(), e, n).await.unwrap());
            assert_eq!(
                kv.state.get("k".into()).await.unwrap().as_deref(),
                Some(&b"2"[..]),
                "atomic = {atomic}"
            );
        }
    }

    #[tokio::test]
    async fn many_keys_at_once_and_pages_that_see_the_calls_writes() {
        let mut kv = Harness::<Kv>::from_policy("{}", Path::new(".")).unwrap();
        let entries = (0..5).map(|i| (format!("k{i}"), vec![i as u8])).collect();
        kv.state.set_many(entries).await.unwrap();
        kv.commit().unwrap();
        kv.begin_call();
        kv.state.delete("k1".into()).await.unwrap();
        kv.state.set("k9".into(), vec![9]).await.unwrap();
        let got = kv
            .state
            .get_many(vec!["k0".into(), "k1".into(), "k9".into(), "zz".into()])
            .await
            .unwrap();
        assert_eq!(got, [Some(vec![0]), None, Some(vec![9]), None]);
        let mut keys = Vec::new();
        let mut after = None;
        loop {
            let page = kv
                .state
                .list_keys_page("k".into(), after.clone(), 2)
                .await
                .unwrap();
            assert!(page.keys.len() <= 2);
            keys.extend(page.keys);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(keys, ["k0", "k2", "k3", "k4", "k9"]);
        let too_many = (0..=MANY_LIMIT).map(|i| i.to_string()).collect();
        assert!(quota(kv.state.get_many(too_many).await.unwrap_err()));
        let err = kv
            .state
            .set_with_ttl("t".into(), vec![], 0)
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::Invalid(_)), "{err:?}");
    }

    #[tokio::test]
    async fn listing_more_than_a_page_is_refused_rather_than_cut() {
        let mut kv = Harness::<Kv>::from_policy("{ atomic = false }", Path::new(".")).unwrap();
        let grant = kv.state.access.as_ref().unwrap().0.clone();
        for i in 0..=LIST_LIMIT {
            kv.kv_store.set(&grant, &format!("k{i:05}"), b"").unwrap();
        }
        let err = kv.state.list_keys("k".into()).await.unwrap_err();
        assert!(
            matches!(&err, ServiceError::QuotaExceeded(m) if m.contains("list-keys-page")),
            "{err:?}"
        );
        assert_eq!(kv.state.list_keys("k0000".into()).await.unwrap().len(), 10);
    }

    #[test]
    fn quotas_out_of_range_are_refused() {
        for (bad, field) in [
            (r#"{ max_key = "0B" }"#, "max_key"),
            (r#"{ max_keys = 2000000000000 }"#, "max_keys"),
            (r#"{ max_value = "1TiB" }"#, "max_value"),
            (r#"{ namespace = "" }"#, "namespace"),
            (r#"{ namespace = "a/b" }"#, "namespace"),
            (r#"{ max_call_keys = 0 }"#, "max_call_keys"),
            (r#"{ max_call_bytes = "1TiB" }"#, "max_call_bytes"),
        ] {
            let err = Harness::<Kv>::from_policy(bad, Path::new(".")).err();
            assert_eq!(err.map(|e| e.field).as_deref(), Some(field), "{bad}");
        }
        // A namespace that may hold nothing is a reader's grant, not a mistake.
        assert!(Harness::<Kv>::from_policy("{ max_keys = 0 }", Path::new(".")).is_ok());
    }

    #[tokio::test]
    async fn reads_check_their_keys_and_an_expired_buffered_counter_starts_over() {
        let mut kv = Harness::<Kv>::from_policy(r#"{ max_key = "8B" }"#, Path::new(".")).unwrap();
        let long = "k".repeat(9);
        assert!(quota(kv.state.get(long.clone()).await.unwrap_err()));
        assert!(quota(kv.state.delete(long.clone()).await.unwrap_err()));
        assert!(quota(kv.state.get_many(vec![long]).await.unwrap_err()));
        // A counter buffered with an expiry that passes within the call.
        let grant = kv.state.access.as_ref().unwrap().0.clone();
        let past = store::now_ms() - 1;
        let write = Write::Put {
            value: 5i64.to_le_bytes().to_vec(),
            expires_at: Some(past),
        };
        lock(&kv.transaction)
            .write(&grant, "n", write, grant.budget())
            .unwrap();
        assert_eq!(kv.state.increment("n".into(), 1).await.unwrap(), 1);
        assert_eq!(
            kv.state.increment("n".into(), 1).await.unwrap(),
            2,
            "no stale expiry"
        );
    }
}
