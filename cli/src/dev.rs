//! `capsule dev`: the plugin author's inner loop in one command. It builds
//! the plugin crate, signs the component with a local dev key (created once,
//! trusted by this command and nothing else), serves it on loopback under
//! the plugin's policy, and on every change to the crate rebuilds, re-signs
//! and reloads it, printing the new version's answer to one call — or the
//! build error, while the previous version keeps serving.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use capsule_host::artifact::signature;
use capsule_host::serve::{ServeOptions, serve_on, shutdown_signal};
use capsule_host::{
    Host, HostBuilder, Overrides, Policy, PublicKey, Request, RequestId, SecretKey,
};
use clap::Args;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::exit;

/// How long a burst of file events may go on before one rebuild starts.
const SETTLE: Duration = Duration::from_millis(300);

/// Arguments of `capsule dev`.
#[derive(Args)]
pub struct DevArgs {
    /// The plugin crate's folder.
    #[arg(long, default_value = ".", value_name = "DIR")]
    path: PathBuf,
    /// A policy whose section named after the crate gives the plugin's
    /// grants and limits; its `path` is where the signed build is written.
    /// Without it the plugin gets no grants and the host's default limits,
    /// and the build goes to `target/capsule-dev/NAME.wasm`.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// Address the local server listens on (loopback unless you say
    /// otherwise; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// The operation called after every successful build; its answer is
    /// printed.
    #[arg(long, value_name = "OP")]
    op: Option<String>,
    /// The input of that call.
    #[arg(long, default_value = "{}", value_name = "TEXT")]
    input: String,
    /// The dev signing key, created (mode 0600) if missing. Default:
    /// `$XDG_STATE_HOME/capsule/dev.key` or `~/.local/state/capsule/dev.key`.
    #[arg(long, env = "CAPSULE_DEV_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
}

/// Runs `capsule dev` until SIGINT or SIGTERM.
pub fn dev(args: DevArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            return fail(
                exit::HOST,
                &format!("cannot start the async runtime: {err}"),
            );
        }
    };
    runtime.block_on(dev_loop(args))
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("error [dev]: {message}");
    exit::code(code)
}

/// One line of what `capsule dev` is doing, on stdout.
fn say(message: impl std::fmt::Display) {
    println!("capsule dev: {message}");
}

/// The local server and the host behind it.
struct Server {
    host: Host,
    address: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Finishes open requests, then shuts the plugins down.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.serving.await;
    }
}

/// The crate being developed.
struct Project {
    dir: PathBuf,
    /// Its package name (the plugin's name).
    name: String,
    /// Where cargo puts its component.
    built: PathBuf,
    /// Where the signed component goes.
    signed: PathBuf,
}

async fn dev_loop(args: DevArgs) -> ExitCode {
    let project = match Project::find(&args) {
        Ok(project) => project,
        Err(message) => return fail(exit::USAGE, &message),
    };
    let key = match dev_key(args.key.as_deref()) {
        Ok(key) => key,
        Err(message) => return fail(exit::HOST, &message),
    };
    say(format!(
        "developing `{}` in {}; signing with the dev key {} (trusted only by capsule dev)",
        project.name,
        project.dir.display(),
        key.public_key().key_id()
    ));

    let config = args
        .config
        .as_ref()
        .map(|path| std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()));
    let (changes, mut changed) = mpsc::unbounded_channel::<PathBuf>();
    let _watcher = match watch(&project.dir, config.as_deref(), changes) {
        Ok(watcher) => watcher,
        Err(message) => return fail(exit::HOST, &message),
    };
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut server: Option<Server> = None;
    // Where the server listens once it first started: restarts keep it.
    let mut listen = args.listen;
    let mut policy_changed = false;
    loop {
        // cargo runs while the server keeps answering on the other workers.
        let built = tokio::task::block_in_place(|| build(&project, &key));
        // A changed policy applies with the next good build.
        if built
            && std::mem::take(&mut policy_changed)
            && let Some(old) = server.take()
        {
            say("the policy changed: restarting the host under it");
            old.stop().await;
        }
        if built {
            match &server {
                None => match start(&args, listen, &project, &key).await {
                    Ok(started) => {
                        listen = started.address;
                        try_call(&args, &project, &started.host).await;
                        server = Some(started);
                    }
                    Err(message) => say(format!("not started: {message}")),
                },
                Some(Server { host, .. }) => match host.reload(&project.name).await {
                    Ok(details) => {
                        let generation = host
                            .status(&project.name)
                            .map_or(0, |status| status.generation);
                        say(format!(
                            "reloaded `{}` (generation {generation}, sha256:{})",
                            project.name,
                            &details.digest[..12]
                        ));
                        try_call(&args, &project, host).await;
                    }
                    Err(err) => say(format!(
                        "the new build was refused ({}: {err}); the previous version keeps serving",
                        err.kind()
                    )),
                },
            }
        } else if server.is_some() {
            say(format!(
                "build failed; `{}` keeps serving its previous version",
                project.name
            ));
        } else {
            say("build failed; fix it and save to try again");
        }
        // Wait for the next change to the crate (or the end).
        tokio::select! {
            () = &mut shutdown => break,
            Some(first) = changed.recv() => {
                let mut paths = BTreeSet::from([first]);
                let settle = tokio::time::sleep(SETTLE);
                tokio::pin!(settle);
                loop {
                    tokio::select! {
                        () = &mut settle => break,
                        Some(path) = changed.recv() => { paths.insert(path); }
                    }
                }
                policy_changed |= paths.iter().any(|path| Some(path) == config.as_ref());
                // Editors' temporary files come and go: show what is there.
                let shown: Vec<String> = paths
                    .iter()
                    .filter(|path| path.exists())
                    .map(|p| p.strip_prefix(&project.dir).unwrap_or(p).display().to_string())
                    .collect();
                say(format!("changed: {}", shown.join(", ")));
            }
            else => break,
        }
    }
    if let Some(Server { stop, serving, .. }) = server {
        // The server finishes open requests, then shuts the plugins down.
        let _ = stop.send(());
        let _ = serving.await;
    }
    say("stopped");
    exit::code(exit::OK)
}

