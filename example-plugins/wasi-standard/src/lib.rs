//! The wasi-standard plugin: written against the standard WASI proposals
//! Spin and wasmCloud implement — `wasi:keyvalue@0.2.0-draft2`,
//! `wasi:config@0.2.0-draft`, `wasi:logging@0.1.0-draft` — with plain
//! wit-bindgen and no Capsule SDK; it exports Capsule's handler so Capsule
//! can call it. Capsule answers those imports from the same grants as its
//! own (`kv`, `config`, `log`).
//!
//! Its bucket is the config value `bucket` (default `default`). Operations
//! answer JSON:
//!
//! - `greet` with `{"name": "…"}`: the greeting word from `wasi:config`
//!   (`greeting`, default `Hello`), logged through `wasi:logging`;
//! - `count`: increments `hits` with `wasi:keyvalue/atomics` and answers
//!   `{"hits": N}`;
//! - `append` with `{"key": "…", "text": "…"}`: appends to the value under
//!   `key` with compare-and-swap (`cas`, retried when another call got there
//!   first) and answers the new value;
//! - `batch`: writes `a`, `b`, `c` with `set-many`, reads them and a missing
//!   key with `get-many`, deletes `a` with `delete-many`, then lists every
//!   key page by page; answers what it saw;
//! - `write-then-fail`: sets `doomed`, then fails (the write must not stay);
//! - `open` with `{"bucket": "…"}`: opens that bucket and answers how that
//!   went (`ok`, or the error);
//! - `hoard-buckets`: opens buckets without closing them until refused, and
//!   answers how many it got and the refusal.

#[allow(missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: [
            "../../wit/plugin.wit",
            "../../wit/standard/deps/keyvalue",
            "../../wit/standard/deps/config",
            "../../wit/standard/deps/logging",
            "wit",
        ],
        world: "example:wasi-standard/plugin",
        generate_all,
    });
}

use bindings::capsule::plugin::types::{
    Event, EventOutcome, PluginError, PluginInfo, Request, Response,
};
use bindings::exports::capsule::plugin::handler::Guest;
use bindings::wasi::config::store as config;
use bindings::wasi::keyvalue::{atomics, batch, store};
use bindings::wasi::logging::logging;

const NAME: &str = "wasi-standard";
const VERSION: &str = "0.1.0";
const DESCRIPTION: &str =
    "Written against wasi:keyvalue, wasi:config and wasi:logging, with no Capsule SDK";
const OPERATIONS: &[&str] = &[
    "greet",
    "count",
    "append",
    "batch",
    "write-then-fail",
    "open",
    "hoard-buckets",
];

struct WasiStandard;

fn failed(message: impl std::fmt::Display) -> PluginError {
    PluginError::Failed(message.to_string())
}

fn config_value(key: &str) -> Result<Option<String>, PluginError> {
    config::get(key).map_err(|err| failed(format!("wasi:config: {err:?}")))
}

fn bucket() -> Result<store::Bucket, PluginError> {
    let name = config_value("bucket")?.unwrap_or_else(|| "default".to_owned());
    store::open(&name).map_err(|err| match err {
        store::Error::AccessDenied => {
            PluginError::Denied(format!("bucket `{name}`: access denied"))
        }
        other => failed(format!("bucket `{name}`: {other:?}")),
    })
}

fn kv_error(err: store::Error) -> PluginError {
    match err {
        store::Error::AccessDenied => PluginError::Denied("wasi:keyvalue: access denied".into()),
        other => failed(format!("wasi:keyvalue: {other:?}")),
    }
}

/// Pulls `"field": "value"` out of a flat JSON object (this plugin has no
/// JSON library on purpose: it depends on wit-bindgen alone).
fn field(payload: &[u8], name: &str) -> Result<String, PluginError> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| PluginError::InvalidInput("the payload is not UTF-8".into()))?;
    let marker = format!("\"{name}\"");
    let rest = text
        .find(&marker)
        .map(|at| &text[at + marker.len()..])
        .and_then(|rest| rest.trim_start().strip_prefix(':'))
        .and_then(|rest| rest.trim_start().strip_prefix('"'))
        .ok_or_else(|| PluginError::InvalidInput(format!("expected a string field `{name}`")))?;
    let end = rest
        .find('"')
        .ok_or_else(|| PluginError::InvalidInput(format!("field `{name}` is not closed")))?;
    Ok(rest[..end].to_owned())
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn respond(json: String) -> Result<Response, PluginError> {
    Ok(Response {
        payload: json.into_bytes(),
        metadata: Vec::new(),
    })
}

