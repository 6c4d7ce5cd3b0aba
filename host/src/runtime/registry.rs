//! The registry of loaded plugins and their lifecycle: find by name or
//! capability, pause and resume, reload (verify and compile first, swap
//! atomically, keep the old version on failure), shutdown and unload.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use std::time::Duration;

use serde::Serialize;

use super::Host;
use super::breaker::CircuitBreaker;
use super::bus::DeliveryQueue;
use super::dependencies;
use super::history::HistorySnapshot;
use super::metrics::PluginMetrics;
use super::plugin::{LoadedPlugin, PluginDetails};
use super::rollout::{Rollout, RolloutState, RolloutStatus};
use super::spec::PluginSpec;
use crate::error::{LoadError, LoadFailure};
use crate::text::log_field;

/// Whether a plugin is serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// Serving calls.
    Active,
    /// Refusing calls with `paused` until resumed.
    Paused,
    /// Refusing calls with `circuit_open` after repeated failures.
    CircuitOpen,
}

/// A plugin's current version and state.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    /// The current version's facts (name, `describe` info, digest, signers,
    /// grants, limits).
    #[serde(flatten)]
    pub details: PluginDetails,
    /// Whether it is serving.
    pub state: PluginState,
    /// How many times it was reloaded successfully (0 for the first load).
    pub generation: u64,
    /// Live instances of the current version.
    pub live_instances: usize,
    /// Calls running on the current version now.
    pub calls_in_flight: usize,
    /// Events waiting for delivery to it: queued, being delivered, or parked
    /// for a retry. Zero means its part of the bus is quiet.
    pub queued_events: usize,
    /// A rollout of a new version running now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// A plugin name's place in the registry. It outlives reloads: the current
/// version changes, the name's state (paused, circuit, event queue) stays.
pub(crate) struct Slot {
    pub(crate) name: Arc<str>,
    /// Swapped atomically by a reload; read without a lock on every call.
    current: ArcSwap<LoadedPlugin>,
    /// What the current version was loaded from, to reload it.
    spec: Mutex<PluginSpec>,
    pub(crate) paused: AtomicBool,
    pub(crate) breaker: CircuitBreaker,
    generation: AtomicU64,
    /// Events waiting for delivery to this plugin (or parked for a retry),
    /// bounded by the bus's budgets; the delivery worker takes its
    /// receiving end.
    pub(crate) queue: DeliveryQueue,
    /// The plugin's call metrics.
    pub(crate) metrics: PluginMetrics,
    /// Its calls over the last hour, for the console.
    pub(crate) history: super::history::CallHistory,
    /// A new version taking a share of the calls (`rollout.rs`).
    rollout: ArcSwapOption<Rollout>,
    /// How the last rollout ended.
    last_rollout: Mutex<Option<RolloutStatus>>,
}

impl Slot {
    pub(crate) fn new(
        plugin: Arc<LoadedPlugin>,
        spec: PluginSpec,
        queue: DeliveryQueue,
        metrics: PluginMetrics,
    ) -> Slot {
        Slot {
            name: Arc::clone(&plugin.name),
            current: ArcSwap::new(plugin),
            spec: Mutex::new(spec),
            paused: AtomicBool::new(false),
            breaker: CircuitBreaker::default(),
            generation: AtomicU64::new(0),
            queue,
            metrics,
            history: super::history::CallHistory::default(),
            rollout: ArcSwapOption::empty(),
            last_rollout: Mutex::new(None),
        }
    }

    /// The rollout running now, if any.
    pub(crate) fn rollout(&self) -> Option<Arc<Rollout>> {
        self.rollout.load_full()
    }

    /// Starts a rollout (the caller checked there was none).
    pub(crate) fn set_rollout(&self, rollout: Option<Arc<Rollout>>) {
        self.rollout.store(rollout);
    }

    /// Ends `rollout` if it is still the one running; whether it was.
    pub(crate) fn take_rollout(&self, rollout: &Arc<Rollout>) -> bool {
        let previous = self.rollout.compare_and_swap(rollout, None);
        previous
            .as_ref()
            .is_some_and(|previous| Arc::ptr_eq(previous, rollout))
    }

