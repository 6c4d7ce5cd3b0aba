//! The kv-counter plugin: named counters in the plugin's key-value namespace.
//!
//! It demonstrates the `kv` host service and its atomic `increment`: many
//! concurrent calls (on many instances) never lose a count, because the host,
//! not the plugin, does the read-modify-write.
//!
//! - `increment` with `{"key": "k"}` adds one and answers `{"key": "k", "count": N}`;
//! - `get` with `{"key": "k"}` answers the current `{"key": "k", "count": N}`
//!   (0 for a key never incremented, which `get` does not create).
//!
//! Without a kv grant every call fails with `denied`.

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin, kv, log};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct CounterIn {
    key: String,
}

#[derive(Serialize)]
struct CounterOut {
    key: String,
    count: i64,
}

struct KvCounter;

impl Plugin for KvCounter {
    fn handle(request: Request) -> Result<Response, PluginError> {
        log::info!("handling `{}`", request.operation);
        request
            .dispatch()
            .json("increment", |input: CounterIn| {
                let count = kv::increment(&input.key, 1)?;
                log::info!("counter `{}` is now {count}", input.key);
                Ok(CounterOut {
                    key: input.key,
                    count,
                })
            })
            .json("get", |input: CounterIn| {
                // A missing key counts 0 without being created (so reading
                // never spends the namespace's key quota). Otherwise adding 0
                // reads the integer `increment` keeps, atomically, whatever
                // encoding the host stores it in.
                let count = match kv::get(&input.key)? {
                    None => 0,
                    Some(_) => kv::increment(&input.key, 0)?,
                };
                Ok(CounterOut {
                    key: input.key,
                    count,
                })
            })
            .finish()
    }
}

export_plugin!(KvCounter);
