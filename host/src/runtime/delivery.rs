//! Event delivery: publishing onto the bus, one worker per plugin draining
//! its queue into `on-event`, and what each outcome leads to. The budgets
//! are described in [`super::bus`].

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::bus::{BusEvent, DeadLetter, Delivery, Subscription};
use super::commit::{Exclusive, MAX_ATTEMPTS};
use super::queue::Receiver;
use super::registry::Slot;
use super::{Host, HostInner};
use crate::contract::{Event, EventOutcome};
use crate::error::CallFailure;
use crate::services::events::{TopicPattern, validate_topic};
use crate::telemetry::{self, Span, SpanKind, TRACEPARENT, TraceParent, Value};

/// The source name of events the embedder publishes.
const HOST_SOURCE: &str = "host";

/// Who is publishing, which decides whether publishing may wait for room.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Publisher {
    /// The embedder: waits up to the bus's `queue_timeout` per subscriber
    /// (back-pressure is the embedder's choice).
    Host,
    /// A plugin's call or event delivery: never waits. A slow subscriber
    /// must not slow down its publishers' calls, nor a delivery worker wait
    /// on its own queue; what does not fit now is a dead letter.
    Plugin,
}

impl Host {
    /// Publishes an event from the embedder. It reaches every plugin granted
    /// a matching `events.subscribe` pattern and every embedder subscription.
    /// Waits while a subscriber's queue is full (back-pressure), up to the
    /// bus's queue timeout. Returns how many subscribers took it; with the
    /// NATS backend, 1 once the deployment's stream stored it (whichever
    /// plugins, on whichever hosts, then take it), plus this host's
    /// embedder subscriptions. An error names an invalid topic or, with
    /// NATS, an event the stream did not store.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<usize, String> {
        validate_topic(topic)?;
        let event = BusEvent {
            topic: topic.to_owned(),
            payload: payload.into(),
            source: HOST_SOURCE.to_owned(),
            hops: 0,
            traceparent: None,
        };
        self.publish_event(event, Publisher::Host).await
    }

    /// Subscribes the embedder to topics matching `pattern` (`orders.*`,
    /// `audit.>`). The subscription's queue has the bus's bounds; a
    /// subscriber that stops reading makes publishers wait, then turns
    /// events into dead letters.
    pub fn subscribe(&self, pattern: &str) -> Result<Subscription, String> {
        Ok(self.inner.bus.subscribe(TopicPattern::parse(pattern)?))
    }

    /// Events that could not be delivered (rejected, retried too often,
    /// forwarded without permission, stuck behind a full queue, too many
    /// hops) on this host, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.bus.dead_letters()
    }

    /// The dead letters of the whole deployment, oldest first: with the
    /// NATS backend those every host recorded (read from NATS, so an
    /// operator asks any host), otherwise this host's.
    pub async fn deployment_dead_letters(&self) -> Result<Vec<DeadLetter>, String> {
        #[cfg(feature = "nats")]
        if let Some(shared) = &self.inner.shared_events {
            return super::shared_bus::dead_letters(shared).await;
        }
        Ok(self.dead_letters())
    }

    /// Puts an event on the bus: into the queue of every plugin whose
    /// current grant lets it receive the topic (with the NATS backend: onto
    /// the deployment's stream, from which every host's plugins take it),
    /// and to this host's embedder subscribers. Returns how many took it;
    /// an error only when the shared stream did not store it. An event past
    /// the hop limit becomes a dead letter instead.
    pub(crate) async fn publish_event(
        &self,
        event: BusEvent,
        publisher: Publisher,
    ) -> Result<usize, String> {
        let bus = &self.inner.bus;
        if event.hops > bus.options.max_hops {
            self.inner
                .dispatch
                .metrics
                .event(&event.source, "dead_letter");
            let reason = format!(
                "hop limit reached: {} plugins in a row published in reaction to each other's \
                 events (a loop?)",
                bus.options.max_hops
            );
            self.record_dead_letter(event.source.clone(), event, reason, 0)
                .await;
            return Ok(0);
        }
        let deadline = match publisher {
            Publisher::Host => Some(Instant::now() + bus.options.queue_timeout),
            Publisher::Plugin => None,
        };
        #[cfg(feature = "nats")]
        if let Some(shared) = &self.inner.shared_events {
            super::shared_bus::publish(shared, &event).await?;
            return Ok(1 + bus.deliver_external(&event, deadline).await);
        }
        let cost = event.cost();
        let mut delivered = 0;
        for slot in self.slots() {
            if !slot.current().grants.events.may_receive(&event.topic) {
                continue;
            }
            let queued = match deadline {
                Some(deadline) => slot.queue.push_until(event.clone(), cost, deadline).await,
                None => slot.queue.try_push(event.clone(), cost),
            };
            match queued {
                Ok(()) => delivered += 1,
                Err(refused) => {
                    self.inner.dispatch.metrics.event(&slot.name, "dead_letter");
                    bus.dead_letter(
                        slot.name.to_string(),
                        event.clone(),
                        format!("not queued: {}", bus.refusal(refused)),
                        0,
                    );
                }
            }
        }
        Ok(delivered + bus.deliver_external(&event, deadline).await)
    }

    /// Records a dead letter on this host and, with the NATS backend, in the
    /// deployment's dead-letter stream (a failure there is logged: the
    /// local record stays).
    pub(crate) async fn record_dead_letter(
        &self,
        subscriber: String,
        event: BusEvent,
        reason: String,
        attempts: u32,
    ) {
        let letter = self
            .inner
            .bus
            .dead_letter(subscriber, event, reason, attempts);
        #[cfg(feature = "nats")]
        if let Some(shared) = &self.inner.shared_events {
            super::shared_bus::record_dead_letter(shared, &letter).await;
        }
        let _ = letter;
    }

    /// Starts the worker that delivers a plugin's queued events, if it has
    /// not started yet. It stops when the plugin is unloaded.
    pub(crate) fn start_delivery(&self, slot: &Arc<Slot>) {
        let Some(receiver) = slot.queue.take_receiver() else {
            return;
        };
        let host = Arc::downgrade(&self.inner);
        #[cfg(feature = "nats")]
        if let Some(shared) = &self.inner.shared_events {
            tokio::spawn(super::shared_bus::deliver_loop(
                host,
                Arc::downgrade(slot),
                Arc::clone(shared),
            ));
            return;
        }
        tokio::spawn(deliver_loop(host, Arc::downgrade(slot), receiver));
    }
}

