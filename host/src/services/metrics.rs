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
use crate::bounds::{Invalid, KIB, bytes, range};
use crate::contract::{ServiceError, interfaces_v0_2};
use crate::units::Size;

/// The longest label value a plugin may send.
pub const MAX_LABEL_VALUE_BYTES: usize = 128;
/// The series a plugin may keep when the grant does not say.
pub const DEFAULT_SERIES: u32 = 1_000;
/// The most series a grant may allow one plugin.
pub const MAX_SERIES: u32 = 100_000;
/// What a plugin's series may add to one `/metrics` scrape when the grant
/// does not say.
pub const DEFAULT_EXPORT_BYTES: u64 = 1 << 20;
/// The most a grant may let one plugin add to a scrape.
pub const MAX_EXPORT_BYTES: u64 = 64 << 20;

/// What the operator grants: how many series (label combinations, across
/// all the plugin's metrics) the host keeps for it, and how many bytes they
/// may add to a `/metrics` scrape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsGrant {
    /// The most series; a new one past it is `quota-exceeded`.
    pub series: u32,
    /// The most bytes the plugin's series add to one scrape (a histogram
    /// series is one line per bucket plus two); a new series past it is
    /// `quota-exceeded`.
    pub max_bytes: u64,
}

impl Default for MetricsGrant {
    fn default() -> Self {
        MetricsGrant {
            series: DEFAULT_SERIES,
            max_bytes: DEFAULT_EXPORT_BYTES,
        }
    }
}

/// How a policy file writes the grant: `metrics = {}` or
/// `metrics = { series = 500, max_bytes = "256KiB" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsPolicy {
    series: Option<u32>,
    max_bytes: Option<Size>,
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

/// One update a plugin asks for.
#[derive(Debug, Clone, Copy)]
enum Update {
    Add(f64),
    Set(f64),
    /// An observation and the bucket it falls in.
    Observe(f64, usize),
}

impl Value {
    fn fresh(declaration: &MetricDeclaration) -> Value {
        match declaration.kind {
            MetricKind::Counter => Value::Counter(0.0),
            MetricKind::Gauge => Value::Gauge(0.0),
            MetricKind::Histogram => Value::Histogram {
                buckets: vec![0; declaration.bucket_bounds().len() + 1].into_boxed_slice(),
                sum: 0.0,
                count: 0,
            },
        }
    }

