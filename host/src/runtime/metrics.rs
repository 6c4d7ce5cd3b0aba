//! Per-plugin metrics in Prometheus text format: calls and errors by kind,
//! latency and fuel histograms, live instances, reloads, event deliveries.
//! Every name starts with `capsule_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

use crate::sandbox::store::SERVICE_NAMES;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    plugin: String,
    outcome: String,
}

fn latency_histogram() -> Histogram {
    // 10 µs to ~5 s.
    Histogram::new(exponential_buckets(0.000_01, 2.5, 15))
}

fn fuel_histogram() -> Histogram {
    // 1 000 to ~10^10 units.
    Histogram::new(exponential_buckets(1_000.0, 4.0, 12))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrackLabels {
    plugin: String,
    track: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    plugin: String,
    track: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    plugin: String,
    service: &'static str,
}

fn host_call_histogram() -> Histogram {
    // 1 µs to ~4 s.
    Histogram::new(exponential_buckets(0.000_001, 4.0, 12))
}

type HistogramFamily = Family<PluginLabel, Histogram, fn() -> Histogram>;
type ServiceHistograms = Family<ServiceLabels, Histogram, fn() -> Histogram>;

/// The host's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    calls: Family<OutcomeLabels, Counter>,
    latency: HistogramFamily,
    fuel: HistogramFamily,
    reloads: Family<OutcomeLabels, Counter>,
    events: Family<OutcomeLabels, Counter>,
    rollout_calls: Family<TrackLabels, Counter>,
    rollout_latency: Family<VersionLabels, Histogram, fn() -> Histogram>,
    rollouts: Family<OutcomeLabels, Counter>,
    host_calls: Family<ServiceLabels, Counter>,
    host_call_time: ServiceHistograms,
    response_cache: Family<OutcomeLabels, Counter>,
    streams_cancelled: Family<PluginLabel, Counter>,
    jobs: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let calls = Family::<OutcomeLabels, Counter>::default();
        let latency = HistogramFamily::new_with_constructor(latency_histogram);
        let fuel = HistogramFamily::new_with_constructor(fuel_histogram);
        let reloads = Family::<OutcomeLabels, Counter>::default();
        let events = Family::<OutcomeLabels, Counter>::default();
        let rollout_calls = Family::<TrackLabels, Counter>::default();
        let rollouts = Family::<OutcomeLabels, Counter>::default();
        let rollout_latency =
            Family::<VersionLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "capsule_calls",
            "Plugin calls by outcome (ok, or the error kind)",
            calls.clone(),
        );
        registry.register(
            "capsule_call_duration_seconds",
            "Wall-clock time of plugin calls",
            latency.clone(),
        );
        registry.register(
            "capsule_call_fuel",
            "Fuel burned by plugin calls that ran to completion (including those returning a plugin error)",
            fuel.clone(),
        );
        registry.register(
            "capsule_reloads",
            "Plugin reloads by outcome (ok or failed)",
            reloads.clone(),
        );
        registry.register(
            "capsule_events",
            "Event deliveries to plugins by outcome",
            events.clone(),
        );
        registry.register(
            "capsule_rollout_calls",
            "Calls during rollouts by version (track stable or canary) and outcome",
            rollout_calls.clone(),
        );
        registry.register(
            "capsule_rollout_call_duration_seconds",
            "Wall-clock time of calls during rollouts, by version (track stable or canary)",
            rollout_latency.clone(),
        );
        registry.register(
            "capsule_rollouts",
            "Rollouts ended, by how (promoted, rolled_back, aborted)",
            rollouts.clone(),
        );
        let host_calls = Family::<ServiceLabels, Counter>::default();
        let host_call_time = ServiceHistograms::new_with_constructor(host_call_histogram);
        registry.register(
            "capsule_host_calls",
            "Calls into host services made by plugin calls (not event deliveries), by service",
            host_calls.clone(),
        );
        registry.register(
            "capsule_host_call_duration_seconds",
            "Time one plugin call (not an event delivery) spent in one host service, waits included",
            host_call_time.clone(),
        );
        let response_cache = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "capsule_response_cache",
            "Calls of pure operations by how the response cache answered (hit, miss)",
            response_cache.clone(),
        );
        let streams_cancelled = Family::<PluginLabel, Counter>::default();
        registry.register(
            "capsule_streams_cancelled",
            "Streaming calls cancelled because their caller went away before the end",
            streams_cancelled.clone(),
        );
        let jobs = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "capsule_jobs",
            "Background job attempts by how they ended (succeeded, failed, retried, discarded)",
            jobs.clone(),
        );
        Metrics {
            jobs,
            streams_cancelled,
            response_cache,
            host_calls,
            host_call_time,
            registry,
            rollout_calls,
            rollout_latency,
            rollouts,
            calls,
            latency,
            fuel,
            reloads,
            events,
        }
    }
}

