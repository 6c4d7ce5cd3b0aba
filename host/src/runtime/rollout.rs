//! Canary and blue-green rollouts: a new version of a loaded plugin serves a
//! share of the plugin's calls next to the current one, steps its share up
//! over time while it stays healthy, and is promoted — or rolled back by
//! itself as soon as its failure rate over a window passes a threshold.
//!
//! Instant reload stays the default; a rollout is asked for
//! (`Host::start_rollout`, `POST /v1/plugins/{name}/rollout`). The new
//! version is loaded from its own file with the plugin's grants, limits and
//! config (a change of those is a policy apply), verified, compiled and
//! initialised like any reload before it takes a call.
//!
//! Budgets: one rollout per plugin at a time; the new version holds at most
//! the plugin's `max_instances` instances of its own, and a rollout starts
//! only if the instance pool holds every plugin at its `max_instances` plus
//! the new version at its own (so neither version can be starved of
//! instances by the other, nor any other plugin by the rollout). The health
//! window is ten counters per version, whatever the traffic; per-version
//! metrics are labelled by track (`stable`, `canary`), never by a digest, so
//! rollouts one after another do not grow `/metrics`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::breaker::counts_as_failure;
use super::plugin::LoadedPlugin;
use super::registry::Slot;
use super::spec::{PluginSource, PluginSpec};
use super::{Host, HostInner};
use crate::contract::{PluginError, Request};
use crate::error::{CallFailure, ErrorKind, LoadError};
use crate::policy::Policy;
use crate::text::log_field;

/// Shares are kept in basis points: 1 = 0.01 % of calls.
const WHOLE: u32 = 10_000;

/// How long the versions a rollout retires get to run `shutdown`.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(2);

/// How to roll a new version of a plugin out.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutPlan {
    /// The new version's component file (`capsule serve` resolves a
    /// relative one against the policy file's directory, as the policy's
    /// own paths are).
    pub path: PathBuf,
    /// Its detached signature file, when the signature is not embedded.
    pub signature: Option<PathBuf>,
    /// Percent of the plugin's calls the new version takes at first
    /// (more than 0, less than 100; two decimals count).
    pub share: f64,
    /// Stepping the share up: `(percent, every)` adds `percent` every
    /// `every` while the new version is healthy and has served `min_calls`
    /// calls since the last step; reaching 100 % promotes it. `None` keeps
    /// the share until `promote` or `abort`.
    pub step: Option<(f64, Duration)>,
    /// The new version is rolled back when more than this percent of its
    /// calls within `window`, or since its share last stepped, failed (0:
    /// any failure). A failure is a trap, a limit, a host error or the
    /// plugin's own `failed` error; requests it refused as invalid,
    /// unsupported or denied are not judged.
    pub max_error_rate: f64,
    /// How far back the failure rate looks.
    pub window: Duration,
    /// Calls within the window before the rate is judged (and calls since
    /// the last step before the next one).
    pub min_calls: u32,
    /// A request metadata key (matched without regard to ASCII case, as
    /// HTTP header names are) whose value picks the version (the same
    /// value always gets the same version for a given share, and keeps the
    /// new version as the share grows); requests without it are split by
    /// count.
    pub sticky: Option<String>,
}

impl RolloutPlan {
    /// A plan for `path` at `share` percent, with the default rollback
    /// rule (more than 5 % failures over 60 s, judged from 10 calls) and no
    /// stepping.
    pub fn new(path: impl Into<PathBuf>, share: f64) -> RolloutPlan {
        RolloutPlan {
            path: path.into(),
            signature: None,
            share,
            step: None,
            max_error_rate: 5.0,
            window: Duration::from_secs(60),
            min_calls: 10,
            sticky: None,
        }
    }

