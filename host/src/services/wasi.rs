//! Standard WASI p2 for every plugin, granting nothing by itself: never
//! arguments, sockets or name lookups; stdin closed; random requests
//! bounded. Services add to it (`files` its preopens, `env` its variables).
//! Rust guests import `wasi:cli` and `wasi:io` even when they do no I/O, so
//! WASI is always linked; stdout and stderr are captured into the plugin's
//! [`LogSink`] under its log budget.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime::component::Linker;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use super::log::LogSink;
use crate::limits::MAX_RANDOM_BYTES;
use crate::outcome::LogSource;

/// A WASI context builder with what every plugin gets: captured stdout and
/// stderr, bounded randomness, no sockets. Services add their grants before
/// it is built.
pub(crate) fn base(sink: &Arc<LogSink>) -> WasiCtxBuilder {
    let mut builder = WasiCtxBuilder::new();
    builder
        // The host allocates a random request in full before handing it
        // over; seeding a generator needs a few dozen bytes.
        .max_random_size(MAX_RANDOM_BYTES)
        .stdout(CapturedStream::new(sink, LogSource::Stdout))
        .stderr(CapturedStream::new(sink, LogSource::Stderr))
        // Sockets would let a plugin bypass the HTTP allow-list; every address
        // is already refused by default, and these make it explicit.
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    builder
}

/// Links every WASI p2 interface a plugin may import.
pub(crate) fn add_to_linker<T: wasmtime_wasi::WasiView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)
}

/// Largest write a guest may make in one step; the budget itself is enforced
/// per write by the sink.
const WRITE_PERMIT: usize = 64 * 1024;

/// stdout or stderr of a plugin, forwarded line by line into its log.
#[derive(Clone)]
struct CapturedStream {
    sink: Arc<LogSink>,
    source: LogSource,
}

impl CapturedStream {
    fn new(sink: &Arc<LogSink>, source: LogSource) -> Self {
        CapturedStream {
            sink: Arc::clone(sink),
            source,
        }
    }
}

impl IsTerminal for CapturedStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedStream {
    async fn ready(&mut self) {}
}

impl OutputStream for CapturedStream {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.sink
            .write_stream(self.source, &bytes)
            .map_err(|exceeded| StreamError::Trap(wasmtime::Error::new(exceeded)))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for CapturedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(
            self.sink
                .write_stream(self.source, buf)
                .map(|()| buf.len())
                .map_err(std::io::Error::other),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
