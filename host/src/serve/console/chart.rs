//! Pictures drawn on the server as inline SVG, so they need no script and no
//! chart library: sparklines of a plugin's last hour, and the graph of who
//! calls, pipes to and publishes for whom.

use std::collections::{BTreeMap, BTreeSet};

use maud::{Markup, html};

use crate::runtime::Sample;
use crate::runtime::history::{SAMPLE_SECS, SAMPLES};

/// One value per window of the last hour, oldest first, zero where the
/// plugin had no calls.
pub fn per_window(samples: &[Sample], now_secs: u64, value: impl Fn(&Sample) -> f64) -> Vec<f64> {
    let last = now_secs / SAMPLE_SECS;
    let first = last.saturating_sub(SAMPLES as u64 - 1);
    let mut series = vec![0.0; SAMPLES];
    for sample in samples {
        let index = sample.at / SAMPLE_SECS;
        if (first..=last).contains(&index) {
            series[(index - first) as usize] = value(sample);
        }
    }
    series
}

/// A sparkline of `values` (`width` × `height` pixels) titled `title`,
/// with its largest value as the scale.
pub fn sparkline(values: &[f64], width: u32, height: u32, title: &str) -> Markup {
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let step = if values.len() > 1 {
        f64::from(width) / (values.len() - 1) as f64
    } else {
        0.0
    };
    let points: String = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let y = if max > 0.0 {
                f64::from(height) - 1.0 - (v / max) * (f64::from(height) - 2.0)
            } else {
                f64::from(height) - 1.0
            };
            format!("{:.1},{:.1} ", i as f64 * step, y)
        })
        .collect();
    html! {
        svg class="spark" width=(width) height=(height) viewBox=(format!("0 0 {width} {height}"))
            role="img" aria-label=(title) {
            title { (title) " (max " (format_number(max)) ")" }
            polyline points=(points) fill="none" stroke="currentColor" stroke-width="1.2" {}
        }
    }
}

/// A number for people: `1.2k`, `3.4M`, or as is.
pub fn format_number(value: f64) -> String {
    match value {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e4 => format!("{:.1}k", v / 1e3),
        v if v.fract() == 0.0 => format!("{v:.0}"),
        v => format!("{v:.2}"),
    }
}

/// What an edge of the graph stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EdgeKind {
    /// A `calls` grant.
    Call,
    /// One stage of a pipeline handing on to the next.
    Pipeline,
    /// Publishing to, or subscribing from, a topic pattern.
    Event,
}

impl EdgeKind {
    fn class(self) -> &'static str {
        match self {
            EdgeKind::Call => "edge-call",
            EdgeKind::Pipeline => "edge-pipeline",
            EdgeKind::Event => "edge-event",
        }
    }
}

/// A node of the graph: a plugin, a capability or a topic pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Node {
    /// A loaded plugin (a link to its page).
    Plugin(String),
    /// A capability some plugin provides.
    Capability(String),
    /// A topic pattern.
    Topic(String),
}

impl Node {
    fn label(&self) -> &str {
        match self {
            Node::Plugin(name) | Node::Capability(name) | Node::Topic(name) => name,
        }
    }
}

/// The nodes and edges to draw.
#[derive(Debug, Default)]
pub struct Graph {
    /// Every node, drawn even without edges.
    pub nodes: BTreeSet<Node>,
    /// Edges with what they stand for and a label (a pipeline's name).
    pub edges: BTreeSet<(Node, Node, EdgeKind, String)>,
}

/// Nodes past this are not drawn (the page says so).
pub const MAX_NODES: usize = 400;

const COLUMN: u32 = 300;
const ROW: u32 = 56;
const BOX_W: u32 = 180;
const BOX_H: u32 = 34;

impl Graph {
    /// Adds an edge and its two nodes.
    pub fn edge(&mut self, from: Node, to: Node, kind: EdgeKind, label: &str) {
        self.nodes.insert(from.clone());
        self.nodes.insert(to.clone());
        self.edges.insert((from, to, kind, label.to_owned()));
    }

