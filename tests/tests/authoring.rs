//! The plugin author's side, end to end:
//!
//! - `hello` built with `cargo component build` (wasm32-wasip1 + the WASI
//!   adapter) behaves exactly like `hello` built for wasm32-wasip2;
//! - a crate from `capsule new` builds outside this workspace with
//!   `cargo build` and with `cargo component build`, and each result, signed
//!   with the CLI, runs under `capsule run`;
//! - a plugin built for another contract track is refused with
//!   `incompatible_contract` naming both versions, and `capsule inspect`
//!   shows its version.
//!
//! Needs `cargo xtask test` (or `cargo xtask build-component-plugins`) first:
//! it builds the plugins, the CLI (`target/debug/capsule`) and installs
//! cargo-component. Without cargo-component these tests fail, unless
//! `CAPSULE_SKIP_CARGO_COMPONENT=1` explicitly skips the ones that need it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use capsule_host::artifact::signature;
use capsule_host::{ErrorKind, Host, PluginDetails, PluginSpec, Request, SecretKey};
use capsule_tests::{
    host_builder, plugin_bytes, plugin_dir, plugin_path, plugins::HELLO, temp_dir,
};
use serde_json::{Value, json};

/// The cargo-component build of `hello` that `cargo xtask test` signs into
/// `target/plugins/`.
const HELLO_CARGO_COMPONENT: &str = "hello-cargo-component";
/// Set to `1` to skip the tests that need cargo-component.
const SKIP_ENV: &str = "CAPSULE_SKIP_CARGO_COMPONENT";

// ---------------------------------------------------------------------------
// Helpers

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The shared target directory, as xtask finds it.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// Where the scaffold and template projects build: one folder, so the guest
/// SDK and its dependencies compile once for all of them. Not `capsule dev`'s
/// project (its rebuilds are timed and must not wait for another test's
/// build) nor the guide's (its crate is named like the scaffold's).
fn projects_build_dir() -> PathBuf {
    target_dir().join("authoring-projects")
}

/// The `capsule` CLI that xtask builds before the tests.
fn capsule_cli() -> PathBuf {
    let path = target_dir()
        .join("debug")
        .join(format!("capsule{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask test` (or `cargo build -p capsule-cli`)",
        path.display()
    );
    path
}

fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Whether the cargo-component tests should run: `false` only when
/// `CAPSULE_SKIP_CARGO_COMPONENT=1` says so outside CI (with `CI=true` the
/// opt-out is ignored). Without cargo-component and without that opt-out,
/// fails the test with instructions.
fn cargo_component_required() -> bool {
    let in_ci = std::env::var_os("CI").is_some_and(|value| value == "true");
    if !in_ci && std::env::var_os(SKIP_ENV).is_some_and(|value| value == "1") {
        eprintln!("{SKIP_ENV}=1: skipping a test that needs cargo-component");
        return false;
    }
    let version = Command::new(cargo())
        .args(["component", "--version"])
        .output();
    match version {
        Ok(output) if output.status.success() => true,
        _ => panic!(
            "cargo-component is not installed, so the cargo-component path cannot be tested. \
             Run the tests with `cargo xtask test`, which installs it, or install it with \
             `cargo install cargo-component --locked`; set {SKIP_ENV}=1 to skip these tests \
             on purpose"
        ),
    }
}

/// Runs the CLI with a private compile cache; the environment's trust and
/// log settings are cleared.
fn capsule(args: &[&std::ffi::OsStr], cache: &Path) -> Output {
    capsule_at(&capsule_cli(), args, cache)
}

/// [`capsule`] with the binary at `bin`.
fn capsule_at(bin: &Path, args: &[&std::ffi::OsStr], cache: &Path) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("CAPSULE_TRUST")
        .env_remove("CAPSULE_LOG")
        .env("CAPSULE_CACHE_DIR", cache)
        .output()
        .expect("capsule runs")
}

/// `capsule(...)` that must succeed; returns its stdout.
fn capsule_ok(args: &[&std::ffi::OsStr], cache: &Path) -> String {
    capsule_ok_at(&capsule_cli(), args, cache)
}

/// [`capsule_ok`] with the binary at `bin`.
fn capsule_ok_at(bin: &Path, args: &[&std::ffi::OsStr], cache: &Path) -> String {
    let output = capsule_at(bin, args, cache);
    assert!(
        output.status.success(),
        "capsule {:?} failed with {}:\n{}",
        args,
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Shorthand for building CLI argument lists from strings and paths.
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        &[$(AsRef::<std::ffi::OsStr>::as_ref(&$arg)),*]
    };
}

