//! The in-process event bus. Events published by plugins (on topics they were
//! granted) or by the embedder are delivered to every plugin whose
//! `events.subscribe` grant matches, through its `on-event` export, one at a
//! time per plugin, from a bounded queue. Outcomes: `ack`; `retry-after`
//! (redelivered after the delay, up to a bounded number of attempts);
//! `reject` (recorded as a dead letter); `forward` (re-published to another
//! topic if the plugin may publish there). Embedders may subscribe too.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::services::events::TopicPattern;

/// Bus settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusOptions {
    /// Events that may wait for one subscriber before publishers wait.
    pub queue: usize,
    /// How long a publisher waits for room in a full queue before the event
    /// becomes a dead letter for that subscriber.
    pub queue_timeout: Duration,
    /// Deliveries of one event to one plugin (retries included) before it
    /// becomes a dead letter.
    pub max_attempts: u32,
    /// Dead letters kept (oldest dropped first).
    pub dead_letters: usize,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            queue: 1024,
            queue_timeout: Duration::from_secs(5),
            max_attempts: 5,
            dead_letters: 1000,
        }
    }
}

/// An event on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BusEvent {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Who published it: a plugin's name, or `host` for the embedder.
    pub source: String,
}

/// An event that could not be delivered, kept for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The plugin it was for (or the embedder subscription's pattern).
    pub subscriber: String,
    /// The event.
    pub event: BusEvent,
    /// Why it was given up on.
    pub reason: String,
    /// How many deliveries were attempted.
    pub attempts: u32,
    /// When it was given up on.
    pub at: SystemTime,
}

/// One event on its way to one plugin.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) event: BusEvent,
    pub(crate) attempt: u32,
}

/// An embedder's subscription.
struct External {
    pattern: TopicPattern,
    sender: mpsc::Sender<BusEvent>,
}

/// Subscriptions of the embedder and the dead-letter record; plugin
/// subscriptions live with the plugins.
pub(crate) struct Bus {
    pub(crate) options: BusOptions,
    external: Mutex<Vec<External>>,
    dead: Mutex<VecDeque<DeadLetter>>,
}

impl Bus {
    pub(crate) fn new(options: BusOptions) -> Bus {
        Bus {
            options,
            external: Mutex::new(Vec::new()),
            dead: Mutex::new(VecDeque::new()),
        }
    }

    /// Adds an embedder subscription.
    pub(crate) fn subscribe(&self, pattern: TopicPattern) -> mpsc::Receiver<BusEvent> {
        let (sender, receiver) = mpsc::channel(self.options.queue.max(1));
        self.external
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(External { pattern, sender });
        receiver
    }

    /// Hands `event` to every matching embedder subscription; returns how
    /// many took it.
    pub(crate) async fn deliver_external(&self, event: &BusEvent) -> usize {
        let targets: Vec<(String, mpsc::Sender<BusEvent>)> = {
            let mut external = self.external.lock().unwrap_or_else(|p| p.into_inner());
            external.retain(|sub| !sub.sender.is_closed());
            external
                .iter()
                .filter(|sub| sub.pattern.matches(&event.topic))
                .map(|sub| (sub.pattern.to_string(), sub.sender.clone()))
                .collect()
        };
        let mut delivered = 0;
        for (pattern, sender) in targets {
            match sender
                .send_timeout(event.clone(), self.options.queue_timeout)
                .await
            {
                Ok(()) => delivered += 1,
                Err(_) => self.dead_letter(
                    format!("subscription {pattern}"),
                    event.clone(),
                    "the subscriber's queue stayed full".into(),
                    0,
                ),
            }
        }
        delivered
    }

    /// Records an event that will not be delivered.
    pub(crate) fn dead_letter(
        &self,
        subscriber: String,
        event: BusEvent,
        reason: String,
        attempts: u32,
    ) {
        tracing::warn!(subscriber = %subscriber, topic = %event.topic, reason = %reason, "dead letter");
        let mut dead = self.dead.lock().unwrap_or_else(|p| p.into_inner());
        if dead.len() >= self.options.dead_letters.max(1) {
            dead.pop_front();
        }
        dead.push_back(DeadLetter {
            subscriber,
            event,
            reason,
            attempts,
            at: SystemTime::now(),
        });
    }

    /// The dead letters kept, oldest first.
    pub(crate) fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
