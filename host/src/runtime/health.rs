//! Readiness: whether this host can serve what its policy names, for
//! `GET /readyz` — every plugin of the policy loaded, no circuit open, each
//! plugin's own `health` check passing, the backend reachable — with the
//! detail per plugin.
//!
//! Budgets: a plugin's check starts at most once per version every
//! [`HEALTH_TTL`], however often readiness is asked (askers in between get
//! the last answer, concurrent askers wait for the one check in flight, and
//! an asker who gives up does not cancel it); each runs in a task of its
//! own, on one of the plugin's instances under the plugin's own limits and
//! by [`HEALTH_TIMEOUT`] at the latest, never waits for an instance slot (a
//! plugin busy with calls is reported `busy`, not asked), and its answer is
//! kept in at most [`MAX_REASON_BYTES`] of the plugin's text (escaped
//! after the cut). A plugin without a `health` export is not run at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Host;
use super::plugin::LoadedPlugin;

/// How long a plugin's health answer is reused before it is asked again.
pub const HEALTH_TTL: Duration = Duration::from_secs(5);

/// How long a health check may run (less when the plugin's own timeout is
/// shorter).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes of a plugin's reason (or of a failure's message) that readiness
/// keeps and shows.
pub const MAX_REASON_BYTES: usize = 256;

/// What a plugin's own health check said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum HealthCheck {
    /// It answered that it can serve.
    Healthy,
    /// It has no `health` export (a contract 0.1 plugin, or one not built
    /// with the SDK's world): counted as healthy.
    NoCheck,
    /// It answered that it cannot serve, and why.
    Unhealthy {
        /// The plugin's words, escaped and cut to [`MAX_REASON_BYTES`].
        reason: String,
    },
    /// The check did not finish: it trapped or hit one of the plugin's
    /// limits.
    Failed {
        /// Capsule's error kind (`timeout`, `out_of_fuel`, `trap`, …).
        kind: String,
        /// What happened, cut to [`MAX_REASON_BYTES`].
        message: String,
    },
    /// Every instance slot was serving calls, so it was not asked (and
    /// nothing was known from before).
    Busy,
    /// Not asked: the plugin is paused or its circuit is open.
    NotAsked,
}

impl HealthCheck {
    /// Whether this answer makes the plugin degraded.
    fn degrades(&self) -> bool {
        matches!(
            self,
            HealthCheck::Unhealthy { .. } | HealthCheck::Failed { .. }
        )
    }
}

/// The last health answer of one plugin version, and the check in flight.
#[derive(Default)]
pub(crate) struct HealthCache {
    state: std::sync::Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    /// The last answer and when its check started.
    last: Option<(Instant, HealthCheck)>,
    /// The check running now: its answer arrives here.
    running: Option<tokio::sync::watch::Receiver<Option<HealthCheck>>>,
}

/// The plugin's health: its last answer if that check started less than
/// [`HEALTH_TTL`] ago, otherwise the answer of a new check (or of the one
/// already running). The check runs in a task of its own that records its
/// answer whoever still waits for it: an asker who gives up (a client that
/// disconnects) neither cancels it nor lets a second one start.
async fn health(plugin: &Arc<LoadedPlugin>) -> HealthCheck {
    if !plugin.pre.has_health() {
        return HealthCheck::NoCheck;
    }
    let mut answer = {
        let mut state = plugin
            .health
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((started, check)) = &state.last
            && started.elapsed() < HEALTH_TTL
        {
            return check.clone();
        }
        match &state.running {
            Some(running) => running.clone(),
            None => {
                let (tell, answer) = tokio::sync::watch::channel(None);
                state.running = Some(answer.clone());
                let started = Instant::now();
                let plugin = Arc::clone(plugin);
                tokio::spawn(async move {
                    let check = ask(&plugin).await;
                    let mut state = plugin
                        .health
                        .state
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    state.running = None;
                    if check != HealthCheck::Busy {
                        state.last = Some((started, check.clone()));
                    }
                    drop(state);
                    let _ = tell.send(Some(check));
                });
                answer
            }
        }
    };
    match answer.wait_for(Option::is_some).await {
        Ok(check) => check.clone().unwrap_or(HealthCheck::Busy),
        // The task ended without answering: the runtime is shutting down.
        Err(_) => HealthCheck::Busy,
    }
}

/// Runs the plugin's check once.
async fn ask(plugin: &LoadedPlugin) -> HealthCheck {
    let timeout = HEALTH_TIMEOUT.min(plugin.limits().timeout);
    let Some(invoked) = plugin.run_health(Instant::now() + timeout).await else {
        // Every slot is serving calls: what was known before is still the
        // best answer.
        let state = plugin
            .health
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        return state
            .last
            .as_ref()
            .map_or(HealthCheck::Busy, |(_, check)| check.clone());
    };
    match invoked.result {
        Ok(None) => HealthCheck::NoCheck,
        Ok(Some(Ok(()))) => HealthCheck::Healthy,
        Ok(Some(Err(reason))) => HealthCheck::Unhealthy {
            reason: bounded(&reason),
        },
        Err(failure) => HealthCheck::Failed {
            kind: failure.kind().as_str().to_owned(),
            message: bounded(&failure.to_string()),
        },
    }
}

