//! `wasi:keyvalue@0.2.0-draft2` (`store`, `atomics`, `batch`) as an adapter
//! over the `kv` service: the same grant, namespace, quotas, transaction and
//! denials as `capsule:plugin/kv`, so a component written for another host's
//! standard key-value interface runs here under the operator's grant.
//!
//! - `store.open` opens the plugin's granted namespace, by its name, and
//!   nothing else (`no-such-store`); without a kv grant it is
//!   `access-denied`.
//! - A `bucket` is a token for that namespace; a `cas` handle remembers the
//!   key and a SHA-256 digest of the value it read (never the value: a
//!   handle may outlive the call, and the host would keep what it holds),
//!   `current` reads the key again, and `swap` succeeds only if the value is
//!   still the one the handle saw, through the service's compare-and-swap.
//! - Budgets: at most [`MAX_BUCKETS`] buckets and [`MAX_CAS`] cas handles
//!   open at once per instance (the handles live in the instance's handle
//!   table, which the host keeps), so what the adapter keeps per instance
//!   is at most 16 keys and digests; `list-keys` pages hold at most 1000
//!   keys, batches at most 256, as the contract's own. A refusal is counted
//!   as a denial like any other of the service.

use sha2::{Digest, Sha256};
use wasmtime::component::Resource;

use super::{KvState, LIST_LIMIT, MANY_LIMIT};
use crate::contract::ServiceError;
use crate::contract::standard_interfaces::keyvalue::{atomics, batch, store};

/// Buckets one instance may hold open at once.
pub(crate) const MAX_BUCKETS: u32 = 16;
/// Compare-and-swap handles one instance may hold at once.
pub(crate) const MAX_CAS: usize = 16;

/// What the adapter keeps per store: open buckets and cas handles.
#[derive(Default)]
pub(crate) struct StandardKv {
    buckets: u32,
    /// Cas handles by rep: the key and what it held when the handle was
    /// made.
    cas: Vec<Option<CasEntry>>,
}

struct CasEntry {
    key: String,
    seen: Seen,
}

/// What a cas handle saw under its key: nothing, or a value by digest.
#[derive(PartialEq, Eq)]
enum Seen {
    Absent,
    Value([u8; 32]),
}

impl Seen {
    fn of(value: Option<&[u8]>) -> Seen {
        match value {
            None => Seen::Absent,
            Some(value) => Seen::Value(Sha256::digest(value).into()),
        }
    }
}

/// A Capsule service error as the proposal's error.
fn error(err: ServiceError) -> store::Error {
    match err {
        ServiceError::Denied(_) => store::Error::AccessDenied,
        ServiceError::QuotaExceeded(message) => {
            store::Error::Other(format!("quota exceeded: {message}"))
        }
        ServiceError::Invalid(message) => store::Error::Other(format!("invalid: {message}")),
        ServiceError::Unavailable(message) => {
            store::Error::Other(format!("unavailable: {message}"))
        }
    }
}

impl KvState {
    /// Refuses a request past one of the adapter's own budgets, counting
    /// it as the service's other refusals are.
    fn over_budget(&self, message: String) -> store::Error {
        self.denials.record("kv", &message);
        store::Error::Other(format!("quota exceeded: {message}"))
    }

    /// A new cas handle on `key`, which held `seen`, within the budgets.
    fn new_cas(&mut self, key: String, seen: Seen) -> Result<Resource<atomics::Cas>, store::Error> {
        let open = self.standard.cas.iter().flatten().count();
        if open >= MAX_CAS {
            return Err(
                self.over_budget(format!("at most {MAX_CAS} cas handles may be open at once"))
            );
        }
        let entry = Some(CasEntry { key, seen });
        let slot = match self.standard.cas.iter().position(Option::is_none) {
            Some(free) => {
                self.standard.cas[free] = entry;
                free
            }
            None => {
                self.standard.cas.push(entry);
                self.standard.cas.len() - 1
            }
        };
        Ok(Resource::new_own(slot as u32))
    }

    fn cas_key(&self, cas: &Resource<atomics::Cas>) -> Option<String> {
        self.standard
            .cas
            .get(cas.rep() as usize)
            .and_then(Option::as_ref)
            .map(|entry| entry.key.clone())
    }
}

impl store::Host for KvState {
    async fn open(&mut self, identifier: String) -> Result<Resource<store::Bucket>, store::Error> {
        let (grant, _) = self.access().map_err(error)?;
        if identifier != grant.namespace {
            self.denials.record(
                "kv",
                &format!("store `{identifier}` is not the granted namespace"),
            );
            return Err(store::Error::NoSuchStore);
        }
        if self.standard.buckets >= MAX_BUCKETS {
            return Err(
                self.over_budget(format!("at most {MAX_BUCKETS} buckets may be open at once"))
            );
        }
        self.standard.buckets += 1;
        Ok(Resource::new_own(0))
    }
}

