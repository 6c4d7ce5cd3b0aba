//! A private `nats-server` with JetStream on a free loopback port, for
//! tests and the demo: never a shared daemon, its data in a temporary
//! directory removed when it stops.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::local_server::{free_port, spawn_tied, wait_listening};

/// A `nats-server -js` this process started; stopped when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

/// How to get `nats-server` when it is missing.
pub const INSTALL_HINT: &str = "install it with `apt-get install -y nats-server` \
     (or put a nats-server 2.9+ binary on PATH, or name it in CAPSULE_NATS_SERVER)";

impl NatsServer {
    /// Starts a server on a free loopback port and waits until it accepts
    /// connections.
    pub fn start() -> Result<NatsServer, String> {
        let port = free_port().map_err(|err| format!("no free loopback port: {err}"))?;
        let dir = std::env::temp_dir().join(format!("capsule-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
        let mut server = NatsServer {
            child: None,
            port,
            dir,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let binary = std::env::var("CAPSULE_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        // JetStream counts every stream's `max_bytes` as reserved and, left
        // to itself, allows 75% of the free disk: a machine with 20 GB free
        // then refuses the twentieth deployment's event stream (1 GiB each)
        // although nothing is written. The limit is bookkeeping, not space,
        // so a private server states a generous one.
        let config = self.dir.join("nats.conf");
        let store = self.dir.join("store");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{port}\"\n\
                 jetstream {{\n  store_dir: {store:?}\n  max_file_store: 1TB\n  max_memory_store: 1GB\n}}\n",
                port = self.port,
            ),
        )
        .map_err(|err| format!("{}: {err}", config.display()))?;
        let mut command = Command::new(&binary);
        command
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_tied(command)
            .map_err(|err| format!("cannot start `{binary}`: {err}; {INSTALL_HINT}"))?;
        let child = self.child.insert(child);
        wait_listening(child, self.port, &binary)
    }

    /// One server for the whole process, started on first use (tests of
    /// one binary share it; each uses a prefix of its own). It stops when
    /// the process exits.
    ///
    /// # Panics
    /// When no server can start: NATS tests fail loudly, never skip.
    pub fn shared() -> &'static NatsServer {
        static SHARED: std::sync::OnceLock<NatsServer> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| NatsServer::start().unwrap_or_else(|err| panic!("{err}")))
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (its data stays, for [`NatsServer::restart`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, with the same data.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
