//! Hostile: makes the host create and keep WASI resources, which need no
//! grant at all (a denial is a value, so `wasi:http` is linked for every
//! plugin). Every handle is host memory, and an open file a host file
//! descriptor; every request for data is a host allocation. The host must
//! stop each attack with `budget_exceeded` naming the budget, keep its own
//! memory bounded, and keep serving.
//!
//! - `pollables` (default): clock pollables, leaked, without end;
//! - `fields`: `wasi:http` header fields filled to their size cap, leaked;
//! - `bodies`: outgoing requests whose bodies are written full and never
//!   sent, leaked;
//! - `random`: asks `wasi:random` for a gigabyte;
//! - `alias-fields`: one `fields.from-list` call whose hundred thousand
//!   entries all point at the same megabyte of this plugin's memory, so that
//!   copying them would cost the host a hundred gigabytes;
//! - `empty-poll`: `wasi:io/poll.poll` with nothing to wait for;
//! - `body-overwrite`: writes 64 KiB into an outgoing body without asking
//!   `check-write` how much it may write.
//!
//! The last two are the plugin misusing an interface: a trap, never a host
//! fault.

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin};
use wasi::http::types::{Fields, OutgoingBody, OutgoingRequest};

struct HandleFlood;

impl Plugin for HandleFlood {
    fn handle(request: Request) -> Result<Response, PluginError> {
        match request.operation.as_str() {
            "fields" => fields(),
            "bodies" => bodies(),
            "random" => {
                let bytes = wasi::random::random::get_random_bytes(1 << 30);
                Ok(Response::bytes(bytes.len().to_string()))
            }
            "alias-fields" => alias_fields(),
            "empty-poll" => {
                let ready = wasi::io::poll::poll(&[]);
                Ok(Response::bytes(format!("{ready:?}")))
            }
            "body-overwrite" => {
                let request = OutgoingRequest::new(Fields::new());
                let body = request
                    .body()
                    .map_err(|()| PluginError::failed("no body"))?;
                let stream = body
                    .write()
                    .map_err(|()| PluginError::failed("no stream"))?;
                let result = stream.write(&[0u8; 64 << 10]);
                Ok(Response::bytes(format!("{result:?}")))
            }
            _ => pollables(),
        }
    }
}

fn pollables() -> Result<Response, PluginError> {
    let mut held = 0u64;
    loop {
        let pollable = wasi::clocks::monotonic_clock::subscribe_duration(1_000_000_000);
        // Leak it: the handle stays in the host's table.
        std::mem::forget(pollable);
        held += 1;
        if held == u64::MAX {
            return Ok(Response::bytes(held.to_string()));
        }
    }
}

fn fields() -> Result<Response, PluginError> {
    let value = vec![b'v'; 512];
    loop {
        let fields = Fields::new();
        // Fill it until the host refuses (a value, not a trap), then keep it.
        for i in 0..10_000u32 {
            if fields.append(&format!("x-flood-{i}"), &value).is_err() {
                break;
            }
        }
        std::mem::forget(fields);
    }
}

fn bodies() -> Result<Response, PluginError> {
    let chunk = vec![b'b'; 64 << 10];
    loop {
        let request = OutgoingRequest::new(Fields::new());
        let Ok(body) = request.body() else {
            return Err(PluginError::failed("no body"));
        };
        if let Ok(stream) = body.write() {
            // Write as much as the host lets the body buffer.
            while let Ok(permit) = stream.check_write() {
                if permit == 0 {
                    break;
                }
                let len = (permit as usize).min(chunk.len());
                if stream.write(&chunk[..len]).is_err() {
                    break;
                }
            }
            std::mem::forget(stream);
        }
        std::mem::forget::<OutgoingBody>(body);
        std::mem::forget(request);
    }
}

fn alias_fields() -> Result<Response, PluginError> {
    const ENTRIES: usize = 100_000;
    let mut value = vec![b'a'; 1 << 20];
    let (ptr, len) = (value.as_mut_ptr(), value.len());
    let mut entries: Vec<(String, Vec<u8>)> = Vec::with_capacity(ENTRIES);
    for _ in 0..ENTRIES {
        // SAFETY: every entry aliases `value`. They are never dropped (the
        // vector is forgotten below), so nothing is freed twice; the host
        // only reads them.
        let alias = unsafe { Vec::from_raw_parts(ptr, len, len) };
        entries.push((String::from("x-alias"), alias));
    }
    let result = Fields::from_list(&entries);
    std::mem::forget(entries);
    std::mem::forget(value);
    match result {
        Ok(_) => Ok(Response::bytes("the host copied every alias")),
        Err(err) => Err(PluginError::failed(format!("refused: {err:?}"))),
    }
}

export_plugin!(HandleFlood);
