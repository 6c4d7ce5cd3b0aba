//! The deployment's events and dead letters in NATS JetStream: what lets an
//! event published on one host be handled by exactly one host's instance of
//! each subscribing plugin.
//!
//! - Stream `<prefix>-events`, subjects `<prefix>.events.<topic>`, interest
//!   retention: an event is kept until every subscribing plugin's consumer
//!   has acknowledged (or terminated) it, and one no plugin subscribes to is
//!   not kept at all. Bounded by [`EVENTS_STREAM_BYTES`] and
//!   [`EVENTS_MAX_AGE`]; a publish that does not fit is refused (never an
//!   old event dropped to make room).
//! - One durable pull consumer per subscribing plugin, shared by every host
//!   that loads it: each host pulls from it, so each event goes to one host.
//!   Explicit acks after the handler returned; at most `max_ack_pending`
//!   events of one plugin in flight across all hosts (back-pressure).
//! - Stream `<prefix>-dead`: dead letters, bounded in count and bytes (the
//!   oldest dropped first), readable from any host.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;

use super::{NatsConnection, nats_event_subjects};

/// Bytes of events the deployment's stream holds; a publish past it is
/// refused with a typed error.
pub(crate) const EVENTS_STREAM_BYTES: i64 = 1 << 30;

/// How long an event no consumer has settled is kept.
pub(crate) const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a plugin's consumer outlives the last host pulling from it.
pub(crate) const CONSUMER_INACTIVE: Duration = Duration::from_secs(24 * 3600);

/// Who published an event.
const SOURCE: &str = "Capsule-Source";
/// How many plugins reacted to each other's events before this one.
const HOPS: &str = "Capsule-Hops";
/// Header carrying the publishing span's W3C trace context.
const TRACEPARENT: &str = "traceparent";

/// An event as the shared stream carries it.
#[derive(Debug, Clone)]
pub(crate) struct SharedEvent {
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) source: String,
    pub(crate) hops: u32,
    /// The W3C `traceparent` of the span that published it.
    pub(crate) traceparent: Option<String>,
}

/// The deployment's event and dead-letter streams.
pub(crate) struct NatsEvents {
    connection: Arc<NatsConnection>,
    events: stream::Stream,
    dead: stream::Stream,
    /// `<prefix>.events.`
    subjects: String,
    /// Bytes one event may have on the stream (payload, topic, headers).
    max_event: usize,
}

impl std::fmt::Debug for NatsEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsEvents")
            .field("subjects", &self.subjects)
            .finish_non_exhaustive()
    }
}

/// What a host asks of one plugin's consumer.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerSpec {
    /// The plugin.
    pub(crate) plugin: String,
    /// The topic pattern the consumer filters on (`orders.>`), or `None`
    /// for every event (a plugin granted several patterns: NATS 2.9 filters
    /// a consumer on one subject, so the host filters the rest).
    pub(crate) filter: Option<String>,
    /// How long an event may stay unacknowledged (the handler sends
    /// progress while it runs) before NATS gives it to another host.
    pub(crate) ack_wait: Duration,
    /// Events of this plugin in flight across all hosts (1 when ordered).
    pub(crate) max_ack_pending: usize,
    /// Whether the plugin takes its events strictly in order.
    pub(crate) ordered: bool,
    /// What this host may do to a consumer that exists with another filter
    /// or order.
    pub(crate) open: Open,
}

/// What opening a plugin's consumer may do to one that exists with another
/// filter or order (hosts must agree on both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Open {
    /// A host loading the plugin: change it only when no host uses it (no
    /// event in flight or waiting, and no host pulling).
    Load,
    /// This host reloading the plugin with another grant: change it unless
    /// events are in flight or waiting (this host's own pulls do not
    /// count); hosts still on the old grant notice and stop taking events.
    Reload,
    /// A worker taking events: never change it; a difference is a conflict.
    Use,
}

/// The consumer description that marks ordered delivery (explicit: a
/// `queue` of 1 also means one event in flight without asking for order).
const ORDERED: &str = "capsule: ordered";
const UNORDERED: &str = "capsule: unordered";

/// Whether an existing consumer delivers in order, by its mark (consumers
/// made before the mark: by its in-flight bound).
fn is_ordered(config: &consumer::Config) -> bool {
    match config.description.as_deref() {
        Some(ORDERED) => true,
        Some(UNORDERED) => false,
        _ => config.max_ack_pending == 1,
    }
}

fn described(filter: &str, ordered: bool) -> String {
    format!("`{filter}`{}", if ordered { " in order" } else { "" })
}

