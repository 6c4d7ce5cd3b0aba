//! `capsule serve`: the host runtime behind an HTTP API (axum on tokio).
//!
//! | route | what |
//! |-------|------|
//! | `POST /v1/plugins/{name}/call?op=OP` | body = request payload; answers the plugin's payload |
//! | `POST /v1/plugins/{name}/batch` | body = `{"requests":[{"op","payload"},…]}`; the requests run in order on one instance, each answered in `{"results":[…]}` ([`batch`]) |
//! | `POST /v1/pipelines/{name}/call?op=OP` | the same through a pipeline |
//! | `GET /v1/plugins` | every plugin: version, digest, signers, capabilities, grants (names only; mounts' host paths to `admin`), state, limits |
//! | `GET /metrics` | Prometheus text (OpenMetrics when the `Accept` header asks) |
//! | `GET /healthz` | `ok` while the process serves |
//! | `GET /readyz` | 200 when every plugin of the policy loaded, none is degraded (circuit open, its `health` check failing) and the backend answers, else 503; the detail per plugin to whoever may read (`view`), `{"ready":…}` alone to anyone else |
//! | `POST /v1/events/{topic}` | admin, or a `call` key with the topic: publish the body as an event |
//! | `POST /v1/plugins/{name}/reload` | admin: reload from its file (kept on failure; refused with `missing_dependency` when it would break a plugin that requires it, unless `?force=true`) |
//! | `POST /v1/plugins/{name}/pause`, `/resume` | admin |
//! | `GET /v1/dead-letters` | view: undeliverable events |
//! | `POST /v1/policy/apply` | admin: read the policy file again and apply what changed (200 with what changed; 422 when some plugin's change failed, the rest applied; 400 for an invalid policy and 409 for one that needs a restart, nothing changed) |
//! | `GET /v1/audit?limit=N` | admin: the audit log's latest records (admin actions; refusals counted per window) |
//! | `GET /v1/cluster` | the deployment's hosts and what each serves (this host alone without NATS) |
//!
//! A successful call's cost comes back in headers: `x-capsule-duration-us`,
//! `x-capsule-fuel` and `-fuel-limit`, `x-capsule-memory-bytes` and
//! `-memory-limit`, and `server-timing` with the time and count of its calls
//! into each host service. An answer from the response cache of a pure
//! operation says `x-capsule-cache: hit` (and reports no fuel or memory:
//! the plugin did not run).
//!
//! W3C `traceparent` and `tracestate` headers become the request's trace
//! context: with `[host.telemetry]`, the call's span is the caller's child.
//!
//! Request metadata comes from `x-capsule-meta-<key>` headers and response
//! metadata goes back the same way, within a header budget that HTTP clients
//! accept (64 entries, 16 KiB by default): a response whose metadata does not
//! fit is answered `502` with kind `output_too_large`. Failures are JSON
//! `{"error":{"kind","plugin","message"}}` with a fitting status.
//!
//! Who may use which route is [`crate::access`]'s: with API keys in the
//! policy, every route but `/healthz` and `/readyz` needs `Authorization: Bearer <key>`
//! whose role and scope cover it (401 without a valid key, 403 beyond its
//! role or scope, 429 past its rate). Without keys, calls and reads
//! (`/v1/plugins`, `/metrics`, `/v1/cluster`) are open and the rest needs
//! the admin token, which acts as an `admin` key either way.
//!
//! Budgets of the server itself: at most `max_connections` connections at
//! once (more wait in the kernel's backlog), request headers must arrive
//! within `header_read_timeout` and a whole body within `body_timeout` (in
//! total, however it trickles in), bodies are at most `max_body_bytes`, a
//! response write that makes no progress for `write_timeout` drops the
//! connection (a client that never reads cannot hold its place), and
//! shutdown takes at most `shutdown_deadline` in all.

mod batch;
pub mod console;
mod jobs;
pub mod metadata;
mod stream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::access::{Action, Role};
use crate::contract::{PluginError, Request};
use crate::error::{CallError, CallFailure, ErrorKind};
use crate::outcome::CallOutcome;
use crate::runtime::{Host, PipelineError, StreamItem};

