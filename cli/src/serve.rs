//! `capsule serve`: run every plugin of a policy behind the HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use capsule_host::serve::{ServeOptions, serve_on, shutdown_signal};
use capsule_host::units::{parse_duration, parse_size};
use capsule_host::{HostBuilder, HostError, RequestId};
use clap::Args;

use crate::exit;

/// Arguments of `capsule serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The policy file.
    #[arg(long, default_value = "capsule.toml", value_name = "FILE.toml")]
    config: PathBuf,
    /// Address to listen on. Loopback unless you say otherwise.
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Environment variable holding a bearer token that acts as an `admin`
    /// API key (reload, pause, resume, apply, publish, dead letters). Scoped
    /// keys with roles go in the policy's `[[host.api_keys]]`.
    #[arg(long, default_value = "CAPSULE_ADMIN_TOKEN", value_name = "VAR")]
    admin_token_env: String,
    /// Largest request body, e.g. `1MiB`.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    max_body: u64,
    /// How long in-flight calls get to finish on SIGINT/SIGTERM.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    shutdown_deadline: Duration,
    /// Reload a plugin (verified first; the old version is kept on failure)
    /// whenever its component file changes.
    #[arg(long)]
    watch: bool,
    /// With `[host.backend] kind = "nats"`: keep trying to reach NATS for
    /// this long at start (e.g. `60s`) instead of exiting at once.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    wait_for_backend: Option<Duration>,
    /// Serve the web console at `/console`: every plugin's state, grants,
    /// calls, errors and refusals; sign in with a `view` or `admin` key (or
    /// the admin token) to see it, and as `admin` to act.
    #[arg(long)]
    console: bool,
}

/// Runs `capsule serve` until SIGINT or SIGTERM.
pub fn serve_command(args: ServeArgs) -> ExitCode {
    let policy = match exit::policy_or_usage(&args.config) {
        Ok(policy) => policy,
        Err(code) => return code,
    };
    let admin_token = std::env::var(&args.admin_token_env)
        .ok()
        .filter(|token| !token.is_empty());
    if admin_token.is_none() && policy.host.api_keys.is_empty() {
        tracing::warn!(
            variable = %args.admin_token_env,
            "no admin token set and no [[host.api_keys]]: admin routes answer 401"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error [host]: cannot start the async runtime: {err}");
            return exit::code(exit::HOST);
        }
    };
    runtime.block_on(async move {
        let give_up = args.wait_for_backend.map(|wait| Instant::now() + wait);
        let host = loop {
            match HostBuilder::from_policy(&policy)
                .middleware(RequestId)
                .build()
            {
                Ok(host) => break host,
                // The backend may come up after the host (containers
                // started together): try again while the operator allows.
                Err(err @ HostError::Backend(_))
                    if give_up.is_some_and(|at| Instant::now() < at) =>
                {
                    tracing::warn!(error = %err, "waiting for the backend");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(err) => {
                    eprintln!("error [host]: {err}");
                    return exit::code(exit::HOST);
                }
            }
        };
        // Taken before the plugins load: until a handler is installed, a
        // SIGHUP would end the process.
        let hangups = hangups();
        for failure in host.load_policy(&policy).await {
            // The host keeps serving every plugin that did load.
            eprintln!(
                "error [{}]: {}",
                failure.kind(),
                capsule_host::text::log_field(&failure.to_string())
            );
        }
        if args.watch {
            crate::watch::watch(host.clone());
        }
        apply_on_hangup(hangups, host.clone(), args.config.clone());
        let options = ServeOptions {
            listen: args.listen,
            admin_token,
            max_body_bytes: usize::try_from(args.max_body).unwrap_or(usize::MAX),
            shutdown_deadline: args.shutdown_deadline,
            policy_file: Some(args.config.clone()),
            console: args.console,
            ..ServeOptions::default()
        };
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("error [host]: cannot listen on {}: {err}", args.listen);
                return exit::code(exit::HOST);
            }
        };
        match listener.local_addr() {
            Ok(address) => {
                println!("capsule serving on http://{address}");
                // stdout stays one line: scripts read the address from it.
                if args.console {
                    tracing::info!("console at http://{address}/console");
                }
            }
            Err(err) => eprintln!("warning: cannot read the bound address: {err}"),
        }
        match serve_on(listener, host, options, shutdown_signal()).await {
            Ok(()) => exit::code(exit::OK),
            Err(err) => {
                eprintln!("error [host]: serving failed: {err}");
                exit::code(exit::HOST)
            }
        }
    })
}

/// SIGHUPs from now on, to apply the policy again.
#[cfg(unix)]
fn hangups() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
        .inspect_err(|err| tracing::warn!(%err, "SIGHUP will not apply the policy"))
        .ok()
}

#[cfg(not(unix))]
fn hangups() -> Option<()> {
    None
}

/// Applies the policy file again on every SIGHUP (what `POST
/// /v1/policy/apply` does), saying what changed or why nothing did.
#[cfg(unix)]
fn apply_on_hangup(
    hangups: Option<tokio::signal::unix::Signal>,
    host: capsule_host::Host,
    policy: PathBuf,
) {
    let Some(mut hangups) = hangups else {
        return;
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let applied = capsule_host::serve::apply_policy_file(&host, &policy).await;
            let outcome = match &applied {
                Ok(changes) if changes.failed.is_empty() => "ok".to_owned(),
                Ok(changes) => format!("failed ({} plugin(s) kept)", changes.failed.len()),
                Err(_) => "refused".to_owned(),
            };
            host.audit()
                .action("signal", "apply", &policy.display().to_string(), &outcome);
            match applied {
                Ok(changes) => {
                    // (`apply_policy` logs what changed.)
                    for failed in &changes.failed {
                        eprintln!(
                            "error [{}]: {} kept as it was: {}",
                            failed.kind,
                            failed.name,
                            capsule_host::text::log_field(&failed.message)
                        );
                    }
                }
                Err(err) => eprintln!("error [config]: policy not applied: {err}"),
            }
        }
    });
}

#[cfg(not(unix))]
fn apply_on_hangup(_: Option<()>, _: capsule_host::Host, _: PathBuf) {}
