//! Capsule's benchmarks. Every group measures Capsule next to a baseline in
//! the same run, so `cargo xtask bench` can report ratios that a noisy
//! machine does not distort much:
//!
//! - `echo`: a 16-byte echo as a native function, as a warm call through the
//!   full host API, and on a fresh instance per call;
//! - `throughput`: `hello` greetings from many tasks on 1 and 2 worker
//!   threads, with warm instances and with a fresh instance per call;
//! - `load`: loading a signed plugin cold (verify + compile) and from the
//!   compile cache (verify + deserialize); and 1000 distinct plugins (1000
//!   digests, each signed) into one host from the compile cache;
//! - `verify`: signature verification of a 4 MiB component;
//! - `compute`: a 4 MB prime sieve natively and in Capsule with each way of
//!   metering it: fuel with the deadline at fuel yields (the default), fuel
//!   with epochs, epochs alone, fuel alone, nothing;
//! - `kv`: a call that increments 1, 10 or 100 counters in an on-disk
//!   store, as one atomic transaction (the default) and writing through
//!   (`kv.atomic = false`).
//! - `backend`: `kv-counter` increments from 8 tasks per host, each on a
//!   counter of its own (`spread`) or all on one (`hot`), with the embedded
//!   store on one host and with NATS JetStream KV on one and on two hosts
//!   (a private `nats-server` on loopback).
//! - `events`: events published by the embedder and acknowledged by a
//!   subscribing plugin (`event-storm`, which acks and does nothing else):
//!   `throughput` (a burst, timed until the last is handled) and `latency`
//!   (one at a time, publish to handled), on the in-process bus and through
//!   JetStream with one and two hosts pulling.
//! - `serve`: `hello` greetings over loopback HTTP/1.1 keep-alive from 16
//!   client connections, through `capsule serve` (`serve_on`) and through a
//!   plain axum handler doing the same JSON work natively; the servers on a
//!   2-worker runtime, the client on another.
//!
//! - `languages`: the hello example written in Rust, Python
//!   (componentize-py) and JavaScript (componentize-js): loading it cold
//!   (verify + compile) and from the compile cache, a greeting on a fresh
//!   instance and on a warm one.
//!
//! The plugins come from `cargo xtask build-plugins` (`CAPSULE_PLUGIN_DIR`).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_host::artifact::sections::{COMPONENT_HEADER, encode_custom};
use capsule_host::artifact::signature;
use capsule_host::backend::local::NatsServer;
use capsule_host::backend::{Backend, NatsOptions};
use capsule_host::services::calls::CallTarget;
use capsule_host::services::kv::KvGrant;
use capsule_host::{
    EngineOptions, Grants, Host, HostBuilder, Interruption, Limits, PluginSpec, PublicKey, Request,
    SecretKey,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

#[path = "../kernel/sieve.rs"]
mod sieve;

fn plugin_dir() -> PathBuf {
    std::env::var_os("CAPSULE_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"))
}

