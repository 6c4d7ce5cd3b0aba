//! Helpers shared by the tests of the `capsule` binary: the built example
//! plugins, the binary with a private compile cache, scratch files,
//! policies and a minimal HTTP client.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

pub fn plugin_dir() -> PathBuf {
    std::env::var_os("CAPSULE_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"))
}

pub fn plugin(name: &str) -> PathBuf {
    let path = plugin_dir().join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} missing: run `cargo xtask build-plugins`",
        path.display()
    );
    path
}

/// Runs `capsule` trusting the test key that signed the example plugins,
/// with a compile cache private to this test run.
pub fn capsule(args: &[&str]) -> Output {
    capsule_command(args)
        .env("CAPSULE_TRUST", plugin_dir().join("test-key.pub"))
        .output()
        .expect("capsule runs")
}

pub fn capsule_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_capsule"));
    command
        .args(args)
        .env_remove("CAPSULE_LOG")
        .env_remove("CAPSULE_TRUST")
        .env("CAPSULE_CACHE_DIR", scratch("cache"))
        .env("CAPSULE_CACHE_KEY", scratch("cache.key"));
    command
}

/// A path under a per-process scratch directory.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("capsule-cli-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

pub fn json(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|err| panic!("not JSON ({err}): {stdout}"))
}

pub fn path_str(path: &std::path::Path) -> &str {
    path.to_str().unwrap()
}

/// Writes a policy into the scratch folder; `{plugins}` and `{key}` are
/// replaced by the plugin folder and the test key.
pub fn policy(name: &str, text: &str) -> PathBuf {
    let path = scratch(name);
    let text = text
        .replace("{plugins}", path_str(&plugin_dir()))
        .replace("{key}", path_str(&plugin_dir().join("test-key.pub")))
        .replace("{scratch}", path_str(&scratch("")));
    std::fs::write(&path, text).unwrap();
    path
}

/// A minimal HTTP/1.1 exchange over a fresh connection; returns the status
/// code and body.
pub fn http(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(address, method, path, &[], body)
}

/// [`http`] with extra request headers.
pub fn http_with(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("the server accepts connections");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A `capsule serve` child process on an ephemeral loopback port.
pub struct ServeProcess {
    pub child: std::process::Child,
    /// `127.0.0.1:PORT`.
    pub address: String,
}

impl ServeProcess {
    /// Starts `capsule serve --config POLICY` with `extra` arguments and
    /// waits until it listens. The admin token is `test-admin-token`.
    pub fn start(policy: &std::path::Path, extra: &[&str]) -> ServeProcess {
        use std::io::BufRead;
        let mut args = vec![
            "serve",
            "--config",
            path_str(policy),
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut child = capsule_command(&args)
            .env("CAPSULE_ADMIN_TOKEN", "test-admin-token")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("capsule serve starts");
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let address = first
            .trim()
            .strip_prefix("capsule serving on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
            .to_owned();
        ServeProcess { child, address }
    }

    /// An HTTP exchange with the server.
    pub fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http(&self.address, method, path, body)
    }

    /// The server's peak resident memory so far (VmHWM), in bytes.
    #[cfg(target_os = "linux")]
    pub fn peak_memory(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server is running");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib * 1024
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit
    /// code and how long it took.
    #[cfg(unix)]
    pub fn terminate(mut self) -> (Option<i32>, std::time::Duration) {
        let started = std::time::Instant::now();
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        (status.code(), started.elapsed())
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
