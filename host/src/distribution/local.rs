//! A private OCI distribution registry (`docker-registry`, Debian's build of
//! the CNCF distribution registry) on a free loopback port, for tests and
//! the demo: its storage in a temporary directory removed when it stops.

use std::path::Path;

use crate::local_server::{Launcher, LocalServer};

/// How to get the registry when it is missing.
pub const INSTALL_HINT: &str = "install it with `apt-get install -y docker-registry` \
     (or put the distribution `registry` binary on PATH and name it in CAPSULE_OCI_REGISTRY)";

/// A registry this process started; stopped when dropped.
#[derive(Debug)]
pub struct RegistryServer {
    server: LocalServer,
}

const LAUNCHER: Launcher = Launcher {
    name: "registry",
    binary: || std::env::var("CAPSULE_OCI_REGISTRY").unwrap_or_else(|_| "docker-registry".into()),
    arguments,
    install_hint: INSTALL_HINT,
};

/// Writes the registry's config into `dir`. Deletes are on so tests can
/// re-point tags; nothing else differs from the registry's defaults.
fn arguments(dir: &Path, port: u16) -> Result<Vec<String>, String> {
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\n\
             log:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {:?}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.join("storage"),
        ),
    )
    .map_err(|err| format!("{}: {err}", config.display()))?;
    Ok(vec!["serve".into(), config.display().to_string()])
}

impl RegistryServer {
    /// Starts a registry on a free loopback port with empty storage and
    /// waits until it accepts connections.
    pub fn start() -> Result<RegistryServer, String> {
        LocalServer::start(LAUNCHER).map(|server| RegistryServer { server })
    }

    /// One registry for the whole process, started on first use (tests of
    /// one binary share it; each uses repositories of its own).
    ///
    /// # Panics
    /// When no registry can start: registry tests fail loudly, never skip.
    pub fn shared() -> &'static RegistryServer {
        static SHARED: std::sync::OnceLock<RegistryServer> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| RegistryServer::start().unwrap_or_else(|err| panic!("{err}")))
    }

    /// `127.0.0.1:PORT`, the registry part of references to it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.server.port)
    }

    /// Stops the registry (its storage stays, for [`RegistryServer::restart`]).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts the registry again on the same port, with the same storage.
    pub fn restart(&mut self) -> Result<(), String> {
        self.server.restart()
    }
}
