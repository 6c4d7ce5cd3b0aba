//! The NATS backend: entries in one JetStream KV bucket, `<prefix>-kv`,
//! shared by every host of a deployment.
//!
//! Layout. A key is the subject `$KV.<prefix>-kv.<ns>.<key>` with the
//! namespace and the key each in lower-case hex: NATS subjects allow few
//! characters, and hex keeps byte order, so keys sort the same on both
//! backends. An entry's version is its JetStream sequence; its expiry rides
//! in a `Capsule-Expires` header (NATS 2.9 has no per-message TTL, so
//! Capsule enforces expiry: expired entries are invisible and swept). The
//! usage of a namespace, which quotas are checked against, is the record
//! `_usage.<ns>` in the same bucket.
//!
//! Guarantees, and where they differ from the embedded store (the table in
//! `docs/scaling.md` is the long form):
//! - Every write is a compare-and-swap on the key's last sequence
//!   (`Nats-Expected-Last-Subject-Sequence`; a delete removes the message
//!   by its sequence, which fails once a newer one replaced it, and leaves
//!   no marker): single-key operations are exactly as atomic as on the
//!   embedded store, across every host.
//! - A commit checks every key it read, writes its keys one by one, each
//!   conditional on the sequence it checked, then checks the keys it only
//!   read again (so two commits that each read what the other writes cannot
//!   both succeed). JetStream KV (2.9) has no multi-key write, so a commit
//!   is *not isolated*: while it is written, another call may read some of
//!   its writes and not the rest. If a key changed in between, the keys
//!   already written are put back and the commit reports a conflict; if
//!   they cannot be put back, or NATS did not acknowledge a write in time,
//!   it reports `unavailable` (never a conflict to rerun on top of) and its
//!   writes stay. A host dying in that window leaves them too.
//! - Usage is charged before the writes and given back only when they
//!   surely did not apply: the namespace may count fuller than it is,
//!   never emptier, so quotas hold.
//! - A value must fit in one NATS message (`max_payload`, 1 MiB by
//!   default) and a key in a subject (about 480 bytes): larger ones are
//!   refused with `quota-exceeded` before anything is written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{
    self, DeleteMessageErrorKind, LastRawMessageErrorKind, Stream,
};
use bytes::Bytes;
use futures_util::StreamExt as _;

use super::KvGrant;
use super::store::{
    Changes, CommitError, Decide, Entry, KvBackend, Write, account, check_quota, collect_within,
    now_ms, unavailable, version_of,
};
use crate::backend::connection::REQUEST_TIMEOUT;
use crate::backend::{NATS_MAX_SUBJECT, NatsConnection, nats_kv_subjects, nats_max_key_bytes};
use crate::contract::ServiceError;

const EXPECTED_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
const OPERATION: &str = "KV-Operation";
const EXPIRES: &str = "Capsule-Expires";
const MESSAGE_SIZE: &str = "Nats-Msg-Size";

/// Times one write retries when its key keeps changing under it.
const MAX_ATTEMPTS: usize = 64;
/// Most subjects one listing or sweep reads before it gives up.
const MAX_SCAN: u64 = 100_000;
/// Room left in a message for the headers next to a value.
const HEADER_ROOM: usize = 512;

/// The NATS JetStream KV backend.
pub(crate) struct NatsKv {
    connection: Arc<NatsConnection>,
    /// `$KV.<bucket>.`
    subjects: String,
    stream: Stream,
}

/// The last message on a key's subject.
#[derive(Debug, Clone, Default)]
struct Raw {
    /// Its sequence; 0 when the subject has none.
    sequence: u64,
    /// The value and expiry of a put; `None` for none or a delete marker.
    put: Option<(Bytes, Option<u64>)>,
}

impl Raw {
    /// What a reader sees now.
    fn live(&self, now: u64) -> Option<Entry> {
        let (value, expires_at) = self.put.as_ref()?;
        if expires_at.is_some_and(|at| at <= now) {
            return None;
        }
        Some(Entry {
            version: self.sequence,
            expires_at: *expires_at,
            value: value.to_vec(),
        })
    }

