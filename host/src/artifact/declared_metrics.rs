//! The metrics a plugin declares in its static manifest (`metrics`): each
//! one's name, kind, help, unit, label names and histogram buckets. The
//! `metrics` service only updates metrics declared here, and `/metrics`
//! exports them as `capsule_plugin_<name>[_<unit>]{plugin="…",…}`.
//!
//! Declared up front, so that a host knows every family before the plugin
//! runs: two plugins that would export one family name with different
//! kinds or labels are refused at load, and no string a plugin sends at
//! run time can become a metric name or a label name.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The most metrics one plugin may declare.
pub const MAX_METRICS: usize = 64;
/// The longest metric, unit or label name.
pub const MAX_METRIC_NAME_BYTES: usize = 64;
/// The longest help text.
pub const MAX_HELP_BYTES: usize = 256;
/// The most label names one metric may have.
pub const MAX_LABELS: usize = 8;
/// The most bucket bounds one histogram may have.
pub const MAX_BUCKETS: usize = 32;
/// The buckets a histogram gets when it declares none (Prometheus' own
/// defaults, for seconds).
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Suffixes the exposition format gives a meaning (a counter's samples end
/// in `_total`, a histogram's in `_bucket`, `_sum` and `_count`): a metric
/// named with one could collide with another's samples.
const RESERVED_SUFFIXES: [&str; 6] = ["_total", "_bucket", "_sum", "_count", "_created", "_info"];
/// Label names the host sets itself or the exposition format reserves.
const RESERVED_LABELS: [&str; 3] = ["plugin", "le", "quantile"];

/// What kind of metric a declaration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Only goes up (`counter-add`).
    Counter,
    /// Goes up and down (`gauge-set`, `gauge-add`).
    Gauge,
    /// Counts observations into buckets (`histogram-observe`).
    Histogram,
}

impl MetricKind {
    /// The kind's name, as the manifest writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// One metric a plugin declares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricDeclaration {
    /// The metric's name: lowercase letters, digits and `_`, starting with a
    /// letter; exported as `capsule_plugin_<name>`.
    pub name: String,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// What it measures, shown in `# HELP`.
    #[serde(default)]
    pub help: String,
    /// Its unit (`seconds`, `bytes`, …), appended to the exported name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The names of its labels; every update gives one value per name, in
    /// this order.
    #[serde(default)]
    pub labels: Vec<String>,
    /// A histogram's bucket upper bounds, increasing; [`DEFAULT_BUCKETS`]
    /// when absent. Only histograms have them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<f64>>,
}

impl MetricDeclaration {
    /// The family name `/metrics` shows, without the `capsule_` prefix and
    /// the sample suffixes: `plugin_<name>[_<unit>]`.
    pub fn family(&self) -> String {
        match &self.unit {
            Some(unit) => format!("plugin_{}_{unit}", self.name),
            None => format!("plugin_{}", self.name),
        }
    }

    /// A histogram's bucket bounds (declared or default); empty for other
    /// kinds.
    pub fn bucket_bounds(&self) -> &[f64] {
        match (self.kind, &self.buckets) {
            (MetricKind::Histogram, Some(buckets)) => buckets,
            (MetricKind::Histogram, None) => &DEFAULT_BUCKETS,
            _ => &[],
        }
    }

    /// Whether two declarations export the same family in the same shape
    /// (help aside): what two plugins sharing a family name must agree on.
    pub fn same_shape(&self, other: &MetricDeclaration) -> bool {
        self.family() == other.family()
            && self.kind == other.kind
            && self.labels == other.labels
            && self.bucket_bounds() == other.bucket_bounds()
    }

