//! The `http` service: standard `wasi:http` outgoing requests, allowed only to
//! the origins the operator granted, at most a number of requests per call,
//! with response bodies bounded. Everything else fails with the WASI error
//! code `HTTP-request-denied`. Raw `wasi:sockets` stay denied (see
//! `services::wasi`), so the allow-list cannot be bypassed.
//!
//! Origins are matched by scheme, host name and port, before any DNS lookup.
//! A granted host name whose DNS answer points somewhere private is still
//! reached: grant names you control.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde::{Deserialize, Serialize};
use wasmtime::component::Linker;
use wasmtime_wasi_http::{WasiBody, WasiHttpHooks};

use super::{
    Availability, Holds, Import, PolicyContext, PrepareContext, Service, StoreContext, Views,
};
use crate::bounds::{GIB, Invalid, bytes, range};
use crate::limits::{Limits, http_body_chunk, http_fields_limit};
use crate::units::{Size, value_from_str};

/// An origin a plugin may reach: `https://api.example.com`,
/// `http://127.0.0.1:8080`, or `https://*.example.org:8443` (any subdomain,
/// not the bare domain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct OriginPattern {
    scheme: String,
    /// The host, lowercase, without a leading `*.` for wildcards.
    host: String,
    wildcard: bool,
    port: u16,
}

impl From<OriginPattern> for String {
    fn from(origin: OriginPattern) -> String {
        origin.to_string()
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wildcard = if self.wildcard { "*." } else { "" };
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{wildcard}{}:{}", self.scheme, self.host, self.port)
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl OriginPattern {
    /// Parses `scheme://host[:port]` (no path), where host may start with
    /// `*.`.
    pub fn parse(text: &str) -> Result<OriginPattern, String> {
        let bad =
            |why: &str| format!("`{text}` is not an origin ({why}); try `https://api.example.com`");
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default =
            default_port(&scheme).ok_or_else(|| bad("the scheme must be http or https"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad("an origin has no path, query or user"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("bad port"))?;
        let port = port.unwrap_or(default);
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, host),
        };
        // `example.com.` (the fully qualified form) is `example.com`, as
        // `allows` reads the request's host: kept, the dot would make the
        // pattern match nothing.
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() || host.contains('*') {
            return Err(bad("bad host; `*.` is only allowed as a prefix"));
        }
        // What prints back the same and can name a real host: an IPv6
        // literal in brackets, or a name (or IPv4 address) of letters,
        // digits, `-`, `_` and `.`.
        if authority.starts_with('[') {
            if wildcard || host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("bad IPv6 address"));
            }
        } else if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(bad(
                "bad host; use letters, digits, `-`, `_` and `.`, or an IPv6 address in brackets",
            ));
        }
        Ok(OriginPattern {
            scheme,
            host,
            wildcard,
            port,
        })
    }

    /// Whether a request to `scheme://host:port` is allowed by this pattern.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host_ok = if self.wildcard {
            host.strip_suffix(self.host.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
        } else {
            host == self.host
        };
        self.scheme.eq_ignore_ascii_case(scheme) && host_ok && self.port == port
    }
}

/// Splits `host[:port]`, with IPv6 literals in brackets.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(port.parse().ok()?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((authority, None)),
    }
}

value_from_str!(
    OriginPattern,
    "an origin such as \"https://api.example.com\"",
    |s| OriginPattern::parse(s)
);

/// What a plugin may reach over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpGrant {
    /// Origins requests may go to.
    pub allow: Vec<OriginPattern>,
    /// Requests one call may send.
    pub max_requests_per_call: u32,
    /// Largest response body accepted, in bytes.
    pub max_response_bytes: u64,
}

impl HttpGrant {
    /// A grant of `allow` with default quotas: 16 requests per call, 4 MiB
    /// response bodies.
    pub fn new(allow: Vec<OriginPattern>) -> Self {
        HttpGrant {
            allow,
            max_requests_per_call: 16,
            max_response_bytes: 4 << 20,
        }
    }
}

/// Refused requests of one call that the host log shows.
const REFUSALS_LOGGED_PER_CALL: u32 = 3;

/// The per-store hooks that enforce a plugin's HTTP grant.
pub(crate) struct HttpHooks {
    pub(crate) plugin: Arc<str>,
    pub(crate) denials: Arc<super::Denials>,
    pub(crate) grant: Option<Arc<HttpGrant>>,
    /// Requests sent during the current call.
    pub(crate) sent: u32,
    /// Requests refused during the current call.
    pub(crate) refused: u32,
    /// Bytes an outgoing body buffers before its request is sent (see
    /// [`crate::limits::HTTP_BODY_CHUNK_GRANTED`]).
    pub(crate) body_chunk: usize,
}

