//! Event delivery through NATS JetStream (`[host.backend] kind = "nats"`):
//! events go onto the deployment's stream, and every host pulls each
//! subscribing plugin's events from one durable consumer shared by all
//! hosts, so each event is handled by one host's instance (again only when
//! a delivery fails or its host dies before settling it).
//!
//! Settling: `ack` after the handler returned and its writes committed;
//! `retry-after` and failures → nak with the delay (any host may take the
//! next attempt); `reject`, a forward that was not granted, and attempts
//! used up (counted from JetStream's delivery count) → a dead letter in
//! the deployment's dead-letter stream, then term. While a handler runs,
//! the host tells JetStream it is still working, so `ack_wait` only has
//! to cover a host that died.
//!
//! Budgets: one event held by one host for one plugin at a time (pulled
//! when the previous one is settled); `queue` events of one
//! plugin in flight across all hosts (the consumer's `max_ack_pending`);
//! the stream's own bounds in `backend::events`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::bus::{BusEvent, DeadLetter};
use super::delivery::{Settlement, gave_up};
use super::registry::Slot;
use super::{Host, HostInner};
use crate::backend::events::{
    ConsumerError, ConsumerSpec, EventConsumer, NatsEvents, Open, Received, SharedEvent,
};
use crate::services::events::EventsGrant;
use crate::services::events::validate_topic;

/// How soon a worker notices its plugin was paused, unloaded or
/// re-granted while no event comes.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// How long a worker waits before trying NATS again after a failure.
const RETRY_NATS: Duration = Duration::from_secs(1);

/// How often a worker checks that its consumer still has the filter and
/// order its plugin's grant asks for (another host may have reloaded the
/// plugin with another grant).
const AGREE_EVERY: Duration = Duration::from_secs(5);

/// Stores `event` on the deployment's stream.
pub(super) async fn publish(shared: &NatsEvents, event: &BusEvent) -> Result<(), String> {
    shared
        .publish(&SharedEvent {
            topic: event.topic.clone(),
            payload: event.payload.clone(),
            source: event.source.clone(),
            hops: event.hops,
            traceparent: event.traceparent.clone(),
        })
        .await
}

/// Adds `letter` to the deployment's dead letters; a failure is logged
/// (the host keeps its own record).
pub(super) async fn record_dead_letter(shared: &NatsEvents, letter: &DeadLetter) {
    // JSON writes a payload as numbers, up to four bytes a byte: keep what
    // fits in one message of the stream.
    let room = shared.max_event() / 5;
    let mut shorter;
    let letter = if letter.event.payload.len() > room {
        shorter = letter.clone();
        shorter.event.payload.truncate(room);
        shorter.payload_truncated = true;
        &shorter
    } else {
        letter
    };
    let json = match serde_json::to_vec(letter) {
        Ok(json) => json,
        Err(err) => {
            tracing::warn!(%err, "a dead letter could not be encoded");
            return;
        }
    };
    if let Err(err) = shared.dead_letter(&letter.subscriber, json).await {
        tracing::warn!(
            subscriber = %crate::text::log_field(&letter.subscriber),
            err = %crate::text::for_log(&err, 256),
            "a dead letter was kept on this host only: NATS did not store it"
        );
    }
}

/// The deployment's dead letters, oldest first.
pub(super) async fn dead_letters(shared: &NatsEvents) -> Result<Vec<DeadLetter>, String> {
    let letters = shared.dead_letters().await?;
    Ok(letters
        .iter()
        .filter_map(|json| serde_json::from_slice(json).ok())
        .collect())
}

/// Opens the plugin's consumer as loading it would, so a host whose grant
/// disagrees with the other hosts' (or that cannot reach NATS) refuses the
/// plugin instead of loading one that never gets events.
pub(super) async fn check_consumer(
    shared: &NatsEvents,
    plugin: &str,
    events: &EventsGrant,
    options: &crate::limits::BusOptions,
    open: Open,
) -> Result<(), crate::error::LoadFailure> {
    let Some(filter) = filter_of(events) else {
        return Ok(());
    };
    let spec = ConsumerSpec {
        plugin: plugin.to_owned(),
        filter,
        ack_wait: options.ack_wait,
        max_ack_pending: in_flight(events, options),
        ordered: events.ordered,
        open,
    };
    match shared.consumer(&spec).await {
        Ok(_) => Ok(()),
        Err(ConsumerError::Conflict(reason)) => Err(crate::error::LoadFailure::Config(reason)),
        Err(ConsumerError::Unavailable(reason)) => Err(crate::error::LoadFailure::Unavailable(
            format!("the plugin's event consumer: {reason}"),
        )),
    }
}

