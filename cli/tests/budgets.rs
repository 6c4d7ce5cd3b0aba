//! An untrusted plugin only ever spends its own budget: hostile plugins
//! attack a real `capsule serve` process over HTTP, one after the other.
//! Each attack must end in its typed error (with a fitting status), `hello`
//! on the same server must answer within its own timeout right after, and
//! the server's peak resident memory (VmHWM) must stay within the plugins'
//! memory limit plus a fixed allowance — an attack that made the host copy
//! or keep what it asked for would need gigabytes.
//!
//! A second server shows that SIGTERM with many idle instances whose
//! `shutdown` never returns still exits within one deadline.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Every plugin's linear memory limit on the attacked server.
const PLUGIN_MEMORY: u64 = 16 << 20;
/// What the host may allocate beyond a plugin's memory during one attack:
/// one host call's data, a response, buffers, allocator slack.
const HOST_ALLOWANCE: u64 = 48 << 20;

const TOKEN: &str = "test-admin-token";

fn attacked_server() -> ServeProcess {
    let file = policy(
        "budgets-policy.toml",
        r#"
[host]
trusted_keys = ["{key}"]
[host.limits]
memory = "16MiB"
timeout = "2s"
[host.pool]
instances = 84
max_memory = "64MiB"
[host.events]
queue = 64
max_hops = 4

[plugins.hello]
path = "{plugins}/hello.wasm"

[plugins.handle-flood]
path = "{plugins}/handle-flood.wasm"

[plugins.amplifier]
path = "{plugins}/amplifier.wasm"
[plugins.amplifier.limits]
max_metadata_entries = 100000
max_response = "4MiB"

[plugins.event-storm]
path = "{plugins}/event-storm.wasm"
events = { publish = ["storm.>"], subscribe = ["storm.>"] }

[plugins.metric-flood]
path = "{plugins}/metric-flood.wasm"
metrics = { series = 200 }
[plugins.metric-flood.limits]
max_instances = 1

[plugins.kv-hoarder]
path = "{plugins}/kv-hoarder.wasm"
kv = { namespace = "hoard" }
[plugins.kv-hoarder.limits]
max_instances = 1

[plugins.hoard-1]
path = "{plugins}/kv-hoarder.wasm"
kv = {}
config = { next = "hoard-2" }
calls = ["hoard-2"]
[plugins.hoard-1.limits]
max_instances = 1

[plugins.hoard-2]
path = "{plugins}/kv-hoarder.wasm"
kv = {}
config = { next = "hoard-3" }
calls = ["hoard-3"]
[plugins.hoard-2.limits]
max_instances = 1

[plugins.hoard-3]
path = "{plugins}/kv-hoarder.wasm"
kv = {}
config = { next = "hoard-4" }
calls = ["hoard-4"]
[plugins.hoard-3.limits]
max_instances = 1

[plugins.hoard-4]
path = "{plugins}/kv-hoarder.wasm"
kv = {}
config = { next = "hoard-5" }
calls = ["hoard-5"]
[plugins.hoard-4.limits]
max_instances = 1

[plugins.hoard-5]
path = "{plugins}/kv-hoarder.wasm"
kv = {}
[plugins.hoard-5.limits]
max_instances = 1
"#,
    );
    ServeProcess::start(&file, &[])
}

/// `hello` answers correctly, well within its two-second timeout.
fn assert_hello_answers(server: &ServeProcess, after: &str) {
    let started = Instant::now();
    let (status, body) = server.http(
        "POST",
        "/v1/plugins/hello/call?op=greet",
        r#"{"name":"Ada"}"#,
    );
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"greeting":"Hello, Ada!"}"#),
        "hello after {after}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "hello took {:?} after {after}",
        started.elapsed()
    );
}