impl HttpHooks {
    /// Why `request` may not be sent, if it may not.
    fn refusal(&mut self, uri: &http::Uri) -> Option<wasmtime_wasi_http::Error> {
        let Some(grant) = &self.grant else {
            return Some(wasmtime_wasi_http::Error::HttpRequestDenied);
        };
        let scheme = uri.scheme_str().unwrap_or("https");
        let host = uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().or_else(|| default_port(scheme));
        let allowed =
            port.is_some_and(|port| grant.allow.iter().any(|o| o.allows(scheme, host, port)));
        if !allowed {
            return Some(wasmtime_wasi_http::Error::HttpRequestDenied);
        }
        if self.sent >= grant.max_requests_per_call {
            return Some(wasmtime_wasi_http::Error::ConnectionLimitReached);
        }
        None
    }
}

type SendFuture = Box<
    dyn std::future::Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<
                        dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>>
                            + Send,
                    >,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for HttpHooks {
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        self.body_chunk
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        if let Some(error) = self.refusal(request.uri()) {
            // A plugin can be refused in a tight loop: the log shows the
            // first few refusals of each call, escaped and truncated.
            self.refused += 1;
            // A request beyond `max_requests` is a quota, not a refusal of
            // what was not granted.
            if matches!(error, wasmtime_wasi_http::Error::HttpRequestDenied) {
                self.denials.record(
                    "http",
                    &format!(
                        "{error}: {}",
                        crate::text::for_log(request.uri().host().unwrap_or_default(), 128)
                    ),
                );
            }
            if self.refused <= REFUSALS_LOGGED_PER_CALL {
                tracing::warn!(
                    plugin = %self.plugin,
                    uri = %crate::text::log_field(&request.uri().to_string()),
                    error = %error,
                    "refused an outgoing HTTP request"
                );
            }
            return Box::new(async move { Err(error) });
        }
        self.sent += 1;
        let limit = self
            .grant
            .as_ref()
            .map_or(0, |grant| grant.max_response_bytes);
        let inner = WasiHttpHooks::send_request(&mut DefaultHooks, request, options, fut);
        Box::new(async move {
            let (response, io) = Box::into_pin(inner).await?;
            let response = response.map(|body| {
                http_body_util::BodyExt::boxed_unsync(LimitedBody {
                    inner: body,
                    remaining: limit,
                    limit,
                })
            });
            Ok((response, io))
        })
    }
}

/// wasmtime-wasi-http's own request sending, used once a request passed the
/// grant.
struct DefaultHooks;

impl WasiHttpHooks for DefaultHooks {}

/// A response body that fails with `HTTP-response-body-size` past a limit.
struct LimitedBody {
    inner: WasiBody,
    remaining: u64,
    limit: u64,
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let len = data.len() as u64;
            if len > self.remaining {
                let limit = self.limit;
                return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpResponseBodySize(
                    Some(limit),
                ))));
            }
            self.remaining -= len;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a policy file writes an HTTP grant:
/// `http = { allow = ["https://api.example.com"], max_requests = 4, max_response = "1MiB" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpPolicy {
    pub(crate) allow: Vec<OriginPattern>,
    pub(crate) max_requests: Option<u32>,
    pub(crate) max_response: Option<Size>,
}

/// The `http` service.
pub(crate) struct Http;

impl Service for Http {
    const NAME: &'static str = "http";
    const IMPORTS: &'static [Import] = &[Import::package("wasi:http")];
    const BUDGETS: &'static str = "per call: `max_requests` requests and `max_response` bytes \
        per response body; per instance: header fields of 32 KiB (1 KiB without a grant) and \
        unsent bodies of 64 KiB (1 KiB without a grant), each counted in `max_handles`";

    type Grant = Option<HttpGrant>;
    type Policy = HttpPolicy;
    type Summary = Option<HttpGrant>;
    type Prepared = Option<Arc<HttpGrant>>;
    type State = HttpHooks;

    fn from_policy(
        policy: HttpPolicy,
        _context: &PolicyContext<'_>,
    ) -> Result<Self::Grant, Invalid> {
        let mut grant = HttpGrant::new(policy.allow);
        if let Some(max) = policy.max_requests {
            grant.max_requests_per_call = max;
        }
        if let Some(size) = policy.max_response {
            grant.max_response_bytes = size.0;
        }
        Ok(Some(grant))
    }

    fn validate(grant: &Self::Grant) -> Result<(), Invalid> {
        let Some(http) = grant else { return Ok(()) };
        range(
            "max_requests",
            u64::from(http.max_requests_per_call),
            0,
            10_000,
            "requests",
        )?;
        bytes("max_response", http.max_response_bytes, 0, GIB)
    }

    fn availability(grant: &Self::Grant) -> Availability {
        Availability::granted_if(grant.is_some())
    }

    fn summary(grant: &Self::Grant) -> Self::Summary {
        grant.clone()
    }

    fn prepare(
        grant: &Self::Grant,
        _context: &PrepareContext<'_>,
    ) -> Result<Self::Prepared, String> {
        Ok(grant.clone().map(Arc::new))
    }

