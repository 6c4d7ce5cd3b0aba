//! Which hosts the deployment has and what each serves: `GET /v1/cluster`.
//!
//! With the NATS backend every host keeps its own entry in the deployment's
//! presence stream (`backend::calls`), rewritten every few seconds, so the
//! listing comes from NATS and a dead host drops out of it by itself. With
//! the embedded backend the host is alone and lists itself.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Host;

/// Plugins one host's entry lists at most (the rest are counted in
/// [`ClusterHost::more_plugins`]): keeps an entry well inside one NATS
/// message.
pub(crate) const MAX_LISTED_PLUGINS: usize = 2000;

/// Bytes of a plugin's version an entry carries (`describe` may report up
/// to 16 KiB).
const MAX_VERSION: usize = 64;

/// The deployment's hosts, as `GET /v1/cluster` shows them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cluster {
    /// `embedded` (this host alone) or `nats`.
    pub backend: String,
    /// This host's name.
    pub this_host: String,
    /// Every host that announced itself within the presence lifetime, by
    /// name.
    pub hosts: Vec<ClusterHost>,
}

/// One host and what it serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterHost {
    /// Its name in the deployment.
    pub host: String,
    /// The Capsule version it runs.
    pub capsule: String,
    /// When it started, in seconds since the Unix epoch.
    pub started_at: u64,
    /// When it last rewrote this entry, in seconds since the Unix epoch.
    pub updated_at: u64,
    /// The plugins it serves, by name.
    pub plugins: Vec<ServedPlugin>,
    /// Plugins beyond [`MAX_LISTED_PLUGINS`] it serves but does not list.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_plugins: usize,
}

/// A plugin as a host serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedPlugin {
    /// Its name.
    pub name: String,
    /// The version its `describe` reports.
    pub version: String,
    /// The SHA-256 digest of its component.
    pub digest: String,
    /// Whether it takes calls now (a paused plugin answers `paused`, to
    /// calls from other hosts too).
    pub serving: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl Host {
    /// The deployment's hosts and what each serves: from NATS with the NATS
    /// backend (every host that announced itself in the last 15 s), this
    /// host alone otherwise. Fails when NATS cannot be read.
    pub async fn cluster(&self) -> Result<Cluster, String> {
        #[cfg(feature = "nats")]
        if let Some(calls) = &self.inner.shared_calls {
            let mut hosts: Vec<ClusterHost> = calls
                .hosts()
                .await?
                .iter()
                .filter_map(|document| match serde_json::from_slice(document) {
                    Ok(host) => Some(host),
                    Err(err) => {
                        tracing::warn!(%err, "a host's presence entry could not be read");
                        None
                    }
                })
                .collect();
            hosts.sort_by(|a, b| a.host.cmp(&b.host));
            return Ok(Cluster {
                backend: "nats".into(),
                this_host: calls.host().to_owned(),
                hosts,
            });
        }
        let this = self.presence("local".into());
        Ok(Cluster {
            backend: "embedded".into(),
            this_host: this.host.clone(),
            hosts: vec![this],
        })
    }

    /// Tells the presence worker the plugins changed (loaded, unloaded,
    /// reloaded, paused or resumed), so other hosts see it at once.
    pub(crate) fn plugins_changed(&self) {
        #[cfg(feature = "nats")]
        self.inner.signals.plugins.send_modify(|n| *n += 1);
    }

    /// This host's entry as JSON, within `room` bytes: plugins that do not
    /// fit are counted in `more_plugins` instead of listed.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn presence_document(&self, host: String, room: usize) -> Vec<u8> {
        let mut entry = self.presence(host);
        loop {
            let document = serde_json::to_vec(&entry).expect("an entry always serializes");
            if document.len() <= room || entry.plugins.is_empty() {
                return document;
            }
            let keep = entry.plugins.len() / 2;
            entry.more_plugins += entry.plugins.len() - keep;
            entry.plugins.truncate(keep);
        }
    }

    /// This host's entry as others see it.
    pub(crate) fn presence(&self, host: String) -> ClusterHost {
        let mut plugins: Vec<ServedPlugin> = self
            .slots()
            .iter()
            .map(|slot| {
                let current = slot.current();
                ServedPlugin {
                    name: slot.name.to_string(),
                    version: crate::text::for_log(&current.details.info.version, MAX_VERSION)
                        .into_owned(),
                    digest: current.details.digest.clone(),
                    serving: !slot.paused.load(std::sync::atomic::Ordering::Acquire),
                }
            })
            .collect();
        plugins.sort_by(|a, b| a.name.cmp(&b.name));
        let more_plugins = plugins.len().saturating_sub(MAX_LISTED_PLUGINS);
        plugins.truncate(MAX_LISTED_PLUGINS);
        ClusterHost {
            host,
            capsule: env!("CARGO_PKG_VERSION").into(),
            started_at: self.inner.started_at,
            updated_at: unix_now(),
            plugins,
            more_plugins,
        }
    }
}
