//! Committing what a call (or a transactional pipeline, or an event
//! delivery) buffered: its key-value changes in one store transaction, then
//! its events on the bus — both or neither (with the NATS backend, events
//! the stream refuses after the writes committed fail the call as
//! `unavailable`; see `docs/scaling.md`).
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
use crate::services::kv::KvStore;
use crate::services::kv::store::CommitError;
use crate::services::transaction::Transaction;

/// Most times one call runs: once, then again (holding its gates) after
/// each conflict. A store other hosts share allows two runs more, holding
/// the store's gates too (see [`Exclusive::hold_in_store`]).
pub(crate) const MAX_ATTEMPTS: u32 = 3;

/// One gate per key-value namespace that calls have committed to (bounded
/// by the namespaces the policy grants).
#[derive(Default)]
pub(crate) struct Gates {
    gates: Mutex<HashMap<Arc<str>, Arc<RwLock<()>>>>,
}

/// Gates held exclusively by a rerun, released when it is dropped: this
/// host's, and with a store shared by other hosts, the store's gates too.
pub(crate) struct Exclusive {
    _held: Vec<OwnedRwLockWriteGuard<()>>,
    /// Who holds the store's gates (the rerun's commit names it).
    pub(crate) holder: u64,
    /// The store and the namespaces whose store gates are held.
    in_store: Option<(Arc<KvStore>, Vec<Arc<str>>)>,
}

impl Exclusive {
    /// With a store other hosts share, also takes its gates of
    /// `namespaces` (once), waiting at most `wait` for other hosts' reruns
    /// to give them back; past that the rerun goes on without them and may
    /// conflict again. Taken only after a rerun holding this host's gates
    /// lost: on one host they are enough, and taking the store's costs
    /// round trips.
    pub(crate) async fn hold_in_store(
        &mut self,
        store: &Arc<KvStore>,
        namespaces: &[Arc<str>],
        wait: Duration,
    ) {
        if self.in_store.is_some() || !store.shared() {
            return;
        }
        // Each gate is noted as soon as it is taken: if this future is
        // dropped (a client went away), `Drop` still gives them back.
        let held = self.in_store.insert((Arc::clone(store), Vec::new()));
        take_store_gates(store, namespaces, self.holder, wait, &mut held.1).await;
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        if let Some((store, namespaces)) = self.in_store.take() {
            let holder = self.holder;
            let release = move || {
                for namespace in &namespaces {
                    store.release_gate(namespace, holder);
                }
            };
            // Releasing waits for the store: not on an async worker.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(release)),
                Err(_) => release(),
            }
        }
    }
}

impl Gates {
    fn gate(&self, namespace: &Arc<str>) -> Arc<RwLock<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(gates.entry(Arc::clone(namespace)).or_default())
    }

    /// Holds this host's gates of `namespaces` exclusively (in sorted
    /// order, as every holder takes them, so two holders never wait on each
    /// other).
    pub(crate) async fn exclusive(&self, namespaces: &[Arc<str>]) -> Exclusive {
        let mut held = Vec::with_capacity(namespaces.len());
        for namespace in namespaces {
            held.push(self.gate(namespace).write_owned().await);
        }
        Exclusive {
            _held: held,
            holder: random_holder(),
            in_store: None,
        }
    }

    async fn shared(&self, namespaces: &[Arc<str>]) -> Vec<OwnedRwLockReadGuard<()>> {
        let mut held = Vec::with_capacity(namespaces.len());
        for namespace in namespaces {
            held.push(self.gate(namespace).read_owned().await);
        }
        held
    }
}

/// A holder id no other rerun on any host uses.
fn random_holder() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness, a clock-derived id still differs between hosts
    // almost surely; a collision would only let two reruns overlap.
    if getrandom::fill(&mut bytes).is_err() {
        return crate::services::kv::store::now_ms() ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(bytes)
}

/// Takes the store's gate of each of `namespaces` (in order) for `holder`,
/// retrying with backoff until `wait` ends; adds each to `taken` at once.
async fn take_store_gates(
    store: &Arc<KvStore>,
    namespaces: &[Arc<str>],
    holder: u64,
    wait: Duration,
    taken: &mut Vec<Arc<str>>,
) {
    // The gate outlives the rerun only if its host dies: then its lease
    // ends it.
    let lease = wait + Duration::from_secs(5);
    let deadline = tokio::time::Instant::now() + wait;
    for namespace in namespaces {
        let mut pause = Duration::from_millis(1);
        loop {
            let attempt = {
                let (store, namespace) = (Arc::clone(store), Arc::clone(namespace));
                tokio::task::spawn_blocking(move || store.try_gate(&namespace, holder, lease)).await
            };
            match attempt {
                Ok(Ok(true)) => {
                    taken.push(Arc::clone(namespace));
                    break;
                }
                Ok(Ok(false)) if tokio::time::Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                // Taken by another rerun past our wait, or the store is
                // unreachable: go on without it.
                _ => return,
            }
        }
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
    /// by the plugin that published each) and returns them. With `gated`
    /// (the holder of an [`Exclusive`]), the caller already holds the
    /// namespaces' gates; otherwise a commit that writes waits at most
    /// `wait` for a rerun holding them.
    ///
    /// The work runs as its own task: a caller that goes away (a client
    /// that disconnects) cannot stop it between the commit and the events.
    pub(crate) async fn commit(
        &self,
        plugin: &str,
        transaction: Transaction,
        gated: Option<u64>,
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
        gated: Option<u64>,
        hops: u32,
        wait: Duration,
    ) -> Result<Vec<PublishedEvent>, Refused> {
        let Transaction {
            mut kv,
            events,
            escaped,
            ..
        } = transaction;
        kv.holder = gated;
        // An event the shared stream would refuse fails the call before
        // anything is written (it would fail the same way every time).
        #[cfg(feature = "nats")]
        if let Some(shared) = &self.inner.shared_events {
            let max = shared.max_event();
            for (source, event) in &events {
                let size = crate::backend::events::event_size(&event.topic, &event.payload);
                if size > max {
                    return Err(Refused {
                        failure: CallFailure::QuotaExceeded(format!(
                            "`{source}` published an event of {size} bytes on `{}`; the \
                             deployment's event stream takes at most {max}",
                            event.topic
                        )),
                        conflict: None,
                        escaped,
                    });
                }
            }
        }
        if !kv.is_empty() {
            let namespaces: Vec<Arc<str>> = kv.namespaces.keys().cloned().collect();
            // Sorted: the changes are a BTreeMap by namespace.
            let _shared = if gated.is_none() && kv.writes() {
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
                    CommitError::Refused(ServiceError::Unavailable(why)) => {
                        (CallFailure::Unavailable(why), None)
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
        let total = events.len();
        let mut published = Vec::with_capacity(total);
        for (source, event) in events {
            let on_bus = BusEvent {
                topic: event.topic.clone(),
                payload: event.payload.clone(),
                source: source.to_string(),
                hops,
                traceparent: event.trace.map(|span| span.to_string()),
            };
            // Only the NATS stream can refuse. The writes are committed and
            // the events before this one stored: the call fails as
            // `unavailable` and is not run again (it would repeat them).
            if let Err(reason) = self.publish_event(on_bus, Publisher::Plugin).await {
                let stored = published.len();
                return Err(Refused {
                    failure: CallFailure::Unavailable(format!(
                        "the call's writes were committed and {stored} of its {total} events \
                         published, but the next was not stored: {reason}"
                    )),
                    conflict: None,
                    escaped: true,
                });
            }
            published.push(event);
        }
        Ok(published)
    }
}
