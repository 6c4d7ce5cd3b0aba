//! The `response` service (`capsule:plugin/response`, contract 0.2): a
//! plugin writes its response in chunks while `handle` runs. A caller that
//! streams (`Host::call_stream`, `capsule serve`, `capsule run`) receives
//! each chunk as it is written; any other caller gets the chunks, then the
//! payload `handle` returned, as one response.
//!
//! Every plugin may write (nothing to grant); the policy may size the
//! buffer: `response = { buffer = "1MiB" }`. Budgets, per call: the chunks
//! and the returned payload together are bounded by the plugin's
//! `max_response` (the write that would pass it is `quota-exceeded` and the
//! call fails as `output_too_large`); a streaming caller's unread chunks
//! hold at most `buffer` bytes of host memory (256 KiB unless the policy
//! says otherwise, 1 KiB to 64 MiB; each chunk counts 64 bytes more for
//! its bookkeeping, so a flood of empty-ish chunks is bounded too), plus
//! the one chunk being written: a `write` past it waits for the caller to
//! read, within the call's deadline. A caller that does not stream buffers
//! the chunks in the store, bounded by `max_response`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use wasmtime::component::{HasData, Linker};

use super::{
    Availability, Holds, Import, PolicyContext, PrepareContext, Service, StoreContext, Views,
};
use crate::bounds::{Invalid, KIB, MIB, bytes};
use crate::contract::{ServiceError, interfaces_v0_2};
use crate::limits::Limits;
use crate::units::Size;

/// The buffer a streaming caller's unread chunks may fill when the policy
/// does not say.
pub const DEFAULT_BUFFER: u64 = 256 * KIB;
/// The smallest buffer a policy may set.
pub const MIN_BUFFER: u64 = KIB;
/// The largest buffer a policy may set.
pub const MAX_BUFFER: u64 = 64 * MIB;
/// What one chunk costs the buffer beyond its bytes: the host's
/// bookkeeping of it.
pub const CHUNK_OVERHEAD: usize = 64;

/// What the operator may set: the bytes of unread chunks the host holds for
/// a streaming caller before `write` waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResponseGrant {
    /// Bytes of unread chunks held for the caller.
    pub buffer: u64,
}

impl Default for ResponseGrant {
    fn default() -> Self {
        ResponseGrant {
            buffer: DEFAULT_BUFFER,
        }
    }
}

/// How a policy file writes the grant: `response = { buffer = "1MiB" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResponsePolicy {
    buffer: Option<Size>,
}

/// Where a call's chunks go, set by whoever starts the call.
#[derive(Debug, Clone, Default)]
pub(crate) enum ResponseTo {
    /// The entry point running is not `handle` (`init`, `on-event`,
    /// `health`): writing is `invalid`.
    #[default]
    NoResponse,
    /// `handle`, for a caller that takes the response whole: chunks are
    /// kept in the store and put before the returned payload.
    Whole,
    /// `handle`, for a caller that streams: chunks go to it as written.
    Stream(ChunkSink),
}

/// The sending end of a streaming call's chunks: an unbounded channel
/// whose bytes are bounded by a semaphore each chunk holds a share of
/// until the caller takes it.
#[derive(Debug, Clone)]
pub(crate) struct ChunkSink {
    sender: mpsc::UnboundedSender<Chunk>,
    room: Arc<Room>,
}

/// The buffer's bytes, sized by the first plugin to write (the caller does
/// not know which version of the plugin will serve it).
#[derive(Debug)]
struct Room {
    permits: Arc<Semaphore>,
    size: std::sync::OnceLock<usize>,
}

/// One chunk on its way to the caller, holding its share of the buffer.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) bytes: Vec<u8>,
    _room: OwnedSemaphorePermit,
}

/// The receiving end of [`ChunkSink`].
pub(crate) type ChunkReceiver = mpsc::UnboundedReceiver<Chunk>;

/// A new channel for one streaming call's chunks.
pub(crate) fn chunk_channel() -> (ChunkSink, ChunkReceiver) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let room = Arc::new(Room {
        permits: Arc::new(Semaphore::new(0)),
        size: std::sync::OnceLock::new(),
    });
    (ChunkSink { sender, room }, receiver)
}

