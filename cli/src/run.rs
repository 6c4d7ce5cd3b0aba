//! `capsule run`: load one plugin and call it once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use capsule_host::Overrides;
use capsule_host::services::events::TopicPattern;
use capsule_host::services::files::Access;
use capsule_host::services::http::OriginPattern;
use capsule_host::units::{parse_duration, parse_size};
use capsule_host::{
    CacheKey, CallError, CallStats, EngineOptions, ErrorKind, HostBuilder, HostError, Interruption,
    LoadError, LogRecord, PluginSource, PluginSpec, Policy, PublishedEvent, Request, StreamItem,
};
use clap::Args;
use serde_json::{Value, json};

use crate::exit;

/// Arguments of `capsule run`.
#[derive(Args)]
pub struct RunArgs {
    /// The plugin component (`.wasm`), or with `--config FILE.toml` the
    /// plugin's name in that policy.
    plugin: String,
    /// The operation to call.
    #[arg(long)]
    op: String,
    /// The request payload as text.
    #[arg(long, conflicts_with = "input_file")]
    input: Option<String>,
    /// Read the request payload from a file (`-` for stdin).
    #[arg(long)]
    input_file: Option<PathBuf>,
    /// A policy file (`capsule.toml`) to take the plugin, its grants and the
    /// host settings from; or, as `KEY=VALUE`, a configuration value for the
    /// plugin (repeatable).
    #[arg(long = "config", value_name = "FILE.toml|KEY=VALUE", value_parser = parse_config_arg)]
    config: Vec<ConfigArg>,
    /// A configuration value for the plugin (repeatable); same as
    /// `--config KEY=VALUE`.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    set: Vec<(String, String)>,
    /// Print one JSON object with the result, the error and the call's cost.
    #[arg(long)]
    json: bool,
    /// Write a profile of the plugin's guest code during the call to FILE
    /// (the Firefox profiler's format: open it at https://profiler.firefox.com).
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Fuel per call (`none` for unlimited).
    #[arg(long, value_parser = parse_fuel)]
    fuel: Option<FuelBudget>,
    /// Linear memory limit, e.g. `64MiB`.
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// Wall-clock limit per call, e.g. `500ms` or `2s`.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Largest response accepted, e.g. `1MiB`.
    #[arg(long, value_parser = parse_size)]
    max_output: Option<u64>,
    /// A public key trusted to sign plugins (repeatable). Also read from
    /// `CAPSULE_TRUST`, colon-separated.
    #[arg(
        long,
        value_name = "KEY.pub",
        env = "CAPSULE_TRUST",
        value_delimiter = ':'
    )]
    trust: Vec<PathBuf>,
    /// Run the plugin even without a valid trusted signature (logged loudly).
    #[arg(long)]
    allow_unsigned: bool,
    /// A detached signature for the plugin.
    #[arg(long, value_name = "FILE.sig")]
    signature: Option<PathBuf>,
    /// Where compiled plugins are cached (default: `$XDG_CACHE_HOME/capsule`
    /// or `~/.cache/capsule`).
    #[arg(long, env = "CAPSULE_CACHE_DIR", conflicts_with = "no_cache")]
    cache_dir: Option<PathBuf>,
    /// The private key file that authenticates compile cache entries,
    /// created (mode 0600) if missing (default: the policy's `cache_key`, else
    /// `$XDG_STATE_HOME/capsule/cache.key` or `~/.local/state/capsule/cache.key`).
    #[arg(long, env = "CAPSULE_CACHE_KEY", value_name = "FILE")]
    cache_key: Option<PathBuf>,
    /// Compile the plugin without reading or writing the cache.
    #[arg(long)]
    no_cache: bool,
    // Its help names every service of the host, so it is built at run time.
    #[arg(long = "grant", value_name = "SERVICE=VALUE", value_parser = parse_grant, help = grant_help())]
    grants: Vec<(String, String)>,
    /// Grant an environment variable (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    env: Vec<(String, String)>,
    /// Grant a host directory, as `HOST:GUEST` (read-only) or
    /// `HOST:GUEST:rw` (repeatable).
    #[arg(long = "mount", value_name = "HOST:GUEST[:ro|rw]", value_parser = parse_mount)]
    mounts: Vec<(PathBuf, String, Access)>,
    /// Grant outgoing HTTP to an origin such as `https://api.example.com`
    /// (repeatable).
    #[arg(long = "allow-http", value_name = "ORIGIN", value_parser = OriginPattern::parse)]
    allow_http: Vec<OriginPattern>,
    /// Grant a key-value namespace (persisted under `--data-dir`).
    #[arg(long, value_name = "NAMESPACE")]
    kv: Option<String>,
    /// Where the key-value store lives; without it kv data lasts one run.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Grant publishing to topics matching a pattern such as `orders.*`
    /// (repeatable).
    #[arg(long, value_name = "PATTERN", value_parser = TopicPattern::parse)]
    publish: Vec<TopicPattern>,
}

