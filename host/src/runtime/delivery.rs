//! Event delivery: publishing onto the bus, one worker per plugin draining
//! its queue into `on-event`, and what each outcome leads to. The budgets
//! are described in [`super::bus`].

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::bus::{BusEvent, DeadLetter, Delivery, Subscription};
use super::queue::Receiver;
use super::registry::Slot;
use super::{Host, HostInner};
use crate::contract::{Event, EventOutcome};
use crate::error::CallFailure;
use crate::services::events::{TopicPattern, validate_topic};

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
    /// bus's queue timeout. Returns how many subscribers took it.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<usize, String> {
        validate_topic(topic)?;
        let event = BusEvent {
            topic: topic.to_owned(),
            payload: payload.into(),
            source: HOST_SOURCE.to_owned(),
            hops: 0,
        };
        Ok(self.publish_event(event, Publisher::Host).await)
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
    /// hops), oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.bus.dead_letters()
    }

    /// Puts an event on the bus: into the queue of every plugin whose
    /// current grant lets it receive the topic, and to embedder subscribers.
    /// An event past the hop limit becomes a dead letter instead.
    pub(crate) async fn publish_event(&self, event: BusEvent, publisher: Publisher) -> usize {
        let bus = &self.inner.bus;
        if event.hops > bus.options.max_hops {
            self.inner
                .dispatch
                .metrics
                .event(&event.source, "dead_letter");
            bus.dead_letter(
                event.source.clone(),
                event,
                format!(
                    "hop limit reached: {} plugins in a row published in reaction to each \
                     other's events (a loop?)",
                    bus.options.max_hops
                ),
                0,
            );
            return 0;
        }
        let deadline = match publisher {
            Publisher::Host => Some(Instant::now() + bus.options.queue_timeout),
            Publisher::Plugin => None,
        };
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
        delivered + bus.deliver_external(&event, deadline).await
    }

    /// Starts the worker that delivers a plugin's queued events, if it has
    /// not started yet. It stops when the plugin is unloaded.
    pub(crate) fn start_delivery(&self, slot: &Arc<Slot>) {
        let Some(receiver) = slot.queue.take_receiver() else {
            return;
        };
        let host = Arc::downgrade(&self.inner);
        let name = Arc::clone(&slot.name);
        tokio::spawn(deliver_loop(host, name, receiver));
    }
}

