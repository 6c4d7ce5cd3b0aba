//! The `kv` service. Until the persistent store lands every operation answers
//! `denied`, so plugins that import it link and get a typed refusal.

use wasmtime::component::{HasData, Linker};

use crate::contract::{ServiceError, interfaces};
use crate::store::StoreState;

/// Per-store state of the `kv` service.
pub(crate) struct KvState;

fn denied() -> ServiceError {
    ServiceError::Denied("no key-value namespace was granted to this plugin".into())
}

impl interfaces::kv::Host for KvState {
    fn get(&mut self, _key: String) -> Result<Option<Vec<u8>>, ServiceError> {
        Err(denied())
    }

    fn set(&mut self, _key: String, _value: Vec<u8>) -> Result<(), ServiceError> {
        Err(denied())
    }

    fn delete(&mut self, _key: String) -> Result<bool, ServiceError> {
        Err(denied())
    }

    fn list_keys(&mut self, _prefix: String) -> Result<Vec<String>, ServiceError> {
        Err(denied())
    }

    fn increment(&mut self, _key: String, _delta: i64) -> Result<i64, ServiceError> {
        Err(denied())
    }
}

struct KvService;

impl HasData for KvService {
    type Data<'a> = &'a mut KvState;
}

pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    interfaces::kv::add_to_linker::<StoreState, KvService>(linker, |state| &mut state.kv)
}
