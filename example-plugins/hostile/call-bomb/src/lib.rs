//! Hostile: leans on plugin-to-plugin calls every way it can. Each
//! operation answers `{"ok": ..., "error": {"kind", "message"}}` describing
//! the first call that failed, so tests see exactly what the host refused.
//!
//! - `recurse`: calls itself (its name from the config value `self`) —
//!   a cycle.
//! - `chain`: calls the plugin named by the config value `next` with the
//!   same request, or answers `bottom` when there is none; instances under
//!   different names chain past the depth limit.
//! - `fanout` `{"target": T, "times": N}`: calls `T` `N` times in a row.
//! - `ungranted` `{"target": T}`: calls `T`, which it was not granted.
//! - `spin` `{"target": T}`: calls `T`'s `run` (a plugin that spins) and
//!   keeps going when it comes back.

use capsule_guest::plugins::{self, CallError};
use capsule_guest::{Plugin, PluginError, Request, Response, config, export_plugin};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Target {
    target: String,
    #[serde(default)]
    times: u32,
}

/// The answer for a call that failed: its kind and message.
fn describe(err: &CallError) -> Value {
    let (kind, message) = match err {
        CallError::Denied(m) => ("denied", m.clone()),
        CallError::UnknownTarget(m) => ("unknown_target", m.clone()),
        CallError::Ambiguous(m) => ("ambiguous", m.clone()),
        CallError::Refused(m) => ("refused", m.clone()),
        CallError::Plugin(e) => ("plugin", format!("{e:?}")),
        CallError::Failed(f) => ("failed", format!("{}: {}", f.kind, f.message)),
    };
    json!({"kind": kind, "message": message})
}

fn answer(value: Value) -> Result<Response, PluginError> {
    Response::json(&value)
}

struct CallBomb;

impl Plugin for CallBomb {
    fn handle(request: Request) -> Result<Response, PluginError> {
        match request.operation.as_str() {
            "recurse" => {
                let me = config::require("self")?;
                match plugins::call(&me, &request) {
                    Ok(_) => answer(json!({"ok": "recursed"})),
                    Err(err) => answer(json!({"error": describe(&err)})),
                }
            }
            "chain" => match config::get("next")? {
                None => answer(json!({"ok": "bottom"})),
                Some(next) => match plugins::call(&next, &request) {
                    // The deepest failure travels up unchanged.
                    Ok(response) => Ok(response),
                    Err(err) => answer(json!({"error": describe(&err), "at": next})),
                },
            },
            "fanout" => {
                let target: Target = request.json()?;
                for made in 0..target.times {
                    let call = Request::new("greet", r#"{"name":"bomb"}"#);
                    if let Err(err) = plugins::call(&target.target, &call) {
                        return answer(json!({"made": made, "error": describe(&err)}));
                    }
                }
                answer(json!({"made": target.times}))
            }
            "ungranted" => {
                let target: Target = request.json()?;
                match plugins::call(&target.target, &Request::new("anything", "")) {
                    Ok(_) => answer(json!({"ok": "called"})),
                    Err(err) => answer(json!({"error": describe(&err)})),
                }
            }
            "spin" => {
                let target: Target = request.json()?;
                let err = plugins::call(&target.target, &Request::new("run", "")).err();
                // Back from the callee, keep spending this call's time.
                let mut spins = 0u64;
                loop {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                    if spins == u64::MAX {
                        break;
                    }
                }
                answer(json!({"error": err.as_ref().map(describe)}))
            }
            other => Err(PluginError::Unsupported(format!(
                "unknown operation `{other}`"
            ))),
        }
    }
}

export_plugin!(CallBomb);