/// Events of a plugin granted `events` in flight across all hosts: one when
/// it takes them in order (NATS then hands out the next only once it is
/// settled, and redelivers a retried one before any later one), else the
/// bus's `queue`.
fn in_flight(events: &EventsGrant, options: &crate::limits::BusOptions) -> usize {
    if events.ordered { 1 } else { options.queue }
}

/// The consumer filter for a plugin granted `events`: `None` without a
/// subscription; its pattern when there is one; every event when there are
/// several (NATS 2.9 filters on one subject; the worker skips what the
/// grant does not match).
fn filter_of(events: &EventsGrant) -> Option<Option<String>> {
    match events.subscribe.as_slice() {
        [] => None,
        [one] => Some(Some(one.to_string())),
        _ => Some(None),
    }
}

/// Pulls one plugin's events from its consumer, one at a time, and
/// delivers them, until the plugin is unloaded (or loaded again: a new
/// worker serves the new slot) or the host stops. Holds the host only while
/// delivering, never while waiting for NATS.
pub(super) async fn deliver_loop(host: Weak<HostInner>, slot: Weak<Slot>, shared: Arc<NatsEvents>) {
    // The consumer's filter and in-flight bound, and the consumer while the
    // plugin takes events.
    let mut consumer: Option<(ConsumerShape, EventConsumer)> = None;
    let mut outage = Outage::default();
    let mut checked = Instant::now();
    loop {
        let Some((name, filter, max_ack_pending, ordered)) = current(&host, &slot) else {
            return;
        };
        // Paused, or not granted any topic (a reload may grant one): pull
        // nothing, so other hosts take the events.
        let Some(filter) = filter else {
            tokio::time::sleep(CHECK_EVERY).await;
            continue;
        };
        let wanted = (filter, max_ack_pending, ordered);
        if consumer.as_ref().map(|(current, _)| current) != Some(&wanted) {
            consumer = None;
            let ack_wait = host
                .upgrade()
                .map_or(Duration::from_secs(30), |inner| inner.bus.options.ack_wait);
            let spec = ConsumerSpec {
                plugin: name.to_string(),
                filter: wanted.0.clone(),
                ack_wait,
                max_ack_pending,
                ordered,
                open: Open::Use,
            };
            match shared.consumer(&spec).await {
                Ok(opened) => consumer = Some((wanted, opened)),
                Err(reason) => {
                    let reason = reason.to_string();
                    outage.failed(&name, "cannot open its event consumer", &reason);
                    tokio::time::sleep(RETRY_NATS).await;
                    continue;
                }
            }
        }
        if checked.elapsed() >= AGREE_EVERY
            && let Some(((filter, _, _), pulling)) = &mut consumer
        {
            checked = Instant::now();
            if let Ok(false) = pulling.agrees(filter.as_deref(), ordered).await {
                // Reconfigured by another host's reload: take no events
                // under a grant this host's policy does not give, and say
                // why (opening it again reports the conflict until the
                // grants agree).
                tracing::error!(
                    plugin = %name,
                    "another host changed this plugin's event consumer (its topics or order): \
                     this host takes none of its events until its own grant matches"
                );
                consumer = None;
                continue;
            }
        }
        let Some((_, pulling)) = &consumer else {
            continue;
        };
        let received = match pulling.next(CHECK_EVERY).await {
            Ok(Some(received)) => received,
            // Nothing came: look at the plugin's state again.
            Ok(None) => continue,
            Err(reason) => {
                outage.failed(&name, "cannot pull its events", &reason);
                tokio::time::sleep(RETRY_NATS).await;
                continue;
            }
        };
        outage.recovered(&name);
        let ack_wait = pulling.ack_wait();
        let running = match (host.upgrade(), slot.upgrade()) {
            (Some(inner), Some(slot)) if !inner.stopped.load(Ordering::Acquire) => {
                Some((Host { inner }, slot))
            }
            _ => None,
        };
        let Some((host, slot)) = running else {
            // Unloaded or stopped: hand the event back at once.
            let _ = received.nak(Duration::ZERO).await;
            return;
        };
        host.deliver_shared(&slot, received, ack_wait).await;
    }
}

/// A consumer's filter, in-flight bound and order, as a worker opened it.
type ConsumerShape = (Option<String>, usize, bool);

/// What a worker needs of its plugin now.
type Wanted = (Arc<str>, Option<Option<String>>, usize, bool);

