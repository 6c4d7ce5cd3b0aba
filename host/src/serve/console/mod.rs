//! The console: web pages in `capsule serve` (`--console`) that show what
//! every plugin may do, does and was refused, and let an admin act.
//!
//! | page | what | who |
//! |------|------|-----|
//! | `/console` | every plugin: state, version, digest, signer, calls/s, error rate, p50/p99, fuel vs limit, a sparkline of its last hour; readiness, open circuits, rollouts, dead letters | view |
//! | `/console/plugins/{name}` | its imports next to the grants that serve them, limits, last hour (calls, errors, p99, fuel), errors by kind (the latest message to admins), a rollout's two versions side by side, refusals from the audit log (admin) and the actions | view |
//! | `/console/events` | topics each plugin publishes to and subscribes to, its queue, dead letters with their payload and a re-publish button (admin; it asks first, naming every subscriber the event will reach) | view |
//! | `/console/graph` | who may call whom, pipelines and events as a picture | view |
//! | `/console/cluster` | the deployment's hosts (with NATS) and what each serves | view |
//! | `/console/login` | a form taking an API key (role `view` or `admin`) or the admin token | anyone |
//!
//! A login becomes a session cookie (`HttpOnly`, `SameSite=Strict`,
//! `Path=/console`); the key itself is never kept, and each request is
//! checked against the current key table and the key's rate, like the API
//! (same roles: `view` reads, `admin` acts; on a host without keys reading
//! is open, as it is for the API). Every form carries the session's CSRF
//! token; every action asks for confirmation on a page of its own (no
//! script needed) and is written to the audit log under the key's name.
//! Every value is escaped, and the pages are served with a content
//! security policy that allows only the console's own script and style, so
//! plugin-supplied text cannot run as script even if it were not.
//!
//! Budgets: sessions as [`session`] says; each plugin's history as
//! [`crate::runtime::history`] says (the console adds nothing per call);
//! pages list at most [`view::DEAD_LETTERS_SHOWN`] dead letters with
//! [`view::PAYLOAD_SHOWN_BYTES`] of payload each and draw at most
//! [`chart::MAX_NODES`] graph nodes; a login form is read like any body
//! (the server's body budget).

pub mod chart;
pub mod session;
pub mod view;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use self::chart::{EdgeKind, Graph, Node, path_segment};
use self::session::{COOKIE, Credential, Session, Sessions};
use self::view::{Chrome, Letter, PluginPage, Row};
use super::{AppState, Caller, constant_time_eq};
use crate::access::{Action, Role};

/// The console's routes, under `/console`.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(overview))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route("/console/plugins/{name}", get(plugin_page))
        .route("/console/plugins/{name}/confirm/{action}", get(confirm))
        .route("/console/plugins/{name}/{action}", post(act))
        .route("/console/events", get(events_page))
        .route(
            "/console/events/republish",
            get(confirm_republish).post(republish),
        )
        .route("/console/graph", get(graph_page))
        .route("/console/cluster", get(cluster_page))
        .route("/console/static/console.css", get(stylesheet))
        .route("/console/static/console.js", get(script))
}

/// Who is looking at a page.
struct Viewer {
    caller: Caller,
    /// The session, when signed in (an open host's reader has none).
    session: Option<(String, Session)>,
    /// The message the last action left for this page (taken once).
    flash: Option<String>,
}

impl Viewer {
    fn may(&self, state: &AppState, action: Action<'_>) -> bool {
        match self.caller.role {
            Some(Role::Admin) => true,
            Some(Role::View) => matches!(action, Action::Read | Action::Inspect),
            Some(Role::Call) => false,
            None => state.host.access().is_empty() && action.open_without_keys(),
        }
    }

    fn chrome(&self) -> Chrome<'_> {
        let flash = self.flash.clone();
        Chrome {
            who: self.session.as_ref().map(|_| &*self.caller.name),
            role: self.caller.role.map(Role::as_str).unwrap_or("anonymous"),
            csrf: self.session.as_ref().map(|(_, s)| s.csrf.as_str()),
            admin: self.caller.is_admin(),
            flash,
        }
    }

    fn csrf_ok(&self, presented: &str) -> bool {
        self.session
            .as_ref()
            .is_some_and(|(_, s)| constant_time_eq(s.csrf.as_bytes(), presented.as_bytes()))
    }
}

