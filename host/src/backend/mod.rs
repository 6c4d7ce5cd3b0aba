//! Where state shared beyond one call lives: `[host.backend]`.
//!
//! The default, `embedded`, keeps the key-value store in this process (a
//! redb file under `data_dir`, or memory) and needs nothing else. `nats`
//! puts it in NATS JetStream KV, so several `capsule serve` hosts behind
//! one load balancer share one store (see `docs/scaling.md`). Capsule
//! never runs a cluster of its own: NATS is the distributed engine.

#[cfg(feature = "nats")]
pub(crate) mod calls;
#[cfg(feature = "nats")]
pub(crate) mod connection;
#[cfg(feature = "nats")]
pub(crate) mod events;
#[cfg(feature = "nats")]
pub mod local;
pub mod wire;

#[cfg(feature = "nats")]
pub use connection::NatsConnection;

use crate::secret::Secret;

/// `[host.backend]`: where the key-value store lives.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Backend {
    /// In this process: `data_dir/kv.redb`, or memory without a data
    /// directory.
    #[default]
    Embedded,
    /// In NATS JetStream, shared by every host of the deployment.
    Nats(NatsOptions),
}

impl Backend {
    /// `embedded` or `nats`.
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Nats(_) => "nats",
        }
    }
}

/// How to reach NATS, and which part of it is this deployment's.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsOptions {
    /// Server URL(s), comma-separated: `nats://127.0.0.1:4222`.
    pub url: String,
    /// Names this deployment's buckets and streams (`<prefix>-kv`), so
    /// several Capsule deployments share one NATS without seeing each
    /// other. Letters, digits, `-` and `_`.
    pub prefix: String,
    /// The contents of a NATS credentials file (JWT and nkey seed), if the
    /// server asks for one.
    pub credentials: Option<Secret>,
    /// Copies JetStream keeps of the bucket (1 to 5; a NATS cluster needs
    /// at least as many servers). Used when the bucket is created; an
    /// existing bucket keeps its own.
    pub replicas: usize,
    /// This host's name in the deployment (`GET /v1/cluster`); by default
    /// the machine's name and a random suffix. Letters, digits, `-` and `_`.
    pub host_name: Option<String>,
    /// How long a call forwarded to another host waits for its reply when
    /// the caller set no deadline of its own.
    pub call_timeout: std::time::Duration,
}

impl NatsOptions {
    /// Options for `url` with the default prefix `capsule`.
    pub fn new(url: impl Into<String>) -> NatsOptions {
        NatsOptions {
            url: url.into(),
            prefix: "capsule".into(),
            credentials: None,
            replicas: 1,
            host_name: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// Uses `prefix` for this deployment's buckets and streams.
    pub fn prefix(mut self, prefix: impl Into<String>) -> NatsOptions {
        self.prefix = prefix.into();
        self
    }

    /// Names this host in the deployment (made one subject token: anything
    /// but letters, digits, `-` and `_` becomes `_`).
    pub fn host_name(mut self, name: &str) -> NatsOptions {
        self.host_name = Some(host_token(name));
        self
    }
}

/// How long a call forwarded to another host waits by default.
pub const DEFAULT_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Longest subject the NATS backend writes: well inside the server's 4 KiB
/// control line (a longer one makes the server drop the connection every
/// plugin of the host shares), with the headers beside it.
pub const NATS_MAX_SUBJECT: usize = 1024;

/// The subject prefix of the deployment's key-value bucket.
pub(crate) fn nats_kv_subjects(prefix: &str) -> String {
    format!("$KV.{prefix}-kv.")
}

/// The longest key, in bytes, the NATS backend stores in `namespace` of
/// deployment `prefix`: keys and namespaces go into subjects hex-encoded.
pub fn nats_max_key_bytes(prefix: &str, namespace: &str) -> usize {
    NATS_MAX_SUBJECT.saturating_sub(nats_kv_subjects(prefix).len() + 2 * namespace.len() + 1) / 2
}

#[cfg(feature = "nats")]
/// The subject prefix of the deployment's events: topic `orders.new` is
/// subject `<prefix>.events.orders.new`.
pub(crate) fn nats_event_subjects(prefix: &str) -> String {
    format!("{prefix}.events.")
}

/// `name` as one subject token: letters, digits, `-` and `_` kept, anything
/// else `_`, at most 48 characters.
pub(crate) fn host_token(name: &str) -> String {
    name.chars()
        .take(48)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Checks a deployment prefix: it becomes part of bucket and stream names,
/// which NATS limits to letters, digits, `-` and `_`.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 32 {
        return Err("must be 1 to 32 characters".into());
    }
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("may hold only letters, digits, `-` and `_`".into());
    }
    Ok(())
}

/// Why the backend could not be reached when the host was built.
#[derive(Debug, thiserror::Error)]
#[error("{kind} backend at {url}: {reason}")]
pub struct BackendError {
    /// `nats`.
    pub kind: &'static str,
    /// Where it was looked for.
    pub url: String,
    /// What went wrong.
    pub reason: String,
}
