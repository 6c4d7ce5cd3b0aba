//! `capsule`: the command-line face of the Capsule host library. Each
//! subcommand parses its arguments, calls the library and prints.

mod api_key;
mod check;
mod dev;
mod exit;
mod inspect;
mod keys;
mod new;
mod registry;
mod run;
mod serve;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run untrusted WebAssembly plugins under signatures, grants and limits.
#[derive(Parser)]
#[command(name = "capsule", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Load a plugin and call it once.
    Run(run::RunArgs),
    /// Validate a policy and every plugin in it without running anything.
    Check(check::CheckArgs),
    /// Serve every plugin of a policy over HTTP (loopback by default).
    Serve(serve::ServeArgs),
    /// Show what a component is made of, without compiling or running it.
    Inspect(inspect::InspectArgs),
    /// Generate an Ed25519 key pair for signing plugins.
    Keygen(keys::KeygenArgs),
    /// Sign a plugin (embedded and/or detached signature).
    Sign(keys::SignArgs),
    /// Check a plugin's signature against trusted keys.
    Verify(keys::VerifyArgs),
    /// Make an API key for `capsule serve` and its policy entry.
    ApiKey(api_key::ApiKeyArgs),
    /// Create a new plugin crate that builds outside this repository.
    New(new::NewArgs),
    /// Build, sign, serve and reload a plugin crate on every change.
    Dev(dev::DevArgs),
    /// Push a signed plugin to an OCI registry (signature verified first).
    Push(registry::PushArgs),
    /// Pull a plugin from an OCI registry into the local store.
    Pull(registry::PullArgs),
    /// List the plugins of an OCI registry with their metadata.
    Search(registry::SearchArgs),
}

fn main() -> ExitCode {
    capsule_host::tls::install_provider();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Dev(_)) {
        end_quietly_on_closed_stdout();
    }
    init_tracing();
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Check(args) => check::check(args),
        Command::Serve(args) => serve::serve_command(args),
        Command::Inspect(args) => inspect::inspect(args),
        Command::Keygen(args) => keys::keygen(args),
        Command::Sign(args) => keys::sign(args),
        Command::Verify(args) => keys::verify(args),
        Command::ApiKey(args) => api_key::api_key(args),
        Command::New(args) => new::new(args),
        Command::Dev(args) => dev::dev(args),
        Command::Push(args) => registry::push(args),
        Command::Pull(args) => registry::pull(args),
        Command::Search(args) => registry::search(args),
    }
}

/// Rust ignores SIGPIPE, so printing to a closed pipe (`capsule inspect … |
/// head`) is an error, and `println!` panics on it. A command-line tool
/// should end quietly instead, as the default SIGPIPE action does. The
/// server keeps ignoring it: a client that goes away must not stop it.
fn end_quietly_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default action at the start of `main`,
    // before any thread is spawned, has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Plugin log lines go to stderr at `info` and above; everything else only
/// at `warn`. `CAPSULE_LOG` (same syntax as `RUST_LOG`) overrides.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAPSULE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,capsule::plugin=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
}
