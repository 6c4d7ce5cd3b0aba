//! Calls between the hosts of a deployment, and which host serves what.
//!
//! - Each host answers calls for the plugins it loaded on subject
//!   `<prefix>.call.<plugin>` (`.` in a plugin name becomes `~`) in one queue
//!   group, so NATS hands each call to one of the hosts serving the plugin.
//!   When none does, NATS answers "no responders" at once: a host that
//!   stopped or died (its subscriptions go with its connection) stops
//!   receiving calls without anyone removing it.
//! - Presence: every host keeps one message on subject
//!   `<prefix>.hosts.<host>` of stream `<prefix>-hosts` (one message per
//!   subject, kept [`PRESENCE_TTL`], in memory) and rewrites it every
//!   [`PRESENCE_EVERY`] and whenever its plugins change, so a host that dies
//!   drops out of the listing by itself.
//!
//! Wire form of a call and of its reply: a 4-byte big-endian length, a JSON
//! head of that length ([`CallHead`], [`ReplyHead`]), then the payload
//! bytes as they are (no encoding of the payload, no header escaping).
//!
//! Budgets: a message is at most the server's `max_payload`, both ways; the
//! serving connection buffers at most [`CALL_BACKLOG`] calls per served
//! plugin before NATS drops the excess (the caller's wait then runs out);
//! how many calls of a plugin run for other hosts at once is the plugin's
//! own concurrency and queue (see `runtime::remote`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream;
use async_nats::{Client, Subscriber};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};

use super::{NatsConnection, host_token};

/// How often a host rewrites its presence.
pub(crate) const PRESENCE_EVERY: Duration = Duration::from_secs(5);

/// How long a host's presence outlives its last rewrite: three missed
/// rewrites and it is gone from the listing.
pub(crate) const PRESENCE_TTL: Duration = Duration::from_secs(15);

/// Hosts `GET /v1/cluster` lists at most.
pub(crate) const MAX_HOSTS: usize = 1024;

/// Calls of one served plugin the serving connection holds before NATS
/// drops the excess (a slow consumer): with `max_payload` at its 1 MiB
/// default, at most 64 MiB per plugin waiting to be taken.
pub(crate) const CALL_BACKLOG: usize = 64;

/// What travels ahead of a call's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CallHead {
    /// The operation requested.
    pub(crate) operation: String,
    /// The request's metadata.
    pub(crate) metadata: Vec<(String, String)>,
    /// How long the caller still waits, in milliseconds: the serving host
    /// ends the call by then.
    pub(crate) wait_ms: u64,
    /// The calling host.
    pub(crate) from: String,
}

/// What travels ahead of a reply's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReplyHead {
    /// The host that ran the call.
    pub(crate) host: String,
    /// The call's result.
    pub(crate) result: ReplyResult,
}

/// How a call ended on the host that ran it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ReplyResult {
    /// It succeeded; the payload is the response's.
    Ok {
        metadata: Vec<(String, String)>,
        fuel_used: Option<u64>,
        callee_fuel: u64,
        fresh_instance: bool,
    },
    /// It failed: the error's stable kind and message, and for a plugin's
    /// own error its variant (`invalid_input`, `unsupported`, `denied`,
    /// `failed`) with the plugin's message alone.
    Err {
        kind: String,
        message: String,
        plugin_error: Option<(String, String)>,
    },
}

/// Frames `head` and `payload` as one message body.
pub(crate) fn encode<H: Serialize>(head: &H, payload: &[u8]) -> Vec<u8> {
    let head = serde_json::to_vec(head).expect("a head always serializes");
    let mut body = Vec::with_capacity(4 + head.len() + payload.len());
    body.extend_from_slice(&(head.len() as u32).to_be_bytes());
    body.extend_from_slice(&head);
    body.extend_from_slice(payload);
    body
}

/// Splits a message body into its head and payload; a malformed body (from
/// something that is not a Capsule host) is an error, never a panic.
pub(crate) fn decode<H: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<(H, &[u8]), String> {
    let Some((length, rest)) = body.split_first_chunk::<4>() else {
        return Err(format!("a message of {} bytes has no head", body.len()));
    };
    let length = u32::from_be_bytes(*length) as usize;
    if length > rest.len() {
        return Err(format!(
            "a head of {length} bytes in a message of {} bytes",
            body.len()
        ));
    }
    let (head, payload) = rest.split_at(length);
    let head = serde_json::from_slice(head).map_err(|err| format!("a malformed head: {err}"))?;
    Ok((head, payload))
}

/// Why a call could not be made on another host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestFailure {
    /// No host serves the plugin.
    NotServed,
    /// No reply came within the wait.
    TimedOut,
    /// The call is larger than NATS carries.
    TooLarge { size: usize, limit: usize },
    /// NATS could not be reached.
    Unavailable(String),
}