impl NatsEvents {
    /// Opens (creating if needed) the deployment's event and dead-letter
    /// streams. Blocks: the host is being built.
    pub(crate) fn open(
        connection: Arc<NatsConnection>,
        max_event: usize,
        dead_letters: usize,
        dead_letter_bytes: usize,
    ) -> Result<NatsEvents, String> {
        let prefix = connection.prefix().to_owned();
        let subjects = nats_event_subjects(&prefix);
        let replicas = connection.options.replicas;
        let max_event = max_event.min(connection.max_payload());
        let events_config = stream::Config {
            name: format!("{prefix}-events"),
            subjects: vec![format!("{subjects}>")],
            retention: stream::RetentionPolicy::Interest,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            max_bytes: EVENTS_STREAM_BYTES,
            max_age: EVENTS_MAX_AGE,
            max_message_size: i32::try_from(max_event).unwrap_or(i32::MAX),
            num_replicas: replicas,
            ..Default::default()
        };
        let dead_config = stream::Config {
            name: format!("{prefix}-dead"),
            subjects: vec![format!("{prefix}.dead.>")],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            max_messages: i64::try_from(dead_letters.max(1)).unwrap_or(i64::MAX),
            max_bytes: i64::try_from(dead_letter_bytes.max(1024)).unwrap_or(i64::MAX),
            num_replicas: replicas,
            ..Default::default()
        };
        let jetstream = connection.jetstream.clone();
        let (events, dead) = connection
            .run(async move {
                let events = jetstream
                    .get_or_create_stream(events_config)
                    .await
                    .map_err(|err| format!("event stream: {err}"))?;
                let dead = jetstream
                    .get_or_create_stream(dead_config)
                    .await
                    .map_err(|err| format!("dead-letter stream: {err}"))?;
                Ok::<_, String>((events, dead))
            })
            .ok_or("the connection's runtime has stopped")??;
        Ok(NatsEvents {
            connection,
            events,
            dead,
            subjects,
            max_event,
        })
    }

    /// The largest event the stream takes, in bytes as [`event_size`]
    /// counts them.
    pub(crate) fn max_event(&self) -> usize {
        self.max_event
    }

    /// Stores `event` on the deployment's stream; returns once JetStream
    /// acknowledged it (an event is never reported published that NATS did
    /// not store).
    pub(crate) async fn publish(&self, event: &SharedEvent) -> Result<(), String> {
        let size = event_size(&event.topic, &event.payload);
        if size > self.max_event {
            return Err(format!(
                "an event of {size} bytes is larger than the shared event stream takes ({} bytes)",
                self.max_event
            ));
        }
        let subject = format!("{}{}", self.subjects, event.topic);
        let mut headers = HeaderMap::new();
        headers.insert(SOURCE, event.source.as_str());
        headers.insert(HOPS, event.hops.to_string().as_str());
        if let Some(traceparent) = &event.traceparent {
            headers.insert(TRACEPARENT, traceparent.as_str());
        }
        let payload = event.payload.clone();
        let jetstream = self.connection.jetstream.clone();
        self.connection
            .spawn(async move {
                let ack = jetstream
                    .publish_with_headers(subject, headers, payload.into())
                    .await
                    .map_err(|err| err.to_string())?;
                ack.await.map(drop).map_err(|err| err.to_string())
            })
            .await
            .ok_or("the NATS connection's runtime has stopped")?
            .map_err(|err| format!("the event stream did not store the event: {err}"))
    }

