//! Applying an edited policy to a running host (`POST /v1/policy/apply`,
//! SIGHUP): the whole policy is validated first (by whoever parsed it),
//! then only the difference is applied, plugin by plugin.
//!
//! - A plugin new in the policy is loaded; one no longer in it is unloaded
//!   (calls in flight finish, its idle instances run `shutdown`).
//! - A plugin whose spec changed (path, signature, grants, limits, config,
//!   `validate_input`) or whose file now holds other bytes becomes a new
//!   generation: verified and compiled first, then swapped in; calls in
//!   flight finish on the old one, and no instance of the old one takes a
//!   call after the swap, so revoked grants are gone for the next call.
//! - Pipelines and capability pins are replaced by the policy's.
//!
//! Each plugin's change is atomic: one that fails (a bad signature, a
//! failing `init`, a dependent it would break) leaves that plugin as it
//! was, and is reported; the others are applied. The `[host]` section
//! (trusted keys, pool, backend, default limits, events, directories)
//! cannot change under a running host: a policy that changes it is refused
//! as a whole, with the sections named, and nothing changes.

use serde::Serialize;

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
    /// Plugins whose change failed: each is left as it was (a new one is
    /// not loaded).
    pub failed: Vec<FailedChange>,
}

/// One plugin's change that did not happen, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedChange {
    /// The plugin.
    pub plugin: String,
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
            plugin: err.plugin,
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
    /// Settings only a restart can change differ.
    #[error(
        "the policy changes {}, which only a restart applies; nothing was changed",
        .0.join(", ")
    )]
    NeedsRestart(Vec<&'static str>),
}

impl Host {
    /// Applies `policy` (already parsed and validated) to this running
    /// host: loads, reloads and unloads plugins so that they are the
    /// policy's, and replaces pipelines and capability pins. Applies run
    /// one at a time. See the module documentation for what is atomic.
    pub async fn apply_policy(&self, policy: &Policy) -> Result<PolicyChanges, ApplyError> {
        let _one_at_a_time = self.inner.applying.lock().await;
        let differs = {
            let applied = self.applied_host();
            let applied = applied.as_ref().ok_or(ApplyError::NoPolicy)?;
            host_sections_changed(applied, &policy.host)
        };
        if !differs.is_empty() {
            return Err(ApplyError::NeedsRestart(differs));
        }
        let mut changes = PolicyChanges::default();
        for (capability, plugin) in &policy.capabilities {
            self.pin_capability(capability, plugin);
        }
        let (order, cycles) = policy_load_order(policy).await;
        for (name, cycle) in cycles {
            let failure = LoadError::new(name, LoadFailure::DependencyCycle(cycle));
            changes.failed.push(failure.into());
        }
        for name in &order {
            let spec =
                PluginSpec::from_policy(policy, name).expect("every plugin of a policy has a spec");
            match self.slot(name) {
                None => match self.load(spec).await {
                    Ok(_) => changes.loaded.push(name.clone()),
                    Err(err) => changes.failed.push(err.into()),
                },
                Some(slot) => {
                    let same_spec = *slot.spec() == spec;
                    if same_spec && file_unchanged(&spec, &slot.current().details.digest) {
                        changes.unchanged.push(name.clone());
                        continue;
                    }
                    match self.reload_with(spec).await {
                        Ok(_) => changes.reloaded.push(name.clone()),
                        Err(err) => changes.failed.push(err.into()),
                    }
                }
            }
        }
        for slot in self.slots() {
            if !policy.plugins.contains_key(&*slot.name) && self.unload(&slot.name).await {
                changes.unloaded.push(slot.name.to_string());
            }
        }
        changes.pipelines = self.replace_pipelines(policy);
        self.unpin_all_but(policy);
        *self
            .inner
            .applied_host
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(policy.host.clone());
        tracing::info!(
            loaded = ?changes.loaded,
            reloaded = ?changes.reloaded,
            unloaded = ?changes.unloaded,
            failed = changes.failed.len(),
            "policy applied"
        );
        Ok(changes)
    }

    /// Remembers the `[host]` section the host was built from, for applies
    /// to compare with.
    pub(super) fn remember_host_policy(&self, host: &HostPolicy) {
        *self
            .inner
            .applied_host
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(host.clone());
    }

    fn applied_host(&self) -> Option<HostPolicy> {
        self.inner
            .applied_host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes the pipelines the policy's; returns those added, changed or
    /// removed.
    fn replace_pipelines(&self, policy: &Policy) -> Vec<String> {
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
            if pipelines.get(&pipeline.name) != Some(&pipeline) {
                touched.push(pipeline.name.clone());
                pipelines.insert(pipeline.name.clone(), pipeline);
            }
        }
        touched.sort();
        touched
    }

    /// Drops capability pins the policy no longer has.
    fn unpin_all_but(&self, policy: &Policy) {
        self.inner
            .registry
            .pins
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|capability, _| policy.capabilities.contains_key(capability));
    }
}

/// Whether the file `spec` names still holds the bytes with `digest` (a
/// file that cannot be read counts as changed: the reload says why).
fn file_unchanged(spec: &PluginSpec, digest: &str) -> bool {
    let super::PluginSource::Path(path) = &spec.source else {
        return true;
    };
    crate::input::read_file(path, crate::input::MAX_COMPONENT_BYTES)
        .is_ok_and(|bytes| crate::artifact::sha256_hex(&bytes) == digest)
}

/// The `[host]` settings that differ between `before` and `after`.
fn host_sections_changed(before: &HostPolicy, after: &HostPolicy) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let keys = |host: &HostPolicy| -> Vec<_> {
        host.trusted_keys
            .iter()
            .map(|(_, key)| key.clone())
            .collect()
    };
    if keys(before) != keys(after)
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
    changed
}