    fn new_state(
        grant: &Self::Prepared,
        store: &mut StoreContext<'_>,
    ) -> Result<HttpHooks, String> {
        // A plugin without the grant can still create header fields and
        // bodies (a denial is a value): they stay tiny.
        let granted = grant.is_some();
        store.http.set_field_size_limit(http_fields_limit(granted));
        Ok(HttpHooks {
            plugin: Arc::clone(store.plugin),
            denials: Arc::clone(store.denials),
            grant: grant.clone(),
            sent: 0,
            refused: 0,
            body_chunk: http_body_chunk(granted),
        })
    }

    fn begin_call(hooks: &mut HttpHooks, _limits: &Limits, _scope: &super::calls::CallScope) {
        hooks.sent = 0;
        hooks.refused = 0;
    }

    fn add_to_linker<T: Holds<Self> + Views>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::services::harness::Harness;

    #[test]
    fn origins_match_scheme_host_and_port() {
        let o = OriginPattern::parse("https://api.example.com").unwrap();
        assert!(o.allows("https", "api.example.com", 443));
        assert!(o.allows("https", "API.example.com.", 443));
        assert!(!o.allows("http", "api.example.com", 80));
        assert!(!o.allows("https", "api.example.com", 8443));
        assert!(!o.allows("https", "evil.api.example.com", 443));
        assert!(!o.allows("https", "api.example.com.evil.net", 443));

        let w = OriginPattern::parse("https://*.example.org:8443").unwrap();
        assert!(w.allows("https", "a.example.org", 8443));
        assert!(w.allows("https", "a.b.example.org", 8443));
        assert!(!w.allows("https", "example.org", 8443));
        assert!(!w.allows("https", "badexample.org", 8443));
        assert!(!w.allows("https", "a.example.org", 443));

        let local = OriginPattern::parse("http://127.0.0.1:18089").unwrap();
        assert!(local.allows("http", "127.0.0.1", 18089));
        assert!(!local.allows("http", "127.0.0.1", 18090));
        let v6 = OriginPattern::parse("http://[::1]:8080").unwrap();
        assert!(v6.allows("http", "::1", 8080));

        // A fully qualified pattern (found by the `patterns` fuzz target:
        // it used to match nothing at all).
        let fqdn = OriginPattern::parse("https://api.example.com.").unwrap();
        assert_eq!(fqdn, o);
        assert!(fqdn.allows("https", "api.example.com.", 443));
        assert!(OriginPattern::parse("https://.").is_err());
        assert!(OriginPattern::parse("https://..").is_err());
        // IPv6 literals print in brackets, and only real ones parse (found
        // by the `patterns` fuzz target: `http://[[:0]` printed as an origin
        // that did not parse back).
        assert_eq!(v6.to_string(), "http://[::1]:8080");
        assert_eq!(OriginPattern::parse(&v6.to_string()).unwrap(), v6);
        assert!(OriginPattern::parse("http://[[:0]").is_err());
        assert!(OriginPattern::parse("http://exa mple.com").is_err());
        assert_eq!(
            OriginPattern::parse("http://a..").unwrap().to_string(),
            "http://a:80"
        );
    }

    #[test]
    fn bad_origins_are_refused() {
        for bad in [
            "api.example.com",
            "ftp://x.com",
            "https://x.com/path",
            "https://x.com:99999",
            "https://a.*.com",
            "https://",
            "https://user@x.com",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
    }

    /// Asks the plugin's hooks to send a GET to `uri`; the answer if the
    /// hooks refused it at once, `None` if they let it go out.
    fn send(http: &mut Harness<Http>, uri: &str) -> Option<wasmtime_wasi_http::Error> {
        use http_body_util::BodyExt;
        let body = http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        let request = http::Request::get(uri).body(body).unwrap();
        let sent = http
            .state
            .send_request(request, None, Box::new(async { Ok(()) }));
        // A refusal is ready at once; a request let through would connect.
        let waker = std::task::Waker::noop();
        match Box::into_pin(sent)
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(Err(error)) => Some(error),
            _ => None,
        }
    }

    #[tokio::test]
    async fn requests_go_only_to_granted_origins_and_within_the_per_call_count() {
        use wasmtime_wasi_http::Error;
        let mut none = Harness::<Http>::not_granted();
        assert!(matches!(
            send(&mut none, "https://example.com/"),
            Some(Error::HttpRequestDenied)
        ));

        let mut http = Harness::<Http>::from_policy(
            r#"{ allow = ["http://127.0.0.1:9"], max_requests = 2 }"#,
            Path::new("."),
        )
        .unwrap();
        for other in [
            "https://127.0.0.1:9/",
            "http://127.0.0.1:10/",
            "http://localhost:9/",
        ] {
            assert!(
                matches!(send(&mut http, other), Some(Error::HttpRequestDenied)),
                "{other}"
            );
        }
        assert!(send(&mut http, "http://127.0.0.1:9/a").is_none());
        assert!(send(&mut http, "http://127.0.0.1:9/b").is_none());
        assert!(matches!(
            send(&mut http, "http://127.0.0.1:9/c"),
            Some(Error::ConnectionLimitReached)
        ));
        http.begin_call();
        assert!(send(&mut http, "http://127.0.0.1:9/d").is_none());
    }
}
