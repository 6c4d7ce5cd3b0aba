//! A private OCI distribution registry (`docker-registry`, Debian's build of
//! the CNCF distribution registry) on a free loopback port, for tests and
//! the demo: its storage in a temporary directory removed when it stops.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::local_server::{free_port, spawn_tied, wait_listening};

/// How to get the registry when it is missing.
pub const INSTALL_HINT: &str = "install it with `apt-get install -y docker-registry` \
     (or put the distribution `registry` binary on PATH and name it in CAPSULE_OCI_REGISTRY)";

/// A registry this process started; stopped when dropped.
#[derive(Debug)]
pub struct RegistryServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RegistryServer {
    /// Starts a registry on a free loopback port with empty storage and
    /// waits until it accepts connections.
    pub fn start() -> Result<RegistryServer, String> {
        let port = free_port().map_err(|err| format!("no free loopback port: {err}"))?;
        let dir =
            std::env::temp_dir().join(format!("capsule-registry-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
        let mut server = RegistryServer {
            child: None,
            port,
            dir,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let binary =
            std::env::var("CAPSULE_OCI_REGISTRY").unwrap_or_else(|_| "docker-registry".into());
        let config = self.dir.join("config.yml");
        // Deletes are on so tests can re-point tags; nothing else differs
        // from the registry's defaults.
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {:?}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{}\n",
                self.dir.join("storage"),
                self.port
            ),
        )
        .map_err(|err| format!("{}: {err}", config.display()))?;
        let mut command = Command::new(&binary);
        command
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_tied(command)
            .map_err(|err| format!("cannot start `{binary}`: {err}; {INSTALL_HINT}"))?;
        let child = self.child.insert(child);
        wait_listening(child, self.port, &binary)
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
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the registry (its storage stays, for [`RegistryServer::restart`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again on the same port, with the same storage.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