    /// Bytes of value stored (expired or not), for usage.
    fn stored(&self) -> Option<usize> {
        self.put.as_ref().map(|(value, _)| value.len())
    }

    /// The write that puts this state back.
    fn restore(&self) -> Write {
        match &self.put {
            Some((value, expires_at)) => Write::Put {
                value: value.to_vec(),
                expires_at: *expires_at,
            },
            None => Write::Delete,
        }
    }
}

/// How a conditional write ended.
enum Written {
    /// Stored at this sequence (0: a delete of nothing).
    At(u64),
    /// The key's last sequence was no longer the one expected: nothing
    /// was written.
    Stale,
    /// NATS did not say (the acknowledgement timed out): it may or may
    /// not have been stored.
    Unknown(ServiceError),
}

fn hex(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len() * 2);
    for byte in text.as_bytes() {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// The text `hex` encoded; `None` for anything else (a subject another
/// NATS client wrote may hold any bytes).
fn unhex(text: &str) -> Option<String> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = digits
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

fn header<'h>(headers: Option<&'h HeaderMap>, name: &str) -> Option<&'h str> {
    headers?.get(name).map(|value| value.as_str())
}

fn lost() -> ServiceError {
    unavailable("the NATS connection's runtime has stopped")
}

impl NatsKv {
    /// Opens (creating if needed) the deployment's bucket.
    pub(crate) fn open(connection: Arc<NatsConnection>) -> Result<NatsKv, String> {
        let prefix = connection.prefix().to_owned();
        let bucket = format!("{prefix}-kv");
        let jetstream = connection.jetstream.clone();
        let name = bucket.clone();
        // The stream a JetStream KV bucket is, made directly: the crate's
        // `create_key_value` reads account fields NATS 2.9 does not send.
        let config = stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("Capsule key-value entries".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_bytes: -1,
            max_messages: -1,
            max_message_size: -1,
            allow_rollup: true,
            // Deleting a key deletes its message (conditional on its
            // sequence), leaving no marker behind.
            deny_delete: false,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: connection.options.replicas,
            ..Default::default()
        };
        let stream = connection
            .run(async move { jetstream.get_or_create_stream(config).await })
            .ok_or("the connection's runtime has stopped")?
            .map_err(|err| format!("bucket {name}: {err}"))?;
        Ok(NatsKv {
            connection,
            subjects: nats_kv_subjects(&prefix),
            stream,
        })
    }

    /// The subject of `key`, refused when longer than [`NATS_MAX_SUBJECT`]: a
    /// subject past the server's control line limit would make it drop the
    /// connection every plugin shares.
    fn subject(&self, namespace: &str, key: &str) -> Result<String, ServiceError> {
        let subject = format!("{}{}.{}", self.subjects, hex(namespace), hex(key));
        if subject.len() > NATS_MAX_SUBJECT {
            return Err(ServiceError::QuotaExceeded(format!(
                "a key of {} bytes is longer than the NATS backend takes in this namespace \
                 ({} bytes)",
                key.len(),
                nats_max_key_bytes(self.connection.prefix(), namespace)
            )));
        }
        Ok(subject)
    }

    fn gate_subject(&self, namespace: &str) -> String {
        format!("{}_gate.{}", self.subjects, hex(namespace))
    }

    fn usage_subject(&self, namespace: &str) -> String {
        format!("{}_usage.{}", self.subjects, hex(namespace))
    }

    /// Fails at once while the client is reconnecting, instead of waiting
    /// out a request timeout that may be longer than the call's deadline.
    fn check_connected(&self) -> Result<(), ServiceError> {
        if self.connection.connected() {
            Ok(())
        } else {
            Err(unavailable(format!(
                "NATS at {} is not connected (reconnecting)",
                self.connection.options.url
            )))
        }
    }

    /// The last message on each of `subjects`, read concurrently.
    fn fetch(&self, subjects: Vec<String>) -> Result<Vec<Raw>, ServiceError> {
        self.check_connected()?;
        let stream = self.stream.clone();
        self.connection
            .run(async move {
                let reads = subjects.into_iter().map(|subject| {
                    let stream = stream.clone();
                    async move { fetch_one(&stream, &subject).await }
                });
                futures_util::future::join_all(reads)
                    .await
                    .into_iter()
                    .collect()
            })
            .ok_or_else(lost)?
    }