fn plugin(name: &str) -> PluginLabel {
    PluginLabel {
        plugin: name.to_owned(),
    }
}

fn outcome(name: &str, outcome: &str) -> OutcomeLabels {
    OutcomeLabels {
        plugin: name.to_owned(),
        outcome: outcome.to_owned(),
    }
}

/// One plugin's handles to its most frequent series, taken once so a
/// successful call records without label allocations or map lookups.
#[derive(Clone)]
pub(crate) struct PluginMetrics {
    ok: Counter,
    latency: Histogram,
    fuel: Histogram,
    /// Its host-call series, per entry of `SERVICE_NAMES`, made on first
    /// use (a plugin shows only the services it calls).
    services: Arc<[std::sync::OnceLock<(Counter, Histogram)>]>,
    name: Arc<str>,
    host_calls: Family<ServiceLabels, Counter>,
    host_call_time: ServiceHistograms,
}

impl PluginMetrics {
    /// Records what one call made of each host service.
    pub(crate) fn host_calls(&self, per_service: &[crate::ServiceCalls]) {
        for used in per_service {
            let Some(index) = SERVICE_NAMES.iter().position(|s| *s == used.service) else {
                continue;
            };
            let (calls, time) = self.services[index].get_or_init(|| {
                let labels = ServiceLabels {
                    plugin: self.name.to_string(),
                    service: SERVICE_NAMES[index],
                };
                (
                    self.host_calls.get_or_create(&labels).clone(),
                    self.host_call_time.get_or_create(&labels).clone(),
                )
            });
            calls.inc_by(u64::from(used.calls));
            time.observe(used.time.as_secs_f64());
        }
    }

    /// Records a successful call.
    pub(crate) fn ok(&self, duration: std::time::Duration, fuel: Option<u64>) {
        self.ok.inc();
        self.latency.observe(duration.as_secs_f64());
        if let Some(fuel) = fuel {
            self.fuel.observe(fuel as f64);
        }
    }
}

impl Metrics {
    /// Handles for `name`'s successful calls.
    pub(crate) fn for_plugin(&self, name: &str) -> PluginMetrics {
        PluginMetrics {
            ok: self.calls.get_or_create(&outcome(name, "ok")).clone(),
            latency: self.latency.get_or_create(&plugin(name)).clone(),
            fuel: self.fuel.get_or_create(&plugin(name)).clone(),
            services: SERVICE_NAMES
                .iter()
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            name: Arc::from(name),
            host_calls: self.host_calls.clone(),
            host_call_time: self.host_call_time.clone(),
        }
    }

    /// Records one call: `outcome` is `ok` or an error kind.
    pub(crate) fn call(&self, name: &str, result: &str, seconds: f64, fuel: Option<u64>) {
        self.calls.get_or_create(&outcome(name, result)).inc();
        self.latency.get_or_create(&plugin(name)).observe(seconds);
        if let Some(fuel) = fuel {
            self.fuel.get_or_create(&plugin(name)).observe(fuel as f64);
        }
    }