/// Delivers one plugin's events in order. Events waiting for a retry are
/// parked here, not in tasks of their own: each keeps its place in the
/// plugin's queue (so the queue's bound counts them) until it is done with.
/// A plugin granted `ordered` takes no new event while one is parked. Ends
/// when the plugin is unloaded (its events go with it), also when a plugin
/// of the same name is loaded again meanwhile (it has a worker of its own).
async fn deliver_loop(host: Weak<HostInner>, slot: Weak<Slot>, mut receiver: Receiver<BusEvent>) {
    let mut parked: BTreeMap<(Instant, u64), Delivery> = BTreeMap::new();
    let mut order = 0u64;
    loop {
        let next_retry = parked.keys().next().map(|(at, _)| *at);
        let hold = !parked.is_empty() && ordered(&slot);
        let delivery = tokio::select! {
            biased;
            () = sleep_until(next_retry) => {
                parked.pop_first().map(|(_, delivery)| delivery)
            }
            received = receiver.recv(), if !hold => match received {
                Some((event, room)) => Some(Delivery { event, attempt: 1, _room: room }),
                None => return,
            },
        };
        let Some(delivery) = delivery else { continue };
        let Some(inner) = host.upgrade() else { return };
        if inner.stopped.load(Ordering::Acquire) {
            // Shut down: queued events go with the host.
            return;
        }
        let host = Host { inner };
        let Some(slot) = slot.upgrade() else { return };
        if !host
            .slot(&slot.name)
            .is_some_and(|now| Arc::ptr_eq(&now, &slot))
        {
            return;
        }
        if let Some((at, retry)) = host.deliver_one(&slot, delivery).await {
            order += 1;
            parked.insert((at, order), retry);
        }
    }
}

