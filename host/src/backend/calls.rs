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
//! A call and its reply travel in the wire form of [`super::wire`].
//!
//! Budgets: a message is at most the server's `max_payload`, both ways; the
//! serving connection buffers at most 64 calls per served plugin, 64 MiB of
//! them at most where NATS carries messages up to 16 MiB (and at least 4
//! calls beyond that), before NATS drops the excess (the caller's wait then
//! runs out);
//! how many calls of a plugin run for other hosts at once is the plugin's
//! own concurrency and queue (see `runtime::remote`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use async_nats::{Client, Subscriber};
use futures_util::TryStreamExt;

use super::connection::REQUEST_TIMEOUT;
use super::{NatsConnection, host_token};

/// How often a host rewrites its presence.
pub(crate) const PRESENCE_EVERY: Duration = Duration::from_secs(5);

/// How long a host's presence outlives its last rewrite: three missed
/// rewrites and it is gone from the listing.
pub(crate) const PRESENCE_TTL: Duration = Duration::from_secs(15);

/// Hosts `GET /v1/cluster` lists at most.
pub(crate) const MAX_HOSTS: usize = 1024;

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
    /// The connection taking calls: its own, so that its small backlog per
    /// subscription bounds what waits for this host, and so that stopping
    /// closes every subscription at once. Replies go on the main one.
    serving: Client,
    presence: stream::Stream,
    /// Held while announcing or withdrawing; `true` once withdrawn, so that
    /// an announce cannot bring a stopped host back.
    withdrawn: tokio::sync::Mutex<bool>,
    /// The last listing and when it was read: `GET /v1/cluster` costs NATS
    /// at most one listing a second, however often it is asked.
    listing: tokio::sync::Mutex<Option<(Instant, Listing)>>,
    /// Serving workers still running (`stop_serving` waits for them).
    workers: AtomicUsize,
    workers_done: tokio::sync::Notify,
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

/// The presence documents of the deployment's hosts, or why they could not
/// be read.
type Listing = Result<Vec<Vec<u8>>, String>;

/// Where the replies to calls go: inboxes of the calling hosts' clients,
/// never any other subject (a reply subject is the caller's to choose, and
/// the host publishes with the deployment's credentials).
const INBOX_PREFIX: &str = "_INBOX.";

/// How long a listing of the deployment's hosts is reused.
const LISTING_FOR: Duration = Duration::from_secs(1);

