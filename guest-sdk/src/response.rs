//! Writing the response in chunks while `handle` runs. A caller that
//! streams (`capsule serve`, `capsule run`, `Host::call_stream`) receives
//! each chunk as it is written; any other caller gets every chunk, then the
//! payload `handle` returns, as one response. Nothing needs a grant.
//!
//! The chunks and the returned payload together count against the
//! plugin's response limit (`max_response`): past it, [`write`] is
//! `quota-exceeded` and the call fails as `output_too_large`. A caller that
//! reads slowly makes [`write`] wait (the host holds a bounded buffer of
//! unread chunks), within the call's deadline. If the call fails after
//! chunks were sent, the caller sees the stream end with the error, and
//! the call's kv writes are discarded as for any failed call.
//!
//! [`Writer`] buffers small writes into chunks of a useful size and
//! implements [`std::io::Write`], so formatters (`write!`, a CSV or JSON
//! writer) can stream straight to the caller:
//!
//! ```
//! use std::io::Write as _;
//! use capsule_guest::response::Writer;
//! use capsule_guest::{Plugin, PluginError, Request, Response};
//!
//! struct Numbers;
//!
//! impl Plugin for Numbers {
//!     fn handle(_request: Request) -> Result<Response, PluginError> {
//!         let mut out = Writer::new();
//!         for n in 1..=3 {
//!             writeln!(out, "{n}").map_err(|err| PluginError::failed(err.to_string()))?;
//!         }
//!         out.finish()?;
//!         Ok(Response::bytes("done\n"))
//!     }
//! }
//!
//! let host = capsule_guest::testing::MockHost::new();
//! let whole = host.call::<Numbers>(Request::new("count", ""))?;
//! assert_eq!(whole.payload, b"1\n2\n3\ndone\n");
//! assert_eq!(host.chunks(), [b"1\n2\n3\n".to_vec()]);
//! # Ok::<(), PluginError>(())
//! ```

use crate::ServiceError;

/// The chunk size [`Writer::new`] collects before sending.
pub const DEFAULT_CHUNK: usize = 16 * 1024;

/// Sends `chunk` to the caller as the next part of the response.
pub fn write(chunk: &[u8]) -> Result<(), ServiceError> {
    crate::host::response_write(chunk)
}

/// Collects writes into chunks of a set size and sends each when full;
/// [`Writer::finish`] sends the rest. Dropping it unfinished sends the rest
/// too, ignoring a failure.
#[derive(Debug)]
pub struct Writer {
    pending: Vec<u8>,
    chunk: usize,
}

impl Writer {
    /// A writer that sends chunks of [`DEFAULT_CHUNK`] bytes.
    pub fn new() -> Writer {
        Writer::with_chunk(DEFAULT_CHUNK)
    }

    /// A writer that sends chunks of `chunk` bytes (at least 1).
    pub fn with_chunk(chunk: usize) -> Writer {
        let chunk = chunk.max(1);
        Writer {
            pending: Vec::with_capacity(chunk),
            chunk,
        }
    }

    /// Appends `bytes`, sending every full chunk.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), ServiceError> {
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= self.chunk {
            self.send()?;
        }
        Ok(())
    }

    /// Sends what is collected now, as one chunk.
    pub fn send(&mut self) -> Result<(), ServiceError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = write(&self.pending);
        self.pending.clear();
        result
    }

    /// Sends the rest.
    pub fn finish(mut self) -> Result<(), ServiceError> {
        self.send()
    }
}

impl Default for Writer {
    fn default() -> Self {
        Writer::new()
    }
}

impl std::io::Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_bytes(bytes)
            .map_err(|err| std::io::Error::other(format!("{err:?}")))?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
            .map_err(|err| std::io::Error::other(format!("{err:?}")))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.send();
    }
}