    /// Reads a plan from the JSON body of `POST /v1/plugins/{name}/rollout`:
    /// `{"path": "…", "share": 10, "step": 20, "every": "30s",
    /// "max_error_rate": 5, "window": "1m", "min_calls": 10,
    /// "sticky": "user", "signature": "…"}` (only `path` and `share` are
    /// required). Checked with [`RolloutPlan::validate`].
    pub fn from_json(body: &[u8]) -> Result<RolloutPlan, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            path: PathBuf,
            share: f64,
            #[serde(default)]
            signature: Option<PathBuf>,
            #[serde(default)]
            step: Option<f64>,
            #[serde(default)]
            every: Option<String>,
            #[serde(default)]
            max_error_rate: Option<f64>,
            #[serde(default)]
            window: Option<String>,
            #[serde(default)]
            min_calls: Option<u32>,
            #[serde(default)]
            sticky: Option<String>,
        }
        let raw: Raw = serde_json::from_slice(body).map_err(|err| format!("the plan: {err}"))?;
        let duration = |field: &str, text: &str| {
            crate::units::parse_duration(text).map_err(|err| format!("`{field}`: {err}"))
        };
        let step = match (raw.step, raw.every.as_deref()) {
            (None, None) => None,
            (Some(step), Some(every)) => Some((step, duration("every", every)?)),
            _ => return Err("`step` and `every` go together".into()),
        };
        let mut plan = RolloutPlan::new(raw.path, raw.share);
        plan.signature = raw.signature;
        plan.step = step;
        if let Some(rate) = raw.max_error_rate {
            plan.max_error_rate = rate;
        }
        if let Some(window) = raw.window.as_deref() {
            plan.window = duration("window", window)?;
        }
        if let Some(min_calls) = raw.min_calls {
            plan.min_calls = min_calls;
        }
        plan.sticky = raw.sticky;
        plan.validate()?;
        Ok(plan)
    }

    /// Refuses a plan the host would not carry out as written.
    pub fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("`path` names the new version's component file".into());
        }
        let share = basis_points(self.share);
        if !(self.share > 0.0 && self.share < 100.0) || share == 0 || share >= WHOLE {
            return Err(format!(
                "`share` is a percent of calls above 0 and below 100, not {} \
                 (a whole switch is a reload)",
                self.share
            ));
        }
        if let Some((step, every)) = self.step {
            if !(step > 0.0 && step <= 100.0) || basis_points(step) == 0 {
                return Err(format!(
                    "`step` is a percent above 0 and at most 100, not {step}"
                ));
            }
            if every < Duration::from_millis(100) || every > Duration::from_secs(86_400) {
                return Err("`every` is between 100ms and 24h".into());
            }
        }
        if !(self.max_error_rate >= 0.0 && self.max_error_rate < 100.0) {
            return Err(format!(
                "`max_error_rate` is a percent from 0 to below 100, not {}",
                self.max_error_rate
            ));
        }
        if self.window < Duration::from_secs(1) || self.window > Duration::from_secs(3_600) {
            return Err("`window` is between 1s and 1h".into());
        }
        if !(1..=1_000_000).contains(&self.min_calls) {
            return Err("`min_calls` is from 1 to 1000000".into());
        }
        if let Some(key) = &self.sticky
            && (key.is_empty() || key.len() > 128)
        {
            return Err("`sticky` names a metadata key of 1 to 128 bytes".into());
        }
        Ok(())
    }
}

/// A percent as basis points, rounded.
fn basis_points(percent: f64) -> u32 {
    if percent.is_finite() && percent > 0.0 {
        (percent * 100.0).round().min(f64::from(WHOLE)) as u32
    } else {
        0
    }
}

/// How a rollout stands or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Both versions serve calls.
    Running,
    /// The new version replaced the old one.
    Promoted,
    /// The new version failed too often and was removed by the host.
    RolledBack,
    /// Someone ended the rollout; the old version serves alone.
    Aborted,
}

impl RolloutState {
    /// The state as it is written in JSON and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Promoted => "promoted",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }
}

/// One version's calls during a rollout.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrackStats {
    /// The version's `describe` version.
    pub version: String,
    /// The digest of its component.
    pub digest: String,
    /// Calls it answered since the rollout started (calls refused before
    /// they reached it — busy, invalid input, paused — do not count).
    pub calls: u64,
    /// Of those, calls that failed: a trap, a plugin error, or a limit.
    pub failures: u64,
    /// Calls within the health window now.
    pub window_calls: u64,
    /// Failures within the health window now.
    pub window_failures: u64,
    /// Mean wall-clock time of its judged calls, in milliseconds.
    pub mean_duration_ms: f64,
}

/// A rollout as it stands: what [`Host::rollout`] and the rollout routes
/// answer.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    /// The plugin rolled out.
    pub plugin: String,
    /// Running, or how it ended.
    pub state: RolloutState,
    /// Percent of calls the new version takes now (when it ended: last).
    pub share: f64,
    /// The version serving before the rollout.
    pub stable: TrackStats,
    /// The new version.
    pub canary: TrackStats,
    /// Why it ended (the failure rate that rolled it back, who aborted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it started, in seconds since the Unix epoch.
    pub started_at: u64,
    /// The new version's file.
    pub path: PathBuf,
    /// Stepping: percent added each step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<f64>,
    /// Stepping: time between steps, e.g. `30s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// The rollback threshold, percent of calls in the window.
    pub max_error_rate: f64,
    /// The health window, e.g. `1m`.
    pub window: String,
    /// Calls in the window before it is judged.
    pub min_calls: u32,
    /// The metadata key that pins a caller to a version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
}