    /// Records whether a pure operation's call was answered from the
    /// response cache.
    pub(crate) fn cache_lookup(&self, name: &str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.response_cache
            .get_or_create(&outcome(name, result))
            .inc();
    }

    /// Records how a job's attempt ended.
    pub(crate) fn job(&self, name: &str, ended: &str) {
        self.jobs.get_or_create(&outcome(name, ended)).inc();
    }

    /// Records a streaming call whose caller went away before its end.
    pub(crate) fn stream_cancelled(&self, name: &str) {
        self.streams_cancelled.get_or_create(&plugin(name)).inc();
    }

    /// Records a reload attempt.
    pub(crate) fn reload(&self, name: &str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&outcome(name, result)).inc();
    }

    /// Records one call during a rollout: which version served it and how
    /// it ended (`ok` or an error kind, a closed set).
    pub(crate) fn rollout_call(
        &self,
        name: &str,
        track: super::rollout::Track,
        outcome: &'static str,
        seconds: f64,
    ) {
        self.rollout_latency
            .get_or_create(&VersionLabels {
                plugin: name.to_owned(),
                track: track.as_str(),
            })
            .observe(seconds);
        self.rollout_calls
            .get_or_create(&TrackLabels {
                plugin: name.to_owned(),
                track: track.as_str(),
                outcome,
            })
            .inc();
    }

    /// Records how a rollout ended.
    pub(crate) fn rollout_ended(&self, name: &str, state: super::rollout::RolloutState) {
        if state == super::rollout::RolloutState::Running {
            return;
        }
        let how = state.as_str();
        self.rollouts.get_or_create(&outcome(name, how)).inc();
    }

    /// Records how an event delivery ended (ack, retry, reject, forward,
    /// dead_letter, error).
    pub(crate) fn event(&self, name: &str, result: &str) {
        self.events.get_or_create(&outcome(name, result)).inc();
    }

    /// The metrics in OpenMetrics text: the host's counters and histograms,
    /// the state of each loaded plugin now (`now`; a plugin unloaded since
    /// the last scrape is no longer shown), and the metrics plugins declared
    /// and updated themselves.
    pub(crate) fn render(
        &self,
        now: &[PluginGauges],
        declared: Vec<Arc<crate::services::metrics::PluginMetrics>>,
    ) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        prometheus_client::encoding::text::encode_registry(&mut out, &gauges(now))
            .expect("writing to a String cannot fail");
        crate::services::metrics::encode_into(&mut out, declared);
        prometheus_client::encoding::text::encode_eof(&mut out)
            .expect("writing to a String cannot fail");
        out
    }
}

/// What one loaded plugin looks like at a scrape.
pub(crate) struct PluginGauges {
    /// The plugin's name.
    pub(crate) name: String,
    /// Its live instances, idle and busy.
    pub(crate) instances: usize,
    /// Whether its circuit breaker is open (calls refused as `circuit_open`).
    pub(crate) circuit_open: bool,
    /// Its fuel per call, if fuel is metered.
    pub(crate) fuel_limit: Option<u64>,
    /// Bytes its response cache holds, when it has one.
    pub(crate) cache_bytes: Option<usize>,
}

/// The per-plugin gauges of one scrape, in a registry of their own.
fn gauges(now: &[PluginGauges]) -> Registry {
    let mut registry = Registry::default();
    let instances = Family::<PluginLabel, Gauge>::default();
    let circuit_open = Family::<PluginLabel, Gauge>::default();
    let fuel_limit = Family::<PluginLabel, Gauge>::default();
    let cache_bytes = Family::<PluginLabel, Gauge>::default();
    let int = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    for gauges in now {
        let label = plugin(&gauges.name);
        instances
            .get_or_create(&label)
            .set(int(gauges.instances as u64));
        circuit_open
            .get_or_create(&label)
            .set(i64::from(gauges.circuit_open));
        if let Some(limit) = gauges.fuel_limit {
            fuel_limit.get_or_create(&label).set(int(limit));
        }
        if let Some(bytes) = gauges.cache_bytes {
            cache_bytes.get_or_create(&label).set(int(bytes as u64));
        }
    }
    registry.register(
        "capsule_instances",
        "Live instances per plugin (idle and busy)",
        instances,
    );
    registry.register(
        "capsule_circuit_open",
        "1 while a plugin's circuit breaker is open and its calls are refused, else 0",
        circuit_open,
    );
    registry.register(
        "capsule_fuel_limit",
        "The fuel one call of a plugin may burn (absent when fuel is not metered)",
        fuel_limit,
    );
    registry.register(
        "capsule_response_cache_bytes",
        "Bytes a plugin's response cache of pure operations holds (absent without pure operations)",
        cache_bytes,
    );
    registry
}