impl Project {
    fn find(args: &DevArgs) -> Result<Project, String> {
        let dir = std::fs::canonicalize(&args.path)
            .map_err(|err| format!("{}: {err}", args.path.display()))?;
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .map_err(|err| format!("{} is not a plugin crate: {err}", manifest.display()))?;
        let table: toml::Table = text
            .parse()
            .map_err(|err| format!("{}: {err}", manifest.display()))?;
        let name = table
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(toml::Value::as_str)
            .ok_or_else(|| format!("{} has no [package] name", manifest.display()))?
            .to_owned();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|target| {
                if target.is_absolute() {
                    target
                } else {
                    dir.join(target)
                }
            })
            .unwrap_or_else(|| dir.join("target"));
        let built = target
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let signed = match &args.config {
            None => dir.join("target/capsule-dev").join(format!("{name}.wasm")),
            Some(config) => policy_path_of(config, &name)?,
        };
        Ok(Project {
            dir,
            name,
            built,
            signed,
        })
    }
}

/// The `path` of `[plugins.NAME]` in the policy at `config`, resolved
/// against the policy's folder (read before the file exists, so it can be
/// built there).
fn policy_path_of(config: &Path, name: &str) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(config)
        .map_err(|err| format!("cannot read {}: {err}", config.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|err| format!("{}: {err}", config.display()))?;
    let path = table
        .get("plugins")
        .and_then(|plugins| plugins.get(name))
        .and_then(|plugin| plugin.get("path"))
        .and_then(toml::Value::as_str)
        .ok_or_else(|| {
            format!(
                "{} has no [plugins.{name}] with a `path` (the section must be named after the crate)",
                config.display()
            )
        })?;
    let base = std::fs::canonicalize(config)
        .ok()
        .and_then(|file| file.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(base.join(path))
}

/// The dev key at `path` (or the default place), created on first use.
fn dev_key(path: Option<&Path>) -> Result<SecretKey, String> {
    let path = match path {
        Some(path) => path.to_path_buf(),
        None => capsule_host::CacheKey::default_path()
            .and_then(|cache| cache.parent().map(|dir| dir.join("dev.key")))
            .ok_or("no HOME or XDG_STATE_HOME to keep the dev key in: pass --key FILE")?,
    };
    if path.exists() {
        return SecretKey::from_file(&path).map_err(|err| format!("{}: {err}", path.display()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    }
    let key = SecretKey::generate().map_err(|err| err.to_string())?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .map_err(|err| format!("cannot create {}: {err}", path.display()))?;
    std::io::Write::write_all(&mut file, key.to_pem().as_bytes())
        .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    say(format!("created the dev key {}", path.display()));
    Ok(key)
}

/// Builds the crate and signs the component; returns whether both worked.
/// cargo's own output goes to stderr as it comes.
fn build(project: &Project, key: &SecretKey) -> bool {
    let started = Instant::now();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(&project.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => {
            say(format!("cargo build failed ({status})"));
            return false;
        }
        Err(err) => {
            say(format!("cannot run cargo: {err}"));
            return false;
        }
    }
    let signed = std::fs::read(&project.built)
        .map_err(|err| format!("{}: {err}", project.built.display()))
        .and_then(|bytes| signature::sign(&bytes, key))
        .and_then(|signed| {
            if let Some(dir) = project.signed.parent() {
                std::fs::create_dir_all(dir).map_err(|err| err.to_string())?;
            }
            let partial = project.signed.with_extension("wasm.signing");
            std::fs::write(&partial, &signed.embedded)
                .and_then(|()| std::fs::rename(&partial, &project.signed))
                .map_err(|err| format!("{}: {err}", project.signed.display()))
        });
    match signed {
        Ok(()) => {
            say(format!(
                "built and signed {} in {:.1?}",
                project.signed.display(),
                started.elapsed()
            ));
            true
        }
        Err(message) => {
            say(format!("cannot sign the build: {message}"));
            false
        }
    }
}

/// Loads the policy (or a policy of just this plugin), builds a host that
/// trusts the dev key, loads the plugin and starts serving.
async fn start(
    args: &DevArgs,
    listen: SocketAddr,
    project: &Project,
    key: &SecretKey,
) -> Result<Server, String> {
    let policy = match &args.config {
        None => Policy::for_component(&project.signed, &Overrides::default()),
        Some(config) => load_policy_trusting_dev(config),
    }
    .map_err(|errors| errors.to_string())?;
    let dev_public: PublicKey = key.public_key();
    let host = HostBuilder::from_policy(&policy)
        .trust(dev_public)
        .middleware(RequestId)
        .build()
        .map_err(|err| err.to_string())?;
    for failure in host.load_policy(&policy).await {
        say(format!("not loaded: {failure}"));
    }
    if host.status(&project.name).is_none() {
        return Err(format!("`{}` did not load", project.name));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|err| format!("cannot listen on {listen}: {err}"))?;
    let address = listener.local_addr().map_err(|err| err.to_string())?;
    let options = ServeOptions {
        listen: address,
        admin_token: std::env::var("CAPSULE_ADMIN_TOKEN")
            .ok()
            .filter(|token| !token.is_empty()),
        ..ServeOptions::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = {
        let host = host.clone();
        tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            if let Err(err) = serve_on(listener, host, options, stopped).await {
                say(format!("the server stopped: {err}"));
            }
        })
    };
    say(format!(
        "serving `{}` on http://{address} (POST /v1/plugins/{}/call?op=…)",
        project.name, project.name
    ));
    Ok(Server {
        host,
        address,
        stop,
        serving,
    })
}

/// The policy at `config`, where trusted key files that do not exist yet
/// are left out (with a note): `capsule dev` trusts its own key, so a
/// scaffold's `trusted_keys = ["dev.pub"]` need not exist to develop.
fn load_policy_trusting_dev(config: &Path) -> Result<Policy, capsule_host::PolicyErrors> {
    let text = match std::fs::read_to_string(config) {
        Ok(text) => text,
        Err(_) => return Policy::load(config),
    };
    let base = config
        .canonicalize()
        .ok()
        .and_then(|file| file.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let Ok(mut table) = text.parse::<toml::Table>() else {
        return Policy::load(config);
    };
    let Some(keys) = table
        .get_mut("host")
        .and_then(|host| host.get_mut("trusted_keys"))
        .and_then(toml::Value::as_array_mut)
    else {
        return Policy::load(config);
    };
    let before = keys.len();
    keys.retain(|key| key.as_str().is_none_or(|key| base.join(key).exists()));
    if keys.len() == before {
        return Policy::load(config);
    }
    say(format!(
        "{} trusted key file(s) of {} do not exist yet: left out (capsule dev trusts its own key)",
        before - keys.len(),
        config.display()
    ));
    let text = toml::to_string(&table).unwrap_or(text);
    Policy::parse(&text, config, &base)
}

/// Makes the `--op` call, if there is one, and prints its answer.
async fn try_call(args: &DevArgs, project: &Project, host: &Host) {
    let Some(op) = &args.op else { return };
    let request = Request::new(op.clone(), args.input.clone());
    match host.call(&project.name, request).await {
        Ok(outcome) => say(format!(
            "{op} → {}",
            String::from_utf8_lossy(&outcome.response.payload)
        )),
        Err(err) => say(format!("{op} → error [{}]: {}", err.kind(), err.cause)),
    }
}

/// Watches the crate's sources — `src/` (recursively), `Cargo.toml`,
/// `build.rs` and `wit/` — and the policy. What the build itself writes
/// (`target/`, the signed component) is not watched.
fn watch(
    dir: &Path,
    policy: Option<&Path>,
    changes: mpsc::UnboundedSender<PathBuf>,
) -> Result<impl Watcher, String> {
    let watched_dir = dir.to_path_buf();
    let policy_file = policy.map(Path::to_path_buf);
    let relevant = move |path: &Path| {
        if policy_file.as_deref() == Some(path) {
            return true;
        }
        let Ok(relative) = path.strip_prefix(&watched_dir) else {
            return false;
        };
        let first = relative.components().next().map(|c| c.as_os_str());
        match first.and_then(|c| c.to_str()) {
            Some("src" | "wit") => true,
            Some("Cargo.toml" | "build.rs") => relative.components().count() == 1,
            _ => false,
        }
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            for path in event.paths {
                if relevant(&path) {
                    let _ = changes.send(path);
                }
            }
        }
    })
    .map_err(|err| format!("cannot watch {}: {err}", dir.display()))?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|err| format!("cannot watch {}: {err}", dir.display()))?;
    if let Some(policy_dir) = policy.and_then(Path::parent)
        && policy_dir != dir
    {
        watcher
            .watch(policy_dir, RecursiveMode::NonRecursive)
            .map_err(|err| format!("cannot watch {}: {err}", policy_dir.display()))?;
    }
    for sub in ["src", "wit"] {
        let path = dir.join(sub);
        if path.is_dir() {
            watcher
                .watch(&path, RecursiveMode::Recursive)
                .map_err(|err| format!("cannot watch {}: {err}", path.display()))?;
        }
    }
    Ok(watcher)
}
