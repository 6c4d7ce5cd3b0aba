//! Host-side middleware for embedders: hooks that run before and after every
//! plugin call, and on every failure — for authentication, auditing, request
//! ids, extra metrics.
//!
//! ```
//! use capsule_host::{CallContext, CallError, CallOutcome, Middleware};
//!
//! /// Refuses calls without an `authorization` metadata entry.
//! struct RequireAuth;
//!
//! impl Middleware for RequireAuth {
//!     fn before(&self, call: &mut CallContext<'_>) -> Result<(), String> {
//!         match call.request.metadata.iter().any(|(k, _)| k == "authorization") {
//!             true => Ok(()),
//!             false => Err("missing authorization".into()),
//!         }
//!     }
//! }
//! ```

use std::time::Instant;

use crate::contract::Request;
use crate::error::CallError;
use crate::outcome::CallOutcome;
use crate::text::log_field;

/// What a middleware sees of a call.
pub struct CallContext<'a> {
    /// The plugin (or pipeline stage) being called.
    pub plugin: &'a str,
    /// The request, which `before` may change.
    pub request: &'a mut Request,
    /// When the call started.
    pub started: Instant,
}

/// Hooks around every call. Every method has a default that does nothing.
pub trait Middleware: Send + Sync + 'static {
    /// Runs before the plugin; an `Err` refuses the call with kind
    /// `rejected` and this message.
    fn before(&self, call: &mut CallContext<'_>) -> Result<(), String> {
        let _ = call;
        Ok(())
    }

    /// Runs after a successful call; may add response metadata.
    fn after(&self, plugin: &str, request: &Request, outcome: &mut CallOutcome) {
        let _ = (plugin, request, outcome);
    }

    /// Runs after a failed call.
    fn on_error(&self, plugin: &str, request: &Request, error: &CallError) {
        let _ = (plugin, request, error);
    }
}

/// Gives every call a request id: the caller's `request-id` metadata if it
/// has one, a fresh one otherwise. The id is recorded on the call's tracing
/// span, passed to the plugin, copied into the response metadata and logged
/// with failures, so one id follows a request through logs and replies.
#[derive(Debug, Default)]
pub struct RequestId;

/// The metadata key [`RequestId`] reads and writes.
pub const REQUEST_ID: &str = "request-id";

impl RequestId {
    fn of(request: &Request) -> Option<&str> {
        request
            .metadata
            .iter()
            .find(|(k, _)| k == REQUEST_ID)
            .map(|(_, v)| v.as_str())
    }

    fn fresh() -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let mut random = [0u8; 8];
        // A failure to read randomness still leaves the counter unique.
        let _ = getrandom::fill(&mut random);
        format!(
            "{:016x}-{:06x}",
            u64::from_le_bytes(random),
            NEXT.fetch_add(1, Ordering::Relaxed) & 0xff_ffff
        )
    }
}

impl Middleware for RequestId {
    fn before(&self, call: &mut CallContext<'_>) -> Result<(), String> {
        let id = match Self::of(call.request) {
            Some(id) => id.to_owned(),
            None => {
                let id = Self::fresh();
                call.request
                    .metadata
                    .push((REQUEST_ID.to_owned(), id.clone()));
                id
            }
        };
        tracing::Span::current().record("request_id", id.as_str());
        Ok(())
    }

    fn after(&self, _plugin: &str, request: &Request, outcome: &mut CallOutcome) {
        if let Some(id) = Self::of(request)
            && !outcome
                .response
                .metadata
                .iter()
                .any(|(k, _)| k == REQUEST_ID)
        {
            outcome
                .response
                .metadata
                .push((REQUEST_ID.to_owned(), id.to_owned()));
        }
    }

    fn on_error(&self, plugin: &str, request: &Request, error: &CallError) {
        tracing::warn!(
            plugin = %log_field(plugin),
            request_id = %log_field(Self::of(request).unwrap_or("-")),
            kind = %error.kind(),
            "call failed: {}",
            log_field(&error.cause.to_string())
        );
    }
}