/// The header the console's script sends with its refreshes.
const REFRESH_HEADER: &str = "x-capsule-console-refresh";

fn sessions(state: &AppState) -> &Sessions {
    &state.console
}

/// The value of the request's cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// The session id the request's cookie names (live or not).
fn session_id(headers: &HeaderMap) -> Option<String> {
    cookie(headers, COOKIE).filter(|id| id.len() == 64)
}

/// Why a request gets no page.
enum Away {
    /// No live session, on a host with keys: to the login page.
    SignIn,
    /// The session's key has spent its rate: 429 for this long.
    RateSpent(std::time::Duration),
}

impl IntoResponse for Away {
    fn into_response(self) -> Response {
        match self {
            Away::SignIn => Redirect::to("/console/login").into_response(),
            Away::RateSpent(wait) => too_many(wait),
        }
    }
}

/// Who the request is from: a live session whose key still exists (its
/// current role decides), or an open host's anonymous reader.
fn viewer(state: &AppState, headers: &HeaderMap) -> Result<Viewer, Away> {
    // The page's own refresh is not the person using it: it keeps no
    // session alive.
    let refresh = headers.contains_key(REFRESH_HEADER);
    if let Some(id) = session_id(headers)
        && let Some(session) = sessions(state).get(&id, !refresh)
    {
        // The key as the policy holds it now: its current role and name.
        let current = match &session.credential {
            Credential::AdminToken => state
                .admin_token
                .as_ref()
                .map(|_| (Role::Admin, Arc::from("admin-token"))),
            Credential::Key(digest) => {
                let access = state.host.access();
                match access.find_digest(digest) {
                    Some(key) => {
                        if let Err(wait) = key.take() {
                            return Err(Away::RateSpent(wait));
                        }
                        Some((key.key.role, Arc::from(key.key.name.as_str())))
                    }
                    None => None,
                }
            }
        };
        match current {
            Some((role @ (Role::View | Role::Admin), name)) => {
                let flash = sessions(state).take_flash(&id);
                return Ok(Viewer {
                    caller: Caller {
                        name,
                        role: Some(role),
                    },
                    session: Some((id, session)),
                    flash,
                });
            }
            // The key was removed or demoted since the login.
            _ => sessions(state).end(&id),
        }
    }
    if state.host.access().is_empty() {
        return Ok(Viewer {
            caller: Caller {
                name: Arc::from("anonymous"),
                role: None,
            },
            session: None,
            flash: None,
        });
    }
    Err(Away::SignIn)
}

fn too_many(wait: std::time::Duration) -> Response {
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        "this key's rate is spent; try again shortly",
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// An HTML response with the console's security headers.
fn html(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                 connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        markup.into_string(),
    )
        .into_response()
}

/// A page for the viewer.
fn page(viewer: &Viewer, title: &str, status: StatusCode, body: Markup) -> Response {
    html(status, view::page(title, &viewer.chrome(), body))
}