/// Calls and presence on the deployment's NATS.
pub(crate) struct NatsCalls {
    connection: Arc<NatsConnection>,
    /// The connection serving calls: its own, so that its small backlog per
    /// subscription bounds what waits for this host.
    serving: Client,
    presence: stream::Stream,
    /// This host's name in the deployment.
    host: String,
    /// How long a forwarded call waits when its caller set no deadline.
    call_timeout: Duration,
}

impl std::fmt::Debug for NatsCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCalls")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl NatsCalls {
    /// Opens the serving connection and the presence stream. Blocks: the
    /// host is being built.
    pub(crate) fn open(connection: Arc<NatsConnection>) -> Result<NatsCalls, String> {
        let prefix = connection.prefix().to_owned();
        let host = match &connection.options.host_name {
            Some(name) => name.clone(),
            None => default_host_name(),
        };
        let call_timeout = connection.options.call_timeout;
        let serving = connection.another_client(CALL_BACKLOG)?;
        let config = stream::Config {
            name: format!("{prefix}-hosts"),
            description: Some("Capsule hosts of this deployment and what each serves".into()),
            subjects: vec![format!("{prefix}.hosts.*")],
            storage: stream::StorageType::Memory,
            max_messages_per_subject: 1,
            max_age: PRESENCE_TTL,
            max_messages: i64::try_from(MAX_HOSTS).unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            num_replicas: connection.options.replicas,
            ..Default::default()
        };
        let jetstream = connection.jetstream.clone();
        let presence = connection
            .run(async move { jetstream.get_or_create_stream(config).await })
            .ok_or("the connection's runtime has stopped")?
            .map_err(|err| format!("presence stream: {err}"))?;
        Ok(NatsCalls {
            connection,
            serving,
            presence,
            host,
            call_timeout,
        })
    }

    /// This host's name in the deployment.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// How long a forwarded call waits when its caller set no deadline.
    pub(crate) fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    fn call_subject(&self, plugin: &str) -> String {
        format!(
            "{}.call.{}",
            self.connection.prefix(),
            plugin.replace('.', "~")
        )
    }

    /// Sends a call for `plugin` to one of the hosts serving it and waits at
    /// most `wait` for the reply's body.
    pub(crate) async fn request(
        &self,
        plugin: &str,
        body: Vec<u8>,
        wait: Duration,
    ) -> Result<bytes::Bytes, RequestFailure> {
        if !self.connection.connected() {
            return Err(RequestFailure::Unavailable(format!(
                "NATS at {} is not connected (reconnecting)",
                self.connection.options.url
            )));
        }
        let limit = self.connection.max_payload();
        if body.len() > limit {
            return Err(RequestFailure::TooLarge {
                size: body.len(),
                limit,
            });
        }
        let subject = self.call_subject(plugin);
        let client = self.connection.client.clone();
        let request = async_nats::Request::new()
            .payload(body.into())
            .timeout(Some(wait));
        let reply = self
            .connection
            .spawn(async move { client.send_request(subject, request).await })
            .await
            .ok_or_else(|| RequestFailure::Unavailable("the NATS runtime has stopped".into()))?;
        use async_nats::client::RequestErrorKind;
        match reply {
            Ok(message) => Ok(message.payload),
            Err(err) => Err(match err.kind() {
                RequestErrorKind::NoResponders => RequestFailure::NotServed,
                RequestErrorKind::TimedOut => RequestFailure::TimedOut,
                RequestErrorKind::MaxPayloadExceeded => RequestFailure::TooLarge { size: 0, limit },
                _ => RequestFailure::Unavailable(err.to_string()),
            }),
        }
    }

    /// Starts taking calls for `plugin` (with every other host serving it).
    pub(crate) async fn serve(&self, plugin: &str) -> Result<Subscriber, String> {
        let subject = self.call_subject(plugin);
        let group = format!("{}-call", self.connection.prefix());
        let client = self.serving.clone();
        self.connection
            .spawn(async move {
                let subscriber = client
                    .queue_subscribe(subject, group)
                    .await
                    .map_err(|err| err.to_string())?;
                // Once the server answered the flush it has the
                // subscription: calls sent from now on reach this host.
                client.flush().await.map_err(|err| err.to_string())?;
                Ok(subscriber)
            })
            .await
            .ok_or("the NATS runtime has stopped")?
    }

    /// Sends a reply; a reply larger than NATS carries is replaced by an
    /// error saying so (`body_too_large` builds it).
    pub(crate) async fn reply(
        &self,
        to: async_nats::Subject,
        body: Vec<u8>,
        body_too_large: impl FnOnce(usize) -> Vec<u8>,
    ) -> Result<(), String> {
        let limit = self.serving.server_info().max_payload;
        let body = if body.len() > limit {
            body_too_large(limit)
        } else {
            body
        };
        let client = self.serving.clone();
        self.connection
            .spawn(async move { client.publish(to, body.into()).await })
            .await
            .ok_or("the NATS runtime has stopped")?
            .map_err(|err| err.to_string())
    }

    /// Stops taking calls for good (the host is stopping): unsubscribes
    /// every served plugin at once and closes the serving connection, so
    /// that calls go to other hosts (or find none) instead of finding this
    /// host's plugins paused. Waits until the connection closed, at most a
    /// second.
    pub(crate) async fn stop_serving(&self) {
        let client = self.serving.clone();
        self.connection
            .spawn(async move {
                if client.drain().await.is_err() {
                    return;
                }
                let until = tokio::time::Instant::now() + Duration::from_secs(1);
                while client.connection_state() == async_nats::connection::State::Connected
                    && tokio::time::Instant::now() < until
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
    }

    fn presence_subject(&self) -> String {
        format!("{}.hosts.{}", self.connection.prefix(), self.host)
    }

    /// Rewrites this host's presence (a JSON document).
    pub(crate) async fn announce(&self, presence: Vec<u8>) -> Result<(), String> {
        let subject = self.presence_subject();
        let jetstream = self.connection.jetstream.clone();
        self.connection
            .spawn(async move {
                jetstream
                    .publish(subject, presence.into())
                    .await
                    .map_err(|err| err.to_string())?
                    .await
                    .map_err(|err| err.to_string())
            })
            .await
            .ok_or("the NATS runtime has stopped")?
            .map(|_| ())
    }

    /// Removes this host's presence (it is stopping).
    pub(crate) async fn withdraw(&self) -> Result<(), String> {
        let subject = self.presence_subject();
        let presence = self.presence.clone();
        self.connection
            .spawn(async move { presence.purge().filter(subject).await })
            .await
            .ok_or("the NATS runtime has stopped")?
            .map(|_| ())
            .map_err(|err| err.to_string())
    }

    /// The presence documents of the deployment's hosts, at most
    /// [`MAX_HOSTS`], by host name.
    pub(crate) async fn hosts(&self) -> Result<Vec<Vec<u8>>, String> {
        let presence = self.presence.clone();
        let filter = format!("{}.hosts.*", self.connection.prefix());
        self.connection
            .spawn(async move {
                let mut info = presence
                    .info_with_subjects(&filter)
                    .await
                    .map_err(|err| err.to_string())?;
                let mut subjects = Vec::new();
                while let Some((subject, _count)) =
                    info.try_next().await.map_err(|err| err.to_string())?
                {
                    if subjects.len() < MAX_HOSTS {
                        subjects.push(subject);
                    }
                }
                subjects.sort();
                let mut documents = Vec::with_capacity(subjects.len());
                for subject in subjects {
                    match presence.get_last_raw_message_by_subject(&subject).await {
                        Ok(message) => documents.push(message.payload.to_vec()),
                        // Expired between the listing and the read.
                        Err(err)
                            if matches!(
                                err.kind(),
                                stream::LastRawMessageErrorKind::NoMessageFound
                            ) => {}
                        Err(err) => return Err(err.to_string()),
                    }
                }
                Ok(documents)
            })
            .await
            .ok_or("the NATS runtime has stopped")?
    }
}

/// `<hostname>-<8 hex digits>`: the machine's name, told apart from other
/// hosts on the same machine (or in the same process) by a random suffix.
fn default_host_name() -> String {
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let mut machine = host_token(machine.trim());
    if machine.is_empty() {
        machine = "host".into();
    }
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    format!("{machine}-{:08x}", u32::from_be_bytes(random))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_round_trips_through_its_wire_form() {
        let head = CallHead {
            operation: "greet".into(),
            metadata: vec![("request-id".into(), "a\r\nb".into())],
            wait_ms: 1500,
            from: "a-1".into(),
        };
        let payload = b"\x00\xffbinary\n";
        let body = encode(&head, payload);
        let (back, rest): (CallHead, &[u8]) = decode(&body).unwrap();
        assert_eq!(back, head);
        assert_eq!(rest, payload);
    }

    #[test]
    fn a_malformed_message_is_an_error_not_a_panic() {
        for body in [
            &b""[..],
            b"\x00\x00",
            b"\x00\x00\x00\x10{}",
            b"\xff\xff\xff\xff",
            b"\x00\x00\x00\x02{]",
        ] {
            assert!(decode::<CallHead>(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn host_names_become_one_subject_token() {
        assert_eq!(host_token("web-1.example.com"), "web-1_example_com");
        assert_eq!(host_token("a b*>"), "a_b__");
        assert_eq!(host_token(&"x".repeat(100)).len(), 48);
        let name = default_host_name();
        assert!(!name.contains('.') && name.len() > 9, "{name}");
        assert_ne!(default_host_name(), name, "two hosts in one process differ");
    }
}
