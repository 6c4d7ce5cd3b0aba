//! The http-fetch plugin: outgoing HTTP over standard `wasi:http`, through
//! [`capsule_guest::http`].
//!
//! - `get` with `{"url": "http://example.com/"}` answers
//!   `{"status": 200, "bytes": 1256}` (the status code and the body's length).
//!
//! The operator grants destinations; a request to any other host fails with
//! `denied`, whose message contains `HttpRequestDenied`. Network failures
//! (DNS, refused connections, ...) fail with `failed`.

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin, http, log};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct GetIn {
    url: String,
}

#[derive(Serialize)]
struct GetOut {
    status: u16,
    bytes: usize,
}

struct HttpFetch;

impl Plugin for HttpFetch {
    fn handle(request: Request) -> Result<Response, PluginError> {
        log::info!("handling `{}`", request.operation);
        request
            .dispatch()
            .json("get", |input: GetIn| {
                let response = http::get(&input.url)?;
                log::info!(
                    "GET {}: status {}, {} bytes",
                    input.url,
                    response.status,
                    response.body.len()
                );
                Ok(GetOut {
                    status: response.status,
                    bytes: response.body.len(),
                })
            })
            .finish()
    }
}

export_plugin!(HttpFetch);
