//! `cargo xtask demo`: builds the example plugins and the `capsule` CLI, then
//! runs each example the way an operator would, printing what each plugin did
//! and what the sandbox stopped. Every step states what it expects, and the
//! demo fails if any step does something else.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::shell::Workspace;
use crate::{demo_setup, plugins};

/// What a demo step should end in.
enum Expect {
    /// Exit 0.
    Success,
    /// Exit 0 with this text in the output.
    SuccessWith(&'static str),
    /// A non-zero exit whose `--json` output names this error kind.
    Refused(&'static str),
    /// As `Refused`, with this text in the output too.
    RefusedWith(&'static str, &'static str),
}

struct Step {
    title: String,
    args: Vec<String>,
    expect: Expect,
}

impl Step {
    fn new<S: AsRef<str>>(title: &str, args: &[S], expect: Expect) -> Step {
        Step {
            title: title.to_owned(),
            args: args.iter().map(|a| a.as_ref().to_owned()).collect(),
            expect,
        }
    }
}

/// Runs the demo.
pub fn run(workspace: &Workspace) -> Result<()> {
    let built = plugins::build(workspace, plugins::Cli::Alone)?;
    let capsule = built.capsule.clone();
    let demo_dir = workspace.target.join("demo");
    std::fs::create_dir_all(&demo_dir)?;

    let plugin = |name: &str| built.dir.join(format!("{name}.wasm")).display().to_string();
    let trust = built.test_key.display().to_string();
    let hello = plugin("hello");
    // `capsule run PLUGIN --trust TEST-KEY ARGS...`
    let run = |path: &str, args: &[&str]| -> Vec<String> {
        let mut all = vec![
            "run".to_owned(),
            path.to_owned(),
            "--trust".to_owned(),
            trust.clone(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        all
    };
    // Every hostile plugin attacks whatever operation it is asked for;
    // some have several attacks, chosen by the operation.
    let attack = |name: &str, op: &str, limits: &[&str]| -> Vec<String> {
        let mut args = vec!["--op", op, "--input", "x", "--json"];
        args.extend_from_slice(limits);
        run(&plugin(name), &args)
    };
    let hostile = |name: &str, limits: &[&str]| attack(name, "run", limits);
    let samples = SignatureSamples::write(&built, Path::new(&hello), &demo_dir)?;
    demo_setup::prepare_dirs(&demo_dir)?;
    demo_setup::start_http_server()?;
    let policy = workspace
        .root
        .join("example-plugins/capsule.toml")
        .display()
        .to_string();
    // `capsule run NAME --config POLICY --op OP --input INPUT --json`
    let granted = |name: &str, op: &str, input: &str| -> Vec<String> {
        [
            "run", name, "--config", &policy, "--op", op, "--input", input, "--json",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let origin = format!("http://127.0.0.1:{}/", demo_setup::DEMO_HTTP_PORT);
    let other_port = format!("http://127.0.0.1:{}/", demo_setup::DEMO_HTTP_PORT + 1);
    let greet = ["--op", "greet", "--input", r#"{"name":"Ada"}"#];

    let steps = [
        Step::new("hello greets Ada", &run(&hello, &greet), Expect::Success),
        Step::new(
            "the operator configures the greeting word",
            &run(
                &hello,
                &[&greet[..], &["--config", "greeting=Bonjour", "--json"]].concat(),
            ),
            Expect::Success,
        ),
        Step::new(
            "an operation hello does not implement is the plugin's typed error",
            &run(&hello, &["--op", "nope", "--json"]),
            Expect::Refused("plugin_error"),
        ),
        Step::new(
            "inspect shows the digest, the signer, the contract and the signed manifest (operations, schemas), without running anything",
            &["inspect".to_owned(), hello.clone()],
            Expect::SuccessWith("greet: Greets someone by name"),
        ),
        Step::new(
            "verify checks the signature against the trusted key",
            &[
                "verify".to_owned(),
                hello.clone(),
                "--trust".to_owned(),
                trust.clone(),
            ],
            Expect::Success,
        ),
        Step::new(
            "hello-py, the same plugin written in Python (componentize-py), greets Ada",
            &run(&plugin("hello-py"), &greet),
            Expect::SuccessWith("Hello, Ada!"),
        ),
        Step::new(
            "hello-js, written in JavaScript (componentize-js), greets Ada",
            &run(&plugin("hello-js"), &greet),
            Expect::SuccessWith("Hello, Ada!"),
        ),
        Step::new(
            "a Python exception nothing catches is a trap naming it",
            &attack("runaway-py", "raise", &[]),
            Expect::RefusedWith("trap", "RuntimeError: runaway-py gave up on purpose"),
        ),
        Step::new(
            "a JavaScript plugin that loops for ever is stopped at its deadline",
            &attack(
                "runaway-js",
                "spin",
                &["--fuel", "none", "--timeout", "300ms"],
            ),
            Expect::Refused("timeout"),
        ),
        Step::new(
            "wasi-standard, written against wasi:keyvalue with no Capsule SDK, counts in the namespace it was granted",
            &run(
                &plugin("wasi-standard"),
                &["--op", "count", "--kv", "default", "--json"],
            ),
            Expect::SuccessWith("\"hits\":1"),
        ),
        Step::new(
            "the same component without a kv grant: its bucket is access-denied",
            &run(&plugin("wasi-standard"), &["--op", "count", "--json"]),
            Expect::RefusedWith("plugin_error", "access denied"),
        ),
        Step::new(
            "an unsigned build of hello is refused before it is compiled",
            &run(&samples.unsigned, &[&greet[..], &["--json"]].concat()),
            Expect::Refused("unsigned"),
        ),
        Step::new(
            "a copy of hello with one byte changed is refused",
            &run(&samples.tampered, &[&greet[..], &["--json"]].concat()),
            Expect::Refused("bad_signature"),
        ),
        Step::new(
            "hello signed by a key the host does not trust is refused",
            &run(&samples.untrusted, &[&greet[..], &["--json"]].concat()),
            Expect::Refused("untrusted_key"),
        ),
        Step::new(
            "a truncated component is refused",
            &run(&samples.truncated, &[&greet[..], &["--json"]].concat()),
            Expect::Refused("bad_signature"),
        ),
        Step::new(
            "capsule check: every plugin of the demo policy, its signature and each import next to its grant",
            &["check".to_owned(), "--config".to_owned(), policy.clone()],
            Expect::Success,
        ),
        Step::new(
            "hello under the policy: config says Bonjour",
            &granted("hello", "greet", r#"{"name":"Ada"}"#),
            Expect::SuccessWith("Bonjour, Ada!"),
        ),
        Step::new(
            "validate_input: a greet request without `name` does not match hello's declared schema and is refused before hello runs",
            &granted("hello", "greet", r#"{"nom":"Ada"}"#),
            Expect::RefusedWith("invalid_input", "required property"),
        ),
        Step::new(
            "hello sees exactly the environment it was granted",
            &granted("hello", "env", ""),
            Expect::SuccessWith(r#"{"vars":{"LANG":"fr_FR.UTF-8"}}"#),
        ),
        Step::new(
            "hello publishes to a granted topic (the event is recorded with the call)",
            &granted(
                "hello",
                "announce",
                r#"{"topic":"greetings.fr","name":"Ada"}"#,
            ),
            Expect::SuccessWith(r#""topic":"greetings.fr""#),
        ),
        Step::new(
            "hello publishes to a topic it was not granted: denied",
            &granted(
                "hello",
                "announce",
                r#"{"topic":"admin.shutdown","name":"Ada"}"#,
            ),
            Expect::RefusedWith("plugin_error", "denied"),
        ),
        Step::new(
            "kv-counter counts in its namespace…",
            &granted("kv-counter", "increment", r#"{"key":"visits"}"#),
            Expect::SuccessWith(r#""count":1"#),
        ),
        Step::new(
            "…and the count survives into the next process",
            &granted("kv-counter", "increment", r#"{"key":"visits"}"#),
            Expect::SuccessWith(r#""count":2"#),
        ),
        Step::new(
            "kv-counter bumps three counters, then panics: the call's writes are all discarded…",
            &granted(
                "kv-counter",
                "increment-all",
                r#"{"keys":["a","b","visits"],"then":"panic"}"#,
            ),
            Expect::Refused("trap"),
        ),
        Step::new(
            "…so `visits` is still 2",
            &granted("kv-counter", "get", r#"{"key":"visits"}"#),
            Expect::SuccessWith(r#""count":2"#),
        ),
        Step::new(
            "report streams a CSV: each chunk is printed as the plugin writes it",
            &[
                "run",
                "report",
                "--config",
                &policy,
                "--op",
                "sales",
                "--input",
                r#"{"rows":6,"chunk_rows":2}"#,
            ],
            Expect::SuccessWith("day,region,product,units,revenue_cents"),
        ),
        Step::new(
            "report streams 100,000 rows against its 256 KiB response limit: the chunks past it are refused and the call fails",
            &granted("report", "sales", r#"{"rows":100000}"#),
            Expect::Refused("output_too_large"),
        ),
        Step::new(
            "ledger opens two accounts with compare-and-swap…",
            &granted("ledger", "open", r#"{"account":"ada","cents":1000}"#),
            Expect::SuccessWith(r#""cents":1000"#),
        ),
        Step::new(
            "…and a second one",
            &granted("ledger", "open", r#"{"account":"bob","cents":0}"#),
            Expect::SuccessWith(r#""cents":0"#),
        ),
        Step::new(
            "ledger moves 300 cents: both legs commit together",
            &granted(
                "ledger",
                "transfer",
                r#"{"from":"ada","to":"bob","cents":300}"#,
            ),
            Expect::SuccessWith(r#"{"account":"bob","cents":300}"#),
        ),
        Step::new(
            "ledger refuses an overdraft",
            &granted(
                "ledger",
                "transfer",
                r#"{"from":"bob","to":"ada","cents":301}"#,
            ),
            Expect::RefusedWith("plugin_error", "holds 300 cents"),
        ),
        Step::new(
            "the same component without a kv grant: denied",
            &granted(
                "kv-counter-unprivileged",
                "increment",
                r#"{"key":"visits"}"#,
            ),
            Expect::RefusedWith("plugin_error", "denied"),
        ),
        Step::new(
            "file-reader reads its read-only mount",
            &granted("file-reader", "read", r#"{"path":"/data/hello.txt"}"#),
            Expect::SuccessWith("Hello from a read-only mount!"),
        ),
        Step::new(
            "file-reader writes its read-write mount",
            &granted(
                "file-reader",
                "write",
                r#"{"path":"/scratch/note.txt","content":"written by a plugin"}"#,
            ),
            Expect::SuccessWith(r#""bytes":19"#),
        ),
        Step::new(
            "file-reader writing into the read-only mount: denied",
            &granted(
                "file-reader",
                "write",
                r#"{"path":"/data/hello.txt","content":"overwritten"}"#,
            ),
            Expect::Refused("plugin_error"),
        ),
        Step::new(
            "file-reader reading outside its mounts: refused",
            &granted("file-reader", "read", r#"{"path":"/etc/passwd"}"#),
            Expect::Refused("plugin_error"),
        ),
        Step::new(
            "fs-escape tries `..`, absolute paths and planted symlinks: nothing escapes",
            &granted("fs-escape", "run", "{}"),
            Expect::SuccessWith(r#""escaped_any":false"#),
        ),
        Step::new(
            "http-fetch reaches the one origin it was granted",
            &granted("http-fetch", "get", &format!(r#"{{"url":"{origin}"}}"#)),
            Expect::SuccessWith(r#""status":200"#),
        ),
        Step::new(
            "http-fetch to the same host on another port: HTTP-request-denied",
            &granted("http-fetch", "get", &format!(r#"{{"url":"{other_port}"}}"#)),
            Expect::RefusedWith("plugin_error", "HttpRequestDenied"),
        ),
        Step::new(
            "forbidden-host tries hosts it was not granted and raw sockets: nothing reached",
            &granted(
                "forbidden-host",
                "run",
                &format!(
                    r#"{{"urls":["{other_port}","https://example.com/"],"socket_port":{}}}"#,
                    demo_setup::DEMO_HTTP_PORT
                ),
            ),
            Expect::SuccessWith(r#""reached_anything":false"#),
        ),
        Step::new(
            "router routes `greet` to the plugin providing `greeting` (hello)",
            &granted("router", "greet", r#"{"name":"Ada"}"#),
            Expect::SuccessWith("Bonjour, Ada!"),
        ),
        Step::new(
            "router routes `make` to `thumbnail`: a 4×2 image scaled to fit 2 pixels",
            &granted(
                "router",
                "make",
                r#"{"image":{"width":4,"height":2,"pixels":[0,1,2,3,10,11,12,13]},"max":2}"#,
            ),
            Expect::SuccessWith(r#""pixels":[0,2]"#),
        ),
        Step::new(
            "router requires the `greeting` and `thumbnail` capabilities: loaded alone, it is refused",
            &run(
                &plugin("router"),
                &["--op", "greet", "--input", r#"{"name":"Ada"}"#, "--json"],
            ),
            Expect::RefusedWith("missing_dependency", "no loaded plugin provides"),
        ),
        Step::new(
            "router has a `shout` route, but no grant to call `shouting`: denied",
            &granted("router", "shout", "{}"),
            Expect::RefusedWith("plugin_error", "was not granted"),
        ),
        Step::new(
            "call-bomb calls itself: refused as a cycle",
            &granted("call-bomb", "recurse", "{}"),
            Expect::SuccessWith("a cycle: call-bomb"),
        ),
        Step::new(
            "call-bomb calls hello 40 times in one call: stopped at max_calls (16)",
            &granted("call-bomb", "fanout", r#"{"target":"hello","times":40}"#),
            Expect::SuccessWith(r#""made":16"#),
        ),
        Step::new(
            "call-bomb calls a plugin it was not granted: denied",
            &granted("call-bomb", "ungranted", r#"{"target":"kv-counter"}"#),
            Expect::SuccessWith(r#""kind":"denied""#),
        ),
        Step::new(
            "spin-loop never returns: the 500 ms deadline stops it",
            &hostile("spin-loop", &["--timeout", "500ms", "--fuel", "none"]),
            Expect::Refused("timeout"),
        ),
        Step::new(
            "spin-loop again, this time stopped by a fuel budget",
            &hostile("spin-loop", &["--fuel", "5000000"]),
            Expect::Refused("out_of_fuel"),
        ),
        Step::new(
            "alloc-bomb grabs memory without end: stopped at 32 MiB",
            &hostile("alloc-bomb", &["--memory", "32MiB"]),
            Expect::Refused("memory_limit"),
        ),
        Step::new(
            "deep-recursion overflows the wasm stack",
            &hostile("deep-recursion", &[]),
            Expect::Refused("stack_overflow"),
        ),
        Step::new(
            "panic panics: a trap that names the panic",
            &hostile("panic", &[]),
            Expect::Refused("trap"),
        ),
        Step::new(
            "huge-output returns 16 MiB: refused over the 1 MiB output limit",
            &hostile("huge-output", &["--max-output", "1MiB"]),
            Expect::Refused("output_too_large"),
        ),
        Step::new(
            "handle-flood opens handles it never closes: stopped at its handle budget",
            &hostile("handle-flood", &[]),
            Expect::RefusedWith("budget_exceeded", "handles"),
        ),
        Step::new(
            "handle-flood hands the host 100,000 header values that all alias one \
             megabyte: stopped at its host-call budget, nothing copied",
            &attack("handle-flood", "alias-fields", &[]),
            Expect::RefusedWith("budget_exceeded", "host_call_bytes"),
        ),
        Step::new(
            "amplifier answers with 200,000 metadata entries aliasing one megabyte: \
             refused before the host copies them",
            &attack("amplifier", "metadata-alias", &[]),
            Expect::Refused("output_too_large"),
        ),
        Step::new(
            "kv-hoarder buffers 60 KiB writes in one call until the host refuses: stopped at \
             its per-call transaction budget (4 MiB), and nothing it wrote is kept",
            &attack("kv-hoarder", "buffer", &["--kv", "hoard"]),
            Expect::RefusedWith("plugin_error", "max_call_bytes"),
        ),
        Step::new(
            "slow-host-calls sleeps inside a host call: the outer timeout stops it",
            &hostile("slow-host-calls", &["--timeout", "500ms"]),
            Expect::Refused("timeout"),
        ),
    ];

    let mut failures = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        if let Err(err) = run_step(&capsule, index + 1, step) {
            println!("   !! {err:#}");
            failures.push(step.title.clone());
        }
    }
    // The runtime features live in one long-running host: show them through
    // the library, as an embedder (or `capsule serve`) uses them.
    println!();
    println!(
        "── the runtime: pipelines, events, reload, readiness, metrics (host/examples/runtime_tour.rs)"
    );
    if let Err(err) = run_example(workspace, "runtime_tour", &policy) {
        println!("   !! {err:#}");
        failures.push("the runtime tour".to_owned());
    }

    // Several hosts sharing state need a NATS server: the tour starts its
    // own when `nats-server` is installed, and says how to install it when
    // it is not.
    println!();
    println!(
        "── scale-out: two hosts, one NATS: one counter, each event handled once (host/examples/scale_out_tour.rs)"
    );
    if let Err(err) = run_example(workspace, "scale_out_tour", &policy) {
        println!("   !! {err:#}");
        failures.push("the scale-out tour".to_owned());
    }

    // Distribution needs an OCI registry: the tour starts its own when
    // `docker-registry` is installed, and says how to install it when it
    // is not.
    println!();
    println!(
        "── distribution: push to an OCI registry, search, run by reference (host/examples/registry_tour.rs)"
    );
    let tour = workspace
        .target
        .join("debug/examples")
        .join(format!("registry_tour{}", std::env::consts::EXE_SUFFIX));
    let ran = crate::shell::run(
        Command::new(tour)
            .arg(&capsule)
            .arg(&built.dir)
            .arg(&demo_dir),
    );
    if let Err(err) = ran {
        println!("   !! {err:#}");
        failures.push("the registry tour".to_owned());
    }

    println!();
    if failures.is_empty() {
        println!("demo: all {} steps behaved as expected", steps.len());
        Ok(())
    } else {
        bail!(
            "demo steps did not behave as expected: {}",
            failures.join("; ")
        )
    }
}

/// Runs one of the host's examples (built with the CLI by `plugins::build`)
/// on the demo policy.
fn run_example(workspace: &Workspace, name: &str, policy: &str) -> Result<()> {
    let example = workspace
        .target
        .join("debug/examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    crate::shell::run(Command::new(example).arg(policy))
}

fn run_step(capsule: &Path, number: usize, step: &Step) -> Result<()> {
    println!();
    println!("── {number}. {}", step.title);
    println!("   $ capsule {}", quote_args(&step.args));
    let output = Command::new(capsule)
        .args(&step.args)
        .output()
        .with_context(|| format!("cannot run {}", capsule.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stdout.lines() {
        println!("   │ {line}");
    }
    for line in stderr.lines() {
        println!("   ┆ {line}");
    }
    let code = output.status.code().unwrap_or(-1);
    let (success, kind, needle) = match step.expect {
        Expect::Success => (true, None, None),
        Expect::SuccessWith(needle) => (true, None, Some(needle)),
        Expect::Refused(kind) => (false, Some(kind), None),
        Expect::RefusedWith(kind, needle) => (false, Some(kind), Some(needle)),
    };
    if let Some(needle) = needle
        && !stdout.contains(needle)
    {
        bail!("expected the output to contain `{needle}`");
    }
    match (success, kind) {
        (true, _) if output.status.success() => {
            println!("   ✓ ok");
            Ok(())
        }
        (true, _) => bail!("expected success, got exit code {code}"),
        (false, Some(kind)) => {
            let wanted = format!(r#""kind":"{kind}""#);
            if output.status.success() {
                bail!("expected the sandbox to refuse with `{kind}`, but the call succeeded")
            } else if !stdout.contains(&wanted) {
                bail!("expected error kind `{kind}` (exit code {code})")
            } else {
                println!("   ✓ stopped: {kind} (exit code {code})");
                Ok(())
            }
        }
        (false, None) => unreachable!("every refusal names its kind"),
    }
}

/// Copies of hello that the host must refuse, one per way a signature fails.
struct SignatureSamples {
    unsigned: String,
    tampered: String,
    untrusted: String,
    truncated: String,
}

impl SignatureSamples {
    fn write(built: &plugins::Built, hello: &Path, dir: &Path) -> Result<SignatureSamples> {
        let signed = std::fs::read(hello)?;
        let path = |name: &str| dir.join(name);

        // The build output before signing.
        std::fs::copy(&built.unsigned_hello, path("hello-unsigned.wasm"))?;

        let mut tampered = signed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        std::fs::write(path("hello-tampered.wasm"), tampered)?;

        std::fs::write(path("hello-truncated.wasm"), &signed[..signed.len() / 2])?;

        let stranger = path("stranger");
        crate::shell::run(
            Command::new(&built.capsule)
                .args(["keygen", "--force", "--out"])
                .arg(&stranger),
        )?;
        crate::shell::run(
            Command::new(&built.capsule)
                .arg("sign")
                .arg(built.unsigned_hello.as_path())
                .arg("--key")
                .arg(stranger.with_extension("key"))
                .arg("--output")
                .arg(path("hello-untrusted.wasm")),
        )?;

        let show = |name: &str| path(name).display().to_string();
        Ok(SignatureSamples {
            unsigned: show("hello-unsigned.wasm"),
            tampered: show("hello-tampered.wasm"),
            untrusted: show("hello-untrusted.wasm"),
            truncated: show("hello-truncated.wasm"),
        })
    }
}

fn quote_args(args: &[String]) -> String {
    args.iter()
        .map(|arg| {
            if arg.contains(|c: char| c.is_whitespace() || "\"'{}$".contains(c)) {
                format!("'{arg}'")
            } else {
                arg.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