fn stdout_json(output: &Output) -> Value {
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|err| {
        panic!(
            "not JSON ({err}): {text}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

// ---------------------------------------------------------------------------
// cargo-component and wasip2 builds of `hello` behave the same

/// What one call did, in a form comparable across builds: the payload as
/// text or the error's kind and cause, and the log lines.
#[derive(Debug, PartialEq)]
struct Observed {
    result: Result<String, (ErrorKind, String)>,
    logs: Vec<String>,
}

async fn observe(host: &Host, plugin: &str, request: Request) -> Observed {
    match host.call(plugin, request).await {
        Ok(outcome) => Observed {
            result: Ok(outcome
                .response
                .text()
                .expect("hello answers with text")
                .to_owned()),
            logs: outcome.logs.iter().map(|l| l.message.clone()).collect(),
        },
        Err(err) => Observed {
            result: Err((err.kind(), format!("{:?}", err.cause))),
            logs: err.logs.iter().map(|l| l.message.clone()).collect(),
        },
    }
}

/// Loads `path` as `name` with the given config, then makes the same calls
/// to it as to every other build.
async fn exercise(
    path: PathBuf,
    name: &str,
    config: &[(&str, &str)],
) -> (PluginDetails, Vec<Observed>) {
    let host = host_builder().build().unwrap();
    let bytes = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let spec = config
        .iter()
        .fold(PluginSpec::from_bytes(name, bytes), |spec, (key, value)| {
            spec.config(*key, *value)
        });
    let details = host.load(spec).await.unwrap_or_else(|err| panic!("{err}"));
    let mut observed = Vec::new();
    for request in [
        Request::new("greet", json!({"name": "Ada"}).to_string()),
        Request::new("greet", "not json"),
        Request::new("nope", "{}"),
        Request::new("env", ""),
    ] {
        observed.push(observe(&host, name, request).await);
    }
    (details, observed)
}

#[tokio::test]
async fn cargo_component_build_of_hello_matches_the_wasip2_build() {
    if !cargo_component_required() {
        return;
    }
    let component_path = plugin_dir().join(format!("{HELLO_CARGO_COMPONENT}.wasm"));
    assert!(
        component_path.is_file(),
        "{} is missing: `cargo xtask test` (or `cargo xtask build-component-plugins`) builds it \
         with `cargo component build`",
        component_path.display()
    );
    for config in [&[][..], &[("greeting", "Bonjour")][..]] {
        let (wasip2_details, wasip2) = exercise(plugin_path(HELLO), "hello", config).await;
        let (component_details, component) =
            exercise(component_path.clone(), "hello", config).await;
        assert_eq!(wasip2, component, "config {config:?}");
        assert_eq!(
            format!("{:?}", wasip2_details.info),
            format!("{:?}", component_details.info)
        );
        assert_eq!(
            wasip2_details.contract_version,
            component_details.contract_version
        );
        assert_ne!(
            wasip2_details.digest, component_details.digest,
            "the two builds are different files"
        );
    }

    // The calls really answered what hello answers.
    let (_, observed) = exercise(component_path.clone(), "hello", &[("greeting", "Bonjour")]).await;
    assert_eq!(
        observed[0].result,
        Ok(r#"{"greeting":"Bonjour, Ada!"}"#.to_owned())
    );
    assert_eq!(observed[0].logs, ["handling `greet`"]);
    match &observed[1].result {
        Err((ErrorKind::PluginError, cause)) => assert!(cause.contains("InvalidInput"), "{cause}"),
        other => panic!("expected invalid input, got {other:?}"),
    }
    match &observed[2].result {
        Err((ErrorKind::PluginError, cause)) => {
            assert!(
                cause.contains("Unsupported") && cause.contains("nope"),
                "{cause}"
            )
        }
        other => panic!("expected unsupported, got {other:?}"),
    }
    assert_eq!(observed[3].result, Ok(r#"{"vars":{}}"#.to_owned()));

    // And it is cargo-component's output: a core module adapted to WASI 0.2
    // with the preview 1 adapter.
    let bytes = std::fs::read(&component_path).unwrap();
    let summary = capsule_host::artifact::inspect::inspect(&bytes).unwrap();
    assert!(
        contains(&bytes, b"wasi_snapshot_preview1"),
        "no WASI preview 1 adapter in {}",
        component_path.display()
    );
    assert!(
        contains(&bytes, b"cargo-component"),
        "cargo-component left no trace in {} (custom sections: {:?})",
        component_path.display(),
        summary.custom_sections
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

// ---------------------------------------------------------------------------
// `capsule new`

#[test]
fn capsule_new_refuses_bad_names_and_existing_directories() {
    let work = temp_dir("authoring-new-refusals");
    let cache = work.join("cache");
    for bad in ["2fast", "has space", "fn", "capsule-guest", ""] {
        let output = capsule(args!["new", bad, "--path", work], &cache);
        assert_eq!(output.status.code(), Some(2), "name {bad:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("error [config]"), "{stderr}");
    }

    let existing = work.join("taken");
    std::fs::create_dir_all(&existing).unwrap();
    std::fs::write(existing.join("keep.txt"), "mine").unwrap();
    let output = capsule(args!["new", "taken", "--path", work], &cache);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    let entries: Vec<_> = std::fs::read_dir(&existing).unwrap().collect();
    assert_eq!(
        entries.len(),
        1,
        "nothing was written into the existing directory"
    );

    let output = capsule(
        args!["new", "fine", "--path", work, "--sdk", work.join("no-sdk")],
        &cache,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--sdk"));
    assert!(
        !work.join("fine").exists(),
        "a refused scaffold leaves nothing behind"
    );
}

/// Runs cargo for the scaffold in `project`, building into `build_dir`.
fn cargo_in(project: &Path, build_dir: &Path, args: &[&str]) {
    let output = Command::new(cargo())
        .args(args)
        .current_dir(project)
        .env("CARGO_TARGET_DIR", build_dir)
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "`cargo {}` failed in {}:\n{}",
        args.join(" "),
        project.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The triple of the machine running the tests, as rustc reports it.
fn host_triple() -> String {
    let output = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .trim()
        .to_owned()
}

#[test]
fn a_capsule_new_scaffold_builds_both_ways_and_runs_signed() {
    if !cargo_component_required() {
        return;
    }
    // Out of tree: only the built `capsule` binary, copied into an empty
    // folder outside the workspace, with nothing of this checkout to find.
    let work = temp_dir("authoring-scaffold");
    let cache = work.join("cache");
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let alone = bin.join(capsule_cli().file_name().unwrap());
    std::fs::copy(capsule_cli(), &alone).unwrap();
    // Every step below runs the copy.
    let capsule = |args: &[&std::ffi::OsStr], cache: &Path| capsule_at(&alone, args, cache);
    let capsule_ok = |args: &[&std::ffi::OsStr], cache: &Path| capsule_ok_at(&alone, args, cache);
    let started = std::time::Instant::now();
    let created = Command::new(&alone)
        .args(["new", "demo-plugin"])
        .current_dir(&work)
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let created = String::from_utf8_lossy(&created.stdout);
    let project = work.join("demo-plugin");
    assert!(created.contains("cargo build --release"), "{created}");
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        ".cargo/config.toml",
        ".gitignore",
        "README.md",
        "wit/plugin.wit",
        "vendor/capsule-guest/Cargo.toml",
        "vendor/capsule-guest/src/lib.rs",
        "vendor/capsule-guest/wit/plugin.wit",
    ] {
        assert!(project.join(file).is_file(), "{file} was not created");
    }
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(r#"capsule-guest = { path = "vendor/capsule-guest" }"#),
        "{manifest}"
    );
    assert!(
        !manifest.contains(&root().display().to_string()),
        "the scaffold names this checkout: {manifest}"
    );

    // Builds land in the folder of the shared target directory that the
    // template projects build in too (the crate names differ): the SDK and
    // its dependencies compile once per run, and repeated runs only
    // recompile the projects themselves.
    let build_dir = projects_build_dir();
    let built = |target: &str| {
        build_dir
            .join(target)
            .join("release")
            .join("demo_plugin.wasm")
    };
    let keep = |from: PathBuf, how: &str| {
        let dir = work.join(how);
        std::fs::create_dir_all(&dir).unwrap();
        let to = dir.join("demo-plugin.wasm");
        std::fs::copy(&from, &to)
            .unwrap_or_else(|err| panic!("{} was not built: {err}", from.display()));
        to
    };

    cargo_in(
        &project,
        &build_dir,
        &["build", "--release", "--target", "wasm32-wasip2"],
    );
    let with_cargo = keep(built("wasm32-wasip2"), "cargo");
    // cargo-component ignores the wasip2 default of `.cargo/config.toml`: it
    // builds a wasip1 core module and adapts it to WASI 0.2.
    cargo_in(&project, &build_dir, &["component", "build", "--release"]);
    let with_component = keep(built("wasm32-wasip1"), "cargo-component");
    let adapted = std::fs::read(&with_component).unwrap();
    assert!(
        contains(&adapted, b"cargo-component") && contains(&adapted, b"wasi_snapshot_preview1"),
        "the wasip1 build was not componentized by cargo-component"
    );

    // The scaffold's own unit tests run natively.
    let host_triple = host_triple();
    cargo_in(&project, &build_dir, &["test", "--target", &host_triple]);

    let key = work.join("dev");
    capsule_ok(args!["keygen", "--out", key], &cache);
    let secret = work.join("dev.key");
    let public = work.join("dev.pub");
    let mut answers = Vec::new();
    for plugin in [&with_cargo, &with_component] {
        // Unsigned, it is refused.
        let refused = capsule(
            args![
                "run", plugin, "--trust", public, "--op", "greet", "--input", "{}"
            ],
            &cache,
        );
        assert_eq!(refused.status.code(), Some(3), "{}", plugin.display());

        capsule_ok(args!["sign", plugin, "--key", secret], &cache);
        capsule_ok(args!["verify", plugin, "--trust", public], &cache);
        let inspected = capsule(args!["inspect", plugin, "--json"], &cache);
        assert_eq!(
            stdout_json(&inspected)["contract_version"],
            capsule_host::CONTRACT_VERSION
        );

        let greeted = capsule_ok(
            args![
                "run",
                plugin,
                "--trust",
                public,
                "--op",
                "greet",
                "--input",
                r#"{"name":"Ada"}"#
            ],
            &cache,
        );
        assert_eq!(
            greeted,
            "{\"greeting\":\"Hello, Ada!\"}\n",
            "{}",
            plugin.display()
        );
        if plugin == &with_cargo {
            eprintln!(
                "from `capsule new` to the first answer (both builds, native tests, keys): {:?}",
                started.elapsed()
            );
        }

        let configured = capsule(
            args![
                "run",
                plugin,
                "--trust",
                public,
                "--op",
                "greet",
                "--input",
                r#"{"name":"Ada"}"#,
                "--set",
                "greeting=Bonjour",
                "--json"
            ],
            &cache,
        );
        let configured = stdout_json(&configured);
        assert_eq!(configured["ok"], true, "{configured}");
        assert_eq!(configured["plugin"], "demo-plugin");
        assert_eq!(configured["output"], json!({"greeting": "Bonjour, Ada!"}));
        assert_eq!(configured["logs"][0]["message"], "greeting Ada");

        let unknown = capsule(
            args!["run", plugin, "--trust", public, "--op", "nope", "--json"],
            &cache,
        );
        assert_eq!(unknown.status.code(), Some(4));
        let unknown = stdout_json(&unknown);
        assert_eq!(unknown["error"]["kind"], "plugin_error", "{unknown}");

        answers.push((
            greeted,
            configured["output"].clone(),
            unknown["error"].clone(),
        ));
    }
    assert!(
        answers.windows(2).all(|pair| pair[0] == pair[1]),
        "the two builds answer differently: {answers:#?}"
    );

    // The scaffold's own policy: the signed plugin and the key beside it.
    std::fs::copy(&with_cargo, project.join("demo-plugin.wasm")).unwrap();
    std::fs::copy(&public, project.join("dev.pub")).unwrap();
    let policy = project.join("capsule.toml");
    capsule_ok(args!["check", "--config", policy], &cache);
    let greeted = capsule_ok(
        args![
            "run",
            "demo-plugin",
            "--config",
            policy,
            "--op",
            "greet",
            "--input",
            r#"{"name":"Ada"}"#
        ],
        &cache,
    );
    assert_eq!(greeted, "{\"greeting\":\"Hello, Ada!\"}\n");
}

// ---------------------------------------------------------------------------
// Templates

// ---------------------------------------------------------------------------
// `capsule new --lang python|js`

/// The toolchains `cargo xtask build-plugins` installed under
/// `target/tools` for the Python and JavaScript examples.
fn polyglot_tool(relative: &str) -> PathBuf {
    let path = target_dir().join("tools").join(relative);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask build-plugins` (or `cargo xtask test`), which \
         installs the pinned Python and JavaScript toolchains",
        path.display()
    );
    path
}

/// `capsule new NAME --lang LANG` out of tree, built with `build`, then
/// signed, checked and run under its own policy.
fn scaffold_in_language(lang: &str, name: &str, build: impl FnOnce(&Path)) {
    let work = temp_dir(&format!("authoring-{lang}"));
    let cache = work.join("cache");
    let created = capsule_ok(args!["new", name, "--lang", lang, "--path", work], &cache);
    assert!(created.contains("capsule sign"), "{created}");
    let project = work.join(name);
    build(&project);
    let wasm = project.join(format!("{name}.wasm"));
    assert!(wasm.is_file(), "the build wrote no {}", wasm.display());

    capsule_ok(args!["keygen", "--out", project.join("dev")], &cache);
    let signed = capsule_ok(
        args!["sign", wasm, "--key", project.join("dev.key")],
        &cache,
    );
    assert!(signed.contains("1 operation(s)"), "{signed}");
    let policy = project.join("capsule.toml");
    capsule_ok(args!["check", "--config", policy], &cache);
    let greet = |input: &str| {
        stdout_json(&capsule(
            args![
                "run", name, "--config", policy, "--op", "greet", "--input", input, "--json"
            ],
            &cache,
        ))
    };
    let result = greet(r#"{"name":"Ada"}"#);
    assert_eq!(
        result["output"],
        json!({"greeting": "Hello, Ada!"}),
        "{result}"
    );
    assert_eq!(result["logs"][0]["message"], "greeting Ada", "{result}");
    let refused = greet(r#"{"name":""}"#);
    assert_eq!(refused["error"]["kind"], "plugin_error", "{refused}");
    std::fs::remove_dir_all(work).ok();
}

#[test]
fn capsule_new_lang_python_builds_and_runs_signed() {
    let componentize_py = polyglot_tool("python/bin/componentize-py");
    scaffold_in_language("python", "py-greeter", |project| {
        // The README's build line, with the toolchain xtask installed.
        let status = Command::new(&componentize_py)
            .args([
                "-d",
                "wit",
                "-w",
                "plugin",
                "componentize",
                "app",
                "-o",
                "py-greeter.wasm",
            ])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(project)
            .status()
            .unwrap();
        assert!(status.success(), "componentize-py failed");
    });
}

#[test]
fn capsule_new_lang_js_builds_and_runs_signed() {
    scaffold_in_language("js", "js-greeter", |project| {
        // The README's build lines: exactly the locked packages, then the
        // package's build script.
        for args in [
            &["ci", "--no-audit", "--no-fund", "--loglevel=error"][..],
            &["run", "--silent", "build"],
        ] {
            let status = Command::new("npm")
                .args(args)
                .current_dir(project)
                .status()
                .unwrap();
            assert!(status.success(), "npm {args:?} failed");
        }
    });
}

/// One `capsule new --template` scaffold, made by a copy of the CLI alone
/// in `work`, built for wasm32-wasip2, tested natively (its MockHost tests),
/// signed with a fresh key in its folder as `NAME.wasm`, and checked
/// against its own `capsule.toml`. Returns the project folder and the CLI.
fn template_project(work: &Path, name: &str, template: &str) -> (PathBuf, PathBuf) {
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let alone = bin.join(capsule_cli().file_name().unwrap());
    if !alone.exists() {
        std::fs::copy(capsule_cli(), &alone).unwrap();
    }
    let cache = work.join("cache");
    capsule_ok_at(
        &alone,
        args!["new", name, "--template", template, "--path", work],
        &cache,
    );
    let project = work.join(name);
    let build_dir = projects_build_dir();
    cargo_in(
        &project,
        &build_dir,
        &["build", "--release", "--target", "wasm32-wasip2"],
    );
    cargo_in(&project, &build_dir, &["test", "--target", &host_triple()]);
    let built = build_dir
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let signed = project.join(format!("{name}.wasm"));
    capsule_ok_at(
        &alone,
        args!["keygen", "--out", project.join("dev")],
        &cache,
    );
    capsule_ok_at(
        &alone,
        args![
            "sign",
            built,
            "--key",
            project.join("dev.key"),
            "--output",
            signed
        ],
        &cache,
    );
    let checked = capsule_ok_at(
        &alone,
        args!["check", "--config", project.join("capsule.toml")],
        &cache,
    );
    assert!(checked.contains("signature: ok"), "{checked}");
    (project, alone)
}

#[test]
fn the_pipeline_stage_template_reshapes_a_record_under_its_policy() {
    let work = temp_dir("template-stage");
    let (project, alone) = template_project(&work, "demo-stage", "pipeline-stage");
    let answer = capsule_ok_at(
        &alone,
        args![
            "run",
            "demo-stage",
            "--config",
            project.join("capsule.toml"),
            "--op",
            "process",
            "--input",
            r#"{"email":" Ada@Example.ORG ","name":"Ada   Lovelace"}"#
        ],
        &work.join("cache"),
    );
    let answer: Value = serde_json::from_str(answer.trim()).unwrap();
    assert_eq!(
        answer,
        json!({"email": "ada@example.org", "name": "Ada Lovelace", "stages": ["demo-stage"]})
    );
}

#[test]
fn the_http_client_template_fetches_only_what_it_was_granted() {
    use std::io::{Read, Write};
    let work = temp_dir("template-http");
    let (project, alone) = template_project(&work, "demo-fetch", "http-client");
    // A one-shot HTTP server on loopback.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let read = stream.read(&mut request).unwrap();
        let line = String::from_utf8_lossy(&request[..read])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong")
            .unwrap();
        line
    });
    let policy = project.join("capsule.toml");
    let fetch = |extra: &[&str]| {
        let mut args: Vec<std::ffi::OsString> = vec![
            "run".into(),
            "demo-fetch".into(),
            "--config".into(),
            policy.clone().into(),
            "--op".into(),
            "fetch".into(),
            "--input".into(),
            r#"{"path":"/ping"}"#.into(),
            "--set".into(),
            format!("base_url={origin}").into(),
            "--json".into(),
        ];
        args.extend(extra.iter().map(std::ffi::OsString::from));
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        stdout_json(&capsule_at(&alone, &args, &work.join("cache")))
    };
    // The policy grants only api.example.com: loopback is denied.
    let denied = fetch(&[]);
    assert_eq!(denied["error"]["kind"], "plugin_error", "{denied}");
    assert!(
        denied["error"]["message"]
            .as_str()
            .unwrap()
            .contains("denied"),
        "{denied}"
    );
    let fetched = fetch(&["--allow-http", &origin]);
    assert_eq!(
        fetched["output"],
        json!({"status": 200, "body": "pong"}),
        "{fetched}"
    );
    assert_eq!(server.join().unwrap(), "GET /ping HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_consumer_template_counts_events_under_its_policy() {
    let work = temp_dir("template-events");
    let (project, _) = template_project(&work, "demo-consumer", "event-consumer");
    let policy = capsule_host::Policy::load(&project.join("capsule.toml")).unwrap();
    let host = capsule_host::HostBuilder::from_policy(&policy)
        .build()
        .unwrap();
    assert!(host.load_policy(&policy).await.is_empty());
    host.publish("orders.created", r#"{"id":7}"#).await.unwrap();
    host.publish("orders.created", "not json").await.unwrap();
    host.publish("invoices.paid", "{}").await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let quiet = host.status("demo-consumer").unwrap().queued_events == 0;
        if quiet && !host.dead_letters().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the events were not handled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let count = host
        .call(
            "demo-consumer",
            Request::new("count", r#"{"topic":"orders.created"}"#),
        )
        .await
        .unwrap();
    assert_eq!(
        count.response.payload,
        br#"{"topic":"orders.created","count":1}"#
    );
    let dead = host.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].reason.contains("not JSON"), "{}", dead[0].reason);
    host.shutdown(std::time::Duration::from_secs(2)).await;
}

// ---------------------------------------------------------------------------
// capsule dev

/// Lines a child prints, read on a thread, awaited with a deadline.
struct Lines {
    receiver: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn of(stream: impl std::io::Read + Send + 'static) -> Lines {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            receiver,
            seen: Vec::new(),
        }
    }

    /// Waits (up to `seconds`) for a line containing `needle`; returns it.
    fn until(&mut self, needle: &str, seconds: u64) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} in time; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

/// POSTs `body` to `path` on `address` and returns the response body.
fn post(address: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or(answer)
}

#[test]
fn capsule_dev_rebuilds_resigns_and_reloads_on_every_change() {
    let work = temp_dir("capsule-dev");
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let alone = bin.join(capsule_cli().file_name().unwrap());
    std::fs::copy(capsule_cli(), &alone).unwrap();
    capsule_ok_at(
        &alone,
        args!["new", "demo-dev", "--path", work],
        &work.join("cache"),
    );
    let project = work.join("demo-dev");
    let policy = project.join("capsule.toml");

    let mut child = Command::new(&alone)
        .args(["dev", "--config"])
        .arg(&policy)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--op",
            "greet",
            "--input",
            r#"{"name":"Ada"}"#,
        ])
        .current_dir(&project)
        .env("CAPSULE_DEV_KEY", work.join("dev.key"))
        .env("CAPSULE_CACHE_DIR", work.join("cache"))
        .env("CARGO_TARGET_DIR", target_dir().join("authoring-dev"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Lines::of(child.stdout.take().unwrap());
    lines.until("created the dev key", 10);
    let serving = lines.until("serving `demo-dev` on http://", 300);
    let address = serving
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    lines.until(r#"greet → {"greeting":"Hello, Ada!"}"#, 30);
    // The dev key is trusted by capsule dev alone: nothing was written into
    // the project's policy or folder.
    assert!(!project.join("dev.pub").exists());
    assert!(
        std::fs::read_to_string(&policy)
            .unwrap()
            .contains(r#"trusted_keys = ["dev.pub"]"#)
    );

    // A change to the code: rebuilt, re-signed, reloaded, called.
    let lib = project.join("src/lib.rs");
    let code = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(&lib, code.replace(r#""{word}, {}!""#, r#""{word}, {}!!""#)).unwrap();
    lines.until("reloaded `demo-dev` (generation 1", 120);
    lines.until(r#"greet → {"greeting":"Hello, Ada!!"}"#, 30);

    // A change to the policy: the host restarts under it, on the same port.
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        text.replace(r#"greeting = "Hello""#, r#"greeting = "Hej""#),
    )
    .unwrap();
    lines.until("the policy changed", 120);
    lines.until(&format!("serving `demo-dev` on http://{address}"), 30);
    lines.until(r#"greet → {"greeting":"Hej, Ada!!"}"#, 30);

    // A build error: reported, and the last good version keeps serving.
    std::fs::write(&lib, format!("{}\nthis does not compile\n", code)).unwrap();
    lines.until("keeps serving its previous version", 120);
    assert_eq!(
        post(
            &address,
            "/v1/plugins/demo-dev/call?op=greet",
            r#"{"name":"Ada"}"#
        ),
        r#"{"greeting":"Hej, Ada!!"}"#
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    lines.until("stopped", 30);
    assert!(child.wait().unwrap().success());
}

// ---------------------------------------------------------------------------
// docs/authoring.md is true (its Rust snippets are guest-sdk doctests)

/// The fenced blocks of a markdown text: (language, body, the `## ` heading
/// they are under).
fn fenced_blocks(markdown: &str) -> Vec<(String, String, String)> {
    let mut blocks = Vec::new();
    let mut heading = String::new();
    let mut open: Option<(String, String, usize)> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        match &mut open {
            None if trimmed.starts_with("```") => {
                let indent = line.len() - trimmed.len();
                open = Some((trimmed[3..].trim().to_owned(), String::new(), indent));
            }
            None => {
                if let Some(title) = line.strip_prefix("## ") {
                    heading = title.to_owned();
                }
            }
            Some((language, body, indent)) => {
                if trimmed.starts_with("```") {
                    blocks.push((
                        std::mem::take(language),
                        std::mem::take(body),
                        heading.clone(),
                    ));
                    open = None;
                } else {
                    body.push_str(line.get(*indent..).unwrap_or(line.trim_start()));
                    body.push('\n');
                }
            }
        }
    }
    blocks
}

fn guide() -> String {
    std::fs::read_to_string(root().join("docs/authoring.md")).unwrap()
}

/// Every TOML snippet of the guide is a policy (or, if it is one key, a
/// plugin section's key) that Capsule accepts.
#[test]
fn the_guides_policy_snippets_parse_as_policies() {
    let base = temp_dir("guide-policies");
    let mut checked = 0;
    for (language, body, heading) in fenced_blocks(&guide()) {
        // A `Cargo.toml` snippet (a plugin's metadata) is not a policy.
        if language != "toml" || body.trim_start().starts_with("[package") {
            continue;
        }
        let text = if body.contains("[plugins.") {
            body.clone()
        } else {
            format!("[plugins.demo]\npath = \"demo-plugin.wasm\"\n{body}")
        };
        // What the policy names must exist, as it would next to a real one.
        let table: toml::Table = text
            .parse()
            .unwrap_or_else(|err| panic!("{heading}: {err}"));
        std::fs::write(base.join("demo-plugin.wasm"), b"").unwrap();
        let public = SecretKey::generate().unwrap().public_key().to_pem();
        for key in table
            .get("host")
            .and_then(|h| h.get("trusted_keys"))
            .and_then(|k| k.as_array())
            .into_iter()
            .flatten()
        {
            std::fs::write(base.join(key.as_str().unwrap()), &public).unwrap();
        }
        for plugin in table["plugins"].as_table().unwrap().values() {
            // Secrets the snippet reads must be there, as they would be.
            for source in plugin
                .get("secrets")
                .and_then(|s| s.as_table())
                .into_iter()
                .flat_map(|secrets| secrets.values())
            {
                if let Some(variable) = source.get("env").and_then(|v| v.as_str()) {
                    // SAFETY: only this test reads the guide's variables.
                    unsafe { std::env::set_var(variable, "guide-secret") };
                }
                if let Some(file) = source.get("file").and_then(|f| f.as_str()) {
                    let path = base.join(file);
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(path, "guide-secret\n").unwrap();
                }
            }
            for mount in plugin
                .get("files")
                .and_then(|f| f.as_array())
                .into_iter()
                .flatten()
            {
                if mount.get("create").and_then(|c| c.as_bool()) != Some(true) {
                    let dir = base.join(mount["host"].as_str().unwrap());
                    std::fs::create_dir_all(dir).unwrap();
                }
            }
        }
        capsule_host::Policy::parse(&text, &base.join("capsule.toml"), &base)
            .unwrap_or_else(|errors| panic!("the snippet under `{heading}`:\n{text}\n{errors}"));
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} policy snippets found");
}

/// The shell steps of sections 1–4, run in order as a new author would run
/// them: `capsule` is a copy of the binary alone, HOME an empty folder.
/// Comment lines starting with `# {` are the JSON the command before them
/// prints. A ```toml block whose first line is `# FILE` is written to FILE.
#[test]
fn the_guides_first_steps_run_as_written() {
    if !cargo_component_required() {
        return;
    }
    let work = temp_dir("guide-steps");
    let home = work.join("home");
    let bin = work.join("bin");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(capsule_cli(), bin.join(capsule_cli().file_name().unwrap())).unwrap();
    // The real toolchain, wherever HOME points.
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let rustup_home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".rustup"));
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();

    let mut script = String::from("set -euo pipefail\n");
    let mut expected = Vec::new();
    let mut steps = 0;
    for (language, body, heading) in fenced_blocks(&guide()) {
        let section: u32 = heading
            .split('.')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if !(1..=4).contains(&section) {
            continue;
        }
        match language.as_str() {
            "sh" => {
                for line in body.lines() {
                    if let Some(json) = line.strip_prefix("# {") {
                        // The command before prints this: compare its output.
                        expected.push(format!("{{{json}"));
                        script.push_str(&format!(
                            "diff <(printf '%s\\n' \"$last\") <(printf '%s\\n' {:?})\n",
                            format!("{{{json}")
                        ));
                    } else if line.starts_with('#') || line.trim().is_empty() {
                    } else if line.starts_with("cd ") || line.starts_with("capsule keygen") {
                        script.push_str(line);
                        script.push('\n');
                    } else {
                        let command = line.split(" #").next().unwrap().trim_end();
                        script.push_str(&format!("last=$({command})\nprintf '%s\\n' \"$last\"\n"));
                        steps += 1;
                    }
                }
                if body.contains("capsule new") {
                    // Builds share this test suite's cargo cache folder; the
                    // guide's `target/...` paths still hold.
                    script.push_str(&format!(
                        "ln -s {:?} target\n",
                        target_dir().join("guide-steps").display().to_string()
                    ));
                }
            }
            "toml" => {
                if let Some(file) = body.lines().next().and_then(|l| l.strip_prefix("# ")) {
                    script.push_str(&format!(
                        "cat > {file} <<'CAPSULE_EOF'\n{body}CAPSULE_EOF\n"
                    ));
                }
            }
            _ => {}
        }
    }
    assert!(steps >= 8 && expected.len() >= 3, "{script}");
    std::fs::create_dir_all(target_dir().join("guide-steps")).unwrap();
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&work)
        .env_clear()
        .env("PATH", path)
        .env("HOME", &home)
        .env("CARGO_HOME", cargo_home)
        .env("RUSTUP_HOME", rustup_home)
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the guide's steps failed ({}):\n{script}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---------------------------------------------------------------------------
// Contract versioning

/// `bytes` with every `capsule:plugin[/item]@{from}` name rewritten to
/// `@{to}` (same length, so every section keeps its size), and how many
/// names were rewritten.
fn retarget_contract(bytes: &[u8], from: &str, to: &str) -> (Vec<u8>, usize) {
    assert_eq!(from.len(), to.len(), "versions must have the same length");
    let package = b"capsule:plugin";
    let mut out = bytes.to_vec();
    let mut count = 0;
    let mut at = 0;
    while let Some(offset) = out[at..]
        .windows(package.len())
        .position(|window| window == package)
    {
        let mut end = at + offset + package.len();
        if out.get(end) == Some(&b'/') {
            end += 1;
            while out
                .get(end)
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            {
                end += 1;
            }
        }
        let version = format!("@{from}");
        if out[end..].starts_with(version.as_bytes()) {
            out[end + 1..end + 1 + from.len()].copy_from_slice(to.as_bytes());
            count += 1;
        }
        at = end;
    }
    (out, count)
}

/// hello as built, re-targeted at contract `version` and signed with a new
/// key.
fn hello_for_contract(version: &str) -> (Vec<u8>, SecretKey) {
    let unsigned = signature::unsigned_content(&plugin_bytes(HELLO)).unwrap();
    let (retargeted, count) = retarget_contract(&unsigned, capsule_host::CONTRACT_VERSION, version);
    assert!(count >= 5, "only {count} contract names found in hello");
    let key = SecretKey::generate().unwrap();
    let signed = signature::sign(&retargeted, &key).unwrap().embedded;
    (signed, key)
}

#[tokio::test]
async fn a_plugin_for_another_contract_track_is_refused_naming_both_versions() {
    let (bytes, key) = hello_for_contract("0.3.0");
    let summary = capsule_host::artifact::inspect::inspect(&bytes).unwrap();
    assert_eq!(summary.contract_version(), Some("0.3.0"));

    let host = Host::builder().trust(key.public_key()).build().unwrap();
    let err = host
        .load(PluginSpec::from_bytes(HELLO, bytes.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::IncompatibleContract, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("capsule:plugin@0.3.0")
            && message.contains("capsule:plugin@0.2.0")
            && message.contains("capsule:plugin@0.1.0"),
        "the error must name the plugin's and the host's versions: {message}"
    );

    // The CLI shows the version and refuses it with exit code 3.
    let work = temp_dir("authoring-contract");
    let cache = work.join("cache");
    let path = work.join("hello-0.3.wasm");
    std::fs::write(&path, &bytes).unwrap();
    std::fs::write(work.join("k.pub"), key.public_key().to_raw()).unwrap();
    let inspected = capsule(args!["inspect", path, "--json"], &cache);
    assert!(inspected.status.success());
    assert_eq!(stdout_json(&inspected)["contract_version"], "0.3.0");
    let text = capsule_ok(args!["inspect", path], &cache);
    assert!(text.contains("contract:  capsule:plugin@0.3.0"), "{text}");

    let run = capsule(
        args![
            "run",
            path,
            "--trust",
            work.join("k.pub"),
            "--op",
            "greet",
            "--json"
        ],
        &cache,
    );
    assert_eq!(run.status.code(), Some(3));
    let run = stdout_json(&run);
    assert_eq!(run["error"]["kind"], "incompatible_contract", "{run}");
    let message = run["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("0.3.0") && message.contains("0.2.0"),
        "{message}"
    );
}

#[tokio::test]
async fn a_plugin_for_a_newer_patch_of_the_contract_loads() {
    // 0.2.9 is on the same track as 0.2.0: nothing it could use was removed
    // or changed, so the host links it.
    let (bytes, key) = hello_for_contract("0.2.9");
    let host = Host::builder().trust(key.public_key()).build().unwrap();
    let details = host
        .load(PluginSpec::from_bytes(HELLO, bytes))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(details.contract_version.as_deref(), Some("0.2.9"));
    let outcome = host
        .call(HELLO, Request::new("greet", r#"{"name":"Ada"}"#))
        .await
        .unwrap();
    assert_eq!(
        outcome.response.text(),
        Some(r#"{"greeting":"Hello, Ada!"}"#)
    );
}
