//! Streaming calls (`Host::call_stream`): the caller receives each chunk
//! the plugin writes with `response.write` as it is written, then how the
//! call ended.
//!
//! A plugin that can write chunks (its component imports
//! `capsule:plugin/response`) is called on a task of its own, so its
//! deadline holds whatever the caller does: a caller that stops reading
//! leaves the plugin waiting in `write` once the buffer is full
//! (`response.buffer`), and the call times out at its deadline. Any other
//! plugin's call runs inline, as the stream is read, like a `Host::call`
//! future: a task per call cost a caller outside the runtime's workers a
//! wake-up (61.7 against 2.5 µs on the warm echo) for plugins that never
//! stream. Either way a caller that drops the stream
//! cancels the call (its instance is dropped mid-call and its kv writes
//! and events with it, as for any call whose future is dropped).

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
    running: Running,
    /// The call's result, once it came, while chunks sent before it are
    /// still being read.
    ended: Option<Result<CallOutcome, CallError>>,
    /// Whether the end was handed out.
    done: bool,
    /// Whether the stream was read: an inline call starts then.
    polled: bool,
}

/// The boxed call of a plugin that cannot stream.
type InlineCall = Pin<Box<dyn Future<Output = Result<CallOutcome, CallError>> + Send>>;

/// Where the call runs.
enum Running {
    /// The plugin can write chunks: the call runs on a task of its own,
    /// its chunks and its end sent to this stream.
    Task {
        chunks: ChunkReceiver,
        end: oneshot::Receiver<Result<CallOutcome, CallError>>,
        task: tokio::task::JoinHandle<()>,
    },
    /// The plugin's component does not import `capsule:plugin/response`,
    /// so the only item is the end: the call runs as this stream is read,
    /// like [`Host::call`], without the task, the channel and the wake-up
    /// on another worker a task costs.
    Inline(InlineCall),
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
    ///
    /// A plugin that can write chunks (its component imports
    /// `capsule:plugin/response`) is called on a task of its own, so its
    /// deadline holds whatever the reader does. Any other plugin's call
    /// yields only its end and runs as the stream is read, as a
    /// [`Host::call`] future does.
    pub fn call_stream(&self, plugin: &str, request: Request) -> CallStream {
        let name: Arc<str> = Arc::from(plugin);
        let host = self.clone();
        let can_stream = self.slot(plugin).is_some_and(|slot| slot.can_stream());
        let running = if can_stream {
            let (sink, chunks) = chunk_channel();
            let (answer, end) = oneshot::channel();
            let name = Arc::clone(&name);
            let task = tokio::spawn(async move {
                let scope = CallScope {
                    response: ResponseTo::Stream(sink),
                    ..CallScope::default()
                };
                let result = host.call_scoped(&name, request, scope).await;
                let _ = answer.send(result);
            });
            Running::Task { chunks, end, task }
        } else {
            // A plugin this host has not loaded lands here too: its call
            // fails, or another host answers it whole.
            let name = Arc::clone(&name);
            Running::Inline(Box::pin(async move {
                host.call_scoped(&name, request, CallScope::default()).await
            }))
        };
        CallStream {
            plugin: name,
            host: self.clone(),
            running,
            ended: None,
            done: false,
            polled: false,
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
        self.polled = true;
        let (chunks, end) = match &mut self.running {
            Running::Inline(call) => {
                let result = std::task::ready!(call.as_mut().poll(cx));
                self.done = true;
                return Poll::Ready(Some(StreamItem::End(result)));
            }
            Running::Task { chunks, end, .. } => (chunks, end),
        };
        if let Poll::Ready(Some(chunk)) = chunks.poll_recv(cx) {
            return Poll::Ready(Some(StreamItem::Chunk(chunk.bytes)));
        }
        if self.ended.is_none() {
            match Pin::new(end).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(result)) => {
                    self.ended = Some(result);
                    // Every chunk was in the channel before the call
                    // returned: the ones not read yet come first.
                    if let Poll::Ready(Some(chunk)) = chunks.poll_recv(cx) {
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
        match chunks.try_recv() {
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
        let running = match &self.running {
            Running::Task { task, .. } => !task.is_finished(),
            // Dropping the boxed call drops it where it stands; one never
            // read never started.
            Running::Inline(_) => self.polled,
        };
        if !self.done && self.ended.is_none() && running {
            if let Running::Task { task, .. } = &self.running {
                task.abort();
            }
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