    /// How the last rollout ended.
    pub(crate) fn last_rollout(&self) -> Option<RolloutStatus> {
        self.last_rollout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_last_rollout(&self, status: RolloutStatus) {
        *self.last_rollout.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }

    /// Makes `plugin` (loaded from `spec`) the version serving new calls, a
    /// generation on; returns the version it replaced, for the caller to
    /// retire.
    pub(crate) fn swap_version(
        &self,
        plugin: Arc<LoadedPlugin>,
        spec: PluginSpec,
    ) -> Arc<LoadedPlugin> {
        let old = self.current.swap(plugin);
        *self.spec.lock().unwrap_or_else(|p| p.into_inner()) = spec;
        // The new version has not failed yet: its calls are not refused for
        // what the old one did.
        self.breaker.reset();
        self.generation.fetch_add(1, Ordering::AcqRel);
        old
    }

    /// Every version serving calls now: the current one and a new one
    /// rolling out.
    pub(crate) fn versions(&self) -> Vec<Arc<LoadedPlugin>> {
        let rolling = self.rollout().map(|r| Arc::clone(&r.canary));
        std::iter::once(self.current()).chain(rolling).collect()
    }

    /// Whether a call may write chunks: the current version, or one rolling
    /// out, imports `capsule:plugin/response`.
    pub(crate) fn can_stream(&self) -> bool {
        self.current.load().can_stream
            || self
                .rollout
                .load()
                .as_ref()
                .is_some_and(|r| r.canary.can_stream)
    }

    /// What the current version was loaded from.
    pub(crate) fn spec(&self) -> std::sync::MutexGuard<'_, PluginSpec> {
        self.spec.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The version serving new calls.
    pub(crate) fn current(&self) -> Arc<LoadedPlugin> {
        self.current.load_full()
    }

    fn status(&self) -> PluginStatus {
        let current = self.current();
        let state = if self.paused.load(Ordering::Acquire) {
            PluginState::Paused
        } else if self.breaker.is_open() {
            PluginState::CircuitOpen
        } else {
            PluginState::Active
        };
        let rollout = self.rollout();
        let canary = rollout.as_ref().map(|r| &r.canary);
        PluginStatus {
            details: current.details.clone(),
            state,
            generation: self.generation.load(Ordering::Acquire),
            live_instances: current.live_instances() + canary.map_or(0, |c| c.live_instances()),
            calls_in_flight: current.calls_in_flight() + canary.map_or(0, |c| c.calls_in_flight()),
            queued_events: self.queue.len(),
            rollout: rollout.map(|r| r.status(&self.name, RolloutState::Running, None)),
        }
    }
}

/// The plugins by name and the pipelines over them.
#[derive(Default)]
pub(crate) struct Registry {
    /// The plugin table: read on every call without a lock, replaced whole
    /// (under `writer`) on the rare load and unload.
    pub(crate) plugins: ArcSwap<BTreeMap<String, Arc<Slot>>>,
    pub(crate) writer: Mutex<()>,
    pub(crate) pipelines: std::sync::RwLock<BTreeMap<String, super::Pipeline>>,
    /// Which plugin answers `call-capability` for a capability several
    /// plugins provide.
    pub(crate) pins: std::sync::RwLock<BTreeMap<String, String>>,
}

/// How long a retired version's idle instances get to run `shutdown`.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(2);

impl Host {
    /// Facts about every loaded plugin, by name.
    pub fn plugins(&self) -> Vec<PluginDetails> {
        self.slots()
            .iter()
            .map(|slot| slot.current().details.clone())
            .collect()
    }

    /// Facts about one loaded plugin.
    pub fn details(&self, plugin: &str) -> Option<PluginDetails> {
        self.slot(plugin).map(|slot| slot.current().details.clone())
    }

    /// Version, state and instances of one plugin.
    pub fn status(&self, plugin: &str) -> Option<PluginStatus> {
        self.slot(plugin).map(|slot| slot.status())
    }