/// `HOST:GUEST[:ro|rw]`; the directory is checked with the rest of the
/// plugin's grants.
fn parse_mount(text: &str) -> Result<(PathBuf, String, Access), String> {
    let mut parts = text.splitn(3, ':');
    let (Some(host), Some(guest)) = (parts.next(), parts.next()) else {
        return Err(format!("`{text}` is not HOST:GUEST[:ro|rw]"));
    };
    let access = match parts.next() {
        None | Some("ro") => Access::ReadOnly,
        Some("rw") => Access::ReadWrite,
        Some(other) => return Err(format!("`{other}` is not `ro` or `rw`")),
    };
    Ok((PathBuf::from(host), guest.to_owned(), access))
}

/// The cache directory to use: the one asked for, else the user's cache
/// folder, else none.
fn cache_dir(args: &RunArgs) -> Option<PathBuf> {
    if args.no_cache {
        return None;
    }
    if let Some(dir) = &args.cache_dir {
        return Some(dir.clone());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("capsule"))
}

/// A `--config` argument: a policy file or one configuration value.
#[derive(Clone)]
enum ConfigArg {
    Policy(PathBuf),
    Value(String, String),
}

/// `KEY=VALUE` where KEY is a plain name is a value; anything else (for
/// example `capsule.toml` or `dir/a=b.toml`) is a policy file.
fn parse_config_arg(text: &str) -> Result<ConfigArg, String> {
    match text.split_once('=') {
        Some((key, value))
            if !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                && !text.ends_with(".toml") =>
        {
            Ok(ConfigArg::Value(key.to_owned(), value.to_owned()))
        }
        _ => Ok(ConfigArg::Policy(PathBuf::from(text))),
    }
}

/// The `--grant` help, naming every service the host has.
fn grant_help() -> String {
    let names: Vec<&str> = capsule_host::services::SERVICES
        .iter()
        .map(|s| s.name)
        .collect();
    format!(
        "Grant a host service in full, written as a policy file writes its key \
         (repeatable), e.g. --grant 'kv={{ namespace = \"n\", max_keys = 10 }}'; \
         the flags below add to it. Services: {}",
        names.join(", ")
    )
}

/// `SERVICE=VALUE` where SERVICE is one of the host's services.
fn parse_grant(text: &str) -> Result<(String, String), String> {
    let (service, value) = parse_key_value(text)?;
    if !capsule_host::services::SERVICES
        .iter()
        .any(|s| s.name == service)
    {
        let names: Vec<&str> = capsule_host::services::SERVICES
            .iter()
            .map(|s| s.name)
            .collect();
        return Err(format!(
            "no service `{service}` (services: {})",
            names.join(", ")
        ));
    }
    Ok((service, value))
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

/// A fuel budget from the command line: a number of units, or `none`.
#[derive(Clone, Copy)]
struct FuelBudget(Option<u64>);

fn parse_fuel(text: &str) -> Result<FuelBudget, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(FuelBudget(None));
    }
    text.replace('_', "")
        .parse::<u64>()
        .map(|units| FuelBudget(Some(units)))
        .map_err(|_| format!("`{text}` is not a fuel amount (a whole number or `none`)"))
}

/// Runs `capsule run` and returns the process exit code.
pub fn run(args: RunArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return host_error(&args, &format!("cannot start the async runtime: {err}")),
    };
    runtime.block_on(call_once(args))
}

