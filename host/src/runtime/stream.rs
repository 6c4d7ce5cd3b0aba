//! Streaming calls (`Host::call_stream`): the caller receives each chunk
//! the plugin writes with `response.write` as it is written, then how the
//! call ended.
//!
//! The call runs on a task of its own, so its deadline holds whatever the
//! caller does: a caller that stops reading leaves the plugin waiting in
//! `write` once the buffer is full (`response.buffer`), and the call times
//! out at its deadline; a caller that drops the stream cancels the call
//! (its instance is dropped mid-call and its kv writes and events with it,
//! as for any call whose future is dropped).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::Host;
use crate::contract::Request;
use crate::error::{CallError, CallFailure};
use crate::outcome::CallOutcome;
use crate::services::calls::CallScope;
use crate::services::response::{ChunkReceiver, ResponseTo, chunk_channel};

/// What a streaming call yields, in order: chunks, then one end.
#[derive(Debug)]
pub enum StreamItem {
    /// The next chunk the plugin wrote.
    Chunk(Vec<u8>),
    /// How the call ended. On success the outcome's payload is what
    /// `handle` returned, which follows the chunks (the whole response is
    /// every chunk, then that payload); a pure operation, and a call another
    /// host answered, arrive here whole, without chunks. On failure the
    /// chunks already received are all there is.
    End(Result<CallOutcome, CallError>),
}

/// A call in progress whose response arrives in chunks: read it with
/// [`CallStream::next`] (or as a `futures` `Stream`). Dropping it before
/// the end cancels the call.
pub struct CallStream {
    plugin: Arc<str>,
    host: Host,
    chunks: ChunkReceiver,
    end: oneshot::Receiver<Result<CallOutcome, CallError>>,
    /// The call's result, once it came, while chunks sent before it are
    /// still being read.
    ended: Option<Result<CallOutcome, CallError>>,
    /// Whether the end was handed out.
    done: bool,
    task: tokio::task::JoinHandle<()>,
}

impl Host {
    /// Calls `plugin`'s `handle` with `request` and returns at once: the
    /// chunks the plugin writes with `response.write` arrive as it writes
    /// them, then the outcome (see [`StreamItem`]). Up to the plugin's
    /// `response.buffer` bytes of chunks wait for the reader; past that the
    /// plugin waits, within its deadline. Everything else is as
    /// [`Host::call`]: limits, middleware, metrics, transaction (committed
    /// when the call succeeds; a call that streamed a chunk is not run again
    /// on a conflict). Must be called within a tokio runtime.
    pub fn call_stream(&self, plugin: &str, request: Request) -> CallStream {
        let (sink, chunks) = chunk_channel();
        let (answer, end) = oneshot::channel();
        let host = self.clone();
        let name: Arc<str> = Arc::from(plugin);
        let task = {
            let name = Arc::clone(&name);
            tokio::spawn(async move {
                let scope = CallScope {
                    response: ResponseTo::Stream(sink),
                    ..CallScope::default()
                };
                let result = host.call_scoped(&name, request, scope).await;
                let _ = answer.send(result);
            })
        };
        CallStream {
            plugin: name,
            host: self.clone(),
            chunks,
            end,
            ended: None,
            done: false,
            task,
        }
    }
}

impl CallStream {
    /// The next chunk, or the end; `None` after the end.
    pub async fn next(&mut self) -> Option<StreamItem> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    /// The plugin called.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<StreamItem>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(Some(chunk)) = self.chunks.poll_recv(cx) {
            return Poll::Ready(Some(StreamItem::Chunk(chunk.bytes)));
        }
        if self.ended.is_none() {
            match Pin::new(&mut self.end).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(result)) => {
                    self.ended = Some(result);
                    // Every chunk was in the channel before the call
                    // returned: the ones not read yet come first.
                    if let Poll::Ready(Some(chunk)) = self.chunks.poll_recv(cx) {
                        return Poll::Ready(Some(StreamItem::Chunk(chunk.bytes)));
                    }
                }
                Poll::Ready(Err(_)) => {
                    self.ended = Some(Err(CallError::new(
                        self.plugin.to_string(),
                        CallFailure::Host("the call's task ended without an answer".into()),
                    )));
                }
            }
        }
        match self.chunks.try_recv() {
            Ok(chunk) => Poll::Ready(Some(StreamItem::Chunk(chunk.bytes))),
            Err(_) => {
                self.done = true;
                Poll::Ready(self.ended.take().map(StreamItem::End))
            }
        }
    }
}

impl futures_util::Stream for CallStream {
    type Item = StreamItem;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamItem>> {
        self.get_mut().poll_item(cx)
    }
}

impl Drop for CallStream {
    fn drop(&mut self) {
        if !self.done && self.ended.is_none() && !self.task.is_finished() {
            self.task.abort();
            self.host
                .inner
                .dispatch
                .metrics
                .stream_cancelled(&self.plugin);
            tracing::info!(
                plugin = %crate::text::log_field(&self.plugin),
                "a streaming call was cancelled: its caller went away"
            );
        }
    }
}

impl std::fmt::Debug for CallStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStream")
            .field("plugin", &self.plugin)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
