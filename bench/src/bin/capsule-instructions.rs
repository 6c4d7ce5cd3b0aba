//! The workload `cargo xtask bench --instructions` counts under
//! `valgrind --tool=callgrind`: a 16-byte echo as a warm call through
//! `Host::call` (`bench-echo`), the same echo on a fresh instance per call
//! (`recycle_after = 1`), and the sieve (`bench-compute`, the criterion
//! bench's plugin and input).
//!
//! Loading, compiling and warming up happen outside the counted code: only
//! [`capsule_measure`] is counted (callgrind runs with
//! `--collect-atstart=no`, and `--toggle-collect` and `--dump-after` naming
//! `capsule_instructions::capsule_measure`), so every call of it leaves one
//! profile part. For each part, in order, this prints a line
//! `measure NAME CALLS` on stdout, which is how the xtask knows what the part
//! counted. Run natively, it runs the same calls and prints the same lines.
//!
//! The plugins come from `cargo xtask build-plugins` (`CAPSULE_PLUGIN_DIR`,
//! default `target/plugins`), signed with its test key.

use std::hint::black_box;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use capsule_host::services::calls::CallTarget;
use capsule_host::{
    AllocationMode, EngineOptions, Grants, Host, Limits, PluginSpec, PoolingOptions, PublicKey,
    Request,
};
use tokio::runtime::Runtime;

// The kernel's `count_primes` is for the native benchmark, not this one.
#[allow(dead_code)]
#[path = "../../kernel/sieve.rs"]
mod sieve;

const PAYLOAD: &[u8; 16] = b"0123456789abcdef";

/// Counted rounds per measurement; the xtask keeps the lowest per-call count
/// of them (see `docs/benchmarks.md`).
const ROUNDS: u32 = 5;

/// One counted workload.
struct Measurement {
    /// Its name in `bench/instructions.toml`.
    name: &'static str,
    /// The name the plugin is loaded under.
    plugin: &'static str,
    operation: &'static str,
    payload: Vec<u8>,
    /// What every call must answer.
    expect: Vec<u8>,
    /// Calls per counted round.
    calls: u32,
    /// Calls before the first round, uncounted.
    warm_up: u32,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("capsule-instructions: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let dir = std::env::var_os("CAPSULE_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    let key = PublicKey::from_file(&dir.join("test-key.pub"))
        .map_err(|err| format!("{}: {err} (run `cargo xtask build-plugins`)", dir.display()))?;
    // A current-thread runtime: every call runs on this thread, the one
    // callgrind counts (collection is per thread and off elsewhere).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start a tokio runtime: {err}"))?;
    let host = Host::builder()
        .trust(key)
        .engine_options(EngineOptions {
            // A pool small enough for valgrind's address space; the call
            // path is the default one (pooling, fuel, the deadline at fuel yields).
            pooling: Some(PoolingOptions {
                total_instances: 4,
                max_memory_bytes: Limits::default().memory_bytes,
            }),
            // The default interruption, fuel yields: they come every so
            // many fuel units, so how many a call makes does not depend on
            // valgrind's speed (epoch ticks would: valgrind runs code ~50×
            // slower, so a 5 ms tick would count ~50× more yields).
            ..EngineOptions::default()
        })
        .build()
        .map_err(|err| format!("cannot build the host: {err}"))?;
    if !matches!(host.allocation_mode(), AllocationMode::Pooling) {
        return Err(format!(
            "the host fell back to {:?}: the counts would not be of the pooled call path",
            host.allocation_mode()
        ));
    }
    let load = |name: &str, plugin: &str, limits: Limits| {
        rt.block_on(
            host.load(
                PluginSpec::from_path(dir.join(format!("{plugin}.wasm")))
                    .with_name(name)
                    .limits(Limits {
                        // One call at a time here; the pool holds 4.
                        max_instances: 1,
                        ..limits
                    }),
            ),
        )
        .map(drop)
        .map_err(|err| format!("cannot load {plugin}: {err}"))
    };
    load(
        "echo-warm",
        "bench-echo",
        Limits {
            // The default (1000) would put an instantiation into some
            // rounds; fresh instances are their own measurement.
            recycle_after: u32::MAX,
            ..Limits::default()
        },
    )?;
    load(
        "echo-fresh",
        "bench-echo",
        Limits {
            recycle_after: 1,
            ..Limits::default()
        },
    )?;
    // The same echo, reached through another plugin's call: `relay` calls
    // `echo-warm` (its edge granted) and answers what it answered.
    rt.block_on(
        host.load(
            PluginSpec::from_path(dir.join("bench-echo.wasm"))
                .with_name("relay")
                .grants(Grants {
                    calls: vec![CallTarget::parse("echo-warm").map_err(|e| e.to_string())?],
                    ..Grants::default()
                })
                .config("relay_to", "echo-warm")
                .limits(Limits {
                    recycle_after: u32::MAX,
                    max_instances: 1,
                    ..Limits::default()
                }),
        ),
    )
    .map_err(|err| format!("cannot load relay: {err}"))?;
    load(
        "compute",
        "bench-compute",
        Limits {
            fuel: Some(u64::MAX / 2),
            timeout: Duration::from_secs(600),
            ..Limits::default()
        },
    )?;

    let measurements = [
        Measurement {
            name: "echo_warm",
            plugin: "echo-warm",
            operation: "echo",
            payload: PAYLOAD.to_vec(),
            expect: PAYLOAD.to_vec(),
            calls: 100,
            warm_up: 100,
        },
        Measurement {
            name: "echo_fresh",
            plugin: "echo-fresh",
            operation: "echo",
            payload: PAYLOAD.to_vec(),
            expect: PAYLOAD.to_vec(),
            // Multiples of the pool's decommit batch (16), so every round
            // sees the same slot reuse.
            calls: 32,
            warm_up: 32,
        },
        Measurement {
            name: "echo_nested_warm",
            plugin: "relay",
            operation: "relay",
            payload: PAYLOAD.to_vec(),
            expect: PAYLOAD.to_vec(),
            calls: 100,
            warm_up: 100,
        },
        Measurement {
            name: "sieve",
            plugin: "compute",
            operation: "sieve",
            payload: sieve::LIMIT.to_string().into_bytes(),
            expect: sieve::PRIMES_BELOW_LIMIT.to_string().into_bytes(),
            calls: 1,
            warm_up: 1,
        },
    ];
    for m in &measurements {
        for _ in 0..m.warm_up {
            rt.block_on(calls(&host, m, 1, true))?;
        }
        for _ in 0..ROUNDS {
            capsule_measure(&rt, &host, m)?;
            println!("measure {} {}", m.name, m.calls);
        }
    }
    Ok(())
}

/// The only function callgrind counts; each call of it is one profile part.
/// Everything it runs is on this thread.
#[inline(never)]
fn capsule_measure(rt: &Runtime, host: &Host, m: &Measurement) -> Result<(), String> {
    // Checking every answer would add a comparison per call to the count.
    rt.block_on(calls(black_box(host), black_box(m), m.calls, false))
}

/// `count` calls of `m`, checking the answers when `check` is set.
async fn calls(host: &Host, m: &Measurement, count: u32, check: bool) -> Result<(), String> {
    for _ in 0..count {
        let outcome = host
            .call(m.plugin, Request::new(m.operation, m.payload.clone()))
            .await
            .map_err(|err| format!("{}: {err}", m.name))?;
        if check && outcome.response.payload != m.expect {
            return Err(format!(
                "{}: unexpected answer {:?}",
                m.name,
                String::from_utf8_lossy(&outcome.response.payload)
            ));
        }
        black_box(outcome);
    }
    Ok(())
}