use metadata::HeaderBudget;
pub use metadata::META_HEADER_PREFIX;

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen; loopback by default.
    pub listen: SocketAddr,
    /// The bearer token admin routes require; `None` disables them.
    pub admin_token: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long a client may take to send its whole request body.
    pub body_timeout: Duration,
    /// How long writing a response may make no progress (a client that
    /// stopped reading) before the connection is dropped.
    pub write_timeout: Duration,
    /// On shutdown, how long everything gets: in-flight requests, then the
    /// plugins' `shutdown` exports, together.
    pub shutdown_deadline: Duration,
    /// Connections served at once; more wait in the listen backlog until one
    /// closes.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (also how
    /// long an idle keep-alive connection is kept).
    pub header_read_timeout: Duration,
    /// Response metadata entries sent back as headers.
    pub max_response_headers: usize,
    /// Bytes of response metadata (names and values) sent back as headers.
    pub max_response_header_bytes: usize,
    /// The policy file the host was started from: `POST /v1/policy/apply`
    /// reads it again and applies what changed (`None`: the route answers
    /// that there is no file to apply).
    pub policy_file: Option<std::path::PathBuf>,
    /// Serve the web console under `/console` ([`console`]).
    pub console: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            admin_token: None,
            max_body_bytes: 1 << 20,
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            shutdown_deadline: Duration::from_secs(10),
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            max_response_headers: 64,
            max_response_header_bytes: 16 << 10,
            policy_file: None,
            console: false,
        }
    }
}

#[derive(Clone)]
struct AppState {
    host: Host,
    policy_file: Option<Arc<std::path::Path>>,
    admin_token: Option<Arc<str>>,
    header_budget: HeaderBudget,
    /// The console's sessions (empty unless the console is served).
    console: Arc<console::session::Sessions>,
}

/// The API as an axum router over `host`.
pub fn router(host: Host, options: &ServeOptions) -> Router {
    let state = AppState {
        host,
        policy_file: options.policy_file.as_deref().map(Arc::from),
        admin_token: options.admin_token.as_deref().map(Arc::from),
        header_budget: HeaderBudget {
            entries: options.max_response_headers,
            bytes: options.max_response_header_bytes,
        },
        console: Arc::default(),
    };
    let api = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/plugins", get(list_plugins))
        .route("/v1/plugins/{name}/call", post(call_plugin))
        .route("/v1/plugins/{name}/batch", post(batch::call_batch))
        .route("/v1/plugins/{name}/jobs", post(jobs::submit))
        .route("/v1/jobs/{id}", get(jobs::read).delete(jobs::cancel))
        .route("/v1/pipelines/{name}/call", post(call_pipeline))
        .route("/v1/plugins/{name}/reload", post(reload))
        .route("/v1/plugins/{name}/pause", post(pause))
        .route("/v1/plugins/{name}/resume", post(resume))
        .route(
            "/v1/plugins/{name}/rollout",
            post(start_rollout).get(rollout_status),
        )
        .route("/v1/plugins/{name}/rollout/promote", post(promote_rollout))
        .route("/v1/plugins/{name}/rollout/abort", post(abort_rollout))
        .route("/v1/events/{topic}", post(publish))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/cluster", get(cluster))
        .route("/v1/policy/apply", post(apply_policy))
        .route("/v1/audit", get(audit));
    let routes = if options.console {
        api.merge(console::routes())
    } else {
        api
    };
    routes
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            BodyBudget {
                max_bytes: options.max_body_bytes,
                timeout: options.body_timeout,
            },
            read_body_in_time,
        ))
        .with_state(state)
}

/// How much of a request body is read, and for how long.
#[derive(Debug, Clone, Copy)]
struct BodyBudget {
    max_bytes: usize,
    timeout: Duration,
}

/// Reads the whole request body before any handler runs: at most
/// `max_bytes`, within `timeout` in total. (A per-chunk timeout would let a
/// client that sends one byte every few seconds hold its connection for
/// ever.)
async fn read_body_in_time(
    State(budget): State<BodyBudget>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    let limited = http_body_util::Limited::new(body, budget.max_bytes);
    match tokio::time::timeout(budget.timeout, limited.collect()).await {
        Ok(Ok(collected)) => {
            let body = axum::body::Body::from(collected.to_bytes());
            next.run(axum::extract::Request::from_parts(parts, body))
                .await
        }
        Ok(Err(err))
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorKind::InputTooLarge.as_str(),
                "",
                &format!("the request body is larger than {} bytes", budget.max_bytes),
            )
        }
        Ok(Err(err)) => error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "",
            &format!("cannot read the request body: {err}"),
        ),
        Err(_elapsed) => error_response(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "",
            &format!(
                "the request body did not arrive within {:?}",
                budget.timeout
            ),
        ),
    }
}

