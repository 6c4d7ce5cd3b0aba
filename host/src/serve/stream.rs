//! Streamed answers of `POST /v1/plugins/{name}/call`. A call runs as a
//! [`CallStream`]; what comes first decides the answer:
//!
//! - the call ended without writing a chunk: the ordinary answer (status,
//!   headers with the call's cost and metadata, whole body), unless the
//!   client asked for events;
//! - the plugin wrote a chunk (`response.write`), or the client sent
//!   `Accept: text/event-stream`: `200` at once, then each chunk as it
//!   comes — HTTP/1.1 chunked transfer encoding, or server-sent events
//!   (`event: chunk`, with the chunk as `data:` lines when it is UTF-8
//!   text without carriage returns, else `event: chunk-base64`; then one
//!   `event: end` with the metadata and cost, or `event: error`).
//!
//! How a chunked stream ends: with trailers (`x-capsule-status: ok` or
//! `error`, `x-capsule-error-kind`, `x-capsule-error`,
//! `x-capsule-duration-us`, `x-capsule-fuel`) when the client sent
//! `TE: trailers`; otherwise a call that failed after its first chunk ends
//! the connection without the last chunk, so the client sees a truncated
//! response rather than a complete-looking one.
//!
//! Budgets: nothing is buffered here beyond the chunk being written; the
//! plugin's `response.buffer` bounds what waits for a slow client, and the
//! server's `write_timeout` drops a client that stops reading, which
//! cancels the call. A client that disconnects cancels it too.

use std::collections::VecDeque;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64ct::{Base64, Encoding};
use http_body::Frame;
use serde_json::json;

use super::{error_message, status_for};
use crate::error::CallError;
use crate::outcome::CallOutcome;
use crate::runtime::{CallStream, StreamItem};

/// The trailers a chunked stream may end with, declared up front as
/// HTTP/1.1 requires.
const TRAILERS: &str = "x-capsule-status, x-capsule-error-kind, x-capsule-error, x-capsule-duration-us, x-capsule-fuel";
/// The longest error message sent in a trailer.
const MAX_TRAILER_MESSAGE: usize = 1024;

/// How the client asked to receive a streamed answer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    /// Chunked transfer encoding; trailers when the client accepts them.
    Chunked { trailers: bool },
    /// Server-sent events.
    Events,
}

impl Delivery {
    /// What the request's `Accept` and `TE` headers ask for.
    pub(super) fn asked(headers: &HeaderMap) -> Delivery {
        let mentions = |name: header::HeaderName, token: &str| {
            headers.get_all(name).iter().any(|value| {
                value.to_str().is_ok_and(|value| {
                    value
                        .split(',')
                        .any(|part| part.split(';').next().unwrap_or("").trim() == token)
                })
            })
        };
        if mentions(header::ACCEPT, "text/event-stream") {
            Delivery::Events
        } else {
            Delivery::Chunked {
                trailers: mentions(header::TE, "trailers"),
            }
        }
    }
}

/// The answer to a streaming call whose first item was `first`.
pub(super) fn respond(first: StreamItem, rest: CallStream, delivery: Delivery) -> Response {
    let content_type = match (&delivery, &first) {
        (Delivery::Events, _) => "text/event-stream",
        (_, StreamItem::Chunk(chunk)) if std::str::from_utf8(chunk).is_ok() => {
            "text/plain; charset=utf-8"
        }
        _ => "application/octet-stream",
    };
    let state = Streaming {
        first: Some(first),
        rest,
        delivery,
        queued: VecDeque::new(),
        done: false,
    };
    let frames = futures_util::stream::unfold(state, |mut state| async move {
        let frame = state.next_frame().await?;
        Some((frame, state))
    });
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        Body::new(http_body_util::StreamBody::new(frames)),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    match delivery {
        Delivery::Events => {
            // Proxies that buffer answers would hold the events back.
            headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        }
        Delivery::Chunked { trailers: true } => {
            headers.insert(header::TRAILER, HeaderValue::from_static(TRAILERS));
        }
        Delivery::Chunked { trailers: false } => {}
    }
    response
}

type FrameResult = Result<Frame<Bytes>, std::io::Error>;

/// A streamed answer in progress.
struct Streaming {
    first: Option<StreamItem>,
    rest: CallStream,
    delivery: Delivery,
    queued: VecDeque<FrameResult>,
    done: bool,
}

impl Streaming {
    async fn next_frame(&mut self) -> Option<FrameResult> {
        loop {
            if let Some(frame) = self.queued.pop_front() {
                if frame.is_err() {
                    // Pending once, so hyper flushes what was already sent
                    // before the error ends the connection.
                    tokio::task::yield_now().await;
                }
                return Some(frame);
            }
            if self.done {
                return None;
            }
            let item = match self.first.take() {
                Some(item) => item,
                None => self.rest.next().await?,
            };
            self.queue(item);
        }
    }