fn forbidden(viewer: &Viewer, what: &str) -> Response {
    page(
        viewer,
        "Not allowed",
        StatusCode::FORBIDDEN,
        view::problem(
            "Not allowed",
            &format!("`{}` may not {what}.", viewer.caller.name),
        ),
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The login form. Its CSRF token is also set as a cookie of its own
/// (`SameSite=Strict`), and a login must present both: another site cannot
/// sign a browser in with a key of its choosing.
async fn login_form(headers: HeaderMap) -> Response {
    login_page(&headers, StatusCode::OK, None)
}

/// `; Secure` when the browser reached the console over HTTPS through a
/// proxy that says so: the cookies are then never sent in the clear. (The
/// server itself speaks plain HTTP, for loopback or behind such a proxy.)
fn secure(headers: &HeaderMap) -> &'static str {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"));
    if https { "; Secure" } else { "" }
}

/// The login page with a fresh CSRF token in the form and its cookie.
fn login_page(headers: &HeaderMap, status: StatusCode, problem: Option<&str>) -> Response {
    let token = match session::random_token() {
        Ok(token) => token,
        Err(problem) => return (StatusCode::INTERNAL_SERVER_ERROR, problem).into_response(),
    };
    let mut response = html(status, view::login(problem, &token));
    let cookie = format!(
        "{LOGIN_COOKIE}={token}; Path=/console/login; HttpOnly; SameSite=Strict; Max-Age=3600{}",
        secure(headers)
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The cookie holding the login form's CSRF token.
const LOGIN_COOKIE: &str = "capsule_console_login";

#[derive(Deserialize)]
struct LoginForm {
    key: String,
    csrf: String,
}

/// Signs in with an API key of role `view` or `admin`, or the admin token.
/// Refusals go to the audit log like the API's.
async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let presented = form.key.trim();
    let refuse = |message: &str| {
        state
            .host
            .audit()
            .denied("anonymous", "console-login", "", "unauthorized", message);
        login_page(&headers, StatusCode::UNAUTHORIZED, Some(message))
    };
    let expected = cookie(&headers, LOGIN_COOKIE);
    if !expected.is_some_and(|token| constant_time_eq(token.as_bytes(), form.csrf.as_bytes())) {
        return refuse("The form expired or came from another site: sign in again.");
    }
    let (who, role, credential) = if let Some(token) = &state.admin_token
        && constant_time_eq(presented.as_bytes(), token.as_bytes())
    {
        (
            "admin-token".to_owned(),
            Role::Admin,
            Credential::AdminToken,
        )
    } else {
        let Some(key) = state.host.access().find(presented) else {
            return refuse("That is not a valid API key.");
        };
        if key.key.role == Role::Call {
            return refuse(
                "A `call` key cannot use the console: sign in with a `view` or `admin` key.",
            );
        }
        if let Err(wait) = key.take() {
            return too_many(wait);
        }
        (
            key.key.name.clone(),
            key.key.role,
            Credential::Key(key.key.digest),
        )
    };
    let id = match sessions(&state).start(&who, role, credential) {
        Ok(id) => id,
        Err(problem) => return (StatusCode::INTERNAL_SERVER_ERROR, problem).into_response(),
    };
    state.host.audit().action(&who, "console login", "", "ok");
    let cookie = format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
        session::MAX_AGE.as_secs(),
        secure(&headers)
    );
    let mut response = Redirect::to("/console").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(id) = session_id(&headers)
        && let Some(session) = sessions(&state).get(&id, true)
        && constant_time_eq(session.csrf.as_bytes(), form.csrf.as_bytes())
    {
        sessions(&state).end(&id);
    }
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "capsule_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

async fn overview(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let viewer = match viewer(&state, &headers) {
        Ok(viewer) => viewer,
        Err(away) => return away.into_response(),
    };
    if !viewer.may(&state, Action::Read) {
        return forbidden(&viewer, "read what the host runs");
    }
    let statuses = state.host.statuses();
    let histories: Vec<_> = statuses
        .iter()
        .map(|s| state.host.history(&s.details.name).unwrap_or_default())
        .collect();
    let rows: Vec<Row<'_>> = statuses
        .iter()
        .zip(&histories)
        .map(|(status, history)| Row { status, history })
        .collect();
    let readiness = state.host.readiness().await;
    // This host's, from memory: the page refreshes every few seconds, and
    // the deployment's (read from NATS) are on the events page.
    let dead_letters = viewer
        .may(&state, Action::Inspect)
        .then(|| state.host.dead_letters().len());
    let body = view::overview(&rows, &readiness, dead_letters, now_secs());
    page(&viewer, "Plugins", StatusCode::OK, body)
}

async fn plugin_page(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let viewer = match viewer(&state, &headers) {
        Ok(viewer) => viewer,
        Err(away) => return away.into_response(),
    };
    if !viewer.may(&state, Action::Read) {
        return forbidden(&viewer, "read what the host runs");
    }
    let (Some(status), Some(history)) = (state.host.status(&name), state.host.history(&name))
    else {
        return page(
            &viewer,
            "Unknown plugin",
            StatusCode::NOT_FOUND,
            view::problem("Unknown plugin", &format!("No plugin `{name}` is loaded.")),
        );
    };
    let details = &status.details;
    let (imports, unused_grants) =
        crate::check::imports_and_grants(&details.component, &details.grants);
    let mut grants = serde_json::to_value(details.grants.summary()).unwrap_or_default();
    // Host paths (mounts, the new version's file) are for admins only, as
    // in the API.
    let mut rollout = status.rollout.clone().or_else(|| {
        // How the last one ended, to whoever may inspect rollouts (as
        // `GET /v1/plugins/{name}/rollout`).
        viewer
            .may(&state, Action::Inspect)
            .then(|| state.host.rollout(&name))
            .flatten()
    });
    if viewer.caller.is_admin() {
        grants["files"] = serde_json::to_value(&details.grants.files).unwrap_or_default();
    } else if let Some(rollout) = &mut rollout {
        rollout.path = std::path::PathBuf::new();
    }
    let audit = viewer.caller.is_admin().then(|| {
        let plugin_who = format!("plugin:{name}");
        let mut records: Vec<_> = state
            .host
            .audit()
            .recent(crate::audit::MEMORY_RECORDS)
            .into_iter()
            .filter(|r| r.who == plugin_who || r.target == name)
            .collect();
        records.reverse();
        records.truncate(50);
        records
    });
    let body = view::plugin(
        &PluginPage {
            status: &status,
            history: &history,
            imports: &imports,
            unused_grants: &unused_grants,
            rollout,
            audit,
            limits: serde_json::to_value(&details.limits).unwrap_or_default(),
            grants,
        },
        &viewer.chrome(),
        now_secs(),
    );
    page(&viewer, &name, StatusCode::OK, body)
}

/// What each action on a plugin does, for its confirmation page.
fn describe_action(action: &str, plugin: &str) -> Option<String> {
    Some(match action {
        "pause" => {
            format!("Pause `{plugin}`? Its calls are refused with `paused` until it is resumed.")
        }
        "resume" => format!("Resume `{plugin}`? It serves calls again."),
        "reload" => format!(
            "Reload `{plugin}` from its file? A new version that fails to load is refused and the current one keeps serving."
        ),
        "promote" => {
            format!("Promote the rollout of `{plugin}`? The new version takes every call.")
        }
        "abort" => {
            format!("Abort the rollout of `{plugin}`? The stable version takes every call again.")
        }
        _ => return None,
    })
}

async fn confirm(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let viewer = match viewer(&state, &headers) {
        Ok(viewer) => viewer,
        Err(away) => return away.into_response(),
    };
    let Some(session) = admin_session(&viewer) else {
        return forbidden(&viewer, "administer the host");
    };
    let Some(what) = describe_action(&action, &name) else {
        return page(
            &viewer,
            "Unknown action",
            StatusCode::NOT_FOUND,
            view::problem("Unknown action", "No such action."),
        );
    };
    let body = view::confirm(&name, &action, &what, &session.csrf);
    page(&viewer, "Confirm", StatusCode::OK, body)
}

/// The refusal of a form posted without an admin session or without its
/// session's CSRF token (audited like the API's refusals), if it is one.
fn refuse_unless_admin_form(
    state: &AppState,
    viewer: &Viewer,
    csrf: &str,
    target: &str,
) -> Option<Response> {
    if viewer.caller.is_admin() && viewer.csrf_ok(csrf) {
        return None;
    }
    state.host.audit().denied(
        &viewer.caller.name,
        "console-action",
        target,
        "forbidden",
        "a console form without an admin session or its CSRF token",
    );
    Some(forbidden(
        viewer,
        "do this (an admin session and its own form are needed)",
    ))
}

/// Runs a confirmed action through the same code as the API's route, and
/// audits it the same way.
async fn act(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let viewer = match viewer(&state, &headers) {
        Ok(viewer) => viewer,
        Err(away) => return away.into_response(),
    };
    if let Some(refused) = refuse_unless_admin_form(&state, &viewer, &form.csrf, &name) {
        return refused;
    }
    let response = match action.as_str() {
        "pause" => super::set_paused_now(&state, &name, true),
        "resume" => super::set_paused_now(&state, &name, false),
        "reload" => super::reload_now(&state, &name, false).await,
        "promote" => super::end_rollout_now(&state, &name, true).await,
        "abort" => super::end_rollout_now(&state, &name, false).await,
        _ => {
            return page(
                &viewer,
                "Unknown action",
                StatusCode::NOT_FOUND,
                view::problem("Unknown action", "No such action."),
            );
        }
    };
    let audited_as = match action.as_str() {
        "promote" => "rollout promote",
        "abort" => "rollout abort",
        other => other,
    };
    let response = super::audited(&state, &viewer.caller, audited_as, &name, response);
    let message = outcome_message(response, &format!("{action} {name}")).await;
    if let Some((id, _)) = &viewer.session {
        sessions(&state).flash(id, &message);
    }
    Redirect::to(&format!("/console/plugins/{}", path_segment(&name))).into_response()
}

/// What an API response says, as a sentence for the next page.
async fn outcome_message(response: Response, what: &str) -> String {
    let ok = response.status().is_success();
    let body = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .unwrap_or_default();
    if ok {
        return format!("Done: {what}.");
    }
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    format!("Failed: {what}: {message}")
}

/// A dead letter's id: a digest of who it was for, its topic, when and its
/// payload (dead letters have no id of their own; this one stays the same
/// while the letter is kept).
fn letter_id(letter: &crate::runtime::DeadLetter) -> String {
    let mut digest = Sha256::new();
    digest.update(letter.subscriber.as_bytes());
    digest.update([0]);
    digest.update(letter.event.topic.as_bytes());
    digest.update([0]);
    let at = letter
        .at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    digest.update(at.to_le_bytes());
    digest.update(&letter.event.payload);
    crate::artifact::hex(&digest.finalize()[..16])
}

async fn events_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let viewer = match viewer(&state, &headers) {
        Ok(viewer) => viewer,
        Err(away) => return away.into_response(),
    };
    if !viewer.may(&state, Action::Read) {
        return forbidden(&viewer, "read what the host runs");
    }
    let statuses = state.host.statuses();
    let letters = if viewer.may(&state, Action::Inspect) {
        Some(state.host.deployment_dead_letters().await)
    } else {
        None
    };
    let listed = letters.as_ref().map(|letters| {
        letters.as_ref().map_err(Clone::clone).map(|letters| {
            letters
                .iter()
                .rev()
                .take(view::DEAD_LETTERS_SHOWN)
                .map(|letter| Letter {
                    letter,
                    id: letter_id(letter),
                })
                .collect::<Vec<_>>()
        })
    });
    let body = view::events(&statuses, listed, &viewer.chrome());
    page(&viewer, "Events", StatusCode::OK, body)
}

#[derive(Deserialize)]
struct RepublishForm {
    csrf: String,
    id: String,
}

#[derive(Deserialize)]
struct LetterQuery {
    id: String,
}

/// The viewer's session if it is an admin's.
fn admin_session(viewer: &Viewer) -> Option<&Session> {
    match (&viewer.session, viewer.caller.is_admin()) {
        (Some((_, session)), true) => Some(session),
        _ => None,
    }
}

/// Asks before re-publishing a dead letter, naming every plugin that will
/// receive it: the event goes to the topic, not only to the plugin that
/// gave up on it.
async fn confirm_republish(
    State(state): State<AppState>,
    Query(query): Query<LetterQuery>,
    headers: HeaderMap,
) -> Response {
    let viewer = match viewer(&state, &headers) {
        Ok(viewer) => viewer,
        Err(away) => return away.into_response(),
    };
    let Some(session) = admin_session(&viewer) else {
        return forbidden(&viewer, "re-publish events");
    };
    let letters = match state.host.deployment_dead_letters().await {
        Ok(letters) => letters,
        Err(problem) => {
            let message = format!("The dead letters could not be read: {problem}");
            return page(
                &viewer,
                "Dead letters unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                view::problem("Dead letters unavailable", &message),
            );
        }
    };
    let Some(letter) = letters.iter().find(|l| letter_id(l) == query.id) else {
        return page(
            &viewer,
            "Not kept",
            StatusCode::NOT_FOUND,
            view::problem("Not kept", "That dead letter is no longer kept."),
        );
    };
    let receivers: Vec<String> = state
        .host
        .statuses()
        .into_iter()
        .filter(|s| {
            s.details
                .grants
                .events
                .subscribe
                .iter()
                .any(|pattern| pattern.matches(&letter.event.topic))
        })
        .map(|s| s.details.name)
        .collect();
    let body = view::confirm_republish(letter, &query.id, &receivers, &session.csrf);
    page(&viewer, "Confirm", StatusCode::OK, body)
}

/// Publishes a dead letter's event again on its topic (admin): every
/// subscriber of the topic gets it, as with `POST /v1/events/{topic}`.
async fn republish(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<RepublishForm>,
) -> Response {
    let viewer = match viewer(&state, &headers) {
        Ok(viewer) => viewer,
        Err(away) => return away.into_response(),
    };
    if let Some(refused) = refuse_unless_admin_form(&state, &viewer, &form.csrf, "republish") {
        return refused;
    }
    let message = match state.host.deployment_dead_letters().await {
        Err(problem) => format!("Failed: the dead letters could not be read: {problem}"),
        Ok(letters) => match letters.iter().find(|l| letter_id(l) == form.id) {
            None => "Failed: that dead letter is no longer kept.".to_owned(),
            Some(letter) if letter.payload_truncated => {
                "Failed: only the start of that payload was kept; it cannot be re-published."
                    .to_owned()
            }
            Some(letter) => {
                let topic = letter.event.topic.clone();
                let response =
                    super::publish_now(&state, &topic, letter.event.payload.clone().into()).await;
                let response =
                    super::audited(&state, &viewer.caller, "republish", &topic, response);
                outcome_message(response, &format!("re-publish on `{topic}`")).await
            }
        },
    };
    if let Some((id, _)) = &viewer.session {
        sessions(&state).flash(id, &message);
    }
    Redirect::to("/console/events").into_response()
}

async fn graph_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let viewer = match viewer(&state, &headers) {
        Ok(viewer) => viewer,
        Err(away) => return away.into_response(),
    };
    if !viewer.may(&state, Action::Read) {
        return forbidden(&viewer, "read what the host runs");
    }
    let statuses = state.host.statuses();
    let pipelines = state.host.pipelines();
    let mut graph = Graph::default();
    for status in &statuses {
        let name = &status.details.name;
        let me = Node::Plugin(name.clone());
        graph.nodes.insert(me.clone());
        for edge in &status.details.grants.calls {
            let to = match edge.plugin() {
                Some(callee) => Node::Plugin(callee.to_owned()),
                None => Node::Capability(
                    edge.to_string()
                        .trim_start_matches("capability:")
                        .to_owned(),
                ),
            };
            graph.edge(me.clone(), to, EdgeKind::Call, "");
        }
        for topic in &status.details.grants.events.publish {
            graph.edge(
                me.clone(),
                Node::Topic(topic.to_string()),
                EdgeKind::Event,
                "",
            );
        }
        for topic in &status.details.grants.events.subscribe {
            graph.edge(
                Node::Topic(topic.to_string()),
                me.clone(),
                EdgeKind::Event,
                "",
            );
        }
    }
    for pipeline in &pipelines {
        for pair in pipeline.stages.windows(2) {
            graph.edge(
                Node::Plugin(pair[0].clone()),
                Node::Plugin(pair[1].clone()),
                EdgeKind::Pipeline,
                &pipeline.name,
            );
        }
    }
    let body = view::graph(&graph, &pipelines);
    page(&viewer, "Graph", StatusCode::OK, body)
}

async fn cluster_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let viewer = match viewer(&state, &headers) {
        Ok(viewer) => viewer,
        Err(away) => return away.into_response(),
    };
    if !viewer.may(&state, Action::Read) {
        return forbidden(&viewer, "read what the host runs");
    }
    let cluster = state.host.cluster().await;
    let body = view::cluster(&cluster, now_secs());
    page(&viewer, "Cluster", StatusCode::OK, body)
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("console.css"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("console.js"),
    )
        .into_response()
}
