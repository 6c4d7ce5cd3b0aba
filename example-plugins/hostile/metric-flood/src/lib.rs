//! Hostile: tries to make the host keep unbounded metrics and spans. Each
//! operation keeps going until the host refuses, then fails with the
//! refusal, so tests see which bound stopped it.
//!
//! - `series`: a new label value on every update — stopped by the
//!   operator's `metrics.series` cap (`quota-exceeded`).
//! - `wide`: histograms with 8 labels of 128-byte values and 32 buckets —
//!   each series a large part of a scrape — stopped by the operator's
//!   `metrics.max_bytes`.
//! - `long`: label values of 1 MiB — refused as `invalid` at once.
//! - `undeclared`: updates 10,000 metric names it never declared — each
//!   refused as `invalid`, none exported.
//! - `spans`: starts spans named `flood`, each with as many 64-byte keys of
//!   256-byte values as it may set, a child of the one before — stopped by
//!   the operator's `trace.spans` cap (`quota-exceeded`).
//! - `attributes`: one span, a new attribute after another — stopped at the
//!   per-span cap (`quota-exceeded`).
//! - `long-span`: a span named with 1 MiB, then a 1 MiB attribute value —
//!   refused as `invalid` at once.
//!
//! It also declares `greetings` as a gauge, which `hello` exports as a
//! counter: a host that grants metrics to both refuses whichever loads
//! second.

use capsule_guest::metrics::{self, Metric};
use capsule_guest::trace::Span;
use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin};

fn refused(what: &str, done: usize, err: impl std::fmt::Debug) -> PluginError {
    PluginError::failed(format!("{what} stopped after {done}: {err:?}"))
}

/// The most buckets a histogram may declare.
const WIDE_BUCKETS: [f64; 32] = {
    let mut bounds = [0.0; 32];
    let mut i = 0;
    while i < 32 {
        bounds[i] = (i + 1) as f64;
        i += 1;
    }
    bounds
};

struct MetricFlood;

impl Plugin for MetricFlood {
    fn metrics() -> Vec<Metric> {
        vec![
            Metric::counter("flood", "Series the plugin tried to create").labels(&["key"]),
            Metric::gauge("greetings", "Clashes with hello's counter"),
            Metric::histogram("wide", "Series as wide as a declaration allows")
                .labels(&["a", "b", "c", "d", "e", "f", "g", "h"])
                .buckets(&WIDE_BUCKETS),
        ]
    }

    fn handle(request: Request) -> Result<Response, PluginError> {
        match request.operation.as_str() {
            "series" => {
                for i in 0.. {
                    let key = format!("{i:0>120}");
                    if let Err(err) = metrics::add("flood", &[&key], 1.0) {
                        return Err(refused("new series", i, err));
                    }
                }
                unreachable!()
            }
            "wide" => {
                for i in 0.. {
                    let values: Vec<String> = (0..8).map(|l| format!("{i:0>127}{l}")).collect();
                    let labels: Vec<&str> = values.iter().map(String::as_str).collect();
                    if let Err(err) = metrics::observe("wide", &labels, 1.0) {
                        return Err(refused("wide series", i, err));
                    }
                }
                unreachable!()
            }
            "long" => {
                let key = "k".repeat(1 << 20);
                match metrics::add("flood", &[&key], 1.0) {
                    Ok(()) => Ok(Response::bytes("kept a 1 MiB label")),
                    Err(err) => Err(refused("a 1 MiB label", 0, err)),
                }
            }
            "undeclared" => {
                let mut refusals = 0;
                for i in 0..10_000 {
                    if metrics::add(&format!("made_up_{i}"), &[], 1.0).is_err() {
                        refusals += 1;
                    }
                }
                Ok(Response::bytes(format!("{refusals} refused")))
            }
            "spans" => {
                // Left open on purpose: the host ends them with the call.
                let mut open: Vec<Span> = Vec::new();
                for i in 0.. {
                    let span = match open.last() {
                        None => Span::try_start("flood"),
                        Some(parent) if parent.is_active() => {
                            let child = parent.child("flood");
                            if child.is_active() {
                                Ok(child)
                            } else {
                                Span::try_start("flood")
                            }
                        }
                        Some(_) => Span::try_start("flood"),
                    };
                    let span = match span {
                        Ok(span) => span,
                        Err(err) => return Err(refused("spans", i, err)),
                    };
                    for a in 0.. {
                        if span.set(&format!("{a:0>64}"), "v".repeat(256)).is_err() {
                            break;
                        }
                    }
                    open.push(span);
                }
                unreachable!()
            }
            "attributes" => {
                let span = Span::try_start("wide").map_err(|err| refused("a span", 0, err))?;
                for i in 0.. {
                    if let Err(err) = span.set(&format!("key_{i}"), i) {
                        return Err(refused("attributes", i, err));
                    }
                }
                unreachable!()
            }
            "long-span" => {
                let long = "s".repeat(1 << 20);
                if let Err(err) = Span::try_start(&long) {
                    let span = Span::try_start("short").map_err(|err| refused("a span", 0, err))?;
                    return match span.set("big", &long) {
                        Ok(()) => Ok(Response::bytes("kept a 1 MiB attribute")),
                        Err(value) => {
                            Err(refused("a 1 MiB span name and attribute", 0, (err, value)))
                        }
                    };
                }
                Ok(Response::bytes("kept a 1 MiB span name"))
            }
            other => Err(PluginError::Unsupported(other.to_owned())),
        }
    }
}

export_plugin!(MetricFlood);
