//! Hostile: tries to make the host copy, keep or print far more than this
//! plugin's output budgets allow, with little memory of its own.
//!
//! - `metadata-alias`: a response whose 200,000 metadata entries all point
//!   at the same megabyte, so copying them would cost the host 200 GB;
//! - `metadata-many`: more metadata entries than allowed, each tiny;
//! - `metadata-names`: N distinct metadata keys (N from the payload, default
//!   40,000), each with a short value: as HTTP headers they would overflow
//!   every client and the `http` crate's header map;
//! - `metadata-large`: 64 entries of 1 KiB each, within the response budget
//!   but more than HTTP clients accept as headers;
//! - `error-huge`: an error value with a message of the payload's number of
//!   bytes (default 4 MiB);
//! - `log-empty`: empty `log` lines until the host has refused a thousand;
//! - `stdout-lines`: one-byte lines on stdout without end;
//! - any other operation: answers `ok`.
//!
//! With the config value `describe = "alias"` its `describe` returns 100,000
//! capabilities that all point at the same megabyte; with
//! `describe = "long"` a one-megabyte description.

use std::io::Write;

use capsule_guest::{
    Plugin, PluginError, PluginInfo, Request, Response, config, export_plugin, log,
};

struct Amplifier;

/// `count` strings that all share `text`'s buffer. They must never be
/// dropped by this plugin (the caller hands them to the host and forgets
/// them), or the buffer would be freed more than once.
fn aliases(text: String, count: usize) -> Vec<String> {
    let mut text = std::mem::ManuallyDrop::new(text);
    let (ptr, len) = (text.as_mut_ptr(), text.len());
    (0..count)
        // SAFETY: see above; the host only reads them.
        .map(|_| unsafe { String::from_raw_parts(ptr, len, len) })
        .collect()
}

impl Plugin for Amplifier {
    fn describe(from_cargo: PluginInfo) -> PluginInfo {
        match config::get("describe").ok().flatten().as_deref() {
            Some("alias") => PluginInfo {
                capabilities: aliases("c".repeat(1 << 20), 100_000),
                ..from_cargo
            },
            Some("long") => PluginInfo {
                description: "d".repeat(1 << 20),
                ..from_cargo
            },
            _ => from_cargo,
        }
    }

    fn handle(request: Request) -> Result<Response, PluginError> {
        match request.operation.as_str() {
            "metadata-alias" => {
                let keys = aliases("k".repeat(1 << 20), 200_000);
                let mut metadata = Vec::with_capacity(keys.len());
                for key in keys {
                    metadata.push((key, String::new()));
                }
                Ok(Response {
                    payload: b"aliased".to_vec(),
                    metadata,
                })
            }
            "metadata-many" => Ok(Response {
                payload: b"many".to_vec(),
                metadata: (0..1000)
                    .map(|i| (format!("k{i}"), String::new()))
                    .collect(),
            }),
            "metadata-names" => {
                let count = request
                    .text()
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                    .unwrap_or(40_000usize);
                Ok(Response {
                    payload: b"names".to_vec(),
                    metadata: (0..count).map(|i| (format!("n{i}"), "v".into())).collect(),
                })
            }
            "metadata-large" => Ok(Response {
                payload: b"large".to_vec(),
                metadata: (0..64)
                    .map(|i| (format!("large-{i}"), "h".repeat(1024)))
                    .collect(),
            }),
            "error-huge" => {
                let len = request
                    .text()
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                    .unwrap_or(4usize << 20);
                Err(PluginError::failed("e".repeat(len)))
            }
            "log-empty" => {
                let mut refused = 0;
                while refused < 1000 {
                    if log::write(log::Level::Info, "").is_err() {
                        refused += 1;
                    }
                }
                Ok(Response::bytes("the host refused my empty lines"))
            }
            "stdout-lines" => {
                let mut stdout = std::io::stdout();
                loop {
                    if let Err(err) = stdout.write_all(b"x\n") {
                        return Err(PluginError::failed(format!("stdout refused: {err}")));
                    }
                }
            }
            _ => Ok(Response::bytes("ok")),
        }
    }
}

export_plugin!(Amplifier);