/// A connection whose writes fail once one has made no progress for
/// `timeout`: hyper has no write timeout of its own, and a client that
/// stops reading would otherwise hold its connection (and the response
/// buffered for it) for ever.
struct WriteStallTimeout<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteStallTimeout<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        WriteStallTimeout {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Called when a write is pending: fails once it has been pending for
    /// the whole timeout.
    fn check_stall(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Error> {
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            )),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteStallTimeout<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteStallTimeout<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, buf) {
            std::task::Poll::Pending => self.check_stall(cx).map(Err),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.inner).poll_flush(cx) {
            std::task::Poll::Pending => self.check_stall(cx).map(Err),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `host` until `shutdown` completes, then stops accepting, gives
/// in-flight calls `shutdown_deadline` to finish, and shuts the plugins down
/// (each runs its `shutdown` export).
pub async fn serve(
    host: Host,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    serve_on(listener, host, options, shutdown).await
}

/// [`serve`] on a listener the caller bound (e.g. an ephemeral port).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    host: Host,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "capsule serving");
    let app = router(host.clone(), &options);
    // Background jobs of the plugins loaded here run while this serves.
    let _jobs = host.start_jobs();
    let connections = Arc::new(tokio::sync::Semaphore::new(
        options
            .max_connections
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
    ));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Refusals counted in the audit log are written once their window
    // ends, even when nothing else happens.
    let audit_flusher = {
        let host = host.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                host.audit().flush_due();
            }
        })
    };
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Take a connection's place before accepting: at the limit, clients
        // wait in the kernel's backlog instead of costing the host a task.
        let place = tokio::select! {
            place = Arc::clone(&connections).acquire_owned() => match place {
                Ok(place) => place,
                Err(_closed) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(options.header_read_timeout);
        let stream = WriteStallTimeout::new(stream, options.write_timeout);
        let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(place);
        });
    }
    audit_flusher.abort();
    // One deadline for the whole shutdown: open requests first, then the
    // plugins' own `shutdown`, in what is left of it.
    let until = tokio::time::Instant::now() + options.shutdown_deadline;
    drop(listener);
    if tokio::time::timeout_at(until, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests outlived the shutdown deadline");
    }
    host.shutdown(until.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    tracing::info!("capsule stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[derive(Deserialize)]
struct CallQuery {
    op: Option<String>,
}

/// The HTTP status for a failure kind (and, for plugin errors, which one).
fn status_for(cause: &CallFailure) -> StatusCode {
    match cause {
        CallFailure::Plugin(PluginError::InvalidInput(_)) => StatusCode::BAD_REQUEST,
        CallFailure::Plugin(PluginError::Unsupported(_)) => StatusCode::NOT_FOUND,
        CallFailure::Plugin(PluginError::Denied(_)) => StatusCode::FORBIDDEN,
        CallFailure::Plugin(PluginError::Failed(_)) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => match cause.kind() {
            ErrorKind::UnknownPlugin => StatusCode::NOT_FOUND,
            ErrorKind::InputTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::QuotaExceeded => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::Rejected => StatusCode::FORBIDDEN,
            ErrorKind::Busy => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Paused | ErrorKind::CircuitOpen | ErrorKind::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            // The plugin misbehaved (trap, fuel, memory, stack, output).
            ErrorKind::Trap
            | ErrorKind::OutOfFuel
            | ErrorKind::MemoryLimit
            | ErrorKind::StackOverflow
            | ErrorKind::BudgetExceeded
            | ErrorKind::OutputTooLarge => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
    }
}

/// A failure answered as `{"error":{"kind","plugin","message"}}`.
struct ApiError {
    status: StatusCode,
    kind: String,
    plugin: String,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &str, plugin: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind: kind.to_owned(),
            plugin: plugin.to_owned(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` header (whole seconds, at least one).
    fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "kind": self.kind, "plugin": self.plugin, "message": self.message } });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

fn error_response(status: StatusCode, kind: &str, plugin: &str, message: &str) -> Response {
    ApiError::new(status, kind, plugin, message).into_response()
}

fn call_error(err: &CallError) -> Response {
    let mut response = error_response(
        status_for(&err.cause),
        err.kind().as_str(),
        &err.plugin,
        &error_message(err),
    );
    if let CallFailure::CircuitOpen { retry_in } = err.cause {
        let seconds = retry_in.as_secs().max(1).to_string();
        if let Ok(value) = HeaderValue::from_str(&seconds) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

/// What the caller is told of a failed call.
fn error_message(err: &CallError) -> String {
    // A host fault's message can name host paths or internals: the server's
    // log gets it, the (possibly unauthenticated) caller does not.
    if let CallFailure::Host(_) = err.cause {
        tracing::error!(
            plugin = %crate::text::log_field(&err.plugin),
            error = %crate::text::log_field(&err.to_string()),
            "host fault during a call"
        );
        format!(
            "plugin `{}`: the host failed; its log has the details",
            err.plugin
        )
    } else {
        err.to_string()
    }
}

fn request_from(op: Option<String>, headers: &HeaderMap, body: Bytes) -> Result<Request, ApiError> {
    let Some(op) = op.filter(|op| !op.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "config",
            "",
            "the `op` query parameter names the operation to call",
        ));
    };
    let mut request = Request::new(op, body.to_vec());
    request.metadata = metadata::request_metadata(headers);
    // W3C trace context rides in its own headers: the call's span becomes a
    // child of the caller's (tracestate is at most 512 bytes by the spec).
    for name in [crate::telemetry::TRACEPARENT, "tracestate"] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok())
            && value.len() <= 512
            && !request.metadata.iter().any(|(key, _)| key == name)
        {
            request.metadata.push((name.to_owned(), value.to_owned()));
        }
    }
    Ok(request)
}

fn call_response(outcome: CallOutcome, budget: HeaderBudget) -> Response {
    let metadata = match metadata::response_headers(&outcome.response.metadata, budget) {
        Ok(headers) => headers,
        Err(message) => {
            return error_response(
                StatusCode::BAD_GATEWAY,
                ErrorKind::OutputTooLarge.as_str(),
                "",
                &message,
            );
        }
    };
    let payload = outcome.response.payload;
    let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_ok() {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        payload,
    )
        .into_response();
    let headers = response.headers_mut();
    for (name, value) in metadata {
        headers.append(name, value);
    }
    if let Ok(value) = HeaderValue::from_str(&outcome.stats.duration.as_micros().to_string()) {
        headers.insert("x-capsule-duration-us", value);
    }
    let stats = &outcome.stats;
    let numbers = [
        ("x-capsule-fuel", stats.fuel_used),
        ("x-capsule-fuel-limit", stats.fuel_limit),
        ("x-capsule-memory-bytes", stats.memory_bytes),
        ("x-capsule-memory-limit", Some(stats.memory_limit)),
    ];
    for (name, number) in numbers {
        if let Some(number) = number {
            headers.insert(name, HeaderValue::from(number));
        }
    }
    if let Some(timing) = server_timing(&stats.host_calls) {
        headers.insert(header::HeaderName::from_static("server-timing"), timing);
    }
    if stats.cached {
        headers.insert("x-capsule-cache", HeaderValue::from_static("hit"));
    }
    response
}

/// The call's host calls as a `Server-Timing` header (which browsers'
/// developer tools show): one entry per service it called, with the time in
/// milliseconds and the count, e.g. `kv;dur=1.520;desc="3 calls"`. At most
/// one entry per service, so its size is bounded by the service list.
fn server_timing(host_calls: &[crate::ServiceCalls]) -> Option<HeaderValue> {
    if host_calls.is_empty() {
        return None;
    }
    let entries: Vec<String> = host_calls
        .iter()
        .map(|used| {
            let plural = if used.calls == 1 { "" } else { "s" };
            format!(
                "{};dur={:.3};desc=\"{} call{plural}\"",
                used.service,
                used.time.as_secs_f64() * 1000.0,
                used.calls
            )
        })
        .collect();
    HeaderValue::from_str(&entries.join(", ")).ok()
}

async fn call_plugin(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<CallQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(err) = authorize(&state, &headers, Action::CallPlugin(&name)) {
        return err.into_response();
    }
    let request = match request_from(query.op, &headers, body) {
        Ok(request) => request,
        Err(err) => return err.into_response(),
    };
    // If the client goes away, axum drops this future (or hyper the
    // streamed body), and with it the call and the instance running it.
    let delivery = stream::Delivery::asked(&headers);
    let mut call = state.host.call_stream(&name, request);
    match call.next().await {
        Some(StreamItem::End(Ok(outcome))) if delivery != stream::Delivery::Events => {
            call_response(outcome, state.header_budget)
        }
        Some(StreamItem::End(Err(err))) => call_error(&err),
        Some(first) => stream::respond(first, call, delivery),
        None => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Host.as_str(),
            &name,
            "the call ended without an answer",
        ),
    }
}

async fn call_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<CallQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(err) = authorize(&state, &headers, Action::CallPipeline(&name)) {
        return err.into_response();
    }
    let request = match request_from(query.op, &headers, body) {
        Ok(request) => request,
        Err(err) => return err.into_response(),
    };
    match state.host.call_pipeline(&name, request).await {
        Ok(outcome) => call_response(outcome, state.header_budget),
        Err(PipelineError::Unknown(_)) => error_response(
            StatusCode::NOT_FOUND,
            ErrorKind::UnknownPlugin.as_str(),
            &name,
            &format!("no pipeline named `{name}`"),
        ),
        Err(err @ (PipelineError::Stage { .. } | PipelineError::Commit { .. })) => {
            let (PipelineError::Stage { error, .. } | PipelineError::Commit { error, .. }) = &err
            else {
                unreachable!()
            };
            let mut response = call_error(error);
            let body = json!({ "error": {
                "kind": error.kind().as_str(),
                "plugin": error.plugin,
                "pipeline": name,
                "message": err.to_string(),
            }});
            *response.body_mut() = axum::body::Body::from(body.to_string());
            response
        }
    }
}

/// Every plugin and pipeline. Grants are shown by name only, to everyone:
/// config and environment values may be credentials. Host paths (where a
/// mount lives) reveal the host's layout and are shown to `admin` only.
async fn list_plugins(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let caller = match authorize(&state, &headers, Action::Read) {
        Ok(caller) => caller,
        Err(err) => return err.into_response(),
    };
    let plugins: Vec<serde_json::Value> = state
        .host
        .statuses()
        .into_iter()
        .map(|status| {
            let mut value = serde_json::to_value(&status).unwrap_or_default();
            value["grants"] =
                serde_json::to_value(status.details.grants.summary()).unwrap_or_default();
            if caller.is_admin() {
                value["grants"]["files"] =
                    serde_json::to_value(&status.details.grants.files).unwrap_or_default();
            } else if let Some(rollout) = value.get_mut("rollout") {
                hide_host_path(rollout);
            }
            value
        })
        .collect();
    let pipelines = state.host.pipelines();
    axum::Json(json!({ "plugins": plugins, "pipelines": pipelines })).into_response()
}

/// Why a policy file was not applied at all.
#[derive(Debug, thiserror::Error)]
pub enum ApplyFileError {
    /// The file does not parse or validate.
    #[error("{0}")]
    Invalid(crate::PolicyErrors),
    /// The host refused it as a whole.
    #[error("{0}")]
    Refused(crate::ApplyError),
}

/// Reads the policy at `path` and applies it to `host` (what
/// `POST /v1/policy/apply` and SIGHUP do).
pub async fn apply_policy_file(
    host: &Host,
    path: &std::path::Path,
) -> Result<crate::PolicyChanges, ApplyFileError> {
    let owned = path.to_owned();
    let policy = tokio::task::spawn_blocking(move || crate::Policy::load(&owned))
        .await
        .map_err(|err| {
            ApplyFileError::Invalid(crate::PolicyErrors(vec![crate::PolicyError {
                file: path.to_owned(),
                position: None,
                key: None,
                message: format!("reading the policy failed: {err}"),
            }]))
        })?
        .map_err(ApplyFileError::Invalid)?;
    // Its own task: a client that goes away does not stop it halfway.
    let host = host.clone();
    tokio::spawn(async move { host.apply_policy(&policy).await })
        .await
        .unwrap_or_else(|err| Err(crate::ApplyError::Failed(err.to_string())))
        .map_err(ApplyFileError::Refused)
}

async fn apply_policy(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let caller = match authorize(&state, &headers, Action::Admin) {
        Ok(caller) => caller,
        Err(err) => return err.into_response(),
    };
    let response = apply_policy_now(&state).await;
    audited(&state, &caller, "apply", "policy", response)
}

async fn apply_policy_now(state: &AppState) -> Response {
    let Some(path) = &state.policy_file else {
        return error_response(
            StatusCode::CONFLICT,
            "config",
            "",
            "this server was not started from a policy file",
        );
    };
    match apply_policy_file(&state.host, path).await {
        Ok(changes) => {
            let status = if changes.failed.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            (status, axum::Json(changes)).into_response()
        }
        Err(ApplyFileError::Invalid(errors)) => {
            let details: Vec<serde_json::Value> = errors
                .0
                .iter()
                .map(|err| {
                    json!({
                        "line": err.position.map(|(line, _)| line),
                        "key": err.key,
                        "message": err.message,
                    })
                })
                .collect();
            let body = json!({ "error": {
                "kind": "config",
                "plugin": "",
                "message": format!("the policy is invalid; nothing was changed ({} error(s))", errors.0.len()),
                "errors": details,
            }});
            (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
        }
        Err(ApplyFileError::Refused(refused)) => {
            error_response(StatusCode::CONFLICT, "config", "", &refused.to_string())
        }
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

/// The audit log's most recent records (admin), newest last.
async fn audit(
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(err) = authorize(&state, &headers, Action::Admin) {
        return err.into_response();
    }
    let limit = query.limit.unwrap_or(100).min(crate::audit::MEMORY_RECORDS);
    axum::Json(json!({ "records": state.host.audit().recent(limit) })).into_response()
}

/// The deployment's hosts and what each serves (this host alone with the
/// embedded backend); 503 when NATS cannot be read.
async fn cluster(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(err) = authorize(&state, &headers, Action::Read) {
        return err.into_response();
    }
    match state.host.cluster().await {
        Ok(cluster) => axum::Json(cluster).into_response(),
        Err(reason) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Unavailable.as_str(),
            "",
            &format!("the deployment's hosts could not be read: {reason}"),
        ),
    }
}

/// Readiness for load balancers and orchestrators. Open, so a probe needs
/// no key; what is wrong (plugin names, load failures) only to a caller
/// who may read what the host runs. Plugins' checks run at most once per
/// `HEALTH_TTL` however often this is asked.
async fn readyz(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let readiness = state.host.readiness().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Not `authorize`: an anonymous probe is expected, not a refusal to
    // audit.
    if decide(&state, &headers, Action::Read, 1).is_ok() {
        (status, axum::Json(readiness)).into_response()
    } else {
        (status, axum::Json(json!({ "ready": readiness.ready }))).into_response()
    }
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(err) = authorize(&state, &headers, Action::Read) {
        return err.into_response();
    }
    // Prometheus asks for OpenMetrics first; anything else (curl, older
    // scrapers, promtool) gets the classic text format.
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            state.host.metrics_openmetrics(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            state.host.metrics_text(),
        )
            .into_response()
    }
}

/// Who made a request the access rules let through.
#[derive(Debug, Clone)]
struct Caller {
    /// The API key's name, `admin-token` for the admin token, `anonymous`
    /// on a host without keys.
    name: Arc<str>,
    /// The key's role; `None` for an anonymous caller.
    role: Option<Role>,
}

impl Caller {
    fn is_admin(&self) -> bool {
        self.role == Some(Role::Admin)
    }
}

/// Decides whether the request may do `action` (see [`crate::access`]):
/// 401 when it names no valid credential, 403 when its key may not do
/// this, 429 when its key's rate is spent. The admin token (if any) is an
/// admin key; a host without API keys lets anyone call and read.
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    action: Action<'_>,
) -> Result<Caller, ApiError> {
    authorize_many(state, headers, action, 1)
}

/// [`authorize`] for `count` actions at once (a batch's calls): they take
/// `count` requests of the key's rate, all or none.
fn authorize_many(
    state: &AppState,
    headers: &HeaderMap,
    action: Action<'_>,
    count: u32,
) -> Result<Caller, ApiError> {
    let decided = decide(state, headers, action, count);
    if let Err((who, err)) = &decided {
        let (name, target) = match action {
            Action::CallPlugin(name) => ("call", name),
            Action::CallPipeline(name) => ("call-pipeline", name),
            Action::Publish(topic) => ("publish", topic),
            Action::Read => ("read", ""),
            Action::Inspect => ("inspect", ""),
            Action::Admin => ("admin", ""),
        };
        // Counted per who, what and outcome in the audit log's window: a
        // flood of refused requests costs a line per window.
        state
            .host
            .audit()
            .denied(who, name, target, &err.kind, &err.message);
    }
    decided.map_err(|(_, err)| err)
}

/// [`authorize`]'s decision; a refusal names who was refused.
fn decide(
    state: &AppState,
    headers: &HeaderMap,
    action: Action<'_>,
    count: u32,
) -> Result<Caller, (String, ApiError)> {
    // Whoever presented no valid credential is anonymous (what they
    // presented is never written anywhere).
    let unauthorized = |message: &str| {
        (
            "anonymous".to_owned(),
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "", message),
        )
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if let (Some(presented), Some(expected)) = (presented, &state.admin_token)
        && constant_time_eq(presented.as_bytes(), expected.as_bytes())
    {
        return Ok(Caller {
            name: Arc::from("admin-token"),
            role: Some(Role::Admin),
        });
    }
    let access = state.host.access();
    if access.is_empty() {
        if action.open_without_keys() {
            return Ok(Caller {
                name: Arc::from("anonymous"),
                role: None,
            });
        }
        return Err(unauthorized(if state.admin_token.is_none() {
            "the admin API is disabled: no admin token or API key is configured"
        } else {
            "a valid admin bearer token is required"
        }));
    }
    let Some(presented) = presented else {
        return Err(unauthorized(
            "this route needs an API key: `Authorization: Bearer <key>`",
        ));
    };
    let Some(key) = access.find(presented) else {
        return Err(unauthorized("the API key is not valid"));
    };
    let entry = &key.key;
    if !entry.permits(action) {
        let what = match action {
            Action::CallPlugin(name) => format!("call plugin `{name}`"),
            Action::CallPipeline(name) => format!("call pipeline `{name}`"),
            Action::Publish(topic) => format!("publish to `{topic}`"),
            Action::Read => "read what the host runs".to_owned(),
            Action::Inspect => "inspect dead letters and rollouts".to_owned(),
            Action::Admin => "administer the host".to_owned(),
        };
        return Err((
            entry.name.clone(),
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "",
                format!(
                    "API key `{}` (role `{}`) may not {what}",
                    entry.name,
                    entry.role.as_str()
                ),
            ),
        ));
    }
    if let Err(wait) = key.take_many(count) {
        let rate = entry.rate.map(|rate| rate.describe()).unwrap_or_default();
        return Err((
            entry.name.clone(),
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "",
                format!("API key `{}` is limited to {rate}", entry.name),
            )
            .retry_after(wait),
        ));
    }
    Ok(Caller {
        name: Arc::from(entry.name.as_str()),
        role: Some(entry.role),
    })
}

/// Writes an administrative action and how it ended to the audit log.
fn audited(
    state: &AppState,
    caller: &Caller,
    action: &str,
    target: &str,
    response: Response,
) -> Response {
    let outcome = if response.status().is_success() {
        "ok".to_owned()
    } else {
        format!("failed ({})", response.status().as_u16())
    };
    state
        .host
        .audit()
        .action(&caller.name, action, target, &outcome);
    response
}

/// Compares two secrets in time that depends on their length only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

async fn reload(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let caller = match authorize(&state, &headers, Action::Admin) {
        Ok(caller) => caller,
        Err(err) => return err.into_response(),
    };
    // `force=true` replaces the plugin even if the new version breaks
    // plugins that require it; read after authorization, so a bad query
    // tells nothing to a caller without the token.
    let mut force = false;
    for pair in query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair {
            "force=true" => force = true,
            "force=false" => force = false,
            _ => {
                let response = error_response(
                    StatusCode::BAD_REQUEST,
                    "config",
                    &name,
                    "the reload route takes only `force=true` or `force=false`",
                );
                return audited(&state, &caller, "reload", &name, response);
            }
        }
    }
    let action = if force { "reload (force)" } else { "reload" };
    let response = reload_now(&state, &name, force).await;
    audited(&state, &caller, action, &name, response)
}

async fn reload_now(state: &AppState, name: &str, force: bool) -> Response {
    if state.host.status(name).is_none() {
        return error_response(
            StatusCode::NOT_FOUND,
            "unknown_plugin",
            name,
            "no such plugin is loaded",
        );
    }
    let reloaded = if force {
        state.host.force_reload(name).await
    } else {
        state.host.reload(name).await
    };
    match reloaded {
        Ok(details) => axum::Json(json!({
            "reloaded": name,
            "version": details.info.version,
            "digest": details.digest,
            "generation": state.host.status(name).map(|s| s.generation),
        }))
        .into_response(),
        Err(err) => error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            err.kind().as_str(),
            &err.plugin,
            &format!("{err}; the previous version keeps serving"),
        ),
    }
}

/// Removes the new version's file path from a rollout's status: host paths
/// are for `admin` only.
fn hide_host_path(rollout: &mut serde_json::Value) {
    if let Some(fields) = rollout.as_object_mut() {
        fields.remove("path");
    }
}

/// The answer for a rollout that did not start, promote or abort.
fn rollout_error(err: &crate::RolloutError) -> Response {
    use crate::RolloutError as E;
    let (status, plugin) = match err {
        E::UnknownPlugin(plugin) => (StatusCode::NOT_FOUND, plugin.as_str()),
        E::InProgress(plugin) | E::NotRunning(plugin) => (StatusCode::CONFLICT, plugin.as_str()),
        E::Invalid { plugin, .. } => (StatusCode::BAD_REQUEST, plugin.as_str()),
        E::PoolTooSmall { plugin, .. } => (StatusCode::CONFLICT, plugin.as_str()),
        E::Load(err) => (StatusCode::UNPROCESSABLE_ENTITY, err.plugin.as_str()),
        E::Stopping => (StatusCode::SERVICE_UNAVAILABLE, ""),
    };
    error_response(status, err.kind(), plugin, &err.to_string())
}

/// `POST /v1/plugins/{name}/rollout` (admin): starts a rollout of the new
/// version the JSON body names ([`crate::RolloutPlan::from_json`]).
async fn start_rollout(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match authorize(&state, &headers, Action::Admin) {
        Ok(caller) => caller,
        Err(err) => return err.into_response(),
    };
    let response = match crate::RolloutPlan::from_json(&body) {
        Err(message) => error_response(StatusCode::BAD_REQUEST, "config", &name, &message),
        // Its own task: a client that goes away does not stop a load
        // halfway.
        Ok(mut plan) => {
            // A relative path means what it means in the policy file.
            if let Some(policy) = &state.policy_file {
                let base = policy.parent().unwrap_or(std::path::Path::new(""));
                plan.path = base.join(&plan.path);
                plan.signature = plan.signature.map(|signature| base.join(signature));
            }
            let host = state.host.clone();
            let plugin = name.clone();
            let started = tokio::spawn(async move { host.start_rollout(&plugin, plan).await })
                .await
                .unwrap_or(Err(crate::RolloutError::Stopping));
            match started {
                Ok(status) => axum::Json(status).into_response(),
                Err(err) => rollout_error(&err),
            }
        }
    };
    audited(&state, &caller, "rollout", &name, response)
}

/// `GET /v1/plugins/{name}/rollout` (view): the rollout running, or how the
/// last one ended.
async fn rollout_status(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let caller = match authorize(&state, &headers, Action::Inspect) {
        Ok(caller) => caller,
        Err(err) => return err.into_response(),
    };
    let Some(status) = state.host.rollout(&name) else {
        return error_response(
            StatusCode::NOT_FOUND,
            if state.host.status(&name).is_some() {
                "no_rollout"
            } else {
                "unknown_plugin"
            },
            &name,
            "no rollout of this plugin has run since it was loaded",
        );
    };
    let mut value = serde_json::to_value(&status).unwrap_or_default();
    if !caller.is_admin() {
        hide_host_path(&mut value);
    }
    axum::Json(value).into_response()
}

async fn promote_rollout(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    end_rollout(state, name, headers, true).await
}

async fn abort_rollout(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    end_rollout(state, name, headers, false).await
}

/// Promotes or aborts a rollout (admin).
async fn end_rollout(state: AppState, name: String, headers: HeaderMap, promote: bool) -> Response {
    let caller = match authorize(&state, &headers, Action::Admin) {
        Ok(caller) => caller,
        Err(err) => return err.into_response(),
    };
    let response = end_rollout_now(&state, &name, promote).await;
    let action = if promote {
        "rollout promote"
    } else {
        "rollout abort"
    };
    audited(&state, &caller, action, &name, response)
}

async fn end_rollout_now(state: &AppState, name: &str, promote: bool) -> Response {
    let ended = if promote {
        state.host.promote_rollout(name).await
    } else {
        state.host.abort_rollout(name).await
    };
    match ended {
        Ok(status) => axum::Json(status).into_response(),
        Err(err) => rollout_error(&err),
    }
}

async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_paused(state, name, headers, true)
}

async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_paused(state, name, headers, false)
}

fn set_paused(state: AppState, name: String, headers: HeaderMap, paused: bool) -> Response {
    let caller = match authorize(&state, &headers, Action::Admin) {
        Ok(caller) => caller,
        Err(err) => return err.into_response(),
    };
    let response = set_paused_now(&state, &name, paused);
    audited(
        &state,
        &caller,
        if paused { "pause" } else { "resume" },
        &name,
        response,
    )
}

fn set_paused_now(state: &AppState, name: &str, paused: bool) -> Response {
    let known = if paused {
        state.host.pause(name)
    } else {
        state.host.resume(name)
    };
    if !known {
        return error_response(
            StatusCode::NOT_FOUND,
            "unknown_plugin",
            name,
            "no such plugin is loaded",
        );
    }
    axum::Json(json!({ "plugin": name, "paused": paused })).into_response()
}

async fn publish(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match authorize(&state, &headers, Action::Publish(&topic)) {
        Ok(caller) => caller,
        Err(err) => return err.into_response(),
    };
    let response = publish_now(&state, &topic, body).await;
    // An admin's publish is an administrative act; a `call` key's is the
    // traffic it exists for (one line per event would let it push the
    // admin actions out of the log).
    if caller.is_admin() {
        audited(&state, &caller, "publish", &topic, response)
    } else {
        response
    }
}

async fn publish_now(state: &AppState, topic: &str, body: Bytes) -> Response {
    if let Err(message) = crate::services::events::validate_topic(topic) {
        return error_response(StatusCode::BAD_REQUEST, "config", "", &message);
    }
    match state.host.publish(topic, body.to_vec()).await {
        Ok(delivered) => {
            axum::Json(json!({ "topic": topic, "delivered": delivered })).into_response()
        }
        // The topic is valid: only the shared stream refuses.
        Err(message) => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "", &message)
        }
    }
}

async fn dead_letters(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(err) = authorize(&state, &headers, Action::Inspect) {
        return err.into_response();
    }
    match state.host.deployment_dead_letters().await {
        Ok(letters) => axum::Json(json!({ "dead_letters": letters })).into_response(),
        Err(message) => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "", &message)
        }
    }
}