    fn fetch_one(&self, subject: String) -> Result<Raw, ServiceError> {
        Ok(self.fetch(vec![subject])?.remove(0))
    }

    /// Refuses a value that would not fit in one NATS message.
    fn check_payload(&self, write: &Write) -> Result<(), ServiceError> {
        let limit = self.connection.max_payload().saturating_sub(HEADER_ROOM);
        match write {
            Write::Put { value, .. } if value.len() > limit => {
                Err(ServiceError::QuotaExceeded(format!(
                    "a value of {} bytes is more than the NATS server takes in one message \
                     ({limit} bytes with headers: max_payload)",
                    value.len()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Writes `write` to `subject` if its last sequence is still
    /// `expected`. A delete removes the message itself (by its sequence,
    /// which fails once a newer one replaced it), so deleted keys leave no
    /// marker behind to pile up.
    fn write(
        &self,
        subject: String,
        write: &Write,
        expected: u64,
    ) -> Result<Written, ServiceError> {
        self.check_connected()?;
        self.check_payload(write)?;
        let (value, expires_at) = match write {
            Write::Put { value, expires_at } => (value, expires_at),
            Write::Delete if expected == 0 => return Ok(Written::At(0)),
            Write::Delete => {
                let stream = self.stream.clone();
                return self
                    .connection
                    .run(async move {
                        match stream.delete_message(expected).await {
                            Ok(_) => Ok(Written::At(0)),
                            Err(err) => match err.kind() {
                                DeleteMessageErrorKind::JetStream(js)
                                    if js.error_code() == ErrorCode::NO_MESSAGE_FOUND =>
                                {
                                    Ok(Written::Stale)
                                }
                                DeleteMessageErrorKind::TimedOut => {
                                    Ok(Written::Unknown(unavailable(err)))
                                }
                                _ => Err(unavailable(err)),
                            },
                        }
                    })
                    .ok_or_else(lost)?;
            }
        };
        let mut headers = HeaderMap::new();
        headers.insert(EXPECTED_SEQUENCE, expected.to_string().as_str());
        if let Some(at) = expires_at {
            headers.insert(EXPIRES, at.to_string().as_str());
        }
        let payload = Bytes::copy_from_slice(value);
        let jetstream = self.connection.jetstream.clone();
        self.connection
            .run(async move {
                let ack = jetstream
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(unavailable)?;
                match ack.await {
                    Ok(ack) => Ok(Written::At(ack.sequence)),
                    Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                        Ok(Written::Stale)
                    }
                    Err(err) if err.kind() == PublishErrorKind::TimedOut => {
                        Ok(Written::Unknown(unavailable(err)))
                    }
                    Err(err) => Err(unavailable(err)),
                }
            })
            .ok_or_else(lost)?
    }

    /// Adds `(keys, bytes)` to the namespace's usage, checking the quotas
    /// of `writers` when it grows.
    fn charge(
        &self,
        namespace: &str,
        delta: (i64, i64),
        writers: &[Arc<KvGrant>],
    ) -> Result<(), ServiceError> {
        if delta == (0, 0) {
            return Ok(());
        }
        let subject = self.usage_subject(namespace);
        for _ in 0..MAX_ATTEMPTS {
            let raw = self.fetch_one(subject.clone())?;
            let before = decode_usage(&raw);
            let after = (
                before.0.saturating_add_signed(delta.0),
                before.1.saturating_add_signed(delta.1),
            );
            if after.0 > before.0 || after.1 > before.1 {
                for writer in writers {
                    check_quota(writer, after)?;
                }
            }
            let mut value = after.0.to_le_bytes().to_vec();
            value.extend_from_slice(&after.1.to_le_bytes());
            let write = Write::Put {
                value,
                expires_at: None,
            };
            if let Written::At(_) = self.write(subject.clone(), &write, raw.sequence)? {
                return Ok(());
            }
        }
        Err(unavailable(format!(
            "the usage of namespace `{namespace}` kept changing"
        )))
    }

    /// Gives back a charge whose writes did not apply.
    fn refund(&self, namespace: &str, delta: (i64, i64)) {
        if let Err(err) = self.charge(namespace, (-delta.0, -delta.1), &[]) {
            tracing::warn!(namespace, error = %err, "kv usage could not be given back: the namespace counts as fuller than it is");
        }
    }

    /// Subjects under `filter` with their last message's headers, read
    /// without values; at most [`MAX_SCAN`].
    fn scan(&self, filter: String) -> Result<Vec<(String, u64, Option<HeaderMap>)>, ServiceError> {
        self.check_connected()?;
        let stream = self.stream.clone();
        let client = self.connection.client.clone();
        self.connection
            .run(async move {
                let consumer = stream
                    .create_consumer(OrderedConfig {
                        deliver_subject: client.new_inbox(),
                        filter_subject: filter,
                        headers_only: true,
                        deliver_policy: DeliverPolicy::LastPerSubject,
                        ..Default::default()
                    })
                    .await
                    .map_err(unavailable)?;
                let name = consumer.cached_info().name.clone();
                let found = read_scan(consumer).await;
                // Every listing makes a consumer on the server every host
                // shares: remove it now rather than let a plugin that lists
                // in a loop pile them up.
                let _ = stream.delete_consumer(&name).await;
                found
            })
            .ok_or_else(lost)?
    }

    /// The first key `changes` read (among those `which` picks) whose
    /// version is no longer the one read: as `found` says, or, given
    /// `again`, as NATS says now.
    fn changed_reads(
        &self,
        changes: &Changes,
        found: &std::collections::HashMap<(&str, &str), (&Raw, &String)>,
        which: impl Fn(&str, &str) -> bool,
        again: Option<&[String]>,
    ) -> Option<CommitError> {
        let mut picked = Vec::new();
        for (namespace, ns) in &changes.namespaces {
            for (key, seen) in &ns.reads {
                if which(namespace, key) {
                    picked.push((&**namespace, key.as_str(), *seen));
                }
            }
        }
        let current: Vec<Raw> = match again {
            None => picked
                .iter()
                .map(|(ns, key, _)| found[&(*ns, *key)].0.clone())
                .collect(),
            Some(_) if picked.is_empty() => Vec::new(),
            Some(_) => {
                let subjects = picked
                    .iter()
                    .map(|(ns, key, _)| found[&(*ns, *key)].1.clone())
                    .collect();
                match self.fetch(subjects) {
                    Ok(raws) => raws,
                    Err(err) => return Some(CommitError::Refused(err)),
                }
            }
        };
        let now = now_ms();
        picked
            .iter()
            .zip(&current)
            .find(|((_, _, seen), raw)| version_of(raw.live(now).as_ref()) != *seen)
            .map(|((namespace, key, _), _)| CommitError::Conflict {
                namespace: namespace.to_string(),
                key: key.to_string(),
            })
    }

    /// Puts back what `applied` overwrote, each only if nobody wrote the
    /// key since; returns whether all went back.
    fn undo(&self, applied: &[(String, u64, Raw)]) -> bool {
        let mut all = true;
        for (subject, sequence, before) in applied.iter().rev() {
            if !matches!(
                self.write(subject.clone(), &before.restore(), *sequence),
                Ok(Written::At(_))
            ) {
                all = false;
            }
        }
        all
    }
}

/// What an ordered, headers-only consumer delivers: each subject's last
/// message, at most [`MAX_SCAN`].
async fn read_scan(
    consumer: async_nats::jetstream::consumer::Consumer<OrderedConfig>,
) -> Result<Vec<(String, u64, Option<HeaderMap>)>, ServiceError> {
    let pending = consumer.cached_info().num_pending;
    if pending > MAX_SCAN {
        return Err(ServiceError::QuotaExceeded(format!(
            "listing would read {pending} keys, more than {MAX_SCAN}"
        )));
    }
    let mut found = Vec::with_capacity(pending as usize);
    if pending == 0 {
        return Ok(found);
    }
    let mut messages = consumer.messages().await.map_err(unavailable)?;
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(left, messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(err))) => return Err(unavailable(err)),
            Ok(None) => return Ok(found),
            Err(_) => return Err(unavailable("listing keys timed out")),
        };
        let info = message.info().map_err(unavailable)?;
        let (sequence, done) = (info.stream_sequence, info.pending == 0);
        found.push((
            message.subject.to_string(),
            sequence,
            message.headers.clone(),
        ));
        if done || found.len() as u64 >= MAX_SCAN {
            return Ok(found);
        }
    }
}

async fn fetch_one(stream: &Stream, subject: &str) -> Result<Raw, ServiceError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => {
            let headers = message.headers.clone();
            let operation = header(Some(&headers), OPERATION);
            let put = match operation {
                Some("DEL" | "PURGE") => None,
                _ => {
                    let expires =
                        header(Some(&headers), EXPIRES).and_then(|at| at.parse::<u64>().ok());
                    Some((message.payload, expires))
                }
            };
            Ok(Raw {
                sequence: message.sequence,
                put,
            })
        }
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(Raw::default()),
        Err(err) => Err(unavailable(err)),
    }
}

