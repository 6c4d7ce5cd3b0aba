//! The in-process event bus. Events published by plugins (on topics they were
//! granted) or by the embedder are delivered to every plugin whose
//! `events.subscribe` grant matches, through its `on-event` export, one at a
//! time per plugin, from a bounded queue. Outcomes: `ack`; `retry-after`
//! (redelivered after the delay, up to a bounded number of attempts);
//! `reject` (recorded as a dead letter); `forward` (re-published to another
//! topic if the plugin may publish there). Embedders may subscribe too.
//!
//! Budgets (all in [`BusOptions`]): every subscriber's queue is bounded in
//! events and bytes, and events parked for a retry keep their place in it;
//! an event carries a hop count, so a chain of plugins reacting to each
//! other's events ends in a dead letter after `max_hops`; a plugin's
//! `retry-after` is clamped to `max_retry_delay`; publishing that a plugin
//! causes never waits for room (a slow subscriber must not slow its
//! publishers down): what does not fit is a dead letter; dead letters are bounded in count and bytes, with
//! their reasons truncated, and the host log shows only a bounded number of
//! them per second.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub use crate::limits::BusOptions;

use serde::{Deserialize, Serialize};

use super::queue::{BoundedQueue, Receiver, Refused, Room};
use crate::services::events::TopicPattern;

/// An event on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusEvent {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Who published it: a plugin's name, or `host` for the embedder.
    pub source: String,
    /// How many plugins published or forwarded it in reaction to an earlier
    /// event: 0 for an event published by the embedder or by a plugin's
    /// call, one more for every delivery in between.
    pub hops: u32,
    /// The W3C `traceparent` of the span that published it, when the host
    /// traces: its deliveries' spans are that span's children.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Bytes every event costs in a queue on top of its topic, source and
/// payload.
const EVENT_OVERHEAD: usize = 64;

impl BusEvent {
    /// What the event costs in a queue's byte budget.
    pub(crate) fn cost(&self) -> usize {
        self.topic.len()
            + self.source.len()
            + self.payload.len()
            + self.traceparent.as_ref().map_or(0, String::len)
            + EVENT_OVERHEAD
    }
}

/// An event that could not be delivered, kept for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The plugin it was for (or the embedder subscription's pattern).
    pub subscriber: String,
    /// The event (its payload truncated if `payload_truncated`).
    pub event: BusEvent,
    /// Whether only the start of the payload was kept.
    pub payload_truncated: bool,
    /// Why it was given up on (at most [`DeadLetter::MAX_REASON_BYTES`]).
    pub reason: String,
    /// How many deliveries were attempted.
    pub attempts: u32,
    /// When it was given up on.
    pub at: SystemTime,
}

/// Dead letters the host log shows per second; the rest are counted and
/// reported as one line.
const DEAD_LETTER_LOGS_PER_SECOND: u32 = 10;

impl DeadLetter {
    /// Longest reason kept, in bytes (cut on a character boundary, with an
    /// ellipsis).
    pub const MAX_REASON_BYTES: usize = 512;

    fn cost(&self) -> usize {
        self.event.cost() + self.subscriber.len() + self.reason.len()
    }
}

/// One event on its way to one plugin.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) event: BusEvent,
    pub(crate) attempt: u32,
    /// The event's place in the plugin's queue, held until it is done with.
    pub(crate) _room: Room,
}

/// A plugin's queue of deliveries.
pub(crate) type DeliveryQueue = BoundedQueue<BusEvent>;

/// The embedder's end of a subscription made with [`crate::Host::subscribe`].
/// Its queue has the bus's bounds; a subscriber that stops reading makes
/// publishers wait (no longer than their deadline), then turns events into
/// dead letters.
pub struct Subscription {
    receiver: Receiver<BusEvent>,
}

impl Subscription {
    /// The next event, or `None` once the host is gone.
    pub async fn recv(&mut self) -> Option<BusEvent> {
        self.receiver.recv().await.map(|(event, _room)| event)
    }