impl store::HostBucket for KvState {
    async fn get(
        &mut self,
        _bucket: Resource<store::Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, store::Error> {
        KvState::get(self, key).await.map_err(error)
    }

    async fn set(
        &mut self,
        _bucket: Resource<store::Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), store::Error> {
        self.put(key, value, None).await.map_err(error)
    }

    async fn delete(
        &mut self,
        _bucket: Resource<store::Bucket>,
        key: String,
    ) -> Result<(), store::Error> {
        KvState::delete(self, key).await.map(drop).map_err(error)
    }

    async fn exists(
        &mut self,
        _bucket: Resource<store::Bucket>,
        key: String,
    ) -> Result<bool, store::Error> {
        Ok(KvState::get(self, key).await.map_err(error)?.is_some())
    }

    async fn list_keys(
        &mut self,
        _bucket: Resource<store::Bucket>,
        cursor: Option<String>,
    ) -> Result<store::KeyResponse, store::Error> {
        let (keys, cursor) = self
            .list_page(String::new(), cursor, LIST_LIMIT)
            .await
            .map_err(error)?;
        Ok(store::KeyResponse { keys, cursor })
    }

    async fn drop(&mut self, _bucket: Resource<store::Bucket>) -> wasmtime::Result<()> {
        self.standard.buckets = self.standard.buckets.saturating_sub(1);
        Ok(())
    }
}

impl atomics::Host for KvState {
    async fn increment(
        &mut self,
        _bucket: Resource<store::Bucket>,
        key: String,
        delta: i64,
    ) -> Result<i64, store::Error> {
        KvState::increment(self, key, delta).await.map_err(error)
    }

    async fn swap(
        &mut self,
        cas: Resource<atomics::Cas>,
        value: Vec<u8>,
    ) -> Result<(), atomics::CasError> {
        let entry = self
            .standard
            .cas
            .get_mut(cas.rep() as usize)
            .and_then(Option::take);
        let Some(CasEntry { key, seen }) = entry else {
            return Err(atomics::CasError::StoreError(store::Error::Other(
                "unknown cas handle".into(),
            )));
        };
        let store_error = |err| atomics::CasError::StoreError(error(err));
        // The value now, swapped only if it is still what the handle saw;
        // the compare-and-swap guards the moment between read and write.
        let now = KvState::get(self, key.clone()).await.map_err(store_error)?;
        if Seen::of(now.as_deref()) == seen
            && self
                .compare_and_swap(key.clone(), now, value)
                .await
                .map_err(store_error)?
        {
            return Ok(());
        }
        // Someone changed it: a new handle on what is there now, to retry.
        let now = KvState::get(self, key.clone()).await.map_err(store_error)?;
        let retry = self
            .new_cas(key, Seen::of(now.as_deref()))
            .map_err(atomics::CasError::StoreError)?;
        Err(atomics::CasError::CasFailed(retry))
    }
}

impl atomics::HostCas for KvState {
    async fn new(
        &mut self,
        _bucket: Resource<store::Bucket>,
        key: String,
    ) -> Result<Resource<atomics::Cas>, store::Error> {
        let current = KvState::get(self, key.clone()).await.map_err(error)?;
        self.new_cas(key, Seen::of(current.as_deref()))
    }

    async fn current(
        &mut self,
        cas: Resource<atomics::Cas>,
    ) -> Result<Option<Vec<u8>>, store::Error> {
        // Read again rather than kept: if it changed since the handle was
        // made, `swap` fails with a handle on the new value.
        match self.cas_key(&cas) {
            Some(key) => KvState::get(self, key).await.map_err(error),
            None => Err(store::Error::Other("unknown cas handle".into())),
        }
    }

    async fn drop(&mut self, cas: Resource<atomics::Cas>) -> wasmtime::Result<()> {
        if let Some(slot) = self.standard.cas.get_mut(cas.rep() as usize) {
            *slot = None;
        }
        Ok(())
    }
}

impl batch::Host for KvState {
    async fn get_many(
        &mut self,
        _bucket: Resource<store::Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, store::Error> {
        let values = KvState::get_many(self, keys.clone()).await.map_err(error)?;
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(key, value)| value.map(|value| (key, value)))
            .collect())
    }

