//! __NAME__: a Capsule plugin that calls an HTTP API.
//!
//! - `fetch` with `{"path": "/status"}` sends `GET <base_url>/status` and
//!   answers `{"status": 200, "body": "<the response body as text>"}`.
//! - The operator sets `base_url` (config) and grants its origin
//!   (`http = { allow = ["https://api.example.com"] }`, see `capsule.toml`).
//!   A request to anything not granted fails with `denied`.

use capsule_guest::{Plugin, PluginError, Request, Response, config, export_plugin, http, log};
use serde::{Deserialize, Serialize};

/// The input of `fetch`.
#[derive(Deserialize)]
struct FetchIn {
    path: String,
}

/// The output of `fetch`.
#[derive(Serialize)]
struct FetchOut {
    status: u16,
    body: String,
}

fn fetch(input: FetchIn) -> Result<FetchOut, PluginError> {
    if !input.path.starts_with('/') {
        return Err(PluginError::invalid_input("`path` must start with `/`"));
    }
    let base = config::require("base_url")?;
    let url = format!("{}{}", base.trim_end_matches('/'), input.path);
    // A denied origin becomes `PluginError::Denied`, anything else `Failed`.
    let response = http::get(&url)?;
    log::info!("GET {url} -> {}", response.status);
    Ok(FetchOut {
        status: response.status,
        body: response.text()?.to_owned(),
    })
}

struct __TYPE__;

impl Plugin for __TYPE__ {
    fn handle(request: Request) -> Result<Response, PluginError> {
        request.dispatch().json("fetch", fetch).finish()
    }
}

export_plugin!(__TYPE__);

// `cargo test --target <your host triple>` (see README.md) runs the plugin
// natively against `MockHost`, whose HTTP is answered by a closure.
#[cfg(test)]
mod tests {
    use capsule_guest::http::HttpResponse;
    use capsule_guest::testing::MockHost;

    use super::*;

    #[test]
    fn fetches_from_the_configured_base_url() {
        let host = MockHost::new()
            .config("base_url", "https://api.example.com/")
            .http(|request| {
                Ok(HttpResponse {
                    status: 200,
                    headers: Vec::new(),
                    body: format!("{} {}", request.method, request.url).into_bytes(),
                })
            });
        let answer = host
            .call::<__TYPE__>(Request::new("fetch", r#"{"path": "/status"}"#))
            .unwrap();
        assert_eq!(
            answer.payload,
            br#"{"status":200,"body":"GET https://api.example.com/status"}"#
        );
    }

    #[test]
    fn without_an_http_grant_the_call_is_denied() {
        let host = MockHost::new().config("base_url", "https://api.example.com");
        let answer = host.call::<__TYPE__>(Request::new("fetch", r#"{"path": "/"}"#));
        assert!(matches!(answer, Err(PluginError::Denied(_))), "{answer:?}");
    }
}