/// An OpenMetrics exposition (as `prometheus_client` writes it) in the
/// Prometheus text format 0.0.4 that `text/plain` scrapers and `promtool`
/// read: a counter family is named by its `_total` samples, and the
/// `# UNIT` and `# EOF` lines, which that format does not have, go.
pub(crate) fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|tag| Some((tag, line.strip_prefix(tag)?)));
        match descriptor {
            Some((tag, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{tag}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let metrics = Metrics::default();
        metrics.call("hello", "ok", 0.001, Some(5_000));
        metrics.call("hello", "ok", 0.002, Some(5_000));
        metrics.call("hello", "timeout", 0.5, None);
        metrics.reload("hello", true);
        metrics.event("audit", "ack");
        metrics.cache_lookup("hello", true);
        let now = [PluginGauges {
            name: "hello".into(),
            instances: 3,
            circuit_open: true,
            fuel_limit: Some(1_000_000),
            cache_bytes: Some(4096),
        }];
        let text = metrics.render(&now, Vec::new());
        assert!(
            text.contains(r#"capsule_calls_total{plugin="hello",outcome="ok"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"capsule_calls_total{plugin="hello",outcome="timeout"} 1"#));
        assert!(text.contains(r#"capsule_call_duration_seconds_count{plugin="hello"} 3"#));
        assert!(text.contains(r#"capsule_call_fuel_count{plugin="hello"} 2"#));
        assert!(text.contains(r#"capsule_instances{plugin="hello"} 3"#));
        assert!(text.contains(r#"capsule_circuit_open{plugin="hello"} 1"#));
        assert!(text.contains(r#"capsule_fuel_limit{plugin="hello"} 1000000"#));
        assert!(text.contains(r#"capsule_response_cache_bytes{plugin="hello"} 4096"#));
        assert!(text.contains(r#"capsule_response_cache_total{plugin="hello",outcome="hit"} 1"#));
        // A plugin gone by the next scrape is gone from it.
        assert!(
            !metrics
                .render(&[], Vec::new())
                .contains("capsule_instances{")
        );
        assert!(text.contains(r#"capsule_reloads_total{plugin="hello",outcome="ok"} 1"#));
        assert!(text.contains(r#"capsule_events_total{plugin="audit",outcome="ack"} 1"#));
    }

    #[test]
    fn openmetrics_becomes_prometheus_text() {
        let openmetrics = "# HELP capsule_calls Plugin calls.\n\
            # TYPE capsule_calls counter\n\
            capsule_calls_total{plugin=\"a\"} 2\n\
            # HELP capsule_plugin_wait_seconds Waiting.\n\
            # TYPE capsule_plugin_wait_seconds gauge\n\
            # UNIT capsule_plugin_wait_seconds seconds\n\
            capsule_plugin_wait_seconds{plugin=\"a\"} 1.5\n\
            # EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP capsule_calls_total Plugin calls.\n\
             # TYPE capsule_calls_total counter\n\
             capsule_calls_total{plugin=\"a\"} 2\n\
             # HELP capsule_plugin_wait_seconds Waiting.\n\
             # TYPE capsule_plugin_wait_seconds gauge\n\
             capsule_plugin_wait_seconds{plugin=\"a\"} 1.5\n"
        );
    }
}