/// The plugin's name, the consumer filter it needs now (`None` when it
/// takes no events now), the consumer's in-flight bound and whether it is
/// ordered; `None` once the slot is gone or replaced, or the host stopped.
fn current(host: &Weak<HostInner>, slot: &Weak<Slot>) -> Option<Wanted> {
    let inner = host.upgrade()?;
    if inner.stopped.load(Ordering::Acquire) {
        return None;
    }
    let slot = slot.upgrade()?;
    let host = Host { inner };
    // Unloaded, or unloaded and loaded again: the new slot has its worker.
    if !host
        .slot(&slot.name)
        .is_some_and(|now| Arc::ptr_eq(&now, &slot))
    {
        return None;
    }
    let events = &slot.current().grants.events;
    let filter = if slot.paused.load(Ordering::Acquire) {
        None
    } else {
        filter_of(events)
    };
    let in_flight = in_flight(events, &host.inner.bus.options);
    Some((Arc::clone(&slot.name), filter, in_flight, events.ordered))
}

/// Logs a NATS outage once when it starts and once when it ends, not on
/// every retry.
#[derive(Default)]
struct Outage {
    since: Option<Instant>,
}

impl Outage {
    fn failed(&mut self, plugin: &str, what: &str, reason: &str) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::warn!(
                plugin,
                reason = %crate::text::for_log(reason, 256),
                "{what}; retrying until NATS answers"
            );
        }
    }

    fn recovered(&mut self, plugin: &str) {
        if let Some(since) = self.since.take() {
            tracing::info!(plugin, after = ?since.elapsed(), "event delivery resumed");
        }
    }
}

impl Host {
    /// Delivers one event pulled from NATS and settles it.
    async fn deliver_shared(&self, slot: &Arc<Slot>, received: Received, ack_wait: Duration) {
        let name = slot.name.to_string();
        let options = &self.inner.bus.options;
        let attempt = received.delivered;
        let event = BusEvent {
            topic: received.event.topic.clone(),
            payload: received.event.payload.clone(),
            source: received.event.source.clone(),
            hops: received.event.hops,
            traceparent: received.event.traceparent.clone(),
        };
        if validate_topic(&event.topic).is_err() {
            let reason = "not a topic (published to NATS by something other than Capsule?)";
            self.give_up(&name, &received, event, reason.into()).await;
            return;
        }
        if !slot.current().grants.events.may_receive(&event.topic) {
            // The consumer takes every event for a plugin granted several
            // patterns; this one is not for it.
            settled(&name, "ack", received.ack().await);
            return;
        }
        if attempt > options.max_attempts {
            // Deliveries that were never settled: hosts died, or lost NATS,
            // while handling it.
            let reason = gave_up(options.max_attempts, "no host settled the delivery in time");
            self.give_up(&name, &received, event, reason).await;
            return;
        }
        let settlement = {
            let handling = self.handle_event(slot, &event, attempt);
            tokio::pin!(handling);
            let mut ticks = tokio::time::interval(ack_wait / 3);
            ticks.tick().await;
            loop {
                tokio::select! {
                    settlement = &mut handling => break settlement,
                    _ = ticks.tick() => {
                        let _ = received.progress().await;
                    }
                }
            }
        };
        match settlement {
            Settlement::Done => settled(&name, "ack", received.ack().await),
            Settlement::Retry { delay, reason } => {
                if attempt >= options.max_attempts {
                    let reason = gave_up(options.max_attempts, &reason);
                    self.give_up(&name, &received, event, reason).await;
                } else {
                    let delay = delay.min(options.max_retry_delay);
                    settled(&name, "nak", received.nak(delay).await);
                }
            }
            Settlement::DeadLetter(reason) => {
                self.give_up(&name, &received, event, reason).await;
            }
        }
    }

    /// Records a dead letter for the deployment, then stops redelivery.
    async fn give_up(&self, name: &str, received: &Received, event: BusEvent, reason: String) {
        self.inner.dispatch.metrics.event(name, "dead_letter");
        self.record_dead_letter(name.to_owned(), event, reason, received.delivered)
            .await;
        settled(name, "term", received.term().await);
    }
}

/// Logs a settlement NATS did not take: the event comes back after
/// `ack_wait` (at least once, never lost).
fn settled(plugin: &str, how: &str, result: Result<(), String>) {
    if let Err(err) = result {
        tracing::warn!(
            plugin,
            how,
            err = %crate::text::for_log(&err, 256),
            "an event could not be settled; NATS will deliver it again"
        );
    }
}
