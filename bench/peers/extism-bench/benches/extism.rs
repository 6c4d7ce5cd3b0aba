//! The Extism peer benchmarks, under the same criterion group and function
//! ids `cargo xtask bench --peers` reads next to Capsule's:
//!
//! - `echo/extism_warm`: a 16-byte echo on an already-created plugin;
//! - `echo/extism_fresh`: a new `Plugin` from an already-compiled
//!   `CompiledPlugin` for every call (create, call, drop);
//! - `compute/extism`: the 4 MB prime sieve of `bench/kernel/sieve.rs`.
//!
//! The plugin is `bench/peers/extism-plugin`, built for
//! wasm32-unknown-unknown (`EXTISM_PLUGIN_WASM`, by default
//! `target/peers/wasm32-unknown-unknown/release/extism_plugin.wasm` in the
//! main target directory). Set `CRITERION_HOME` to the main
//! `target/criterion` so the reports land next to Capsule's.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use extism::{CompiledPlugin, Plugin, PluginBuilder};

#[path = "../../../kernel/sieve.rs"]
mod sieve;

/// The same payload as Capsule's echo benchmarks.
const PAYLOAD: &[u8; 16] = b"0123456789abcdef";

fn plugin_wasm() -> PathBuf {
    std::env::var_os("EXTISM_PLUGIN_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../target/peers/wasm32-unknown-unknown/release/extism_plugin.wasm")
        })
}

/// The plugin compiled once; every `Plugin` is instantiated from it.
fn compiled() -> CompiledPlugin {
    let path = plugin_wasm();
    let wasm = std::fs::read(&path).unwrap_or_else(|err| {
        panic!(
            "cannot read {}: {err} (build bench/peers/extism-plugin first)",
            path.display()
        )
    });
    PluginBuilder::new(wasm)
        .with_wasi(false)
        // Compiled once per run anyway; keep wasmtime from writing its
        // cache under $HOME.
        .with_cache_disabled()
        .compile()
        .expect("the Extism plugin compiles")
}

fn echo(c: &mut Criterion) {
    let compiled = compiled();
    let mut warm = Plugin::new_from_compiled(&compiled).unwrap();
    let out = warm.call::<&[u8], &[u8]>("echo", PAYLOAD).unwrap();
    assert_eq!(out, PAYLOAD);

    let mut group = c.benchmark_group("echo");
    group.throughput(Throughput::Elements(1));
    group.bench_function("extism_warm", |b| {
        b.iter(|| {
            let out = warm
                .call::<&[u8], &[u8]>("echo", black_box(PAYLOAD))
                .unwrap();
            black_box(out);
        });
    });
    group.bench_function("extism_fresh", |b| {
        b.iter(|| {
            let mut plugin = Plugin::new_from_compiled(&compiled).unwrap();
            let out = plugin
                .call::<&[u8], &[u8]>("echo", black_box(PAYLOAD))
                .unwrap();
            black_box(out);
            // Dropped here, inside the measurement: a fresh instance per call
            // includes tearing it down.
        });
    });
    group.finish();
}

fn compute(c: &mut Criterion) {
    // The kernel's own answer, natively, before holding the plugin to it.
    assert_eq!(sieve::count_primes(sieve::LIMIT), sieve::PRIMES_BELOW_LIMIT);
    let compiled = compiled();
    let mut plugin = Plugin::new_from_compiled(&compiled).unwrap();
    let input = sieve::LIMIT.to_string();
    let expected = sieve::PRIMES_BELOW_LIMIT.to_string();
    let answer = plugin.call::<&str, &str>("sieve", &input).unwrap();
    assert_eq!(answer, expected);

    let mut group = c.benchmark_group("compute");
    // A call takes ~15 ms: 30 linear samples (1 + 2 + ... + 30 iterations)
    // would not fit in 5 s, so every sample runs the same number of calls.
    group.sample_size(30);
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function("extism", |b| {
        b.iter(|| {
            let answer = plugin
                .call::<&str, &str>("sieve", black_box(&input))
                .unwrap();
            black_box(answer);
        });
    });
    group.finish();
    // And once more after the measurement, on the instance it ran on.
    let answer = plugin.call::<&str, &str>("sieve", &input).unwrap();
    assert_eq!(answer, expected);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = echo, compute
}
criterion_main!(benches);
