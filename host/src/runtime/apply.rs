//! Applying an edited policy to a running host (`POST /v1/policy/apply`,
//! SIGHUP): the whole policy is validated first (by whoever parsed it),
//! then only the difference is applied, plugin by plugin.
//!
//! - A plugin new in the policy is loaded; one no longer in it is unloaded
//!   (calls in flight finish, its idle instances run `shutdown`).
//! - A plugin whose spec changed (path, signature file, grants, limits,
//!   config, `validate_input`) or whose file now holds other bytes becomes a new
//!   generation: verified and compiled first, then swapped in; calls in
//!   flight finish on the old one, and no instance of the old one takes a
//!   call after the swap, so revoked grants are gone for the next call.
//! - Pipelines and capability pins are replaced by the policy's: a pin to a
//!   plugin this apply loads is set once it loaded; a pin the policy drops
//!   goes before the plugins are unloaded; a pipeline whose stages are not
//!   all loaded keeps its old definition.
//! - A plugin removed from the policy that a staying plugin still requires
//!   is kept, and reported.
//!
//! Each plugin's change is atomic: one that fails (a bad signature, a
//! failing `init`, a dependent it would break) leaves that plugin as it
//! was, and is reported; the others are applied. The apply holds the host's
//! change lock throughout, so reloads (`--watch`, the reload route) and
//! loads from elsewhere wait for it. The `[host]` section
//! (trusted keys, pool, backend, default limits, events, directories)
//! cannot change under a running host: a policy that changes it is refused
//! as a whole, with the sections named, and nothing changes. The API keys
//! (`[[host.api_keys]]`) are the exception: they are replaced first, so a
//! revoked key stops working before any plugin changes.

use std::sync::Arc;

use serde::Serialize;

use super::health::NotLoaded;
use super::{Host, Pipeline, PluginSpec, policy_load_order};
use crate::error::{LoadError, LoadFailure};
use crate::policy::{HostPolicy, Policy};

/// What applying a policy changed, plugin by plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicyChanges {
    /// Plugins new in the policy, now loaded.
    pub loaded: Vec<String>,
    /// Plugins whose spec or file changed, now serving a new generation.
    pub reloaded: Vec<String>,
    /// Plugins no longer in the policy, now unloaded.
    pub unloaded: Vec<String>,
    /// Plugins left as they were.
    pub unchanged: Vec<String>,
    /// Pipelines defined or redefined, and removed.
    pub pipelines: Vec<String>,
    /// Capabilities whose pin was set, changed or dropped.
    pub pins: Vec<String>,
    /// API keys added, changed or removed (by name): in force before any
    /// plugin changed.
    pub api_keys: Vec<String>,
    /// Plugins (and pipelines) whose change failed: each is left as it was
    /// (a new one is not added).
    pub failed: Vec<FailedChange>,
}

/// One plugin's change that did not happen, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedChange {
    /// The plugin or pipeline.
    pub name: String,
    /// The failure's stable kind (`bad_signature`, `init_failed`, …).
    pub kind: String,
    /// What went wrong.
    pub message: String,
}

impl From<LoadError> for FailedChange {
    fn from(err: LoadError) -> FailedChange {
        FailedChange {
            kind: err.kind().as_str().to_owned(),
            message: err.cause.to_string(),
            name: err.plugin,
        }
    }
}

/// Why a policy was not applied at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The host was not started from a policy: there is nothing to compare
    /// the new one with.
    #[error("this host was not started from a policy; load one with `load_policy` first")]
    NoPolicy,
    /// The host is stopping.
    #[error("the host is stopping")]
    Stopping,
    /// The apply itself failed (its task ended abnormally).
    #[error("the apply failed: {0}")]
    Failed(String),
    /// Settings only a restart can change differ.
    #[error(
        "the policy changes {}, which only a restart applies; nothing was changed",
        .0.join(", ")
    )]
    NeedsRestart(Vec<&'static str>),
    /// The instance pool would not hold the new policy's plugins next to
    /// the new versions of rollouts still running.
    #[error("{0}; nothing was changed")]
    RolloutsNeedRoom(String),
}