    /// Each node's column: one past the furthest node with an edge into it
    /// (cycles are cut where they close), so edges run left to right.
    fn layers(&self) -> BTreeMap<&Node, u32> {
        let mut layer: BTreeMap<&Node, u32> = self.nodes.iter().map(|n| (n, 0)).collect();
        // Longest-path relaxation, at most one round per node: a cycle
        // stops growing once the rounds run out.
        for _ in 0..self.nodes.len().min(64) {
            let mut changed = false;
            for (from, to, _, _) in &self.edges {
                let next = layer[from] + 1;
                if from != to && layer[to] < next && next < 64 {
                    layer.insert(to, next);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        layer
    }

    /// The graph as SVG; plugin nodes link to their pages under `base`.
    pub fn render(&self, base: &str) -> Markup {
        if self.nodes.len() > MAX_NODES {
            return html! {
                p { "The graph has " (self.nodes.len()) " nodes, more than the " (MAX_NODES)
                    " drawn here; " a href=(format!("{base}/")) { "the plugin list" } " has them all." }
            };
        }
        let layers = self.layers();
        let mut rows: BTreeMap<u32, u32> = BTreeMap::new();
        let mut place: BTreeMap<&Node, (u32, u32)> = BTreeMap::new();
        for node in &self.nodes {
            let column = layers[node];
            let row = rows.entry(column).or_insert(0);
            place.insert(node, (20 + column * COLUMN, 20 + *row * ROW));
            *row += 1;
        }
        let width = 40 + (rows.keys().max().copied().unwrap_or(0) + 1) * COLUMN;
        let height = 40 + rows.values().max().copied().unwrap_or(1) * ROW;
        html! {
            svg class="graph" width=(width) height=(height) viewBox=(format!("0 0 {width} {height}"))
                role="img" aria-label="plugin graph" {
                defs {
                    @for kind in [EdgeKind::Call, EdgeKind::Pipeline, EdgeKind::Event] {
                        marker id=(format!("arrow-{}", kind.class())) viewBox="0 0 10 10" refX="10" refY="5"
                            markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                            path d="M 0 0 L 10 5 L 0 10 z" class=(kind.class()) {}
                        }
                    }
                }
                @for (from, to, kind, label) in &self.edges {
                    @let (x1, y1) = place[from];
                    @let (x2, y2) = place[to];
                    @let (sx, sy, ex, ey) = endpoints(x1, y1, x2, y2);
                    g class=(kind.class()) {
                        title { (describe_edge(from, to, *kind, label)) }
                        line x1=(sx) y1=(sy) x2=(ex) y2=(ey)
                            marker-end=(format!("url(#arrow-{})", kind.class())) {}
                        @if !label.is_empty() {
                            text x=((sx + ex) / 2) y=((sy + ey) / 2 - 4) class="edge-label" { (label) }
                        }
                    }
                }
                @for node in &self.nodes {
                    @let (x, y) = place[node];
                    @match node {
                        Node::Plugin(name) => {
                            a href=(format!("{base}/plugins/{}", path_segment(name))) {
                                rect x=(x) y=(y) width=(BOX_W) height=(BOX_H) rx="6" class="node-plugin" {}
                                text x=(x + 10) y=(y + 22) { (shorten(node.label())) }
                            }
                        }
                        Node::Capability(_) => {
                            rect x=(x) y=(y) width=(BOX_W) height=(BOX_H) rx="17" class="node-capability" {}
                            text x=(x + 10) y=(y + 22) { "capability " (shorten(node.label())) }
                        }
                        Node::Topic(_) => {
                            rect x=(x) y=(y) width=(BOX_W) height=(BOX_H) rx="2" class="node-topic" {}
                            text x=(x + 10) y=(y + 22) { "topic " (shorten(node.label())) }
                        }
                    }
                }
            }
        }
    }
}

fn describe_edge(from: &Node, to: &Node, kind: EdgeKind, label: &str) -> String {
    match kind {
        EdgeKind::Call => format!("{} may call {}", from.label(), to.label()),
        EdgeKind::Pipeline => format!("pipeline {label}: {} then {}", from.label(), to.label()),
        EdgeKind::Event => format!("{} → {}", from.label(), to.label()),
    }
}

/// Where a line between two boxes starts and ends: right edge to left edge
/// when it runs forward, box tops otherwise.
fn endpoints(x1: u32, y1: u32, x2: u32, y2: u32) -> (u32, u32, u32, u32) {
    if x2 > x1 {
        (x1 + BOX_W, y1 + BOX_H / 2, x2, y2 + BOX_H / 2)
    } else {
        (x1 + BOX_W / 2, y1, x2 + BOX_W / 2, y2 + BOX_H)
    }
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= 22 {
        text.to_owned()
    } else {
        let kept: String = text.chars().take(21).collect();
        format!("{kept}…")
    }
}

/// A name as one URL path segment (plugin names are already safe; this
/// keeps a surprising one from changing the path).
pub fn path_segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_land_in_their_place_of_the_hour() {
        let now = 1_000_000;
        let sample = |at: u64, calls: u32| Sample {
            at,
            calls,
            errors: 0,
            p50_us: 0,
            p99_us: 0,
            fuel_max: 0,
            fuel_mean: 0,
            error_kinds: Vec::new(),
        };
        let samples = [
            sample(now - 3600 - 10, 9),
            sample(now - 20, 5),
            sample(now, 7),
        ];
        let series = per_window(&samples, now, |s| f64::from(s.calls));
        assert_eq!(series.len(), SAMPLES);
        assert_eq!(series[SAMPLES - 1], 7.0);
        assert_eq!(series[SAMPLES - 3], 5.0);
        assert_eq!(
            series.iter().sum::<f64>(),
            12.0,
            "the sample older than an hour is left out"
        );
    }

    #[test]
    fn sparklines_scale_to_their_largest_value_and_escape_the_title() {
        let svg = sparkline(&[0.0, 5.0, 10.0], 100, 21, "<b>calls</b>").into_string();
        assert!(svg.contains("0.0,20.0 50.0,10.5 100.0,1.0"), "{svg}");
        assert!(svg.contains("&lt;b&gt;calls&lt;/b&gt;"), "{svg}");
        assert!(!svg.contains("<b>"));
    }

    #[test]
    fn edges_run_from_callers_to_callees_and_cycles_end() {
        let mut graph = Graph::default();
        let plugin = |n: &str| Node::Plugin(n.to_owned());
        graph.edge(plugin("a"), plugin("b"), EdgeKind::Call, "");
        graph.edge(plugin("b"), plugin("c"), EdgeKind::Pipeline, "p");
        graph.nodes.insert(plugin("<alone>"));
        let layers = graph.layers();
        assert!(layers[&plugin("a")] < layers[&plugin("b")]);
        assert!(layers[&plugin("b")] < layers[&plugin("c")]);
        assert_eq!(layers[&plugin("<alone>")], 0);
        // A cycle closes: the layout still ends, within its bound.
        graph.edge(plugin("c"), plugin("a"), EdgeKind::Call, "");
        assert!(graph.layers().values().all(|&layer| layer < 64));
        let svg = graph.render("/console").into_string();
        assert!(
            svg.contains("href=\"/console/plugins/%3Calone%3E\""),
            "{svg}"
        );
        assert!(svg.contains("&lt;alone&gt;"));
        assert!(svg.contains("pipeline p: b then c"));
    }
}
