//! A private `nats-server` with JetStream on a free loopback port, for
//! tests and the demo: never a shared daemon, its data in a temporary
//! directory removed when it stops.

use std::path::Path;

use crate::local_server::{Launcher, LocalServer};

/// A `nats-server -js` this process started; stopped when dropped.
#[derive(Debug)]
pub struct NatsServer {
    server: LocalServer,
}

/// How to get `nats-server` when it is missing.
pub const INSTALL_HINT: &str = "install it with `apt-get install -y nats-server` \
     (or put a nats-server 2.9+ binary on PATH, or name it in CAPSULE_NATS_SERVER)";

const LAUNCHER: Launcher = Launcher {
    name: "nats",
    binary: || std::env::var("CAPSULE_NATS_SERVER").unwrap_or_else(|_| "nats-server".into()),
    arguments,
    install_hint: INSTALL_HINT,
};

/// Writes the server's config into `dir`.
fn arguments(dir: &Path, port: u16) -> Result<Vec<String>, String> {
    // JetStream counts every stream's `max_bytes` as reserved and, left
    // to itself, allows 75% of the free disk: a machine with 20 GB free
    // then refuses the twentieth deployment's event stream (1 GiB each)
    // although nothing is written. The limit is bookkeeping, not space,
    // so a private server states a generous one.
    let config = dir.join("nats.conf");
    let store = dir.join("store");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:{port}\"\n\
             jetstream {{\n  store_dir: {store:?}\n  max_file_store: 1TB\n  max_memory_store: 1GB\n}}\n",
        ),
    )
    .map_err(|err| format!("{}: {err}", config.display()))?;
    Ok(vec!["-c".into(), config.display().to_string()])
}

impl NatsServer {
    /// Starts a server on a free loopback port and waits until it accepts
    /// connections.
    pub fn start() -> Result<NatsServer, String> {
        LocalServer::start(LAUNCHER).map(|server| NatsServer { server })
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
        format!("nats://127.0.0.1:{}", self.server.port)
    }

    /// Stops the server (its data stays, for [`NatsServer::restart`]).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts the server again on the same port, with the same data.
    pub fn restart(&mut self) -> Result<(), String> {
        self.server.restart()
    }
}