fn plugin(name: &str) -> PathBuf {
    let path = plugin_dir().join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask bench`",
        path.display()
    );
    path
}

fn test_key() -> PublicKey {
    PublicKey::from_file(&plugin_dir().join("test-key.pub")).expect("the test key exists")
}

fn builder() -> HostBuilder {
    Host::builder().trust(test_key())
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

/// A host (built with `builder`) with `plugin` loaded as `name`.
fn host_with(
    rt: &tokio::runtime::Runtime,
    builder: HostBuilder,
    name: &str,
    plugin_name: &str,
    limits: Limits,
) -> Host {
    rt.block_on(async {
        let host = builder.build().unwrap();
        host.load(
            PluginSpec::from_path(plugin(plugin_name))
                .with_name(name)
                .limits(limits),
        )
        .await
        .unwrap();
        host
    })
}

const PAYLOAD: &[u8; 16] = b"0123456789abcdef";

fn echo(c: &mut Criterion) {
    let rt = runtime(1);
    let warm = host_with(&rt, builder(), "echo", "bench-echo", Limits::default());
    let fresh = host_with(
        &rt,
        builder(),
        "echo",
        "bench-echo",
        Limits {
            recycle_after: 1,
            ..Limits::default()
        },
    );
    // The same warm call with tracing on: every call makes, records and
    // queues a sampled span. The exporter is pointed at a closed loopback
    // port, so what is measured is what the call pays; exporting happens
    // on the exporter's own thread (and fails there, dropping the batch).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let collector = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let traced = host_with(
        &rt,
        builder().telemetry(capsule_host::telemetry::TelemetryOptions {
            otlp: Some(collector),
            ..capsule_host::telemetry::TelemetryOptions::default()
        }),
        "echo",
        "bench-echo",
        Limits::default(),
    );
    // `relay` reaches the same echo through a plugin-to-plugin call.
    let nested = host_with(&rt, builder(), "echo", "bench-echo", Limits::default());
    rt.block_on(
        nested.load(
            PluginSpec::from_path(plugin("bench-echo"))
                .with_name("relay")
                .grants(Grants {
                    calls: vec![CallTarget::parse("echo").unwrap()],
                    ..Grants::default()
                })
                .config("relay_to", "echo"),
        ),
    )
    .unwrap();
    let mut group = c.benchmark_group("echo");
    group.throughput(Throughput::Elements(1));
    group.bench_function("native", |b| {
        b.iter(|| black_box(native_echo(black_box(PAYLOAD))));
    });
    group.bench_function("capsule_warm", |b| {
        b.to_async(&rt).iter(|| async {
            let outcome = warm
                .call("echo", Request::new("echo", PAYLOAD.to_vec()))
                .await
                .unwrap();
            black_box(outcome.response.payload)
        });
    });
    // The same call read as a stream (`capsule serve` calls every plugin
    // so): `bench-echo` cannot write chunks, so it runs inline.
    group.bench_function("capsule_warm_stream", |b| {
        b.to_async(&rt).iter(|| async {
            let mut stream = warm.call_stream("echo", Request::new("echo", PAYLOAD.to_vec()));
            match stream.next().await {
                Some(capsule_host::StreamItem::End(end)) => {
                    black_box(end.unwrap().response.payload)
                }
                other => panic!("expected the end, got {other:?}"),
            }
        });
    });
    group.bench_function("capsule_warm_traced", |b| {
        b.to_async(&rt).iter(|| async {
            let outcome = traced
                .call("echo", Request::new("echo", PAYLOAD.to_vec()))
                .await
                .unwrap();
            black_box(outcome.response.payload)
        });
    });
    group.bench_function("capsule_nested_warm", |b| {
        b.to_async(&rt).iter(|| async {
            let outcome = nested
                .call("relay", Request::new("relay", PAYLOAD.to_vec()))
                .await
                .unwrap();
            black_box(outcome.response.payload)
        });
    });
    group.bench_function("capsule_fresh", |b| {
        b.to_async(&rt).iter(|| async {
            let outcome = fresh
                .call("echo", Request::new("echo", PAYLOAD.to_vec()))
                .await
                .unwrap();
            black_box(outcome.response.payload)
        });
    });
    group.finish();
}

#[inline(never)]
fn native_echo(payload: &[u8]) -> Vec<u8> {
    payload.to_vec()
}

/// Calls per throughput sample.
const BATCH: u64 = 2000;

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("throughput");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    // The machine's own scaling, for reference: the same batch shape with a
    // native function of similar weight instead of a plugin call.
    for workers in [1usize, 2] {
        let rt = runtime(workers);
        let id = BenchmarkId::new(
            "native",
            format!("{workers}_worker{}", if workers > 1 { "s" } else { "" }),
        );
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += rt.block_on(native_batch(workers));
                }
                total
            });
        });
    }
    for (label, recycle_after) in [("warm", 1000), ("fresh", 1)] {
        for workers in [1usize, 2] {
            let rt = runtime(workers);
            let host = host_with(
                &rt,
                builder(),
                "hello",
                "hello",
                Limits {
                    recycle_after,
                    max_instances: 2 * workers,
                    max_queued: 10_000,
                    ..Limits::default()
                },
            );
            let id = BenchmarkId::new(
                label,
                format!("{workers}_worker{}", if workers > 1 { "s" } else { "" }),
            );
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += rt.block_on(batch(host.clone(), workers));
                    }
                    total
                });
            });
        }
    }
    group.finish();
}

/// `BATCH` greetings from `4 × workers` tasks; returns the wall time.
async fn batch(host: Host, workers: usize) -> Duration {
    let tasks = 4 * workers as u64;
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move {
                for _ in 0..BATCH / tasks {
                    let request = Request::new("greet", r#"{"name":"Ada"}"#);
                    black_box(host.call("hello", request).await.unwrap());
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    started.elapsed()
}

/// `BATCH` small native computations (about a warm call's weight) from
/// `4 × workers` tasks.
async fn native_batch(workers: usize) -> Duration {
    let tasks = 4 * workers as u64;
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..BATCH / tasks {
                    black_box(sieve::count_primes(black_box(2_000)));
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    started.elapsed()
}

fn load(c: &mut Criterion) {
    let rt = runtime(1);
    let bytes: Arc<[u8]> = std::fs::read(plugin("hello")).unwrap().into();
    let cache = std::env::temp_dir().join(format!("capsule-bench-cache-{}", std::process::id()));
    let cold = builder().build().unwrap();
    let cached = builder().cache_dir(&cache).build().unwrap();
    // Fill the cache once.
    rt.block_on(cached.load(PluginSpec::from_bytes("hello", Arc::clone(&bytes))))
        .unwrap();
    rt.block_on(cached.unload("hello"));

    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    for (id, host) in [("cold", &cold), ("cached", &cached)] {
        group.bench_function(id, |b| {
            b.to_async(&rt).iter(|| async {
                let details = host
                    .load(PluginSpec::from_bytes("hello", Arc::clone(&bytes)))
                    .await
                    .unwrap();
                assert_eq!(details.compiled_from_cache, id == "cached");
                host.unload("hello").await;
            });
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(cache);
}

/// The hello example in each language `cargo xtask build-plugins` builds,
/// by the name its rows carry.
const LANGUAGES: [(&str, &str); 3] = [
    ("rust", "hello"),
    ("python", "hello-py"),
    ("js", "hello-js"),
];

/// What a plugin's language costs: a cold load, a cached load, a greeting
/// on a fresh instance and on a warm one, per language.
fn languages(c: &mut Criterion) {
    let rt = runtime(1);
    let cache =
        std::env::temp_dir().join(format!("capsule-bench-languages-{}", std::process::id()));
    let greet = || Request::new("greet", r#"{"name":"Ada"}"#);
    let mut group = c.benchmark_group("languages");
    group.sample_size(10);
    for (lang, name) in LANGUAGES {
        let bytes: Arc<[u8]> = std::fs::read(plugin(name)).unwrap().into();
        let cold = builder().build().unwrap();
        let cached = builder().cache_dir(&cache).build().unwrap();
        rt.block_on(cached.load(PluginSpec::from_bytes(name, Arc::clone(&bytes))))
            .unwrap();
        rt.block_on(cached.unload(name));
        for (id, host) in [("cold", &cold), ("cached", &cached)] {
            group.bench_function(format!("{lang}/{id}"), |b| {
                b.to_async(&rt).iter(|| async {
                    let details = host
                        .load(PluginSpec::from_bytes(name, Arc::clone(&bytes)))
                        .await
                        .unwrap();
                    assert_eq!(details.compiled_from_cache, id == "cached");
                    host.unload(name).await;
                });
            });
        }
        let warm = host_with(
            &rt,
            builder().cache_dir(&cache),
            name,
            name,
            Limits::default(),
        );
        let fresh = host_with(
            &rt,
            builder().cache_dir(&cache),
            name,
            name,
            Limits {
                recycle_after: 1,
                ..Limits::default()
            },
        );
        for (id, host) in [("fresh", &fresh), ("warm", &warm)] {
            group.bench_function(format!("{lang}/{id}"), |b| {
                b.to_async(&rt).iter(|| async {
                    let outcome = host.call(name, greet()).await.unwrap();
                    black_box(outcome.response.payload)
                });
            });
        }
    }
    group.finish();
    let _ = std::fs::remove_dir_all(cache);
}

/// Distinct plugins the `load/distinct_1000` row loads into one host.
const DISTINCT: usize = 1000;

/// 1000 different signed plugins (hello with a section naming its index,
/// so each has its own digest and its own cache entry) loaded into one host
/// from a filled compile cache: signature, cache MAC and deserialization
/// each time, and whatever the registry costs as it grows. Instances are
/// allocated on demand (a pool sized for 1000 plugins is its own budget).
fn load_distinct(c: &mut Criterion) {
    let rt = runtime(2);
    let key = SecretKey::generate().unwrap();
    let hello = std::fs::read(plugin("hello")).unwrap();
    let variants: Vec<Arc<[u8]>> = (0..DISTINCT)
        .map(|i| {
            let mut variant = hello.clone();
            variant.extend(encode_custom(
                "capsule-bench-variant",
                i.to_string().as_bytes(),
            ));
            signature::sign(&variant, &key).unwrap().embedded.into()
        })
        .collect();
    let cache = std::env::temp_dir().join(format!("capsule-bench-many-{}", std::process::id()));
    let host = || {
        Host::builder()
            .trust(key.public_key())
            .cache_dir(&cache)
            .engine_options(EngineOptions {
                pooling: None,
                ..EngineOptions::default()
            })
            .default_limits(Limits {
                max_instances: 1,
                ..Limits::default()
            })
            .build()
            .unwrap()
    };
    let load_all = |host: Host, variants: Vec<Arc<[u8]>>| async move {
        // Two loaders, as the policy loader would on two cores.
        let halves: Vec<Vec<(usize, Arc<[u8]>)>> = {
            let (even, odd): (Vec<_>, Vec<_>) = variants
                .into_iter()
                .enumerate()
                .partition(|(i, _)| i % 2 == 0);
            vec![even, odd]
        };
        let tasks: Vec<_> = halves
            .into_iter()
            .map(|half| {
                let host = host.clone();
                tokio::spawn(async move {
                    let mut from_cache = 0;
                    for (i, bytes) in half {
                        let details = host
                            .load(PluginSpec::from_bytes(format!("hello-{i}"), bytes))
                            .await
                            .unwrap();
                        from_cache += usize::from(details.compiled_from_cache);
                    }
                    from_cache
                })
            })
            .collect();
        let mut from_cache = 0;
        for task in tasks {
            from_cache += task.await.unwrap();
        }
        from_cache
    };
    // Fill the cache (compiles every variant once).
    rt.block_on(load_all(host(), variants.clone()));
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.throughput(Throughput::Elements(DISTINCT as u64));
    group.bench_function("distinct_1000", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let fresh = host();
                let started = Instant::now();
                let from_cache = rt.block_on(load_all(fresh.clone(), variants.clone()));
                total += started.elapsed();
                assert_eq!(from_cache, DISTINCT, "every variant came from the cache");
                assert_eq!(fresh.statuses().len(), DISTINCT);
                drop(fresh);
            }
            total
        });
    });
    group.finish();
    let _ = std::fs::remove_dir_all(cache);
}

/// Bytes in the component whose signature is verified.
const VERIFY_BYTES: usize = 4 << 20;

fn verify(c: &mut Criterion) {
    let key = SecretKey::generate().unwrap();
    let mut component = COMPONENT_HEADER.to_vec();
    component.extend(encode_custom("payload", &vec![0x5a; VERIFY_BYTES]));
    let signed = signature::sign(&component, &key).unwrap().embedded;
    let trusted = [key.public_key()];
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Bytes(VERIFY_BYTES as u64));
    group.sample_size(20);
    group.bench_function("4MiB", |b| {
        b.iter(|| signature::verify(black_box(&signed), None, &trusted, false).unwrap());
    });
    group.finish();
}

fn compute(c: &mut Criterion) {
    assert_eq!(sieve::count_primes(sieve::LIMIT), sieve::PRIMES_BELOW_LIMIT);
    let rt = runtime(1);
    let limits = Limits {
        fuel: Some(u64::MAX / 2),
        timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let engine = |fuel: bool, interruption: Interruption| EngineOptions {
        consume_fuel: fuel,
        interruption,
        ..EngineOptions::default()
    };
    let yields = EngineOptions::default().interruption;
    // The default (fuel, deadline at fuel yields); fuel with epochs (the
    // default before 2026-12-05); epochs alone (the only deadline without
    // fuel); fuel alone with nothing to stop it at its deadline; nothing.
    let variants = [
        ("capsule", engine(true, yields)),
        ("capsule_epoch", engine(true, Interruption::epoch())),
        ("capsule_nofuel", engine(false, Interruption::epoch())),
        ("capsule_fuelonly", engine(true, Interruption::Off)),
        ("capsule_bare", engine(false, Interruption::Off)),
    ];
    let input = sieve::LIMIT.to_string();
    let mut group = c.benchmark_group("compute");
    group.sample_size(20);
    group.bench_function("native", |b| {
        b.iter(|| sieve::count_primes(black_box(sieve::LIMIT)));
    });
    for (id, options) in variants {
        let host = host_with(
            &rt,
            builder().engine_options(options),
            "compute",
            "bench-compute",
            limits.clone(),
        );
        let check = rt
            .block_on(host.call("compute", Request::new("sieve", input.clone())))
            .unwrap();
        assert_eq!(
            check.response.text(),
            Some(sieve::PRIMES_BELOW_LIMIT.to_string().as_str())
        );
        group.bench_function(id, |b| {
            b.to_async(&rt).iter(|| async {
                black_box(
                    host.call("compute", Request::new("sieve", input.clone()))
                        .await
                        .unwrap(),
                )
            });
        });
    }
    group.finish();
}

fn kv(c: &mut Criterion) {
    let rt = runtime(1);
    let data = std::env::temp_dir().join(format!("capsule-bench-kv-{}", std::process::id()));
    let mut group = c.benchmark_group("kv");
    group.sample_size(20);
    for (id, atomic) in [("atomic", true), ("direct", false)] {
        let host = rt.block_on(async {
            let host = builder().data_dir(data.join(id)).build().unwrap();
            let grants = Grants {
                kv: Some(KvGrant {
                    atomic,
                    ..KvGrant::new("bench")
                }),
                ..Grants::default()
            };
            host.load(PluginSpec::from_path(plugin("kv-counter")).grants(grants))
                .await
                .unwrap();
            host
        });
        for writes in [1usize, 10, 100] {
            let keys: Vec<String> = (0..writes).map(|i| format!("\"k{i}\"")).collect();
            let input = format!(r#"{{"keys":[{}]}}"#, keys.join(","));
            rt.block_on(host.call("kv-counter", Request::new("increment-all", input.clone())))
                .unwrap();
            group.bench_function(BenchmarkId::new(id, writes), |b| {
                b.to_async(&rt).iter(|| async {
                    black_box(
                        host.call("kv-counter", Request::new("increment-all", input.clone()))
                            .await
                            .unwrap(),
                    )
                });
            });
        }
    }
    group.finish();
    std::fs::remove_dir_all(&data).ok();
}

/// `hosts` hosts on `backend`, each with `kv-counter` loaded.
fn counter_hosts(
    rt: &tokio::runtime::Runtime,
    backend: &Backend,
    data: Option<PathBuf>,
    hosts: usize,
) -> Vec<Host> {
    rt.block_on(async {
        let mut built = Vec::new();
        for _ in 0..hosts {
            let mut host = builder().backend(backend.clone());
            if let Some(data) = &data {
                host = host.data_dir(data);
            }
            let host = host.build().unwrap();
            let grants = Grants {
                kv: Some(KvGrant::new("bench")),
                ..Grants::default()
            };
            host.load(PluginSpec::from_path(plugin("kv-counter")).grants(grants))
                .await
                .unwrap();
            built.push(host);
        }
        built
    })
}

/// Makes `iterations` calls from `tasks_per_host` tasks on each host at
/// once, each task repeating the call `call(host, task)` gives it; returns
/// the time as if exactly `iterations` calls were made.
async fn spread_calls(
    hosts: &[Host],
    tasks_per_host: usize,
    iterations: u64,
    call: impl Fn(usize, usize) -> (&'static str, Request),
) -> Duration {
    let tasks = hosts.len() * tasks_per_host;
    let each = (iterations as usize).div_ceil(tasks).max(1);
    let started = Instant::now();
    let mut running = Vec::new();
    for (h, host) in hosts.iter().enumerate() {
        for t in 0..tasks_per_host {
            let host = host.clone();
            let (plugin, request) = call(h, t);
            running.push(tokio::spawn(async move {
                for _ in 0..each {
                    host.call(plugin, request.clone()).await.unwrap();
                }
            }));
        }
    }
    for task in running {
        task.await.unwrap();
    }
    started
        .elapsed()
        .mul_f64(iterations as f64 / (each * tasks) as f64)
}

fn backend(c: &mut Criterion) {
    const TASKS: usize = 8;
    let rt = runtime(2);
    let server = NatsServer::start().expect("nats-server starts (apt-get install -y nats-server)");
    let data = std::env::temp_dir().join(format!("capsule-bench-backend-{}", std::process::id()));
    let nats = |prefix: &str| Backend::Nats(NatsOptions::new(server.url()).prefix(prefix));
    let setups = [
        (
            "embedded-1-host",
            counter_hosts(&rt, &Backend::Embedded, Some(data.clone()), 1),
        ),
        ("nats-1-host", counter_hosts(&rt, &nats("bench1"), None, 1)),
        ("nats-2-hosts", counter_hosts(&rt, &nats("bench2"), None, 2)),
    ];
    let mut group = c.benchmark_group("backend");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    for (id, hosts) in &setups {
        for (spread, name) in [(true, "spread"), (false, "hot")] {
            group.bench_function(BenchmarkId::new(*id, name), |b| {
                b.to_async(&rt).iter_custom(|iterations| {
                    let hosts = hosts.clone();
                    async move {
                        spread_calls(&hosts, TASKS, iterations, |h, t| {
                            let key = if spread {
                                format!("k{h}-{t}")
                            } else {
                                "hot".into()
                            };
                            let input = format!(r#"{{"key":"{key}"}}"#);
                            ("kv-counter", Request::new("increment", input))
                        })
                        .await
                    }
                });
            });
        }
    }
    group.finish();
    drop(setups);
    std::fs::remove_dir_all(&data).ok();
}

/// `hosts` hosts on `backend`, each with `event-storm` subscribed to
/// `bench.>`.
fn subscriber_hosts(rt: &tokio::runtime::Runtime, backend: &Backend, hosts: usize) -> Vec<Host> {
    rt.block_on(async {
        let mut built = Vec::new();
        for _ in 0..hosts {
            let host = builder().backend(backend.clone()).build().unwrap();
            let mut grants = Grants::default();
            grants.events.subscribe =
                vec![capsule_host::services::events::TopicPattern::parse("bench.>").unwrap()];
            host.load(PluginSpec::from_path(plugin("event-storm")).grants(grants))
                .await
                .unwrap();
            built.push(host);
        }
        built
    })
}

/// Events acknowledged by the hosts' subscribers so far.
fn acked(hosts: &[Host]) -> u64 {
    let line = r#"capsule_events_total{plugin="event-storm",outcome="ack"} "#;
    hosts
        .iter()
        .map(|host| {
            host.metrics_text()
                .lines()
                .find_map(|l| l.strip_prefix(line))
                .map_or(0, |n| n.trim().parse::<u64>().unwrap())
        })
        .sum()
}

/// Waits until the hosts' subscribers acknowledged `target` events.
async fn until_acked(hosts: &[Host], target: u64) {
    while acked(hosts) < target {
        tokio::task::yield_now().await;
    }
}

fn events(c: &mut Criterion) {
    let rt = runtime(2);
    let server = NatsServer::start().expect("nats-server starts (apt-get install -y nats-server)");
    let nats = |prefix: &str| Backend::Nats(NatsOptions::new(server.url()).prefix(prefix));
    let setups = [
        (
            "in-process-1-host",
            subscriber_hosts(&rt, &Backend::Embedded, 1),
        ),
        ("nats-1-host", subscriber_hosts(&rt, &nats("events1"), 1)),
        ("nats-2-hosts", subscriber_hosts(&rt, &nats("events2"), 2)),
    ];
    let mut group = c.benchmark_group("events");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    for (id, hosts) in &setups {
        group.bench_function(BenchmarkId::new(*id, "throughput"), |b| {
            b.to_async(&rt).iter_custom(|iterations| {
                let hosts = hosts.clone();
                async move {
                    let before = acked(&hosts);
                    let started = Instant::now();
                    for _ in 0..iterations {
                        hosts[0]
                            .publish("bench.event", &b"0123456789abcdef"[..])
                            .await
                            .unwrap();
                    }
                    until_acked(&hosts, before + iterations).await;
                    started.elapsed()
                }
            });
        });
        group.bench_function(BenchmarkId::new(*id, "latency"), |b| {
            b.to_async(&rt).iter_custom(|iterations| {
                let hosts = hosts.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let before = acked(&hosts);
                        let started = Instant::now();
                        hosts[0]
                            .publish("bench.event", &b"0123456789abcdef"[..])
                            .await
                            .unwrap();
                        until_acked(&hosts, before + 1).await;
                        total += started.elapsed();
                    }
                    total
                }
            });
        });
    }
    group.finish();
}

/// A 16-byte echo called on host A and run on host B, which alone loads
/// it (NATS request/reply), beside the same call made on B itself.
fn remote(c: &mut Criterion) {
    const TASKS: usize = 8;
    let rt = runtime(2);
    let server = NatsServer::start().expect("nats-server starts (apt-get install -y nats-server)");
    let on = |name: &str| {
        let options = NatsOptions::new(server.url())
            .prefix("remote")
            .host_name(name);
        builder().backend(Backend::Nats(options)).build().unwrap()
    };
    let front = on("front");
    let back = on("back");
    rt.block_on(back.load(PluginSpec::from_path(plugin("bench-echo")).with_name("echo")))
        .unwrap();
    let mut group = c.benchmark_group("remote");
    group.throughput(Throughput::Elements(1));
    for (id, host) in [("local", &back), ("forwarded", &front)] {
        group.bench_function(BenchmarkId::new(id, "latency"), |b| {
            b.to_async(&rt).iter(|| async {
                let outcome = host
                    .call("echo", Request::new("echo", PAYLOAD.to_vec()))
                    .await
                    .unwrap();
                black_box(outcome.response.payload)
            });
        });
        group.bench_function(BenchmarkId::new(id, "throughput"), |b| {
            b.to_async(&rt).iter_custom(|iterations| {
                let hosts = [host.clone()];
                async move {
                    spread_calls(&hosts, TASKS, iterations, |_, _| {
                        ("echo", Request::new("echo", PAYLOAD.to_vec()))
                    })
                    .await
                }
            });
        });
    }
    group.finish();
}

/// Requests one `serve` iteration sends, over [`HTTP_CONNECTIONS`]
/// keep-alive connections (the same as `BATCH`: `cargo xtask bench` turns
/// both into calls per second alike).
const HTTP_BATCH: u64 = 2000;
const HTTP_CONNECTIONS: u64 = 16;

fn serve(c: &mut Criterion) {
    let mut group = c.benchmark_group("serve");
    group.throughput(Throughput::Elements(HTTP_BATCH));
    group.sample_size(10);
    // The servers on a 2-worker runtime of their own; the load generator on
    // another (both share the machine's cores, for both servers alike).
    let servers = runtime(2);
    let clients = runtime(2);
    let host = host_with(
        &servers,
        builder(),
        "hello",
        "hello",
        Limits {
            max_instances: 4,
            max_queued: 10_000,
            ..Limits::default()
        },
    );
    // `capsule serve` as it runs: its own accept loop and connection
    // budgets around the router.
    let capsule = servers.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(capsule_host::serve::serve_on(
            listener,
            host,
            capsule_host::serve::ServeOptions::default(),
            std::future::pending(),
        ));
        address
    });
    // The same work natively: read the JSON name, answer the greeting.
    let native = axum::Router::new().route(
        "/v1/plugins/hello/call",
        axum::routing::post(|body: axum::body::Bytes| async move {
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let name = request["name"].as_str().unwrap_or("world");
            axum::Json(serde_json::json!({ "greeting": format!("Hello, {name}!") }))
        }),
    );
    let native = servers.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, native).await });
        address
    });
    // reqwest shares the host's TLS build, which needs a provider.
    capsule_host::tls::install_provider();
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(HTTP_CONNECTIONS as usize)
        .build()
        .unwrap();
    for (id, address) in [("axum_native", native), ("capsule", capsule)] {
        let url = format!("http://{address}/v1/plugins/hello/call?op=greet");
        // Every answer is checked once, outside the timing.
        let first = clients.block_on(greet(&client, &url));
        assert_eq!(first, r#"{"greeting":"Hello, Ada!"}"#, "{id}");
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += clients.block_on(http_batch(&client, &url));
                }
                total
            });
        });
    }
    group.finish();
}

async fn greet(client: &reqwest::Client, url: &str) -> String {
    let response = client
        .post(url)
        .body(r#"{"name":"Ada"}"#)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.text().await.unwrap()
}

/// `HTTP_BATCH` greetings over `HTTP_CONNECTIONS` connections at once;
/// returns the wall time.
async fn http_batch(client: &reqwest::Client, url: &str) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..HTTP_CONNECTIONS)
        .map(|_| {
            let client = client.clone();
            let url = url.to_owned();
            tokio::spawn(async move {
                for _ in 0..HTTP_BATCH / HTTP_CONNECTIONS {
                    black_box(greet(&client, &url).await);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

/// Requests per sample in the `long_work` group's batch rows.
const BATCH_ITEMS: usize = 100;

/// Many small requests: one at a time through `Host::call` against one
/// `Host::call_batch`, on warm instances and with a fresh instance per call
/// (`recycle_after = 1`, where a batch still uses one); and a pure
/// operation answered from the response cache against the same call run.
fn long_work(c: &mut Criterion) {
    let rt = runtime(1);
    let warm = host_with(&rt, builder(), "echo", "bench-echo", Limits::default());
    let fresh = host_with(
        &rt,
        builder(),
        "echo",
        "bench-echo",
        Limits {
            recycle_after: 1,
            ..Limits::default()
        },
    );
    let requests = || -> Vec<Request> {
        (0..BATCH_ITEMS)
            .map(|_| Request::new("echo", PAYLOAD.to_vec()))
            .collect()
    };
    let mut group = c.benchmark_group("long_work");
    group.throughput(Throughput::Elements(BATCH_ITEMS as u64));
    for (id, host) in [("warm", &warm), ("fresh", &fresh)] {
        group.bench_function(format!("{id}/single_calls"), |b| {
            b.to_async(&rt).iter(|| async {
                for request in requests() {
                    black_box(host.call("echo", request).await.unwrap());
                }
            });
        });
        group.bench_function(format!("{id}/batch"), |b| {
            b.to_async(&rt).iter(|| async {
                let results = host.call_batch("echo", requests()).await.unwrap();
                assert!(results.iter().all(Result::is_ok));
                black_box(results)
            });
        });
    }
    group.finish();
    // The operator declares `echo` pure: the same request is answered from
    // the cache after the first.
    let cached = rt.block_on(async {
        let host = builder().build().unwrap();
        host.load(
            PluginSpec::from_path(plugin("bench-echo"))
                .with_name("echo")
                .pure_operations(vec!["echo".into()]),
        )
        .await
        .unwrap();
        // The first call is the miss that fills the cache.
        host.call("echo", Request::new("echo", PAYLOAD.to_vec()))
            .await
            .unwrap();
        host
    });
    let mut group = c.benchmark_group("cache");
    group.throughput(Throughput::Elements(1));
    group.bench_function("hit", |b| {
        b.to_async(&rt).iter(|| async {
            let outcome = cached
                .call("echo", Request::new("echo", PAYLOAD.to_vec()))
                .await
                .unwrap();
            assert!(outcome.stats.cached);
            black_box(outcome.response.payload)
        });
    });
    group.finish();
}

/// A streamed report (`report`, 100,000 CSV rows in chunks of 1,000, about
/// 3 MB): how long until the caller holds the first chunk, against the
/// whole report streamed and the same report taken whole.
fn stream(c: &mut Criterion) {
    let rt = runtime(1);
    let host = host_with(
        &rt,
        builder(),
        "report",
        "report",
        Limits {
            max_response_bytes: 64 << 20,
            ..Limits::default()
        },
    );
    let sales = || Request::new("sales", r#"{"rows":100000,"chunk_rows":1000}"#);
    let mut group = c.benchmark_group("stream");
    group.sample_size(20);
    group.bench_function("first_chunk", |b| {
        // Timed to the first chunk only; the rest is read untimed, so every
        // call ends normally and keeps its instance warm.
        b.to_async(&rt).iter_custom(|iters| {
            let host = &host;
            async move {
                let mut waited = Duration::ZERO;
                for _ in 0..iters {
                    let started = std::time::Instant::now();
                    let mut stream = host.call_stream("report", sales());
                    let first = stream.next().await;
                    waited += started.elapsed();
                    assert!(matches!(first, Some(capsule_host::StreamItem::Chunk(_))));
                    while let Some(item) = stream.next().await {
                        if let capsule_host::StreamItem::End(end) = item {
                            end.unwrap();
                        }
                    }
                }
                waited
            }
        });
    });
    group.bench_function("whole_streamed", |b| {
        b.to_async(&rt).iter(|| async {
            let mut stream = host.call_stream("report", sales());
            let mut bytes = 0;
            while let Some(item) = stream.next().await {
                match item {
                    capsule_host::StreamItem::Chunk(chunk) => bytes += chunk.len(),
                    capsule_host::StreamItem::End(end) => {
                        end.unwrap();
                    }
                }
            }
            black_box(bytes)
        });
    });
    group.bench_function("whole_call", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(host.call("report", sales()).await.unwrap().response.payload)
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = echo, throughput, serve, load, load_distinct, verify, compute, kv, backend, events, remote, languages, long_work, stream
}
criterion_main!(benches);