impl Host {
    /// Applies `policy` (already parsed and validated) to this running
    /// host: loads, reloads and unloads plugins so that they are the
    /// policy's, and replaces pipelines and capability pins. One change of
    /// the plugin table runs at a time (loads and reloads from elsewhere
    /// wait). See the module documentation for what is atomic.
    pub async fn apply_policy(&self, policy: &Policy) -> Result<PolicyChanges, ApplyError> {
        let _changing = self.inner.changing.lock().await;
        if self
            .inner
            .stopped
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(ApplyError::Stopping);
        }
        let differs = {
            let applied = self.applied_host();
            let applied = applied.as_ref().ok_or(ApplyError::NoPolicy)?;
            host_sections_changed(applied, &policy.host)
        };
        if !differs.is_empty() {
            return Err(ApplyError::NeedsRestart(differs));
        }
        self.rollouts_fit(policy)
            .await
            .map_err(ApplyError::RolloutsNeedRoom)?;
        // Keys first: a revoked key stops working before the (slow) plugin
        // changes, whatever becomes of them.
        let mut changes = PolicyChanges {
            api_keys: self.remember_host_policy(&policy.host),
            ..PolicyChanges::default()
        };
        // Pins to plugins already loaded first: requirements of the loads
        // resolve as calls will. A pin to a plugin this apply loads is set
        // once it has loaded (a failed load keeps the old pin).
        for (capability, plugin) in &policy.capabilities {
            if self.slot(plugin).is_some() {
                self.repin(capability, plugin, &mut changes);
            }
        }
        let (order, cycles) = policy_load_order(policy).await;
        for (name, cycle) in cycles {
            let failure = LoadError::new(name, LoadFailure::DependencyCycle(cycle));
            changes.failed.push(failure.into());
        }
        for name in &order {
            let spec =
                PluginSpec::from_policy(policy, name).expect("every plugin of a policy has a spec");
            let changed = match self.slot(name) {
                None => self.load_now(spec).await.map(|_| &mut changes.loaded),
                Some(slot) => {
                    let same_spec = *slot.spec() == spec;
                    if same_spec && file_unchanged(&spec, &slot.current().details.digest).await {
                        changes.unchanged.push(name.clone());
                        continue;
                    }
                    self.replace(spec, false)
                        .await
                        .map(|_| &mut changes.reloaded)
                }
            };
            match changed {
                Ok(list) => {
                    list.push(name.clone());
                    for (capability, _) in policy.capabilities.iter().filter(|(_, p)| *p == name) {
                        self.repin(capability, name, &mut changes);
                    }
                }
                Err(err) => changes.failed.push(err.into()),
            }
        }
        // Pins the policy dropped go before the plugins they named.
        self.unpin_all_but(policy, &mut changes);
        for slot in self.slots() {
            if policy.plugins.contains_key(&*slot.name) {
                continue;
            }
            // A plugin still required by one that stays is kept.
            let broken = self.removal_breaks(&slot.name);
            if !broken.is_empty() {
                changes.failed.push(FailedChange {
                    name: slot.name.to_string(),
                    kind: crate::error::ErrorKind::MissingDependency
                        .as_str()
                        .to_owned(),
                    message: format!("kept: removing it would break {}", broken.join("; ")),
                });
                continue;
            }
            if self.unload_now(&slot.name).await {
                changes.unloaded.push(slot.name.to_string());
            }
        }
        self.replace_pipelines(policy, &mut changes);
        self.set_not_loaded(
            changes
                .failed
                .iter()
                // A failed reload keeps the old version serving: loaded.
                .filter(|failed| {
                    policy.plugins.contains_key(&failed.name) && self.slot(&failed.name).is_none()
                })
                .map(|failed| NotLoaded::new(&failed.name, &failed.kind, &failed.message))
                .collect(),
        );
        tracing::info!(
            loaded = ?changes.loaded,
            reloaded = ?changes.reloaded,
            unloaded = ?changes.unloaded,
            pipelines = ?changes.pipelines,
            pins = ?changes.pins,
            api_keys = ?changes.api_keys,
            failed = changes.failed.len(),
            "policy applied"
        );
        Ok(changes)
    }

    /// Pins `capability` to `plugin`, noting it when that changes the pin.
    fn repin(&self, capability: &str, plugin: &str, changes: &mut PolicyChanges) {
        let mut pins = self
            .inner
            .registry
            .pins
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if pins.get(capability).map(String::as_str) != Some(plugin) {
            pins.insert(capability.to_owned(), plugin.to_owned());
            changes.pins.push(capability.to_owned());
        }
    }

    /// What removing `name` would break among the plugins that stay.
    fn removal_breaks(&self, name: &str) -> Vec<String> {
        let current: Vec<_> = self.slots().iter().map(|slot| slot.current()).collect();
        let before: Vec<_> = current
            .iter()
            .map(|p| super::provider(&p.details))
            .collect();
        let after: Vec<_> = current
            .iter()
            .filter(|p| &*p.name != name)
            .map(|p| super::provider(&p.details))
            .collect();
        let dependents = current
            .iter()
            .filter_map(|p| Some((p.details.name.as_str(), p.details.manifest.as_deref()?)));
        super::dependencies::broken_by_replacing(name, dependents, &before, &after, &self.pins())
    }

    /// Remembers the `[host]` section the host was built from (or an apply
    /// brought), for applies to compare with, and puts its API keys in
    /// force; the names of the keys that changed.
    pub(super) fn remember_host_policy(&self, host: &HostPolicy) -> Vec<String> {
        let changed = self.set_api_keys(&host.api_keys);
        *self
            .inner
            .applied_host
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(host.clone());
        changed
    }

    /// Makes `keys` the API keys in force; the names of those that changed.
    fn set_api_keys(&self, keys: &[crate::access::ApiKey]) -> Vec<String> {
        let before = self.inner.access.load_full();
        let after = Arc::new(before.rotated(keys));
        let changed = after.changed_from(&before);
        self.inner.access.store(after);
        changed
    }

    /// The host's audit log: administrative actions and refusals.
    pub fn audit(&self) -> &crate::audit::AuditLog {
        &self.inner.audit
    }

    /// The API keys in force (empty: the HTTP API is open to calls and
    /// reads, see [`crate::access`]).
    pub fn access(&self) -> Arc<crate::access::AccessTable> {
        self.inner.access.load_full()
    }

    fn applied_host(&self) -> Option<HostPolicy> {
        self.inner
            .applied_host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes the pipelines the policy's, noting those added, changed or
    /// removed; a new or changed one whose stages are not all loaded keeps
    /// its old definition (or is not added) and is reported as failed.
    fn replace_pipelines(&self, policy: &Policy, changes: &mut PolicyChanges) {
        let wanted: Vec<Pipeline> = policy
            .pipelines
            .iter()
            .map(|(name, pipeline)| Pipeline {
                name: name.clone(),
                stages: pipeline.stages.clone(),
                transaction: pipeline.transaction,
            })
            .collect();
        let mut pipelines = self
            .inner
            .registry
            .pipelines
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let mut touched: Vec<String> = pipelines
            .keys()
            .filter(|name| !policy.pipelines.contains_key(*name))
            .cloned()
            .collect();
        pipelines.retain(|name, _| policy.pipelines.contains_key(name));
        for pipeline in wanted {
            if pipelines.get(&pipeline.name) == Some(&pipeline) {
                continue;
            }
            let missing: Vec<&String> = pipeline
                .stages
                .iter()
                .filter(|stage| self.slot(stage).is_none())
                .collect();
            if !missing.is_empty() {
                changes.failed.push(FailedChange {
                    name: pipeline.name.clone(),
                    kind: crate::error::ErrorKind::MissingDependency
                        .as_str()
                        .to_owned(),
                    message: format!(
                        "pipeline kept as it was: stage(s) {missing:?} are not loaded"
                    ),
                });
                continue;
            }
            touched.push(pipeline.name.clone());
            pipelines.insert(pipeline.name.clone(), pipeline);
        }
        touched.sort();
        changes.pipelines = touched;
    }

    /// Drops capability pins the policy no longer has.
    fn unpin_all_but(&self, policy: &Policy, changes: &mut PolicyChanges) {
        self.inner
            .registry
            .pins
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|capability, _| {
                let kept = policy.capabilities.contains_key(capability);
                if !kept {
                    changes.pins.push(capability.clone());
                }
                kept
            });
    }
}