/// Why a rollout could not start, or be promoted or aborted.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// No plugin of that name is loaded.
    #[error("no plugin named `{0}` is loaded")]
    UnknownPlugin(String),
    /// The plugin has a rollout running already.
    #[error("`{0}` has a rollout running; promote or abort it first")]
    InProgress(String),
    /// The plugin has no rollout running.
    #[error("`{0}` has no rollout running")]
    NotRunning(String),
    /// The plan is not one the host would carry out.
    #[error("`{plugin}`: {message}")]
    Invalid {
        /// The plugin.
        plugin: String,
        /// What is wrong with the plan.
        message: String,
    },
    /// The instance pool cannot hold a second version of the plugin.
    #[error("`{plugin}`: {message}")]
    PoolTooSmall {
        /// The plugin.
        plugin: String,
        /// How many instances are needed, and what to raise.
        message: String,
    },
    /// The new version did not load (or would break plugins requiring
    /// this one): the old one serves alone, as before.
    #[error("{0}")]
    Load(#[from] LoadError),
    /// The host is stopping.
    #[error("the host is stopping")]
    Stopping,
}

impl RolloutError {
    /// The error's stable kind, as the HTTP API reports it.
    pub fn kind(&self) -> &'static str {
        match self {
            RolloutError::UnknownPlugin(_) => ErrorKind::UnknownPlugin.as_str(),
            RolloutError::InProgress(_) => "conflict",
            RolloutError::NotRunning(_) => "no_rollout",
            RolloutError::Invalid { .. } | RolloutError::PoolTooSmall { .. } => {
                ErrorKind::Config.as_str()
            }
            RolloutError::Load(err) => err.kind().as_str(),
            RolloutError::Stopping => ErrorKind::Unavailable.as_str(),
        }
    }
}

/// Which version takes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Track {
    Stable,
    Canary,
}

impl Track {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Track::Stable => "stable",
            Track::Canary => "canary",
        }
    }
}

/// Whether a call's outcome speaks about the version that served it: `None`
/// when it does not, else whether it failed. A failure is what the circuit
/// breaker counts against a plugin's health (a trap, a limit, a host error)
/// and a plugin's own `failed` error; a request the version refused as
/// invalid, unsupported or denied is the caller's doing (any caller could
/// otherwise roll a version back with bad requests), and a quota, a pause or
/// a refusal before the call ran says nothing about the version.
pub(crate) fn judged(result: Result<(), &CallFailure>) -> Option<bool> {
    match result {
        Ok(()) => Some(false),
        Err(CallFailure::Plugin(PluginError::Failed(_))) => Some(true),
        Err(failure) if counts_as_failure(failure.kind()) => Some(true),
        Err(_) => None,
    }
}

/// A rollout in progress, kept in its plugin's slot.
pub(crate) struct Rollout {
    /// The new version.
    pub(crate) canary: Arc<LoadedPlugin>,
    /// What the new version was loaded from: the slot's spec once promoted.
    pub(crate) spec: PluginSpec,
    plan: RolloutPlan,
    /// The new version's share now, in basis points.
    share: AtomicU32,
    /// Calls split by count so far, for an exact share without sticky keys.
    turn: AtomicU64,
    counts: Mutex<Counts>,
    /// Wakes the step loop once the rollout has ended, so it lets go of
    /// the plugin at once instead of at its next step.
    ended: Arc<tokio::sync::Notify>,
    started_at: u64,
    stable: (String, String),
}

#[derive(Default)]
struct Counts {
    stable: Tally,
    canary: Tally,
    /// The new version's calls and failures since the share last stepped
    /// (since the start before the first step): judged next to the window,
    /// so a version called less than `min_calls` times per window is still
    /// judged before it steps up.
    since_step: (u64, u64),
}

#[derive(Default)]
struct Tally {
    calls: u64,
    failures: u64,
    busy: Duration,
    window: Window,
}

/// Calls and failures over the last window, in ten buckets.
#[derive(Default)]
struct Window {
    buckets: [(u64, u64); 10],
    head: usize,
    head_started: Option<Instant>,
}

impl Window {
    fn advance(&mut self, now: Instant, span: Duration) {
        let bucket = span / 10;
        let Some(started) = self.head_started else {
            self.head_started = Some(now);
            return;
        };
        let behind = now.saturating_duration_since(started);
        if behind >= span {
            self.buckets = [(0, 0); 10];
            self.head_started = Some(now);
            return;
        }
        let mut started = started;
        while now.saturating_duration_since(started) >= bucket {
            self.head = (self.head + 1) % self.buckets.len();
            self.buckets[self.head] = (0, 0);
            started += bucket;
        }
        self.head_started = Some(started);
    }

    fn record(&mut self, now: Instant, span: Duration, failed: bool) {
        self.advance(now, span);
        let bucket = &mut self.buckets[self.head];
        bucket.0 += 1;
        bucket.1 += u64::from(failed);
    }

