//! Background jobs over HTTP:
//!
//! - `POST /v1/plugins/{name}/jobs?op=OP[&delay=30s|&run_at=RFC3339]
//!   [&schedule=CRON]` with
//!   the payload as the body (metadata from `x-capsule-meta-*` headers, as
//!   for a call) stores a job and answers `202` with it (`id`, `state`, …)
//!   and its `Location`;
//! - `GET /v1/jobs/{id}` answers the job: `state` (`queued`, `running`,
//!   `succeeded`, `failed`, `cancelled`), `attempts`, times, and `result`
//!   (`payload`, or `payload_base64` when it is not JSON, and `metadata`)
//!   or `error` (`kind`, `message`);
//! - `DELETE /v1/jobs/{id}` cancels it and answers it as it is now.
//!
//! Submitting needs what calling the plugin needs (the same key role, scope
//! and rate). A job is readable and cancellable only by the key that
//! submitted it and by admins: anyone else gets the same `404` as for an
//! id that does not exist, and ids carry 128 random bits, so they cannot
//! be guessed. On a host without API keys every caller is `anonymous`, and
//! the id alone is the capability.

use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64ct::{Base64, Encoding};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, Caller, authorize, request_from};
use crate::access::Action;
use crate::runtime::{Job, JobError, JobSubmission};

#[derive(Deserialize)]
pub(super) struct SubmitQuery {
    op: Option<String>,
    /// Run it this long from now (`30s`, `5m`).
    delay: Option<String>,
    /// Run it at this time (RFC 3339, e.g. `2026-12-24T18:00:00Z`).
    run_at: Option<String>,
    /// Run it again and again at the times of this cron pattern (UTC).
    schedule: Option<String>,
}

/// `POST /v1/plugins/{name}/jobs`.
pub(super) async fn submit(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<SubmitQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match authorize(&state, &headers, Action::CallPlugin(&name)) {
        Ok(caller) => caller,
        Err(err) => return err.into_response(),
    };
    let request = match request_from(query.op, &headers, body) {
        Ok(request) => request,
        Err(err) => return err.into_response(),
    };
    let bad = |message: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "config", &name, message).into_response()
    };
    let run_at = match (&query.delay, &query.run_at) {
        (Some(_), Some(_)) => return bad("give `delay` or `run_at`, not both".into()),
        (Some(delay), None) => match crate::units::parse_duration(delay) {
            Ok(delay) => Some(SystemTime::now() + delay),
            Err(err) => return bad(format!("`delay`: {err}")),
        },
        (None, Some(at)) => match humantime::parse_rfc3339_weak(at) {
            Ok(at) => Some(at),
            Err(err) => return bad(format!("`run_at` is not an RFC 3339 time: {err}")),
        },
        (None, None) => None,
    };
    let submission = JobSubmission {
        operation: request.operation,
        payload: request.payload,
        metadata: request.metadata,
        run_at,
        owner: Some(caller.name.to_string()),
        schedule: query.schedule,
    };
    match state.host.submit_job(&name, submission).await {
        Ok(job) => (
            StatusCode::ACCEPTED,
            [(header::LOCATION, format!("/v1/jobs/{}", job.id))],
            axum::Json(view(&job)),
        )
            .into_response(),
        Err(err) => job_error(&err, &name),
    }
}

/// `GET /v1/jobs/{id}`.
pub(super) async fn read(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match owned(&state, &id, &headers).await {
        Ok(job) => axum::Json(view(&job)).into_response(),
        Err(response) => response,
    }
}

/// `DELETE /v1/jobs/{id}`.
pub(super) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = owned(&state, &id, &headers).await {
        return response;
    }
    match state.host.cancel_job(&id).await {
        Ok(job) => axum::Json(view(&job)).into_response(),
        Err(err) => job_error(&err, plugin_of(&id)),
    }
}

fn plugin_of(id: &str) -> &str {
    id.rsplit_once('.').map_or("", |(plugin, _)| plugin)
}

/// Job `id`, if the caller may see it; else the answer to give.
async fn owned(state: &AppState, id: &str, headers: &HeaderMap) -> Result<Job, Response> {
    let plugin = plugin_of(id);
    let caller = authorize(state, headers, Action::CallPlugin(plugin))
        .map_err(IntoResponse::into_response)?;
    match state.host.job(id).await {
        Ok(job) if may_see(&caller, &job) => Ok(job),
        Ok(_) => Err(job_error(&JobError::UnknownJob(id.to_owned()), plugin)),
        Err(err) => Err(job_error(&err, plugin)),
    }
}

/// The submitting key and admins see a job; nobody else learns it exists.
fn may_see(caller: &Caller, job: &Job) -> bool {
    caller.is_admin() || job.owner.as_deref() == Some(&*caller.name)
}

fn job_error(err: &JobError, plugin: &str) -> Response {
    let status = match err {
        JobError::UnknownPlugin(_) | JobError::UnknownJob(_) => StatusCode::NOT_FOUND,
        JobError::NotPersistent | JobError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        JobError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
        JobError::InputTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        JobError::Schedule { .. } => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, err.kind().as_str(), plugin, err.to_string()).into_response()
}

fn time(millis: u64) -> String {
    let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(millis);
    humantime::format_rfc3339_millis(at).to_string()
}

/// A job as the API shows it.
fn view(job: &Job) -> Value {
    let mut shown = json!({
        "id": job.id,
        "plugin": job.plugin,
        "operation": job.operation,
        "state": job.state,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created_at": time(job.created_ms),
        "run_at": time(job.run_at_ms),
        "finished_at": job.finished_ms.map(time),
        "schedule": job.schedule,
        "runs": job.runs,
    });
    if let Some(result) = &job.result {
        let mut answer = json!({ "metadata": result.metadata });
        match serde_json::from_slice::<Value>(&result.payload) {
            Ok(value) => answer["payload"] = value,
            Err(_) => {
                answer["payload_base64"] = Value::from(Base64::encode_string(&result.payload));
            }
        }
        shown["result"] = answer;
    }
    if let Some(error) = &job.error {
        shown["error"] = json!({ "kind": error.kind, "message": error.message });
    }
    shown
}