    /// The next event if one is waiting now.
    pub fn try_recv(&mut self) -> Option<BusEvent> {
        self.receiver.try_recv().map(|(event, _room)| event)
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// An embedder's subscription.
struct External {
    pattern: TopicPattern,
    queue: Arc<BoundedQueue<BusEvent>>,
    /// Dropped with the [`Subscription`]'s receiver: the queue is then
    /// closed and the subscription removed.
    alive: std::sync::Weak<()>,
}

/// Kept dead letters and their byte total.
#[derive(Default)]
struct DeadLetters {
    letters: VecDeque<DeadLetter>,
    bytes: usize,
}

/// How many dead letters were logged in the current second.
struct LogWindow {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

/// Subscriptions of the embedder and the dead-letter record; plugin
/// subscriptions live with the plugins.
pub(crate) struct Bus {
    pub(crate) options: BusOptions,
    external: Mutex<Vec<External>>,
    dead: Mutex<DeadLetters>,
    log_window: Mutex<LogWindow>,
}

impl Bus {
    pub(crate) fn new(options: BusOptions) -> Bus {
        Bus {
            options,
            external: Mutex::new(Vec::new()),
            dead: Mutex::new(DeadLetters::default()),
            log_window: Mutex::new(LogWindow {
                started: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// A queue with the bus's bounds.
    pub(crate) fn queue(&self) -> DeliveryQueue {
        BoundedQueue::new(self.options.queue, self.options.queue_bytes)
    }

    /// Adds an embedder subscription.
    pub(crate) fn subscribe(&self, pattern: TopicPattern) -> Subscription {
        let queue = Arc::new(self.queue());
        let receiver = queue.take_receiver().expect("a new queue has its receiver");
        let alive = Arc::new(());
        let mut external = self.external.lock().unwrap_or_else(|p| p.into_inner());
        external.push(External {
            pattern,
            queue,
            alive: Arc::downgrade(&alive),
        });
        // The receiver keeps `alive` so the bus can tell when the embedder
        // dropped its end.
        Subscription {
            receiver: receiver.with_token(alive),
        }
    }

    /// Hands `event` to every matching embedder subscription, waiting for
    /// room until `deadline` (not at all without one); returns how many
    /// took it.
    pub(crate) async fn deliver_external(
        &self,
        event: &BusEvent,
        deadline: Option<Instant>,
    ) -> usize {
        let targets: Vec<(String, Arc<BoundedQueue<BusEvent>>)> = {
            let mut external = self.external.lock().unwrap_or_else(|p| p.into_inner());
            external.retain(|sub| sub.alive.strong_count() > 0);
            external
                .iter()
                .filter(|sub| sub.pattern.matches(&event.topic))
                .map(|sub| (sub.pattern.to_string(), Arc::clone(&sub.queue)))
                .collect()
        };
        let mut delivered = 0;
        for (pattern, queue) in targets {
            let queued = match deadline {
                Some(deadline) => {
                    queue
                        .push_until(event.clone(), event.cost(), deadline)
                        .await
                }
                None => queue.try_push(event.clone(), event.cost()),
            };
            match queued {
                Ok(()) => delivered += 1,
                Err(refused) => {
                    let (count, bytes) = queue.capacity();
                    self.dead_letter(
                        format!("subscription {pattern}"),
                        event.clone(),
                        refused.reason(count, bytes),
                        0,
                    );
                }
            }
        }
        delivered
    }

    /// Records an event that will not be delivered, within the dead-letter
    /// budgets, and returns the letter as kept.
    pub(crate) fn dead_letter(
        &self,
        subscriber: String,
        mut event: BusEvent,
        reason: String,
        attempts: u32,
    ) -> DeadLetter {
        self.log_dead_letter(&subscriber, &event.topic, &reason);
        let max_payload = self.options.dead_letter_bytes / 8;
        let payload_truncated = event.payload.len() > max_payload;
        if payload_truncated {
            event.payload.truncate(max_payload);
            event.payload.shrink_to_fit();
        }
        let letter = DeadLetter {
            subscriber,
            event,
            payload_truncated,
            reason: truncate(reason, DeadLetter::MAX_REASON_BYTES),
            attempts,
            at: SystemTime::now(),
        };
        let cost = letter.cost();
        let mut dead = self.dead.lock().unwrap_or_else(|p| p.into_inner());
        while !dead.letters.is_empty()
            && (dead.letters.len() >= self.options.dead_letters.max(1)
                || dead.bytes + cost > self.options.dead_letter_bytes)
        {
            if let Some(oldest) = dead.letters.pop_front() {
                dead.bytes -= oldest.cost();
            }
        }
        dead.bytes += cost;
        dead.letters.push_back(letter.clone());
        letter
    }

    /// Logs a dead letter, escaped and truncated, at most
    /// [`DEAD_LETTER_LOGS_PER_SECOND`] a second: a plugin that makes
    /// thousands of them must not flood the host's log.
    fn log_dead_letter(&self, subscriber: &str, topic: &str, reason: &str) {
        let mut window = self.log_window.lock().unwrap_or_else(|p| p.into_inner());
        if window.started.elapsed() >= Duration::from_secs(1) {
            if window.suppressed > 0 {
                tracing::warn!(
                    suppressed = window.suppressed,
                    "more dead letters in the last second (not logged one by one)"
                );
            }
            *window = LogWindow {
                started: Instant::now(),
                logged: 0,
                suppressed: 0,
            };
        }
        if window.logged >= DEAD_LETTER_LOGS_PER_SECOND {
            window.suppressed += 1;
            return;
        }
        window.logged += 1;
        tracing::warn!(
            subscriber = %crate::text::log_field(subscriber),
            topic = %crate::text::log_field(topic),
            reason = %crate::text::for_log(reason, 256),
            "dead letter"
        );
    }

    /// The dead letters kept, oldest first.
    pub(crate) fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .letters
            .iter()
            .cloned()
            .collect()
    }

    /// Why a push to a queue of this bus was refused, for a dead letter.
    pub(crate) fn refusal(&self, refused: Refused) -> String {
        refused.reason(self.options.queue, self.options.queue_bytes)
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text.shrink_to_fit();
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: usize) -> BusEvent {
        BusEvent {
            topic: "t".into(),
            payload: vec![b'x'; payload],
            source: "s".into(),
            hops: 0,
            traceparent: None,
        }
    }

    #[test]
    fn dead_letters_are_bounded_in_count_and_bytes_with_reasons_truncated() {
        let bus = Bus::new(BusOptions {
            dead_letters: 100,
            dead_letter_bytes: 8 << 10,
            ..BusOptions::default()
        });
        for _ in 0..50 {
            bus.dead_letter("p".into(), event(900), "r".repeat(10_000), 1);
        }
        let kept = bus.dead_letters();
        let bytes: usize = kept.iter().map(DeadLetter::cost).sum();
        assert!(bytes <= 8 << 10, "{bytes}");
        assert!(!kept.is_empty() && kept.len() < 50);
        assert!(
            kept.iter()
                .all(|d| d.reason.len() <= DeadLetter::MAX_REASON_BYTES + 3)
        );

        // One event larger than an eighth of the budget is kept truncated.
        bus.dead_letter("p".into(), event(1 << 20), "big".into(), 1);
        let last = bus.dead_letters().pop().unwrap();
        assert!(last.payload_truncated);
        assert_eq!(last.event.payload.len(), 1 << 10);

        let counted = Bus::new(BusOptions {
            dead_letters: 3,
            ..BusOptions::default()
        });
        for _ in 0..10 {
            counted.dead_letter("p".into(), event(1), "r".into(), 1);
        }
        assert_eq!(counted.dead_letters().len(), 3);
    }
}
