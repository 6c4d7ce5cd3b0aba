//! Calls to plugins loaded on other hosts of the deployment, over NATS
//! request/reply (`backend::calls` has the subjects and the wire form).
//!
//! - Forwarding: a call made to this host (through [`Host::call`] or the
//!   HTTP API) for a plugin it has not loaded goes to one of the hosts that
//!   serve it, with the caller's remaining deadline (or `[host.backend]
//!   call_timeout`). The reply keeps the error's kind; a plugin's own error
//!   keeps its variant. No host serving it: `unknown_plugin`, at once. Calls
//!   plugins make to each other, and calls inside a transaction, stay on
//!   their host: their effects join a transaction only that host holds.
//! - Serving: each loaded plugin that is not paused takes calls from other
//!   hosts; they run like local calls (middleware, limits, metrics), never
//!   forwarded again.
//! - Presence: the host rewrites its entry in the deployment's presence
//!   stream every few seconds and whenever its plugins change.
//!
//! Budgets: calls of one plugin running for other hosts are at most its
//! `max_instances + max_queued` (more are answered `busy` at once, before
//! anything is decoded); the serving connection holds at most 64 MiB of
//! calls per plugin not yet taken; a forwarded call holds its caller's
//! request and at most one reply of `max_payload` bytes, and is given up
//! (its inbox unsubscribed) when its caller goes away.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::registry::Slot;
use super::{Host, HostInner};
use crate::backend::calls::{NatsCalls, PRESENCE_EVERY, RequestFailure, Worker};
use crate::backend::wire::{CallHead, ReplyHead, ReplyResult, decode, encode};
use crate::contract::{PluginError, Request, Response};
use crate::error::{CallError, CallFailure, ErrorKind};
use crate::outcome::{CallOutcome, CallStats};
use crate::services::calls::CallScope;

/// How soon a serving worker notices its plugin was paused, unloaded or
/// the host stopped while no call comes.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// How long a worker waits before trying NATS again after a failure.
const RETRY_NATS: Duration = Duration::from_secs(1);

/// The longest a served call may be asked to wait: a peer's `wait_ms` is
/// clamped to it (the plugin's own timeout still applies).
const MAX_WAIT: Duration = Duration::from_secs(3600);

impl Host {
    /// Runs `request` on a host that serves `plugin`, waiting until the
    /// scope's deadline or `call_timeout`.
    pub(super) async fn forward(
        &self,
        calls: &NatsCalls,
        plugin: &str,
        request: Request,
        scope: &CallScope,
    ) -> Result<CallOutcome, CallError> {
        let started = Instant::now();
        let fail = |cause| CallError::new(plugin, cause);
        let wait = match scope.deadline {
            Some(deadline) => deadline.saturating_duration_since(started),
            None => calls.call_timeout(),
        };
        if wait.is_zero() {
            return Err(fail(CallFailure::Timeout { limit: wait }));
        }
        let size = request.size();
        let head = CallHead {
            operation: request.operation,
            metadata: request.metadata,
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            from: calls.host().to_owned(),
        };
        let body = encode(&head, &request.payload);
        drop(request.payload);
        let reply = match calls.request(plugin, body, wait).await {
            Ok(reply) => reply,
            Err(RequestFailure::NotServed) => return Err(fail(CallFailure::UnknownPlugin)),
            Err(RequestFailure::TimedOut) => {
                return Err(fail(CallFailure::Timeout { limit: wait }));
            }
            Err(RequestFailure::TooLarge { limit, .. }) => {
                return Err(fail(CallFailure::InputTooLarge { size, limit }));
            }
            Err(RequestFailure::Unavailable(reason)) => {
                return Err(fail(CallFailure::Unavailable(format!(
                    "cannot reach the hosts serving it: {reason}"
                ))));
            }
        };
        let (head, payload) = decode::<ReplyHead>(&reply).map_err(|reason| {
            fail(CallFailure::Host(format!(
                "another host sent a malformed reply: {reason}"
            )))
        })?;
        match head.result {
            ReplyResult::Ok {
                metadata,
                fuel_used,
                callee_fuel,
                fresh_instance,
                fuel_limit,
                memory_bytes,
                memory_limit,
                cached,
            } => Ok(CallOutcome {
                response: Response {
                    payload: payload.to_vec(),
                    metadata,
                },
                logs: Vec::new(),
                events: Vec::new(),
                stats: CallStats {
                    duration: started.elapsed(),
                    fuel_used,
                    callee_fuel,
                    fuel_limit,
                    memory_bytes,
                    memory_limit,
                    logs_refused: 0,
                    fresh_instance,
                    cached,
                    // The other host's store is not seen from here.
                    host_calls: Vec::new(),
                },
            }),
            ReplyResult::Err {
                kind,
                message,
                plugin_error,
            } => {
                let cause = match plugin_error
                    .and_then(|(variant, message)| plugin_error_from(&variant, message))
                {
                    Some(error) => CallFailure::Plugin(error),
                    None => CallFailure::Remote {
                        host: head.host,
                        kind: ErrorKind::from_name(&kind).unwrap_or(ErrorKind::Host),
                        message,
                    },
                };
                Err(CallError {
                    plugin: plugin.to_owned(),
                    cause,
                    logs: Vec::new(),
                    stats: CallStats {
                        duration: started.elapsed(),
                        ..CallStats::default()
                    },
                })
            }
        }
    }

