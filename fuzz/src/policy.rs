//! `policy_text` and `policy_structured`: policy files, parsed and
//! validated, then handed to a host. Whatever validation accepts, the host
//! must build and every plugin's settings must pass the checks of a load
//! (the property `capsule check` promises: it refuses whatever the host
//! would refuse at load).

use std::path::Path;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use capsule_host::audit::AuditOptions;
use capsule_host::backend::Backend;
use capsule_host::telemetry::TelemetryOptions;
use capsule_host::{Host, HostBuilder, LoadFailure, PluginSpec, Policy};

use crate::Target;

/// `policy_text`: any bytes as a policy file.
pub const TEXT_TARGET: Target = Target {
    name: "policy_text",
    about: "any bytes as a policy file: parse and validate never panic, and what they accept \
            a host builds and loads (no plugin setting refused at load)",
    check: check_text,
    seeds: || {
        vec![
            include_bytes!("../../example-plugins/capsule.toml").to_vec(),
            b"[host]\ntrusted_keys = [\"trusted.pub\"]\n[host.limits]\nmemory = \"64MiB\"\ntimeout = \"2s\"\n[plugins.a]\npath = \"plugin.wasm\"\nkv = { namespace = \"n\", max_keys = 10 }\nevents = { publish = [\"x.*\"], subscribe = [\"y.>\"] }\nhttp = { allow = [\"https://*.example.org:8443\"] }\n".to_vec(),
            b"[host.pool]\ninstances = 32\n[host.limits]\nmax_instances = 4\n[plugins.a]\npath = \"plugin.wasm\"\nlimits = { max_instances = 4 }\n[plugins.b]\npath = \"plugin.wasm\"\ncalls = [\"a\"]\n[pipelines.p]\nstages = [\"a\", \"b\"]\ntransaction = true\n".to_vec(),
        ]
    },
};

/// `policy_structured`: policies built from known sections, keys and
/// values at their edges, so the fuzzer spends its time past the parser.
pub const STRUCTURED_TARGET: Target = Target {
    name: "policy_structured",
    about: "policies assembled from the real sections and keys with values at their edges \
            (sizes, durations, counts, names, patterns): the same property as policy_text, \
            reached far more often",
    check: check_structured,
    seeds: crate::signature::structured_seeds,
};

/// Where the fuzzed policies say they are: a folder holding only
/// `plugin.wasm` (a stand-in component) and `trusted.pub` (the test key),
/// so policies can name an existing plugin and key and nothing else.
fn base() -> &'static Path {
    static BASE: OnceLock<std::path::PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = std::env::temp_dir().join("capsule-fuzz-policy");
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        std::fs::write(dir.join("plugin.wasm"), crate::fixtures::component(&[]))
            .expect("the stand-in plugin");
        std::fs::write(dir.join("trusted.pub"), crate::fixtures::trusted().to_pem())
            .expect("the test key");
        dir
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fn check_text(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check_policy(text);
    }
}

/// Parses `text`; when it is accepted, builds a host from it and loads
/// each plugin's settings (with a stand-in component). Returns whether
/// the policy was accepted.
pub fn check_policy(text: &str) -> bool {
    let file = base().join("capsule.toml");
    let Ok(policy) = Policy::parse(text, &file, base()) else {
        return false;
    };
    // Nothing on disk or the network: no data, cache, audit file, NATS or
    // collector. These do not change what the checks below decide.
    let mut host_policy = policy.clone();
    host_policy.host.cache_dir = None;
    host_policy.host.data_dir = None;
    host_policy.host.backend = Backend::Embedded;
    host_policy.host.audit = AuditOptions::default();
    host_policy.host.telemetry = TelemetryOptions::default();
    // A stand-in component that is not signed stops every load right after
    // its settings were checked, before anything is compiled or created.
    host_policy.host.allow_unsigned = false;
    let _guard = runtime().enter();
    let host = HostBuilder::from_policy(&host_policy)
        .build()
        .unwrap_or_else(|err| panic!("a host refuses a policy validation accepted: {err}\n{text}"));
    for name in policy.plugins.keys().take(8) {
        check_load(&host, &policy, name, text);
    }
    true
}