/// Who holds a gate record now, if anyone (an expired lease holds nothing).
fn gate_holder(raw: &Raw, now: u64) -> Option<u64> {
    let entry = raw.live(now)?;
    Some(u64::from_le_bytes(entry.value.get(..8)?.try_into().ok()?))
}

/// A commit that failed after some of its writes stayed: reported as
/// `unavailable` (never rerun, which would apply them twice).
fn partial(namespace: &str, key: &str, cause: &dyn std::fmt::Display) -> CommitError {
    CommitError::Refused(unavailable(format!(
        "the commit stopped at `{key}` in namespace `{namespace}` ({cause}) and some of its \
         writes could not be put back"
    )))
}

fn decode_usage(raw: &Raw) -> (u64, u64) {
    let Some((value, _)) = &raw.put else {
        return (0, 0);
    };
    match (value.get(..8), value.get(8..16)) {
        (Some(keys), Some(bytes)) => (
            u64::from_le_bytes(keys.try_into().unwrap_or_default()),
            u64::from_le_bytes(bytes.try_into().unwrap_or_default()),
        ),
        _ => (0, 0),
    }
}

/// The usage change of replacing `before` with `write` under `key`.
fn delta(key: &str, before: &Raw, write: &Write) -> (i64, i64) {
    let next = match write {
        Write::Put { value, .. } => Some(value.len()),
        Write::Delete => None,
    };
    let (keys, bytes) = account((1 << 40, 1 << 40), key, before.stored(), next);
    (keys as i64 - (1 << 40), bytes as i64 - (1 << 40))
}