impl NatsCalls {
    /// Opens the serving connection and the presence stream. Blocks: the
    /// host is being built.
    pub(crate) fn open(connection: Arc<NatsConnection>) -> Result<NatsCalls, String> {
        let prefix = connection.prefix().to_owned();
        let host = match &connection.options.host_name {
            Some(name) => name.clone(),
            None => default_host_name(),
        };
        if host.is_empty() || host_token(&host) != host {
            return Err(format!(
                "host name `{host}`: use 1-48 letters, digits, `-` or `_`"
            ));
        }
        let call_timeout = connection.options.call_timeout;
        let serving = connection.another_client(call_backlog(connection.max_payload()))?;
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
            withdrawn: tokio::sync::Mutex::new(false),
            listing: tokio::sync::Mutex::new(None),
            workers: AtomicUsize::new(0),
            workers_done: tokio::sync::Notify::new(),
            host,
            call_timeout,
        })
    }

    /// Whether the connection to NATS is up now.
    pub(crate) fn connected(&self) -> bool {
        self.connection.connected()
    }

    /// This host's name in the deployment.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// How long a forwarded call waits when its caller set no deadline.
    pub(crate) fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// The largest message NATS carries.
    pub(crate) fn max_message(&self) -> usize {
        self.connection.max_payload()
    }

    /// The subject of `plugin`'s calls; `None` for a name no plugin can have
    /// (a caller's: an over-long subject would make the server drop the
    /// connection every plugin of the host shares).
    fn call_subject(&self, plugin: &str) -> Option<String> {
        crate::bounds::plugin_name(plugin).ok()?;
        Some(format!(
            "{}.call.{}",
            self.connection.prefix(),
            plugin.replace('.', "~")
        ))
    }

    /// Sends a call for `plugin` to one of the hosts serving it and waits at
    /// most `wait` for the reply's body. Dropping the future gives up the
    /// call here (the serving host still ends it by `wait`).
    pub(crate) async fn request(
        &self,
        plugin: &str,
        body: Vec<u8>,
        wait: Duration,
    ) -> Result<bytes::Bytes, RequestFailure> {
        let Some(subject) = self.call_subject(plugin) else {
            return Err(RequestFailure::NotServed);
        };
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
        let client = self.connection.client.clone();
        // An inbox of its own, unsubscribed when the request ends however it
        // ends: the client's shared one keeps an entry for every request
        // until its reply comes, and a call nobody answers gets none.
        let request = async_nats::Request::new()
            .payload(body.into())
            .inbox(client.new_inbox())
            .timeout(Some(wait));
        let reply = self
            .connection
            .spawn_abortable(async move { client.send_request(subject, request).await })
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

    /// Starts taking calls for `plugin` (with every other host serving it):
    /// returns once the server has the subscription, so that calls sent
    /// from then on reach this host. Fails at once while NATS is
    /// unreachable, and after [`REQUEST_TIMEOUT`] at most.
    pub(crate) async fn serve(&self, plugin: &str) -> Result<Subscriber, String> {
        let subject = self
            .call_subject(plugin)
            .ok_or_else(|| format!("`{plugin}` is not a plugin name"))?;
        if self.serving.connection_state() != async_nats::connection::State::Connected {
            return Err("the serving connection to NATS is not connected".into());
        }
        let group = format!("{}-call", self.connection.prefix());
        // A request nobody answers follows the subscription to the server
        // on the same connection: its "no responders" means the server
        // has processed the subscription.
        let probe = format!(
            "{}.probe.{}",
            self.connection.prefix(),
            async_nats::Client::new_inbox(&self.serving).replace('.', "_")
        );
        let client = self.serving.clone();
        self.connection
            .spawn_abortable(async move {
                let work = async {
                    let subscriber = client
                        .queue_subscribe(subject, group)
                        .await
                        .map_err(|err| err.to_string())?;
                    // An inbox of its own: a probe that times out leaves
                    // nothing behind in the client.
                    let request = async_nats::Request::new()
                        .payload(bytes::Bytes::new())
                        .inbox(client.new_inbox());
                    match client.send_request(probe, request).await {
                        Err(err)
                            if err.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                        }
                        Ok(_) => {}
                        Err(err) => {
                            return Err(format!("the subscription was not confirmed: {err}"));
                        }
                    }
                    Ok(subscriber)
                };
                tokio::time::timeout(REQUEST_TIMEOUT, work)
                    .await
                    .map_err(|_| "NATS did not confirm the subscription in time".to_string())?
            })
            .await
            .ok_or("the NATS runtime has stopped")?
    }

    /// Sends a reply on the main connection (it outlives the serving one
    /// while the host stops); a reply larger than NATS carries is replaced
    /// by an error saying so (`body_too_large` builds it). A reply subject
    /// that is not an inbox is refused.
    pub(crate) async fn reply(
        &self,
        to: async_nats::Subject,
        body: Vec<u8>,
        body_too_large: impl FnOnce(usize) -> Vec<u8>,
    ) -> Result<(), String> {
        if !to.starts_with(INBOX_PREFIX) {
            return Err(format!(
                "a call asked for its reply on `{}`, which is not an inbox",
                crate::text::for_log(&to, 128)
            ));
        }
        let limit = self.connection.max_payload();
        let body = if body.len() > limit {
            body_too_large(limit)
        } else {
            body
        };
        let client = self.connection.client.clone();
        self.connection
            .spawn(async move { client.publish(to, body.into()).await })
            .await
            .ok_or("the NATS runtime has stopped")?
            .map_err(|err| err.to_string())
    }

    /// Counts a serving worker in; the guard counts it out when dropped.
    pub(crate) fn worker(self: &Arc<Self>) -> Worker {
        self.workers.fetch_add(1, Ordering::AcqRel);
        Worker(Arc::clone(self))
    }

    /// Stops taking calls for good (the host is stopping): unsubscribes
    /// every served plugin at once by closing the serving connection (after
    /// handing its workers the calls already received, which they answer),
    /// then waits for the workers until `until`.
    pub(crate) async fn stop_serving(&self, until: Instant) {
        let client = self.serving.clone();
        let _ = self
            .connection
            .spawn(async move { client.drain().await })
            .await;
        loop {
            let done = self.workers_done.notified();
            if self.workers.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(until.into(), done).await.is_err() {
                return;
            }
        }
    }

    fn presence_subject(&self) -> String {
        format!("{}.hosts.{}", self.connection.prefix(), self.host)
    }

    /// Rewrites this host's presence (a JSON document), unless it was
    /// withdrawn.
    pub(crate) async fn announce(&self, presence: Vec<u8>) -> Result<(), String> {
        let withdrawn = self.withdrawn.lock().await;
        if *withdrawn {
            return Ok(());
        }
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

    /// Removes this host's presence for good (it is stopping).
    pub(crate) async fn withdraw(&self) -> Result<(), String> {
        let mut withdrawn = self.withdrawn.lock().await;
        *withdrawn = true;
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
    /// [`MAX_HOSTS`], by host name; read from NATS at most once a second.
    pub(crate) async fn hosts(&self) -> Result<Vec<Vec<u8>>, String> {
        let mut cached = self.listing.lock().await;
        if let Some((read, listing)) = &*cached
            && read.elapsed() < LISTING_FOR
        {
            return listing.clone();
        }
        let listing = if self.connection.connected() {
            self.read_hosts().await
        } else {
            Err(format!(
                "NATS at {} is not connected (reconnecting)",
                self.connection.options.url
            ))
        };
        // A failure is kept as long as a listing: a slow NATS is asked once
        // a second, not once per request.
        *cached = Some((Instant::now(), listing.clone()));
        listing
    }

    async fn read_hosts(&self) -> Result<Vec<Vec<u8>>, String> {
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

/// A running serving worker, counted until dropped.
pub(crate) struct Worker(Arc<NatsCalls>);

impl Worker {
    /// The calls it serves.
    pub(crate) fn calls(&self) -> &Arc<NatsCalls> {
        &self.0
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.0.workers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.workers_done.notify_waiters();
        }
    }
}

/// Calls one served plugin's subscription holds before NATS drops the
/// excess: 64 MiB of the largest messages, 4 to 64 calls.
fn call_backlog(max_payload: usize) -> usize {
    ((64 << 20) / max_payload.max(1)).clamp(4, 64)
}

/// `<hostname>-<8 hex digits>`: the machine's name, told apart from other
/// hosts on the same machine (or in the same process) by a random suffix.
fn default_host_name() -> String {
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    host_name_for(&machine, u32::from_be_bytes(random))
}

/// A host name from a machine name and a random number, within the 48
/// characters of a host name.
fn host_name_for(machine: &str, random: u32) -> String {
    let mut machine = host_token(machine.trim());
    // Room for `-` and 8 hex digits.
    machine.truncate(39);
    if machine.is_empty() {
        machine = "host".into();
    }
    format!("{machine}-{random:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_become_one_subject_token() {
        assert_eq!(host_token("web-1.example.com"), "web-1_example_com");
        assert_eq!(host_token("a b*>"), "a_b__");
        assert_eq!(host_token(&"x".repeat(100)).len(), 48);
        let name = default_host_name();
        assert!(!name.contains('.') && name.len() > 9, "{name}");
        assert_ne!(default_host_name(), name, "two hosts in one process differ");
        // A long machine name (a Kubernetes pod's) still makes a valid one.
        let long = host_name_for("capsule-serve-deployment-5f7b8c9d4-x2kqp.cluster.local", 7);
        assert_eq!(long.len(), 48);
        assert_eq!(host_token(&long), long);
        assert_eq!(host_name_for("", 255), "host-000000ff");
    }
}
