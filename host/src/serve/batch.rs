//! `POST /v1/plugins/{name}/batch`: many small requests to one plugin in
//! one HTTP request, run in order on one instance ([`crate::Host::call_batch`]).
//!
//! The body is `{"requests":[ITEM,…]}`, each item
//! `{"op":"greet","payload":<any JSON>}` or, for bytes that are not JSON,
//! `{"op":…,"payload_base64":"…"}`, with optional `"metadata":[["k","v"],…]`
//! added to the `x-capsule-meta-*` and trace headers every item gets. The
//! answer is `200 {"results":[RESULT,…]}`, one per item in order:
//! `{"ok":true,"payload":<JSON>|"payload_base64":"…","metadata":[…],
//! "duration_us","fuel","cached"}` or `{"ok":false,"status":<the status a single
//! call would have had>,"error":{"kind","plugin","message"}}`.
//!
//! Budgets: the body is within the server's `max_body_bytes`; at most the
//! plugin's `max_batch` items (more: `413 input_too_large`, nothing runs);
//! each item within `max_request_bytes`; the answer holds at most
//! `max_batch` responses of `max_response_bytes` each. A batch of N takes N
//! requests of the caller's API-key rate, all or none.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64ct::{Base64, Encoding};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Action, ApiError, AppState, authorize_many, call_error, error_message, request_from, status_for,
};
use crate::error::CallError;
use crate::outcome::CallOutcome;

/// The request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    requests: Vec<BatchItem>,
}

/// One request of a batch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    op: String,
    #[serde(default)]
    payload: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    metadata: Vec<(String, String)>,
}

pub(super) async fn call_batch(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bad = |message: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", &name, message).into_response()
    };
    let parsed: BatchBody = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(err) => return bad(format!("the batch is not `{{\"requests\":[…]}}`: {err}")),
    };
    let count = u32::try_from(parsed.requests.len()).unwrap_or(u32::MAX);
    if let Err(err) = authorize_many(&state, &headers, Action::CallPlugin(&name), count.max(1)) {
        return err.into_response();
    }
    let mut requests = Vec::with_capacity(parsed.requests.len());
    for (index, item) in parsed.requests.into_iter().enumerate() {
        let payload = match (item.payload, item.payload_base64) {
            (Some(json), None) => Bytes::from(json.get().as_bytes().to_vec()),
            (None, Some(encoded)) => match Base64::decode_vec(&encoded) {
                Ok(bytes) => Bytes::from(bytes),
                Err(err) => return bad(format!("request {index}: `payload_base64`: {err}")),
            },
            (None, None) => Bytes::new(),
            (Some(_), Some(_)) => {
                return bad(format!(
                    "request {index} has both `payload` and `payload_base64`"
                ));
            }
        };
        let mut request = match request_from(Some(item.op), &headers, payload) {
            Ok(request) => request,
            Err(err) => return err.into_response(),
        };
        request.metadata.extend(item.metadata);
        requests.push(request);
    }
    match state.host.call_batch(&name, requests).await {
        Ok(results) => {
            let results: Vec<Value> = results.iter().map(item_result).collect();
            (StatusCode::OK, axum::Json(json!({ "results": results }))).into_response()
        }
        Err(err) => call_error(&err),
    }
}

/// One item's answer.
fn item_result(result: &Result<CallOutcome, CallError>) -> Value {
    match result {
        Ok(outcome) => {
            let payload = &outcome.response.payload;
            let mut answer = json!({
                "ok": true,
                "metadata": outcome.response.metadata,
                "duration_us": outcome.stats.duration.as_micros() as u64,
                "fuel": outcome.stats.fuel_used,
                "cached": outcome.stats.cached,
            });
            match serde_json::from_slice::<Value>(payload) {
                Ok(value) => answer["payload"] = value,
                Err(_) => answer["payload_base64"] = Value::from(Base64::encode_string(payload)),
            }
            answer
        }
        Err(err) => json!({
            "ok": false,
            "status": status_for(&err.cause).as_u16(),
            "error": {
                "kind": err.kind().as_str(),
                "plugin": err.plugin,
                "message": error_message(err),
            },
        }),
    }
}
