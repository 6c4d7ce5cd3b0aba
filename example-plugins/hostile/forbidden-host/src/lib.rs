//! Hostile: tries to reach the network in every way WASI p2 offers, and
//! reports every try.
//!
//! Capsule lets a plugin talk to the network only through `wasi:http`, and
//! only to the hosts the operator granted. Whatever the operation, this
//! plugin attacks that boundary with an optional input
//! `{"urls": ["http://example.com/"], "socket_port": 80}` (those are the
//! defaults):
//!
//! - `http`: a `GET` of every URL with [`capsule_guest::http::get`], each
//!   recorded as `{"url": "...", "ok": false, "status": null,
//!   "error": "<HttpError display>", "denied": true}`;
//! - `sockets`: raw `wasi:sockets`, each step recorded as
//!   `{"step": "...", "ok": false, "error": "AccessDenied"}` (the
//!   `wasi:sockets` error code's variant name):
//!   `create-tcp-socket` (IPv4), then with that socket `bind` to
//!   `127.0.0.1:0` and `connect` to `127.0.0.1:<socket_port>` (skipped when
//!   the socket could not be created), and `resolve-addresses` of
//!   `example.com` through `ip-name-lookup`.
//!
//! It answers successfully with `{"http": [...], "sockets": [...],
//! "reached_anything": false}`, where `reached_anything` is true if any HTTP
//! request got a response, any TCP connection was established, or any name
//! lookup succeeded.
//!
//! What the host must do: answer every ungranted URL with
//! `HttpRequestDenied` (so `denied` is true), and refuse raw sockets and name
//! lookups outright (`create-tcp-socket` or `bind`/`connect` failing with
//! `AccessDenied`, `resolve-addresses` failing), so that `reached_anything`
//! is `false`.

use capsule_guest::http::{self, HttpError};
use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin, log};
use serde::{Deserialize, Serialize};
use wasi::sockets::instance_network::instance_network;
use wasi::sockets::ip_name_lookup::resolve_addresses;
use wasi::sockets::network::{
    ErrorCode, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Network,
};
use wasi::sockets::tcp::TcpSocket;
use wasi::sockets::tcp_create_socket::create_tcp_socket;

/// The host name the plugin tries to resolve.
const LOOKUP_NAME: &str = "example.com";

#[derive(Deserialize)]
#[serde(default)]
struct AttackIn {
    urls: Vec<String>,
    socket_port: u16,
}

impl Default for AttackIn {
    fn default() -> Self {
        AttackIn {
            urls: vec!["http://example.com/".to_owned()],
            socket_port: 80,
        }
    }
}

#[derive(Serialize)]
struct HttpAttempt {
    url: String,
    ok: bool,
    status: Option<u16>,
    error: Option<String>,
    denied: bool,
}

#[derive(Serialize)]
struct SocketStep {
    step: &'static str,
    ok: bool,
    error: Option<String>,
}

#[derive(Serialize)]
struct AttackOut {
    http: Vec<HttpAttempt>,
    sockets: Vec<SocketStep>,
    reached_anything: bool,
}

struct ForbiddenHost;

impl Plugin for ForbiddenHost {
    fn handle(request: Request) -> Result<Response, PluginError> {
        log::info!(
            "handling `{}`: trying to reach the network",
            request.operation
        );
        let input: AttackIn = if request.payload.iter().all(u8::is_ascii_whitespace) {
            AttackIn::default()
        } else {
            request.json()?
        };

        let http: Vec<HttpAttempt> = input.urls.into_iter().map(try_http).collect();

        let network = instance_network();
        let mut sockets = try_tcp(&network, input.socket_port);
        sockets.push(try_lookup(&network));

        let reached_anything = http.iter().any(|attempt| attempt.ok)
            || sockets
                .iter()
                .any(|step| step.ok && matches!(step.step, "connect" | "resolve-addresses"));
        if reached_anything {
            log::error!("reached the network");
        } else {
            log::info!("every network attempt failed");
        }
        Response::json(&AttackOut {
            http,
            sockets,
            reached_anything,
        })
    }
}

fn try_http(url: String) -> HttpAttempt {
    match http::get(&url) {
        Ok(response) => {
            log::warn!("GET {url}: reached, status {}", response.status);
            HttpAttempt {
                url,
                ok: true,
                status: Some(response.status),
                error: None,
                denied: false,
            }
        }
        Err(err) => {
            log::info!("GET {url}: {err}");
            HttpAttempt {
                url,
                ok: false,
                status: None,
                denied: matches!(err, HttpError::Denied(_)),
                error: Some(err.to_string()),
            }
        }
    }
}

/// Creates an IPv4 TCP socket, binds it to `127.0.0.1:0` and connects it to
/// `127.0.0.1:port`, recording each step.
fn try_tcp(network: &Network, port: u16) -> Vec<SocketStep> {
    let mut steps = Vec::new();
    let socket = match create_tcp_socket(IpAddressFamily::Ipv4) {
        Ok(socket) => {
            steps.push(record("create-tcp-socket", Ok(())));
            socket
        }
        Err(code) => {
            steps.push(record("create-tcp-socket", Err(code)));
            return steps;
        }
    };

    let bound = socket
        .start_bind(network, loopback(0))
        .and_then(|()| finish(&socket, TcpSocket::finish_bind));
    steps.push(record("bind", bound));

    let connected = socket
        .start_connect(network, loopback(port))
        .and_then(|()| finish(&socket, TcpSocket::finish_connect))
        // The streams are children of the socket: drop them first.
        .map(drop);
    steps.push(record("connect", connected));
    steps
}

/// Resolves [`LOOKUP_NAME`] to every address, recording one step.
fn try_lookup(network: &Network) -> SocketStep {
    let outcome = resolve_addresses(network, LOOKUP_NAME).and_then(|stream| {
        let pollable = stream.subscribe();
        let mut addresses = Vec::new();
        let outcome = loop {
            match stream.resolve_next_address() {
                Ok(Some(address)) => addresses.push(address),
                Ok(None) => break Ok(()),
                Err(ErrorCode::WouldBlock) => pollable.block(),
                Err(code) => break Err(code),
            }
        };
        drop(pollable);
        if outcome.is_ok() {
            log::warn!("{LOOKUP_NAME} resolved to {addresses:?}");
        }
        outcome
    });
    record("resolve-addresses", outcome)
}

/// Calls a `finish-*` method until it no longer reports `would-block`,
/// blocking on the socket's pollable in between.
fn finish<T>(
    socket: &TcpSocket,
    finish_op: impl Fn(&TcpSocket) -> Result<T, ErrorCode>,
) -> Result<T, ErrorCode> {
    let pollable = socket.subscribe();
    loop {
        match finish_op(socket) {
            Err(ErrorCode::WouldBlock) => pollable.block(),
            outcome => return outcome,
        }
    }
}

fn loopback(port: u16) -> IpSocketAddress {
    IpSocketAddress::Ipv4(Ipv4SocketAddress {
        port,
        address: (127, 0, 0, 1),
    })
}

fn record(step: &'static str, outcome: Result<(), ErrorCode>) -> SocketStep {
    let error = outcome.as_ref().err().map(code_name);
    match &error {
        None => log::warn!("{step}: succeeded"),
        Some(name) => log::info!("{step}: {name}"),
    }
    SocketStep {
        step,
        ok: outcome.is_ok(),
        error,
    }
}

/// The error code's variant name, e.g. `AccessDenied` for `access-denied`
/// (its `Debug` form also carries the code's multi-line description).
fn code_name(code: &ErrorCode) -> String {
    code.name()
        .split('-')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

export_plugin!(ForbiddenHost);
