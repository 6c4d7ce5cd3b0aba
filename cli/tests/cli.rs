//! The `capsule` binary as users run it: output, `--json`, exit codes.
//! Needs the example plugins built by `cargo xtask build-plugins`.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn run_prints_the_response_payload() {
    let hello = plugin("hello");
    let out = capsule(&[
        "run",
        hello.to_str().unwrap(),
        "--op",
        "greet",
        "--input",
        r#"{"name":"Ada"}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"greeting\":\"Hello, Ada!\"}\n"
    );
    // The plugin's log line goes to stderr, tagged with the plugin.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("handling `greet`") && stderr.contains("hello"),
        "{stderr}"
    );
}

#[test]
fn run_json_reports_output_cost_and_logs() {
    let hello = plugin("hello");
    let out = capsule(&[
        "run",
        hello.to_str().unwrap(),
        "--op",
        "greet",
        "--input",
        r#"{"name":"Ada"}"#,
        "--config",
        "greeting=Hi",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["output"]["greeting"], "Hi, Ada!");
    assert!(v["error"].is_null());
    assert!(v["duration_us"].as_u64().is_some());
    assert!(v["fuel_used"].as_u64().unwrap() > 0);
    assert!(v["fuel_limit"].as_u64().unwrap() > v["fuel_used"].as_u64().unwrap());
    let memory = v["memory_bytes"].as_u64().unwrap();
    assert!(
        memory > 0 && memory <= v["memory_limit"].as_u64().unwrap(),
        "{v}"
    );
    assert_eq!(v["logs"][0]["message"], "handling `greet`");
    // Its calls into host services: one log line, one config read, one
    // metric update, each with its time.
    let host_calls = v["host_calls"].as_array().unwrap();
    let services: Vec<_> = host_calls
        .iter()
        .map(|s| (s["service"].as_str().unwrap(), s["calls"].as_u64().unwrap()))
        .collect();
    assert_eq!(services, [("log", 1), ("config", 1), ("metrics", 1)], "{v}");
    assert!(host_calls.iter().all(|s| s["time_us"].as_u64().is_some()));
}

#[test]
fn run_profile_writes_a_firefox_profile_of_the_guest() {
    let compute = plugin("bench-compute");
    let dir = std::env::temp_dir().join(format!("capsule-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sieve.json");
    let out = capsule(&[
        "run",
        compute.to_str().unwrap(),
        "--op",
        "sieve",
        "--input",
        "30000000",
        "--fuel",
        "none",
        "--memory",
        "64MiB",
        "--profile",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1857859");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("profiler.firefox.com"), "{stderr}");
    // The processed profile format: one thread with samples, whose
    // functions are the plugin's own.
    let profile: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(profile["meta"]["version"].as_u64().is_some(), "{profile}");
    let thread = &profile["threads"][0];
    let samples = thread["samples"]["length"].as_u64().unwrap();
    assert!(samples >= 5, "{samples} samples");
    let strings = thread["stringArray"].to_string();
    assert!(
        strings.contains("count_primes") || strings.contains("bench_compute"),
        "{strings}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn input_file_is_read() {
    let hello = plugin("hello");
    let input = std::env::temp_dir().join(format!("capsule-cli-input-{}.json", std::process::id()));
    std::fs::write(&input, r#"{"name":"File"}"#).unwrap();
    let out = capsule(&[
        "run",
        hello.to_str().unwrap(),
        "--op",
        "greet",
        "--input-file",
        input.to_str().unwrap(),
    ]);
    std::fs::remove_file(&input).ok();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"greeting":"Hello, File!"}"#
    );
}

#[test]
fn run_prints_a_streamed_report_chunk_by_chunk() {
    let report = plugin("report");
    let run = |input: &str| {
        capsule(&[
            "run",
            report.to_str().unwrap(),
            "--op",
            "sales",
            "--input",
            input,
        ])
    };
    let out = run(r#"{"rows":3,"chunk_rows":1}"#);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("day,region,product,units,revenue_cents\n"));
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    // What was written before a failure is printed; the error follows on
    // stderr.
    let out = run(r#"{"rows":10,"chunk_rows":2,"fail_after":5}"#);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[plugin_error]"), "{stderr}");
    // Past the default 1 MiB response limit the call fails, and the
    // megabyte written before it has already been printed: nothing waited
    // for the end.
    let out = run(r#"{"rows":100000,"chunk_rows":100}"#);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[output_too_large]"), "{stderr}");
    let printed = out.stdout.len();
    assert!((900 << 10..=1 << 20).contains(&printed), "{printed} bytes");
}

#[test]
fn plugin_error_exits_4_with_kind() {
    let hello = plugin("hello");
    let out = capsule(&["run", hello.to_str().unwrap(), "--op", "nope", "--json"]);
    assert_eq!(out.status.code(), Some(4));
    let v = json(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["kind"], "plugin_error");
    assert_eq!(v["error"]["plugin"], "hello");
    assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
}

#[test]
fn plugin_error_without_json_is_one_line_on_stderr() {
    let hello = plugin("hello");
    let out = capsule(&["run", hello.to_str().unwrap(), "--op", "nope"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error_lines: Vec<_> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(error_lines.len(), 1, "{stderr}");
    assert!(error_lines[0].contains("[plugin_error]") && error_lines[0].contains("hello"));
}

#[test]
fn malformed_plugin_exits_3() {
    let bad = scratch("bad.wasm");
    std::fs::write(&bad, b"definitely not wasm").unwrap();
    let out = capsule(&["run", bad.to_str().unwrap(), "--op", "greet", "--json"]);
    std::fs::remove_file(&bad).ok();
    assert_eq!(out.status.code(), Some(3));
    let v = json(&out);
    assert_eq!(v["error"]["kind"], "malformed");
}

#[test]
fn missing_file_exits_3_with_io() {
    let out = capsule(&["run", "/nonexistent/x.wasm", "--op", "greet", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["error"]["kind"], "io");
}

#[test]
fn usage_errors_exit_2() {
    let hello = plugin("hello");
    let out = capsule(&["run", hello.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "missing --op is a usage error");
    let out = capsule(&[
        "run",
        hello.to_str().unwrap(),
        "--op",
        "x",
        "--memory",
        "lots",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = capsule(&[
        "run",
        hello.to_str().unwrap(),
        "--op",
        "x",
        "--input-file",
        "/nonexistent",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn inspect_shows_contract_imports_and_exports() {
    let hello = plugin("hello");
    let out = capsule(&["inspect", hello.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let v = json(&out);
    assert_eq!(v["contract_version"], "0.2.0");
    let exports: Vec<_> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        exports,
        [
            "capsule:plugin/health@0.2.0",
            "capsule:plugin/handler@0.2.0"
        ]
    );
    assert!(
        v["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "capsule:plugin/log@0.2.0")
    );
    assert_eq!(v["manifest"]["metrics"][0]["name"], "greetings", "{v}");
    let text = capsule(&["inspect", hello.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(
            "  metrics:\n    capsule_plugin_greetings (counter) {word}: Greetings given, by greeting word\n"
        ),
        "{text}"
    );
}

#[test]
fn spin_loop_times_out_with_timeout_kind_and_exit_5() {
    let spin = plugin("spin-loop");
    let started = std::time::Instant::now();
    let out = capsule(&[
        "run",
        spin.to_str().unwrap(),
        "--op",
        "run",
        "--input",
        "x",
        "--timeout",
        "500ms",
        "--fuel",
        "none",
        "--json",
    ]);
    let elapsed = started.elapsed();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(json(&out)["error"]["kind"], "timeout");
    assert!(
        elapsed < std::time::Duration::from_secs(5),
        "took {elapsed:?}"
    );
}

#[test]
fn spin_loop_with_a_fuel_budget_runs_out_of_fuel() {
    let spin = plugin("spin-loop");
    let out = capsule(&[
        "run",
        spin.to_str().unwrap(),
        "--op",
        "run",
        "--input",
        "x",
        "--fuel",
        "1000000",
        "--timeout",
        "30s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(5));
    let v = json(&out);
    assert_eq!(v["error"]["kind"], "out_of_fuel");
    assert_eq!(v["fuel_used"], 1_000_000);
    assert_eq!(v["fuel_limit"], 1_000_000);
    // The instance that ran out is still measured.
    assert!(v["memory_bytes"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn hostile_plugins_get_their_exact_kind_from_the_cli() {
    for (name, kind, code) in [
        ("alloc-bomb", "memory_limit", 5),
        ("deep-recursion", "stack_overflow", 5),
        ("panic", "trap", 6),
        ("huge-output", "output_too_large", 5),
    ] {
        let path = plugin(name);
        let out = capsule(&[
            "run",
            path.to_str().unwrap(),
            "--op",
            "run",
            "--input",
            "x",
            "--memory",
            "32MiB",
            "--max-output",
            "1MiB",
            "--json",
        ]);
        let v = json(&out);
        assert_eq!(v["error"]["kind"], kind, "{name}: {v}");
        assert_eq!(v["error"]["plugin"], name);
        assert_eq!(out.status.code(), Some(code), "{name}");
    }
}

#[test]
fn keygen_sign_verify_and_inspect_work_together() {
    let prefix = scratch("author");
    let out = capsule(&["keygen", "--out", path_str(&prefix)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (secret, public) = (prefix.with_extension("key"), prefix.with_extension("pub"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    }
    let again = capsule(&["keygen", "--out", path_str(&prefix)]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing key is never overwritten silently"
    );

    // Sign an unsigned copy of hello in place.
    let unsigned = scratch("hello-unsigned.wasm");
    std::fs::copy(plugin("hello"), &unsigned).unwrap();
    let copy = scratch("hello-signed.wasm");
    let out = capsule(&[
        "sign",
        path_str(&unsigned),
        "--key",
        path_str(&secret),
        "--output",
        path_str(&copy),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = capsule(&["verify", path_str(&copy), "--trust", path_str(&public)]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("verified: signed by key id"), "{stdout}");

    // The test key did not sign this copy... but it did sign the original,
    // so the copy carries both signatures.
    let out = capsule(&[
        "verify",
        path_str(&copy),
        "--trust",
        path_str(&plugin_dir().join("test-key.pub")),
    ]);
    assert_eq!(out.status.code(), Some(0));

    let v = json(&capsule(&["inspect", path_str(&copy), "--json"]));
    assert_eq!(v["signatures"].as_array().unwrap().len(), 2);
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);

    // Someone else's key is not trusted.
    let stranger = scratch("stranger");
    capsule(&["keygen", "--out", path_str(&stranger)]);
    let out = capsule(&[
        "verify",
        path_str(&copy),
        "--trust",
        path_str(&stranger.with_extension("pub")),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[untrusted_key]"));
}

#[test]
fn detached_signatures_from_the_cli() {
    let prefix = scratch("detached-author");
    capsule(&["keygen", "--out", path_str(&prefix), "--pem"]);
    let (secret, public) = (prefix.with_extension("key"), prefix.with_extension("pub"));
    assert!(
        std::fs::read_to_string(&public)
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    let component = scratch("hello-for-detached.wasm");
    std::fs::copy(plugin("hello"), &component).unwrap();
    let before = std::fs::read(&component).unwrap();
    let sig = scratch("hello.sig");
    let out = capsule(&[
        "sign",
        path_str(&component),
        "--key",
        path_str(&secret),
        "--detached",
        path_str(&sig),
    ]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read(&component).unwrap(),
        before,
        "--detached alone leaves the component as it was"
    );

    let out = capsule(&[
        "verify",
        path_str(&component),
        "--trust",
        path_str(&public),
        "--signature",
        path_str(&sig),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = capsule_command(&[
        "run",
        path_str(&component),
        "--op",
        "greet",
        "--input",
        r#"{"name":"Ada"}"#,
        "--trust",
        path_str(&public),
        "--signature",
        path_str(&sig),
        "--json",
    ])
    .output()
    .unwrap();
    assert_eq!(json(&out)["output"]["greeting"], "Hello, Ada!");
}

#[test]
fn run_refuses_unsigned_and_tampered_plugins() {
    let hello = plugin("hello");
    let bytes = std::fs::read(&hello).unwrap();

    let tampered = scratch("hello-tampered.wasm");
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    std::fs::write(&tampered, &flipped).unwrap();
    let out = capsule(&["run", path_str(&tampered), "--op", "greet", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["error"]["kind"], "bad_signature");

    // Without any trusted key, a signed plugin is signed by a stranger.
    let out = capsule_command(&["run", path_str(&hello), "--op", "greet", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["error"]["kind"], "untrusted_key");

    // The signature section is the first section; dropping it unsigns.
    let unsigned = scratch("hello-unsigned-run.wasm");
    assert_eq!(bytes[8], 0, "the first section is a custom section");
    let (mut size, mut shift, mut at) = (0usize, 0, 9);
    loop {
        let byte = bytes[at];
        size |= usize::from(byte & 0x7f) << shift;
        at += 1;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let mut stripped = bytes[..8].to_vec();
    stripped.extend_from_slice(&bytes[at + size..]);
    std::fs::write(&unsigned, &stripped).unwrap();
    let out = capsule(&["run", path_str(&unsigned), "--op", "greet", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["error"]["kind"], "unsigned");

    let out = capsule(&[
        "run",
        path_str(&unsigned),
        "--op",
        "greet",
        "--input",
        r#"{"name":"Ada"}"#,
        "--allow-unsigned",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WITHOUT A VALID TRUSTED SIGNATURE"),
        "the opt-out is loud: {stderr}"
    );
}

#[test]
fn check_flags_an_import_without_its_grant() {
    let file = policy(
        "check-missing-grant.toml",
        r#"
[host]
trusted_keys = ["{key}"]

[plugins.hello]
path = "{plugins}/hello.wasm"

[plugins.counter]
path = "{plugins}/kv-counter.wasm"
http = { allow = ["https://api.example.com"] }
"#,
    );
    let out = capsule_command(&["check", "--config", path_str(&file)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "warnings alone do not fail: {stdout}"
    );
    assert!(stdout.contains("capsule:plugin/kv@0.2.0"), "{stdout}");
    assert!(stdout.contains("NOT GRANTED: needs `kv`"), "{stdout}");
    assert!(stdout.contains("grant `http`: UNUSED"), "{stdout}");
    assert!(stdout.contains("signature: ok"), "{stdout}");

    let strict = capsule_command(&["check", "--config", path_str(&file), "--strict"])
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(3));

    let v = json(
        &capsule_command(&["check", "--config", path_str(&file), "--json"])
            .output()
            .unwrap(),
    );
    let counter = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "counter")
        .unwrap();
    assert_eq!(counter["ok"], true);
    assert!(counter["warnings"].as_array().unwrap().len() >= 2);
    let kv = counter["imports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["import"] == "capsule:plugin/kv@0.2.0")
        .unwrap();
    assert_eq!(kv["status"], "not_granted");
}

/// `capsule check` reads; it never writes. A mount the policy asks to
/// create is created when the plugin loads, not when it is checked.
#[test]
fn check_leaves_the_file_system_untouched() {
    let out_dir = scratch("check-created-mount");
    let _ = std::fs::remove_dir_all(&out_dir);
    let file = policy(
        "check-create.toml",
        &format!(
            "[host]\ntrusted_keys = [\"{{key}}\"]\n[plugins.reader]\npath = \"{{plugins}}/file-reader.wasm\"\n\
             files = [{{ host = \"{}\", guest = \"/out\", access = \"read-write\", create = true }}]\n",
            path_str(&out_dir)
        ),
    );
    let out = capsule_command(&["check", "--config", path_str(&file)])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !out_dir.exists(),
        "capsule check created {}",
        out_dir.display()
    );

    let out = capsule(&[
        "run",
        "reader",
        "--config",
        path_str(&file),
        "--op",
        "write",
        "--input",
        r#"{"path":"/out/x","content":"made"}"#,
        "--json",
    ]);
    assert_eq!(
        json(&out)["ok"],
        true,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(out_dir.join("x")).unwrap(), "made");
    std::fs::remove_dir_all(&out_dir).unwrap();
}

#[test]
fn check_refuses_plugins_that_would_not_load() {
    let unsigned = scratch("check-unsigned.wasm");
    std::fs::write(&unsigned, b"\0asm\x0d\0\x01\0").unwrap();
    let file = policy(
        "check-refused.toml",
        &format!(
            "[host]\ntrusted_keys = [\"{{key}}\"]\n[plugins.bad]\npath = \"{}\"\n",
            path_str(&unsigned)
        ),
    );
    let out = capsule_command(&["check", "--config", path_str(&file)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("REFUSED [unsigned]"));
}

/// Whatever the host would refuse at load, `capsule check` refuses too:
/// values out of range (a usage error naming the key) and a memory limit
/// below what the component needs to start (the load's own kind).
#[test]
fn check_refuses_what_the_host_would_refuse() {
    let file = policy(
        "check-zero-fuel.toml",
        "[host]\ntrusted_keys = [\"{key}\"]\n[plugins.hello]\npath = \"{plugins}/hello.wasm\"\n\
         [plugins.hello.limits]\nfuel = 0\n",
    );
    let out = capsule_command(&["check", "--config", path_str(&file)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("plugins.hello.limits.fuel"), "{stderr}");

    let file = policy(
        "check-small-memory.toml",
        "[host]\ntrusted_keys = [\"{key}\"]\n[plugins.hello]\npath = \"{plugins}/hello.wasm\"\n\
         [plugins.hello.limits]\nmemory = \"64KiB\"\n",
    );
    let out = capsule_command(&["check", "--config", path_str(&file)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("REFUSED [memory_limit]"), "{stdout}");
    // And the host refuses it the same way.
    let out = capsule_command(&[
        "run",
        "hello",
        "--config",
        path_str(&file),
        "--op",
        "greet",
        "--json",
    ])
    .output()
    .unwrap();
    assert_eq!(json(&out)["error"]["kind"], "memory_limit");
}

#[test]
fn policy_errors_name_the_file_line_and_key() {
    let file = policy(
        "bad-policy.toml",
        "[host]\ntrusted_keys = [\"{key}\"]\n\n[plugins.hello]\npath = \"{plugins}/hello.wasm\"\nkv_namespace = \"x\"\n",
    );
    for args in [
        vec!["check", "--config", path_str(&file)],
        vec!["run", "hello", "--config", path_str(&file), "--op", "greet"],
    ] {
        let out = capsule_command(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("bad-policy.toml:6:"), "{stderr}");
        assert!(stderr.contains("kv_namespace"), "{stderr}");
    }
}

#[test]
fn run_by_name_from_a_policy_and_kv_persists_across_runs() {
    let file = policy(
        "run-policy.toml",
        r#"
[host]
trusted_keys = ["{key}"]
data_dir = "{scratch}/policy-data"

[plugins.hello]
path = "{plugins}/hello.wasm"
config = { greeting = "Hej" }

[plugins.counter]
path = "{plugins}/kv-counter.wasm"
kv = { namespace = "cli-test" }
"#,
    );
    let out = capsule_command(&[
        "run",
        "hello",
        "--config",
        path_str(&file),
        "--op",
        "greet",
        "--input",
        r#"{"name":"Ada"}"#,
    ])
    .output()
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"greeting":"Hej, Ada!"}"#
    );

    let _ = std::fs::remove_dir_all(scratch("policy-data"));
    for expected in [1, 2] {
        let out = capsule_command(&[
            "run",
            "counter",
            "--config",
            path_str(&file),
            "--op",
            "increment",
            "--input",
            r#"{"key":"k"}"#,
            "--json",
        ])
        .output()
        .unwrap();
        assert_eq!(
            json(&out)["output"]["count"],
            expected,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let out = capsule_command(&["run", "nobody", "--config", path_str(&file), "--op", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no plugin `nobody`"));
}

#[cfg(unix)]
/// Replaces `file` with hello signed a second time, by a key of its own
/// (named after `tag`): other bytes in a new inode, as a redeploy makes.
fn replace_with_resigned_hello(file: &std::path::Path, tag: &str) {
    let prefix = scratch(&format!("{tag}-signer"));
    capsule(&["keygen", "--out", path_str(&prefix), "--force"]);
    let resigned = scratch(&format!("{tag}-resigned.wasm"));
    capsule(&[
        "sign",
        path_str(&plugin("hello")),
        "--key",
        path_str(&prefix.with_extension("key")),
        "--output",
        path_str(&resigned),
    ]);
    std::fs::rename(&resigned, file).unwrap();
}

#[test]
fn serve_answers_http_reloads_changed_files_and_stops_on_sigterm() {
    // The served plugin is a copy, so the test can replace it.
    let served = scratch("served-hello.wasm");
    std::fs::copy(plugin("hello"), &served).unwrap();
    let file = policy(
        "serve-policy.toml",
        &format!(
            "[host]\ntrusted_keys = [\"{{key}}\"]\n[plugins.hello]\npath = \"{}\"\n",
            path_str(&served)
        ),
    );
    let server = ServeProcess::start(&file, &["--watch", "--console"]);
    let address = server.address.clone();
    // The console is served when asked: an open host's overview.
    let (status, page) = http(&address, "GET", "/console", "");
    assert_eq!(status, 200);
    assert!(
        page.contains("<td><a href=\"/console/plugins/hello\">hello</a></td>"),
        "{page}"
    );

    assert_eq!(
        http(&address, "GET", "/healthz", ""),
        (200, "ok\n".to_owned())
    );
    let (status, body) = http(
        &address,
        "POST",
        "/v1/plugins/hello/call?op=greet",
        r#"{"name":"Ada"}"#,
    );
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"greeting":"Hello, Ada!"}"#)
    );
    let (status, _) = http(&address, "POST", "/v1/plugins/hello/reload", "");
    assert_eq!(status, 401, "admin routes need a token");

    // Replace the file with a copy signed a second time: --watch reloads it.
    replace_with_resigned_hello(&served, "watch");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, listing) = http(&address, "GET", "/v1/plugins", "");
        let listing: Value = serde_json::from_str(&listing).unwrap();
        if listing["plugins"][0]["generation"] == 1 {
            assert_eq!(
                listing["plugins"][0]["signers"].as_array().unwrap().len(),
                1,
                "only the trusted key counts"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the changed file was not reloaded: {listing}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let (code, _) = server.terminate();
    assert_eq!(code, Some(0), "SIGTERM is a clean shutdown");
    assert!(std::net::TcpStream::connect(&address).is_err());
}

#[test]
fn serve_applies_an_edited_policy_on_sighup() {
    let text = |greeting: &str| {
        format!(
            "[host]\ntrusted_keys = [\"{{key}}\"]\n[plugins.hello]\npath = \"{{plugins}}/hello.wasm\"\n\
             config = {{ greeting = \"{greeting}\" }}\n"
        )
    };
    let file = policy("sighup-policy.toml", &text("Hello"));
    let server = ServeProcess::start(&file, &[]);
    let greet = || {
        server.http(
            "POST",
            "/v1/plugins/hello/call?op=greet",
            r#"{"name":"Ada"}"#,
        )
    };
    assert_eq!(greet(), (200, r#"{"greeting":"Hello, Ada!"}"#.to_owned()));
    policy("sighup-policy.toml", &text("Bonjour"));
    std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while greet() != (200, r#"{"greeting":"Bonjour, Ada!"}"#.to_owned()) {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not apply the edited policy"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (_, listing) = server.http("GET", "/v1/plugins", "");
    let listing: Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(listing["plugins"][0]["generation"], 1, "a new generation");
    let (code, _) = server.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn watch_follows_plugins_a_policy_apply_added() {
    let text = |extra: &str| {
        format!(
            "[host]\ntrusted_keys = [\"{{key}}\"]\n[plugins.hello]\npath = \"{{plugins}}/hello.wasm\"\n{extra}"
        )
    };
    let file = policy("watch-apply-policy.toml", &text(""));
    let server = ServeProcess::start(&file, &["--watch"]);
    // A plugin in a folder nobody watched yet comes with an apply.
    let later = scratch("watched-later");
    std::fs::create_dir_all(&later).unwrap();
    let hola = later.join("hola.wasm");
    std::fs::copy(plugin("hello"), &hola).unwrap();
    policy(
        "watch-apply-policy.toml",
        &text(&format!("[plugins.hola]\npath = \"{}\"\n", path_str(&hola))),
    );
    let (status, changes) = http_with(
        &server.address,
        "POST",
        "/v1/policy/apply",
        &[("authorization", "Bearer test-admin-token")],
        "",
    );
    assert_eq!(status, 200, "{changes}");
    let generation = || {
        let (_, listing) = server.http("GET", "/v1/plugins", "");
        let listing: Value = serde_json::from_str(&listing).unwrap();
        listing["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "hola")
            .map(|p| p["generation"].as_u64().unwrap())
    };
    assert_eq!(generation(), Some(0));
    // Its file changes (signed again, a new inode): --watch reloads it.
    std::thread::sleep(std::time::Duration::from_secs(2));
    replace_with_resigned_hello(&hola, "watch-apply");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while generation() != Some(1) {
        assert!(
            std::time::Instant::now() < deadline,
            "the added plugin's file was not followed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn grants_can_be_given_on_the_command_line() {
    let data = scratch("cli-grant-data");
    let _ = std::fs::remove_dir_all(&data);
    for expected in [1, 2] {
        let out = capsule(&[
            "run",
            path_str(&plugin("kv-counter")),
            "--op",
            "increment",
            "--input",
            r#"{"key":"k"}"#,
            "--kv",
            "cli",
            "--data-dir",
            path_str(&data),
            "--json",
        ]);
        assert_eq!(
            json(&out)["output"]["count"],
            expected,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let mount = scratch("cli-mount");
    std::fs::create_dir_all(&mount).unwrap();
    std::fs::write(mount.join("note.txt"), "mounted").unwrap();
    let spec = format!("{}:/data", path_str(&mount));
    let out = capsule(&[
        "run",
        path_str(&plugin("file-reader")),
        "--op",
        "read",
        "--input",
        r#"{"path":"/data/note.txt"}"#,
        "--mount",
        &spec,
        "--json",
    ]);
    assert_eq!(json(&out)["output"]["content"], "mounted");
    let out = capsule(&[
        "run",
        path_str(&plugin("file-reader")),
        "--op",
        "write",
        "--input",
        r#"{"path":"/data/x","content":"no"}"#,
        "--mount",
        &spec,
        "--json",
    ]);
    assert_eq!(
        json(&out)["error"]["kind"],
        "plugin_error",
        "read-only unless `:rw`"
    );
    let rw = format!("{spec}:rw");
    let out = capsule(&[
        "run",
        path_str(&plugin("file-reader")),
        "--op",
        "write",
        "--input",
        r#"{"path":"/data/x","content":"yes"}"#,
        "--mount",
        &rw,
        "--json",
    ]);
    assert_eq!(json(&out)["ok"], true);
    assert_eq!(std::fs::read_to_string(mount.join("x")).unwrap(), "yes");

    let out = capsule(&[
        "run",
        path_str(&plugin("hello")),
        "--op",
        "env",
        "--env",
        "LANG=de",
        "--json",
    ]);
    assert_eq!(
        json(&out)["output"]["vars"],
        serde_json::json!({"LANG": "de"})
    );
    let out = capsule(&[
        "run",
        path_str(&plugin("hello")),
        "--op",
        "announce",
        "--input",
        r#"{"topic":"greetings.de","name":"Ada"}"#,
        "--publish",
        "greetings.*",
        "--json",
    ]);
    assert_eq!(json(&out)["events"][0]["topic"], "greetings.de");

    let out = capsule(&[
        "run",
        path_str(&plugin("hello")),
        "--op",
        "greet",
        "--mount",
        "/nonexistent:/d",
    ]);
    assert_eq!(out.status.code(), Some(2), "a bad mount is a usage error");

    // Any service, granted whole as a policy writes it.
    let out = capsule(&[
        "run",
        path_str(&plugin("hello")),
        "--op",
        "greet",
        "--input",
        r#"{"name":"Ada"}"#,
        "--grant",
        r#"config={ greeting = "Hej" }"#,
        "--json",
    ]);
    assert_eq!(
        json(&out)["output"]["greeting"],
        "Hej, Ada!",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (bad, says) in [
        (
            "nosuch=1",
            "no service `nosuch` (services: log, config, env, kv, events, files, http, calls, metrics, trace, response)",
        ),
        ("kv={ max_keys = -1 }", "--grant kv:"),
    ] {
        let out = capsule(&[
            "run",
            path_str(&plugin("hello")),
            "--op",
            "greet",
            "--grant",
            bad,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains(says), "{bad}: {stderr}");
    }
}

/// `--input-file` is read only up to the plugin's request limit: an endless
/// file is refused at once as `input_too_large`.
#[test]
fn an_endless_input_file_is_refused_without_reading_it() {
    let out = capsule(&[
        "run",
        path_str(&plugin("hello")),
        "--op",
        "greet",
        "--input-file",
        "/dev/zero",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(json(&out)["error"]["kind"], "input_too_large");
}

/// A closed stdout (`capsule inspect … | head`) ends the command quietly.
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_quietly() {
    let mut child = capsule_command(&["inspect", path_str(&plugin("hello"))])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the command writes anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// What callers and plugins write reaches the host's log escaped, one value
/// per line: a newline in a name cannot forge a log line.
#[test]
fn caller_and_plugin_text_cannot_forge_log_lines() {
    // hello logs the operation it handles: the caller's text, through the
    // plugin, into the host's log.
    let out = capsule(&[
        "run",
        path_str(&plugin("hello")),
        "--op",
        "greet\nERROR capsule: forged line",
        "--input",
        "{}",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("greet\\nERROR capsule: forged line"),
        "the line is kept, escaped: {stderr}"
    );
    assert!(
        !stderr
            .lines()
            .any(|line| line.starts_with("ERROR capsule: forged")),
        "{stderr}"
    );
}

/// The composite router works through `capsule run` (which loads the
/// callees from the policy), a pipeline and `capsule serve`; `capsule check`
/// shows its call edges and flags one that reaches nothing.
#[test]
fn the_router_routes_through_run_serve_and_a_pipeline() {
    let file = policy(
        "router.toml",
        r#"
[host]
trusted_keys = ["{key}"]

[plugins.hello]
path = "{plugins}/hello.wasm"
config = { greeting = "Hej" }

[plugins.thumbnail]
path = "{plugins}/thumbnail.wasm"

[plugins.router]
path = "{plugins}/router.wasm"
config = { routes = "greet=greeting,make=thumbnail" }
calls = ["capability:greeting", "capability:thumbnail", "storage"]

[pipelines.routed]
stages = ["router"]
"#,
    );
    let out = capsule(&[
        "run",
        "router",
        "--config",
        path_str(&file),
        "--op",
        "greet",
        "--input",
        r#"{"name":"Ada"}"#,
        "--json",
    ]);
    let answer = json(&out);
    assert_eq!(answer["output"]["greeting"], "Hej, Ada!", "{answer}");
    assert!(answer["callee_fuel_used"].as_u64().unwrap() > 0, "{answer}");

    let checked = capsule_command(&["check", "--config", path_str(&file)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(stdout.contains("→ capability:thumbnail"), "{stdout}");
    assert!(stdout.contains("→ storage  NOT IN THIS POLICY"), "{stdout}");

    let server = ServeProcess::start(&file, &[]);
    let (status, body) = server.http(
        "POST",
        "/v1/plugins/router/call?op=greet",
        r#"{"name":"Bo"}"#,
    );
    assert_eq!((status, body.as_str()), (200, r#"{"greeting":"Hej, Bo!"}"#));
    let (status, body) = server.http(
        "POST",
        "/v1/pipelines/routed/call?op=make",
        r#"{"image":{"width":2,"height":1,"pixels":[7,9]},"max":1}"#,
    );
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"width":1,"height":1,"pixels":[7]}"#)
    );
    let (code, _) = server.terminate();
    assert_eq!(code, Some(0));
}

/// `bytes` without their signatures and without a manifest: what the
/// compiler produced.
fn as_built(bytes: &[u8]) -> Vec<u8> {
    use capsule_host::artifact::{manifest::MANIFEST_SECTION, sections, signature};
    let content = signature::unsigned_content(bytes).unwrap();
    let mut out = content[..8].to_vec();
    for section in sections::split(&content).unwrap() {
        if !matches!(section.custom(), Some((MANIFEST_SECTION, _))) {
            out.extend_from_slice(&content[section.range]);
        }
    }
    out
}

#[test]
fn sign_embeds_the_manifest_the_plugin_builds_and_inspect_shows_it() {
    let prefix = scratch("manifest-author");
    capsule(&["keygen", "--out", path_str(&prefix)]);
    let secret = prefix.with_extension("key");
    let unsigned = scratch("thumbnail-as-built.wasm");
    std::fs::write(
        &unsigned,
        as_built(&std::fs::read(plugin("thumbnail")).unwrap()),
    )
    .unwrap();
    let out = capsule(&["sign", path_str(&unsigned), "--key", path_str(&secret)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("manifest: thumbnail 0.1.0 with 1 operation(s), 0 requirement(s)"),
        "{stdout}"
    );
    let inspected = capsule(&["inspect", path_str(&unsigned)]);
    let text = String::from_utf8_lossy(&inspected.stdout);
    assert!(text.contains("provides:  thumbnail"), "{text}");
    assert!(
        text.contains("make: Scales a grayscale image down so its longer side is at most `max`  [input and output schemas]"),
        "{text}"
    );
    let v = json(&capsule(&["inspect", path_str(&unsigned), "--json"]));
    assert_eq!(
        v["manifest"]["operations"][0]["input"]["required"],
        serde_json::json!(["image", "max"])
    );

    // A plugin whose manifest probe misbehaves is not signed by accident.
    let bomb = scratch("alloc-bomb-as-built.wasm");
    std::fs::write(
        &bomb,
        as_built(&std::fs::read(plugin("alloc-bomb")).unwrap()),
    )
    .unwrap();
    let out = capsule(&["sign", path_str(&bomb), "--key", path_str(&secret)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    // Filling the 1 GiB the probe may use usually ends at the memory limit;
    // on a loaded machine the probe's deadline can come first. Either way
    // the sandbox stopped it and nothing was signed.
    assert!(
        (stderr.contains("[memory_limit]") || stderr.contains("[timeout]"))
            && stderr.contains("--no-manifest"),
        "{stderr}"
    );
    let out = capsule(&[
        "sign",
        path_str(&bomb),
        "--key",
        path_str(&secret),
        "--no-manifest",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&capsule(&["inspect", path_str(&bomb), "--json"]));
    assert!(v["manifest"].is_null());
}

#[test]
fn check_reads_requirements_and_declared_operations_from_manifests() {
    let missing = policy(
        "check-missing-dependency.toml",
        r#"
[host]
trusted_keys = ["{key}"]

[plugins.hello]
path = "{plugins}/hello.wasm"

[plugins.router]
path = "{plugins}/router.wasm"
calls = ["capability:greeting", "capability:thumbnail"]
"#,
    );
    let out = capsule_command(&["check", "--config", path_str(&missing)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains("REFUSED [missing_dependency]: missing dependency: requires capability `thumbnail`, which no loaded plugin provides"),
        "{stdout}"
    );

    let complete = policy(
        "check-operations.toml",
        r#"
[host]
trusted_keys = ["{key}"]

[plugins.hello]
path = "{plugins}/hello.wasm"

[plugins.thumbnail]
path = "{plugins}/thumbnail.wasm"

[plugins.router]
path = "{plugins}/router.wasm"
calls = ["hello:greet", "hello:shout", "capability:thumbnail"]
"#,
    );
    let out = capsule_command(&["check", "--config", path_str(&complete)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("manifest:  hello 0.1.0, 4 operation(s): greet, env, announce, calls"),
        "{stdout}"
    );
    assert!(
        stdout.contains("requires:  capability `thumbnail` ^0.1"),
        "{stdout}"
    );
    assert!(stdout.contains("→ hello:greet\n"), "{stdout}");
    assert!(stdout.contains("→ hello:shout  NOT DECLARED"), "{stdout}");
    let v = json(
        &capsule_command(&["check", "--config", path_str(&complete), "--json"])
            .output()
            .unwrap(),
    );
    let router = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "router")
        .unwrap();
    assert_eq!(router["manifest"]["requires"][1]["capability"], "thumbnail");
    assert!(router["warnings"].as_array().unwrap().iter().any(|w| {
        w.as_str()
            .unwrap()
            .contains("`hello:shout` names an operation its plugin does not declare")
    }));
}

/// A plugin's config schema is checked by `capsule check` and at load,
/// naming the policy line; a secret reaches the plugin and no output of the
/// host, not even at trace level.
#[test]
fn config_schemas_point_at_the_line_and_secrets_appear_in_no_host_output() {
    let file = policy(
        "config-schema.toml",
        r#"
[host]
trusted_keys = ["{key}"]

[plugins.store]
path = "{plugins}/ingest-store.wasm"
config = { prefix = "p", max_cents = "lots" }
[plugins.store.secrets]
token = { env = "CAPSULE_CLI_TEST_SECRET" }

[plugins.hello]
path = "{plugins}/hello.wasm"
[plugins.hello.secrets]
greeting = { env = "CAPSULE_CLI_TEST_SECRET" }
"#,
    );
    let secret = "Psst-zq7";
    let with_secret = |args: &[&str]| {
        let mut command = capsule_command(args);
        command
            .env("CAPSULE_CLI_TEST_SECRET", secret)
            .env("CAPSULE_LOG", "debug");
        command.output().unwrap()
    };
    for args in [
        vec!["check", "--config", path_str(&file)],
        vec!["check", "--config", path_str(&file), "--json"],
        vec![
            "run",
            "store",
            "--config",
            path_str(&file),
            "--op",
            "x",
            "--input",
            "{}",
        ],
    ] {
        let out = with_secret(&args);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_ne!(out.status.code(), Some(0), "{args:?}: {all}");
        assert!(
            all.contains("config-schema.toml:7:") && all.contains("plugins.store.config.max_cents"),
            "{args:?}: {all}"
        );
        // `token` is a secret the plugin's schema does not know.
        assert!(
            all.contains("plugins.store.config.token"),
            "{args:?}: {all}"
        );
        assert!(!all.contains(secret), "{args:?}: {all}");
    }
    let out = with_secret(&[
        "run",
        "hello",
        "--config",
        path_str(&file),
        "--op",
        "greet",
        "--input",
        r#"{"name":"Ada"}"#,
    ]);
    assert_eq!(out.status.code(), Some(0));
    // The plugin's own answer carries it; the host's log does not.
    assert!(String::from_utf8_lossy(&out.stdout).contains("Psst-zq7, Ada!"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TRACE") || stderr.contains("DEBUG"),
        "{stderr}"
    );
    assert!(!stderr.contains(secret), "{stderr}");
}

#[test]
fn serve_exits_with_the_reason_when_nats_is_unreachable() {
    // Port 1 on loopback: nothing listens there.
    let file = policy(
        "nats-down-policy.toml",
        "[host]\ntrusted_keys = [\"{key}\"]\n[host.backend]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:1\"\n",
    );
    for wait in [None, Some("1s")] {
        let mut args = vec![
            "serve",
            "--config",
            path_str(&file),
            "--listen",
            "127.0.0.1:0",
        ];
        if let Some(wait) = wait {
            args.extend(["--wait-for-backend", wait]);
        }
        let started = std::time::Instant::now();
        let out = capsule_command(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{wait:?}: {stderr}");
        assert!(
            stderr.contains("nats backend at nats://127.0.0.1:1"),
            "{wait:?}: {stderr}"
        );
        if wait.is_some() {
            assert!(
                started.elapsed() >= std::time::Duration::from_secs(1),
                "it waited"
            );
        }
    }
}

#[test]
fn api_key_makes_a_key_the_served_policy_accepts() {
    let file = policy(
        "api-key-policy.toml",
        "[host]\ntrusted_keys = [\"{key}\"]\n[plugins.hello]\npath = \"{plugins}/hello.wasm\"\n",
    );
    let out = capsule(&[
        "api-key",
        "--name",
        "checkout",
        "--role",
        "call",
        "--plugin",
        "hello",
        "--rate",
        "100/s",
        "--append-to",
        path_str(&file),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("capsule_") && key.len() == 72, "{key}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&key), "the policy keeps the digest only");
    assert!(
        text.contains(&capsule_host::access::digest_of(&key)),
        "{text}"
    );

    // Printed instead of appended: the key first, then the entry.
    let printed = capsule(&["api-key", "--name", "dash", "--role", "view"]);
    let printed = String::from_utf8(printed.stdout).unwrap();
    let (first, entry) = printed.split_once('\n').unwrap();
    assert!(
        entry.contains(&capsule_host::access::digest_of(first)),
        "{printed}"
    );
    assert!(
        entry.contains("[[host.api_keys]]\nname = \"dash\"\nrole = \"view\""),
        "{printed}"
    );
    // What the policy would refuse is refused here.
    let unscoped = capsule(&["api-key", "--name", "x", "--role", "call"]);
    assert_eq!(unscoped.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unscoped.stderr).contains("needs --plugin"));

    let server = ServeProcess::start(&file, &[]);
    let call = |headers: &[(&str, &str)]| {
        http_with(
            &server.address,
            "POST",
            "/v1/plugins/hello/call?op=greet",
            headers,
            r#"{"name":"Ada"}"#,
        )
        .0
    };
    assert_eq!(call(&[]), 401);
    let bearer = format!("Bearer {key}");
    assert_eq!(call(&[("authorization", &bearer)]), 200);
    let (code, _) = server.terminate();
    assert_eq!(code, Some(0));
}