#[cfg(target_os = "linux")]
#[test]
fn every_attack_is_contained_and_the_server_keeps_its_memory() {
    let server = attacked_server();
    // Warm up: every plugin has answered once, so the baseline includes
    // their compiled code and first instances.
    assert_hello_answers(&server, "start");
    let _ = server.http("POST", "/v1/plugins/amplifier/call?op=ok", "");
    let (seeded, _) = server.http("POST", "/v1/plugins/kv-hoarder/call?op=seed", "");
    assert_eq!(seeded, 200);
    let baseline = server.peak_memory();
    let bound = baseline + PLUGIN_MEMORY + HOST_ALLOWANCE;

    // (plugin, operation, payload, expected status, kind, a word the
    // message must contain)
    let attacks = [
        (
            "handle-flood",
            "pollables",
            "",
            502,
            "budget_exceeded",
            "handles",
        ),
        (
            "handle-flood",
            "fields",
            "",
            502,
            "budget_exceeded",
            "http_fields_bytes",
        ),
        (
            "handle-flood",
            "bodies",
            "",
            502,
            "budget_exceeded",
            "handles",
        ),
        (
            "handle-flood",
            "random",
            "",
            502,
            "budget_exceeded",
            "random_bytes",
        ),
        (
            "handle-flood",
            "alias-fields",
            "",
            502,
            "budget_exceeded",
            "host_call_bytes",
        ),
        (
            "amplifier",
            "metadata-alias",
            "",
            502,
            "output_too_large",
            "response",
        ),
        (
            "amplifier",
            "metadata-names",
            "40000",
            502,
            "output_too_large",
            "HTTP headers",
        ),
        (
            "amplifier",
            "metadata-large",
            "",
            502,
            "output_too_large",
            "HTTP headers",
        ),
        (
            "amplifier",
            "error-huge",
            "5000000",
            502,
            "output_too_large",
            "error message",
        ),
        (
            "amplifier",
            "stdout-lines",
            "",
            502,
            "output_too_large",
            "log",
        ),
        // The kv transaction a call buffers, the reads it records, one
        // get-many's answer, and a chain of callees joining their buffers.
        (
            "kv-hoarder",
            "buffer",
            "",
            422,
            "plugin_error",
            "max_call_bytes",
        ),
        (
            "kv-hoarder",
            "reads",
            "",
            422,
            "plugin_error",
            "max_call_keys",
        ),
        ("kv-hoarder", "many", "", 422, "plugin_error", "get-many"),
        ("hoard-1", "nest", "", 422, "plugin_error", "quota_exceeded"),
        // Metric series past the grant's cap, and label values past their
        // bound.
        (
            "metric-flood",
            "series",
            "",
            422,
            "plugin_error",
            "QuotaExceeded",
        ),
        (
            "metric-flood",
            "long",
            "",
            422,
            "plugin_error",
            "longer than the 128",
        ),
    ];
    for (plugin, op, payload, status, kind, word) in attacks {
        let attack = format!("{plugin} {op}");
        let (got, body) = server.http(
            "POST",
            &format!("/v1/plugins/{plugin}/call?op={op}"),
            payload,
        );
        let error: Value = serde_json::from_str(&body)
            .unwrap_or_else(|err| panic!("{attack}: not JSON ({err}): {body}"));
        assert_eq!(got, status, "{attack}: {body}");
        assert_eq!(error["error"]["kind"], kind, "{attack}: {body}");
        assert!(
            error["error"]["message"].as_str().unwrap().contains(word),
            "{attack}: {body}"
        );
        assert!(body.len() < 4096, "{attack}: the error is bounded too");
        assert_hello_answers(&server, &attack);
        let peak = server.peak_memory();
        assert!(
            peak <= bound,
            "{attack}: the server's peak memory grew from {baseline} to {peak} bytes"
        );
    }

    // Events: a forward loop, then a fan-out onto the plugin's own queue.
    let dead_letters_until = |topic: &str, reasons: &[&str]| {
        let admin = format!("Bearer {TOKEN}");
        let publish = http_with(
            &server.address,
            "POST",
            &format!("/v1/events/{topic}"),
            &[("authorization", &admin)],
            "payload",
        );
        assert_eq!(publish.0, 200, "{topic}: {}", publish.1);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = http_with(
                &server.address,
                "GET",
                "/v1/dead-letters",
                &[("authorization", &admin)],
                "",
            );
            let letters: Value = serde_json::from_str(&body).unwrap();
            let letters = letters["dead_letters"].as_array().unwrap().clone();
            let ended = letters.iter().any(|d| {
                d["event"]["topic"] == topic
                    && reasons
                        .iter()
                        .any(|r| d["reason"].as_str().unwrap().contains(r))
            });
            if ended {
                return letters.len();
            }
            assert!(
                Instant::now() < deadline,
                "{topic} did not end as a dead letter ({} letters)",
                letters.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    dead_letters_until("storm.loop", &["hop limit"]);
    // What did not fit its own queue became dead letters at once, or ended
    // at the hop limit; the letters kept stay within their bound.
    let kept = dead_letters_until("storm.fanout", &["not queued", "hop limit"]);
    assert!(kept <= 1000, "{kept} dead letters kept");
    assert_hello_answers(&server, "the event storms");
    let peak = server.peak_memory();
    assert!(
        peak <= bound,
        "events: peak memory grew from {baseline} to {peak} bytes"
    );

    no_string_a_caller_or_plugin_sends_grows_the_metrics(&server);

    eprintln!(
        "peak memory: {} MiB after start, {} MiB after every attack (bound {} MiB)",
        baseline >> 20,
        peak >> 20,
        bound >> 20
    );
    let (code, _) = server.terminate();
    assert_eq!(code, Some(0));
}

/// 10,000 distinct operation names, 2,000 distinct topics and 10,000
/// metric names a plugin never declared leave `/metrics` as it was, apart
/// from the counts: no attacker-chosen string becomes a series. The one
/// plugin that may add series (its declared `flood` counter) already holds
/// the 200 its grant allows.
fn no_string_a_caller_or_plugin_sends_grows_the_metrics(server: &ServeProcess) {
    let scrape = || {
        let (status, text) = server.http("GET", "/metrics", "");
        assert_eq!(status, 200);
        text
    };
    // Which series exist, whatever order a scrape lists them in.
    let families = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                l.rsplit_once(' ')
                    .map_or(l, |(series, _)| series)
                    .to_owned()
            })
            .collect()
    };
    // One of each first, so that the outcome series they count exist.
    let (status, _) = server.http("POST", "/v1/plugins/hello/call?op=made-up", "");
    assert_eq!(status, 404);
    let before = scrape();
    std::thread::scope(|scope| {
        for worker in 0..4 {
            scope.spawn(move || {
                for i in (worker..10_000).step_by(4) {
                    let (status, _) = server.http(
                        "POST",
                        &format!("/v1/plugins/hello/call?op=made-up-{i}"),
                        "",
                    );
                    assert_eq!(status, 404, "operation {i}");
                }
            });
        }
        scope.spawn(|| {
            let admin = format!("Bearer {TOKEN}");
            for i in 0..2_000 {
                let (status, body) = http_with(
                    &server.address,
                    "POST",
                    &format!("/v1/events/probe.topic{i}"),
                    &[("authorization", &admin)],
                    "x",
                );
                assert_eq!(status, 200, "topic {i}: {body}");
            }
        });
    });
    let (status, body) = server.http("POST", "/v1/plugins/metric-flood/call?op=undeclared", "");
    assert_eq!((status, body.as_str()), (200, "10000 refused"));
    let after = scrape();
    assert_eq!(
        families(&before),
        families(&after),
        "the series did not change"
    );
    assert!(!after.contains("made-up") && !after.contains("probe.topic"));
    assert_eq!(
        after
            .lines()
            .filter(|l| l.starts_with("capsule_plugin_flood_total{"))
            .count(),
        200
    );
    assert!(after.len() < 128 << 10, "/metrics is {} bytes", after.len());
}