    /// Starts the worker that answers other hosts' calls for `slot`'s
    /// plugin, and (once per host) the presence worker, and tells them the
    /// plugins changed. Subscribes before returning, so that a plugin is
    /// reachable from other hosts once its load returned; while NATS is
    /// unreachable it returns at once and the worker keeps trying.
    pub(super) async fn start_serving(&self, slot: &Arc<Slot>) {
        let Some(calls) = &self.inner.shared_calls else {
            return;
        };
        // The worker subscribes; waiting for it here, not subscribing here,
        // keeps a load whose caller gives up meanwhile served all the same.
        let (ready, subscribed) = tokio::sync::oneshot::channel();
        tokio::spawn(serve_loop(
            Arc::downgrade(&self.inner),
            Arc::downgrade(slot),
            calls.worker(),
            self.inner.signals.plugins.subscribe(),
            ready,
        ));
        self.start_presence();
        self.plugins_changed();
        let _ = subscribed.await;
    }

    /// Starts the presence worker once per host, on the caller's runtime
    /// (none when there is no runtime yet: the first load starts it).
    pub(super) fn start_presence(&self) {
        if self.inner.shared_calls.is_none() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if !self.inner.signals.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(presence_loop(
                Arc::downgrade(&self.inner),
                self.inner.signals.plugins.subscribe(),
            ));
        }
    }

    /// Takes this host out of the deployment (it is stopping) by `until`:
    /// no more calls from other hosts (those already received are answered),
    /// and gone from the listing.
    pub(super) async fn withdraw(&self, until: Instant) {
        let Some(calls) = &self.inner.shared_calls else {
            return;
        };
        // Wake the workers: they see the host stopping.
        self.plugins_changed();
        calls.stop_serving(until).await;
        let withdrawn = tokio::time::timeout_at(until.into(), calls.withdraw()).await;
        if let Err(err) = withdrawn
            .map_err(|_| "no answer before the shutdown deadline".to_owned())
            .and_then(|done| done)
        {
            tracing::warn!(
                err = %crate::text::for_log(&err, 256),
                "this host's presence was left to expire: NATS did not remove it"
            );
        }
    }
}

/// What the host tells its remote workers.
pub(super) struct Signals {
    /// Whether the presence worker was started.
    pub(super) started: std::sync::atomic::AtomicBool,
    /// Bumped whenever a plugin is loaded, reloaded, paused, resumed or
    /// unloaded, and when the host stops: wakes the workers at once.
    pub(super) plugins: tokio::sync::watch::Sender<u64>,
}

impl Default for Signals {
    fn default() -> Signals {
        Signals {
            started: std::sync::atomic::AtomicBool::new(false),
            plugins: tokio::sync::watch::Sender::new(0),
        }
    }
}

/// The plugin error named `variant` carrying `message`.
fn plugin_error_from(variant: &str, message: String) -> Option<PluginError> {
    Some(match variant {
        "invalid_input" => PluginError::InvalidInput(message),
        "unsupported" => PluginError::Unsupported(message),
        "denied" => PluginError::Denied(message),
        "failed" => PluginError::Failed(message),
        _ => return None,
    })
}

/// The reply to a call that ended with `result` on host `host`.
fn reply_body(host: &str, result: Result<CallOutcome, CallError>) -> Vec<u8> {
    match result {
        Ok(outcome) => encode(
            &ReplyHead {
                host: host.to_owned(),
                result: ReplyResult::Ok {
                    metadata: outcome.response.metadata,
                    fuel_used: outcome.stats.fuel_used,
                    callee_fuel: outcome.stats.callee_fuel,
                    fresh_instance: outcome.stats.fresh_instance,
                    fuel_limit: outcome.stats.fuel_limit,
                    memory_bytes: outcome.stats.memory_bytes,
                    memory_limit: outcome.stats.memory_limit,
                    cached: outcome.stats.cached,
                },
            },
            &outcome.response.payload,
        ),
        Err(err) => {
            let plugin_error = match &err.cause {
                CallFailure::Plugin(error) => {
                    let variant = match error {
                        PluginError::InvalidInput(_) => "invalid_input",
                        PluginError::Unsupported(_) => "unsupported",
                        PluginError::Denied(_) => "denied",
                        PluginError::Failed(_) => "failed",
                    };
                    Some((variant.to_owned(), error.message().to_owned()))
                }
                _ => None,
            };
            let message = if err.kind() == ErrorKind::Host {
                // A host fault's message may name paths and internals: it
                // stays in this host's log.
                tracing::warn!(
                    plugin = %crate::text::log_field(&err.plugin),
                    error = %crate::text::log_field(&err.to_string()),
                    "a call from another host failed in this host"
                );
                "the host running the plugin failed; its log says why".to_owned()
            } else {
                err.cause.to_string()
            };
            error_body(host, err.kind(), message, plugin_error)
        }
    }
}