    fn totals(&mut self, now: Instant, span: Duration) -> (u64, u64) {
        self.advance(now, span);
        self.buckets
            .iter()
            .fold((0, 0), |(calls, failures), (c, f)| {
                (calls + c, failures + f)
            })
    }
}

impl Rollout {
    fn new(
        canary: Arc<LoadedPlugin>,
        spec: PluginSpec,
        plan: RolloutPlan,
        stable: &LoadedPlugin,
    ) -> Rollout {
        Rollout {
            share: AtomicU32::new(basis_points(plan.share)),
            canary,
            spec,
            plan,
            turn: AtomicU64::new(0),
            counts: Mutex::new(Counts::default()),
            ended: Arc::new(tokio::sync::Notify::new()),
            started_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            stable: (
                stable.details.info.version.clone(),
                stable.details.digest.clone(),
            ),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Which version takes `request`.
    pub(crate) fn track_for(&self, request: &Request) -> Track {
        let share = u64::from(self.share.load(Ordering::Acquire));
        let sticky = self.plan.sticky.as_deref().and_then(|key| {
            request
                .metadata
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, value)| value.as_bytes())
        });
        let canary = match sticky {
            Some(value) => by_key(value, share),
            None => by_count(self.turn.fetch_add(1, Ordering::Relaxed), share),
        };
        if canary { Track::Canary } else { Track::Stable }
    }

    /// Counts one call's outcome; for the new version, returns why it must
    /// be rolled back once its failure rate passes the threshold.
    pub(crate) fn record(&self, track: Track, failed: bool, took: Duration) -> Option<String> {
        let now = Instant::now();
        let span = self.plan.window;
        let mut counts = self.counts();
        let tally = match track {
            Track::Stable => &mut counts.stable,
            Track::Canary => &mut counts.canary,
        };
        tally.calls += 1;
        tally.failures += u64::from(failed);
        tally.busy += took;
        tally.window.record(now, span, failed);
        if track == Track::Stable {
            return None;
        }
        counts.since_step.0 += 1;
        counts.since_step.1 += u64::from(failed);
        self.verdict(&mut counts, now)
    }

    /// Why the new version must go: its failure rate over the window, or
    /// since the share last stepped, passed the threshold.
    fn verdict(&self, counts: &mut Counts, now: Instant) -> Option<String> {
        let (calls, failures) = counts.canary.window.totals(now, self.plan.window);
        let within = humantime::format_duration(self.plan.window).to_string();
        let (since_calls, since_failures) = counts.since_step;
        self.unhealthy(calls, failures, &format!("within {within}"))
            .or_else(|| {
                let since = match self.plan.step {
                    Some(_) => "since its share last stepped",
                    None => "since it started",
                };
                self.unhealthy(since_calls, since_failures, since)
            })
    }

    /// Why the new version must go, judging `failures` of `calls` counted
    /// `over` (a phrase for the reason).
    fn unhealthy(&self, calls: u64, failures: u64, over: &str) -> Option<String> {
        if calls < u64::from(self.plan.min_calls) || failures == 0 {
            return None;
        }
        let rate = failures as f64 * 100.0 / calls as f64;
        (rate > self.plan.max_error_rate).then(|| {
            format!(
                "{failures} of its last {calls} calls failed ({rate:.1} %, more than {} % {over})",
                self.plan.max_error_rate,
            )
        })
    }

    /// The share after the next step, if the new version has earned it: at
    /// least `min_calls` calls since the last step, and healthy both over
    /// the window and since the last step.
    fn next_step(&self) -> Option<u32> {
        let (step, _) = self.plan.step?;
        let mut counts = self.counts();
        if counts.since_step.0 < u64::from(self.plan.min_calls)
            || self.verdict(&mut counts, Instant::now()).is_some()
        {
            return None;
        }
        counts.since_step = (0, 0);
        let share = self.share.load(Ordering::Acquire);
        Some((share + basis_points(step)).min(WHOLE))
    }

    /// The rollout's status now, as `state`.
    pub(crate) fn status(
        &self,
        plugin: &str,
        state: RolloutState,
        reason: Option<String>,
    ) -> RolloutStatus {
        let now = Instant::now();
        let span = self.plan.window;
        let mut counts = self.counts();
        let track = |tally: &mut Tally, (version, digest): (String, String)| {
            let (window_calls, window_failures) = tally.window.totals(now, span);
            TrackStats {
                version,
                digest,
                calls: tally.calls,
                failures: tally.failures,
                window_calls,
                window_failures,
                mean_duration_ms: match tally.calls {
                    0 => 0.0,
                    calls => tally.busy.as_secs_f64() * 1_000.0 / calls as f64,
                },
            }
        };
        let stable = track(&mut counts.stable, self.stable.clone());
        let canary = track(
            &mut counts.canary,
            (
                self.canary.details.info.version.clone(),
                self.canary.details.digest.clone(),
            ),
        );
        RolloutStatus {
            plugin: plugin.to_owned(),
            state,
            share: f64::from(self.share.load(Ordering::Acquire)) / 100.0,
            stable,
            canary,
            reason,
            started_at: self.started_at,
            path: self.plan.path.clone(),
            step: self.plan.step.map(|(step, _)| step),
            every: self
                .plan
                .step
                .map(|(_, every)| humantime::format_duration(every).to_string()),
            max_error_rate: self.plan.max_error_rate,
            window: humantime::format_duration(span).to_string(),
            min_calls: self.plan.min_calls,
            sticky: self.plan.sticky.clone(),
        }
    }
}

