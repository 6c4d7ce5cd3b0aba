//! The `metrics` service: counters, gauges and histograms a plugin declared
//! in its static manifest, updated through `capsule:plugin/metrics` and
//! exported in `/metrics` as `capsule_plugin_<name>{plugin="…",…}`.
//!
//! Granted as `metrics = {}` (or `metrics = { series = 500 }`). Only the
//! label *values* come from the plugin at run time, and a plugin keeps at
//! most `series` label combinations across all its metrics: a new one past
//! the cap is `quota-exceeded`, so no string a plugin sends can grow the
//! host's memory or `/metrics` beyond what the operator allowed.
//!
//! A plugin's series live in one [`PluginMetrics`] shared by its instances
//! and kept across reloads and rollouts while its declarations stay the
//! same (a counter does not restart because a new version was loaded). The
//! [`MetricCatalog`] knows every live plugin's declarations, so a plugin
//! that would export a family another plugin exports in a different shape
//! (a counter against a gauge, other labels) is refused at load.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};
use wasmtime::component::{HasData, Linker};

use super::{
    Availability, Denials, Holds, Import, PolicyContext, PrepareContext, Service, StoreContext,
    Views,
};
use crate::artifact::declared_metrics::{MetricDeclaration, MetricKind};
use crate::bounds::{Invalid, range};
use crate::contract::{ServiceError, interfaces_v0_2};

/// The longest label value a plugin may send.
pub const MAX_LABEL_VALUE_BYTES: usize = 128;
/// The series a plugin may keep when the grant does not say.
pub const DEFAULT_SERIES: u32 = 1_000;
/// The most series a grant may allow one plugin.
pub const MAX_SERIES: u32 = 100_000;

/// What the operator grants: how many series (label combinations, across
/// all the plugin's metrics) the host keeps for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsGrant {
    /// The most series; a new one past it is `quota-exceeded`.
    pub series: u32,
}

impl Default for MetricsGrant {
    fn default() -> Self {
        MetricsGrant {
            series: DEFAULT_SERIES,
        }
    }
}

/// How a policy file writes the grant: `metrics = {}` or
/// `metrics = { series = 500 }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsPolicy {
    series: Option<u32>,
}

/// One series' value.
#[derive(Debug, Clone)]
enum Value {
    Counter(f64),
    Gauge(f64),
    Histogram {
        /// Observations per bucket (not cumulative); the last is `+Inf`.
        buckets: Box<[u64]>,
        sum: f64,
        count: u64,
    },
}

/// A series: which declared metric, and its label values in declared order.
type SeriesKey = (usize, Box<[Box<str>]>);

/// One plugin's declared metrics and the series its instances updated.
#[derive(Debug)]
pub(crate) struct PluginMetrics {
    plugin: Arc<str>,
    declarations: Vec<MetricDeclaration>,
    index: HashMap<String, usize>,
    max_series: AtomicUsize,
    series: Mutex<HashMap<SeriesKey, Value>>,
}

impl PluginMetrics {
    fn new(plugin: Arc<str>, declarations: Vec<MetricDeclaration>, max_series: u32) -> Self {
        let index = declarations
            .iter()
            .enumerate()
            .map(|(i, declaration)| (declaration.name.clone(), i))
            .collect();
        PluginMetrics {
            plugin,
            declarations,
            index,
            max_series: AtomicUsize::new(max_series as usize),
            series: Mutex::new(HashMap::new()),
        }
    }