    fn check(&self) -> Result<(), String> {
        identifier("metric name", &self.name)?;
        let field = |what: &str| format!("the {what} of metric `{}`", self.name);
        if self.help.len() > MAX_HELP_BYTES
            || self
                .help
                .chars()
                .any(|c| c.is_control() || c == '\\' || c == '"')
        {
            return Err(format!(
                "{} must be at most {MAX_HELP_BYTES} bytes without control characters, `\\` or `\"`",
                field("help")
            ));
        }
        if let Some(unit) = &self.unit
            && (unit.is_empty() || unit.len() > 16 || !unit.bytes().all(|b| b.is_ascii_lowercase()))
        {
            return Err(format!(
                "{} is `{}`; a unit is 1 to 16 lowercase letters (`seconds`, `bytes`)",
                field("unit"),
                unit.escape_debug()
            ));
        }
        let family = self.family();
        if let Some(suffix) = RESERVED_SUFFIXES.iter().find(|s| family.ends_with(*s)) {
            return Err(format!(
                "metric `{}` (with its unit) ends in `{suffix}`, which the exposition format \
                 reserves (a counter's samples get `_total` added)",
                self.name
            ));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(format!(
                "metric `{}` has {} labels; at most {MAX_LABELS} are allowed",
                self.name,
                self.labels.len()
            ));
        }
        let mut seen = BTreeSet::new();
        for label in &self.labels {
            identifier(&format!("a label of metric `{}`", self.name), label)?;
            if RESERVED_LABELS.contains(&label.as_str()) {
                return Err(format!(
                    "metric `{}` declares label `{label}`, which the host sets itself",
                    self.name
                ));
            }
            if !seen.insert(label) {
                return Err(format!(
                    "metric `{}` declares label `{label}` twice",
                    self.name
                ));
            }
        }
        match (&self.buckets, self.kind) {
            (None, _) => {}
            (Some(_), MetricKind::Counter | MetricKind::Gauge) => {
                return Err(format!(
                    "metric `{}` is a {} and cannot have buckets",
                    self.name,
                    self.kind.as_str()
                ));
            }
            (Some(buckets), MetricKind::Histogram) => {
                let increasing = buckets.windows(2).all(|pair| pair[0] < pair[1]);
                if buckets.is_empty()
                    || buckets.len() > MAX_BUCKETS
                    || !increasing
                    || buckets.iter().any(|b| !b.is_finite())
                {
                    return Err(format!(
                        "the buckets of histogram `{}` must be 1 to {MAX_BUCKETS} finite, \
                         strictly increasing bounds",
                        self.name
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks a manifest's metric declarations: at most [`MAX_METRICS`], each
/// valid, no two exporting the same family.
pub fn check(declarations: &[MetricDeclaration]) -> Result<(), String> {
    if declarations.len() > MAX_METRICS {
        return Err(format!(
            "{} metrics declared; at most {MAX_METRICS} are allowed",
            declarations.len()
        ));
    }
    let mut families = BTreeSet::new();
    let mut names = BTreeSet::new();
    for declaration in declarations {
        declaration.check()?;
        if !names.insert(declaration.name.as_str()) {
            return Err(format!("metric `{}` is declared twice", declaration.name));
        }
        if !families.insert(declaration.family()) {
            return Err(format!(
                "metric `{}` is declared twice (as `capsule_{}`)",
                declaration.name,
                declaration.family()
            ));
        }
    }
    Ok(())
}

/// A metric or label name: `[a-z][a-z0-9_]*`, at most
/// [`MAX_METRIC_NAME_BYTES`], never starting with `__` (reserved).
fn identifier(what: &str, value: &str) -> Result<(), String> {
    let mut bytes = value.bytes();
    let valid = value.len() <= MAX_METRIC_NAME_BYTES
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{what} `{}` must be 1 to {MAX_METRIC_NAME_BYTES} lowercase letters, digits and `_`, \
             starting with a letter",
            value.escape_debug()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(name: &str) -> MetricDeclaration {
        MetricDeclaration {
            name: name.into(),
            kind: MetricKind::Counter,
            help: "Things done".into(),
            unit: None,
            labels: vec!["region".into()],
            buckets: None,
        }
    }

    #[test]
    fn valid_declarations_pass_and_name_their_family() {
        let mut latency = counter("latency");
        latency.kind = MetricKind::Histogram;
        latency.unit = Some("seconds".into());
        latency.buckets = Some(vec![0.1, 1.0]);
        check(&[counter("orders"), latency.clone()]).unwrap();
        assert_eq!(latency.family(), "plugin_latency_seconds");
        assert_eq!(latency.bucket_bounds(), [0.1, 1.0]);
        latency.buckets = None;
        assert_eq!(latency.bucket_bounds(), DEFAULT_BUCKETS);
        assert!(counter("orders").bucket_bounds().is_empty());
    }

    #[test]
    fn each_bad_declaration_is_refused_with_its_reason() {
        type Change = fn(&mut MetricDeclaration);
        let cases: [(Change, &str); 12] = [
            (|m| m.name = "Orders".into(), "lowercase"),
            (|m| m.name = "orders_total".into(), "_total"),
            (|m| m.name = "x".repeat(65), "1 to 64"),
            (|m| m.help = "line\nbreak".into(), "control"),
            (|m| m.help = "x".repeat(257), "at most 256"),
            (|m| m.unit = Some("Sec".into()), "lowercase letters"),
            (|m| m.unit = Some("count".into()), "_count"),
            (|m| m.labels = vec!["plugin".into()], "host sets itself"),
            (|m| m.labels = vec!["a".into(), "a".into()], "twice"),
            (
                |m| m.labels = (0..9).map(|i| format!("l{i}")).collect(),
                "at most 8",
            ),
            (|m| m.buckets = Some(vec![1.0]), "cannot have buckets"),
            (
                |m| {
                    m.kind = MetricKind::Histogram;
                    m.buckets = Some(vec![1.0, 1.0]);
                },
                "strictly increasing",
            ),
        ];
        for (change, expected) in cases {
            let mut bad = counter("orders");
            change(&mut bad);
            let err = check(&[bad]).unwrap_err();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
        let twice = check(&[counter("orders"), counter("orders")]).unwrap_err();
        assert!(twice.contains("declared twice"), "{twice}");
        // One name is one metric, whatever its unit.
        let mut in_seconds = counter("orders");
        in_seconds.unit = Some("seconds".into());
        let twice = check(&[counter("orders"), in_seconds]).unwrap_err();
        assert!(twice.contains("declared twice"), "{twice}");
        let many: Vec<_> = (0..=MAX_METRICS)
            .map(|i| counter(&format!("m{i}")))
            .collect();
        assert!(check(&many).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn a_shape_is_family_kind_labels_and_buckets() {
        let orders = counter("orders");
        let mut other_help = orders.clone();
        other_help.help = "Something else".into();
        assert!(orders.same_shape(&other_help));
        let mut gauge = orders.clone();
        gauge.kind = MetricKind::Gauge;
        assert!(!orders.same_shape(&gauge));
        let mut relabelled = orders.clone();
        relabelled.labels.clear();
        assert!(!orders.same_shape(&relabelled));
        // `orders` in `items` is another family altogether.
        let mut counted = orders.clone();
        counted.unit = Some("items".into());
        assert!(!orders.same_shape(&counted));
    }
}