fn error_body(
    host: &str,
    kind: ErrorKind,
    message: String,
    plugin_error: Option<(String, String)>,
) -> Vec<u8> {
    encode(
        &ReplyHead {
            host: host.to_owned(),
            result: ReplyResult::Err {
                kind: kind.as_str().to_owned(),
                message,
                plugin_error,
            },
        },
        &[],
    )
}

/// Why a serving worker stops taking calls.
enum NotServing {
    /// The plugin was unloaded (or loaded again: a new worker serves it).
    Unloaded,
    /// The host is stopping or gone.
    Stopping,
}

impl NotServing {
    /// The error a call this worker had received gets.
    fn failure(&self, calls: &NatsCalls) -> CallFailure {
        match self {
            NotServing::Unloaded => CallFailure::UnknownPlugin,
            NotServing::Stopping => {
                CallFailure::Unavailable(format!("host `{}` is stopping", calls.host()))
            }
        }
    }
}

/// Answers other hosts' calls for one plugin until it is unloaded (or
/// loaded again: a new worker serves the new slot) or the host stops; calls
/// it had already received then are answered with why. While the plugin is
/// paused here, calls get `paused` from here, as local ones do (unsubscribing
/// instead would lose the calls NATS hands over meanwhile). Holds the host
/// only while a call runs.
async fn serve_loop(
    host: Weak<HostInner>,
    slot: Weak<Slot>,
    worker: Worker,
    mut changes: tokio::sync::watch::Receiver<u64>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let calls = Arc::clone(worker.calls());
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut subscriber = None;
    let mut failing = false;
    // Told once the first subscription is made or failed.
    let mut ready = Some(ready);
    loop {
        let name = match serving(&host, &slot) {
            Ok(name) => name,
            Err(why) => {
                if let Some(taken) = subscriber.take() {
                    answer_leftovers(taken, &calls, &why).await;
                }
                return;
            }
        };
        let taking = match &mut subscriber {
            Some(taking) => taking,
            None => match calls.serve(&name).await {
                Ok(taken) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    if std::mem::take(&mut failing) {
                        tracing::info!(plugin = %name, "taking calls from other hosts again");
                    }
                    subscriber.insert(taken)
                }
                Err(reason) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(
                            plugin = %name,
                            reason = %crate::text::for_log(&reason, 256),
                            "cannot take calls from other hosts; retrying until NATS answers"
                        );
                    }
                    tokio::select! {
                        _ = changes.changed() => {}
                        () = tokio::time::sleep(RETRY_NATS) => {}
                    }
                    continue;
                }
            },
        };
        let message = tokio::select! {
            message = taking.next() => message,
            _ = changes.changed() => continue,
            () = tokio::time::sleep(CHECK_EVERY) => continue,
        };
        let Some(message) = message else {
            // The subscription ended (the serving connection was closed).
            subscriber = None;
            continue;
        };
        // Not a request: nobody waits for an answer.
        let Some(reply_to) = message.reply.clone() else {
            continue;
        };
        let (Some(inner), Some(slot_now)) = (host.upgrade(), slot.upgrade()) else {
            let body = error_body(
                calls.host(),
                ErrorKind::Unavailable,
                format!("host `{}` is stopping", calls.host()),
                None,
            );
            let _ = calls.reply(reply_to, body, |_| Vec::new()).await;
            continue;
        };
        let host_now = Host { inner };
        let current = slot_now.current();
        let limits = current.limits();
        let bound = limits.max_instances.saturating_add(limits.max_queued);
        if in_flight.load(Ordering::Acquire) >= bound {
            let busy = CallFailure::Busy {
                max_instances: limits.max_instances,
                queued: limits.max_queued,
            };
            let body = error_body(calls.host(), busy.kind(), busy.to_string(), None);
            let _ = calls.reply(reply_to, body, |_| Vec::new()).await;
            continue;
        }
        in_flight.fetch_add(1, Ordering::AcqRel);
        let counted = InFlight(Arc::clone(&in_flight));
        let calls = Arc::clone(&calls);
        tokio::spawn(async move {
            let _counted = counted;
            answer(host_now, &calls, &name, &message.payload, reply_to).await;
        });
    }
}