/// Whether the `n`-th call (from 0) goes to the new version at `share`
/// basis points: when it moves the new version's count of the first calls
/// to the next whole number, so the split is exact at every point, not on
/// average.
fn by_count(n: u64, share: u64) -> bool {
    (n + 1) * share / u64::from(WHOLE) > n * share / u64::from(WHOLE)
}

/// Whether a caller whose sticky key has `value` goes to the new version at
/// `share` basis points. A fixed hash: every host of a deployment, and every
/// restart, puts a caller on the same side, and a caller on the new version
/// stays there as the share grows.
fn by_key(value: &[u8], share: u64) -> bool {
    fnv1a(value) % u64::from(WHOLE) < share
}

/// 64-bit FNV-1a: small, fixed, and the same on every host.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Host {
    /// Starts rolling a new version of `plugin` out: it is loaded from
    /// `plan.path` with the plugin's grants, limits and config, then takes
    /// `plan.share` percent of the plugin's calls (events still go to the
    /// current version). See [`RolloutPlan`] for stepping and rollback.
    pub async fn start_rollout(
        &self,
        plugin: &str,
        plan: RolloutPlan,
    ) -> Result<RolloutStatus, RolloutError> {
        plan.validate().map_err(|message| RolloutError::Invalid {
            plugin: plugin.to_owned(),
            message,
        })?;
        let _changing = self.inner.changing.lock().await;
        if self.inner.stopped.load(Ordering::Acquire) {
            return Err(RolloutError::Stopping);
        }
        let slot = self
            .slot(plugin)
            .ok_or_else(|| RolloutError::UnknownPlugin(plugin.to_owned()))?;
        if slot.rollout().is_some() {
            return Err(RolloutError::InProgress(plugin.to_owned()));
        }
        self.pool_holds_another(&slot)?;
        let mut spec = slot.spec().clone();
        spec.source = PluginSource::Path(plan.path.clone());
        spec.signature = plan.signature.clone().map(PluginSource::Path);
        let canary = self
            .inner
            .loader
            .load(spec.clone(), |details| self.requirements_met(details))
            .await?;
        self.keeps_dependents(&canary)?;
        // A shutdown that began during the load drains only the versions it
        // saw: the new one must not start taking calls after it.
        if self.inner.stopped.load(Ordering::Acquire) {
            canary.retire(Instant::now() + SHUTDOWN_DEADLINE).await;
            return Err(RolloutError::Stopping);
        }
        let stable = slot.current();
        let rollout = Arc::new(Rollout::new(canary, spec, plan, &stable));
        slot.set_rollout(Some(Arc::clone(&rollout)));
        let status = rollout.status(plugin, RolloutState::Running, None);
        tracing::info!(
            plugin,
            from = %status.stable.digest,
            to = %status.canary.digest,
            version = %log_field(&status.canary.version),
            share = status.share,
            "rollout started"
        );
        if rollout.plan.step.is_some() {
            tokio::spawn(step_loop(
                Arc::downgrade(&self.inner),
                Arc::downgrade(&slot),
                Arc::downgrade(&rollout),
            ));
        }
        self.plugins_changed();
        Ok(status)
    }

    /// The rollout of `plugin` running now, or else the last one and how
    /// it ended; `None` when it never had one (or it is not loaded).
    pub fn rollout(&self, plugin: &str) -> Option<RolloutStatus> {
        let slot = self.slot(plugin)?;
        match slot.rollout() {
            Some(rollout) => Some(rollout.status(plugin, RolloutState::Running, None)),
            None => slot.last_rollout(),
        }
    }

    /// Makes the new version of `plugin`'s rollout the plugin's only
    /// version: calls in flight on the old one finish, its idle instances
    /// shut down. The policy file still names the old path: an apply or a
    /// restart brings back what it names, so update it too.
    pub async fn promote_rollout(&self, plugin: &str) -> Result<RolloutStatus, RolloutError> {
        let _changing = self.inner.changing.lock().await;
        let (slot, rollout) = self.running_rollout(plugin)?;
        self.promote_now(&slot, &rollout, "promoted")
    }

    /// Ends `plugin`'s rollout: the old version serves alone again.
    pub async fn abort_rollout(&self, plugin: &str) -> Result<RolloutStatus, RolloutError> {
        let _changing = self.inner.changing.lock().await;
        let (slot, rollout) = self.running_rollout(plugin)?;
        // A call may have rolled it back just now (that takes no lock).
        self.end_rollout(&slot, &rollout, RolloutState::Aborted, "aborted".into())
            .ok_or_else(|| RolloutError::NotRunning(plugin.to_owned()))
    }

    /// `plugin`'s slot and the rollout running in it.
    fn running_rollout(&self, plugin: &str) -> Result<(Arc<Slot>, Arc<Rollout>), RolloutError> {
        let slot = self
            .slot(plugin)
            .ok_or_else(|| RolloutError::UnknownPlugin(plugin.to_owned()))?;
        let rollout = slot
            .rollout()
            .ok_or_else(|| RolloutError::NotRunning(plugin.to_owned()))?;
        Ok((slot, rollout))
    }

    /// Swaps the new version in; the caller holds `changing`.
    fn promote_now(
        &self,
        slot: &Slot,
        rollout: &Arc<Rollout>,
        reason: &str,
    ) -> Result<RolloutStatus, RolloutError> {
        // Plugins loaded since the rollout started may need what the old
        // version provides: checked again, and the rollout goes on if so.
        if let Err(err) = self.keeps_dependents_without_retiring(&rollout.canary) {
            return Err(RolloutError::Load(err));
        }
        if !slot.take_rollout(rollout) {
            return Err(RolloutError::NotRunning(slot.name.to_string()));
        }
        rollout.ended.notify_one();
        rollout.share.store(WHOLE, Ordering::Release);
        let status = rollout.status(&slot.name, RolloutState::Promoted, Some(reason.to_owned()));
        let old = slot.swap_version(Arc::clone(&rollout.canary), rollout.spec.clone());
        self.inner
            .dispatch
            .metrics
            .rollout_ended(&slot.name, RolloutState::Promoted);
        tracing::info!(
            plugin = %slot.name,
            from = %old.details.digest,
            to = %rollout.canary.details.digest,
            "rollout promoted"
        );
        let until = Instant::now() + SHUTDOWN_DEADLINE;
        tokio::spawn(async move { old.retire(until).await });
        slot.set_last_rollout(status.clone());
        self.plugins_changed();
        Ok(status)
    }

    /// Ends `rollout` without promoting it: the new version takes no more
    /// calls and retires. `None` when it had ended already.
    pub(crate) fn end_rollout(
        &self,
        slot: &Slot,
        rollout: &Arc<Rollout>,
        state: RolloutState,
        reason: String,
    ) -> Option<RolloutStatus> {
        let status = self.finish_rollout(slot, rollout, state, reason)?;
        let canary = Arc::clone(&rollout.canary);
        let until = Instant::now() + SHUTDOWN_DEADLINE;
        tokio::spawn(async move { canary.retire(until).await });
        Some(status)
    }

    /// Takes `rollout` out of `slot` (if it is still the one running) and
    /// records how it ended, leaving its new version's retirement to the
    /// caller. `None` when it had ended already.
    pub(crate) fn finish_rollout(
        &self,
        slot: &Slot,
        rollout: &Arc<Rollout>,
        state: RolloutState,
        reason: String,
    ) -> Option<RolloutStatus> {
        if !slot.take_rollout(rollout) {
            return None;
        }
        rollout.ended.notify_one();
        if state != RolloutState::RolledBack {
            tracing::info!(plugin = %slot.name, state = state.as_str(), reason = %reason, "rollout ended");
        }
        let status = rollout.status(&slot.name, state, Some(reason));
        self.inner.dispatch.metrics.rollout_ended(&slot.name, state);
        slot.set_last_rollout(status.clone());
        self.plugins_changed();
        Some(status)
    }

    /// Rolls `rollout` back for `reason` (its failure rate), from the call
    /// that passed the threshold; the audit log says so.
    pub(crate) fn roll_back(&self, slot: &Slot, rollout: &Arc<Rollout>, reason: String) {
        if self
            .end_rollout(slot, rollout, RolloutState::RolledBack, reason.clone())
            .is_some()
        {
            tracing::warn!(
                plugin = %slot.name,
                version = %log_field(&rollout.canary.details.info.version),
                reason = %reason,
                "rollout rolled back"
            );
            self.inner
                .audit
                .action("rollout", "rollback", &slot.name, &reason);
        }
    }

    /// Whether the instance pool holds every plugin at its `max_instances`
    /// (plus one each for a reload), every new version already rolling out,
    /// and `slot`'s new version at the plugin's `max_instances`.
    fn pool_holds_another(&self, slot: &Slot) -> Result<(), RolloutError> {
        let Some(pool) = self.inner.loader.pool() else {
            return Ok(());
        };
        let slots = self.slots();
        let versions: Vec<Arc<LoadedPlugin>> = slots
            .iter()
            .flat_map(|s| {
                [
                    Some(s.current()),
                    s.rollout().map(|r| Arc::clone(&r.canary)),
                ]
            })
            .flatten()
            .chain([slot.current()])
            .collect();
        crate::policy::validate::plugins_fit_pool(
            versions.iter().map(|v| (&*v.details.name, v.limits())),
            Some(pool),
        )
        .map_err(|err| RolloutError::PoolTooSmall {
            plugin: slot.name.to_string(),
            message: format!(
                "the instance pool cannot hold a second version next to every plugin: {}",
                err.message
            ),
        })
    }
}