impl KvBackend for NatsKv {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn read(&self, namespace: &str, key: &str) -> Result<Option<Entry>, ServiceError> {
        Ok(self
            .fetch_one(self.subject(namespace, key)?)?
            .live(now_ms()))
    }

    fn read_many(
        &self,
        namespace: &str,
        keys: &[String],
        max_bytes: usize,
    ) -> Result<Vec<Option<Entry>>, ServiceError> {
        let subjects = keys
            .iter()
            .map(|key| self.subject(namespace, key))
            .collect::<Result<_, _>>()?;
        let now = now_ms();
        let raws = self.fetch(subjects)?;
        collect_within(raws.iter().map(|raw| Ok(raw.live(now))), max_bytes)
    }

    fn update(
        &self,
        grant: &KvGrant,
        key: &str,
        decide: &mut Decide<'_>,
    ) -> Result<(), ServiceError> {
        let subject = self.subject(&grant.namespace, key)?;
        let writers = [Arc::new(grant.clone())];
        for _ in 0..MAX_ATTEMPTS {
            let raw = self.fetch_one(subject.clone())?;
            let Some(write) = decide(raw.live(now_ms()).as_ref())? else {
                return Ok(());
            };
            let change = delta(key, &raw, &write);
            self.charge(&grant.namespace, change, &writers)?;
            match self.write(subject.clone(), &write, raw.sequence) {
                Ok(Written::At(_)) => return Ok(()),
                Ok(Written::Stale) => self.refund(&grant.namespace, change),
                // It may have been stored: keep the charge (fuller, never
                // emptier).
                Ok(Written::Unknown(err)) => return Err(err),
                Err(err) => {
                    self.refund(&grant.namespace, change);
                    return Err(err);
                }
            }
        }
        Err(unavailable(format!(
            "`{key}` kept changing under {MAX_ATTEMPTS} attempts"
        )))
    }

