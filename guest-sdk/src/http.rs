//! Blocking outgoing HTTP requests over standard `wasi:http`.
//!
//! Capsule gives a plugin the standard WASI p2 HTTP client
//! (`wasi:http/outgoing-handler`) only for the hosts the operator granted; a
//! request to any other host fails with [`HttpError::Denied`], which `?` turns
//! into [`PluginError::Denied`].
//!
//! ```no_run
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Ip { origin: String }
//!
//! let response = capsule_guest::http::get("https://httpbin.org/ip")?;
//! let ip: Ip = response.json()?;
//! capsule_guest::log::info!("status {}, my address is {}", response.status, ip.origin);
//! # Ok::<(), capsule_guest::PluginError>(())
//! ```
//!
//! Every call blocks the plugin until the whole response body arrived (at most
//! [`MAX_BODY_BYTES`]); the host's per-call deadline still applies. Outside a
//! wasm component (a native build of the plugin crate) every call fails with
//! [`HttpError::Failed`].

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::PluginError;

/// The largest response body the helpers read: 16 MiB. A longer body fails
/// the call with [`HttpError::Failed`] (`HttpResponseBodySize`).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A complete HTTP response.
///
/// ```no_run
/// let response = capsule_guest::http::get("http://example.com/")?;
/// if response.status == 200 {
///     capsule_guest::log::info!("{} bytes of {:?}", response.body.len(), response.header("content-type"));
/// }
/// # Ok::<(), capsule_guest::http::HttpError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code, e.g. `200`.
    pub status: u16,
    /// The response headers in the order received, names lower-cased by the
    /// host; values that are not UTF-8 are converted lossily.
    pub headers: Vec<(String, String)>,
    /// The whole response body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Parses the body as JSON into `T`, or fails with
    /// [`PluginError::Failed`] naming the status and the parse error.
    ///
    /// ```no_run
    /// let value: serde_json::Value = capsule_guest::http::get("https://httpbin.org/json")?.json()?;
    /// # Ok::<(), capsule_guest::PluginError>(())
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        serde_json::from_slice(&self.body).map_err(|err| {
            PluginError::Failed(format!(
                "HTTP response (status {}) is not the expected JSON: {err}",
                self.status
            ))
        })
    }

    /// The body as UTF-8 text, or [`PluginError::Failed`].
    ///
    /// ```no_run
    /// let response = capsule_guest::http::get("http://example.com/")?;
    /// capsule_guest::log::info!("page: {}", response.text()?);
    /// # Ok::<(), capsule_guest::PluginError>(())
    /// ```
    pub fn text(&self) -> Result<&str, PluginError> {
        std::str::from_utf8(&self.body).map_err(|err| {
            PluginError::Failed(format!(
                "HTTP response (status {}) is not UTF-8 text: {err}",
                self.status
            ))
        })
    }

    /// The first value of the header `name` (compared case-insensitively).
    ///
    /// ```no_run
    /// let response = capsule_guest::http::get("http://example.com/")?;
    /// let kind = response.header("Content-Type").unwrap_or("unknown");
    /// # Ok::<(), capsule_guest::http::HttpError>(())
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Why an HTTP request failed. Each message names the request and, where the
/// host reported one, the `wasi:http` error code (e.g. `HttpRequestDenied`).
///
/// ```no_run
/// use capsule_guest::http::{self, HttpError};
///
/// match http::get("https://internal.example/") {
///     Ok(response) => capsule_guest::log::info!("status {}", response.status),
///     Err(HttpError::Denied(why)) => capsule_guest::log::warn!("not granted: {why}"),
///     Err(other) => capsule_guest::log::error!("{other}"),
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host refused the request: the operator did not grant this
    /// destination (`wasi:http` error code `HTTP-request-denied`).
    Denied(String),
    /// The URL is not an absolute `http`/`https` URL the helpers can send.
    InvalidUrl(String),
    /// Anything else: DNS, connection, TLS, protocol, body size, or no
    /// `wasi:http` at all.
    Failed(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Denied(msg) => write!(f, "HTTP request denied: {msg}"),
            HttpError::InvalidUrl(msg) => write!(f, "invalid URL: {msg}"),
            HttpError::Failed(msg) => write!(f, "HTTP request failed: {msg}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// A denied request stays a denial for the caller; every other failure is the
/// plugin's failure. The message is the [`HttpError`]'s `Display` text.
impl From<HttpError> for PluginError {
    fn from(err: HttpError) -> Self {
        match err {
            HttpError::Denied(_) => PluginError::Denied(err.to_string()),
            HttpError::InvalidUrl(_) | HttpError::Failed(_) => PluginError::Failed(err.to_string()),
        }
    }
}

/// Sends `GET url` and returns the whole response, whatever its status.
///
/// ```no_run
/// let response = capsule_guest::http::get("http://example.com/")?;
/// capsule_guest::log::info!("status {}", response.status);
/// # Ok::<(), capsule_guest::PluginError>(())
/// ```
pub fn get(url: &str) -> Result<HttpResponse, HttpError> {
    request("GET", url, &[], None)
}

/// Sends `POST url` with `body` serialised as JSON
/// (`content-type: application/json`) and returns the whole response.
///
/// ```no_run
/// let response = capsule_guest::http::post_json(
///     "https://api.example.com/orders",
///     &serde_json::json!({"item": "tea", "quantity": 2}),
/// )?;
/// let created: serde_json::Value = response.json()?;
/// # Ok::<(), capsule_guest::PluginError>(())
/// ```
pub fn post_json<T: Serialize>(url: &str, body: &T) -> Result<HttpResponse, HttpError> {
    let bytes = serde_json::to_vec(body).map_err(|err| {
        HttpError::Failed(format!(
            "POST {url}: could not serialise the JSON body: {err}"
        ))
    })?;
    request(
        "POST",
        url,
        &[("content-type", "application/json")],
        Some(&bytes),
    )
}

/// Sends one request and returns the whole response, whatever its status.
///
/// `method` is sent as given (`GET`, `PUT`, or any other HTTP token);
/// `headers` are added in order (the host refuses some, such as `host` or
/// `connection`). With a `body`, a `content-length` header is added unless
/// `headers` has one.
///
/// ```no_run
/// let response = capsule_guest::http::request(
///     "PUT",
///     "https://api.example.com/notes/7",
///     &[("content-type", "text/plain"), ("x-request-id", "abc")],
///     Some(b"remember the milk"),
/// )?;
/// assert!(response.status < 500);
/// # Ok::<(), capsule_guest::http::HttpError>(())
/// ```
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<HttpResponse, HttpError> {
    let context = format!("{method} {url}");
    let parsed =
        parse_url(url).map_err(|why| HttpError::InvalidUrl(format!("{context}: {why}")))?;
    if !is_token(method) {
        return Err(HttpError::Failed(format!(
            "{context}: `{method}` is not a valid HTTP method (HttpRequestMethodInvalid)"
        )));
    }
    #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
    {
        let _ = (context, parsed);
        let request = crate::testing::HttpRequest {
            method: method.to_owned(),
            url: url.to_owned(),
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            body: body.map(<[u8]>::to_vec),
        };
        crate::testing::with_host(|host| host.http(request))
    }
    #[cfg(not(all(feature = "testing", not(target_arch = "wasm32"))))]
    {
        if cfg!(not(target_arch = "wasm32")) {
            return Err(HttpError::Failed(
                "wasi:http is only available inside a wasm component (natively, test with \
                 the `testing` feature's MockHost)"
                    .into(),
            ));
        }
        wasi_http::send(&context, method, &parsed, headers, body)
    }
}

/// The parts of an absolute `http`/`https` URL that `wasi:http` needs.
#[derive(Debug, PartialEq, Eq)]
struct ParsedUrl<'a> {
    https: bool,
    /// `host[:port]`, exactly as written.
    authority: &'a str,
    /// The path and query (the fragment dropped), `/` when empty.
    path_with_query: String,
}

/// Splits `url` into scheme, authority and path+query, or says why it cannot.
/// Each reason ends with the code a host would use for it.
fn parse_url(url: &str) -> Result<ParsedUrl<'_>, String> {
    const CODE: &str = "HttpRequestUriInvalid";
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("missing `http://` or `https://` ({CODE})"))?;
    let https = if scheme.eq_ignore_ascii_case("http") {
        false
    } else if scheme.eq_ignore_ascii_case("https") {
        true
    } else {
        return Err(format!(
            "unsupported scheme `{scheme}`, only http and https ({CODE})"
        ));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    check_authority(authority).map_err(|why| format!("{why} ({CODE})"))?;

    let tail = tail.split_once('#').map_or(tail, |(before, _)| before);
    if let Some(bad) = tail.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("path contains {bad:?}; percent-encode it ({CODE})"));
    }
    let path_with_query = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    Ok(ParsedUrl {
        https,
        authority,
        path_with_query,
    })
}