fn check_load(host: &Host, policy: &Policy, name: &str, text: &str) {
    let plugin = &policy.plugins[name];
    let spec = PluginSpec::from_bytes(name, crate::fixtures::component(&[]))
        .grants(plugin.grants.clone())
        .limits(plugin.limits.clone())
        .validate_input(plugin.validate_input);
    let err = runtime()
        .block_on(host.load(spec))
        .expect_err("an unsigned stand-in never loads");
    assert!(
        matches!(err.cause, LoadFailure::Unsigned(_)),
        "plugin `{name}`: a load refuses settings validation accepted: {err}\n{text}"
    );
}

// ----- the structured generator -------------------------------------------

/// A size as a policy writes it.
#[derive(Arbitrary, Debug)]
enum SizeValue {
    Bytes(u64),
    Unit(u32, SizeUnit),
    Edge(SizeEdge),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum SizeUnit {
    B,
    KiB,
    MiB,
    GiB,
    KB,
    MB,
    GB,
    TB,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum SizeEdge {
    Zero,
    Page,
    PagePlusOne,
    SixtyFourGiB,
    Max,
    Negative,
    Fraction,
}

impl SizeValue {
    fn toml(&self) -> toml::Value {
        match self {
            SizeValue::Bytes(n) => match i64::try_from(*n) {
                Ok(n) => toml::Value::Integer(n),
                Err(_) => toml::Value::String(n.to_string()),
            },
            SizeValue::Unit(n, unit) => toml::Value::String(format!("{n}{unit:?}")),
            SizeValue::Edge(edge) => match edge {
                SizeEdge::Zero => toml::Value::Integer(0),
                SizeEdge::Page => toml::Value::String("64KiB".into()),
                SizeEdge::PagePlusOne => toml::Value::Integer(65_537),
                SizeEdge::SixtyFourGiB => toml::Value::String("64GiB".into()),
                SizeEdge::Max => toml::Value::String(u64::MAX.to_string()),
                SizeEdge::Negative => toml::Value::Integer(-1),
                SizeEdge::Fraction => toml::Value::String("1.5MiB".into()),
            },
        }
    }
}

/// A duration as a policy writes it.
#[derive(Arbitrary, Debug)]
enum TimeValue {
    Millis(u32),
    Secs(u64),
    Text(String),
    Zero,
}

impl TimeValue {
    fn toml(&self) -> toml::Value {
        toml::Value::String(match self {
            TimeValue::Millis(n) => format!("{n}ms"),
            TimeValue::Secs(n) => format!("{n}s"),
            TimeValue::Text(text) => text.clone(),
            TimeValue::Zero => "0s".into(),
        })
    }
}

/// A count: small, at an edge, or anything.
#[derive(Arbitrary, Debug)]
enum Count {
    Small(u8),
    Any(i64),
    Edge(CountEdge),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum CountEdge {
    Zero,
    One,
    U32Max,
    U32MaxPlusOne,
    I64Max,
    Minus,
}

impl Count {
    fn toml(&self) -> toml::Value {
        toml::Value::Integer(match self {
            Count::Small(n) => i64::from(*n),
            Count::Any(n) => *n,
            Count::Edge(edge) => match edge {
                CountEdge::Zero => 0,
                CountEdge::One => 1,
                CountEdge::U32Max => i64::from(u32::MAX),
                CountEdge::U32MaxPlusOne => i64::from(u32::MAX) + 1,
                CountEdge::I64Max => i64::MAX,
                CountEdge::Minus => -1,
            },
        })
    }
}

/// A name: one of a few (so references between sections resolve), or
/// anything.
#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Any(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Known(n) => ["a", "b", "c", "d-1", "e_2", "x.y"][usize::from(*n) % 6].into(),
            Name::Any(text) => text.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum LimitKey {
    Fuel,
    Memory,
    Timeout,
    MaxRequest,
    MaxResponse,
    MaxLog,
    MaxInstances,
    MaxQueued,
    QueueTimeout,
    RecycleAfter,
    CircuitFailures,
    CircuitCooldown,
    MaxHandles,
    MaxLogRecords,
    MaxMetadataEntries,
    MaxCalls,
    MaxCallDepth,
    Prewarm,
}

#[derive(Arbitrary, Debug)]
struct LimitValue {
    key: LimitKey,
    size: SizeValue,
    time: TimeValue,
    count: Count,
    none: bool,
}

fn limits(values: &[LimitValue]) -> toml::Table {
    let mut table = toml::Table::new();
    for value in values.iter().take(8) {
        let (key, value) = match value.key {
            LimitKey::Fuel if value.none => ("fuel", toml::Value::String("none".into())),
            LimitKey::Fuel => ("fuel", value.count.toml()),
            LimitKey::Memory => ("memory", value.size.toml()),
            LimitKey::Timeout => ("timeout", value.time.toml()),
            LimitKey::MaxRequest => ("max_request", value.size.toml()),
            LimitKey::MaxResponse => ("max_response", value.size.toml()),
            LimitKey::MaxLog => ("max_log", value.size.toml()),
            LimitKey::MaxInstances => ("max_instances", value.count.toml()),
            LimitKey::MaxQueued => ("max_queued", value.count.toml()),
            LimitKey::QueueTimeout => ("queue_timeout", value.time.toml()),
            LimitKey::RecycleAfter => ("recycle_after", value.count.toml()),
            LimitKey::CircuitFailures => ("circuit_failures", value.count.toml()),
            LimitKey::CircuitCooldown => ("circuit_cooldown", value.time.toml()),
            LimitKey::MaxHandles => ("max_handles", value.count.toml()),
            LimitKey::MaxLogRecords => ("max_log_records", value.count.toml()),
            LimitKey::MaxMetadataEntries => ("max_metadata_entries", value.count.toml()),
            LimitKey::MaxCalls => ("max_calls", value.count.toml()),
            LimitKey::MaxCallDepth => ("max_call_depth", value.count.toml()),
            LimitKey::Prewarm => ("prewarm", value.count.toml()),
        };
        table.insert(key.into(), value);
    }
    table
}

#[derive(Arbitrary, Debug)]
struct Pool {
    enabled: Option<bool>,
    instances: Option<Count>,
    max_memory: Option<SizeValue>,
    max_wasm_stack: Option<SizeValue>,
}

#[derive(Arbitrary, Debug)]
struct Bus {
    queue: Option<Count>,
    queue_bytes: Option<SizeValue>,
    max_attempts: Option<Count>,
    max_retry_delay: Option<TimeValue>,
    max_hops: Option<Count>,
    dead_letters: Option<Count>,
}

#[derive(Arbitrary, Debug)]
struct Kv {
    namespace: Option<Name>,
    max_keys: Option<Count>,
    max_key: Option<SizeValue>,
    max_value: Option<SizeValue>,
    max_total: Option<SizeValue>,
    atomic: Option<bool>,
}

#[derive(Arbitrary, Debug)]
struct Plugin {
    name: Name,
    limits: Vec<LimitValue>,
    validate_input: Option<bool>,
    config: Vec<(String, String)>,
    env: Vec<(String, String)>,
    kv: Option<Kv>,
    publish: Vec<String>,
    subscribe: Vec<String>,
    ordered: Option<bool>,
    http: Option<(Vec<String>, Option<Count>, Option<SizeValue>)>,
    calls: Option<Vec<Name>>,
    metrics: Option<(Option<Count>, Option<SizeValue>)>,
}

#[derive(Arbitrary, Debug)]
struct Document {
    allow_partial_signatures: Option<bool>,
    limits: Vec<LimitValue>,
    pool: Option<Pool>,
    events: Option<Bus>,
    plugins: Vec<Plugin>,
    pipelines: Vec<(Name, Vec<Name>, bool)>,
    capabilities: Vec<(String, Name)>,
}

fn set<T>(table: &mut toml::Table, key: &str, value: Option<T>, to: impl Fn(T) -> toml::Value) {
    if let Some(value) = value {
        table.insert(key.into(), to(value));
    }
}

fn strings(values: &[String]) -> toml::Value {
    toml::Value::Array(
        values
            .iter()
            .take(4)
            .cloned()
            .map(toml::Value::String)
            .collect(),
    )
}

fn pairs(values: &[(String, String)]) -> toml::Value {
    toml::Value::Table(
        values
            .iter()
            .take(4)
            .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
            .collect(),
    )
}

impl Document {
    fn render(&self) -> String {
        let mut host = toml::Table::new();
        set(
            &mut host,
            "allow_partial_signatures",
            self.allow_partial_signatures,
            toml::Value::Boolean,
        );
        if !self.limits.is_empty() {
            host.insert("limits".into(), toml::Value::Table(limits(&self.limits)));
        }
        if let Some(pool) = &self.pool {
            let mut table = toml::Table::new();
            set(&mut table, "enabled", pool.enabled, toml::Value::Boolean);
            set(
                &mut table,
                "instances",
                pool.instances.as_ref(),
                Count::toml,
            );
            set(
                &mut table,
                "max_memory",
                pool.max_memory.as_ref(),
                SizeValue::toml,
            );
            set(
                &mut table,
                "max_wasm_stack",
                pool.max_wasm_stack.as_ref(),
                SizeValue::toml,
            );
            host.insert("pool".into(), toml::Value::Table(table));
        }
        if let Some(bus) = &self.events {
            let mut table = toml::Table::new();
            set(&mut table, "queue", bus.queue.as_ref(), Count::toml);
            set(
                &mut table,
                "queue_bytes",
                bus.queue_bytes.as_ref(),
                SizeValue::toml,
            );
            set(
                &mut table,
                "max_attempts",
                bus.max_attempts.as_ref(),
                Count::toml,
            );
            set(
                &mut table,
                "max_retry_delay",
                bus.max_retry_delay.as_ref(),
                TimeValue::toml,
            );
            set(&mut table, "max_hops", bus.max_hops.as_ref(), Count::toml);
            set(
                &mut table,
                "dead_letters",
                bus.dead_letters.as_ref(),
                Count::toml,
            );
            host.insert("events".into(), toml::Value::Table(table));
        }
        let mut plugins = toml::Table::new();
        for plugin in self.plugins.iter().take(6) {
            let mut table = toml::Table::new();
            table.insert("path".into(), toml::Value::String("plugin.wasm".into()));
            if !plugin.limits.is_empty() {
                table.insert("limits".into(), toml::Value::Table(limits(&plugin.limits)));
            }
            set(
                &mut table,
                "validate_input",
                plugin.validate_input,
                toml::Value::Boolean,
            );
            if !plugin.config.is_empty() {
                table.insert("config".into(), pairs(&plugin.config));
            }
            if !plugin.env.is_empty() {
                table.insert("env".into(), pairs(&plugin.env));
            }
            if let Some(kv) = &plugin.kv {
                let mut grant = toml::Table::new();
                set(&mut grant, "namespace", kv.namespace.as_ref(), |n| {
                    toml::Value::String(n.text())
                });
                set(&mut grant, "max_keys", kv.max_keys.as_ref(), Count::toml);
                set(&mut grant, "max_key", kv.max_key.as_ref(), SizeValue::toml);
                set(
                    &mut grant,
                    "max_value",
                    kv.max_value.as_ref(),
                    SizeValue::toml,
                );
                set(
                    &mut grant,
                    "max_total",
                    kv.max_total.as_ref(),
                    SizeValue::toml,
                );
                set(&mut grant, "atomic", kv.atomic, toml::Value::Boolean);
                table.insert("kv".into(), toml::Value::Table(grant));
            }
            if !plugin.publish.is_empty()
                || !plugin.subscribe.is_empty()
                || plugin.ordered.is_some()
            {
                let mut grant = toml::Table::new();
                grant.insert("publish".into(), strings(&plugin.publish));
                grant.insert("subscribe".into(), strings(&plugin.subscribe));
                set(&mut grant, "ordered", plugin.ordered, toml::Value::Boolean);
                table.insert("events".into(), toml::Value::Table(grant));
            }
            if let Some((allow, requests, response)) = &plugin.http {
                let mut grant = toml::Table::new();
                grant.insert("allow".into(), strings(allow));
                set(&mut grant, "max_requests", requests.as_ref(), Count::toml);
                set(
                    &mut grant,
                    "max_response",
                    response.as_ref(),
                    SizeValue::toml,
                );
                table.insert("http".into(), toml::Value::Table(grant));
            }
            if let Some(calls) = &plugin.calls {
                let names = calls
                    .iter()
                    .take(4)
                    .map(|n| toml::Value::String(n.text()))
                    .collect();
                table.insert("calls".into(), toml::Value::Array(names));
            }
            if let Some((series, bytes)) = &plugin.metrics {
                let mut grant = toml::Table::new();
                set(&mut grant, "series", series.as_ref(), Count::toml);
                set(&mut grant, "max_bytes", bytes.as_ref(), SizeValue::toml);
                table.insert("metrics".into(), toml::Value::Table(grant));
            }
            plugins.insert(plugin.name.text(), toml::Value::Table(table));
        }
        let mut root = toml::Table::new();
        root.insert("host".into(), toml::Value::Table(host));
        root.insert("plugins".into(), toml::Value::Table(plugins));
        let mut pipelines = toml::Table::new();
        for (name, stages, transaction) in self.pipelines.iter().take(3) {
            let mut table = toml::Table::new();
            let stages = stages
                .iter()
                .take(5)
                .map(|n| toml::Value::String(n.text()))
                .collect();
            table.insert("stages".into(), toml::Value::Array(stages));
            table.insert("transaction".into(), toml::Value::Boolean(*transaction));
            pipelines.insert(name.text(), toml::Value::Table(table));
        }
        if !pipelines.is_empty() {
            root.insert("pipelines".into(), toml::Value::Table(pipelines));
        }
        let capabilities: toml::Table = self
            .capabilities
            .iter()
            .take(3)
            .map(|(capability, plugin)| (capability.clone(), toml::Value::String(plugin.text())))
            .collect();
        if !capabilities.is_empty() {
            root.insert("capabilities".into(), toml::Value::Table(capabilities));
        }
        toml::to_string(&root).expect("a table renders")
    }
}

fn check_structured(data: &[u8]) {
    let Ok(document) = Document::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    check_policy(&document.render());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_policies_reach_the_host() {
        let seeds = (TEXT_TARGET.seeds)();
        for seed in &seeds[1..] {
            assert!(check_policy(std::str::from_utf8(seed).unwrap()));
        }
    }

    #[test]
    fn structured_documents_render_policies_that_parse() {
        let document = Document {
            allow_partial_signatures: Some(true),
            limits: Vec::new(),
            pool: None,
            events: None,
            plugins: vec![Plugin {
                name: Name::Known(0),
                limits: vec![LimitValue {
                    key: LimitKey::Memory,
                    size: SizeValue::Unit(64, SizeUnit::MiB),
                    time: TimeValue::Zero,
                    count: Count::Small(1),
                    none: false,
                }],
                validate_input: None,
                config: vec![("greeting".into(), "hi".into())],
                env: Vec::new(),
                kv: None,
                publish: vec!["orders.*".into()],
                subscribe: Vec::new(),
                ordered: None,
                http: None,
                calls: None,
                metrics: None,
            }],
            pipelines: Vec::new(),
            capabilities: Vec::new(),
        };
        let text = document.render();
        assert!(check_policy(&text), "{text}");
    }
}