    /// Applies one update of a metric of `kind`.
    fn update(
        &self,
        kind: MetricKind,
        name: &str,
        labels: Vec<String>,
        value: f64,
        apply: impl FnOnce(&mut Value),
    ) -> Result<(), ServiceError> {
        let invalid = |message: String| Err(ServiceError::Invalid(message));
        let Some(&metric) = self.index.get(name) else {
            return invalid(format!(
                "metric `{}` is not declared in this plugin's manifest",
                name.escape_debug()
            ));
        };
        let declaration = &self.declarations[metric];
        if declaration.kind != kind {
            return invalid(format!(
                "metric `{name}` is a {}, not a {}",
                declaration.kind.as_str(),
                kind.as_str()
            ));
        }
        if labels.len() != declaration.labels.len() {
            return invalid(format!(
                "metric `{name}` has {} labels ({}); {} values were given",
                declaration.labels.len(),
                declaration.labels.join(", "),
                labels.len()
            ));
        }
        if let Some(long) = labels.iter().find(|v| v.len() > MAX_LABEL_VALUE_BYTES) {
            return invalid(format!(
                "a label value of {} bytes is longer than the {MAX_LABEL_VALUE_BYTES} allowed",
                long.len()
            ));
        }
        if !value.is_finite() {
            return invalid(format!(
                "metric `{name}` was given {value}, which is not finite"
            ));
        }
        let key: SeriesKey = (
            metric,
            labels.into_iter().map(String::into_boxed_str).collect(),
        );
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = series.get_mut(&key) {
            apply(existing);
            return Ok(());
        }
        let cap = self.max_series.load(Ordering::Relaxed);
        if series.len() >= cap {
            return Err(ServiceError::QuotaExceeded(format!(
                "this plugin already has {cap} metric series, the most its `metrics.series` \
                 grant allows; existing series keep updating"
            )));
        }
        let mut fresh = match kind {
            MetricKind::Counter => Value::Counter(0.0),
            MetricKind::Gauge => Value::Gauge(0.0),
            MetricKind::Histogram => Value::Histogram {
                buckets: vec![0; declaration.bucket_bounds().len() + 1].into_boxed_slice(),
                sum: 0.0,
                count: 0,
            },
        };
        apply(&mut fresh);
        series.insert(key, fresh);
        Ok(())
    }

    fn counter_add(&self, name: &str, labels: Vec<String>, by: f64) -> Result<(), ServiceError> {
        if by < 0.0 {
            return Err(ServiceError::Invalid(format!(
                "counter `{name}` cannot go down (was given {by})"
            )));
        }
        self.update(MetricKind::Counter, name, labels, by, |value| {
            if let Value::Counter(total) = value {
                *total += by;
            }
        })
    }

    fn gauge(
        &self,
        name: &str,
        labels: Vec<String>,
        to: f64,
        add: bool,
    ) -> Result<(), ServiceError> {
        self.update(MetricKind::Gauge, name, labels, to, |value| {
            if let Value::Gauge(gauge) = value {
                *gauge = if add { *gauge + to } else { to };
            }
        })
    }

    fn observe(&self, name: &str, labels: Vec<String>, observed: f64) -> Result<(), ServiceError> {
        let bounds = self
            .index
            .get(name)
            .map(|&i| self.declarations[i].bucket_bounds())
            .unwrap_or_default();
        let bucket = bounds.partition_point(|bound| *bound < observed);
        self.update(MetricKind::Histogram, name, labels, observed, |value| {
            if let Value::Histogram {
                buckets,
                sum,
                count,
            } = value
                && let Some(slot) = buckets.get_mut(bucket)
            {
                *slot += 1;
                *sum += observed;
                *count += 1;
            }
        })
    }