    /// The consumer of one plugin, created if missing. A consumer that
    /// exists with another filter (hosts whose policies grant the plugin
    /// different topics) is replaced when no host is using it, and refused
    /// otherwise.
    pub(crate) async fn consumer(
        &self,
        spec: &ConsumerSpec,
    ) -> Result<EventConsumer, ConsumerError> {
        let durable = durable_name(&spec.plugin);
        let filter = format!("{}{}", self.subjects, spec.filter.as_deref().unwrap_or(">"));
        let config = pull::Config {
            durable_name: Some(durable.clone()),
            description: Some(if spec.ordered { ORDERED } else { UNORDERED }.into()),
            filter_subject: filter.clone(),
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            // Attempts are counted by the host from the delivery count.
            max_deliver: -1,
            // A plugin no host has pulled for this long (unloaded or
            // renamed everywhere) stops holding events in the stream.
            inactive_threshold: CONSUMER_INACTIVE,
            max_ack_pending: i64::try_from(spec.max_ack_pending).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let stream = self.events.clone();
        let plugin = spec.plugin.clone();
        let (ordered, open) = (spec.ordered, spec.open);
        let consumer = self
            .connection
            .spawn(async move {
                let existing = stream.consumer_info(&durable).await.ok();
                let Some(info) = existing.filter(|info| {
                    info.config.filter_subject != filter || is_ordered(&info.config) != ordered
                }) else {
                    return stream
                        .get_or_create_consumer::<pull::Config>(&durable, config)
                        .await
                        .map_err(|err| ConsumerError::Unavailable(err.to_string()));
                };
                let theirs = described(&info.config.filter_subject, is_ordered(&info.config));
                let ours = described(&filter, ordered);
                let in_use = info.num_ack_pending > 0
                    || info.num_pending > 0
                    || (open == Open::Load && info.num_waiting > 0);
                if open == Open::Use || in_use {
                    return Err(ConsumerError::Conflict(format!(
                        "`{plugin}` takes events on {theirs} in this deployment (on another \
                         host, or they wait for it), and this host's policy grants it {ours}: \
                         give every host the same events grant (subscribe, ordered) for it"
                    )));
                }
                tracing::warn!(
                    plugin,
                    old = theirs,
                    new = ours,
                    "changing the idle event consumer whose filter or order differs"
                );
                if info.config.filter_subject == filter {
                    // Only the order differs: changed in place, so no event
                    // published meanwhile misses the consumer.
                    return stream
                        .create_consumer(config)
                        .await
                        .map_err(|err| ConsumerError::Unavailable(err.to_string()));
                }
                stream
                    .delete_consumer(&durable)
                    .await
                    .map_err(|err| ConsumerError::Unavailable(err.to_string()))?;
                stream
                    .get_or_create_consumer::<pull::Config>(&durable, config)
                    .await
                    .map_err(|err| ConsumerError::Unavailable(err.to_string()))
            })
            .await
            .ok_or_else(|| {
                ConsumerError::Unavailable("the NATS connection's runtime has stopped".into())
            })??;
        Ok(EventConsumer {
            connection: Arc::clone(&self.connection),
            consumer,
            subjects: self.subjects.clone(),
        })
    }

    /// Records a dead letter (its JSON form) for `plugin`, readable from
    /// every host.
    pub(crate) async fn dead_letter(&self, plugin: &str, letter: Vec<u8>) -> Result<(), String> {
        let subject = format!("{}.dead.{}", self.connection.prefix(), durable_name(plugin));
        let jetstream = self.connection.jetstream.clone();
        self.connection
            .spawn(async move {
                let ack = jetstream
                    .publish(subject, letter.into())
                    .await
                    .map_err(|err| err.to_string())?;
                ack.await.map(drop).map_err(|err| err.to_string())
            })
            .await
            .ok_or("the NATS connection's runtime has stopped")?
    }

    /// The deployment's dead letters (their JSON forms), oldest first; at
    /// most what the stream keeps.
    pub(crate) async fn dead_letters(&self) -> Result<Vec<Vec<u8>>, String> {
        let mut stream = self.dead.clone();
        self.connection
            .spawn(async move {
                let state = stream
                    .info()
                    .await
                    .map_err(|err| err.to_string())?
                    .state
                    .clone();
                let mut letters = Vec::new();
                if state.messages == 0 {
                    return Ok(letters);
                }
                for sequence in state.first_sequence..=state.last_sequence {
                    match stream.get_raw_message(sequence).await {
                        Ok(message) => letters.push(message.payload.to_vec()),
                        // Dropped as the oldest since the info was taken.
                        Err(err)
                            if matches!(
                                err.kind(),
                                stream::RawMessageErrorKind::NoMessageFound
                            ) =>
                        {
                            continue;
                        }
                        Err(err) => return Err(err.to_string()),
                    }
                }
                Ok(letters)
            })
            .await
            .ok_or("the NATS connection's runtime has stopped")?
    }
}

/// Why a plugin's consumer could not be opened.
#[derive(Debug)]
pub(crate) enum ConsumerError {
    /// Another host uses it with a different filter.
    Conflict(String),
    /// NATS did not answer.
    Unavailable(String),
}

impl std::fmt::Display for ConsumerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsumerError::Conflict(reason) | ConsumerError::Unavailable(reason) => {
                f.write_str(reason)
            }
        }
    }
}

/// What an event costs on the stream: its payload, its subject and room
/// for the headers.
pub(crate) fn event_size(topic: &str, payload: &[u8]) -> usize {
    payload.len() + topic.len() + 256
}

/// A consumer name for `plugin`: plugin names may hold `.`, which consumer
/// names may not, and never hold `~`, so the mapping stays one to one.
fn durable_name(plugin: &str) -> String {
    plugin.replace('.', "~")
}

