//! Distribution: signed plugins pushed to and pulled from OCI registries.
//!
//! A plugin travels as a CNCF Wasm OCI artifact ([`layout`]): an image
//! manifest whose config is `application/vnd.wasm.config.v0+json` and whose
//! one layer is the `application/wasm` component, with the plugin's
//! distribution metadata as standard `org.opencontainers.image.*`
//! annotations (plus `dev.capsule.*` for tags, grants and the contract). The
//! signature travels inside the component, so a pulled plugin is verified
//! against the host's trusted keys exactly like a file.
//!
//! Pulled components land in a content-addressed local [`store`] (bounded in
//! size, every blob's digest checked as it is written); a policy's
//! `source = "oci://…"` is [resolved](resolve) to a file of that store
//! before anything else reads the policy, so reloads, `capsule check` and the
//! loader see an ordinary path — and a tag that moves gives another path,
//! which a reload loads (and refuses, keeping the old version, if the new
//! content is not signed by a trusted key).
//!
//! Budgets: a registry is remote and may be hostile, so every response is
//! read with a bound — manifests [`MAX_OCI_MANIFEST_BYTES`], configs
//! [`MAX_OCI_CONFIG_BYTES`], catalog and tag pages [`MAX_LISTING_BYTES`],
//! components the store's free room and at most
//! [`crate::input::MAX_COMPONENT_BYTES`] — and every request has a timeout.

pub mod layout;
#[cfg(feature = "oci")]
pub mod local;
pub mod reference;
#[cfg(feature = "oci")]
pub mod registry;
#[cfg(feature = "oci")]
pub mod resolve;
pub mod store;

use std::path::PathBuf;
use std::time::Duration;

pub use reference::OciReference;
#[cfg(feature = "oci")]
pub use registry::{Pulled, Pushed, Registry, RepositoryListing};
pub use store::{Store, StoredRef};

/// The largest image manifest read from a registry.
pub const MAX_OCI_MANIFEST_BYTES: u64 = 256 * 1024;
/// The largest artifact config read from a registry.
pub const MAX_OCI_CONFIG_BYTES: u64 = 64 * 1024;
/// The largest catalog or tag-list page read from a registry.
pub const MAX_LISTING_BYTES: u64 = 1024 * 1024;
/// The most repositories or tags `capsule search` lists.
pub const MAX_LISTED: usize = 1000;
/// The default bound on the local store (`[host.oci] max_store`).
pub const DEFAULT_MAX_STORE_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// The default time one registry request may take.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How plugins named by OCI reference are fetched (`[host.oci]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciOptions {
    /// The local store; `None` for the user's default
    /// ([`store::default_dir`]).
    pub store: Option<PathBuf>,
    /// The most bytes the store may hold.
    pub max_store: u64,
    /// Registries (`host` or `host:port`) reached over plain HTTP although
    /// they are not on a loopback address.
    pub insecure: Vec<String>,
    /// The time one registry request may take.
    pub timeout: Duration,
}

impl Default for OciOptions {
    fn default() -> Self {
        OciOptions {
            store: None,
            max_store: DEFAULT_MAX_STORE_BYTES,
            insecure: Vec::new(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

impl OciOptions {
    /// The store directory these options name.
    pub fn store_dir(&self) -> PathBuf {
        self.store.clone().unwrap_or_else(store::default_dir)
    }

    /// Opens the store these options name.
    pub fn open_store(&self) -> Result<Store, DistributionError> {
        Store::open(&self.store_dir(), self.max_store)
    }
}

/// Whether references may reach registries, or only the local store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Ask the registry for tags; fall back on the store's last answer when
    /// it cannot be reached.
    Online,
    /// Use only what the local store holds (`--offline`).
    Offline,
}

/// Why a plugin could not be pushed, pulled or found.
#[derive(Debug, thiserror::Error)]
pub enum DistributionError {
    /// The reference does not parse.
    #[error("`{reference}` is not an OCI reference: {cause}")]
    BadReference {
        /// The text given.
        reference: String,
        /// What is wrong with it.
        cause: String,
    },
    /// The registry did not answer (connection refused, DNS, timeout, TLS).
    #[error("the registry {registry} cannot be reached: {cause}")]
    Unreachable {
        /// `host[:port]`.
        registry: String,
        /// The transport's error.
        cause: String,
    },
    /// The registry has no such repository, tag or digest.
    #[error("{reference} is not in its registry")]
    NotFound {
        /// The reference asked for.
        reference: String,
    },
    /// The registry refused the request (authentication, permissions, or
    /// another error status).
    #[error("the registry refused {what} of {reference}: {cause}")]
    Refused {
        /// The reference.
        reference: String,
        /// What was asked (`the pull`, `the push`, …).
        what: &'static str,
        /// The status and the registry's message.
        cause: String,
    },
    /// A response or artifact part is larger than its bound.
    #[error("the {what} of {reference} is larger than the {limit} bytes allowed")]
    TooLarge {
        /// The reference.
        reference: String,
        /// `manifest`, `config`, `component`, `tag list`, …
        what: &'static str,
        /// The bound, in bytes.
        limit: u64,
    },
    /// A response is not what the protocol or the artifact layout says.
    #[error("the {what} of {reference} is malformed: {cause}")]
    Malformed {
        /// The reference.
        reference: String,
        /// `manifest`, `config`, …
        what: &'static str,
        /// What is wrong.
        cause: String,
    },
    /// Bytes that do not hash to the digest that names them.
    #[error("the {what} of {reference} does not match its digest {expected} (got {actual})")]
    DigestMismatch {
        /// The reference.
        reference: String,
        /// `manifest` or `component`.
        what: &'static str,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// Offline, and the store has no copy of the reference.
    #[error("{reference} is not in the local store {store} (and registries are not asked)")]
    NotStored {
        /// The reference.
        reference: String,
        /// The store directory.
        store: PathBuf,
    },
    /// The store cannot make room for a component.
    #[error(
        "the local store {store} cannot hold {needed} more bytes: it is bounded to {limit} bytes \
         and what it holds is still named by tags ([host.oci] max_store)"
    )]
    StoreFull {
        /// The store directory.
        store: PathBuf,
        /// Bytes asked for.
        needed: u64,
        /// The bound.
        limit: u64,
    },
    /// Reading or writing the store failed.
    #[error("the local store {store}: {cause}")]
    Store {
        /// The store directory.
        store: PathBuf,
        /// The I/O error.
        cause: String,
    },
}

impl DistributionError {
    /// A stable name for the kind of failure, for JSON output and exit
    /// codes.
    pub fn kind(&self) -> &'static str {
        match self {
            DistributionError::BadReference { .. } => "bad_reference",
            DistributionError::Unreachable { .. } => "registry_unreachable",
            DistributionError::NotFound { .. } => "not_found",
            DistributionError::Refused { .. } => "registry_refused",
            DistributionError::TooLarge { .. } => "too_large",
            DistributionError::Malformed { .. } => "malformed_artifact",
            DistributionError::DigestMismatch { .. } => "digest_mismatch",
            DistributionError::NotStored { .. } => "not_stored",
            DistributionError::StoreFull { .. } => "store_full",
            DistributionError::Store { .. } => "store",
        }
    }
}