    async fn set_many(
        &mut self,
        _bucket: Resource<store::Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), store::Error> {
        KvState::set_many(self, key_values).await.map_err(error)
    }

    async fn delete_many(
        &mut self,
        _bucket: Resource<store::Bucket>,
        keys: Vec<String>,
    ) -> Result<(), store::Error> {
        if keys.len() > MANY_LIMIT {
            return Err(error(ServiceError::QuotaExceeded(format!(
                "at most {MANY_LIMIT} keys at once"
            ))));
        }
        for key in keys {
            KvState::delete(self, key).await.map_err(error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::services::harness::{Harness, PLUGIN};
    use crate::services::kv::Kv;
    use atomics::{Host as _, HostCas as _};
    use store::Host as _;

    fn write_through() -> Harness<Kv> {
        Harness::<Kv>::from_policy("{ atomic = false }", Path::new(".")).unwrap()
    }

    #[tokio::test]
    async fn only_the_granted_namespace_opens() {
        let mut kv = write_through();
        assert!(kv.state.open(PLUGIN.into()).await.is_ok());
        assert!(matches!(
            kv.state.open("someone-else".into()).await,
            Err(store::Error::NoSuchStore)
        ));
        let mut bare = Harness::<Kv>::not_granted();
        assert!(matches!(
            bare.state.open(PLUGIN.into()).await,
            Err(store::Error::AccessDenied)
        ));
    }

    #[tokio::test]
    async fn a_swap_fails_when_the_value_changed_and_the_retry_sees_the_new_one() {
        let mut kv = write_through();
        let bucket = || Resource::<store::Bucket>::new_own(0);
        let cas = kv.state.new(bucket(), "k".into()).await.unwrap();
        assert_eq!(
            kv.state
                .current(Resource::new_borrow(cas.rep()))
                .await
                .unwrap(),
            None
        );
        // Another writer gets there first.
        store::HostBucket::set(&mut kv.state, bucket(), "k".into(), b"theirs".to_vec())
            .await
            .unwrap();
        let retry = match kv.state.swap(cas, b"mine".to_vec()).await {
            Err(atomics::CasError::CasFailed(retry)) => retry,
            other => panic!("expected cas-failed, got {:?}", other.map_err(|_| "error")),
        };
        assert_eq!(
            kv.state
                .current(Resource::new_borrow(retry.rep()))
                .await
                .unwrap()
                .as_deref(),
            Some(&b"theirs"[..])
        );
        assert!(kv.state.swap(retry, b"mine".to_vec()).await.is_ok());
        assert_eq!(
            store::HostBucket::get(&mut kv.state, bucket(), "k".into())
                .await
                .unwrap()
                .as_deref(),
            Some(&b"mine"[..])
        );
    }

    #[tokio::test]
    async fn cas_handles_and_buckets_are_bounded_and_given_back_when_dropped() {
        let mut kv = write_through();
        let mut held = Vec::new();
        for i in 0..MAX_CAS {
            held.push(
                kv.state
                    .new(Resource::new_own(0), format!("k{i}"))
                    .await
                    .unwrap(),
            );
        }
        let refused = kv.state.new(Resource::new_own(0), "one-more".into()).await;
        assert!(
            matches!(&refused, Err(store::Error::Other(m)) if m.contains("quota exceeded")),
            "{refused:?}"
        );
        atomics::HostCas::drop(&mut kv.state, held.pop().unwrap())
            .await
            .unwrap();
        assert!(
            kv.state
                .new(Resource::new_own(0), "one-more".into())
                .await
                .is_ok()
        );

        let mut buckets = Vec::new();
        for _ in 0..MAX_BUCKETS {
            buckets.push(kv.state.open(PLUGIN.into()).await.unwrap());
        }
        assert!(kv.state.open(PLUGIN.into()).await.is_err());
        store::HostBucket::drop(&mut kv.state, buckets.pop().unwrap())
            .await
            .unwrap();
        assert!(kv.state.open(PLUGIN.into()).await.is_ok());
    }

    #[tokio::test]
    async fn list_keys_pages_through_every_key() {
        let mut kv = write_through();
        for chunk in 0..6 {
            let entries = (0..250)
                .map(|i| (format!("key{:05}", chunk * 250 + i), b"v".to_vec()))
                .collect();
            batch::Host::set_many(&mut kv.state, Resource::new_own(0), entries)
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = store::HostBucket::list_keys(&mut kv.state, Resource::new_own(0), cursor)
                .await
                .unwrap();
            pages += 1;
            seen.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, 2);
        assert_eq!(seen.len(), 1500);
        assert!(seen.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