/// The command line's grants and limits, applied to the plugin's policy
/// section (or to a policy of just this plugin) before it is validated.
fn overrides(args: &RunArgs) -> Overrides {
    let values = args.config.iter().filter_map(|arg| match arg {
        ConfigArg::Value(key, value) => Some((key.clone(), value.clone())),
        ConfigArg::Policy(_) => None,
    });
    Overrides {
        fuel: args.fuel.map(|FuelBudget(fuel)| fuel),
        memory: args.memory,
        timeout: args.timeout,
        max_response: args.max_output,
        grants: args.grants.clone(),
        config: values.chain(args.set.iter().cloned()).collect(),
        env: args.env.clone(),
        mounts: args.mounts.clone(),
        allow_http: args.allow_http.clone(),
        kv: args.kv.clone(),
        publish: args.publish.clone(),
    }
}

async fn call_once(args: RunArgs) -> ExitCode {
    let policies: Vec<&PathBuf> = args
        .config
        .iter()
        .filter_map(|arg| match arg {
            ConfigArg::Policy(path) => Some(path),
            ConfigArg::Value(..) => None,
        })
        .collect();
    let overrides = overrides(&args);
    let loaded = match policies.as_slice() {
        [] => Policy::for_component(Path::new(&args.plugin), &overrides),
        [path] => Policy::load_with(path, Some((&args.plugin, &overrides))),
        _ => return usage_error(&args, "give at most one policy file with --config"),
    };
    let policy = match loaded {
        Ok(policy) => policy,
        Err(errors) => return usage_error(&args, &errors.to_string()),
    };
    let (name, plugin) = match policy
        .plugins
        .iter()
        .find(|(name, _)| policies.is_empty() || **name == args.plugin)
    {
        Some((name, plugin)) => (name.clone(), plugin.clone()),
        None => return usage_error(&args, "the policy has no such plugin"),
    };
    let keys = match crate::keys::load_keys(&args.trust) {
        Ok(keys) => keys,
        Err(code) => return code,
    };
    let builder = || {
        let mut base = HostBuilder::from_policy(&policy)
            .allow_unsigned(policy.host.allow_unsigned || args.allow_unsigned);
        if args.profile.is_some() {
            // Samples are taken on the epoch tick: a profiled run pays for
            // epoch checks in the guest code, which the default fuel yields
            // avoid.
            base = base.engine_options(EngineOptions {
                interruption: Interruption::epoch(),
                ..policy.host.engine.clone()
            });
        }
        let base = keys
            .iter()
            .fold(base, |builder, key| builder.trust(key.clone()));
        match &args.data_dir {
            Some(dir) => base.data_dir(dir),
            None => base,
        }
    };
    let cache = if policy.host.cache_dir.is_some() && args.cache_dir.is_none() {
        None
    } else {
        cache_dir(&args)
    };
    // Outside the cache directory: whoever could write the cache must not
    // also hold the key that authenticates it.
    let cache_key = args
        .cache_key
        .clone()
        .or_else(|| policy.host.cache_key.clone())
        .or_else(CacheKey::default_path);
    let builder = || match &cache_key {
        Some(key) => builder().cache_key_file(key),
        None => builder(),
    };
    let built = match cache {
        Some(dir) => match builder().cache_dir(dir).build() {
            // The default cache is a convenience; without it we only compile.
            Err(err @ (HostError::Cache(_) | HostError::CacheKey(_)))
                if args.cache_dir.is_none() =>
            {
                tracing::warn!("{err}; running without a compile cache");
                builder().build()
            }
            built => built,
        },
        None => builder().build(),
    };
    let host = match built {
        Ok(host) => host,
        Err(err) => return host_error(&args, &err.to_string()),
    };
    // The input is read only now that the plugin's request limit is known,
    // and never past it: `--input-file /dev/zero` costs nothing.
    let limits = &plugin.limits;
    let payload_limit = limits.max_request_bytes.saturating_sub(args.op.len());
    let payload = match read_payload(&args, payload_limit) {
        Ok(Some(payload)) => payload,
        Ok(None) => {
            let message = format!(
                "the input is larger than the plugin's request limit of {} bytes",
                limits.max_request_bytes
            );
            return report_failure(
                &args,
                ErrorKind::InputTooLarge,
                &plugin_name(&args),
                &message,
                None,
                &[],
            );
        }
        Err(message) => return usage_error(&args, &message),
    };
    let mut spec = PluginSpec::from_policy(&policy, &name).expect("the plugin is in the policy");
    if let Some(signature) = &args.signature {
        spec = spec.detached_signature(PluginSource::Path(signature.clone()));
    }
    // A plugin that may call other plugins gets the rest of the policy
    // loaded beside it, so its callees (and the providers of capabilities
    // it calls) are there. They load first: a callee that fails to load is
    // reported, and the call then meets `unknown-target`.
    if !plugin.grants.calls.is_empty() {
        let others: Vec<&String> = policy
            .plugins
            .keys()
            .filter(|other| **other != name)
            .collect();
        for other in others {
            let spec = PluginSpec::from_policy(&policy, other).expect("in the policy");
            if let Err(err) = host.load(spec).await {
                tracing::warn!("{err}");
            }
        }
        for (capability, pinned) in &policy.capabilities {
            host.pin_capability(capability, pinned);
        }
    }
    let name = match host.load(spec).await {
        Ok(details) => details.name,
        Err(err) => return load_error(&args, &err),
    };
    let request = Request::new(args.op.clone(), payload);
    let result = match &args.profile {
        // Printed as it comes: chunks the plugin writes (`response.write`)
        // reach stdout before the call ends.
        None if !args.json => match stream_payload(host.call_stream(&name, request)).await {
            Ok(()) => return exit::code(exit::OK),
            Err(err) => Err(err),
        },
        None => host.call(&name, request).await,
        Some(file) => {
            let (result, profile) = host.call_profiled(&name, request).await;
            if let Err(code) = write_profile(&args, file, profile) {
                return code;
            }
            result
        }
    };
    match result {
        Ok(outcome) => {
            if args.json {
                print_json(json!({
                    "ok": true,
                    "plugin": name,
                    "output": payload_json(&outcome.response.payload),
                    "error": Value::Null,
                    "duration_us": outcome.stats.duration.as_micros() as u64,
                    "fuel_used": outcome.stats.fuel_used,
                    "fuel_limit": outcome.stats.fuel_limit,
                    "callee_fuel_used": outcome.stats.callee_fuel,
                    "memory_bytes": outcome.stats.memory_bytes,
                    "memory_limit": outcome.stats.memory_limit,
                    "host_calls": outcome.stats.host_calls,
                    "logs": logs_json(&outcome.logs),
                    "events": events_json(&outcome.events),
                }));
            } else {
                print_payload(&outcome.response.payload);
            }
            exit::code(exit::OK)
        }
        Err(err) => call_error(&args, &err),
    }
}