impl ChunkSink {
    /// Sends `bytes`, waiting while the caller's unread chunks fill
    /// `buffer` bytes. Fails when the caller is gone.
    async fn send(&self, bytes: Vec<u8>, buffer: usize) -> Result<(), ServiceError> {
        let size = *self.room.size.get_or_init(|| {
            self.room.permits.add_permits(buffer);
            buffer
        });
        let share = (bytes.len() + CHUNK_OVERHEAD).min(size);
        let gone = || ServiceError::Unavailable("the caller stopped reading the response".into());
        let permit = Arc::clone(&self.room.permits)
            .acquire_many_owned(u32::try_from(share).unwrap_or(u32::MAX))
            .await
            .map_err(|_| gone())?;
        self.sender
            .send(Chunk {
                bytes,
                _room: permit,
            })
            .map_err(|_| gone())
    }
}

/// What a call wrote, taken from the store when `handle` returns.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// The chunks of a call whose caller takes the response whole.
    pub(crate) whole: Vec<u8>,
    /// Bytes written in all.
    pub(crate) bytes: usize,
    /// Whether a chunk went to a streaming caller.
    pub(crate) streamed: bool,
    /// Whether a write was refused for passing the response limit.
    pub(crate) over: bool,
}

/// Per-store state of the `response` service.
pub(crate) struct ResponseState {
    buffer: usize,
    /// The response limit of the running call.
    limit: usize,
    to: ResponseTo,
    written: Written,
}

impl ResponseState {
    /// What the call wrote; the state is empty afterwards.
    pub(crate) fn take(&mut self) -> Written {
        std::mem::take(&mut self.written)
    }
}

impl interfaces_v0_2::response::Host for ResponseState {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<(), ServiceError> {
        if matches!(self.to, ResponseTo::NoResponse) {
            return Err(ServiceError::Invalid(
                "a response is written only while `handle` runs".into(),
            ));
        }
        let total = self.written.bytes.saturating_add(chunk.len());
        if total > self.limit {
            self.written.over = true;
            return Err(ServiceError::QuotaExceeded(format!(
                "the response would pass its limit of {} bytes (`max_response`)",
                self.limit
            )));
        }
        self.written.bytes = total;
        match &self.to {
            ResponseTo::NoResponse => unreachable!("refused above"),
            ResponseTo::Whole => self.written.whole.extend_from_slice(&chunk),
            ResponseTo::Stream(_) if chunk.is_empty() => {}
            ResponseTo::Stream(sink) => {
                sink.send(chunk, self.buffer).await?;
                self.written.streamed = true;
            }
        }
        Ok(())
    }
}

/// The `response` service.
pub(crate) struct ResponseService;

struct ResponseData;

impl HasData for ResponseData {
    type Data<'a> = &'a mut ResponseState;
}

impl Service for ResponseService {
    const NAME: &'static str = "response";
    const IMPORTS: &'static [Import] = &[Import::contract("response")];
    const BUDGETS: &'static str = "per call: every chunk and the returned payload together \
        within `max_response` (past it `quota-exceeded`, and the call fails as \
        `output_too_large`); a streaming caller's unread chunks hold at most `buffer` bytes \
        (256 KiB unless set, 1 KiB to 64 MiB; 64 bytes more per chunk) plus the chunk being \
        written, and `write` waits for the caller within the call's deadline";

    type Grant = ResponseGrant;
    type Policy = ResponsePolicy;
    type Summary = ResponseGrant;
    type Prepared = ResponseGrant;
    type State = ResponseState;

    fn from_policy(
        policy: ResponsePolicy,
        _: &PolicyContext<'_>,
    ) -> Result<ResponseGrant, Invalid> {
        Ok(ResponseGrant {
            buffer: policy.buffer.map_or(DEFAULT_BUFFER, |size| size.0),
        })
    }

    fn validate(grant: &ResponseGrant) -> Result<(), Invalid> {
        bytes("buffer", grant.buffer, MIN_BUFFER, MAX_BUFFER)
    }

    fn availability(_grant: &ResponseGrant) -> Availability {
        Availability::Always
    }

    fn summary(grant: &ResponseGrant) -> ResponseGrant {
        grant.clone()
    }

    fn prepare(grant: &ResponseGrant, _: &PrepareContext<'_>) -> Result<ResponseGrant, String> {
        Ok(grant.clone())
    }

