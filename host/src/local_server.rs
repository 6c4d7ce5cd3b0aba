//! Private server processes for tests and the demo (`nats-server`, the
//! OCI distribution registry): started on a free loopback port, tied to
//! this process so they never outlive it, and waited for until they listen.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Waits until something listens on `port` of 127.0.0.1 (at most 10 s),
/// failing early when `child` exits.
pub(crate) fn wait_listening(child: &mut Child, port: u16, binary: &str) -> Result<(), String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("`{binary}` exited at start: {status}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "`{binary}` did not listen on {address} within 10 s"
    ))
}

/// A port on 127.0.0.1 nothing listens on now.
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Spawns `command` so that it dies with this process, even when nothing
/// drops its [`NatsServer`] (a `static` is never dropped): on Linux the
/// child asks for SIGKILL when the thread that spawned it ends, so it is
/// spawned from a thread that lives as long as the process.
pub(crate) fn spawn_tied(mut command: Command) -> std::io::Result<Child> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("capsule-server-parent".into())
        .spawn(move || {
            let _ = tx.send(command.spawn());
            loop {
                std::thread::park();
            }
        })?;
    rx.recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the spawning thread ended")))
}
