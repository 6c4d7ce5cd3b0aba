//! Tests of the policy file: parsing, locating errors, validation.

use super::*;
use crate::services::files::Access;
#[cfg(unix)]
use crate::test_support::{mkfifo, temp_dir};

fn parse(text: &str) -> Result<Policy, PolicyError> {
    let base = std::env::temp_dir();
    Policy::parse(text, Path::new("capsule.toml"), &base).map_err(|errors| errors.first().clone())
}

fn wasm_file() -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("capsule-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.wasm");
    std::fs::write(&path, b"\0asm").unwrap();
    let text = path.display().to_string();
    (dir, text)
}

#[test]
fn a_full_policy_parses() {
    let (dir, wasm) = wasm_file();
    let text = format!(
        r#"
[host]
allow_unsigned = true
data_dir = "data"
[host.limits]
timeout = "2s"
memory = "32MiB"
fuel = "none"
[host.pool]
instances = 32
max_memory = "256MiB"
max_wasm_stack = "1MiB"

[plugins.counter]
path = "{wasm}"
kv = {{ namespace = "shared", max_keys = 5, max_total = "1KiB" }}
files = [{{ host = "{dir}", guest = "/data", access = "read-write" }}]
http = {{ allow = ["https://api.example.com", "https://*.example.org:8443"], max_requests = 2 }}
env = {{ LANG = "en" }}
config = {{ greeting = "Hi" }}
events = {{ publish = ["counter.*"], subscribe = ["orders.>"] }}
readiness = false
[plugins.counter.limits]
fuel = 1_000_000

[plugins.other]
path = "{wasm}"
[plugins.other.limits]
max_instances = 1
"#,
        dir = dir.display()
    );
    let policy = parse(&text).unwrap();
    assert!(!policy.plugins["counter"].readiness);
    assert!(
        policy.plugins["other"].readiness,
        "counts unless it says not"
    );
    assert_eq!(policy.host.default_limits.timeout, Duration::from_secs(2));
    assert_eq!(policy.host.default_limits.fuel, None);
    let pool = policy.host.engine.pooling.as_ref().unwrap();
    assert_eq!(
        (pool.total_instances, pool.max_memory_bytes),
        (32, 256 << 20)
    );
    assert_eq!(policy.host.engine.max_wasm_stack, 1 << 20);
    let plugin = &policy.plugins["counter"];
    assert_eq!(plugin.limits.fuel, Some(1_000_000));
    assert_eq!(
        plugin.limits.memory_bytes,
        32 << 20,
        "defaults apply under overrides"
    );
    let kv = plugin.grants.kv.as_ref().unwrap();
    assert_eq!(
        (kv.namespace.as_str(), kv.max_keys, kv.max_total_bytes),
        ("shared", 5, 1024)
    );
    assert_eq!(plugin.grants.files[0].access, Access::ReadWrite);
    assert_eq!(
        plugin.grants.http.as_ref().unwrap().max_requests_per_call,
        2
    );
    assert!(plugin.grants.events.may_publish("counter.up"));
    assert_eq!(plugin.grants.env["LANG"], "en");
    assert_eq!(
        policy.host.data_dir,
        Some(std::env::temp_dir().join("data"))
    );
}

#[test]
fn unknown_keys_name_the_line_and_key() {
    let (_, wasm) = wasm_file();
    let text = format!("[plugins.a]\npath = \"{wasm}\"\nkv_store = {{ namespace = \"x\" }}\n");
    let err = parse(&text).unwrap_err();
    assert_eq!(err.position.map(|p| p.0), Some(3), "{err}");
    assert!(err.message.contains("kv_store"), "{err}");
    assert!(err.to_string().starts_with("capsule.toml:3:"), "{err}");
}

#[test]
fn bad_values_name_the_line() {
    let (_, wasm) = wasm_file();
    let cases = [
        ("[host.limits]\nmemory = \"lots\"\n", 2, "size"),
        ("[host.limits]\ntimeout = \"soon\"\n", 2, "duration"),
        (
            &*format!("[plugins.a]\npath = \"{wasm}\"\nhttp = {{ allow = [\"ftp://x\"] }}\n"),
            3,
            "origin",
        ),
        (
            &*format!("[plugins.a]\npath = \"{wasm}\"\nevents = {{ publish = [\"a..b\"] }}\n"),
            3,
            "topic",
        ),
        (
            &*format!(
                "[plugins.a]\npath = \"{wasm}\"\nfiles = [{{ host = \"/x\", guest = \"/d\", access = \"rw\" }}]\n"
            ),
            3,
            "read-only",
        ),
    ];
    for (text, line, needle) in cases {
        let err = parse(text).unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(line), "{err}");
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
}