impl Host {
    /// Whether the instance pool holds `policy`'s plugins next to the new
    /// versions of the rollouts that go on through its apply (those of the
    /// plugins it leaves as they are; one it reloads or removes ends its
    /// rollout): an apply that would leave no room refuses, rather than let
    /// calls fail on a full pool.
    pub(crate) async fn rollouts_fit(&self, policy: &Policy) -> Result<(), String> {
        let Some(pool) = self.inner.loader.pool() else {
            return Ok(());
        };
        let mut canaries: Vec<Arc<LoadedPlugin>> = Vec::new();
        for slot in self.slots() {
            let Some(rollout) = slot.rollout() else {
                continue;
            };
            let Some(spec) = PluginSpec::from_policy(policy, &slot.name) else {
                continue;
            };
            if spec == *slot.spec()
                && super::apply::file_unchanged(&spec, &slot.current().details.digest).await
            {
                canaries.push(Arc::clone(&rollout.canary));
            }
        }
        if canaries.is_empty() {
            return Ok(());
        }
        crate::policy::validate::plugins_fit_pool(
            policy
                .plugins
                .iter()
                .map(|(name, plugin)| (name.as_str(), &plugin.limits))
                .chain(canaries.iter().map(|c| (&*c.details.name, c.limits()))),
            Some(pool),
        )
        .map_err(|err| {
            let names: Vec<&str> = canaries.iter().map(|c| &*c.details.name).collect();
            format!(
                "the rollouts of {} still need room in the instance pool: {} \
                 (or promote or abort them first)",
                names.join(", "),
                err.message
            )
        })
    }
}