    /// How many series the plugin has now.
    #[cfg(test)]
    pub(crate) fn series_count(&self) -> usize {
        self.series.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Every live plugin's metric declarations, by plugin name: where a load
/// learns whether its declarations clash with another plugin's, and where
/// a new version of a plugin finds the series of the one it replaces.
#[derive(Debug, Default)]
pub(crate) struct MetricCatalog {
    plugins: Mutex<HashMap<Arc<str>, Vec<Weak<PluginMetrics>>>>,
}

impl MetricCatalog {
    /// The series store for a version of `plugin` declaring `declarations`
    /// under a grant of `max_series`: the store of a live version with the
    /// very same declarations (its cap updated), else a new one. Refused
    /// when another plugin exports one of the same families in another
    /// shape.
    fn declare(
        &self,
        plugin: &Arc<str>,
        declarations: &[MetricDeclaration],
        max_series: u32,
    ) -> Result<Arc<PluginMetrics>, String> {
        let mut plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        plugins.retain(|_, versions| {
            versions.retain(|store| store.strong_count() > 0);
            !versions.is_empty()
        });
        for (other, versions) in plugins.iter().filter(|(name, _)| *name != plugin) {
            for store in versions.iter().filter_map(Weak::upgrade) {
                for theirs in &store.declarations {
                    let clash = declarations
                        .iter()
                        .find(|ours| ours.family() == theirs.family() && !ours.same_shape(theirs));
                    if let Some(ours) = clash {
                        return Err(format!(
                            "metric `{}` would be exported as `capsule_{}`, which plugin `{other}` \
                             exports as a {} with labels [{}]; this plugin declares a {} with \
                             labels [{}]",
                            ours.name,
                            ours.family(),
                            theirs.kind.as_str(),
                            theirs.labels.join(", "),
                            ours.kind.as_str(),
                            ours.labels.join(", ")
                        ));
                    }
                }
            }
        }
        let versions = plugins.entry(Arc::clone(plugin)).or_default();
        let same = versions
            .iter()
            .filter_map(Weak::upgrade)
            .find(|store| store.declarations == declarations);
        if let Some(store) = same {
            store
                .max_series
                .store(max_series as usize, Ordering::Relaxed);
            return Ok(store);
        }
        let store = Arc::new(PluginMetrics::new(
            Arc::clone(plugin),
            declarations.to_vec(),
            max_series,
        ));
        versions.push(Arc::downgrade(&store));
        Ok(store)
    }
}

/// Renders the series of `stores` (one per plugin) as Prometheus text
/// families `capsule_plugin_…`, each family once, its series by plugin.
pub(crate) fn encode_into(out: &mut String, stores: Vec<Arc<PluginMetrics>>) {
    let mut registry = Registry::with_prefix("capsule");
    registry.register_collector(Box::new(Exported(stores)));
    prometheus_client::encoding::text::encode_registry(out, &registry)
        .expect("writing to a String cannot fail");
}

#[derive(Debug)]
struct Exported(Vec<Arc<PluginMetrics>>);

impl prometheus_client::collector::Collector for Exported {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Family name → every (plugin, declaration index) exporting it.
        let mut families: BTreeMap<String, Vec<(&PluginMetrics, usize)>> = BTreeMap::new();
        for store in &self.0 {
            for (i, declaration) in store.declarations.iter().enumerate() {
                families
                    .entry(declaration.family())
                    .or_default()
                    .push((store, i));
            }
        }
        for members in families.values() {
            let (first, i) = members[0];
            let declaration = &first.declarations[i];
            let unit = declaration.unit.clone().map(Unit::Other);
            let metric_type = match declaration.kind {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Gauge => MetricType::Gauge,
                MetricKind::Histogram => MetricType::Histogram,
            };
            let name = format!("plugin_{}", declaration.name);
            let mut family =
                encoder.encode_descriptor(&name, &declaration.help, unit.as_ref(), metric_type)?;
            for &(store, metric) in members {
                let declared = &store.declarations[metric];
                let series = store.series.lock().unwrap_or_else(|e| e.into_inner());
                let mut rows: Vec<_> = series.iter().filter(|((m, _), _)| *m == metric).collect();
                rows.sort_by(|a, b| a.0.1.cmp(&b.0.1));
                for ((_, values), value) in rows {
                    let mut labels: Vec<(&str, &str)> = vec![("plugin", &store.plugin)];
                    labels.extend(
                        declared
                            .labels
                            .iter()
                            .map(String::as_str)
                            .zip(values.iter().map(|v| &**v)),
                    );
                    let mut sample = family.encode_family(&labels)?;
                    match value {
                        Value::Counter(total) => {
                            sample.encode_counter::<NoLabelSet, f64, f64>(total, None)?
                        }
                        Value::Gauge(gauge) => sample.encode_gauge(gauge)?,
                        Value::Histogram {
                            buckets,
                            sum,
                            count,
                        } => {
                            let bounds = declared
                                .bucket_bounds()
                                .iter()
                                .copied()
                                .chain([f64::INFINITY]);
                            let buckets: Vec<(f64, u64)> =
                                bounds.zip(buckets.iter().copied()).collect();
                            sample.encode_histogram::<NoLabelSet>(*sum, *count, &buckets, None)?
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Per-store state of the `metrics` service: the plugin's series, when
/// granted.
pub(crate) struct MetricsState {
    store: Option<Arc<PluginMetrics>>,
    denials: Arc<Denials>,
}

impl MetricsState {
    fn granted(&self) -> Result<&PluginMetrics, ServiceError> {
        match &self.store {
            Some(store) => Ok(store),
            None => {
                let message = "metrics were not granted to this plugin";
                self.denials.record("metrics", message);
                Err(ServiceError::Denied(message.into()))
            }
        }
    }
}

impl interfaces_v0_2::metrics::Host for MetricsState {
    fn counter_add(
        &mut self,
        name: String,
        labels: Vec<String>,
        value: f64,
    ) -> Result<(), ServiceError> {
        self.granted()?.counter_add(&name, labels, value)
    }

    fn gauge_set(
        &mut self,
        name: String,
        labels: Vec<String>,
        value: f64,
    ) -> Result<(), ServiceError> {
        self.granted()?.gauge(&name, labels, value, false)
    }

    fn gauge_add(
        &mut self,
        name: String,
        labels: Vec<String>,
        value: f64,
    ) -> Result<(), ServiceError> {
        self.granted()?.gauge(&name, labels, value, true)
    }

    fn histogram_observe(
        &mut self,
        name: String,
        labels: Vec<String>,
        value: f64,
    ) -> Result<(), ServiceError> {
        self.granted()?.observe(&name, labels, value)
    }
}

/// The `metrics` service.
pub(crate) struct Metrics;

struct MetricsData;

impl HasData for MetricsData {
    type Data<'a> = &'a mut MetricsState;
}

impl Service for Metrics {
    const NAME: &'static str = "metrics";
    const IMPORTS: &'static [Import] = &[Import::contract("metrics")];
    const BUDGETS: &'static str = "per plugin: `series` label combinations across its \
        metrics (1000 unless granted otherwise, at most 100000), each of at most 8 label \
        values of 128 bytes and 33 histogram buckets; a new series past the cap is \
        `quota-exceeded`. The families are the at most 64 its signed manifest declares";

    type Grant = Option<MetricsGrant>;
    type Policy = MetricsPolicy;
    type Summary = Option<MetricsGrant>;
    type Prepared = Option<Arc<PluginMetrics>>;
    type State = MetricsState;

    fn from_policy(policy: MetricsPolicy, _: &PolicyContext<'_>) -> Result<Self::Grant, Invalid> {
        Ok(Some(MetricsGrant {
            series: policy.series.unwrap_or(DEFAULT_SERIES),
        }))
    }

    fn validate(grant: &Self::Grant) -> Result<(), Invalid> {
        match grant {
            Some(grant) => range(
                "series",
                u64::from(grant.series),
                1,
                u64::from(MAX_SERIES),
                "series",
            ),
            None => Ok(()),
        }
    }

    fn availability(grant: &Self::Grant) -> Availability {
        Availability::granted_if(grant.is_some())
    }

    fn summary(grant: &Self::Grant) -> Self::Summary {
        grant.clone()
    }

    fn prepare(
        grant: &Self::Grant,
        context: &PrepareContext<'_>,
    ) -> Result<Self::Prepared, String> {
        let declarations = context
            .manifest
            .map(|m| m.metrics.as_slice())
            .unwrap_or_default();
        match grant {
            // A plugin that declares no metrics has nothing to keep; its
            // calls are answered `invalid` (not declared), not `denied`.
            Some(grant) => context
                .host
                .metric_catalog
                .declare(context.plugin, declarations, grant.series)
                .map(Some),
            None => Ok(None),
        }
    }

    fn new_state(
        prepared: &Self::Prepared,
        store: &mut StoreContext<'_>,
    ) -> Result<MetricsState, String> {
        Ok(MetricsState {
            store: prepared.clone(),
            denials: Arc::clone(store.denials),
        })
    }

    fn add_to_linker<T: Holds<Self> + Views>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        interfaces_v0_2::metrics::add_to_linker::<T, MetricsData>(linker, |store| store.state())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::artifact::manifest::Manifest;
    use crate::contract::interfaces_v0_2::metrics::Host as _;
    use crate::limits::Limits;
    use crate::services::harness::Harness;

    fn declared(metrics: serde_json::Value) -> Manifest {
        let doc = serde_json::json!({
            "format": 1, "name": "shop", "version": "1.0.0", "metrics": metrics,
        });
        Manifest::parse(doc.to_string().as_bytes()).unwrap()
    }

    fn shop() -> Manifest {
        declared(serde_json::json!([
            {"name": "orders", "kind": "counter", "help": "Orders taken", "labels": ["region"]},
            {"name": "queue", "kind": "gauge", "help": "Orders waiting"},
            {"name": "latency", "kind": "histogram", "help": "Time to confirm",
             "unit": "seconds", "buckets": [0.1, 1.0]},
        ]))
    }

    fn granted(series: u32, manifest: &Manifest) -> Harness<Metrics> {
        Harness::granted_with(
            &Some(MetricsGrant { series }),
            Limits::default(),
            Some(manifest),
        )
    }

    fn render(harness: &Harness<Metrics>) -> String {
        let mut out = String::new();
        encode_into(&mut out, harness.state.store.iter().cloned().collect());
        out
    }

    fn labels(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn declared_metrics_update_and_export_under_the_plugins_name() {
        let mut metrics = granted(10, &shop());
        let state = &mut metrics.state;
        state
            .counter_add("orders".into(), labels(&["eu"]), 2.0)
            .unwrap();
        state
            .counter_add("orders".into(), labels(&["eu"]), 1.0)
            .unwrap();
        state
            .counter_add("orders".into(), labels(&["us"]), 1.0)
            .unwrap();
        state.gauge_set("queue".into(), vec![], 5.0).unwrap();
        state.gauge_add("queue".into(), vec![], -2.0).unwrap();
        state
            .histogram_observe("latency".into(), vec![], 0.05)
            .unwrap();
        state
            .histogram_observe("latency".into(), vec![], 0.5)
            .unwrap();
        state
            .histogram_observe("latency".into(), vec![], 7.0)
            .unwrap();
        let text = render(&metrics);
        for line in [
            "# TYPE capsule_plugin_orders counter",
            "# HELP capsule_plugin_orders Orders taken",
            r#"capsule_plugin_orders_total{plugin="under-test",region="eu"} 3.0"#,
            r#"capsule_plugin_orders_total{plugin="under-test",region="us"} 1.0"#,
            r#"capsule_plugin_queue{plugin="under-test"} 3.0"#,
            "# TYPE capsule_plugin_latency_seconds histogram",
            r#"capsule_plugin_latency_seconds_bucket{le="0.1",plugin="under-test"} 1"#,
            r#"capsule_plugin_latency_seconds_bucket{le="1.0",plugin="under-test"} 2"#,
            r#"capsule_plugin_latency_seconds_bucket{le="+Inf",plugin="under-test"} 3"#,
            r#"capsule_plugin_latency_seconds_count{plugin="under-test"} 3"#,
            r#"capsule_plugin_latency_seconds_sum{plugin="under-test"} 7.55"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn updates_off_the_declaration_are_invalid() {
        let mut metrics = granted(10, &shop());
        let state = &mut metrics.state;
        let cases = [
            state.counter_add("unknown".into(), vec![], 1.0),
            state.gauge_set("orders".into(), labels(&["eu"]), 1.0),
            state.counter_add("orders".into(), vec![], 1.0),
            state.counter_add("orders".into(), labels(&["eu", "x"]), 1.0),
            state.counter_add("orders".into(), labels(&["eu"]), -1.0),
            state.counter_add("orders".into(), labels(&["eu"]), f64::NAN),
            state.gauge_set("queue".into(), vec![], f64::INFINITY),
            state.counter_add(
                "orders".into(),
                vec!["x".repeat(MAX_LABEL_VALUE_BYTES + 1)],
                1.0,
            ),
        ];
        for (i, result) in cases.into_iter().enumerate() {
            assert!(
                matches!(result, Err(ServiceError::Invalid(_))),
                "case {i}: {result:?}"
            );
        }
        assert_eq!(metrics.state.store.as_ref().unwrap().series_count(), 0);
    }

    #[test]
    fn new_series_past_the_cap_are_refused_and_old_ones_keep_counting() {
        let mut metrics = granted(3, &shop());
        for region in ["a", "b", "c"] {
            metrics
                .state
                .counter_add("orders".into(), labels(&[region]), 1.0)
                .unwrap();
        }
        for attempt in 0..10_000 {
            let refused =
                metrics
                    .state
                    .counter_add("orders".into(), labels(&[&format!("r{attempt}")]), 1.0);
            assert!(
                matches!(refused, Err(ServiceError::QuotaExceeded(_))),
                "{refused:?}"
            );
        }
        metrics
            .state
            .counter_add("orders".into(), labels(&["a"]), 1.0)
            .unwrap();
        assert_eq!(metrics.state.store.as_ref().unwrap().series_count(), 3);
        let text = render(&metrics);
        assert!(text.contains(r#"region="a"} 2.0"#), "{text}");
        assert!(text.len() < 1024, "{} bytes:\n{text}", text.len());
    }

    #[test]
    fn label_values_are_escaped_in_the_exposition() {
        let mut metrics = granted(10, &shop());
        let hostile = "eu\"} 1\nfake_metric{x=\"\\";
        metrics
            .state
            .counter_add("orders".into(), labels(&[hostile]), 1.0)
            .unwrap();
        let text = render(&metrics);
        assert!(
            text.contains(r#"region="eu\"} 1\nfake_metric{x=\"\\"} 1.0"#),
            "{text}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("fake_metric")),
            "{text}"
        );
    }

    #[test]
    fn without_the_grant_every_update_is_denied() {
        let mut metrics = Harness::<Metrics>::not_granted();
        let denied = metrics.state.counter_add("orders".into(), vec![], 1.0);
        assert!(matches!(denied, Err(ServiceError::Denied(_))), "{denied:?}");
    }

    #[test]
    fn the_policy_grants_a_series_cap_within_range() {
        let default = Harness::<Metrics>::from_policy("{}", Path::new(".")).unwrap();
        assert!(default.state.store.is_some());
        let err = Harness::<Metrics>::from_policy("{ series = 0 }", Path::new(".")).err();
        assert_eq!(err.map(|e| e.field).as_deref(), Some("series"));
        let err = Harness::<Metrics>::from_policy("{ serie = 5 }", Path::new(".")).err();
        assert!(err.is_some());
    }

    #[test]
    fn the_catalog_refuses_a_clash_and_keeps_series_across_versions() {
        let catalog = MetricCatalog::default();
        let shop_name: Arc<str> = Arc::from("shop");
        let declarations = shop().metrics;
        let v1 = catalog.declare(&shop_name, &declarations, 10).unwrap();
        v1.counter_add("orders", labels(&["eu"]), 4.0).unwrap();
        // A new version with the same declarations continues the series.
        let v2 = catalog.declare(&shop_name, &declarations, 20).unwrap();
        assert!(Arc::ptr_eq(&v1, &v2));
        assert_eq!(v2.max_series.load(Ordering::Relaxed), 20);
        // One with other declarations starts afresh.
        let changed = declared(serde_json::json!([{"name": "orders", "kind": "gauge"}])).metrics;
        let v3 = catalog.declare(&shop_name, &changed, 10).unwrap();
        assert!(!Arc::ptr_eq(&v1, &v3));

        // Another plugin may share a family in the same shape, not another.
        let other: Arc<str> = Arc::from("billing");
        let same = declared(serde_json::json!([
            {"name": "queue", "kind": "gauge", "help": "Its own help"}
        ]))
        .metrics;
        catalog.declare(&other, &same, 10).unwrap();
        let clash = declared(serde_json::json!([
            {"name": "latency", "kind": "gauge", "unit": "seconds"}
        ]))
        .metrics;
        let err = catalog.declare(&other, &clash, 10).unwrap_err();
        assert!(err.contains("capsule_plugin_latency_seconds"), "{err}");
        assert!(
            err.contains("plugin `shop` exports as a histogram"),
            "{err}"
        );

        // Once no version of `shop` is alive, its families are free again.
        drop((v1, v2, v3));
        catalog.declare(&other, &clash, 10).unwrap();
    }
}
