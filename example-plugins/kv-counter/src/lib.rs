//! The kv-counter plugin: named counters in the plugin's key-value namespace.
//!
//! It demonstrates the `kv` host service and its atomic `increment`: many
//! concurrent calls (on many instances) never lose a count, because the host,
//! not the plugin, does the read-modify-write.
//!
//! - `increment` with `{"key": "k"}` adds one and answers `{"key": "k", "count": N}`;
//!   with `"ttl_ms": 60000` the counter also expires that long after this
//!   increment (a rate-limit window);
//! - `fill` with `{"prefix": "p", "count": N}` creates counters `p0` …
//!   `p<N-1>` at 0, 256 at a time with `set-many`;
//! - `count-keys` with `{"prefix": "p"}` answers `{"count": N}`, walking every
//!   key page by page, however many there are;
//! - `get` with `{"key": "k"}` answers the current `{"key": "k", "count": N}`
//!   (0 for a key never incremented, which `get` does not create);
//! - `increment-all` with `{"keys": ["a", "b", "c"], "publish": true,
//!   "then": "error"}` increments every key in turn (publishing
//!   `counter.bumped` for each when `publish` is set), then ends as `then`
//!   says: `ok` (the default) answers the new counts; `error` fails with a
//!   plugin error, `panic` traps, `spin` loops until the sandbox stops it
//!   (out of fuel or past its deadline). Because a call's writes and events
//!   commit only when it succeeds, every ending but `ok` leaves all the
//!   counters — and the event list — as they were. With `"via": "other"`
//!   it first calls plugin `other`'s `increment-all` with the same keys
//!   (the operator must grant that edge): the callee's writes join this
//!   call's transaction, so they too are kept only if this call succeeds.
//!
//! Without a kv grant every call fails with `denied`. Its health check reads
//! the store, so `/readyz` shows it degraded while the store does not
//! answer (NATS gone).

use capsule_guest::{Plugin, PluginError, Request, Response, ServiceError, export_plugin, kv, log};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct CounterIn {
    key: String,
    #[serde(default)]
    ttl_ms: Option<u64>,
}

#[derive(Deserialize)]
struct FillIn {
    prefix: String,
    count: u32,
}

#[derive(Deserialize)]
struct PrefixIn {
    prefix: String,
}

#[derive(Serialize)]
struct CounterOut {
    key: String,
    count: i64,
}

#[derive(Deserialize)]
struct ManyIn {
    keys: Vec<String>,
    #[serde(default)]
    publish: bool,
    #[serde(default)]
    then: Ending,
    #[serde(default)]
    via: Option<String>,
}

/// How `increment-all` ends once every key is incremented.
#[derive(Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum Ending {
    #[default]
    Ok,
    Error,
    Panic,
    Spin,
}

struct KvCounter;

impl Plugin for KvCounter {
    fn handle(request: Request) -> Result<Response, PluginError> {
        log::info!("handling `{}`", request.operation);
        request
            .dispatch()
            .json("increment", |input: CounterIn| {
                let count = kv::increment(&input.key, 1)?;
                if let Some(ttl) = input.ttl_ms {
                    let ttl = std::time::Duration::from_millis(ttl);
                    kv::set_with_ttl(&input.key, &count.to_le_bytes(), ttl)?;
                }
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
            .json("fill", |input: FillIn| {
                let keys: Vec<String> = (0..input.count)
                    .map(|i| format!("{}{i}", input.prefix))
                    .collect();
                let zero = 0i64.to_le_bytes();
                for chunk in keys.chunks(256) {
                    let entries: Vec<(&str, &[u8])> =
                        chunk.iter().map(|key| (key.as_str(), &zero[..])).collect();
                    kv::set_many(&entries)?;
                }
                Ok(serde_json::json!({ "count": input.count }))
            })
            .json("count-keys", |input: PrefixIn| {
                let mut count = 0u64;
                for key in kv::keys(&input.prefix) {
                    key?;
                    count += 1;
                }
                Ok(serde_json::json!({ "count": count }))
            })
            .json("increment-all", |input: ManyIn| {
                if let Some(via) = &input.via {
                    let keys = serde_json::json!({ "keys": input.keys, "publish": input.publish });
                    capsule_guest::plugins::call_json::<_, serde_json::Value>(
                        via,
                        "increment-all",
                        &keys,
                    )?;
                }
                let mut counts = Vec::with_capacity(input.keys.len());
                for key in input.keys {
                    let count = kv::increment(&key, 1)?;
                    if input.publish {
                        capsule_guest::events::publish_json(
                            "counter.bumped",
                            &serde_json::json!({ "key": key, "count": count }),
                        )?;
                    }
                    counts.push(CounterOut { key, count });
                }
                match input.then {
                    Ending::Ok => Ok(counts),
                    Ending::Error => Err(PluginError::failed("failing after every write")),
                    Ending::Panic => panic!("trapping after every write"),
                    Ending::Spin => spin(),
                }
            })
            .finish()
    }

    /// Healthy while its store answers: with the NATS backend, losing NATS
    /// shows this plugin as degraded in `/readyz`. Without a kv grant there
    /// is no store to lose (every call is `denied`, as the operator chose),
    /// which is not a sickness.
    fn health() -> Result<(), String> {
        match kv::get("health-probe") {
            Ok(_) | Err(ServiceError::Denied(_)) => Ok(()),
            Err(err) => Err(format!("the counter store does not answer: {err:?}")),
        }
    }
}

/// Loops until the sandbox stops the call; the volatile read keeps the
/// compiler from proving the loop endless and removing it.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

export_plugin!(KvCounter);