/// Untrusted text as readiness keeps it: escaped, and cut.
fn bounded(text: &str) -> String {
    crate::text::for_log(text, MAX_REASON_BYTES).into_owned()
}

/// Whether this host can serve, and why not.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// Every plugin of the policy loaded, none that counts degraded, the
    /// backend reachable.
    pub ready: bool,
    /// Where shared state lives and whether it answers.
    pub backend: BackendHealth,
    /// Every loaded plugin, by name.
    pub plugins: Vec<PluginHealth>,
    /// Plugins the policy names that are not loaded, and why.
    pub not_loaded: Vec<NotLoaded>,
}

/// The backend's reachability.
#[derive(Debug, Clone, Serialize)]
pub struct BackendHealth {
    /// `embedded` or `nats`.
    pub kind: String,
    /// Whether it answers now (the embedded store always does).
    pub reachable: bool,
}

/// One loaded plugin's health.
#[derive(Debug, Clone, Serialize)]
pub struct PluginHealth {
    /// Its name.
    pub name: String,
    /// The version its `describe` reports.
    pub version: String,
    /// `ok`, `degraded` (its circuit is open or its check failed) or
    /// `paused` (by an operator: not counted against readiness).
    pub state: PluginHealthState,
    /// Whether its circuit breaker refuses calls now (open within its
    /// cooldown, or waiting for a probe; past the cooldown the next call
    /// probes, so it does not count).
    pub circuit_open: bool,
    /// What its own check said.
    pub check: HealthCheck,
    /// Whether its being degraded makes the host not ready (the policy's
    /// `readiness`, `true` unless it says `false`).
    pub counts: bool,
}

/// A plugin's state as readiness sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginHealthState {
    /// Serving, and its check passes (or it has none).
    Ok,
    /// Its circuit is open, or its check failed.
    Degraded,
    /// Paused by an operator.
    Paused,
}

/// A plugin the policy names that did not load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotLoaded {
    /// Its name.
    pub name: String,
    /// The load failure's kind (`bad_signature`, `init_failed`, …).
    pub kind: String,
    /// Why, cut to [`MAX_REASON_BYTES`].
    pub message: String,
}

impl NotLoaded {
    pub(crate) fn new(name: &str, kind: &str, message: &str) -> NotLoaded {
        NotLoaded {
            name: name.to_owned(),
            kind: kind.to_owned(),
            message: bounded(message),
        }
    }
}

impl Host {
    /// Whether this host can serve what its policy names: asks every
    /// plugin's `health` check (at most once per [`HEALTH_TTL`] each, all at
    /// once), reads every circuit, and checks the backend's connection.
    pub async fn readiness(&self) -> Readiness {
        let slots = self.slots();
        let checks = slots.iter().map(|slot| async move {
            let current = slot.current();
            let paused = slot.paused.load(std::sync::atomic::Ordering::Acquire);
            let circuit_open = slot.breaker.refusing();
            let check = if paused || circuit_open {
                HealthCheck::NotAsked
            } else {
                health(&current).await
            };
            let state = if paused {
                PluginHealthState::Paused
            } else if circuit_open || check.degrades() {
                PluginHealthState::Degraded
            } else {
                PluginHealthState::Ok
            };
            PluginHealth {
                name: slot.name.to_string(),
                version: current.details.info.version.clone(),
                state,
                circuit_open,
                check,
                counts: slot.spec().readiness,
            }
        });
        let plugins = futures_util::future::join_all(checks).await;
        let not_loaded: Vec<NotLoaded> = self
            .not_loaded()
            .into_iter()
            .filter(|failure| self.slot(&failure.name).is_none())
            .collect();
        let backend = self.backend_health();
        let ready = backend.reachable
            && not_loaded.is_empty()
            && plugins
                .iter()
                .all(|plugin| !plugin.counts || plugin.state != PluginHealthState::Degraded);
        Readiness {
            ready,
            backend,
            plugins,
            not_loaded,
        }
    }

    fn backend_health(&self) -> BackendHealth {
        #[cfg(feature = "nats")]
        if let Some(calls) = &self.inner.shared_calls {
            return BackendHealth {
                kind: "nats".into(),
                reachable: calls.connected(),
            };
        }
        BackendHealth {
            kind: "embedded".into(),
            reachable: true,
        }
    }

    /// The load failures of the last policy loaded or applied.
    fn not_loaded(&self) -> Vec<NotLoaded> {
        self.inner
            .not_loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Remembers what the policy just loaded or applied could not load.
    pub(super) fn set_not_loaded(&self, failures: Vec<NotLoaded>) {
        *self
            .inner
            .not_loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = failures;
    }
}