#[test]
fn missing_files_and_bad_names_are_located() {
    let err = parse("[plugins.a]\npath = \"/nonexistent/a.wasm\"\n").unwrap_err();
    assert_eq!(err.key.as_deref(), Some("plugins.a.path"));
    assert_eq!(err.position.map(|p| p.0), Some(2));
    assert!(err.message.contains("not a file"));

    let err = parse("[host]\ntrusted_keys = [\"/nonexistent.pub\"]\n").unwrap_err();
    assert_eq!(err.key.as_deref(), Some("host.trusted_keys[0]"));

    let (_, wasm) = wasm_file();
    let err = parse(&format!("[plugins.\"a/b\"]\npath = \"{wasm}\"\n")).unwrap_err();
    assert!(err.message.contains("invalid plugin name"), "{err}");

    let err = parse(&format!(
        "[plugins.a]\npath = \"{wasm}\"\nfiles = [{{ host = \"/nonexistent\", guest = \"/d\", access = \"read-only\" }}]\n"
    ))
    .unwrap_err();
    assert_eq!(err.key.as_deref(), Some("plugins.a.files[0].host"));
    assert_eq!(err.position.map(|p| p.0), Some(3));
}

#[test]
fn unreadable_policy_names_the_file() {
    let err = Policy::load(Path::new("/nonexistent/capsule.toml"))
        .unwrap_err()
        .first()
        .clone();
    assert_eq!(err.file, Path::new("/nonexistent/capsule.toml"));
    assert!(err.message.contains("cannot read"));
}