/// Accepts `host`, `host:port` and `[ipv6]:port`; refuses user info.
fn check_authority(authority: &str) -> Result<(), String> {
    if authority.is_empty() {
        return Err("missing host".into());
    }
    if authority.contains('@') {
        return Err(
            "user info (`user@host`) is not supported; send an authorization header".into(),
        );
    }
    let (host, port) = if let Some(ipv6) = authority.strip_prefix('[') {
        let (addr, after) = ipv6.split_once(']').ok_or("unterminated `[` in the host")?;
        if addr.is_empty()
            || !addr
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!("`[{addr}]` is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("unexpected `{after}` after the host"))?,
            ),
        };
        (addr, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | ':'))
    {
        return Err(format!("`{host}` is not a valid host name"));
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.chars().all(|c| c.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|n| n > 0);
        if !valid {
            return Err(format!("`{port}` is not a valid port"));
        }
    }
    Ok(())
}

/// Whether `method` is an HTTP token (RFC 9110 `tchar`s).
fn is_token(method: &str) -> bool {
    !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The calls into `wasi:http`. They type-check natively, but only a wasm
/// component can make them ([`request`] stops native builds before, or
/// hands the request to the `MockHost`).
#[cfg_attr(
    all(feature = "testing", not(target_arch = "wasm32")),
    allow(dead_code)
)]
mod wasi_http {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{
        ErrorCode, Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, Method,
        OutgoingBody, OutgoingRequest, Scheme,
    };
    use wasi::io::streams::{InputStream, StreamError};

