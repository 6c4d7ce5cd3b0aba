//! Private server processes for tests and the demo (`nats-server`, the
//! OCI distribution registry): started on a free loopback port, tied to
//! this process so they never outlive it, and waited for until they listen.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How one kind of server is launched: the command line for a given
/// scratch folder and port (writing any config file it needs there), and
/// how to install it when it is missing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Launcher {
    /// Names the scratch folder (`capsule-<name>-<pid>-<port>`).
    pub(crate) name: &'static str,
    /// The binary to run (an environment variable may name another).
    pub(crate) binary: fn() -> String,
    /// Writes what the server needs into the folder and returns its
    /// arguments.
    pub(crate) arguments: fn(&Path, u16) -> Result<Vec<String>, String>,
    /// Said when the binary cannot be started.
    pub(crate) install_hint: &'static str,
}

/// A server process this process started on a free loopback port, its
/// data in a scratch folder; stopped, and its folder removed, when dropped.
#[derive(Debug)]
pub(crate) struct LocalServer {
    child: Option<Child>,
    /// The port it listens on, on 127.0.0.1.
    pub(crate) port: u16,
    dir: PathBuf,
    launcher: Launcher,
}

impl LocalServer {
    /// Starts a server and waits until it accepts connections.
    pub(crate) fn start(launcher: Launcher) -> Result<LocalServer, String> {
        let port = free_port().map_err(|err| format!("no free loopback port: {err}"))?;
        let dir = std::env::temp_dir().join(format!(
            "capsule-{}-{}-{port}",
            launcher.name,
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
        let mut server = LocalServer {
            child: None,
            port,
            dir,
            launcher,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let binary = (self.launcher.binary)();
        let arguments = (self.launcher.arguments)(&self.dir, self.port)?;
        let mut command = Command::new(&binary);
        command
            .args(&arguments)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_tied(command).map_err(|err| {
            format!(
                "cannot start `{binary}`: {err}; {}",
                self.launcher.install_hint
            )
        })?;
        let child = self.child.insert(child);
        wait_listening(child, self.port, &binary)
    }

    /// Stops the server (its data stays, for [`LocalServer::restart`]).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, with the same data.
    pub(crate) fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until something listens on `port` of 127.0.0.1 (at most 10 s),
/// failing early when `child` exits.
fn wait_listening(child: &mut Child, port: u16, binary: &str) -> Result<(), String> {
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
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Spawns `command` so that it dies with this process, even when nothing
/// drops its [`NatsServer`] (a `static` is never dropped): on Linux the
/// child asks for SIGKILL when the thread that spawned it ends, so it is
/// spawned from a thread that lives as long as the process.
fn spawn_tied(mut command: Command) -> std::io::Result<Child> {
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