/// Whether the file `spec` names still holds the bytes with `digest` (a
/// file that cannot be read counts as changed: the reload says why). Read
/// on the blocking pool: a component may be hundreds of megabytes.
pub(super) async fn file_unchanged(spec: &PluginSpec, digest: &str) -> bool {
    let super::PluginSource::Path(path) = &spec.source else {
        return true;
    };
    let path = path.clone();
    let digest = digest.to_owned();
    tokio::task::spawn_blocking(move || {
        crate::input::read_file(&path, crate::input::MAX_COMPONENT_BYTES)
            .is_ok_and(|bytes| crate::artifact::sha256_hex(&bytes) == digest)
    })
    .await
    .unwrap_or(false)
}

/// The `[host]` settings that differ between `before` and `after`.
fn host_sections_changed(before: &HostPolicy, after: &HostPolicy) -> Vec<&'static str> {
    let mut changed = Vec::new();
    // The same keys in another order (or from other files) are the same
    // trust.
    let same_keys = before.trusted_keys.len() == after.trusted_keys.len()
        && before
            .trusted_keys
            .iter()
            .all(|(_, key)| after.trusted_keys.iter().any(|(_, other)| other == key));
    if !same_keys
        || before.allow_unsigned != after.allow_unsigned
        || before.allow_partial_signatures != after.allow_partial_signatures
    {
        changed.push("host trust (trusted_keys, allow_unsigned, allow_partial_signatures)");
    }
    if before.cache_dir != after.cache_dir || before.cache_key != after.cache_key {
        changed.push("host.cache_dir / host.cache_key");
    }
    if before.data_dir != after.data_dir {
        changed.push("host.data_dir");
    }
    if before.default_limits != after.default_limits {
        changed.push("[host.limits]");
    }
    if before.bus != after.bus {
        changed.push("[host.events]");
    }
    if before.engine != after.engine {
        changed.push("[host.pool]");
    }
    if before.backend != after.backend {
        changed.push("[host.backend]");
    }
    if before.audit != after.audit {
        changed.push("[host.audit]");
    }
    if before.telemetry != after.telemetry {
        changed.push("[host.telemetry]");
    }
    changed
}