/// One plugin's consumer, as this host pulls from it.
pub(crate) struct EventConsumer {
    connection: Arc<NatsConnection>,
    consumer: consumer::Consumer<pull::Config>,
    subjects: String,
}

impl EventConsumer {
    /// Whether the consumer still filters on `filter` (a topic pattern, or
    /// `None` for every event) with the order `ordered`: another host may
    /// have changed it by reloading the plugin with another grant.
    pub(crate) async fn agrees(
        &mut self,
        filter: Option<&str>,
        ordered: bool,
    ) -> Result<bool, String> {
        let wanted = format!("{}{}", self.subjects, filter.unwrap_or(">"));
        let mut consumer = self.consumer.clone();
        let info = self
            .connection
            .spawn(async move { consumer.info().await.map(|info| info.config.clone()) })
            .await
            .ok_or("the NATS connection's runtime has stopped")?
            .map_err(|err| err.to_string())?;
        Ok(info.filter_subject == wanted && is_ordered(&info) == ordered)
    }

    /// The consumer's `ack_wait` as NATS keeps it (an existing consumer
    /// keeps the one it was created with).
    pub(crate) fn ack_wait(&self) -> Duration {
        self.consumer.cached_info().config.ack_wait
    }

    /// Waits up to `wait` for the next event. One event at a time: an
    /// event this host holds is one it is handling (and telling NATS so),
    /// never one waiting behind others while its `ack_wait` runs out.
    pub(crate) async fn next(&self, wait: Duration) -> Result<Option<Received>, String> {
        let consumer = self.consumer.clone();
        let message = self
            .connection
            .spawn(async move {
                let mut batch = consumer
                    .batch()
                    .max_messages(1)
                    .expires(wait)
                    .messages()
                    .await
                    .map_err(|err| err.to_string())?;
                match batch.next().await {
                    Some(Ok(message)) => Ok(Some(message)),
                    Some(Err(err)) => Err(err.to_string()),
                    None => Ok(None),
                }
            })
            .await
            .ok_or("the NATS connection's runtime has stopped")??;
        Ok(message.map(|message| received(&self.connection, &self.subjects, message)))
    }
}

fn received(
    connection: &Arc<NatsConnection>,
    subjects: &str,
    message: jetstream::Message,
) -> Received {
    let headers = message.headers.as_ref();
    let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let topic = message
        .subject
        .as_str()
        .strip_prefix(subjects)
        .unwrap_or_default()
        .to_owned();
    let event = SharedEvent {
        topic,
        payload: message.payload.to_vec(),
        source: header(SOURCE).unwrap_or("nats").to_owned(),
        hops: header(HOPS).and_then(|h| h.parse().ok()).unwrap_or(0),
        // Anyone may publish to the stream: only a well-formed value is kept.
        traceparent: header(TRACEPARENT)
            .and_then(crate::telemetry::TraceParent::parse)
            .map(|parent| parent.to_string()),
    };
    let delivered = message
        .info()
        .map(|info| u32::try_from(info.delivered).unwrap_or(u32::MAX))
        .unwrap_or(1);
    Received {
        event,
        delivered,
        connection: Arc::clone(connection),
        message: Arc::new(message),
    }
}

/// An event pulled by this host, to be settled exactly once.
pub(crate) struct Received {
    pub(crate) event: SharedEvent,
    /// Which delivery of the event this is (1 for the first), across hosts.
    pub(crate) delivered: u32,
    connection: Arc<NatsConnection>,
    message: Arc<jetstream::Message>,
}

impl Received {
    /// Acknowledges the event. Not confirmed: an acknowledgement lost with
    /// the connection only means the event comes again (at least once),
    /// and waiting for a confirmation would halve a consumer's rate.
    pub(crate) async fn ack(&self) -> Result<(), String> {
        self.settle(AckKind::Ack).await
    }

    /// Hands the event back for another delivery after `delay` (to any host).
    pub(crate) async fn nak(&self, delay: Duration) -> Result<(), String> {
        self.settle(AckKind::Nak(Some(delay))).await
    }

    /// Stops redelivery (the event became a dead letter).
    pub(crate) async fn term(&self) -> Result<(), String> {
        self.settle(AckKind::Term).await
    }

    /// Tells JetStream the handler is still working, restarting `ack_wait`.
    pub(crate) async fn progress(&self) -> Result<(), String> {
        self.settle(AckKind::Progress).await
    }

    async fn settle(&self, kind: AckKind) -> Result<(), String> {
        let message = Arc::clone(&self.message);
        self.connection
            .spawn(async move { message.ack_with(kind).await.map_err(|err| err.to_string()) })
            .await
            .ok_or("the NATS connection's runtime has stopped")?
    }
}
