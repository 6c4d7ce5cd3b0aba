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
//! anything is decoded); the serving connection holds at most
//! `CALL_BACKLOG` calls per plugin not yet taken; a forwarded call holds
//! its caller's request and at most one reply of `max_payload` bytes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::registry::Slot;
use super::{Host, HostInner};
use crate::backend::calls::{
    CallHead, NatsCalls, PRESENCE_EVERY, ReplyHead, ReplyResult, RequestFailure, decode, encode,
};
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
                    logs_refused: 0,
                    fresh_instance,
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
    /// plugin, and (once per host) the presence worker; tells the presence
    /// worker the plugins changed.
    /// Subscribes before returning, so that a plugin is reachable from
    /// other hosts once its load returned (unless NATS is down: then the
    /// worker keeps trying).
    pub(super) async fn start_serving(&self, slot: &Arc<Slot>) {
        let Some(calls) = &self.inner.shared_calls else {
            return;
        };
        let subscriber = match calls.serve(&slot.name).await {
            Ok(subscriber) => Some(subscriber),
            Err(reason) => {
                tracing::warn!(
                    plugin = %slot.name,
                    reason = %crate::text::for_log(&reason, 256),
                    "cannot take calls from other hosts yet; retrying until NATS answers"
                );
                None
            }
        };
        tokio::spawn(serve_loop(
            Arc::downgrade(&self.inner),
            Arc::downgrade(slot),
            Arc::clone(calls),
            subscriber,
        ));
        self.start_presence();
        self.plugins_changed();
    }

    /// Starts the presence worker once per host, on the caller's runtime
    /// (`false` when there is none yet: the first load starts it).
    pub(super) fn start_presence(&self) {
        if self.inner.shared_calls.is_none() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if !self.inner.presence.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(presence_loop(Arc::downgrade(&self.inner)));
        }
    }

    /// Takes this host out of the deployment (it is stopping): no more
    /// calls from other hosts, and gone from the listing.
    pub(super) async fn withdraw(&self) {
        let Some(calls) = &self.inner.shared_calls else {
            return;
        };
        calls.stop_serving().await;
        if let Err(err) = calls.withdraw().await {
            tracing::warn!(
                err = %crate::text::for_log(&err, 256),
                "this host's presence was left to expire: NATS did not remove it"
            );
        }
    }
}

/// What the presence worker shares with the host.
#[derive(Default)]
pub(super) struct Presence {
    pub(super) started: std::sync::atomic::AtomicBool,
    pub(super) changed: Arc<tokio::sync::Notify>,
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
            error_body(host, err.kind(), err.cause.to_string(), plugin_error)
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

/// Answers other hosts' calls for one plugin until it is unloaded (or
/// loaded again: a new worker serves the new slot) or the host stops.
/// Takes none while the plugin is paused, so that other hosts serving it
/// take them. Holds the host only while a call runs.
async fn serve_loop(
    host: Weak<HostInner>,
    slot: Weak<Slot>,
    calls: Arc<NatsCalls>,
    mut subscriber: Option<async_nats::Subscriber>,
) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut failing = subscriber.is_none();
    loop {
        let Some(serving) = serving(&host, &slot) else {
            return;
        };
        if !serving {
            // Paused: unsubscribe, so that the calls go elsewhere.
            subscriber = None;
            tokio::time::sleep(CHECK_EVERY).await;
            continue;
        }
        let Some(name) = slot.upgrade().map(|slot| Arc::clone(&slot.name)) else {
            return;
        };
        let taking = match &mut subscriber {
            Some(taking) => taking,
            None => match calls.serve(&name).await {
                Ok(taken) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(plugin = %name, "taking calls from other hosts again");
                    }
                    subscriber.insert(taken)
                }
                Err(reason) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(
                            plugin = %name,
                            reason = %crate::text::for_log(&reason, 256),
                            "cannot take calls from other hosts; retrying until NATS answers"
                        );
                    }
                    tokio::time::sleep(RETRY_NATS).await;
                    continue;
                }
            },
        };
        let message = tokio::select! {
            message = taking.next() => message,
            () = tokio::time::sleep(CHECK_EVERY) => continue,
        };
        let Some(message) = message else {
            subscriber = None;
            continue;
        };
        // Not a request: nobody waits for an answer.
        let Some(reply_to) = message.reply.clone() else {
            continue;
        };
        let (Some(inner), Some(slot_now)) = (host.upgrade(), slot.upgrade()) else {
            return;
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

/// Gives back a served call's place when it ends, however it ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

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

/// Whether the worker for `slot` should take calls now (`false` while the
/// plugin is paused); `None` once the slot is gone or replaced, or the host
/// stopped.
fn serving(host: &Weak<HostInner>, slot: &Weak<Slot>) -> Option<bool> {
    let inner = host.upgrade()?;
    if inner.stopped.load(Ordering::Acquire) {
        return None;
    }
    let slot = slot.upgrade()?;
    let host = Host { inner };
    if !host
        .slot(&slot.name)
        .is_some_and(|now| Arc::ptr_eq(&now, &slot))
    {
        return None;
    }
    Some(!slot.paused.load(Ordering::Acquire))
}

/// Rewrites the host's presence every `PRESENCE_EVERY` and whenever its
/// plugins change, until the host stops or is dropped.
async fn presence_loop(host: Weak<HostInner>) {
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
        let entry = host_now.presence(calls.host().to_owned());
        let document = serde_json::to_vec(&entry).expect("an entry always serializes");
        let changed = Arc::clone(&host_now.inner.presence.changed);
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
            () = changed.notified() => {}
            () = tokio::time::sleep(PRESENCE_EVERY) => {}
        }
    }
}