    use super::{HttpError, HttpResponse, MAX_BODY_BYTES, ParsedUrl};

    /// The most bytes `wasi:io` lets one blocking write carry.
    const WRITE_CHUNK: usize = 4096;
    /// How many bytes to ask for per blocking read.
    const READ_CHUNK: u64 = 64 * 1024;

    pub(super) fn send(
        context: &str,
        method: &str,
        url: &ParsedUrl<'_>,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<HttpResponse, HttpError> {
        let fields = Fields::new();
        for (name, value) in headers {
            fields.append(name, value.as_bytes()).map_err(|err| {
                HttpError::Failed(format!("{context}: header `{name}` refused ({err:?})"))
            })?;
        }
        if let Some(body) = body
            && !headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        {
            fields
                .append("content-length", body.len().to_string().as_bytes())
                .map_err(|err| {
                    HttpError::Failed(format!(
                        "{context}: header `content-length` refused ({err:?})"
                    ))
                })?;
        }

        let request = OutgoingRequest::new(fields);
        request.set_method(&to_method(method)).map_err(|()| {
            HttpError::Failed(format!(
                "{context}: method refused (HttpRequestMethodInvalid)"
            ))
        })?;
        let scheme = if url.https {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let invalid = |part: &str| {
            HttpError::InvalidUrl(format!("{context}: {part} refused (HttpRequestUriInvalid)"))
        };
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("scheme"))?;
        request
            .set_authority(Some(url.authority))
            .map_err(|()| invalid("authority"))?;
        request
            .set_path_with_query(Some(&url.path_with_query))
            .map_err(|()| invalid("path and query"))?;

        // Take the body before `handle` consumes the request, but write it
        // only once the host is sending: the body's pipe is bounded.
        let outgoing_body = match body {
            Some(_) => Some(request.body().map_err(|()| {
                HttpError::Failed(format!(
                    "{context}: request body unavailable (InternalError)"
                ))
            })?),
            None => None,
        };

        let future = outgoing_handler::handle(request, None)
            .map_err(|code| from_code(context, "sending the request", code))?;

        if let (Some(outgoing_body), Some(bytes)) = (outgoing_body, body)
            && let Err(write_error) = write_body(context, outgoing_body, bytes)
        {
            // A server may answer (say, 413) without reading the whole body:
            // that answer is more useful than the broken write.
            return match wait(future) {
                Ok(Ok(response)) => read_response(context, response),
                _ => Err(write_error),
            };
        }

        let response = match wait(future) {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => return Err(from_code(context, "awaiting the response", code)),
            Err(()) => {
                return Err(HttpError::Failed(format!(
                    "{context}: response already taken (InternalError)"
                )));
            }
        };
        read_response(context, response)
    }