/// Whether the plugin is granted its events in order now.
fn ordered(slot: &Weak<Slot>) -> bool {
    slot.upgrade()
        .is_some_and(|slot| slot.current().grants.events.ordered)
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// What becomes of one delivery, whichever bus carried it.
#[derive(Debug)]
pub(crate) enum Settlement {
    /// Handled (acknowledged, or forwarded): done with.
    Done,
    /// To be delivered again after `delay`, unless attempts are used up.
    Retry { delay: Duration, reason: String },
    /// Given up on: becomes a dead letter.
    DeadLetter(String),
}

impl Host {
    /// Delivers one event from this host's in-process bus. Returns the
    /// delivery again, with when to retry it, if it is to be retried.
    async fn deliver_one(
        &self,
        slot: &Arc<Slot>,
        delivery: Delivery,
    ) -> Option<(Instant, Delivery)> {
        let name = slot.name.to_string();
        // The grant may have changed with a reload since the event was queued.
        if !slot
            .current()
            .grants
            .events
            .may_receive(&delivery.event.topic)
        {
            let reason = "the plugin is no longer granted this topic".into();
            self.dead_letter(&name, delivery, reason).await;
            return None;
        }
        // A paused plugin keeps its events until it is resumed.
        while slot.paused.load(Ordering::Acquire) {
            if self.inner.stopped.load(Ordering::Acquire) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Unloaded while paused: the event goes with it.
            self.slot(&name)?;
        }
        match self
            .handle_event(slot, &delivery.event, delivery.attempt)
            .await
        {
            Settlement::Done => None,
            Settlement::Retry { delay, reason } => {
                let options = &self.inner.bus.options;
                if delivery.attempt >= options.max_attempts {
                    let reason = gave_up(options.max_attempts, &reason);
                    self.dead_letter(&name, delivery, reason).await;
                    return None;
                }
                let delay = delay.min(options.max_retry_delay);
                let next = Delivery {
                    attempt: delivery.attempt + 1,
                    ..delivery
                };
                Some((Instant::now() + delay, next))
            }
            Settlement::DeadLetter(reason) => {
                self.dead_letter(&name, delivery, reason).await;
                None
            }
        }
    }

    /// Runs `on-event` for `event` (its `attempt`-th delivery), commits
    /// what it did, and says what becomes of the event. Shared by the
    /// in-process bus and the NATS one: only how they keep and settle
    /// events differs.
    pub(crate) async fn handle_event(
        &self,
        slot: &Arc<Slot>,
        event: &BusEvent,
        attempt: u32,
    ) -> Settlement {
        // The publisher's span, if the event names a well-formed one (an
        // event from NATS may come from anyone).
        let parent = event.traceparent.as_deref().and_then(TraceParent::parse);
        let mut traced = self.tracer().map(|tracing| {
            let mut span = tracing.span(
                format!("deliver {}", slot.name),
                SpanKind::Consumer,
                parent,
                true,
            );
            if span.recording() {
                span.set("capsule.plugin", Value::from(&*slot.name));
                span.set(
                    "capsule.topic",
                    Value::from(telemetry::bounded(&event.topic)),
                );
                span.set(
                    "capsule.source",
                    Value::from(telemetry::bounded(&event.source)),
                );
                span.set("capsule.attempt", Value::from(u64::from(attempt)));
                span.set("capsule.hops", Value::from(u64::from(event.hops)));
            }
            span
        });
        let span = traced.as_ref().map(Span::context);
        let settlement = self
            .handle_event_in(slot, event, attempt, span.or(parent), span)
            .await;
        if let Some(span) = &mut traced {
            match &settlement {
                Settlement::Done => span.set("capsule.outcome", Value::from("done")),
                Settlement::Retry { reason, .. } => {
                    span.set("capsule.outcome", Value::from("retry"));
                    span.fail(telemetry::bounded(reason));
                }
                Settlement::DeadLetter(reason) => {
                    span.set("capsule.outcome", Value::from("dead_letter"));
                    span.fail(telemetry::bounded(reason));
                }
            }
        }
        settlement
    }

    /// [`Host::handle_event`] within the delivery's span (`span`, when the
    /// host traces), whose `traceparent` (or the publisher's) the plugin
    /// sees.
    async fn handle_event_in(
        &self,
        slot: &Arc<Slot>,
        event: &BusEvent,
        attempt: u32,
        traceparent: Option<TraceParent>,
        span: Option<TraceParent>,
    ) -> Settlement {
        let name = slot.name.to_string();
        let plugin = slot.current();
        let mut metadata = vec![
            ("source".into(), event.source.clone()),
            ("attempt".into(), attempt.to_string()),
            ("hops".into(), event.hops.to_string()),
        ];
        if let Some(traceparent) = traceparent {
            metadata.push((TRACEPARENT.into(), traceparent.to_string()));
        }
        let on_event = Event {
            topic: event.topic.clone(),
            payload: event.payload.clone(),
            metadata,
        };
        // What this plugin publishes in reaction is one hop further along.
        let hops = event.hops.saturating_add(1);
        let store = &self.inner.loader.services.kv_store;
        // A delivery that loses to a concurrent commit (another host's
        // delivery of the same plugin, or a call) runs again like a call
        // does, holding the namespaces' gates, without using up one of the
        // event's attempts.
        let runs = MAX_ATTEMPTS + 2 * u32::from(store.shared());
        let mut held: Option<Exclusive> = None;
        let mut run = 1;
        let outcome = loop {
            let delivered = plugin.deliver(on_event.clone(), span).await;
            let mut transaction = delivered.transaction;
            match delivered.outcome {
                // Whatever `on-event` answered, its writes commit (a plugin
                // asking for a retry may count attempts); a trap or an error
                // discards them. Only an acknowledged delivery publishes
                // what it published: a forward publishes the forwarded
                // event instead.
                Ok(outcome) => {
                    if !matches!(outcome, EventOutcome::Ack) {
                        transaction.events.clear();
                    }
                    let wait = plugin.limits().timeout;
                    let gated = held.as_ref().map(|held| held.holder);
                    match self.commit(&name, transaction, gated, hops, wait).await {
                        Ok(_) => break Ok(outcome),
                        Err(refused) => match refused.conflict {
                            Some(namespaces) if run < runs && !refused.escaped => {
                                match &mut held {
                                    None => {
                                        held =
                                            Some(self.inner.commits.exclusive(&namespaces).await);
                                    }
                                    Some(held) => {
                                        held.hold_in_store(store, &namespaces, wait).await;
                                    }
                                }
                                run += 1;
                            }
                            _ => break Err(refused.failure),
                        },
                    }
                }
                Err(failure) => break Err(failure),
            }
        };
        drop(held);
        let metrics = &self.inner.dispatch.metrics;
        match outcome {
            Ok(EventOutcome::Ack) => {
                metrics.event(&name, "ack");
                Settlement::Done
            }
            Ok(EventOutcome::RetryAfter(millis)) => {
                metrics.event(&name, "retry");
                Settlement::Retry {
                    delay: Duration::from_millis(u64::from(millis)),
                    reason: "the plugin asked to retry".into(),
                }
            }
            Ok(EventOutcome::Reject(reason)) => {
                metrics.event(&name, "reject");
                Settlement::DeadLetter(format!("rejected: {reason}"))
            }
            Ok(EventOutcome::Forward(forward)) => {
                if validate_topic(&forward.topic).is_err()
                    || !plugin.grants.events.may_publish(&forward.topic)
                {
                    let message = format!(
                        "forwarding to `{}` was not granted",
                        crate::text::for_log(&forward.topic, 255)
                    );
                    plugin.grants.denials.record("events", &message);
                    return Settlement::DeadLetter(message);
                }
                let forwarded = BusEvent {
                    topic: forward.topic,
                    payload: forward.payload,
                    source: name.clone(),
                    hops,
                    traceparent: traceparent.map(|span| span.to_string()),
                };
                match self.publish_event(forwarded, Publisher::Plugin).await {
                    Ok(_) => {
                        metrics.event(&name, "forward");
                        Settlement::Done
                    }
                    Err(reason) => {
                        metrics.event(&name, "error");
                        Settlement::Retry {
                            delay: backoff(attempt),
                            reason: format!("the forwarded event was not stored: {reason}"),
                        }
                    }
                }
            }
            Err(failure) => {
                metrics.event(&name, "error");
                let reason = match &failure {
                    CallFailure::Plugin(_) => format!("on-event failed: {failure}"),
                    other => format!("on-event stopped: {other}"),
                };
                Settlement::Retry {
                    delay: backoff(attempt),
                    reason,
                }
            }
        }
    }

    async fn dead_letter(&self, plugin: &str, delivery: Delivery, reason: String) {
        self.inner.dispatch.metrics.event(plugin, "dead_letter");
        let attempts = delivery.attempt;
        self.record_dead_letter(plugin.to_owned(), delivery.event, reason, attempts)
            .await;
    }
}

/// How long to wait before delivering again an event whose handler failed.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50 << attempt.min(6))
}

/// The reason of an event given up on after `attempts`.
pub(crate) fn gave_up(attempts: u32, last: &str) -> String {
    format!("gave up after {attempts} attempts; last: {last}")
}