#[test]
fn the_cache_key_file_is_resolved_and_used() {
    let dir = std::env::temp_dir().join(format!("capsule-policy-key-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let policy = Policy::parse(
        "[host]\ncache_dir = \"cache\"\ncache_key = \"state/cache.key\"\n\
         [host.pool]\nenabled = false\n",
        Path::new("capsule.toml"),
        &dir,
    )
    .unwrap();
    let key = dir.join("state/cache.key");
    assert_eq!(policy.host.cache_dir, Some(dir.join("cache")));
    assert_eq!(policy.host.cache_key, Some(key.clone()));
    assert_eq!(parse("[host]\n").unwrap().host.cache_key, None);
    // Only read, never created, while parsing.
    assert!(!key.exists());
}

#[test]
fn values_the_host_would_refuse_are_refused_here_with_their_key() {
    let (dir, wasm) = wasm_file();
    let file_not_dir = format!("{}", dir.join("p.wasm").display());
    let cases = [
        ("[host.limits]\nfuel = 0\n".to_owned(), "host.limits.fuel"),
        (
            "[host.limits]\ntimeout = \"0ms\"\n".to_owned(),
            "host.limits.timeout",
        ),
        (
            "[host.limits]\ntimeout = \"100000000000h\"\n".to_owned(),
            "host.limits.timeout",
        ),
        (
            "[host.limits]\nmax_instances = 0\n".to_owned(),
            "host.limits.max_instances",
        ),
        ("[host.events]\nqueue = 0\n".to_owned(), "host.events.queue"),
        (
            "[host.events]\nack_wait = \"100ms\"\n".to_owned(),
            "host.events.ack_wait",
        ),
        (
            "[host.pool]\ninstances = 0\n".to_owned(),
            "host.pool.instances",
        ),
        (
            "[host.pool]\nmax_memory = \"16MiB\"\n".to_owned(),
            "host.limits.memory",
        ),
        (
            format!("[host]\ndata_dir = \"{file_not_dir}\"\n"),
            "host.data_dir",
        ),
        (
            format!("[plugins.a]\npath = \"{wasm}\"\nenv = {{ \"A=B\" = \"x\" }}\n"),
            "plugins.a.env.A=B",
        ),
        (
            format!("[plugins.a]\npath = \"{wasm}\"\n[plugins.a.limits]\nmemory = \"8GiB\"\n"),
            "plugins.a.limits.memory",
        ),
        (
            format!("[plugins.a]\npath = \"{wasm}\"\n[plugins.a.limits]\nrecycle_after = 0\n"),
            "plugins.a.limits.recycle_after",
        ),
        (
            format!(
                "[plugins.a]\npath = \"{wasm}\"\n[plugins.a.limits]\nmax_instances = 2\nprewarm = 3\n"
            ),
            "plugins.a.limits.prewarm",
        ),
        (
            format!("[plugins.a]\npath = \"{wasm}\"\n[plugins.a.limits]\nmax_batch = 0\n"),
            "plugins.a.limits.max_batch",
        ),
        (
            format!("[plugins.a]\npath = \"{wasm}\"\n[plugins.a.limits]\njob_attempts = 0\n"),
            "plugins.a.limits.job_attempts",
        ),
        (
            format!("[plugins.a]\npath = \"{wasm}\"\n[plugins.a.limits]\njob_ttl = \"2d\"\n"),
            "plugins.a.limits.job_ttl",
        ),
        (
            format!("[plugins.a]\npath = \"{wasm}\"\nresponse = {{ buffer = \"100B\" }}\n"),
            "plugins.a.response.buffer",
        ),
        (
            format!("[plugins.a]\npath = \"{wasm}\"\n[plugins.a.limits]\ncache = \"2GiB\"\n"),
            "plugins.a.limits.cache",
        ),
        (
            format!("[plugins.a]\npath = \"{wasm}\"\npure = [\"price\", \"price\"]\n"),
            "plugins.a.pure",
        ),
        (
            format!("[plugins.a]\npath = \"{wasm}\"\npure = [\"\"]\n"),
            "plugins.a.pure",
        ),
    ];
    for (text, key) in cases {
        let err = parse(&text).expect_err(&text);
        assert_eq!(err.key.as_deref(), Some(key), "{text}: {err}");
        assert!(err.position.is_some(), "{err}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let (_, wasm) = wasm_file();
    let text = format!(
        "[host.limits]\nfuel = 0\n[plugins.a]\npath = \"{wasm}\"\nenv = {{ \"A=B\" = \"x\" }}\n\
         [plugins.b]\npath = \"/nonexistent/b.wasm\"\n[pipelines.p]\nstages = [\"ghost\"]\n"
    );
    let errors = Policy::parse(&text, Path::new("capsule.toml"), &std::env::temp_dir())
        .unwrap_err()
        .0;
    let keys: Vec<&str> = errors.iter().filter_map(|e| e.key.as_deref()).collect();
    for expected in [
        "host.limits.fuel",
        "plugins.a.env.A=B",
        "plugins.b.path",
        "pipelines.p.stages[0]",
    ] {
        assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
    }
}

#[test]
fn the_plugins_must_fit_the_pool() {
    let (_, wasm) = wasm_file();
    let text = format!(
        "[host.pool]\ninstances = 19\n[host.limits]\nmax_instances = 9\n\
         [plugins.a]\npath = \"{wasm}\"\n[plugins.b]\npath = \"{wasm}\"\n"
    );
    let err = parse(&text).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("host.pool.instances"), "{err}");
    assert!(err.message.contains("need 20"), "{err}");
    assert!(parse(&text.replace("instances = 19", "instances = 20")).is_ok());
    assert!(parse(&text.replace("max_instances = 9", "max_instances = 8")).is_ok());
}

#[test]
fn check_changes_nothing_on_disk() {
    let (dir, wasm) = wasm_file();
    let out = dir.join("to-be-created");
    let _ = std::fs::remove_dir_all(&out);
    let text = format!(
        "[plugins.a]\npath = \"{wasm}\"\n\
         files = [{{ host = \"{}\", guest = \"/out\", access = \"read-write\", create = true }}]\n",
        out.display()
    );
    let policy = parse(&text).unwrap();
    assert!(!out.exists(), "parsing a policy created {}", out.display());
    let mount = &policy.plugins["a"].grants.files[0];
    assert!(mount.create && mount.access == Access::ReadWrite);
}

#[test]
fn overrides_are_validated_like_the_file() {
    let (_, wasm) = wasm_file();
    let text = format!("[plugins.a]\npath = \"{wasm}\"\nenv = {{ LANG = \"en\" }}\n");
    let overrides = Overrides {
        env: vec![("TZ".into(), "UTC".into())],
        timeout: Some(Duration::from_secs(1)),
        ..Overrides::default()
    };
    let base = std::env::temp_dir();
    let policy = Policy::parse_with(
        &text,
        Path::new("capsule.toml"),
        &base,
        Some(("a", &overrides)),
    )
    .unwrap();
    let plugin = &policy.plugins["a"];
    assert_eq!(plugin.grants.env.len(), 2);
    assert_eq!(plugin.limits.timeout, Duration::from_secs(1));
    let bad = Overrides {
        fuel: Some(Some(0)),
        env: vec![("A=B".into(), "x".into())],
        ..Overrides::default()
    };
    let errors = Policy::parse_with(&text, Path::new("capsule.toml"), &base, Some(("a", &bad)))
        .unwrap_err()
        .0;
    assert_eq!(errors.len(), 2, "{errors:?}");
    let missing = Policy::parse_with(&text, Path::new("capsule.toml"), &base, Some(("b", &bad)));
    assert!(
        missing
            .unwrap_err()
            .first()
            .message
            .contains("no plugin `b`")
    );
}

#[test]
fn every_service_can_be_granted_whole_from_the_command_line() {
    let (_, wasm) = wasm_file();
    let text = format!("[plugins.a]\npath = \"{wasm}\"\nkv = {{ namespace = \"file\" }}\n");
    let base = std::env::temp_dir();
    let parse = |grants: &[(&str, &str)]| {
        let overrides = Overrides {
            grants: grants
                .iter()
                .map(|(s, v)| (s.to_string(), v.to_string()))
                .collect(),
            publish: vec![TopicPattern::parse("extra.*").unwrap()],
            ..Overrides::default()
        };
        Policy::parse_with(
            &text,
            Path::new("capsule.toml"),
            &base,
            Some(("a", &overrides)),
        )
    };
    let policy = parse(&[
        ("kv", r#"{ max_keys = 3 }"#),
        ("events", r#"{ publish = ["orders.*"] }"#),
        ("log", "false"),
    ])
    .unwrap();
    let grants = &policy.plugins["a"].grants;
    let kv = grants.kv.as_ref().unwrap();
    assert_eq!(
        (kv.namespace.as_str(), kv.max_keys),
        ("a", 3),
        "the whole key is replaced"
    );
    let publish: Vec<String> = grants
        .events
        .publish
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(publish, ["orders.*", "extra.*"], "the flags add to it");
    assert!(!grants.log.enabled);

    let errors = parse(&[("kv", "{ max_keys = -1 }"), ("nosuch", "1")])
        .unwrap_err()
        .0;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].key.as_deref(), Some("plugins.a.kv"));
    assert_eq!(errors[0].file, Path::new("<command line>"));
    assert!(
        errors[1]
            .message
            .contains("no service `nosuch` (services: log, config, env, kv"),
        "{}",
        errors[1].message
    );
    // Values are validated like the file's.
    let errors = parse(&[("kv", r#"{ max_key = "0B" }"#)]).unwrap_err().0;
    assert_eq!(errors[0].key.as_deref(), Some("plugins.a.kv.max_key"));
}

#[cfg(unix)]
#[test]
fn policy_files_are_read_safely() {
    let dir = temp_dir("policy");
    let fifo = dir.join("capsule.toml");
    mkfifo(&fifo);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        sender.send(
            crate::Policy::load(&fifo)
                .err()
                .map(|e| e.first().message.clone()),
        )
    });
    let message = receiver
        .recv_timeout(Duration::from_secs(5))
        .expect("a FIFO policy does not block")
        .expect("a FIFO policy is refused");
    assert!(message.contains("FIFO"), "{message}");
    let err = crate::Policy::load(Path::new("/dev/zero")).unwrap_err();
    assert!(err.first().message.contains("character device"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_takes_any_type_and_secrets_come_from_the_environment_and_files() {
    let (dir, wasm) = wasm_file();
    std::fs::write(dir.join("token.txt"), "from-a-file\n").unwrap();
    // SAFETY: no other test reads or writes this variable.
    unsafe { std::env::set_var("CAPSULE_POLICY_TEST_SECRET", "from-the-env") };
    let text = format!(
        r#"
[plugins.p]
path = "{wasm}"
config = {{ retries = 3, hosts = ["a"], name = "n" }}
[plugins.p.secrets]
api = {{ env = "CAPSULE_POLICY_TEST_SECRET" }}
cert = {{ file = "{token}" }}
"#,
        token = dir.join("token.txt").display()
    );
    let policy = parse(&text).unwrap();
    let plugin = &policy.plugins["p"];
    let config = &plugin.grants.config;
    assert_eq!(config.values["retries"], serde_json::json!(3));
    assert_eq!(config.values["hosts"], serde_json::json!(["a"]));
    assert_eq!(config.secrets["api"].expose(), "from-the-env");
    assert_eq!(
        config.secrets["cert"].expose(),
        "from-a-file",
        "one final newline dropped"
    );
    assert_eq!(plugin.config_at["retries"], (4, 12));
    assert_eq!(plugin.config_at["api"], (6, 1));
    assert!(!format!("{policy:?}").contains("from-the-env"));

    let missing = text.replace("CAPSULE_POLICY_TEST_SECRET", "CAPSULE_POLICY_TEST_UNSET");
    let err = parse(&missing).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("plugins.p.secrets.api"));
    assert_eq!(err.position.map(|p| p.0), Some(6));
    let twice = text.replace("name = \"n\"", "api = \"plain\"");
    let err = parse(&twice).unwrap_err();
    assert!(
        err.message.contains("both as a value and as a secret"),
        "{err}"
    );
}

#[test]
fn the_backend_section_picks_where_kv_lives() {
    use crate::backend::Backend;
    let policy = parse("").unwrap();
    assert!(matches!(policy.host.backend, Backend::Embedded));

    let creds = std::env::temp_dir().join(format!("capsule-policy-creds-{}", std::process::id()));
    std::fs::write(&creds, "-----BEGIN NATS USER JWT-----\n").unwrap();
    let text = format!(
        "[host.backend]\nkind = \"nats\"\nurl = \"nats://10.0.0.1:4222, nats://10.0.0.2:4222\"\n\
         prefix = \"shop-eu\"\nreplicas = 3\ncredentials = {{ file = \"{}\" }}\n",
        creds.display()
    );
    let policy = parse(&text).unwrap();
    let Backend::Nats(options) = &policy.host.backend else {
        panic!("{:?}", policy.host.backend);
    };
    assert_eq!(options.prefix, "shop-eu");
    assert_eq!(options.replicas, 3);
    assert_eq!(options.url, "nats://10.0.0.1:4222, nats://10.0.0.2:4222");
    let credentials = options.credentials.as_ref().unwrap();
    assert!(credentials.expose().starts_with("-----BEGIN NATS USER JWT"));
    assert_eq!(
        format!("{:?}", policy.host.backend).matches("JWT").count(),
        0
    );
    std::fs::remove_file(creds).ok();
}

#[test]
fn the_backend_section_names_the_host_and_bounds_forwarded_calls() {
    use crate::backend::Backend;
    let policy = parse(
        "[host.backend]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n\
         host_name = \"web-1\"\ncall_timeout = \"5s\"\n",
    )
    .unwrap();
    let Backend::Nats(options) = &policy.host.backend else {
        panic!("{:?}", policy.host.backend);
    };
    assert_eq!(options.host_name.as_deref(), Some("web-1"));
    assert_eq!(options.call_timeout, std::time::Duration::from_secs(5));
    let default = parse("[host.backend]\nkind = \"nats\"\nurl = \"nats://x:4222\"\n").unwrap();
    let Backend::Nats(options) = &default.host.backend else {
        panic!()
    };
    assert_eq!(options.host_name, None);
    assert_eq!(options.call_timeout, crate::backend::DEFAULT_CALL_TIMEOUT);
}

#[test]
fn a_broken_backend_section_is_refused_at_its_line() {
    let cases = [
        ("[host.backend]\nkind = \"redis\"\n", 2, "host.backend.kind"),
        ("[host.backend]\nkind = \"nats\"\n", 1, "host.backend.url"),
        (
            "[host.backend]\nkind = \"nats\"\nurl = \"nats://x:4222\"\nhost_name = \"web.1\"\n",
            4,
            "host.backend.host_name",
        ),
        (
            "[host.backend]\nkind = \"nats\"\nurl = \"nats://x:4222\"\ncall_timeout = \"10ms\"\n",
            4,
            "host.backend.call_timeout",
        ),
        (
            "[host.backend]\nkind = \"embedded\"\nhost_name = \"web-1\"\n",
            3,
            "host.backend.host_name",
        ),
        (
            "[host.backend]\nkind = \"nats\"\nurl = \"http://x:4222\"\n",
            3,
            "host.backend.url",
        ),
        (
            "[host.backend]\nkind = \"nats\"\nurl = \"nats://x:4222\"\nprefix = \"a.b\"\n",
            4,
            "host.backend.prefix",
        ),
        (
            "[host.backend]\nkind = \"embedded\"\nurl = \"nats://x:4222\"\n",
            3,
            "host.backend.url",
        ),
        (
            "[host.backend]\nkind = \"nats\"\nurl = \"nats://x:4222\"\n\
             credentials = { env = \"CAPSULE_TEST_NO_SUCH_VARIABLE\" }\n",
            4,
            "host.backend.credentials",
        ),
        ("[host.backend]\nkind = \"nats\"\nport = 4222\n", 3, "port"),
        (
            "[host.backend]\nkind = \"nats\"\nurl = \"nats://x:4222\"\nreplicas = 7\n",
            4,
            "host.backend.replicas",
        ),
    ];
    for (text, line, key) in cases {
        let err = parse(text).unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(line), "{text}: {err}");
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}

#[test]
fn the_telemetry_section_names_a_collector_and_bounds_the_export() {
    let policy = parse(
        "[host.telemetry]\notlp = \"http://127.0.0.1:4318\"\nsample = 0.25\n\
         interval = \"1s\"\nmax_queue = 100\nservice_name = \"shop\"\n",
    )
    .unwrap();
    let telemetry = &policy.host.telemetry;
    assert_eq!(telemetry.otlp.as_deref(), Some("http://127.0.0.1:4318"));
    assert_eq!(telemetry.sample, 0.25);
    assert_eq!(telemetry.interval, std::time::Duration::from_secs(1));
    assert_eq!(
        (telemetry.max_queue, telemetry.service_name.as_str()),
        (100, "shop")
    );
    assert_eq!(
        parse("").unwrap().host.telemetry.otlp,
        None,
        "off by default"
    );
    for (text, why) in [
        ("otlp = \"https://collector:4318\"", "http:// collector"),
        ("otlp = \"127.0.0.1:4318\"", "http:// collector"),
        ("otlp = \"http://x:4318/?a=b\"", "no query"),
        ("sample = 1.5", "between 0 and 1"),
        ("sample = nan", "between 0 and 1"),
        ("interval = \"1ms\"", "interval"),
        ("max_queue = 0", "max_queue"),
        ("service_name = \"\"", "service_name"),
        ("oltp = \"http://x\"", "oltp"),
    ] {
        let err = parse(&format!("[host.telemetry]\n{text}\n")).unwrap_err();
        assert!(err.to_string().contains(why), "{text}: {err}");
        assert!(err.position.is_some(), "{text}: {err}");
    }
}

#[test]
fn with_nats_a_key_quota_that_cannot_fit_a_subject_is_refused() {
    let (_, wasm) = wasm_file();
    let text = format!(
        "[host.backend]\nkind = \"nats\"\nurl = \"nats://x:4222\"\n\
         [plugins.a]\npath = \"{wasm}\"\nkv = {{ namespace = \"n\", max_key = \"1KiB\" }}\n"
    );
    let err = parse(&text).unwrap_err();
    assert_eq!(err.position.map(|p| p.0), Some(6), "{err}");
    assert!(err.to_string().contains("plugins.a.kv.max_key"), "{err}");
    // The default key size fits; so does the same quota on the embedded store.
    let fits = text.replace(", max_key = \"1KiB\"", "");
    parse(&fits).unwrap();
    let embedded = format!(
        "[plugins.a]\npath = \"{wasm}\"\nkv = {{ namespace = \"n\", max_key = \"1KiB\" }}\n"
    );
    parse(&embedded).unwrap();
}

#[test]
fn the_event_ack_wait_is_read_from_the_events_section() {
    let policy = parse("[host.events]\nack_wait = \"5s\"\n").unwrap();
    assert_eq!(policy.host.bus.ack_wait, std::time::Duration::from_secs(5));
    let default = parse("").unwrap();
    assert_eq!(
        default.host.bus.ack_wait,
        std::time::Duration::from_secs(30)
    );
}

#[test]
fn api_keys_are_read_with_their_roles_scopes_and_rates() {
    let digest = crate::access::digest_of("capsule_test-key");
    let text = format!(
        r#"
[[host.api_keys]]
name = "checkout"
role = "call"
digest = "{digest}"
plugins = ["hello", "shop-*"]
topics = ["orders.>"]
rate = "10/s"
burst = 20
[[host.api_keys]]
name = "ops"
role = "admin"
digest = "sha256:{zeros}"
"#,
        zeros = "0".repeat(64)
    );
    let policy = parse(&text).unwrap();
    let keys = &policy.host.api_keys;
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].role, crate::access::Role::Call);
    assert!(keys[0].permits(crate::access::Action::CallPlugin("shop-cart")));
    assert_eq!(keys[0].rate.unwrap().burst, 20);
    assert!(
        crate::access::AccessTable::new(keys)
            .find("capsule_test-key")
            .is_some()
    );
}

#[test]
fn a_broken_api_key_is_refused_at_its_line() {
    let good = format!("sha256:{}", "a".repeat(64));
    let cases = [
        ("role = \"root\"", "host.api_keys[0].role", "not a role"),
        (
            "role = \"call\"",
            "host.api_keys[0].role",
            "needs `plugins`",
        ),
        (
            "role = \"view\"\nplugins = [\"a\"]",
            "host.api_keys[0].role",
            "only a `call` key",
        ),
        (
            "role = \"call\"\nplugins = [\"a*b\"]",
            "host.api_keys[0].plugins[0]",
            "not a name pattern",
        ),
        (
            "role = \"call\"\ntopics = [\"a..b\"]",
            "host.api_keys[0].topics[0]",
            "topic pattern",
        ),
        (
            "role = \"admin\"\nrate = \"5/week\"",
            "host.api_keys[0].rate",
            "not a rate",
        ),
        (
            "role = \"admin\"\nburst = 3",
            "host.api_keys[0].burst",
            "needs a `rate`",
        ),
    ];
    for (fields, key, message) in cases {
        let text = format!("[[host.api_keys]]\nname = \"k\"\ndigest = \"{good}\"\n{fields}\n");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key.as_deref(), Some(key), "{fields}: {err}");
        assert!(err.message.contains(message), "{fields}: {err}");
        assert!(err.position.is_some(), "{err}");
    }
    let text = "[[host.api_keys]]\nname = \"k\"\nrole = \"admin\"\ndigest = \"md5:abc\"\n";
    let err = parse(text).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("host.api_keys[0].digest"));
    // Two keys with one name, or one digest, would make the audit log lie.
    let twice = format!(
        "[[host.api_keys]]\nname = \"k\"\nrole = \"admin\"\ndigest = \"{good}\"\n\
         [[host.api_keys]]\nname = \"k\"\nrole = \"view\"\ndigest = \"{good}\"\n"
    );
    let errors = Policy::parse(&twice, Path::new("capsule.toml"), Path::new("."))
        .unwrap_err()
        .0;
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    assert!(
        messages.contains(&"another key is named `k`"),
        "{messages:?}"
    );
    assert!(
        messages.contains(&"another key has this digest"),
        "{messages:?}"
    );
}

#[test]
fn pure_operations_and_the_response_cache_and_batches_are_set_per_plugin() {
    let (_dir, wasm) = wasm_file();
    let text = format!(
        "[plugins.shop]\npath = \"{wasm}\"\npure = [\"price\", \"tax\"]\n\
         [plugins.shop.limits]\ncache = \"4MiB\"\ncache_ttl = \"5m\"\nmax_batch = 20\n\
         max_jobs = 50\njob_concurrency = 4\njob_attempts = 5\njob_ttl = \"1h\"\n\
         [plugins.plain]\npath = \"{wasm}\"\n"
    );
    let policy = parse(&text).unwrap();
    let shop = &policy.plugins["shop"];
    assert_eq!(shop.pure_operations, ["price", "tax"]);
    assert_eq!(shop.limits.cache_bytes, 4 << 20);
    assert_eq!(shop.limits.cache_ttl, std::time::Duration::from_secs(300));
    assert_eq!(shop.limits.max_batch, 20);
    assert_eq!(
        (
            shop.limits.max_jobs,
            shop.limits.job_concurrency,
            shop.limits.job_attempts
        ),
        (50, 4, 5)
    );
    assert_eq!(shop.limits.job_ttl, std::time::Duration::from_secs(3600));
    let plain = &policy.plugins["plain"];
    assert!(plain.pure_operations.is_empty());
    assert_eq!(plain.limits, Limits::default());
    let spec = crate::PluginSpec::from_policy(&policy, "shop").unwrap();
    assert_eq!(spec.pure_operations, ["price", "tax"]);
}