    fn new_state(
        prepared: &ResponseGrant,
        store: &mut StoreContext<'_>,
    ) -> Result<ResponseState, String> {
        Ok(ResponseState {
            buffer: usize::try_from(prepared.buffer).unwrap_or(usize::MAX),
            limit: store.limits.max_response_bytes,
            to: ResponseTo::NoResponse,
            written: Written::default(),
        })
    }

    fn begin_call(state: &mut ResponseState, limits: &Limits, scope: &super::calls::CallScope) {
        state.limit = limits.max_response_bytes;
        state.to = scope.response.clone();
        state.written = Written::default();
    }

    fn end_call(state: &mut ResponseState) {
        // The caller's channel is not kept by an idle instance.
        state.to = ResponseTo::NoResponse;
    }

    fn add_to_linker<T: Holds<Self> + Views>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        interfaces_v0_2::response::add_to_linker::<T, ResponseData>(linker, |store| store.state())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::contract::interfaces_v0_2::response::Host as _;
    use crate::services::calls::CallScope;
    use crate::services::harness::Harness;

    fn writing(to: ResponseTo, limit: usize) -> Harness<ResponseService> {
        let mut harness =
            Harness::<ResponseService>::from_policy("{ buffer = \"1KiB\" }", Path::new("."))
                .unwrap();
        let limits = Limits {
            max_response_bytes: limit,
            ..Limits::default()
        };
        let scope = CallScope {
            response: to,
            ..CallScope::default()
        };
        ResponseService::begin_call(&mut harness.state, &limits, &scope);
        harness
    }

    #[tokio::test]
    async fn a_whole_response_keeps_the_chunks_within_the_limit() {
        let mut response = writing(ResponseTo::Whole, 10);
        response.state.write(b"abc".to_vec()).await.unwrap();
        response.state.write(b"defg".to_vec()).await.unwrap();
        let err = response.state.write(b"hijk".to_vec()).await.unwrap_err();
        assert!(matches!(err, ServiceError::QuotaExceeded(_)), "{err:?}");
        let written = response.state.take();
        assert_eq!(written.whole, b"abcdefg");
        assert_eq!(written.bytes, 7);
        assert!(written.over && !written.streamed);
    }

    #[tokio::test]
    async fn outside_handle_nothing_is_written() {
        let mut response = writing(ResponseTo::NoResponse, 10);
        let err = response.state.write(b"a".to_vec()).await.unwrap_err();
        assert!(matches!(err, ServiceError::Invalid(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_stream_waits_for_its_reader_when_the_buffer_is_full() {
        let (sink, mut receiver) = chunk_channel();
        let mut response = writing(ResponseTo::Stream(sink), 1 << 20);
        // 1 KiB of buffer: two 400-byte chunks (464 with their overhead)
        // fit, the third waits.
        response.state.write(vec![1; 400]).await.unwrap();
        response.state.write(vec![2; 400]).await.unwrap();
        {
            let third = response.state.write(vec![3; 400]);
            tokio::pin!(third);
            assert!(
                tokio::time::timeout(std::time::Duration::from_millis(50), &mut third)
                    .await
                    .is_err(),
                "the third chunk must wait for the reader"
            );
            let first = receiver.recv().await.unwrap();
            assert_eq!(first.bytes, vec![1; 400]);
            drop(first);
            third.await.unwrap();
        }
        assert_eq!(receiver.recv().await.unwrap().bytes, vec![2; 400]);
        assert_eq!(receiver.recv().await.unwrap().bytes, vec![3; 400]);
        let written = response.state.take();
        assert!(written.streamed && written.whole.is_empty());
        assert_eq!(written.bytes, 1200);
        // A reader that went away: the plugin is told, not left waiting.
        drop(receiver);
        let err = response.state.write(vec![4; 10]).await.unwrap_err();
        assert!(matches!(err, ServiceError::Unavailable(_)), "{err:?}");
    }

    #[test]
    fn the_buffer_is_bounded() {
        assert!(
            Harness::<ResponseService>::from_policy("{ buffer = 512 }", Path::new(".")).is_err()
        );
        assert!(
            Harness::<ResponseService>::from_policy("{ buffer = \"65MiB\" }", Path::new("."))
                .is_err()
        );
        assert!(
            Harness::<ResponseService>::from_policy("{ size = 4096 }", Path::new(".")).is_err()
        );
    }
}