/// Steps a rollout's share up every `every` while it is healthy, and
/// promotes it at 100 %. Ends with the rollout (or the plugin, or the host).
async fn step_loop(host: Weak<HostInner>, slot: Weak<Slot>, rollout: Weak<Rollout>) {
    let Some((every, ended)) = rollout
        .upgrade()
        .and_then(|r| r.plan.step.map(|(_, every)| (every, Arc::clone(&r.ended))))
    else {
        return;
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = ended.notified() => return,
        }
        let (Some(inner), Some(slot), Some(rollout)) =
            (host.upgrade(), slot.upgrade(), rollout.upgrade())
        else {
            return;
        };
        let host = Host { inner };
        if host.inner.stopped.load(Ordering::Acquire)
            || !slot
                .rollout()
                .is_some_and(|now| Arc::ptr_eq(&now, &rollout))
        {
            return;
        }
        let Some(share) = rollout.next_step() else {
            continue;
        };
        if share < WHOLE {
            rollout.share.store(share, Ordering::Release);
            // A call may have rolled it back meanwhile (that takes no
            // lock): the share it leaves behind is then never read, and the
            // audit log must not show a step after the rollback.
            if !slot
                .rollout()
                .is_some_and(|now| Arc::ptr_eq(&now, &rollout))
            {
                return;
            }
            let percent = f64::from(share) / 100.0;
            tracing::info!(plugin = %slot.name, share = percent, "rollout stepped up");
            host.inner
                .audit
                .action("rollout", "step", &slot.name, &format!("{percent} %"));
            continue;
        }
        let _changing = host.inner.changing.lock().await;
        if !slot
            .rollout()
            .is_some_and(|now| Arc::ptr_eq(&now, &rollout))
        {
            return;
        }
        match host.promote_now(&slot, &rollout, "stepped up to 100 % while healthy") {
            Ok(_) => {
                host.inner
                    .audit
                    .action("rollout", "promote", &slot.name, "ok");
                return;
            }
            Err(err) => {
                tracing::warn!(plugin = %slot.name, error = %log_field(&err.to_string()), "rollout not promoted; it goes on");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_read_from_json_and_checked() {
        let plan = RolloutPlan::from_json(
            br#"{"path":"v2.wasm","share":10,"step":45,"every":"30s","window":"2m","sticky":"user"}"#,
        )
        .unwrap();
        assert_eq!(plan.share, 10.0);
        assert_eq!(plan.step, Some((45.0, Duration::from_secs(30))));
        assert_eq!(plan.window, Duration::from_secs(120));
        assert_eq!(plan.min_calls, 10);
        assert_eq!(plan.sticky.as_deref(), Some("user"));
        for (body, says) in [
            (r#"{"path":"v2.wasm","share":0}"#, "`share`"),
            (
                r#"{"path":"v2.wasm","share":100}"#,
                "a whole switch is a reload",
            ),
            (r#"{"path":"v2.wasm","share":"NaN"}"#, "the plan"),
            (r#"{"path":"v2.wasm","share":10,"step":5}"#, "go together"),
            (
                r#"{"path":"v2.wasm","share":10,"step":5,"every":"1ms"}"#,
                "`every`",
            ),
            (
                r#"{"path":"v2.wasm","share":10,"window":"soon"}"#,
                "`window`",
            ),
            (
                r#"{"path":"v2.wasm","share":10,"max_error_rate":100}"#,
                "`max_error_rate`",
            ),
            (
                r#"{"path":"v2.wasm","share":10,"min_calls":0}"#,
                "`min_calls`",
            ),
            (r#"{"path":"v2.wasm","share":10,"sticky":""}"#, "`sticky`"),
            (r#"{"path":"","share":10}"#, "`path`"),
            (
                r#"{"path":"v2.wasm","share":10,"shares":1}"#,
                "unknown field",
            ),
        ] {
            let err = RolloutPlan::from_json(body.as_bytes()).unwrap_err();
            assert!(err.contains(says), "{body}: {err}");
        }
    }

    #[test]
    fn only_outcomes_of_the_version_are_judged() {
        let failed = |failure: CallFailure| judged(Err(&failure));
        assert_eq!(judged(Ok(())), Some(false));
        assert_eq!(
            failed(CallFailure::Trap {
                trap: "unreachable".into(),
                detail: None
            }),
            Some(true)
        );
        assert_eq!(failed(CallFailure::OutOfFuel { limit: 1 }), Some(true));
        assert_eq!(failed(CallFailure::Host("gone".into())), Some(true));
        assert_eq!(
            failed(CallFailure::Plugin(PluginError::Failed("broken".into()))),
            Some(true)
        );
        // The caller's doing, or not the version's.
        for failure in [
            CallFailure::Plugin(PluginError::InvalidInput("bad".into())),
            CallFailure::Plugin(PluginError::Unsupported("op".into())),
            CallFailure::Plugin(PluginError::Denied("no".into())),
            CallFailure::QuotaExceeded("kv".into()),
            CallFailure::Paused,
            CallFailure::Busy {
                max_instances: 1,
                queued: 0,
            },
        ] {
            assert_eq!(failed(failure), None);
        }
    }

    #[test]
    fn the_window_forgets_what_is_older_than_it() {
        let span = Duration::from_secs(10);
        let start = Instant::now();
        let mut window = Window::default();
        for _ in 0..5 {
            window.record(start, span, true);
        }
        window.record(start + Duration::from_secs(5), span, false);
        assert_eq!(window.totals(start + Duration::from_secs(6), span), (6, 5));
        // The first five are older than the window now; the sixth is not.
        assert_eq!(window.totals(start + Duration::from_secs(11), span), (1, 0));
        assert_eq!(window.totals(start + Duration::from_secs(30), span), (0, 0));
    }

    #[test]
    fn a_count_split_is_exact_and_a_sticky_one_keeps_callers() {
        let split = |share: u64, calls: u64| (0..calls).filter(|&n| by_count(n, share)).count();
        assert_eq!(split(1_000, 100), 10);
        assert_eq!(split(2_500, 10), 2);
        assert_eq!(split(1, 10_000), 1);
        // A caller on the new version at 10 % stays there at 50 %.
        let users: Vec<String> = (0..1_000).map(|i| format!("user-{i}")).collect();
        let at_10: Vec<&String> = users
            .iter()
            .filter(|u| by_key(u.as_bytes(), 1_000))
            .collect();
        assert!((60..=140).contains(&at_10.len()), "{}", at_10.len());
        assert!(at_10.iter().all(|u| by_key(u.as_bytes(), 5_000)));
    }

    #[test]
    fn basis_points_round_and_refuse_nonsense() {
        assert_eq!(basis_points(10.0), 1_000);
        assert_eq!(basis_points(0.014), 1);
        assert_eq!(basis_points(f64::NAN), 0);
        assert_eq!(basis_points(-3.0), 0);
        assert_eq!(basis_points(250.0), WHOLE);
    }
}
