//! The process's TLS crypto provider.
//!
//! With the `oci` feature, reqwest is built with rustls but without a
//! built-in crypto provider (ring is the one this workspace already builds;
//! reqwest's own default would add aws-lc). Cargo unifies features, so that
//! reqwest is the one every crate of the binary uses — the OTLP exporter, an
//! embedder's own HTTP clients — and reqwest panics building any client while
//! no provider is installed. capsule-host installs ring before it builds a
//! registry client, a host or an OTLP exporter; an embedder that builds
//! reqwest clients of its own before any of those calls [`install_provider`]
//! first.

/// Makes ring the process's default rustls provider unless one is already
/// installed. Idempotent and cheap; does nothing without the `oci` feature.
pub fn install_provider() {
    #[cfg(feature = "oci")]
    {
        // An error means a provider is already installed: keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