    /// Version, state and instances of every plugin, by name.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        self.slots().iter().map(|slot| slot.status()).collect()
    }

    /// `plugin`'s calls over the last hour, window by window (`None` for a
    /// plugin this host has not loaded).
    pub fn history(&self, plugin: &str) -> Option<HistorySnapshot> {
        self.slot(plugin).map(|slot| slot.history.snapshot())
    }

    /// Makes `plugin` the one that answers calls to `capability` when
    /// several loaded plugins provide it (the policy's `[capabilities]`).
    pub fn pin_capability(&self, capability: &str, plugin: &str) {
        self.inner
            .registry
            .pins
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(capability.to_owned(), plugin.to_owned());
    }

    /// Every capability pin.
    pub(crate) fn pins(&self) -> dependencies::Pins {
        self.inner
            .registry
            .pins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The plugin pinned for `capability`, if any.
    pub(crate) fn pinned(&self, capability: &str) -> Option<String> {
        self.inner
            .registry
            .pins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(capability)
            .cloned()
    }

    /// Plugins whose `describe` lists `capability`.
    pub fn find_by_capability(&self, capability: &str) -> Vec<PluginDetails> {
        self.plugins()
            .into_iter()
            .filter(|details| details.info.capabilities.iter().any(|c| c == capability))
            .collect()
    }

    /// Stops a plugin from taking new calls (they fail with `paused`); calls
    /// already running finish. Returns whether the plugin exists.
    pub fn pause(&self, plugin: &str) -> bool {
        self.set_paused(plugin, true)
    }

    /// Lets a paused plugin take calls again. Returns whether it exists.
    pub fn resume(&self, plugin: &str) -> bool {
        self.set_paused(plugin, false)
    }

    fn set_paused(&self, plugin: &str, paused: bool) -> bool {
        match self.slot(plugin) {
            Some(slot) => {
                slot.paused.store(paused, Ordering::Release);
                self.plugins_changed();
                tracing::info!(plugin, paused, "plugin state changed");
                true
            }
            None => false,
        }
    }

    /// Reloads a plugin from where it was loaded (its file is read again).
    pub async fn reload(&self, plugin: &str) -> Result<PluginDetails, LoadError> {
        let _changing = self.inner.changing.lock().await;
        self.replace(self.loaded_spec(plugin)?, false).await
    }

    /// [`Host::reload`] even when the new version breaks the requirements of
    /// plugins that depend on this one (they keep running and fail their
    /// calls to it as they would any other).
    pub async fn force_reload(&self, plugin: &str) -> Result<PluginDetails, LoadError> {
        let _changing = self.inner.changing.lock().await;
        self.replace(self.loaded_spec(plugin)?, true).await
    }

    /// The file each loaded plugin was read from, by plugin name (plugins
    /// loaded from bytes have none): what `--watch` follows, including
    /// plugins a policy apply added.
    pub fn plugin_files(&self) -> Vec<(String, std::path::PathBuf)> {
        self.slots()
            .iter()
            .filter_map(|slot| match &slot.spec().source {
                super::PluginSource::Path(path) => Some((slot.name.to_string(), path.clone())),
                super::PluginSource::Bytes(_) => None,
            })
            .collect()
    }

    /// What `plugin` was loaded from.
    fn loaded_spec(&self, plugin: &str) -> Result<PluginSpec, LoadError> {
        let Some(slot) = self.slot(plugin) else {
            return Err(LoadError::new(
                plugin,
                LoadFailure::Config("no plugin with this name is loaded".into()),
            ));
        };
        Ok(slot.spec.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Replaces a loaded plugin with a new version. The new version is
    /// verified, compiled and initialised first; only then does it take new
    /// calls, atomically. Calls in flight finish on the old version. If the
    /// new version fails to load, the old one keeps serving and the error
    /// says why. The new version's own requirements must be met, and it must
    /// still satisfy every loaded plugin that requires it (else
    /// `missing_dependency` naming them; see [`Host::force_reload_with`]).
    pub async fn reload_with(&self, spec: PluginSpec) -> Result<PluginDetails, LoadError> {
        let _changing = self.inner.changing.lock().await;
        self.replace(spec, false).await
    }

    /// [`Host::reload_with`] even when the new version breaks plugins that
    /// require this one.
    pub async fn force_reload_with(&self, spec: PluginSpec) -> Result<PluginDetails, LoadError> {
        let _changing = self.inner.changing.lock().await;
        self.replace(spec, true).await
    }

    /// Replaces a plugin's version; the caller holds `changing`.
    pub(super) async fn replace(
        &self,
        spec: PluginSpec,
        force: bool,
    ) -> Result<PluginDetails, LoadError> {
        let name = spec.name().to_owned();
        let Some(slot) = self.slot(&name) else {
            return Err(LoadError::new(
                name,
                LoadFailure::Config("no plugin with this name is loaded".into()),
            ));
        };
        let loaded = self
            .inner
            .loader
            .load(spec.clone(), |details| self.requirements_met(details))
            .await;
        let loaded = loaded.and_then(|loaded| match force {
            true => Ok(loaded),
            false => self.keeps_dependents(&loaded).map(|()| loaded),
        });
        // A reload that changes the plugin's topics or order changes the
        // deployment's consumer when no events are in flight or waiting;
        // hosts still on the old grant notice and stop taking events.
        #[cfg(feature = "nats")]
        let loaded = match (loaded, &self.inner.shared_events) {
            (Ok(loaded), Some(shared)) => super::shared_bus::check_consumer(
                shared,
                &name,
                &loaded.grants.events,
                &self.inner.bus.options,
                crate::backend::events::Open::Reload,
            )
            .await
            .map(|()| loaded)
            .map_err(|failure| LoadError::new(name.clone(), failure)),
            (loaded, _) => loaded,
        };
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(err) => {
                self.inner.dispatch.metrics.reload(&name, false);
                tracing::warn!(
                    plugin = %name,
                    error = %log_field(&err.to_string()),
                    "reload failed; the old version keeps serving"
                );
                return Err(err);
            }
        };
        let details = loaded.details.clone();
        let old = slot.swap_version(loaded, spec);
        // A reload replaces every version: a rollout running ends with it.
        if let Some(rollout) = slot.rollout() {
            self.end_rollout(
                &slot,
                &rollout,
                RolloutState::Aborted,
                "replaced by a reload".into(),
            );
        }
        self.inner.dispatch.metrics.reload(&name, true);
        tracing::info!(
            plugin = %name,
            from = %old.details.digest,
            to = %details.digest,
            version = %log_field(&details.info.version),
            "reloaded"
        );
        // The old version's idle instances shut down now; busy ones end with
        // their calls.
        let until = std::time::Instant::now() + SHUTDOWN_DEADLINE;
        tokio::spawn(async move { old.retire(until).await });
        self.plugins_changed();
        Ok(details)
    }

    /// Removes a plugin: it takes no new calls, running calls finish, its
    /// idle instances run `shutdown`. Returns whether it was loaded.
    pub async fn unload(&self, plugin: &str) -> bool {
        let _changing = self.inner.changing.lock().await;
        self.unload_now(plugin).await
    }

    /// Unloads a plugin; the caller holds `changing`.
    pub(super) async fn unload_now(&self, plugin: &str) -> bool {
        let removed = self.update_plugins(|plugins| plugins.remove(plugin));
        match removed {
            Some(slot) => {
                self.plugins_changed();
                let until = std::time::Instant::now() + SHUTDOWN_DEADLINE;
                let versions = slot.versions();
                if let Some(rollout) = slot.rollout() {
                    self.finish_rollout(
                        &slot,
                        &rollout,
                        RolloutState::Aborted,
                        "the plugin was unloaded".into(),
                    );
                }
                for version in versions {
                    version.retire(until).await;
                }
                true
            }
            None => false,
        }
    }

    /// Orderly shutdown within one `deadline` for everything: every plugin
    /// stops taking calls, calls in flight get until the deadline to finish
    /// (all plugins at once), then every idle instance of every plugin runs
    /// `shutdown` at once, bounded by what is left of the same deadline.
    pub async fn shutdown(&self, deadline: Duration) {
        let until = std::time::Instant::now() + deadline;
        self.inner.stopped.store(true, Ordering::Release);
        // Refusals counted so far are written now, not lost.
        self.inner.audit.flush();
        // Other hosts stop listing this one; its serving workers unsubscribe
        // within a moment of `stopped`, so calls go to other hosts.
        #[cfg(feature = "nats")]
        self.withdraw(until).await;
        let slots = self.slots();
        for slot in &slots {
            slot.paused.store(true, Ordering::Release);
        }
        let mut draining = tokio::task::JoinSet::new();
        let versions: Vec<(Arc<str>, Arc<LoadedPlugin>)> = slots
            .iter()
            .flat_map(|slot| {
                slot.versions()
                    .into_iter()
                    .map(|version| (Arc::clone(&slot.name), version))
            })
            .collect();
        for (name, plugin) in &versions {
            let (name, plugin) = (Arc::clone(name), Arc::clone(plugin));
            draining.spawn(async move {
                if !plugin.drain(until).await {
                    tracing::warn!(plugin = %name, "calls were still running at the shutdown deadline");
                }
            });
        }
        while draining.join_next().await.is_some() {}
        let mut retiring = tokio::task::JoinSet::new();
        for (_, plugin) in versions {
            retiring.spawn(async move { plugin.retire(until).await });
        }
        while retiring.join_next().await.is_some() {}
        // The last spans go out before the process ends, within what is
        // left of the deadline (on the blocking pool: the exporter's final
        // send blocks).
        if let Some(tracing) = self.inner.loader.services.tracing.clone() {
            let wait = until
                .saturating_duration_since(std::time::Instant::now())
                .max(std::time::Duration::from_millis(100));
            let _ = tokio::task::spawn_blocking(move || tracing.shutdown(wait)).await;
        }
    }
}

impl Host {
    /// Whether every other loaded plugin's requirements still hold once
    /// `replacement` takes its name's place. A refused replacement is retired
    /// at once.
    pub(super) fn keeps_dependents(
        &self,
        replacement: &Arc<LoadedPlugin>,
    ) -> Result<(), LoadError> {
        let kept = self.keeps_dependents_without_retiring(replacement);
        if kept.is_err() {
            let until = std::time::Instant::now() + SHUTDOWN_DEADLINE;
            let refused = Arc::clone(replacement);
            tokio::spawn(async move { refused.retire(until).await });
        }
        kept
    }

    /// [`Host::keeps_dependents`] for a replacement that stays loaded
    /// whatever the answer (a version rolling out).
    pub(super) fn keeps_dependents_without_retiring(
        &self,
        replacement: &Arc<LoadedPlugin>,
    ) -> Result<(), LoadError> {
        let current: Vec<Arc<LoadedPlugin>> =
            self.slots().iter().map(|slot| slot.current()).collect();
        let before: Vec<dependencies::Provider<'_>> = current
            .iter()
            .map(|p| super::provider(&p.details))
            .collect();
        let after: Vec<dependencies::Provider<'_>> = current
            .iter()
            .filter(|p| p.name != replacement.name)
            .map(|p| super::provider(&p.details))
            .chain([super::provider(&replacement.details)])
            .collect();
        let dependents = current
            .iter()
            .filter_map(|p| Some((p.details.name.as_str(), p.details.manifest.as_deref()?)));
        let broken = dependencies::broken_by_replacing(
            &replacement.name,
            dependents,
            &before,
            &after,
            &self.pins(),
        );
        if broken.is_empty() {
            return Ok(());
        }
        Err(LoadError::new(
            replacement.name.to_string(),
            LoadFailure::MissingDependency(format!(
                "version {} would break what depends on it: {} (force the reload to replace it anyway)",
                replacement.details.info.version,
                broken.join("; ")
            )),
        ))
    }
}
