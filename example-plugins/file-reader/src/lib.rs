//! The file-reader plugin: plain `std::fs` over the directories the operator
//! mounted into the plugin (WASI preopens), e.g. `example-plugins/file-reader/data`
//! mounted read-only at `/data`.
//!
//! - `read` with `{"path": "/data/hello.txt"}` answers
//!   `{"path": "/data/hello.txt", "content": "<UTF-8 text>"}`;
//! - `list` with `{"path": "/data"}` answers `{"path": "/data", "entries": ["hello.txt", ...]}`
//!   (names, sorted);
//! - `write` with `{"path": "/data/out.txt", "content": "..."}` answers
//!   `{"path": "/data/out.txt", "bytes": N}`.
//!
//! Climbing out of a mount (`/data/../..`), following a symlink out of it, or
//! writing to a read-only mount fails with `denied`. A path outside every
//! mount does not exist in the plugin's view, so it fails like any other
//! missing file, with `failed` ("No such file or directory"), as do other
//! errors (a non-UTF-8 file). Both messages name the path and the I/O error.

use std::io;

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin, log};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct PathIn {
    path: String,
}

#[derive(Deserialize)]
struct WriteIn {
    path: String,
    content: String,
}

#[derive(Serialize)]
struct ReadOut {
    path: String,
    content: String,
}

#[derive(Serialize)]
struct ListOut {
    path: String,
    entries: Vec<String>,
}

#[derive(Serialize)]
struct WriteOut {
    path: String,
    bytes: usize,
}

struct FileReader;

impl Plugin for FileReader {
    fn handle(request: Request) -> Result<Response, PluginError> {
        log::info!("handling `{}`", request.operation);
        request
            .dispatch()
            .json("read", |input: PathIn| {
                let bytes = std::fs::read(&input.path)
                    .map_err(|err| io_error("read", &input.path, &err))?;
                let content = String::from_utf8(bytes).map_err(|err| {
                    PluginError::failed(format!("read `{}`: not UTF-8 text: {err}", input.path))
                })?;
                log::info!("read {} bytes from `{}`", content.len(), input.path);
                Ok(ReadOut {
                    path: input.path,
                    content,
                })
            })
            .json("list", |input: PathIn| {
                let entries =
                    list(&input.path).map_err(|err| io_error("list", &input.path, &err))?;
                log::info!("`{}` holds {} entries", input.path, entries.len());
                Ok(ListOut {
                    path: input.path,
                    entries,
                })
            })
            .json("write", |input: WriteIn| {
                std::fs::write(&input.path, input.content.as_bytes())
                    .map_err(|err| io_error("write", &input.path, &err))?;
                log::info!("wrote {} bytes to `{}`", input.content.len(), input.path);
                Ok(WriteOut {
                    path: input.path,
                    bytes: input.content.len(),
                })
            })
            .finish()
    }
}

/// The names in directory `path`, sorted.
fn list(path: &str) -> io::Result<Vec<String>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(path)? {
        entries.push(entry?.file_name().to_string_lossy().into_owned());
    }
    entries.sort();
    Ok(entries)
}

/// Turns an I/O error into the plugin error the caller sees: `denied` when
/// the sandbox refused access, `failed` otherwise, naming the path either way.
fn io_error(action: &str, path: &str, err: &io::Error) -> PluginError {
    let message = format!("{action} `{path}`: {err}");
    if is_denial(err) {
        PluginError::Denied(message)
    } else {
        PluginError::Failed(message)
    }
}

/// Whether `err` means "not allowed" rather than "went wrong": permission
/// errors, and paths outside every preopen (`ENOTCAPABLE`, which wasi-libc
/// reports as `EPERM`/`EACCES` or, in older versions, its own code).
fn is_denial(err: &io::Error) -> bool {
    // WASI errno values (wasi-libc): EACCES 2, EPERM 63, ENOTCAPABLE 76.
    const WASI_EACCES: i32 = 2;
    const WASI_EPERM: i32 = 63;
    const WASI_ENOTCAPABLE: i32 = 76;
    if err.kind() == io::ErrorKind::PermissionDenied {
        return true;
    }
    if cfg!(target_os = "wasi")
        && matches!(
            err.raw_os_error(),
            Some(WASI_EACCES | WASI_EPERM | WASI_ENOTCAPABLE)
        )
    {
        return true;
    }
    let text = err.to_string().to_ascii_lowercase();
    [
        "not permitted",
        "permission denied",
        "capabilities insufficient",
        "not capable",
        "notcapable",
        "read-only file system",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

export_plugin!(FileReader);