/// Stops a subscription and answers the calls it had already received
/// with `why` (bounded: the subscription's backlog, and a second to see
/// the end of it). Draining, not closing, keeps taking calls until the
/// unsubscription is written; one NATS hands over in the moment after that
/// is lost (its caller waits out its deadline).
async fn answer_leftovers(mut taken: async_nats::Subscriber, calls: &NatsCalls, why: &NotServing) {
    let failure = why.failure(calls);
    let _ = tokio::time::timeout(Duration::from_secs(1), taken.drain()).await;
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(1), taken.next()).await {
        if let Some(reply_to) = message.reply {
            let body = error_body(calls.host(), failure.kind(), failure.to_string(), None);
            let _ = calls.reply(reply_to, body, |_| Vec::new()).await;
        }
    }
}

/// Gives back a served call's place when it ends, however it ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How much sooner than its caller stops waiting a call from another host
/// must end here: the reply's way back (a tenth of the wait, at most this).
const REPLY_MARGIN: Duration = Duration::from_millis(100);

/// Runs one call another host sent and replies.
async fn answer(
    host: Host,
    calls: &NatsCalls,
    plugin: &str,
    body: &[u8],
    reply_to: async_nats::Subject,
) {
    let reply = match decode::<CallHead>(body) {
        Ok((head, payload)) => {
            let wait = Duration::from_millis(head.wait_ms).min(MAX_WAIT);
            let wait = wait.saturating_sub((wait / 10).min(REPLY_MARGIN));
            let request = Request {
                operation: head.operation,
                payload: payload.to_vec(),
                metadata: head.metadata,
            };
            let scope = CallScope {
                deadline: Some(Instant::now() + wait),
                forwarded: true,
                ..CallScope::default()
            };
            let result = host.call_scoped(plugin, request, scope).await;
            reply_body(calls.host(), result)
        }
        Err(reason) => error_body(
            calls.host(),
            ErrorKind::Host,
            format!("a malformed call from another host: {reason}"),
            None,
        ),
    };
    let this_host = calls.host().to_owned();
    let sent = calls
        .reply(reply_to, reply, |limit| {
            let too_large = CallFailure::OutputTooLarge {
                stream: crate::error::OutputStream::Response,
                limit,
            };
            error_body(
                &this_host,
                too_large.kind(),
                format!("{too_large}: the most one NATS message carries"),
                None,
            )
        })
        .await;
    if let Err(err) = sent {
        tracing::warn!(
            plugin,
            err = %crate::text::for_log(&err, 256),
            "the reply to another host's call was lost"
        );
    }
}

/// The plugin's name while the worker for `slot` should take calls (paused
/// or not), or why it should not.
fn serving(host: &Weak<HostInner>, slot: &Weak<Slot>) -> Result<Arc<str>, NotServing> {
    let inner = host.upgrade().ok_or(NotServing::Stopping)?;
    if inner.stopped.load(Ordering::Acquire) {
        return Err(NotServing::Stopping);
    }
    let slot = slot.upgrade().ok_or(NotServing::Unloaded)?;
    let host = Host { inner };
    if !host
        .slot(&slot.name)
        .is_some_and(|now| Arc::ptr_eq(&now, &slot))
    {
        return Err(NotServing::Unloaded);
    }
    Ok(Arc::clone(&slot.name))
}

/// Rewrites the host's presence every `PRESENCE_EVERY` and whenever its
/// plugins change, until the host stops or is dropped.
async fn presence_loop(host: Weak<HostInner>, mut changes: tokio::sync::watch::Receiver<u64>) {
    let mut failing = false;
    loop {
        let Some(inner) = host.upgrade() else {
            return;
        };
        if inner.stopped.load(Ordering::Acquire) {
            return;
        }
        let Some(calls) = inner.shared_calls.clone() else {
            return;
        };
        let host_now = Host { inner };
        // Room for the headers NATS adds.
        let room = calls.max_message().saturating_sub(1024);
        let document = host_now.presence_document(calls.host().to_owned(), room);
        // Only a weak hold while waiting: a dropped host ends the worker.
        drop(host_now);
        match calls.announce(document).await {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("this host is listed in the deployment again");
                }
            }
            Err(err) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        err = %crate::text::for_log(&err, 256),
                        "cannot announce this host; retrying until NATS answers"
                    );
                }
            }
        }
        drop(calls);
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(PRESENCE_EVERY) => {}
        }
    }
}