/// Delivers one plugin's events in order. Events waiting for a retry are
/// parked here, not in tasks of their own: each keeps its place in the
/// plugin's queue (so the queue's bound counts them) until it is done with.
async fn deliver_loop(host: Weak<HostInner>, name: Arc<str>, mut receiver: Receiver<BusEvent>) {
    let mut parked: BTreeMap<(Instant, u64), Delivery> = BTreeMap::new();
    let mut order = 0u64;
    loop {
        let next_retry = parked.keys().next().map(|(at, _)| *at);
        let delivery = tokio::select! {
            biased;
            () = sleep_until(next_retry) => {
                parked.pop_first().map(|(_, delivery)| delivery)
            }
            received = receiver.recv() => match received {
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
        let Some(slot) = host.slot(&name) else { return };
        if let Some((at, retry)) = host.deliver_one(&slot, delivery).await {
            order += 1;
            parked.insert((at, order), retry);
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

impl Host {
    /// Delivers one event to its plugin. Returns the delivery again, with
    /// when to retry it, if it is to be retried.
    async fn deliver_one(
        &self,
        slot: &Arc<Slot>,
        delivery: Delivery,
    ) -> Option<(Instant, Delivery)> {
        let name = slot.name.to_string();
        let bus = &self.inner.bus;
        let plugin = slot.current();
        // The grant may have changed with a reload since the event was queued.
        if !plugin.grants.events.may_receive(&delivery.event.topic) {
            self.dead_letter(
                &name,
                delivery,
                "the plugin is no longer granted this topic".into(),
            );
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
        let event = Event {
            topic: delivery.event.topic.clone(),
            payload: delivery.event.payload.clone(),
            metadata: vec![
                ("source".into(), delivery.event.source.clone()),
                ("attempt".into(), delivery.attempt.to_string()),
                ("hops".into(), delivery.event.hops.to_string()),
            ],
        };
        let delivered = plugin.deliver(event).await;
        // What this plugin publishes in reaction is one hop further along.
        let hops = delivery.event.hops.saturating_add(1);
        let publisher = Publisher::Plugin;
        let mut transaction = delivered.transaction;
        let outcome = match delivered.outcome {
            // Whatever `on-event` answered, its writes commit (a plugin
            // asking for a retry may count attempts); a trap or an error
            // discards them. Only an acknowledged delivery publishes what it
            // published: a forward publishes the forwarded event instead.
            Ok(outcome) => {
                if !matches!(outcome, EventOutcome::Ack) {
                    transaction.events.clear();
                }
                let wait = plugin.limits().timeout;
                match self.commit(&name, transaction, None, hops, wait).await {
                    Ok(_) => Ok(outcome),
                    Err(refused) => Err(refused.failure),
                }
            }
            Err(failure) => Err(failure),
        };
        match outcome {
            Ok(EventOutcome::Ack) => {
                self.inner.dispatch.metrics.event(&name, "ack");
                None
            }
            Ok(EventOutcome::RetryAfter(millis)) => {
                self.inner.dispatch.metrics.event(&name, "retry");
                let delay = Duration::from_millis(u64::from(millis));
                self.retry(slot, delivery, delay, "the plugin asked to retry")
            }
            Ok(EventOutcome::Reject(reason)) => {
                self.inner.dispatch.metrics.event(&name, "reject");
                let attempts = delivery.attempt;
                bus.dead_letter(
                    name,
                    delivery.event,
                    format!("rejected: {reason}"),
                    attempts,
                );
                None
            }
            Ok(EventOutcome::Forward(forward)) => {
                if validate_topic(&forward.topic).is_ok()
                    && plugin.grants.events.may_publish(&forward.topic)
                {
                    self.inner.dispatch.metrics.event(&name, "forward");
                    let event = BusEvent {
                        topic: forward.topic,
                        payload: forward.payload,
                        source: name.clone(),
                        hops,
                    };
                    self.publish_event(event, publisher).await;
                } else {
                    let reason = format!(
                        "forwarding to `{}` was not granted",
                        crate::text::for_log(&forward.topic, 255)
                    );
                    self.dead_letter(&name, delivery, reason);
                }
                None
            }
            Err(failure) => {
                self.inner.dispatch.metrics.event(&name, "error");
                let backoff = Duration::from_millis(50 << delivery.attempt.min(6));
                let reason = match &failure {
                    CallFailure::Plugin(_) => format!("on-event failed: {failure}"),
                    other => format!("on-event stopped: {other}"),
                };
                self.retry(slot, delivery, backoff, &reason)
            }
        }
    }

    fn dead_letter(&self, plugin: &str, delivery: Delivery, reason: String) {
        self.inner.dispatch.metrics.event(plugin, "dead_letter");
        let attempts = delivery.attempt;
        self.inner
            .bus
            .dead_letter(plugin.to_owned(), delivery.event, reason, attempts);
    }

    /// When to deliver again (after `delay`, at most the bus's
    /// `max_retry_delay`), unless the event has used up its attempts.
    fn retry(
        &self,
        slot: &Arc<Slot>,
        delivery: Delivery,
        delay: Duration,
        reason: &str,
    ) -> Option<(Instant, Delivery)> {
        let options = &self.inner.bus.options;
        if delivery.attempt >= options.max_attempts {
            let max = options.max_attempts;
            self.dead_letter(
                &slot.name,
                delivery,
                format!("gave up after {max} attempts; last: {reason}"),
            );
            return None;
        }
        let delay = delay.min(options.max_retry_delay);
        let next = Delivery {
            attempt: delivery.attempt + 1,
            ..delivery
        };
        Some((Instant::now() + delay, next))
    }
}