    fn queue(&mut self, item: StreamItem) {
        match item {
            StreamItem::Chunk(chunk) => {
                let data = self.data(chunk);
                self.queued.push_back(Ok(Frame::data(data)));
            }
            StreamItem::End(Ok(outcome)) => {
                self.done = true;
                let tail = outcome.response.payload.clone();
                if !tail.is_empty() {
                    let data = self.data(tail);
                    self.queued.push_back(Ok(Frame::data(data)));
                }
                match self.delivery {
                    Delivery::Events => {
                        self.queued
                            .push_back(Ok(Frame::data(event("end", &end_data(&outcome)))));
                    }
                    Delivery::Chunked { trailers: true } => {
                        self.queued
                            .push_back(Ok(Frame::trailers(ok_trailers(&outcome))));
                    }
                    Delivery::Chunked { trailers: false } => {}
                }
            }
            StreamItem::End(Err(err)) => {
                self.done = true;
                let frame = match self.delivery {
                    Delivery::Events => Ok(Frame::data(event("error", &error_data(&err)))),
                    Delivery::Chunked { trailers: true } => {
                        Ok(Frame::trailers(error_trailers(&err)))
                    }
                    // No way to say it: cut the response short.
                    Delivery::Chunked { trailers: false } => Err(std::io::Error::other(format!(
                        "the call failed after streaming began: {}",
                        err.kind().as_str()
                    ))),
                };
                self.queued.push_back(frame);
            }
        }
    }

    /// One chunk as the delivery writes it.
    fn data(&self, chunk: Vec<u8>) -> Bytes {
        match self.delivery {
            Delivery::Chunked { .. } => Bytes::from(chunk),
            Delivery::Events => match String::from_utf8(chunk) {
                Ok(text) if !text.contains('\r') => event("chunk", &text),
                Ok(text) => event("chunk-base64", &Base64::encode_string(text.as_bytes())),
                Err(bytes) => event("chunk-base64", &Base64::encode_string(bytes.as_bytes())),
            },
        }
    }
}

/// A server-sent event: `text` as one `data:` line per line.
fn event(name: &str, text: &str) -> Bytes {
    let mut out = String::with_capacity(text.len() + 16 + name.len());
    out.push_str("event: ");
    out.push_str(name);
    out.push('\n');
    for line in text.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

fn end_data(outcome: &CallOutcome) -> String {
    json!({
        "metadata": outcome.response.metadata,
        "duration_us": outcome.stats.duration.as_micros() as u64,
        "fuel": outcome.stats.fuel_used,
        "cached": outcome.stats.cached,
    })
    .to_string()
}

fn error_data(err: &CallError) -> String {
    json!({
        "status": status_for(&err.cause).as_u16(),
        "kind": err.kind().as_str(),
        "plugin": err.plugin,
        "message": error_message(err),
    })
    .to_string()
}

fn ok_trailers(outcome: &CallOutcome) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-capsule-status", HeaderValue::from_static("ok"));
    trailers.insert(
        "x-capsule-duration-us",
        HeaderValue::from(outcome.stats.duration.as_micros() as u64),
    );
    if let Some(fuel) = outcome.stats.fuel_used {
        trailers.insert("x-capsule-fuel", HeaderValue::from(fuel));
    }
    trailers
}

fn error_trailers(err: &CallError) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-capsule-status", HeaderValue::from_static("error"));
    trailers.insert(
        "x-capsule-error-kind",
        HeaderValue::from_static(err.kind().as_str()),
    );
    trailers.insert(
        HeaderName::from_static("x-capsule-error"),
        header_text(&error_message(err)),
    );
    trailers.insert(
        "x-capsule-duration-us",
        HeaderValue::from(err.stats.duration.as_micros() as u64),
    );
    trailers
}

/// `text` as a header value: printable ASCII only (anything else becomes
/// `?`), at most [`MAX_TRAILER_MESSAGE`] bytes.
fn header_text(text: &str) -> HeaderValue {
    let printable: String = text
        .chars()
        .take(MAX_TRAILER_MESSAGE)
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    HeaderValue::from_str(&printable).unwrap_or_else(|_| HeaderValue::from_static("?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_text_as_data_lines() {
        assert_eq!(
            event("chunk", "a,b\nc,d\n"),
            "event: chunk\ndata: a,b\ndata: c,d\ndata: \n\n"
        );
    }

    #[test]
    fn the_client_chooses_the_delivery() {
        let mut headers = HeaderMap::new();
        assert!(Delivery::asked(&headers) == Delivery::Chunked { trailers: false });
        headers.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        assert!(Delivery::asked(&headers) == Delivery::Chunked { trailers: true });
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream;q=0.9"),
        );
        assert!(Delivery::asked(&headers) == Delivery::Events);
    }

    #[test]
    fn trailer_text_is_printable_and_bounded() {
        let value = header_text(&format!("bad\r\nx-injected: 1 ünï {}", "y".repeat(5000)));
        let text = value.to_str().unwrap();
        assert!(text.starts_with("bad??x-injected: 1 ?n? "));
        assert_eq!(text.len(), MAX_TRAILER_MESSAGE);
    }
}
