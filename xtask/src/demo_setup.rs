//! What the demo prepares before it runs anything: a loopback HTTP server for
//! the `http` grant, a jail with planted symlinks for `fs-escape`, and a
//! fresh key-value store so counts start at zero.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

use anyhow::{Context, Result};

/// The port the demo policy grants `http-fetch` (see
/// `example-plugins/capsule.toml`).
pub const DEMO_HTTP_PORT: u16 = 18089;

/// Starts a tiny HTTP server on 127.0.0.1:`DEMO_HTTP_PORT` that answers every
/// request with a short text body, for as long as the demo runs.
pub fn start_http_server() -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", DEMO_HTTP_PORT)).with_context(|| {
        format!("the demo needs 127.0.0.1:{DEMO_HTTP_PORT} free for its HTTP server")
    })?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let body = "hello from the demo's loopback server\n";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(())
}

/// Prepares `target/demo`: an empty data directory, and the `fs-escape` jail
/// with a symlink to a folder outside it and one to `/etc/passwd`.
pub fn prepare_dirs(demo_dir: &Path) -> Result<()> {
    let data = demo_dir.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    let jail = demo_dir.join("jail");
    let outside = demo_dir.join("outside");
    for dir in [&jail, &outside] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(outside.join("secret.txt"), "a secret outside the jail\n")?;
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&outside, jail.join("link-out"))?;
        std::os::unix::fs::symlink("/etc/passwd", jail.join("abs-link"))?;
    }
    Ok(())
}
