//! The console's pages as HTML. Every value goes through maud's escaping
//! (plugin names, descriptions, error messages, payloads are text, never
//! markup); the pages work without script, which only refreshes them.

use maud::{DOCTYPE, Markup, html};

use super::chart::{self, Graph, format_number, path_segment};
use crate::audit::AuditRecord;
use crate::check::{ImportCheck, ImportStatus};
use crate::runtime::{
    DeadLetter, HistorySnapshot, PluginState, PluginStatus, Readiness, RolloutState, RolloutStatus,
};

/// Dead letters listed on the events page.
pub const DEAD_LETTERS_SHOWN: usize = 100;

/// Bytes of a dead letter's payload shown.
pub const PAYLOAD_SHOWN_BYTES: usize = 2048;

/// Who is looking, for the page chrome and which controls to offer.
pub struct Chrome<'a> {
    /// The signed-in name (`None`: an open host's anonymous reader).
    pub who: Option<&'a str>,
    /// The role's name.
    pub role: &'a str,
    /// The session's CSRF token, for forms.
    pub csrf: Option<&'a str>,
    /// Whether the viewer may act (admin).
    pub admin: bool,
    /// A message left by the last action.
    pub flash: Option<String>,
}

/// A whole page around `body`.
pub fn page(title: &str, chrome: &Chrome<'_>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Capsule console" }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body {
                header {
                    a.brand href="/console" { "Capsule" }
                    nav {
                        a href="/console" { "Plugins" }
                        a href="/console/events" { "Events" }
                        a href="/console/graph" { "Graph" }
                        a href="/console/cluster" { "Cluster" }
                    }
                    div.who {
                        @match chrome.who {
                            Some(who) => {
                                span { (who) " (" (chrome.role) ")" }
                                @if let Some(csrf) = chrome.csrf {
                                    form method="post" action="/console/logout" {
                                        input type="hidden" name="csrf" value=(csrf);
                                        button type="submit" { "Sign out" }
                                    }
                                }
                            }
                            None => {
                                span { "anonymous (read only)" }
                                a href="/console/login" { "Sign in" }
                            }
                        }
                    }
                }
                @if let Some(flash) = &chrome.flash {
                    p.flash role="status" { (flash) }
                }
                main data-refresh="5" { (body) }
            }
        }
    }
}

