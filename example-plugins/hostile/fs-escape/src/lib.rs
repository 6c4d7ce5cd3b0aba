//! Hostile: tries to get out of its filesystem mount, and reports every try.
//!
//! Capsule gives a plugin files only through WASI preopens: the directories
//! the operator mounted, each at a guest path such as `/data`. This plugin
//! attacks that boundary. Whatever the operation, with an optional input
//! `{"mount": "/data"}` (default `/data`), it tries to
//!
//! - `parent-traversal-read`: read `<mount>/../../../../etc/passwd`;
//! - `absolute-read-passwd`, `absolute-read-hostname`: read `/etc/passwd` and
//!   `/etc/hostname`, outside every mount;
//! - `symlink-dir-read`, `symlink-dir-list`: read `<mount>/link-out/secret.txt`
//!   and list `<mount>/link-out`, where the test plants `link-out`, a symlink
//!   inside the mount to a host directory outside it;
//! - `absolute-symlink-read`: read `<mount>/abs-link`, a planted symlink to the
//!   absolute host path `/etc/passwd`;
//! - `list-root`, `list-parent`: list `/` and `..`;
//! - `parent-traversal-write`: write `<mount>/../escaped.txt`;
//! - `create-dir-outside`: create the directory `/tmp/capsule-escape`.
//!
//! It answers successfully, so the caller can inspect every attempt:
//! `{"attempts": [{"attempt": "...", "path": "...", "escaped": false,
//! "error": "<io error>"}, ...], "escaped_any": false}`, where `escaped` is
//! true iff the operation succeeded.
//!
//! What the host must do: resolve every path inside the mount's directory
//! (no `..` above it, no absolute paths outside the preopens, no symlink
//! leading out of it, relative or absolute) so that every attempt fails and
//! `escaped_any` is `false`.

use std::io;

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin, log};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(default)]
struct EscapeIn {
    mount: String,
}

impl Default for EscapeIn {
    fn default() -> Self {
        EscapeIn {
            mount: "/data".to_owned(),
        }
    }
}

#[derive(Serialize)]
struct Attempt {
    attempt: &'static str,
    path: String,
    escaped: bool,
    error: Option<String>,
}

#[derive(Serialize)]
struct EscapeOut {
    attempts: Vec<Attempt>,
    escaped_any: bool,
}

struct FsEscape;

impl Plugin for FsEscape {
    fn handle(request: Request) -> Result<Response, PluginError> {
        log::info!(
            "handling `{}`: trying to escape the mount",
            request.operation
        );
        let input: EscapeIn = if request.payload.iter().all(u8::is_ascii_whitespace) {
            EscapeIn::default()
        } else {
            request.json()?
        };
        let mount = input.mount.trim_end_matches('/');

        let attempts = vec![
            attempt(
                "parent-traversal-read",
                format!("{mount}/../../../../etc/passwd"),
                read,
            ),
            attempt("absolute-read-passwd", "/etc/passwd".to_owned(), read),
            attempt("absolute-read-hostname", "/etc/hostname".to_owned(), read),
            attempt(
                "symlink-dir-read",
                format!("{mount}/link-out/secret.txt"),
                read,
            ),
            attempt("symlink-dir-list", format!("{mount}/link-out"), list),
            attempt("absolute-symlink-read", format!("{mount}/abs-link"), read),
            attempt("list-root", "/".to_owned(), list),
            attempt("list-parent", "..".to_owned(), list),
            attempt(
                "parent-traversal-write",
                format!("{mount}/../escaped.txt"),
                |path| std::fs::write(path, b"written from inside the sandbox\n"),
            ),
            attempt(
                "create-dir-outside",
                "/tmp/capsule-escape".to_owned(),
                |path| std::fs::create_dir(path),
            ),
        ];
        let escaped_any = attempts.iter().any(|attempt| attempt.escaped);
        if escaped_any {
            log::error!("escaped the mount at least once");
        } else {
            log::info!("every escape attempt failed");
        }
        Response::json(&EscapeOut {
            attempts,
            escaped_any,
        })
    }
}

/// Runs one attempt and records its outcome.
fn attempt(name: &'static str, path: String, run: impl FnOnce(&str) -> io::Result<()>) -> Attempt {
    let outcome = run(&path);
    match &outcome {
        Ok(()) => log::warn!("{name}: `{path}` succeeded: escaped"),
        Err(err) => log::info!("{name}: `{path}` failed: {err}"),
    }
    Attempt {
        attempt: name,
        path,
        escaped: outcome.is_ok(),
        error: outcome.err().map(|err| err.to_string()),
    }
}

/// Reads the whole file at `path`.
fn read(path: &str) -> io::Result<()> {
    std::fs::read(path).map(drop)
}

/// Lists directory `path`, every entry included.
fn list(path: &str) -> io::Result<()> {
    for entry in std::fs::read_dir(path)? {
        entry?;
    }
    Ok(())
}

export_plugin!(FsEscape);