fn append(key: &str, text: &str) -> Result<String, PluginError> {
    let bucket = bucket()?;
    let mut cas = atomics::Cas::new(&bucket, key).map_err(kv_error)?;
    for _ in 0..3 {
        let mut value = cas.current().map_err(kv_error)?.unwrap_or_default();
        value.extend_from_slice(text.as_bytes());
        let appended = String::from_utf8_lossy(&value).into_owned();
        match atomics::swap(cas, &value) {
            Ok(()) => return Ok(appended),
            Err(atomics::CasError::CasFailed(again)) => cas = again,
            Err(atomics::CasError::StoreError(err)) => return Err(kv_error(err)),
        }
    }
    Err(failed("lost the compare-and-swap three times"))
}

fn batch() -> Result<String, PluginError> {
    let bucket = bucket()?;
    let entries: Vec<(String, Vec<u8>)> = ["a", "b", "c"]
        .iter()
        .map(|k| (k.to_string(), format!("value of {k}").into_bytes()))
        .collect();
    batch::set_many(&bucket, &entries).map_err(kv_error)?;
    let keys: Vec<String> = ["a", "b", "c", "missing"].map(String::from).to_vec();
    let got = batch::get_many(&bucket, &keys).map_err(kv_error)?;
    let found: Vec<String> = got
        .iter()
        .map(|entry| match entry {
            Some((key, value)) => format!(
                "{}:{}",
                json_string(key),
                json_string(&String::from_utf8_lossy(value))
            ),
            None => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect();
    batch::delete_many(&bucket, &["a".to_owned()]).map_err(kv_error)?;
    let exists_a = bucket.exists("a").map_err(kv_error)?;
    let mut listed = Vec::new();
    let mut cursor = None;
    loop {
        let page = bucket.list_keys(cursor.as_deref()).map_err(kv_error)?;
        listed.extend(page.keys);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let listed: Vec<String> = listed.iter().map(|k| json_string(k)).collect();
    Ok(format!(
        "{{\"found\":{{{}}},\"missing\":{},\"a_exists_after_delete\":{exists_a},\"keys\":[{}]}}",
        found.join(","),
        got.iter().filter(|entry| entry.is_none()).count(),
        listed.join(",")
    ))
}

impl Guest for WasiStandard {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: VERSION.into(),
            description: DESCRIPTION.into(),
            capabilities: Vec::new(),
        }
    }

    fn manifest() -> String {
        let operations: Vec<String> = OPERATIONS
            .iter()
            .map(|op| format!("{{\"name\":{}}}", json_string(op)))
            .collect();
        format!(
            "{{\"format\":1,\"name\":{},\"version\":{},\"description\":{},\"operations\":[{}]}}",
            json_string(NAME),
            json_string(VERSION),
            json_string(DESCRIPTION),
            operations.join(",")
        )
    }

    fn init() -> Result<(), PluginError> {
        Ok(())
    }

    fn handle(request: Request) -> Result<Response, PluginError> {
        match request.operation.as_str() {
            "greet" => {
                let name = field(&request.payload, "name")?;
                let word = config_value("greeting")?.unwrap_or_else(|| "Hello".to_owned());
                logging::log(logging::Level::Info, "greet", &format!("greeting {name}"));
                respond(format!(
                    "{{\"greeting\":{}}}",
                    json_string(&format!("{word}, {name}!"))
                ))
            }
            "count" => {
                let hits = atomics::increment(&bucket()?, "hits", 1).map_err(kv_error)?;
                respond(format!("{{\"hits\":{hits}}}"))
            }
            "append" => {
                let key = field(&request.payload, "key")?;
                let text = field(&request.payload, "text")?;
                respond(format!(
                    "{{\"value\":{}}}",
                    json_string(&append(&key, &text)?)
                ))
            }
            "batch" => respond(batch()?),
            "write-then-fail" => {
                bucket()?
                    .set("doomed", b"should not stay")
                    .map_err(kv_error)?;
                Err(failed("failing on purpose after a write"))
            }
            "open" => {
                let name = field(&request.payload, "bucket")?;
                let outcome = match store::open(&name) {
                    Ok(_) => "ok".to_owned(),
                    Err(err) => format!("{err:?}"),
                };
                respond(format!("{{\"open\":{}}}", json_string(&outcome)))
            }
            "hoard-buckets" => {
                let mut held = Vec::new();
                let refusal = loop {
                    match bucket() {
                        Ok(bucket) => held.push(bucket),
                        Err(err) => break format!("{err:?}"),
                    }
                    if held.len() > 10_000 {
                        break "never refused".to_owned();
                    }
                };
                respond(format!(
                    "{{\"held\":{},\"refusal\":{}}}",
                    held.len(),
                    json_string(&refusal)
                ))
            }
            other => Err(PluginError::Unsupported(format!(
                "`{NAME}` has no operation `{other}`"
            ))),
        }
    }

    fn on_event(_event: Event) -> Result<EventOutcome, PluginError> {
        Ok(EventOutcome::Ack)
    }

    fn shutdown() {}
}

bindings::export!(WasiStandard with_types_in bindings);
