//! Metrics the plugin keeps: counters, gauges and histograms, declared in
//! [`Plugin::metrics`](crate::Plugin::metrics) (they go into the signed
//! [manifest](crate::manifest), so the host knows them before the plugin
//! runs) and updated with [`add`], [`set`], [`gauge_add`] and [`observe`].
//! The host exports them in `/metrics` as
//! `capsule_plugin_<name>{plugin="…", <labels>}`.
//!
//! The operator grants them (`metrics = {}` in the policy, with a cap on
//! label combinations: `metrics = { series = 500 }`). Without the grant
//! every update is [`ServiceError::Denied`]; a label combination past the
//! cap is [`ServiceError::QuotaExceeded`]; an update off the declaration
//! (an undeclared name, another kind, the wrong number of label values, a
//! value that is not finite, a label value over 128 bytes) is
//! [`ServiceError::Invalid`]. Metrics are not part of the call's
//! transaction: a failed call's updates stay.
//!
//! ```
//! use capsule_guest::metrics::{self, Metric};
//! use capsule_guest::{Plugin, PluginError, Request, Response};
//!
//! struct Shop;
//!
//! impl Plugin for Shop {
//!     fn metrics() -> Vec<Metric> {
//!         vec![
//!             Metric::counter("orders", "Orders taken").labels(&["region"]),
//!             Metric::histogram("basket", "Items per order").buckets(&[1.0, 5.0, 20.0]),
//!         ]
//!     }
//!
//!     fn handle(request: Request) -> Result<Response, PluginError> {
//!         // Metrics never fail a call: a refused update is dropped here.
//!         let _ = metrics::add("orders", &["eu"], 1.0);
//!         let _ = metrics::observe("basket", &[], 3.0);
//!         Ok(Response::bytes("ok"))
//!     }
//! }
//! ```

use serde::Serialize;

use crate::ServiceError;

/// What kind of metric a [`Metric`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Only goes up ([`add`]); exported with `_total`.
    Counter,
    /// Goes up and down ([`set`], [`gauge_add`]).
    Gauge,
    /// Counts observations into buckets ([`observe`]).
    Histogram,
}

/// One metric the plugin declares: its name (lowercase letters, digits and
/// `_`, starting with a letter; with its unit appended, not ending in
/// `_total`, `_count`, `_sum`, `_bucket`, `_created` or `_info`), kind,
/// help text (at most 256 bytes, without control characters, `\` or `"`),
/// unit and label names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metric {
    name: String,
    kind: Kind,
    help: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
    labels: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    buckets: Option<Vec<f64>>,
}

impl Metric {
    fn new(name: &str, kind: Kind, help: &str) -> Self {
        Metric {
            name: name.to_owned(),
            kind,
            help: help.to_owned(),
            unit: None,
            labels: Vec::new(),
            buckets: None,
        }
    }

    /// A counter.
    pub fn counter(name: &str, help: &str) -> Self {
        Metric::new(name, Kind::Counter, help)
    }

    /// A gauge.
    pub fn gauge(name: &str, help: &str) -> Self {
        Metric::new(name, Kind::Gauge, help)
    }

    /// A histogram, with Prometheus' default buckets (for seconds) unless
    /// [`Metric::buckets`] says otherwise.
    pub fn histogram(name: &str, help: &str) -> Self {
        Metric::new(name, Kind::Histogram, help)
    }

    /// Its label names (at most 8; not `plugin`, `le` or `quantile`): every
    /// update gives one value per name, in this order.
    pub fn labels(mut self, names: &[&str]) -> Self {
        self.labels = names.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    /// Its unit (`seconds`, `bytes`), appended to the exported name.
    pub fn unit(mut self, unit: &str) -> Self {
        self.unit = Some(unit.to_owned());
        self
    }

    /// A histogram's bucket upper bounds, strictly increasing (at most 32).
    pub fn buckets(mut self, bounds: &[f64]) -> Self {
        self.buckets = Some(bounds.to_vec());
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Its label names.
    pub fn label_names(&self) -> &[String] {
        &self.labels
    }
}

fn owned(labels: &[&str]) -> Vec<String> {
    labels.iter().map(|l| (*l).to_owned()).collect()
}

/// Adds `value` (finite, not negative) to counter `name`.
pub fn add(name: &str, labels: &[&str], value: f64) -> Result<(), ServiceError> {
    crate::host::metrics_counter_add(name, &owned(labels), value)
}

/// Sets gauge `name` to `value`.
pub fn set(name: &str, labels: &[&str], value: f64) -> Result<(), ServiceError> {
    crate::host::metrics_gauge_set(name, &owned(labels), value)
}

/// Adds `delta` (may be negative) to gauge `name`.
pub fn gauge_add(name: &str, labels: &[&str], delta: f64) -> Result<(), ServiceError> {
    crate::host::metrics_gauge_add(name, &owned(labels), delta)
}

/// Counts one observation of `value` (finite, not negative) in histogram
/// `name`.
pub fn observe(name: &str, labels: &[&str], value: f64) -> Result<(), ServiceError> {
    crate::host::metrics_histogram_observe(name, &owned(labels), value)
}
