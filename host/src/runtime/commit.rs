//! Committing what a call (or a transactional pipeline, or an event
//! delivery) buffered: its key-value changes in one store transaction, then
//! its events on the bus — both or neither.
//!
//! Commits are optimistic (`KvStore::commit` checks the versions the call
//! read). A call that conflicts is run again when that repeats nothing
//! outside its transaction; the rerun holds its namespaces' *gates*
//! exclusively, so other writers' commits to them wait until it is done
//! and it cannot lose again to them. Gates are only for progress: the
//! version check alone keeps commits serializable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use super::Host;
use super::bus::BusEvent;
use super::delivery::Publisher;
use crate::contract::ServiceError;
use crate::error::CallFailure;
use crate::outcome::PublishedEvent;
use crate::services::kv::store::CommitError;
use crate::services::transaction::Transaction;

/// Most times one call runs: once, then again (holding its gates) after
/// each conflict.
pub(crate) const MAX_ATTEMPTS: u32 = 3;

/// One gate per key-value namespace that calls have committed to (bounded
/// by the namespaces the policy grants).
#[derive(Default)]
pub(crate) struct Gates {
    gates: Mutex<HashMap<Arc<str>, Arc<RwLock<()>>>>,
}

/// Gates held exclusively by a rerun, released when it is dropped.
pub(crate) struct Exclusive {
    _held: Vec<OwnedRwLockWriteGuard<()>>,
}

impl Gates {
    fn gate(&self, namespace: &Arc<str>) -> Arc<RwLock<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(gates.entry(Arc::clone(namespace)).or_default())
    }

    /// Holds the gates of `namespaces` exclusively (in sorted order, as
    /// every holder takes them, so two holders never wait on each other).
    pub(crate) async fn exclusive(&self, namespaces: &[Arc<str>]) -> Exclusive {
        let mut held = Vec::with_capacity(namespaces.len());
        for namespace in namespaces {
            held.push(self.gate(namespace).write_owned().await);
        }
        Exclusive { _held: held }
    }

    async fn shared(&self, namespaces: &[Arc<str>]) -> Vec<OwnedRwLockReadGuard<()>> {
        let mut held = Vec::with_capacity(namespaces.len());
        for namespace in namespaces {
            held.push(self.gate(namespace).read_owned().await);
        }
        held
    }
}

/// Why a commit wrote nothing, with what a rerun needs.
pub(crate) struct Refused {
    pub(crate) failure: CallFailure,
    /// The namespaces the transaction touched, when it lost to a
    /// concurrent commit (a rerun holds their gates).
    pub(crate) conflict: Option<Vec<Arc<str>>>,
    /// Whether running the call again would repeat something outside the
    /// transaction.
    pub(crate) escaped: bool,
}

impl Host {
    /// Commits `transaction`, then puts its events on the bus (as published
    /// by the plugin that published each) and returns them. With `gated`,
    /// the caller already holds the namespaces' gates; otherwise a commit
    /// that writes waits at most `wait` for a rerun holding them.
    ///
    /// The work runs as its own task: a caller that goes away (a client
    /// that disconnects) cannot stop it between the commit and the events.
    pub(crate) async fn commit(
        &self,
        plugin: &str,
        transaction: Transaction,
        gated: bool,
        hops: u32,
        wait: Duration,
    ) -> Result<Vec<PublishedEvent>, Refused> {
        let host = self.clone();
        let plugin = plugin.to_owned();
        let task = tokio::spawn(async move {
            host.commit_now(&plugin, transaction, gated, hops, wait)
                .await
        });
        task.await.unwrap_or_else(|err| {
            Err(Refused {
                failure: CallFailure::Host(format!("the commit task failed: {err}")),
                conflict: None,
                escaped: true,
            })
        })
    }

    async fn commit_now(
        &self,
        plugin: &str,
        transaction: Transaction,
        gated: bool,
        hops: u32,
        wait: Duration,
    ) -> Result<Vec<PublishedEvent>, Refused> {
        let Transaction {
            kv,
            events,
            escaped,
            ..
        } = transaction;
        if !kv.is_empty() {
            let namespaces: Vec<Arc<str>> = kv.namespaces.keys().cloned().collect();
            // Sorted: the changes are a BTreeMap by namespace.
            let _shared = if !gated && kv.writes() {
                match tokio::time::timeout(wait, self.inner.commits.shared(&namespaces)).await {
                    Ok(held) => Some(held),
                    Err(_) => {
                        return Err(Refused {
                            failure: CallFailure::Conflict {
                                namespace: namespaces.join(", "),
                                key: "*".into(),
                            },
                            conflict: None,
                            escaped,
                        });
                    }
                }
            } else {
                None
            };
            let store = Arc::clone(&self.inner.loader.services.kv_store);
            let committed = tokio::task::spawn_blocking(move || store.commit(&kv))
                .await
                .unwrap_or_else(|err| {
                    Err(CommitError::Refused(
                        crate::services::kv::store::unavailable(err),
                    ))
                });
            if let Err(err) = committed {
                let (failure, conflict) = match err {
                    CommitError::Conflict { namespace, key } => {
                        (CallFailure::Conflict { namespace, key }, Some(namespaces))
                    }
                    CommitError::Refused(ServiceError::QuotaExceeded(message)) => {
                        (CallFailure::QuotaExceeded(message), None)
                    }
                    CommitError::Refused(err) => (
                        CallFailure::Host(format!("the key-value commit failed: {err:?}")),
                        None,
                    ),
                };
                tracing::debug!(plugin, %failure, "commit refused");
                return Err(Refused {
                    failure,
                    conflict,
                    escaped,
                });
            }
        }
        let mut published = Vec::with_capacity(events.len());
        for (source, event) in events {
            let on_bus = BusEvent {
                topic: event.topic.clone(),
                payload: event.payload.clone(),
                source: source.to_string(),
                hops,
            };
            self.publish_event(on_bus, Publisher::Plugin).await;
            published.push(event);
        }
        Ok(published)
    }
}