/// `/readyz` asked by a crowd while one plugin's health check never
/// returns and another's fails with half a megabyte of reason: every answer
/// is 503 within the health timeout, each plugin was checked once, the
/// reason is kept cut, `hello` answers, and the server's memory stays.
#[cfg(target_os = "linux")]
#[test]
fn a_crowd_asking_readiness_costs_one_bounded_check_per_plugin() {
    let file = policy(
        "health-policy.toml",
        r#"
[host]
trusted_keys = ["{key}"]
[host.limits]
memory = "16MiB"
timeout = "2s"

[plugins.hello]
path = "{plugins}/hello.wasm"

[plugins.sick-spin]
path = "{plugins}/sick-health.wasm"
metrics = {}
config = { health = "spin" }

[plugins.sick-flood]
path = "{plugins}/sick-health.wasm"
metrics = {}
config = { health = "flood" }
"#,
    );
    let server = ServeProcess::start(&file, &[]);
    assert_hello_answers(&server, "start");
    let baseline = server.peak_memory();

    let answers: Vec<(u16, String, Duration)> = std::thread::scope(|scope| {
        let askers: Vec<_> = (0..32)
            .map(|_| {
                scope.spawn(|| {
                    let started = Instant::now();
                    let (status, body) = server.http("GET", "/readyz", "");
                    (status, body, started.elapsed())
                })
            })
            .collect();
        askers.into_iter().map(|a| a.join().unwrap()).collect()
    });
    for (status, body, took) in &answers {
        assert_eq!(*status, 503, "{body}");
        assert!(*took < Duration::from_secs(3), "/readyz took {took:?}");
    }
    let readiness: Value = serde_json::from_str(&answers[0].1).unwrap();
    let plugin = |name: &str| {
        readiness["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {readiness}"))
            .clone()
    };
    assert_eq!(plugin("hello")["state"], "ok");
    let spin = plugin("sick-spin");
    assert_eq!(spin["state"], "degraded");
    assert_eq!(spin["check"]["status"], "failed");
    // Fuel or the clock, whichever comes first, stops it.
    assert!(
        ["timeout", "out_of_fuel"].contains(&spin["check"]["kind"].as_str().unwrap()),
        "{spin}"
    );
    let flood = plugin("sick-flood");
    assert_eq!(flood["check"]["status"], "unhealthy");
    assert!(
        flood["check"]["reason"].as_str().unwrap().len() < 512,
        "{flood}"
    );

    let (_, metrics) = server.http("GET", "/metrics", "");
    for name in ["sick-spin", "sick-flood"] {
        let line = format!("capsule_plugin_health_checks_total{{plugin=\"{name}\"}} 1.0\n");
        assert!(metrics.contains(&line), "one check of {name}:\n{metrics}");
    }
    let (status, body) = server.http("POST", "/v1/plugins/sick-spin/call?op=any", "");
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_hello_answers(&server, "the readiness crowd");
    let peak = server.peak_memory();
    assert!(
        peak < baseline + PLUGIN_MEMORY + HOST_ALLOWANCE,
        "peak {peak} from {baseline}"
    );
}