    /// Applies `update`, unless the result would not be finite (a counter
    /// or sum that overflowed), which changes nothing.
    fn apply(&mut self, update: Update) -> bool {
        match (self, update) {
            (Value::Counter(number) | Value::Gauge(number), Update::Add(by)) => {
                let next = *number + by;
                next.is_finite() && {
                    *number = next;
                    true
                }
            }
            (Value::Gauge(number), Update::Set(to)) => {
                *number = to;
                true
            }
            (
                Value::Histogram {
                    buckets,
                    sum,
                    count,
                },
                Update::Observe(observed, bucket),
            ) => {
                let next = *sum + observed;
                match buckets.get_mut(bucket) {
                    Some(slot) if next.is_finite() => {
                        *slot += 1;
                        *sum = next;
                        *count += 1;
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

/// A series: which declared metric, and its label values in declared order.
type SeriesKey = (usize, Box<[Box<str>]>);

/// The series of one metric at a scrape: label values and value, sorted.
type MetricSnapshot = Vec<(Box<[Box<str>]>, Value)>;

/// The series of one plugin and what they add to a scrape.
#[derive(Debug, Default)]
struct Series {
    values: HashMap<SeriesKey, Value>,
    exported_bytes: usize,
}

/// What one version of a plugin may keep: its grant, in numbers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeriesBudget {
    series: usize,
    bytes: usize,
}

/// One plugin's declared metrics and the series its instances updated.
#[derive(Debug)]
pub(crate) struct PluginMetrics {
    plugin: Arc<str>,
    declarations: Vec<MetricDeclaration>,
    index: HashMap<String, usize>,
    series: Mutex<Series>,
}

impl PluginMetrics {
    fn new(plugin: Arc<str>, declarations: Vec<MetricDeclaration>) -> Self {
        let index = declarations
            .iter()
            .enumerate()
            .map(|(i, declaration)| (declaration.name.clone(), i))
            .collect();
        PluginMetrics {
            plugin,
            declarations,
            index,
            series: Mutex::new(Series::default()),
        }
    }

    /// What one series of `declaration` with `labels` adds to a scrape: a
    /// line per sample (a histogram's buckets, `+Inf`, sum and count), each
    /// with the family name, every label escaped, and the value.
    fn exposition_bytes(&self, declaration: &MetricDeclaration, labels: &[Box<str>]) -> usize {
        let escaped = |value: &str| {
            value.len()
                + value
                    .bytes()
                    .filter(|b| matches!(b, b'\\' | b'"' | b'\n'))
                    .count()
        };
        let labels: usize = declaration
            .labels
            .iter()
            .zip(labels)
            .map(|(name, value)| name.len() + escaped(value) + 4)
            .sum();
        let line = "capsule_".len()
            + declaration.family().len()
            + "_bucket".len()
            + "plugin=\"\",".len()
            + self.plugin.len()
            + labels
            + "le=\"\",".len()
            + 24
            + 32;
        let lines = match declaration.kind {
            MetricKind::Counter | MetricKind::Gauge => 1,
            MetricKind::Histogram => declaration.bucket_bounds().len() + 3,
        };
        lines * line
    }

    /// Applies one update of a metric of `kind`, within `budget`.
    fn update(
        &self,
        budget: SeriesBudget,
        kind: MetricKind,
        name: &str,
        labels: Vec<String>,
        update: Update,
    ) -> Result<(), ServiceError> {
        let invalid = |message: String| Err(ServiceError::Invalid(message));
        let Some(&metric) = self.index.get(name) else {
            let shown: String = name.chars().take(64).collect();
            return invalid(format!(
                "metric `{}` is not declared in this plugin's manifest",
                shown.escape_debug()
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
        let key: SeriesKey = (
            metric,
            labels.into_iter().map(String::into_boxed_str).collect(),
        );
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = series.values.get_mut(&key) {
            return match existing.apply(update) {
                true => Ok(()),
                false => invalid(format!("metric `{name}` would no longer be finite")),
            };
        }
        if series.values.len() >= budget.series {
            return Err(ServiceError::QuotaExceeded(format!(
                "this plugin already has {} metric series, the most its `metrics.series` grant \
                 allows; existing series keep updating",
                budget.series
            )));
        }
        let bytes = self.exposition_bytes(declaration, &key.1);
        if series.exported_bytes + bytes > budget.bytes {
            return Err(ServiceError::QuotaExceeded(format!(
                "a new series of `{name}` would take this plugin's metrics past the {} bytes of \
                 `/metrics` its `metrics.max_bytes` grant allows; existing series keep updating",
                budget.bytes
            )));
        }
        let mut fresh = Value::fresh(declaration);
        if !fresh.apply(update) {
            return invalid(format!("metric `{name}` would not be finite"));
        }
        series.exported_bytes += bytes;
        series.values.insert(key, fresh);
        Ok(())
    }

    fn counter_add(
        &self,
        budget: SeriesBudget,
        name: &str,
        labels: Vec<String>,
        by: f64,
    ) -> Result<(), ServiceError> {
        if !by.is_finite() || by < 0.0 {
            return Err(ServiceError::Invalid(format!(
                "counter `{name}` only goes up, by a finite amount (was given {by})"
            )));
        }
        self.update(budget, MetricKind::Counter, name, labels, Update::Add(by))
    }

    fn gauge(
        &self,
        budget: SeriesBudget,
        name: &str,
        labels: Vec<String>,
        update: Update,
    ) -> Result<(), ServiceError> {
        let (Update::Set(value) | Update::Add(value) | Update::Observe(value, _)) = update;
        if !value.is_finite() {
            return Err(ServiceError::Invalid(format!(
                "gauge `{name}` was given {value}, which is not finite"
            )));
        }
        self.update(budget, MetricKind::Gauge, name, labels, update)
    }

    fn observe(
        &self,
        budget: SeriesBudget,
        name: &str,
        labels: Vec<String>,
        observed: f64,
    ) -> Result<(), ServiceError> {
        if !observed.is_finite() || observed < 0.0 {
            return Err(ServiceError::Invalid(format!(
                "histogram `{name}` counts finite, non-negative observations (was given {observed})"
            )));
        }
        let bounds = self
            .index
            .get(name)
            .map(|&i| self.declarations[i].bucket_bounds())
            .unwrap_or_default();
        // `le` is inclusive: a value equal to a bound counts in its bucket.
        let bucket = bounds.partition_point(|bound| *bound < observed);
        self.update(
            budget,
            MetricKind::Histogram,
            name,
            labels,
            Update::Observe(observed, bucket),
        )
    }

    /// How many series the plugin has now.
    #[cfg(test)]
    pub(crate) fn series_count(&self) -> usize {
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values
            .len()
    }

    /// Its series grouped by metric, each group sorted by label values:
    /// one lock, one pass.
    fn snapshot(&self) -> Vec<MetricSnapshot> {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut groups = vec![Vec::new(); self.declarations.len()];
        for ((metric, labels), value) in &series.values {
            if let Some(group) = groups.get_mut(*metric) {
                group.push((labels.clone(), value.clone()));
            }
        }
        drop(series);
        for group in &mut groups {
            group.sort_by(|a, b| a.0.cmp(&b.0));
        }
        groups
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
    /// The series store for a version of `plugin` declaring
    /// `declarations`: the store of a live version with the very same
    /// declarations, else a new one. (Each version keeps its own budget: a
    /// reload that fails leaves the running version's as it was.) Refused
    /// when another plugin exports one of the same families in another
    /// shape.
    fn declare(
        &self,
        plugin: &Arc<str>,
        declarations: &[MetricDeclaration],
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
            return Ok(store);
        }
        let store = Arc::new(PluginMetrics::new(
            Arc::clone(plugin),
            declarations.to_vec(),
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
        // Each plugin's series, taken under one lock each.
        let snapshots: Vec<_> = self.0.iter().map(|store| store.snapshot()).collect();
        // Family name → every (plugin, declaration index) exporting it.
        let mut families: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
        for (s, store) in self.0.iter().enumerate() {
            for (i, declaration) in store.declarations.iter().enumerate() {
                families
                    .entry(declaration.family())
                    .or_default()
                    .push((s, i));
            }
        }
        for members in families.values() {
            let (first, i) = members[0];
            let declaration = &self.0[first].declarations[i];
            let unit = declaration.unit.clone().map(Unit::Other);
            let metric_type = match declaration.kind {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Gauge => MetricType::Gauge,
                MetricKind::Histogram => MetricType::Histogram,
            };
            let name = format!("plugin_{}", declaration.name);
            let mut family =
                encoder.encode_descriptor(&name, &declaration.help, unit.as_ref(), metric_type)?;
            for &(s, metric) in members {
                let store = &self.0[s];
                let declared = &store.declarations[metric];
                for (values, value) in &snapshots[s][metric] {
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
    store: Option<(Arc<PluginMetrics>, SeriesBudget)>,
    denials: Arc<Denials>,
}

impl MetricsState {
    fn granted(&self) -> Result<(&PluginMetrics, SeriesBudget), ServiceError> {
        match &self.store {
            Some((store, budget)) => Ok((store, *budget)),
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
        let (store, budget) = self.granted()?;
        store.counter_add(budget, &name, labels, value)
    }

    fn gauge_set(
        &mut self,
        name: String,
        labels: Vec<String>,
        value: f64,
    ) -> Result<(), ServiceError> {
        let (store, budget) = self.granted()?;
        store.gauge(budget, &name, labels, Update::Set(value))
    }

    fn gauge_add(
        &mut self,
        name: String,
        labels: Vec<String>,
        value: f64,
    ) -> Result<(), ServiceError> {
        let (store, budget) = self.granted()?;
        store.gauge(budget, &name, labels, Update::Add(value))
    }

    fn histogram_observe(
        &mut self,
        name: String,
        labels: Vec<String>,
        value: f64,
    ) -> Result<(), ServiceError> {
        let (store, budget) = self.granted()?;
        store.observe(budget, &name, labels, value)
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
    const BUDGETS: &'static str = "per plugin version: `series` label combinations across \
        its metrics (1000 unless granted otherwise, at most 100000) and `max_bytes` of \
        `/metrics` they may add to a scrape (1 MiB, at most 64 MiB; a histogram series \
        counts a line per bucket), each of at most 8 label values of 128 bytes; a new series \
        past either is `quota-exceeded`. The families are the at most 64 its signed manifest \
        declares";

    type Grant = Option<MetricsGrant>;
    type Policy = MetricsPolicy;
    type Summary = Option<MetricsGrant>;
    type Prepared = Option<(Arc<PluginMetrics>, SeriesBudget)>;
    type State = MetricsState;

    fn from_policy(policy: MetricsPolicy, _: &PolicyContext<'_>) -> Result<Self::Grant, Invalid> {
        Ok(Some(MetricsGrant {
            series: policy.series.unwrap_or(DEFAULT_SERIES),
            max_bytes: policy.max_bytes.map_or(DEFAULT_EXPORT_BYTES, |size| size.0),
        }))
    }

    fn validate(grant: &Self::Grant) -> Result<(), Invalid> {
        let Some(grant) = grant else { return Ok(()) };
        range(
            "series",
            u64::from(grant.series),
            1,
            u64::from(MAX_SERIES),
            "series",
        )?;
        bytes("max_bytes", grant.max_bytes, 4 * KIB, MAX_EXPORT_BYTES)
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
            Some(grant) => {
                let store = context
                    .host
                    .metric_catalog
                    .declare(context.plugin, declarations)?;
                let budget = SeriesBudget {
                    series: grant.series as usize,
                    bytes: usize::try_from(grant.max_bytes).unwrap_or(usize::MAX),
                };
                Ok(Some((store, budget)))
            }
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
        let grant = MetricsGrant {
            series,
            ..MetricsGrant::default()
        };
        Harness::granted_with(&Some(grant), Limits::default(), Some(manifest))
    }

    fn render(harness: &Harness<Metrics>) -> String {
        let mut out = String::new();
        let stores = harness
            .state
            .store
            .iter()
            .map(|(store, _)| Arc::clone(store));
        encode_into(&mut out, stores.collect());
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
            // `le` is inclusive: 0.1 counts in the 0.1 bucket.
            .histogram_observe("latency".into(), vec![], 0.1)
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
            r#"capsule_plugin_latency_seconds_sum{plugin="under-test"} 7.6"#,
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
            state.histogram_observe("latency".into(), vec![], -1.0),
            state.counter_add("x".repeat(1 << 20), vec![], 1.0),
            state.counter_add(
                "orders".into(),
                vec!["x".repeat(MAX_LABEL_VALUE_BYTES + 1)],
                1.0,
            ),
        ];
        for (i, result) in cases.into_iter().enumerate() {
            let Err(ServiceError::Invalid(message)) = &result else {
                panic!("case {i}: {result:?}");
            };
            assert!(message.len() < 512, "case {i}: an unbounded message");
        }
        // A gauge that would overflow keeps its value.
        metrics
            .state
            .gauge_add("queue".into(), vec![], f64::MAX)
            .unwrap();
        let overflow = metrics.state.gauge_add("queue".into(), vec![], f64::MAX);
        assert!(
            matches!(overflow, Err(ServiceError::Invalid(_))),
            "{overflow:?}"
        );
        assert_eq!(metrics.state.store.as_ref().unwrap().0.series_count(), 1);
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
        assert_eq!(metrics.state.store.as_ref().unwrap().0.series_count(), 3);
        let text = render(&metrics);
        assert!(text.contains(r#"region="a"} 2.0"#), "{text}");
        assert!(text.len() < 1024, "{} bytes:\n{text}", text.len());
    }

    #[test]
    fn what_the_series_add_to_a_scrape_is_capped_in_bytes() {
        // Wide histograms: 8 labels of 128-byte values, 32 buckets each.
        let names: Vec<String> = (0..8).map(|i| format!("label_{i}")).collect();
        let bounds: Vec<f64> = (1..=32).map(f64::from).collect();
        let wide = declared(serde_json::json!([{
            "name": "wide", "kind": "histogram", "labels": names, "buckets": bounds,
        }]));
        let grant = MetricsGrant {
            series: MAX_SERIES,
            max_bytes: 256 * KIB,
        };
        let mut metrics =
            Harness::<Metrics>::granted_with(&Some(grant), Limits::default(), Some(&wide));
        let mut kept = 0;
        let refused = loop {
            let values: Vec<String> = (0..8).map(|i| format!("{kept:0>120}{i}\"")).collect();
            match metrics.state.histogram_observe("wide".into(), values, 1.0) {
                Ok(()) => kept += 1,
                Err(err) => break err,
            }
        };
        assert!(
            matches!(&refused, ServiceError::QuotaExceeded(m) if m.contains("metrics.max_bytes")),
            "{refused:?}"
        );
        assert!(kept > 0 && kept < 100, "{kept} wide series");
        let text = render(&metrics);
        assert!(
            text.len() <= 256 << 10,
            "{} bytes exported for a 256 KiB budget",
            text.len()
        );
        // The estimate is not far off what is really written.
        assert!(text.len() > 128 << 10, "{} bytes", text.len());
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
        let v1 = catalog.declare(&shop_name, &declarations).unwrap();
        let budget = SeriesBudget {
            series: 10,
            bytes: 1 << 20,
        };
        v1.counter_add(budget, "orders", labels(&["eu"]), 4.0)
            .unwrap();
        // A new version with the same declarations continues the series.
        let v2 = catalog.declare(&shop_name, &declarations).unwrap();
        assert!(Arc::ptr_eq(&v1, &v2));
        assert_eq!(v2.series_count(), 1);
        // One with other declarations starts afresh.
        let changed = declared(serde_json::json!([{"name": "orders", "kind": "gauge"}])).metrics;
        let v3 = catalog.declare(&shop_name, &changed).unwrap();
        assert!(!Arc::ptr_eq(&v1, &v3));

        // Another plugin may share a family in the same shape, not another.
        let other: Arc<str> = Arc::from("billing");
        let same = declared(serde_json::json!([
            {"name": "queue", "kind": "gauge", "help": "Its own help"}
        ]))
        .metrics;
        catalog.declare(&other, &same).unwrap();
        let clash = declared(serde_json::json!([
            {"name": "latency", "kind": "gauge", "unit": "seconds"}
        ]))
        .metrics;
        let err = catalog.declare(&other, &clash).unwrap_err();
        assert!(err.contains("capsule_plugin_latency_seconds"), "{err}");
        assert!(
            err.contains("plugin `shop` exports as a histogram"),
            "{err}"
        );

        // Once no version of `shop` is alive, its families are free again.
        drop((v1, v2, v3));
        catalog.declare(&other, &clash).unwrap();
    }
}
