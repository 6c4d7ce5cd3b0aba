//! `wasi:keyvalue@0.2.0-draft2` (`store`, `atomics`, `batch`) as an adapter
//! over the `kv` service: the same grant, namespace, quotas, transaction and
//! denials as `capsule:plugin/kv`, so a component written for another host's
//! standard key-value interface runs here under the operator's grant.
//!
//! - `store.open` opens the plugin's granted namespace, by its name, and
//!   nothing else (`no-such-store`); without a kv grant it is
//!   `access-denied`.
//! - A `bucket` is a token for that namespace; a `cas` handle remembers the
//!   key and the value it read, and `swap` is the service's
//!   compare-and-swap against that value.
//! - Budgets: at most [`MAX_BUCKETS`] buckets and [`MAX_CAS`] cas handles
//!   open at once per instance (the handles live in the instance's handle
//!   table, which the host keeps), and the values cas handles hold at most
//!   the grant's `max_call_bytes` together; `list-keys` pages hold at most
//!   1000 keys, batches at most 256, as the contract's own.

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
    /// Cas handles by rep: the key and the value read when it was made.
    cas: Vec<Option<CasEntry>>,
}

struct CasEntry {
    key: String,
    current: Option<Vec<u8>>,
}

impl StandardKv {
    fn cas_bytes(&self) -> usize {
        self.cas
            .iter()
            .flatten()
            .map(|entry| entry.key.len() + entry.current.as_ref().map_or(0, Vec::len))
            .sum()
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
    /// A new cas handle on `key` holding `current`, within the budgets.
    fn new_cas(
        &mut self,
        key: String,
        current: Option<Vec<u8>>,
    ) -> Result<Resource<atomics::Cas>, store::Error> {
        let (grant, _) = self.access().map_err(error)?;
        let open = self.standard.cas.iter().flatten().count();
        if open >= MAX_CAS {
            return Err(store::Error::Other(format!(
                "quota exceeded: at most {MAX_CAS} cas handles may be open at once"
            )));
        }
        let bytes = key.len() + current.as_ref().map_or(0, Vec::len);
        if self.standard.cas_bytes() + bytes > grant.max_call_bytes {
            return Err(store::Error::Other(format!(
                "quota exceeded: open cas handles may hold at most {} bytes",
                grant.max_call_bytes
            )));
        }
        let entry = Some(CasEntry { key, current });
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

    fn cas_entry(&self, cas: &Resource<atomics::Cas>) -> wasmtime::Result<&CasEntry> {
        self.standard
            .cas
            .get(cas.rep() as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| wasmtime::format_err!("unknown cas handle"))
    }
}

impl store::Host for KvState {
    async fn open(&mut self, identifier: String) -> Result<Resource<store::Bucket>, store::Error> {
        let (grant, _) = self.access().map_err(error)?;
        if identifier != grant.namespace {
            return Err(store::Error::NoSuchStore);
        }
        if self.standard.buckets >= MAX_BUCKETS {
            return Err(store::Error::Other(format!(
                "quota exceeded: at most {MAX_BUCKETS} buckets may be open at once"
            )));
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
        let Some(CasEntry { key, current }) = entry else {
            return Err(atomics::CasError::StoreError(store::Error::Other(
                "unknown cas handle".into(),
            )));
        };
        let swapped = self
            .compare_and_swap(key.clone(), current, value)
            .await
            .map_err(|err| atomics::CasError::StoreError(error(err)))?;
        if swapped {
            return Ok(());
        }
        // Someone changed it: a new handle on what is there now, to retry.
        let now = KvState::get(self, key.clone())
            .await
            .map_err(|err| atomics::CasError::StoreError(error(err)))?;
        let retry = self
            .new_cas(key, now)
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
        self.new_cas(key, current)
    }

    async fn current(
        &mut self,
        cas: Resource<atomics::Cas>,
    ) -> Result<Option<Vec<u8>>, store::Error> {
        match self.cas_entry(&cas) {
            Ok(entry) => Ok(entry.current.clone()),
            Err(_) => Err(store::Error::Other("unknown cas handle".into())),
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
