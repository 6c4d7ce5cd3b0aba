//! Turning a policy's `source = "oci://…"` plugins into files of the local
//! store, before the policy is used.
//!
//! A reference pinned by digest whose component the store holds is used as
//! is, without asking the registry. A tag is asked of the registry every
//! time (it may have moved); when the registry cannot be reached, the store's
//! last answer for that tag is used and the policy says so. `--offline`
//! never asks. Verification against the trusted keys happens at load, as for
//! any file: a tag re-pointed at unsigned or untrusted content loads nothing,
//! and a reload keeps the version that is serving.

use super::{DistributionError, Fetch, OciOptions, OciReference, Registry, Store, StoredRef};

/// What one reference resolved to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The component's file in the store.
    pub path: std::path::PathBuf,
    /// The store's record of the reference.
    pub stored: StoredRef,
    /// Why the registry's answer was not used, when it was not.
    pub fallback: Option<String>,
}

/// Resolves `references` one after the other on a thread of its own, with
/// a runtime of its own, so callers in or out of an async context can wait
/// for it.
pub fn resolve_blocking(
    options: &OciOptions,
    references: &[OciReference],
    fetch: Fetch,
) -> Vec<Result<Resolved, DistributionError>> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let failure = |_| {
                            Err(DistributionError::Store {
                                store: options.store_dir(),
                                cause: format!("cannot start the resolver's runtime: {err}"),
                            })
                        };
                        return references.iter().map(failure).collect();
                    }
                };
                runtime.block_on(resolve_all(options, references, fetch))
            })
            .join()
            .unwrap_or_else(|_| {
                references
                    .iter()
                    .map(|r| {
                        Err(DistributionError::Store {
                            store: options.store_dir(),
                            cause: format!("resolving {r} panicked"),
                        })
                    })
                    .collect()
            })
    })
}

/// Resolves every reference against one store and one client.
pub async fn resolve_all(
    options: &OciOptions,
    references: &[OciReference],
    fetch: Fetch,
) -> Vec<Result<Resolved, DistributionError>> {
    let store = match options.open_store() {
        Ok(store) => store,
        Err(err) => {
            let text = err.to_string();
            return references
                .iter()
                .map(|_| {
                    Err(DistributionError::Store {
                        store: options.store_dir(),
                        cause: text.clone(),
                    })
                })
                .collect();
        }
    };
    let registry = match fetch {
        Fetch::Online => Some(Registry::new(options)),
        Fetch::Offline => None,
    };
    let mut out = Vec::with_capacity(references.len());
    for reference in references {
        let result = match &registry {
            Some(Ok(registry)) => resolve_one(registry, &store, reference).await,
            Some(Err(err)) => Err(DistributionError::Unreachable {
                registry: reference.registry.clone(),
                cause: err.to_string(),
            }),
            None => from_store(&store, reference, "offline".into()),
        };
        out.push(result);
    }
    out
}

async fn resolve_one(
    registry: &Registry,
    store: &Store,
    reference: &OciReference,
) -> Result<Resolved, DistributionError> {
    // A digest names one content forever: what the store has is it.
    if reference.digest.is_some()
        && let Some(stored) = store.recall(reference)
        && let Some(path) = store.verified_blob(&stored.component_digest)
    {
        return Ok(Resolved {
            path,
            stored,
            fallback: None,
        });
    }
    match registry.pull(reference, store).await {
        Ok(pulled) => Ok(Resolved {
            path: pulled.path,
            stored: pulled.stored,
            fallback: None,
        }),
        Err(err @ DistributionError::Unreachable { .. }) => {
            let why = err.to_string();
            from_store(store, reference, why.clone()).map_err(|_| err)
        }
        Err(err) => Err(err),
    }
}

/// The store's last answer for `reference`, used because of `why`.
fn from_store(
    store: &Store,
    reference: &OciReference,
    why: String,
) -> Result<Resolved, DistributionError> {
    let not_stored = || DistributionError::NotStored {
        reference: reference.to_string(),
        store: store.dir().to_owned(),
    };
    let stored = store.recall(reference).ok_or_else(not_stored)?;
    let path = store
        .verified_blob(&stored.component_digest)
        .ok_or_else(not_stored)?;
    tracing::warn!(
        reference = %reference,
        digest = %stored.manifest_digest,
        "using the local store's copy: {why}"
    );
    Ok(Resolved {
        path,
        stored,
        fallback: Some(why),
    })
}