#[cfg(unix)]
#[test]
fn sigterm_with_hanging_shutdowns_exits_within_one_deadline() {
    const INSTANCES: usize = 6;
    let file = policy(
        "budgets-shutdown.toml",
        &format!(
            r#"
[host]
trusted_keys = ["{{key}}"]
[plugins.spin]
path = "{{plugins}}/stubborn-shutdown.wasm"
config = {{ shutdown = "spin" }}
[plugins.spin.limits]
max_instances = {INSTANCES}
recycle_after = 100
[plugins.sleep]
path = "{{plugins}}/stubborn-shutdown.wasm"
config = {{ shutdown = "sleep" }}
[plugins.sleep.limits]
max_instances = {INSTANCES}
recycle_after = 100
[plugins.sleep-too]
path = "{{plugins}}/stubborn-shutdown.wasm"
[plugins.sleep-too.limits]
max_instances = {INSTANCES}
recycle_after = 100
"#
        ),
    );
    let server = ServeProcess::start(&file, &["--shutdown-deadline", "1s"]);
    // Overlapping calls leave INSTANCES idle instances of each plugin.
    std::thread::scope(|scope| {
        for plugin in ["spin", "sleep", "sleep-too"] {
            for _ in 0..INSTANCES {
                let server = &server;
                scope.spawn(move || {
                    let (status, body) =
                        server.http("POST", &format!("/v1/plugins/{plugin}/call?op=nap"), "400");
                    assert_eq!((status, body.as_str()), (200, "rested"));
                });
            }
        }
    });
    let (_, listing) = server.http("GET", "/v1/plugins", "");
    let listing: Value = serde_json::from_str(&listing).unwrap();
    let idle: u64 = listing["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["live_instances"].as_u64().unwrap())
        .sum();
    assert!(idle >= 6, "only {idle} idle instances: {listing}");

    let (code, took) = server.terminate();
    assert_eq!(code, Some(0), "SIGTERM is a clean shutdown");
    // One deadline for every instance of every plugin, plus a margin for
    // the process to exit; not a deadline per plugin or per instance.
    assert!(
        took < Duration::from_millis(1800),
        "stopping {idle} hanging instances took {took:?}, with a deadline of 1s"
    );
}
