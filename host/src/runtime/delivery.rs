//! Event delivery: publishing onto the bus, one worker per plugin draining
//! its queue into `on-event`, and what each outcome leads to.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use super::bus::{BusEvent, DeadLetter, Delivery};
use super::registry::Slot;
use super::{Host, HostInner};
use crate::contract::{Event, EventOutcome};
use crate::error::CallFailure;
use crate::services::events::{TopicPattern, validate_topic};

/// The source name of events the embedder publishes.
const HOST_SOURCE: &str = "host";

impl Host {
    /// Publishes an event from the embedder. It reaches every plugin granted
    /// a matching `events.subscribe` pattern and every embedder subscription.
    /// Waits while a subscriber's queue is full (back-pressure), up to the
    /// bus's queue timeout. Returns how many subscribers took it.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<usize, String> {
        validate_topic(topic)?;
        Ok(self.publish_from(HOST_SOURCE, topic, payload.into()).await)
    }

    /// Subscribes the embedder to topics matching `pattern` (`orders.*`,
    /// `audit.>`). The receiver is bounded; a subscriber that stops reading
    /// makes publishers wait, then turns events into dead letters.
    pub fn subscribe(&self, pattern: &str) -> Result<mpsc::Receiver<BusEvent>, String> {
        Ok(self.inner.bus.subscribe(TopicPattern::parse(pattern)?))
    }

    /// Events that could not be delivered (rejected, retried too often,
    /// forwarded without permission, stuck behind a full queue), oldest
    /// first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.bus.dead_letters()
    }

    /// Puts an event on the bus: into the queue of every plugin whose
    /// current grant lets it receive the topic, and to embedder subscribers.
    pub(crate) async fn publish_from(&self, source: &str, topic: &str, payload: Vec<u8>) -> usize {
        let event = BusEvent {
            topic: topic.to_owned(),
            payload,
            source: source.to_owned(),
        };
        let mut delivered = 0;
        for slot in self.slots() {
            if !slot.current().grants.events.may_receive(topic) {
                continue;
            }
            let delivery = Delivery {
                event: event.clone(),
                attempt: 1,
            };
            match slot
                .queue
                .send_timeout(delivery, self.inner.bus.options.queue_timeout)
                .await
            {
                Ok(()) => delivered += 1,
                Err(_) => self.inner.bus.dead_letter(
                    slot.name.to_string(),
                    event.clone(),
                    "the plugin's event queue stayed full".into(),
                    0,
                ),
            }
        }
        delivered + self.inner.bus.deliver_external(&event).await
    }

    /// Starts the worker that delivers a plugin's queued events, if it has
    /// not started yet. It stops when the plugin is unloaded.
    pub(crate) fn start_delivery(&self, slot: &Arc<Slot>) {
        let Some(receiver) = slot
            .queue_receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let host = Arc::downgrade(&self.inner);
        let name = Arc::clone(&slot.name);
        tokio::spawn(deliver_loop(host, name, receiver));
    }
}

async fn deliver_loop(
    host: Weak<HostInner>,
    name: Arc<str>,
    mut receiver: mpsc::Receiver<Delivery>,
) {
    while let Some(delivery) = receiver.recv().await {
        let Some(inner) = host.upgrade() else { return };
        let host = Host { inner };
        let Some(slot) = host.slot(&name) else { return };
        host.deliver_one(&slot, delivery).await;
    }
}

impl Host {
    async fn deliver_one(&self, slot: &Arc<Slot>, delivery: Delivery) {
        let name = slot.name.to_string();
        let bus = &self.inner.bus;
        let plugin = slot.current();
        // The grant may have changed with a reload since the event was queued.
        if !plugin.grants.events.may_receive(&delivery.event.topic) {
            bus.dead_letter(
                name.clone(),
                delivery.event,
                "the plugin is no longer granted this topic".into(),
                delivery.attempt - 1,
            );
            self.inner.metrics.event(&name, "dead_letter");
            return;
        }
        // A paused plugin keeps its events until it is resumed.
        while slot.paused.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.slot(&name).is_none() {
                return;
            }
        }
        let event = Event {
            topic: delivery.event.topic.clone(),
            payload: delivery.event.payload.clone(),
            metadata: vec![
                ("source".into(), delivery.event.source.clone()),
                ("attempt".into(), delivery.attempt.to_string()),
            ],
        };
        let (outcome, published) = plugin.deliver(event).await;
        match outcome {
            Ok(EventOutcome::Ack) => {
                self.inner.metrics.event(&name, "ack");
                for event in published {
                    self.publish_from(&name, &event.topic, event.payload).await;
                }
            }
            Ok(EventOutcome::RetryAfter(millis)) => {
                self.inner.metrics.event(&name, "retry");
                self.retry(
                    slot,
                    delivery,
                    Duration::from_millis(u64::from(millis)),
                    "the plugin asked to retry",
                );
            }
            Ok(EventOutcome::Reject(reason)) => {
                self.inner.metrics.event(&name, "reject");
                bus.dead_letter(
                    name,
                    delivery.event,
                    format!("rejected: {reason}"),
                    delivery.attempt,
                );
            }
            Ok(EventOutcome::Forward(forward)) => {
                if validate_topic(&forward.topic).is_ok()
                    && plugin.grants.events.may_publish(&forward.topic)
                {
                    self.inner.metrics.event(&name, "forward");
                    self.publish_from(&name, &forward.topic, forward.payload)
                        .await;
                } else {
                    self.inner.metrics.event(&name, "dead_letter");
                    bus.dead_letter(
                        name,
                        delivery.event,
                        format!("forwarding to `{}` was not granted", forward.topic),
                        delivery.attempt,
                    );
                }
            }
            Err(failure) => {
                self.inner.metrics.event(&name, "error");
                let backoff = Duration::from_millis(50 << delivery.attempt.min(6));
                let reason = match &failure {
                    CallFailure::Plugin(_) => format!("on-event failed: {failure}"),
                    other => format!("on-event stopped: {other}"),
                };
                self.retry(slot, delivery, backoff, &reason);
            }
        }
    }

    /// Redelivers after `delay`, unless the event has used up its attempts.
    fn retry(&self, slot: &Arc<Slot>, delivery: Delivery, delay: Duration, reason: &str) {
        let max = self.inner.bus.options.max_attempts;
        if delivery.attempt >= max {
            self.inner.metrics.event(&slot.name, "dead_letter");
            self.inner.bus.dead_letter(
                slot.name.to_string(),
                delivery.event,
                format!("gave up after {max} attempts; last: {reason}"),
                delivery.attempt,
            );
            return;
        }
        let queue = slot.queue.clone();
        let next = Delivery {
            event: delivery.event,
            attempt: delivery.attempt + 1,
        };
        // Sleeping in a task of its own keeps later events flowing meanwhile.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = queue.send(next).await;
        });
    }
}