/// The login form, with why the last attempt failed; `csrf` is the token
/// its cookie carries too.
pub fn login(problem: Option<&str>, csrf: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Sign in · Capsule console" }
                link rel="stylesheet" href="/console/static/console.css";
            }
            body.login {
                main {
                    h1 { "Capsule console" }
                    @if let Some(problem) = problem {
                        p.error role="alert" { (problem) }
                    }
                    form method="post" action="/console/login" {
                        input type="hidden" name="csrf" value=(csrf);
                        label for="key" { "API key (role view or admin) or the admin token" }
                        input #key type="password" name="key" autocomplete="off" required autofocus;
                        button #sign-in type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

fn state_badge(state: PluginState) -> Markup {
    let (class, text) = match state {
        PluginState::Active => ("ok", "active"),
        PluginState::Paused => ("warn", "paused"),
        PluginState::CircuitOpen => ("bad", "circuit open"),
    };
    html! { span class=(format!("badge {class}")) { (text) } }
}

fn micros(us: Option<u64>) -> String {
    match us {
        None => "–".to_owned(),
        Some(us) if us >= 1_000_000 => format!("≤{:.1} s", us as f64 / 1e6),
        Some(us) if us >= 1_000 => format!("≤{:.1} ms", us as f64 / 1e3),
        Some(us) => format!("≤{us} µs"),
    }
}

fn short_digest(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn signers(status: &PluginStatus) -> String {
    if status.details.signers.is_empty() {
        "unsigned".to_owned()
    } else {
        status.details.signers.join(", ")
    }
}

/// What the overview shows of one plugin.
pub struct Row<'a> {
    /// Its status.
    pub status: &'a PluginStatus,
    /// Its last hour.
    pub history: &'a HistorySnapshot,
}

/// The overview: every plugin with its state and last hour.
///
/// `dead_letters` is how many this host holds, for viewers who may see them.
pub fn overview(
    rows: &[Row<'_>],
    readiness: &Readiness,
    dead_letters: Option<usize>,
    now_secs: u64,
) -> Markup {
    let open_circuits = rows
        .iter()
        .filter(|r| r.status.state == PluginState::CircuitOpen)
        .count();
    let rollouts: Vec<&PluginStatus> = rows
        .iter()
        .map(|r| r.status)
        .filter(|s| {
            s.rollout
                .as_ref()
                .is_some_and(|r| r.state == RolloutState::Running)
        })
        .collect();
    html! {
        h1 { "Plugins" }
        ul.summary {
            li { @if readiness.ready { span.badge.ok { "ready" } } @else { span.badge.bad { "not ready" } } }
            li { (rows.len()) " plugins loaded" }
            li { (open_circuits) " open circuits" }
            li { (rollouts.len()) " rollouts in progress" }
            @if let Some(count) = dead_letters {
                li #dead-letter-count { a href="/console/events" { "dead letters here: " (count) } }
            }
            li { "backend " (readiness.backend.kind) ": "
                 @if readiness.backend.reachable { "reachable" } @else { span.bad { "unreachable" } } }
        }
        @if !readiness.not_loaded.is_empty() {
            h2 { "Not loaded" }
            ul.failures {
                @for failed in &readiness.not_loaded {
                    li { strong { (failed.name) } " — " code { (failed.kind) } " " (failed.message) }
                }
            }
        }
        table #plugins {
            thead { tr {
                th { "plugin" } th { "state" } th { "version" } th { "digest" } th { "signer" }
                th { "calls/s" } th { "errors" } th { "p50" } th { "p99" } th { "fuel (max / limit)" }
                th { "calls, last hour" }
            } }
            tbody {
                @for row in rows {
                    @let status = row.status;
                    @let history = row.history;
                    @let name = &status.details.name;
                    @let fuel_max = history.samples.last()
                        .filter(|s| s.at + history.minute_secs >= now_secs)
                        .map(|s| s.fuel_max);
                    tr data-plugin=(name) {
                        td { a href=(format!("/console/plugins/{}", path_segment(name))) { (name) } }
                        td { (state_badge(status.state)) }
                        td { (status.details.info.version) }
                        td { code title=(status.details.digest) { (short_digest(&status.details.digest)) } }
                        td { (signers(status)) }
                        td.num { (format!("{:.2}", history.minute_calls as f64 / history.minute_secs.max(1) as f64)) }
                        td.num {
                            @if history.minute_calls > 0 {
                                (format!("{:.1}%", 100.0 * history.minute_errors as f64 / history.minute_calls as f64))
                            } @else { "–" }
                        }
                        td.num { (micros(history.minute_p50_us)) }
                        td.num { (micros(history.minute_p99_us)) }
                        td.num {
                            (fuel_max.map(|f| format_number(f as f64)).unwrap_or_else(|| "–".into()))
                            " / "
                            (status.details.limits.fuel.map(|f| format_number(f as f64)).unwrap_or_else(|| "none".into()))
                        }
                        td { (chart::sparkline(&chart::per_window(&history.samples, now_secs, |s| f64::from(s.calls)), 180, 24, "calls per 10 s")) }
                    }
                }
            }
        }
        p.note { "Rates, percentiles and fuel cover the last minute; sparklines the last hour in 10-second windows." }
    }
}

/// What the plugin page shows.
pub struct PluginPage<'a> {
    /// Its status.
    pub status: &'a PluginStatus,
    /// Its last hour.
    pub history: &'a HistorySnapshot,
    /// Its imports next to their grants, and unused grants.
    pub imports: &'a [ImportCheck],
    /// Grants nothing imports.
    pub unused_grants: &'a [String],
    /// The rollout running or last ended (its file path emptied for
    /// non-admins).
    pub rollout: Option<RolloutStatus>,
    /// Refusals and actions naming it (admin only: `None` otherwise).
    pub audit: Option<Vec<AuditRecord>>,
    /// The limits, as their JSON fields.
    pub limits: serde_json::Value,
    /// Grants by service, as JSON (names only for non-admins).
    pub grants: serde_json::Value,
}

/// One plugin's page.
pub fn plugin(page: &PluginPage<'_>, chrome: &Chrome<'_>, now_secs: u64) -> Markup {
    let status = page.status;
    let details = &status.details;
    let name = &details.name;
    let history = page.history;
    let segment = path_segment(name);
    let series = |value: fn(&crate::runtime::Sample) -> f64| {
        chart::per_window(&history.samples, now_secs, value)
    };
    html! {
        h1 { (name) " " (state_badge(status.state)) }
        p.description #description { (details.info.description) }
        dl.facts {
            dt { "version" } dd { (details.info.version) }
            dt { "digest" } dd { code { (details.digest) } }
            dt { "signer" } dd { (signers(status)) }
            dt { "contract" } dd { (details.contract_version.as_deref().unwrap_or("unknown")) }
            dt { "generation" } dd { (status.generation) }
            dt { "instances" } dd { (status.live_instances) " live, " (status.calls_in_flight) " calls in flight" }
            dt { "queued events" } dd { (status.queued_events) }
        }
        @if chrome.admin {
            section.actions {
                h2 { "Actions" }
                @if status.state == PluginState::Paused {
                    a.button #resume href=(format!("/console/plugins/{segment}/confirm/resume")) { "Resume" }
                } @else {
                    a.button #pause href=(format!("/console/plugins/{segment}/confirm/pause")) { "Pause" }
                }
                a.button #reload href=(format!("/console/plugins/{segment}/confirm/reload")) { "Reload" }
                @if status.rollout.as_ref().is_some_and(|r| r.state == RolloutState::Running) {
                    a.button #promote href=(format!("/console/plugins/{segment}/confirm/promote")) { "Promote rollout" }
                    a.button #abort href=(format!("/console/plugins/{segment}/confirm/abort")) { "Abort rollout" }
                }
            }
        }
        section {
            h2 { "Last hour" }
            div.charts {
                figure { (chart::sparkline(&series(|s| f64::from(s.calls)), 360, 48, "calls per 10 s")) figcaption { "calls per 10 s" } }
                figure { (chart::sparkline(&series(|s| f64::from(s.errors)), 360, 48, "errors per 10 s")) figcaption { "errors per 10 s" } }
                figure { (chart::sparkline(&series(|s| s.p99_us as f64 / 1000.0), 360, 48, "p99 latency, ms")) figcaption { "p99 latency (ms)" } }
                figure { (chart::sparkline(&series(|s| s.fuel_max as f64), 360, 48, "largest fuel per call")) figcaption { "largest fuel per call" } }
            }
            p { "Last minute: " (history.minute_calls) " calls, " (history.minute_errors) " errors, p50 "
                (micros(history.minute_p50_us)) ", p99 " (micros(history.minute_p99_us)) "." }
        }
        section #errors {
            h2 { "Errors in the last hour" }
            @if history.hour_errors.is_empty() {
                p { "None." }
            } @else {
                table {
                    thead { tr { th { "kind" } th { "count" } th { "latest" } } }
                    tbody {
                        @for (kind, count) in &history.hour_errors {
                            tr {
                                td { code { (kind) } }
                                td.num { (count) }
                                td.message {
                                    @if !chrome.admin {
                                        span.muted { "shown to admin keys" }
                                    } @else if let Some(last) = history.last_errors.iter().find(|e| e.kind == *kind) {
                                        (last.message)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section #grants {
            h2 { "Imports and the grants that serve them" }
            table {
                thead { tr { th { "import" } th { "served by" } } }
                tbody {
                    @for import in page.imports {
                        tr {
                            td { code { (import.import) } }
                            td {
                                @match &import.status {
                                    ImportStatus::Provided => span.muted { "always provided" },
                                    ImportStatus::Granted(grant) => span.ok { "granted: " (grant) },
                                    ImportStatus::NotGranted(grant) => span.bad { "not granted: " (grant) " (every call denied)" },
                                    ImportStatus::NeverGranted => span.bad { "never granted (every call denied)" },
                                }
                            }
                        }
                    }
                }
            }
            @if !page.unused_grants.is_empty() {
                p { "Granted but never imported: " (page.unused_grants.join(", ")) }
            }
            details {
                summary { "Grants" }
                pre { (serde_json::to_string_pretty(&page.grants).unwrap_or_default()) }
            }
        }
        section #limits {
            h2 { "Limits" }
            dl.facts {
                @if let Some(fields) = page.limits.as_object() {
                    @for (key, value) in fields {
                        dt { (key) } dd { (value) }
                    }
                }
            }
        }
        @if let Some(rollout) = &page.rollout {
            (rollout_section(rollout))
        }
        section #denials {
            h2 { "Refusals and actions" }
            @match &page.audit {
                None => p.muted { "The audit log is shown to admin keys." },
                Some(records) if records.is_empty() => p { "None in the audit log." },
                Some(records) => {
                    table {
                        thead { tr { th { "time" } th { "who" } th { "what" } th { "outcome" } th { "count" } th { "example" } } }
                        tbody {
                            @for record in records {
                                tr {
                                    td { (record.time) }
                                    td { (record.who) }
                                    td { (record.action) " " (record.target) }
                                    td { (record.outcome) }
                                    td.num { (record.count.map(|c| c.to_string()).unwrap_or_default()) }
                                    td.message { (record.example.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A rollout: its state and share, then each version's calls side by side.
fn rollout_section(rollout: &RolloutStatus) -> Markup {
    let rate = |failures: u64, calls: u64| {
        if calls == 0 {
            "–".to_owned()
        } else {
            format!("{:.1}%", 100.0 * failures as f64 / calls as f64)
        }
    };
    html! {
        section #rollout {
            h2 { "Rollout " span.badge { (rollout.state.as_str()) } }
            p {
                "The new version takes " strong { (format!("{:.0}%", rollout.share)) } " of the calls"
                @if let (Some(step), Some(every)) = (rollout.step, &rollout.every) {
                    ", " (format!("{step:.0}")) " points more every " (every)
                }
                "; rolled back above " (format!("{:.1}%", rollout.max_error_rate))
                " failures within " (rollout.window) " (after " (rollout.min_calls) " calls)."
                @if let Some(reason) = &rollout.reason { " " (reason) }
            }
            @if !rollout.path.as_os_str().is_empty() {
                p.muted { "New version's file: " code { (rollout.path.display()) } }
            }
            table #rollout-versions {
                thead { tr {
                    th { "version" } th { "digest" } th { "calls" } th { "failures" }
                    th { "in the window" } th { "failure rate (window)" } th { "mean latency" }
                } }
                tbody {
                    @for (track, stats) in [("stable", &rollout.stable), ("canary", &rollout.canary)] {
                        tr data-track=(track) {
                            td { strong { (track) } " " (stats.version) }
                            td { code title=(stats.digest) { (short_digest(&stats.digest)) } }
                            td.num { (stats.calls) }
                            td.num { (stats.failures) }
                            td.num { (stats.window_failures) " / " (stats.window_calls) }
                            td.num { (rate(stats.window_failures, stats.window_calls)) }
                            td.num { (format!("{:.2} ms", stats.mean_duration_ms)) }
                        }
                    }
                }
            }
        }
    }
}

/// The page that asks before an action runs: the action's form.
pub fn confirm(plugin: &str, action: &str, what: &str, csrf: &str) -> Markup {
    html! {
        h1 { "Confirm" }
        p { (what) }
        form method="post" action=(format!("/console/plugins/{}/{action}", path_segment(plugin))) {
            input type="hidden" name="csrf" value=(csrf);
            button #confirm type="submit" { "Yes, " (action) " " (plugin) }
            " "
            a href=(format!("/console/plugins/{}", path_segment(plugin))) { "Cancel" }
        }
    }
}

/// The page that asks before a dead letter's event is published again.
pub fn confirm_republish(
    letter: &DeadLetter,
    id: &str,
    receivers: &[String],
    csrf: &str,
) -> Markup {
    html! {
        h1 { "Re-publish?" }
        p { "Publish this event on " code { (letter.event.topic) } " again. It was given up on by "
            strong { (letter.subscriber) } " (" (letter.reason) ")." }
        pre { (payload_text(&letter.event.payload)) }
        @if receivers.is_empty() {
            p { "No loaded plugin subscribes to this topic now: nobody will receive it." }
        } @else {
            p #receivers { "Every plugin subscribed to the topic receives it: " (receivers.join(", ")) "." }
        }
        form method="post" action="/console/events/republish" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="id" value=(id);
            button #confirm type="submit" { "Yes, re-publish" }
            " "
            a href="/console/events" { "Cancel" }
        }
    }
}

/// A dead letter as the events page lists it, with the id its re-publish
/// form names.
pub struct Letter<'a> {
    /// The letter.
    pub letter: &'a DeadLetter,
    /// Its id: a digest of what it holds.
    pub id: String,
}

/// Topics, queues and dead letters.
pub fn events(
    statuses: &[PluginStatus],
    letters: Option<Result<Vec<Letter<'_>>, String>>,
    chrome: &Chrome<'_>,
) -> Markup {
    html! {
        h1 { "Events" }
        h2 { "Topics" }
        table #topics {
            thead { tr { th { "plugin" } th { "publishes to" } th { "subscribes to" } th { "queued for it" } } }
            tbody {
                @for status in statuses {
                    @let events = &status.details.grants.events;
                    @if !events.publish.is_empty() || !events.subscribe.is_empty() || status.queued_events > 0 {
                        tr {
                            td { a href=(format!("/console/plugins/{}", path_segment(&status.details.name))) { (status.details.name) } }
                            td { @for p in &events.publish { code { (p.to_string()) } " " } }
                            td { @for s in &events.subscribe { code { (s.to_string()) } " " } }
                            td.num { (status.queued_events) }
                        }
                    }
                }
            }
        }
        h2 { "Dead letters" }
        @match letters {
            None => p.muted { "Dead letters are shown to view and admin keys." },
            Some(Err(problem)) => p.error { "The dead letters could not be read: " (problem) },
            Some(Ok(letters)) if letters.is_empty() => p #no-dead-letters { "None." },
            Some(Ok(letters)) => {
                p { "Newest first; at most " (DEAD_LETTERS_SHOWN) " shown, payloads cut at "
                    (PAYLOAD_SHOWN_BYTES) " bytes." }
                table #dead-letters {
                    thead { tr { th { "when" } th { "for" } th { "topic" } th { "from" } th { "attempts" } th { "reason" } th { "payload" } th {} } }
                    tbody {
                        @for Letter { letter, id } in &letters {
                            tr {
                                td { (humantime::format_rfc3339_seconds(letter.at)) }
                                td { (letter.subscriber) }
                                td { code { (letter.event.topic) } }
                                td { (letter.event.source) }
                                td.num { (letter.attempts) }
                                td.message { (letter.reason) }
                                td.payload { pre { (payload_text(&letter.event.payload)) @if letter.payload_truncated { "…" } } }
                                td {
                                    @if chrome.admin && chrome.csrf.is_some() && !letter.payload_truncated {
                                        a.button.republish href=(format!("/console/events/republish?id={id}")) { "Re-publish…" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A payload as text: UTF-8 with anything else replaced, cut.
fn payload_text(payload: &[u8]) -> String {
    let shown = &payload[..payload.len().min(PAYLOAD_SHOWN_BYTES)];
    String::from_utf8_lossy(shown).into_owned()
}

/// The graph page.
pub fn graph(graph: &Graph, pipelines: &[crate::runtime::Pipeline]) -> Markup {
    html! {
        h1 { "Plugins, pipelines and events" }
        p.legend {
            span.edge-call { "— may call" } " "
            span.edge-pipeline { "— pipeline stage" } " "
            span.edge-event { "— publishes / is delivered" }
        }
        div.graph-wrap { (graph.render("/console")) }
        h2 { "Pipelines" }
        @if pipelines.is_empty() { p { "None." } }
        ul #pipelines {
            @for pipeline in pipelines {
                li {
                    strong { (pipeline.name) } ": "
                    (pipeline.stages.join(" → "))
                    @if pipeline.transaction { " (one transaction)" }
                }
            }
        }
    }
}

/// The deployment's hosts and what each serves (this host alone without
/// NATS).
pub fn cluster(cluster: &Result<crate::runtime::Cluster, String>, now_secs: u64) -> Markup {
    html! {
        h1 { "Cluster" }
        @match cluster {
            Err(problem) => p.error { "The deployment's hosts could not be read: " (problem) },
            Ok(cluster) => {
                p { "Backend " code { (cluster.backend) } "; this host is " strong { (cluster.this_host) } "." }
                table #hosts {
                    thead { tr { th { "host" } th { "capsule" } th { "up for" } th { "last seen" } th { "plugins (version, digest, serving)" } } }
                    tbody {
                        @for host in &cluster.hosts {
                            tr data-host=(host.host) {
                                td { (host.host) @if host.host == cluster.this_host { " (this host)" } }
                                td { (host.capsule) }
                                td.num { (format_age(now_secs.saturating_sub(host.started_at))) }
                                td.num { (format_age(now_secs.saturating_sub(host.updated_at))) " ago" }
                                td {
                                    @for plugin in &host.plugins {
                                        span.served {
                                            (plugin.name) " " (plugin.version) " "
                                            code title=(plugin.digest) { (short_digest(&plugin.digest)) }
                                            @if !plugin.serving { " " span.badge.warn { "paused" } }
                                        }
                                        " · "
                                    }
                                    @if host.more_plugins > 0 { "and " (host.more_plugins) " more" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn format_age(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// A page for a refusal or a missing thing.
pub fn problem(title: &str, message: &str) -> Markup {
    html! {
        h1 { (title) }
        p.error { (message) }
    }
}