/// Writes the profile of a `--profile` run to `file`, saying where (on
/// stderr, so stdout keeps the plugin's answer).
fn write_profile(args: &RunArgs, file: &Path, profile: Option<Vec<u8>>) -> Result<(), ExitCode> {
    let Some(profile) = profile else {
        eprintln!("capsule: no profile: the call was stopped before it returned (or never ran)");
        return Ok(());
    };
    match std::fs::write(file, profile) {
        Ok(()) => {
            eprintln!(
                "capsule: profile written to {} (open it at https://profiler.firefox.com)",
                file.display()
            );
            Ok(())
        }
        Err(err) => Err(usage_error(
            args,
            &format!("cannot write the profile to {}: {err}", file.display()),
        )),
    }
}

/// The request payload, or `None` if it is longer than `limit` bytes. A
/// file or stdin is read only up to one byte past the limit. Pipes and
/// FIFOs are fine (`--input-file <(…)`): the bound, not the file type, is
/// what keeps the read small.
fn read_payload(args: &RunArgs, limit: usize) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    let bounded = |reader: &mut dyn Read, what: &str| -> Result<Option<Vec<u8>>, String> {
        let mut buffer = Vec::new();
        reader
            .take(limit as u64 + 1)
            .read_to_end(&mut buffer)
            .map_err(|err| format!("cannot read {what}: {err}"))?;
        Ok((buffer.len() <= limit).then_some(buffer))
    };
    match (&args.input, &args.input_file) {
        (Some(text), _) => Ok((text.len() <= limit).then(|| text.clone().into_bytes())),
        (None, Some(path)) if path.as_os_str() == "-" => bounded(&mut std::io::stdin(), "stdin"),
        (None, Some(path)) => {
            let mut file = std::fs::File::open(path)
                .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
            bounded(&mut file, &path.display().to_string())
        }
        (None, None) => Ok(Some(Vec::new())),
    }
}