    /// Blocks until the response (or the error that replaced it) arrived.
    fn wait(future: FutureIncomingResponse) -> Result<Result<IncomingResponse, ErrorCode>, ()> {
        let pollable = future.subscribe();
        let result = loop {
            match future.get() {
                Some(result) => break result,
                None => pollable.block(),
            }
        };
        // The pollable is a child of the future: it must go first.
        drop(pollable);
        result
    }

    fn to_method(method: &str) -> Method {
        match method {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "CONNECT" => Method::Connect,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_owned()),
        }
    }

    fn write_body(
        context: &str,
        outgoing_body: OutgoingBody,
        bytes: &[u8],
    ) -> Result<(), HttpError> {
        let stream = outgoing_body.write().map_err(|()| {
            HttpError::Failed(format!(
                "{context}: request body stream unavailable (InternalError)"
            ))
        })?;
        for chunk in bytes.chunks(WRITE_CHUNK) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|err| from_stream_error(context, "writing the request body", err))?;
        }
        // The stream is a child of the body: it must go before `finish`.
        drop(stream);
        OutgoingBody::finish(outgoing_body, None)
            .map_err(|code| from_code(context, "finishing the request body", code))
    }

    fn read_response(context: &str, response: IncomingResponse) -> Result<HttpResponse, HttpError> {
        let status = response.status();
        let header_fields = response.headers();
        let headers: Vec<(String, String)> = header_fields
            .entries()
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect();
        drop(header_fields);

        let announced = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse::<u64>().ok());
        if let Some(length) = announced
            && length > MAX_BODY_BYTES as u64
        {
            return Err(too_large(context, length));
        }

        let incoming_body = response.consume().map_err(|()| {
            HttpError::Failed(format!(
                "{context}: response body already taken (InternalError)"
            ))
        })?;
        let body = read_body(context, &incoming_body)?;
        // Trailers are not exposed; dropping the future discards them.
        drop(IncomingBody::finish(incoming_body));
        drop(response);
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }

    fn read_body(context: &str, incoming_body: &IncomingBody) -> Result<Vec<u8>, HttpError> {
        let stream: InputStream = incoming_body.stream().map_err(|()| {
            HttpError::Failed(format!(
                "{context}: response body stream unavailable (InternalError)"
            ))
        })?;
        let mut body = Vec::new();
        loop {
            match stream.blocking_read(READ_CHUNK) {
                Ok(chunk) => {
                    if body.len() + chunk.len() > MAX_BODY_BYTES {
                        return Err(too_large(context, (body.len() + chunk.len()) as u64));
                    }
                    body.extend_from_slice(&chunk);
                }
                Err(StreamError::Closed) => break,
                Err(err) => {
                    return Err(from_stream_error(context, "reading the response body", err));
                }
            }
        }
        Ok(body)
    }

    fn too_large(context: &str, length: u64) -> HttpError {
        HttpError::Failed(format!(
            "{context}: response body of at least {length} bytes exceeds the limit of \
             {MAX_BODY_BYTES} bytes (HttpResponseBodySize)"
        ))
    }

    /// The `wasi:http` error code's name, e.g. `HttpRequestDenied` or
    /// `DnsError(DnsErrorPayload { .. })`.
    fn code_name(code: &ErrorCode) -> String {
        let debug = format!("{code:?}");
        match debug.strip_prefix("ErrorCode::") {
            Some(name) => name.to_owned(),
            None => debug,
        }
    }

    fn from_code(context: &str, while_doing: &str, code: ErrorCode) -> HttpError {
        let name = code_name(&code);
        let variant = name.split('(').next().unwrap_or(&name);
        classify(variant, format!("{context}: {name} while {while_doing}"))
    }

    /// The one place that decides the [`HttpError`] variant from the name of
    /// a `wasi:http` error code.
    fn classify(variant: &str, message: String) -> HttpError {
        match variant {
            "HttpRequestDenied" => HttpError::Denied(message),
            "HttpRequestUriInvalid" | "HttpRequestUriTooLong" => HttpError::InvalidUrl(message),
            _ => HttpError::Failed(message),
        }
    }

    fn from_stream_error(context: &str, while_doing: &str, err: StreamError) -> HttpError {
        match err {
            StreamError::Closed => HttpError::Failed(format!(
                "{context}: stream closed while {while_doing} (ConnectionTerminated)"
            )),
            StreamError::LastOperationFailed(io_error) => {
                if let Some(code) = wasi::http::types::http_error_code(&io_error) {
                    return from_code(context, while_doing, code);
                }
                let text = io_error.to_debug_string();
                let variant = code_from_text(&text).unwrap_or("InternalError");
                classify(
                    variant,
                    format!("{context}: {variant} while {while_doing}: {text}"),
                )
            }
        }
    }

    /// Recognises a `wasi:http` error code in an I/O error's text.
    ///
    /// Some hosts (wasmtime 48 among them) fail body streams with their own
    /// error type, which `http-error-code` does not map back to an
    /// `error-code`, so only the error's text says what happened. These are
    /// the texts wasmtime-wasi-http writes for each code.
    fn code_from_text(text: &str) -> Option<&'static str> {
        const TEXTS: &[(&str, &str)] = &[
            ("DNS lookup timed out", "DnsTimeout"),
            ("DNS error", "DnsError"),
            ("destination not found", "DestinationNotFound"),
            ("destination unavailable", "DestinationUnavailable"),
            (
                "destination IP address is prohibited",
                "DestinationIpProhibited",
            ),
            (
                "destination IP address is unroutable",
                "DestinationIpUnroutable",
            ),
            ("connection refused", "ConnectionRefused"),
            ("connection terminated", "ConnectionTerminated"),
            ("connection timeout", "ConnectionTimeout"),
            ("connection read timeout", "ConnectionReadTimeout"),
            ("connection write timeout", "ConnectionWriteTimeout"),
            ("connection limit reached", "ConnectionLimitReached"),
            ("TLS protocol error", "TlsProtocolError"),
            ("TLS certificate error", "TlsCertificateError"),
            ("TLS alert received", "TlsAlertReceived"),
            ("HTTP request denied", "HttpRequestDenied"),
            ("HTTP request length required", "HttpRequestLengthRequired"),
            ("invalid HTTP request method", "HttpRequestMethodInvalid"),
            ("invalid HTTP request URI", "HttpRequestUriInvalid"),
            ("HTTP request URI too long", "HttpRequestUriTooLong"),
            (
                "HTTP request body size exceeds limit",
                "HttpRequestBodySize",
            ),
            (
                "HTTP request header section size exceeds limit",
                "HttpRequestHeaderSectionSize",
            ),
            (
                "HTTP request header size exceeds limit",
                "HttpRequestHeaderSize",
            ),
            (
                "HTTP request trailer section size exceeds limit",
                "HttpRequestTrailerSectionSize",
            ),
            (
                "HTTP request trailer size exceeds limit",
                "HttpRequestTrailerSize",
            ),
            ("incomplete HTTP response", "HttpResponseIncomplete"),
            (
                "HTTP response header section size exceeds limit",
                "HttpResponseHeaderSectionSize",
            ),
            (
                "HTTP response header size exceeds limit",
                "HttpResponseHeaderSize",
            ),
            (
                "HTTP response body size exceeds limit",
                "HttpResponseBodySize",
            ),
            (
                "HTTP response trailer section size exceeds limit",
                "HttpResponseTrailerSectionSize",
            ),
            (
                "HTTP response trailer size exceeds limit",
                "HttpResponseTrailerSize",
            ),
            (
                "unsupported HTTP response transfer coding",
                "HttpResponseTransferCoding",
            ),
            (
                "unsupported HTTP response content coding",
                "HttpResponseContentCoding",
            ),
            ("HTTP response timeout", "HttpResponseTimeout"),
            ("HTTP upgrade failed", "HttpUpgradeFailed"),
            ("HTTP protocol error", "HttpProtocolError"),
            ("request loop detected", "LoopDetected"),
            ("configuration error", "ConfigurationError"),
        ];
        TEXTS
            .iter()
            .find(|(prefix, _)| text.starts_with(prefix))
            .map(|(_, name)| *name)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn recognises_wasmtime_error_texts() {
            assert_eq!(
                code_from_text("HTTP response body size exceeds limit: 1048576 bytes"),
                Some("HttpResponseBodySize")
            );
            assert_eq!(
                code_from_text("connection read timeout"),
                Some("ConnectionReadTimeout")
            );
            assert_eq!(code_from_text("hyper error: oops"), None);
            let denied = classify("HttpRequestDenied", "m".into());
            assert_eq!(denied, HttpError::Denied("m".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> (bool, &str, String) {
        let parsed = parse_url(url).unwrap_or_else(|err| panic!("{url}: {err}"));
        (parsed.https, parsed.authority, parsed.path_with_query)
    }

    #[test]
    fn parses_absolute_urls() {
        assert_eq!(ok("http://example.com"), (false, "example.com", "/".into()));
        assert_eq!(
            ok("HTTPS://api.example.com:8443/v1/items?q=a%20b#top"),
            (true, "api.example.com:8443", "/v1/items?q=a%20b".into())
        );
        assert_eq!(ok("http://host?x=1"), (false, "host", "/?x=1".into()));
        assert_eq!(ok("http://[::1]:8080/"), (false, "[::1]:8080", "/".into()));
        assert_eq!(ok("http://127.0.0.1/a"), (false, "127.0.0.1", "/a".into()));
    }

    #[test]
    fn refuses_what_it_cannot_send() {
        for url in [
            "",
            "example.com",
            "ftp://example.com/",
            "http://",
            "http:///path",
            "http://user:pw@example.com/",
            "http://example.com:/",
            "http://example.com:99999/",
            "http://example.com:0/",
            "http://exa mple.com/",
            "http://example.com/a b",
            "http://[::1/",
            "http://[::1]x/",
        ] {
            let err = parse_url(url).expect_err(url);
            assert!(err.contains("HttpRequestUriInvalid"), "{url}: {err}");
        }
    }

    #[test]
    fn invalid_url_is_reported_before_anything_is_sent() {
        let err = get("gopher://example.com/").expect_err("gopher is not http");
        assert!(matches!(err, HttpError::InvalidUrl(_)), "{err:?}");
        assert!(err.to_string().contains("HttpRequestUriInvalid"), "{err}");
    }

    #[test]
    fn errors_convert_into_plugin_errors() {
        let denied =
            PluginError::from(HttpError::Denied("GET http://x/: HttpRequestDenied".into()));
        assert!(matches!(&denied, PluginError::Denied(m) if m.contains("HttpRequestDenied")));
        let failed = PluginError::from(HttpError::Failed("boom".into()));
        assert!(matches!(failed, PluginError::Failed(_)));
        let invalid = PluginError::from(HttpError::InvalidUrl("bad".into()));
        assert!(matches!(invalid, PluginError::Failed(_)));
    }

    #[test]
    fn response_helpers() {
        let response = HttpResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: br#"{"a":1}"#.to_vec(),
        };
        assert_eq!(response.header("Content-Type"), Some("application/json"));
        assert_eq!(response.text().ok(), Some(r#"{"a":1}"#));
        let value: serde_json::Value = response.json().unwrap_or_default();
        assert_eq!(value["a"], 1);
    }
}