    fn commit(&self, changes: &Changes) -> Result<(), CommitError> {
        let refused = CommitError::Refused;
        // Every key read or written, with where it is.
        let mut touched: Vec<(&str, &str)> = Vec::new();
        for (namespace, ns) in &changes.namespaces {
            for key in ns.reads.keys().chain(ns.writes.keys()) {
                touched.push((namespace, key));
            }
        }
        touched.sort_unstable();
        touched.dedup();
        // With them, in the same round trip, the gate of every namespace
        // written: a rerun elsewhere may hold it.
        let written: Vec<&str> = changes
            .namespaces
            .iter()
            .filter(|(_, ns)| !ns.writes.is_empty())
            .map(|(namespace, _)| &**namespace)
            .collect();
        let mut subjects = Vec::with_capacity(touched.len() + written.len());
        for (ns, key) in &touched {
            subjects.push(self.subject(ns, key).map_err(refused)?);
        }
        subjects.extend(written.iter().map(|ns| self.gate_subject(ns)));
        let mut raws = self.fetch(subjects.clone()).map_err(refused)?;
        subjects.truncate(touched.len());
        let gates = raws.split_off(touched.len());
        let now = now_ms();
        for (namespace, gate) in written.iter().zip(&gates) {
            if let Some(holder) = gate_holder(gate, now)
                && Some(holder) != changes.holder
            {
                let key = changes.namespaces[*namespace].writes.keys().next();
                return Err(CommitError::Conflict {
                    namespace: namespace.to_string(),
                    key: key.cloned().unwrap_or_default(),
                });
            }
        }
        let found: std::collections::HashMap<(&str, &str), (&Raw, &String)> = touched
            .iter()
            .copied()
            .zip(raws.iter().zip(&subjects))
            .collect();
        if let Some(conflict) = self.changed_reads(changes, &found, |_, _| true, None) {
            return Err(conflict);
        }
        if !changes.writes() {
            return Ok(());
        }
        for ns in changes.namespaces.values() {
            for write in ns.writes.values() {
                self.check_payload(write).map_err(refused)?;
            }
        }
        // Charge each namespace for what its writes leave.
        let mut charged: Vec<(&str, (i64, i64))> = Vec::new();
        for (namespace, ns) in &changes.namespaces {
            let mut total = (0i64, 0i64);
            for (key, write) in &ns.writes {
                let change = delta(key, found[&(&**namespace, key.as_str())].0, write);
                total = (total.0 + change.0, total.1 + change.1);
            }
            let writers: &[Arc<KvGrant>] = if ns.writers.is_empty() {
                std::slice::from_ref(&ns.grant)
            } else {
                &ns.writers
            };
            if let Err(err) = self.charge(namespace, total, writers) {
                for (namespace, change) in charged {
                    self.refund(namespace, change);
                }
                return Err(refused(err));
            }
            charged.push((namespace, total));
        }
        // Write each key if it is still what was checked.
        let mut applied: Vec<(String, u64, Raw)> = Vec::new();
        let mut failure = None;
        'writes: for (namespace, ns) in &changes.namespaces {
            for (key, write) in &ns.writes {
                let (before, subject) = found[&(&**namespace, key.as_str())];
                match self.write(subject.clone(), write, before.sequence) {
                    Ok(Written::At(sequence)) => {
                        applied.push((subject.clone(), sequence, before.clone()));
                        continue;
                    }
                    Ok(Written::Stale) => {
                        failure = Some(CommitError::Conflict {
                            namespace: namespace.to_string(),
                            key: key.clone(),
                        });
                    }
                    // Maybe stored: nothing can be promised about the
                    // commit any more.
                    Ok(Written::Unknown(err)) => {
                        self.undo(&applied);
                        return Err(partial(namespace, key, &err));
                    }
                    Err(err) => failure = Some(refused(err)),
                }
                break 'writes;
            }
        }
        // Keys only read are checked again now that every write landed: of
        // two commits that each read what the other writes, the one that
        // checks second sees the other's write (no write skew).
        if failure.is_none() {
            let read_only = |namespace: &str, key: &str| {
                !changes.namespaces[namespace].writes.contains_key(key)
            };
            failure = self.changed_reads(changes, &found, read_only, Some(&subjects));
        }
        let Some(failure) = failure else {
            return Ok(());
        };
        if self.undo(&applied) {
            for (namespace, change) in charged {
                self.refund(namespace, change);
            }
            Err(failure)
        } else {
            // Some writes stay: not a conflict to rerun on top of, and the
            // charge stays (counted fuller than it is, never emptier).
            let (namespace, key) = match &failure {
                CommitError::Conflict { namespace, key } => (namespace.as_str(), key.as_str()),
                CommitError::Refused(_) => ("", ""),
            };
            Err(partial(namespace, key, &failure))
        }
    }

    fn list_keys(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), ServiceError> {
        let ns_subjects = format!("{}{}.", self.subjects, hex(namespace));
        let now = now_ms();
        let mut keys: Vec<String> = self
            .scan(format!("{ns_subjects}*"))?
            .into_iter()
            .filter(|(_, _, headers)| {
                let headers = headers.as_ref();
                !matches!(header(headers, OPERATION), Some("DEL" | "PURGE"))
                    && header(headers, EXPIRES)
                        .and_then(|at| at.parse::<u64>().ok())
                        .is_none_or(|at| at > now)
            })
            .filter_map(|(subject, _, _)| unhex(subject.strip_prefix(&ns_subjects)?))
            .filter(|key| key.starts_with(prefix) && after.is_none_or(|after| key.as_str() > after))
            .collect();
        keys.sort_unstable();
        let more = keys.len() > limit;
        keys.truncate(limit);
        Ok((keys, more))
    }

    fn purge_expired(&self, max: usize) -> Result<usize, ServiceError> {
        let now = now_ms();
        let due: Vec<(String, u64, usize)> = self
            .scan(format!("{}*.*", self.subjects))?
            .into_iter()
            .filter_map(|(subject, sequence, headers)| {
                let at: u64 = header(headers.as_ref(), EXPIRES)?.parse().ok()?;
                let size: usize = header(headers.as_ref(), MESSAGE_SIZE)?.parse().ok()?;
                (at <= now).then_some((subject, sequence, size))
            })
            .take(max)
            .collect();
        for (subject, sequence, size) in &due {
            let Some((ns, key)) = subject
                .strip_prefix(&self.subjects)
                .and_then(|rest| rest.split_once('.'))
                .and_then(|(ns, key)| Some((unhex(ns)?, unhex(key)?)))
            else {
                continue;
            };
            // Only if nobody wrote it since it was seen expired.
            if let Written::At(_) = self.write(subject.clone(), &Write::Delete, *sequence)? {
                let freed = (key.len() + size) as i64;
                self.refund(&ns, (1, freed));
            }
        }
        Ok(due.len())
    }

    fn try_gate(
        &self,
        namespace: &str,
        holder: u64,
        lease: Duration,
    ) -> Result<bool, ServiceError> {
        let subject = self.gate_subject(namespace);
        let raw = self.fetch_one(subject.clone())?;
        let now = now_ms();
        if gate_holder(&raw, now).is_some_and(|current| current != holder) {
            return Ok(false);
        }
        let take = Write::Put {
            value: holder.to_le_bytes().to_vec(),
            expires_at: Some(now + lease.as_millis() as u64),
        };
        Ok(matches!(
            self.write(subject, &take, raw.sequence)?,
            Written::At(_)
        ))
    }

    fn release_gate(&self, namespace: &str, holder: u64) {
        let subject = self.gate_subject(namespace);
        let Ok(raw) = self.fetch_one(subject.clone()) else {
            return; // Its lease ends it.
        };
        if gate_holder(&raw, now_ms()) == Some(holder) {
            let _ = self.write(subject, &Write::Delete, raw.sequence);
        }
    }

    fn shared(&self) -> bool {
        true
    }

    fn sweep_every(&self) -> Duration {
        // A sweep reads every subject's headers: not every second.
        Duration::from_secs(30)
    }

    fn usage(&self, namespace: &str) -> Result<(u64, u64), ServiceError> {
        Ok(decode_usage(
            &self.fetch_one(self.usage_subject(namespace))?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keeps_byte_order_and_round_trips() {
        let mut keys = vec!["b", "a/b", "a", "ab", "é", "a.b", "Z", ""];
        let mut encoded: Vec<String> = keys.iter().map(|key| hex(key)).collect();
        keys.sort_unstable();
        encoded.sort_unstable();
        let decoded: Vec<String> = encoded.iter().map(|e| unhex(e).unwrap()).collect();
        assert_eq!(decoded, keys);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("abc"), None);
        // Subjects other NATS clients wrote may hold anything.
        assert_eq!(unhex("éé"), None);
        assert_eq!(unhex("+1"), None);
    }

    fn backend() -> NatsKv {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let server = crate::backend::local::NatsServer::shared();
        let prefix = format!("nats{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let options = crate::backend::NatsOptions::new(server.url()).prefix(prefix);
        NatsKv::open(crate::backend::NatsConnection::connect(&options).unwrap()).unwrap()
    }

    fn messages(kv: &NatsKv) -> u64 {
        let stream = kv.stream.clone();
        kv.connection
            .run(async move { stream.get_info().await.unwrap().state.messages })
            .unwrap()
    }

    #[test]
    fn more_replicas_than_servers_is_refused_when_the_bucket_is_made() {
        let server = crate::backend::local::NatsServer::shared();
        let mut options = crate::backend::NatsOptions::new(server.url()).prefix("replicated");
        options.replicas = 3;
        let connection = crate::backend::NatsConnection::connect(&options).unwrap();
        let err = NatsKv::open(connection)
            .err()
            .expect("one server holds one replica");
        assert!(err.contains("replicated-kv"), "{err}");
    }

    #[test]
    fn deleted_keys_leave_nothing_behind() {
        let kv = backend();
        let g = KvGrant::new("churn");
        for i in 0..50 {
            let key = format!("k{i}");
            let put = Write::Put {
                value: b"v".to_vec(),
                expires_at: None,
            };
            kv.update(&g, &key, &mut |_| Ok(Some(put.clone()))).unwrap();
            kv.update(&g, &key, &mut |_| Ok(Some(Write::Delete)))
                .unwrap();
        }
        assert_eq!(kv.usage("churn").unwrap(), (0, 0));
        // A set-delete loop cannot grow the stream: only the usage record.
        assert_eq!(messages(&kv), 1);
    }

    #[test]
    fn a_key_too_long_for_a_subject_is_refused_and_the_connection_survives() {
        let kv = backend();
        let g = KvGrant {
            max_key_bytes: 4096,
            ..KvGrant::new("long")
        };
        let long = "k".repeat(3000);
        let refused = kv.update(&g, &long, &mut |_| {
            Ok(Some(Write::Put {
                value: b"v".to_vec(),
                expires_at: None,
            }))
        });
        assert!(
            matches!(refused, Err(ServiceError::QuotaExceeded(_))),
            "{refused:?}"
        );
        assert!(kv.read("long", &long).is_err());
        // Still connected: a short key works.
        kv.update(&g, "short", &mut |_| {
            Ok(Some(Write::Put {
                value: b"v".to_vec(),
                expires_at: None,
            }))
        })
        .unwrap();
        assert!(kv.read("long", "short").unwrap().is_some());
        // Deleting leaves no marker: only the entry and the usage record.
        kv.update(&g, "short", &mut |_| Ok(Some(Write::Delete)))
            .unwrap();
        assert_eq!(messages(&kv), 1, "the usage record alone");
    }
}
