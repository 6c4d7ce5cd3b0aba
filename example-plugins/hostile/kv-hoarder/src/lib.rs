//! Hostile: tries to make the host hold an unbounded kv transaction. Each
//! operation keeps going until the host refuses, then fails with the
//! refusal, so tests see which budget stopped it.
//!
//! - `buffer`: writes 60 KiB values under new keys in one call (all
//!   buffered until the call commits) — stopped by `kv.max_call_bytes`.
//! - `reads`: reads distinct 250-byte keys that do not exist (each read is
//!   recorded for the commit's check) — stopped by `kv.max_call_keys` or
//!   `kv.max_call_bytes`.
//! - `seed` then `many`: stores one 60 KiB value, then asks `get-many` for
//!   it 256 times over — stopped by get-many's answer limit.
//! - `nest`: buffers almost its whole per-call budget, then calls the
//!   plugin named by config `next` with `nest` (instances under different
//!   names chain): every callee's buffer joins the caller's transaction,
//!   until the tree budget refuses the one that would not fit.

use capsule_guest::{Plugin, PluginError, Request, Response, config, export_plugin, kv, plugins};

/// A value just under the default 64 KiB `max_value`.
const VALUE: usize = 60 << 10;

fn refused(what: &str, done: usize, err: impl std::fmt::Debug) -> PluginError {
    PluginError::failed(format!("{what} stopped after {done}: {err:?}"))
}

struct KvHoarder;

impl Plugin for KvHoarder {
    fn handle(request: Request) -> Result<Response, PluginError> {
        let value = vec![0x5a; VALUE];
        match request.operation.as_str() {
            "buffer" => {
                for i in 0.. {
                    if let Err(err) = kv::set(&format!("b{i}"), &value) {
                        return Err(refused("buffering", i, err));
                    }
                }
                unreachable!()
            }
            "reads" => {
                for i in 0.. {
                    let key = format!("{i:0>250}");
                    if let Err(err) = kv::get(&key) {
                        return Err(refused("reading", i, err));
                    }
                }
                unreachable!()
            }
            "seed" => {
                kv::set("big", &value)?;
                Ok(Response::bytes("seeded"))
            }
            "many" => {
                let keys = vec!["big"; 256];
                match kv::get_many(&keys) {
                    Ok(values) => Ok(Response::bytes(format!("got {} values", values.len()))),
                    Err(err) => Err(refused("get-many", 0, err)),
                }
            }
            "nest" => {
                // 64 values of 60 KiB: 3.75 MiB of the 4 MiB per call.
                for i in 0..64 {
                    kv::set(&format!("n{i}"), &value)?;
                }
                match config::get("next")? {
                    None => Ok(Response::bytes("bottom")),
                    Some(next) => match plugins::call(&next, &request) {
                        Ok(response) => Ok(response),
                        Err(err) => Err(refused(&format!("calling {next}"), 0, err)),
                    },
                }
            }
            other => Err(PluginError::Unsupported(other.to_owned())),
        }
    }
}

export_plugin!(KvHoarder);
