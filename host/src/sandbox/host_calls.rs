//! How many calls into each host service one plugin call made, and how long
//! they took: wasmtime's call hook marks every entry into and return from
//! the host, and the service whose state the host function asks for (its
//! `Holds::state`, or the WASI and `wasi:http` views) names it. Host calls
//! no service claims (wasmtime's own libcalls, such as `memory.grow`) are not
//! counted.

use std::time::{Duration, Instant};

use serde::Serialize;

/// One service's share of a call: how many host calls, how long in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ServiceCalls {
    /// The service: `log`, `config`, `kv`, `events`, `calls`, `metrics`,
    /// `wasi` (clocks, random, streams, files, environment) or `http`.
    pub service: &'static str,
    /// Calls into it.
    pub calls: u32,
    /// Wall time spent in them, waits included (a kv read from NATS, a call
    /// to another plugin).
    #[serde(rename = "time_us", serialize_with = "micros")]
    pub time: Duration,
}

fn micros<S: serde::Serializer>(time: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(time.as_micros()).unwrap_or(u64::MAX))
}

/// The running call's host calls, per service. Lives in the store; its
/// list holds at most one entry per service, so it never grows past the
/// service list however many calls a plugin makes.
#[derive(Debug, Default)]
pub(crate) struct HostCallMeter {
    /// How deep in host calls the store is: a host function that hands the
    /// plugin a string runs the plugin's allocator, which may grow memory
    /// (a host call of its own) before the outer call returns.
    depth: u32,
    /// When the outermost host call in progress entered the host.
    entered: Option<Instant>,
    /// The service that claimed it.
    claimed: Option<&'static str>,
    per_service: Vec<ServiceCalls>,
}

impl HostCallMeter {
    /// A plugin's code called into the host.
    pub(crate) fn enter(&mut self) {
        self.depth += 1;
        if self.depth == 1 {
            self.entered = Some(Instant::now());
            self.claimed = None;
        }
    }

    /// The host function being called belongs to `service` (the first
    /// claim of the outermost call counts).
    pub(crate) fn claim(&mut self, service: &'static str) {
        if self.entered.is_some() && self.claimed.is_none() {
            self.claimed = Some(service);
        }
    }

    /// A host call returned to the plugin's code.
    pub(crate) fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
        if self.depth > 0 {
            return;
        }
        let (Some(entered), Some(service)) = (self.entered.take(), self.claimed.take()) else {
            return;
        };
        let time = entered.elapsed();
        match self.per_service.iter_mut().find(|s| s.service == service) {
            Some(entry) => {
                entry.calls = entry.calls.saturating_add(1);
                entry.time += time;
            }
            None => self.per_service.push(ServiceCalls {
                service,
                calls: 1,
                time,
            }),
        }
    }

    /// Starts counting a new call.
    pub(crate) fn reset(&mut self) {
        self.depth = 0;
        self.entered = None;
        self.claimed = None;
        self.per_service.clear();
    }

    /// What the call made so far, by service.
    pub(crate) fn report(&self) -> Vec<ServiceCalls> {
        self.per_service.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_calls_are_counted_per_service_and_unclaimed_ones_not_at_all() {
        let mut meter = HostCallMeter::default();
        for service in ["kv", "log", "kv"] {
            meter.enter();
            meter.claim(service);
            meter.leave();
        }
        // A libcall: entered and left, claimed by no service.
        meter.enter();
        meter.leave();
        // A claim outside a host call counts nothing.
        meter.claim("kv");
        meter.leave();
        // A kv read whose answer grows memory while it is handed over: one
        // kv call, its time until the outer return.
        meter.enter();
        meter.claim("kv");
        meter.enter();
        meter.leave();
        meter.leave();
        let report = meter.report();
        let calls: Vec<_> = report.iter().map(|s| (s.service, s.calls)).collect();
        assert_eq!(calls, [("kv", 3), ("log", 1)]);
        meter.reset();
        assert!(meter.report().is_empty());
    }
}