/// A JSON payload is embedded as JSON; anything else as a (lossy) string.
fn payload_json(payload: &[u8]) -> Value {
    serde_json::from_slice(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

fn logs_json(logs: &[LogRecord]) -> Value {
    serde_json::to_value(logs).unwrap_or(Value::Null)
}

/// Published events, payloads embedded like `output`.
fn events_json(events: &[PublishedEvent]) -> Value {
    events
        .iter()
        .map(|event| json!({ "topic": event.topic, "payload": payload_json(&event.payload) }))
        .collect()
}

/// Writes each chunk of a streaming call to stdout as it arrives, then
/// the payload `handle` returned, ending with a newline.
async fn stream_payload(mut call: capsule_host::CallStream) -> Result<(), CallError> {
    use std::io::Write;
    // The last byte written, to end the output with a newline.
    fn write(bytes: &[u8], last: &mut Option<u8>) {
        if let Some(byte) = bytes.last() {
            *last = Some(*byte);
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(bytes);
        let _ = stdout.flush();
    }
    let mut last = None;
    while let Some(item) = call.next().await {
        match item {
            StreamItem::Chunk(chunk) => write(&chunk, &mut last),
            StreamItem::End(Ok(outcome)) => {
                write(&outcome.response.payload, &mut last);
                if last != Some(b'\n') {
                    write(b"\n", &mut last);
                }
                return Ok(());
            }
            StreamItem::End(Err(err)) => {
                // The error goes to stderr on a line of its own.
                if last.is_some_and(|byte| byte != b'\n') {
                    write(b"\n", &mut last);
                }
                return Err(err);
            }
        }
    }
    Ok(())
}

fn print_payload(payload: &[u8]) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(payload);
    if !payload.ends_with(b"\n") {
        let _ = stdout.write_all(b"\n");
    }
}

fn print_json(value: Value) {
    println!("{value}");
}

fn report_failure(
    args: &RunArgs,
    kind: ErrorKind,
    plugin: &str,
    message: &str,
    stats: Option<&CallStats>,
    logs: &[LogRecord],
) -> ExitCode {
    if args.json {
        print_json(json!({
            "ok": false,
            "plugin": plugin,
            "output": Value::Null,
            "error": { "kind": kind, "plugin": plugin, "message": message },
            "duration_us": stats.map(|s| s.duration.as_micros() as u64),
            "fuel_used": stats.and_then(|s| s.fuel_used),
            "fuel_limit": stats.and_then(|s| s.fuel_limit),
            "memory_bytes": stats.and_then(|s| s.memory_bytes),
            "memory_limit": stats.map(|s| s.memory_limit),
            "host_calls": stats.map(|s| &s.host_calls),
            "logs": logs_json(logs),
        }));
    } else {
        // One line, whatever the plugin put in its message.
        eprintln!(
            "error [{kind}]: {}",
            capsule_host::text::for_log(message, 4096)
        );
    }
    exit::code(exit::code_for(kind))
}

fn plugin_name(args: &RunArgs) -> String {
    PluginSpec::from_path(&args.plugin).name().to_owned()
}

fn usage_error(args: &RunArgs, message: &str) -> ExitCode {
    report_failure(
        args,
        ErrorKind::Config,
        &plugin_name(args),
        message,
        None,
        &[],
    )
}

fn host_error(args: &RunArgs, message: &str) -> ExitCode {
    report_failure(
        args,
        ErrorKind::Host,
        &plugin_name(args),
        message,
        None,
        &[],
    )
}

fn load_error(args: &RunArgs, err: &LoadError) -> ExitCode {
    report_failure(args, err.kind(), &err.plugin, &err.to_string(), None, &[])
}

fn call_error(args: &RunArgs, err: &CallError) -> ExitCode {
    report_failure(
        args,
        err.kind(),
        &err.plugin,
        &err.to_string(),
        Some(&err.stats),
        &err.logs,
    )
}
