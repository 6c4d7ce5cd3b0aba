//! Each plugin's recent calls, kept in the host so the console can draw
//! them over time: calls, errors by kind, latency percentiles and fuel per
//! [`SAMPLE_SECS`]-second window, for the last hour. Prometheus keeps
//! totals; this keeps the shape of the last hour without a Prometheus
//! server.
//!
//! Budgets, per loaded plugin: at most [`SAMPLES`] windows (one hour), each
//! a few dozen bytes plus 8 bytes per error kind seen in it (kinds are a
//! closed set); the latency histograms of the last [`RECENT_WINDOWS`]
//! windows only; one last error message per kind, cut to
//! [`MAX_MESSAGE_BYTES`] after its control characters are escaped (and
//! formatted no further than that, outside the lock). Recording takes one uncontended lock and no
//! allocation on a successful call. The history lives with the plugin's
//! name: it survives reloads and goes when the plugin is unloaded.

use std::collections::VecDeque;
use std::fmt::Display;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Length of one window, in seconds.
pub const SAMPLE_SECS: u64 = 10;

/// Windows kept: one hour.
pub const SAMPLES: usize = 360;

/// Windows whose latency histograms are kept, for percentiles over the last
/// minute.
pub const RECENT_WINDOWS: usize = 6;

/// Bytes of an error's message kept as its kind's latest example.
pub const MAX_MESSAGE_BYTES: usize = 256;

/// Latency buckets: bucket `i` counts calls that took less than `2^i` µs;
/// the last one counts the rest (18 minutes and more, reported as "at most
/// 36 minutes", past any sensible call timeout).
const LATENCY_BUCKETS: usize = 32;

/// One window of a plugin's calls.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// When the window began, in seconds since the Unix epoch.
    pub at: u64,
    /// Calls that ended in it.
    pub calls: u32,
    /// Of those, how many failed.
    pub errors: u32,
    /// Median latency, in microseconds (the upper bound of its bucket).
    pub p50_us: u64,
    /// 99th-percentile latency, in microseconds (the upper bound of its
    /// bucket).
    pub p99_us: u64,
    /// Largest fuel a call burned.
    pub fuel_max: u64,
    /// Mean fuel of the calls that report it.
    pub fuel_mean: u64,
    /// Failures by error kind.
    pub error_kinds: Vec<(&'static str, u32)>,
}

/// The latest failure of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// The error kind.
    pub kind: &'static str,
    /// When, in seconds since the Unix epoch.
    pub at: u64,
    /// Its message, cut to [`MAX_MESSAGE_BYTES`]. It may quote the plugin:
    /// text to show, never markup.
    pub message: String,
}

/// What the console shows of one plugin's last hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HistorySnapshot {
    /// Windows with calls, oldest first, within the last hour.
    pub samples: Vec<Sample>,
    /// How many seconds the "last minute" figures cover: the last
    /// [`RECENT_WINDOWS`] whole windows and the one in progress (60 to 70).
    pub minute_secs: u64,
    /// Calls in the last minute.
    pub minute_calls: u64,
    /// Failures in the last minute.
    pub minute_errors: u64,
    /// Median latency over the last minute, µs (`None` without calls).
    pub minute_p50_us: Option<u64>,
    /// 99th-percentile latency over the last minute, µs.
    pub minute_p99_us: Option<u64>,
    /// Failures by kind over the hour, most first.
    pub hour_errors: Vec<(&'static str, u64)>,
    /// The latest failure of each kind, newest first.
    pub last_errors: Vec<LastError>,
}

/// One plugin's history.
#[derive(Debug, Default)]
pub(crate) struct CallHistory {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The window calls are counted in now.
    current: Window,
    /// Finished windows with calls, oldest first.
    samples: VecDeque<Sample>,
    /// Latency histograms of the latest finished windows, with their index.
    recent: VecDeque<(u64, [u32; LATENCY_BUCKETS])>,
    last_errors: Vec<LastError>,
}

#[derive(Debug, Default)]
struct Window {
    index: u64,
    calls: u32,
    errors: u32,
    latency: [u32; LATENCY_BUCKETS],
    fuel_sum: u64,
    fuel_count: u32,
    fuel_max: u64,
    error_kinds: Vec<(&'static str, u32)>,
}

impl CallHistory {
    /// Records one call that took `duration`, burned `fuel`, and failed with
    /// `error` (its kind and message) if it did.
    pub(crate) fn record(
        &self,
        duration: Duration,
        fuel: Option<u64>,
        error: Option<(&'static str, &dyn Display)>,
    ) {
        self.record_at(SystemTime::now(), duration, fuel, error);
    }

    fn record_at(
        &self,
        now: SystemTime,
        duration: Duration,
        fuel: Option<u64>,
        error: Option<(&'static str, &dyn Display)>,
    ) {
        let secs = unix_secs(now);
        // Formatted before the lock, and only as far as it is kept: a
        // plugin chooses how long its error message is.
        let error = error.map(|(kind, message)| (kind, bounded_message(message)));
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.roll(secs / SAMPLE_SECS);
        let window = &mut inner.current;
        window.calls = window.calls.saturating_add(1);
        window.latency[latency_bucket(duration)] += 1;
        if let Some(fuel) = fuel {
            window.fuel_sum = window.fuel_sum.saturating_add(fuel);
            window.fuel_count += 1;
            window.fuel_max = window.fuel_max.max(fuel);
        }
        let Some((kind, message)) = error else {
            return;
        };
        window.errors = window.errors.saturating_add(1);
        match window.error_kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, count)) => *count = count.saturating_add(1),
            None => window.error_kinds.push((kind, 1)),
        }
        inner.last_errors.retain(|e| e.kind != kind);
        inner.last_errors.insert(
            0,
            LastError {
                kind,
                at: secs,
                message,
            },
        );
    }

    /// The last hour as of now.
    pub(crate) fn snapshot(&self) -> HistorySnapshot {
        self.snapshot_at(SystemTime::now())
    }

    fn snapshot_at(&self, now: SystemTime) -> HistorySnapshot {
        let secs = unix_secs(now);
        let index = secs / SAMPLE_SECS;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.roll(index);
        // The window in progress counts toward the last minute as well.
        let first_recent = index.saturating_sub(RECENT_WINDOWS as u64);
        let mut merged = inner.current.latency;
        for (at, histogram) in &inner.recent {
            if *at >= first_recent {
                for (sum, count) in merged.iter_mut().zip(histogram) {
                    *sum += count;
                }
            }
        }
        let mut minute_calls = u64::from(inner.current.calls);
        let mut minute_errors = u64::from(inner.current.errors);
        let mut hour_errors: Vec<(&'static str, u64)> = Vec::new();
        let mut add_kinds = |kinds: &[(&'static str, u32)]| {
            for (kind, count) in kinds {
                match hour_errors.iter_mut().find(|(k, _)| k == kind) {
                    Some((_, sum)) => *sum += u64::from(*count),
                    None => hour_errors.push((kind, u64::from(*count))),
                }
            }
        };
        add_kinds(&inner.current.error_kinds);
        for sample in &inner.samples {
            add_kinds(&sample.error_kinds);
            if sample.at / SAMPLE_SECS >= first_recent {
                minute_calls += u64::from(sample.calls);
                minute_errors += u64::from(sample.errors);
            }
        }
        hour_errors.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut samples: Vec<Sample> = inner.samples.iter().cloned().collect();
        if inner.current.calls > 0 {
            samples.push(inner.current.sample());
        }
        HistorySnapshot {
            samples,
            minute_secs: secs - first_recent * SAMPLE_SECS,
            minute_calls,
            minute_errors,
            minute_p50_us: percentile(&merged, 0.50),
            minute_p99_us: percentile(&merged, 0.99),
            hour_errors,
            last_errors: inner.last_errors.clone(),
        }
    }
}

impl Inner {
    /// Moves on to window `index`: the current window, if it had calls,
    /// becomes a sample; samples older than an hour go.
    fn roll(&mut self, index: u64) {
        // A clock that went back a little keeps counting in the current
        // window; one that went back further starts again from there, so the
        // windows stay in step with the clock the console draws them by.
        if index + 1 < self.current.index {
            self.samples.retain(|s| s.at / SAMPLE_SECS < index);
            self.recent.retain(|(at, _)| *at < index);
            self.last_errors.retain(|e| e.at / SAMPLE_SECS < index);
            self.current = Window {
                index,
                ..Window::default()
            };
            return;
        }
        if index <= self.current.index {
            return;
        }
        let finished = std::mem::replace(
            &mut self.current,
            Window {
                index,
                ..Window::default()
            },
        );
        if finished.calls > 0 {
            self.samples.push_back(finished.sample());
            self.recent.push_back((finished.index, finished.latency));
        }
        let oldest = index.saturating_sub(SAMPLES as u64 - 1);
        while self
            .samples
            .front()
            .is_some_and(|s| s.at / SAMPLE_SECS < oldest)
            || self.samples.len() >= SAMPLES
        {
            self.samples.pop_front();
        }
        let oldest_recent = index.saturating_sub(RECENT_WINDOWS as u64);
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| *at < oldest_recent)
            || self.recent.len() > RECENT_WINDOWS
        {
            self.recent.pop_front();
        }
        let oldest_error = oldest * SAMPLE_SECS;
        self.last_errors.retain(|e| e.at >= oldest_error);
    }
}

impl Window {
    fn sample(&self) -> Sample {
        Sample {
            at: self.index * SAMPLE_SECS,
            calls: self.calls,
            errors: self.errors,
            p50_us: percentile(&self.latency, 0.50).unwrap_or(0),
            p99_us: percentile(&self.latency, 0.99).unwrap_or(0),
            fuel_max: self.fuel_max,
            fuel_mean: self
                .fuel_sum
                .checked_div(u64::from(self.fuel_count))
                .unwrap_or(0),
            error_kinds: self.error_kinds.clone(),
        }
    }
}

/// `message` escaped like a log field and cut to [`MAX_MESSAGE_BYTES`]
/// (with `…`), without formatting more of it than that.
fn bounded_message(message: &dyn Display) -> String {
    use std::fmt::Write as _;
    struct Bounded(String);
    impl std::fmt::Write for Bounded {
        fn write_str(&mut self, text: &str) -> std::fmt::Result {
            let room = MAX_MESSAGE_BYTES + 1 - self.0.len();
            if text.len() < room {
                self.0.push_str(text);
                return Ok(());
            }
            let mut cut = room;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            self.0.push_str(&text[..cut]);
            // Stops the formatting: the rest would not be kept.
            Err(std::fmt::Error)
        }
    }
    let mut out = Bounded(String::with_capacity(64));
    let _ = write!(out, "{message}");
    let escaped = crate::text::for_log(&out.0, usize::MAX);
    crate::text::cut(&escaped, MAX_MESSAGE_BYTES).into_owned()
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn latency_bucket(duration: Duration) -> usize {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    // `micros < 2^i` for the smallest such i.
    let bucket = (u64::BITS - micros.leading_zeros()) as usize;
    bucket.min(LATENCY_BUCKETS - 1)
}

/// The upper bound, in µs, of the bucket holding the `q` quantile.
fn percentile(histogram: &[u32; LATENCY_BUCKETS], q: f64) -> Option<u64> {
    let total: u64 = histogram.iter().map(|&c| u64::from(c)).sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (bucket, &count) in histogram.iter().enumerate() {
        seen += u64::from(count);
        if seen >= rank {
            return Some(1u64 << bucket);
        }
    }
    Some(1u64 << (LATENCY_BUCKETS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn calls_fall_into_ten_second_windows_with_percentiles_and_fuel() {
        let history = CallHistory::default();
        let start = 1_000_000;
        for i in 0..99 {
            history.record_at(at(start + i % 10), ms(1), Some(1_000 + i), None);
        }
        history.record_at(at(start + 5), ms(500), Some(50_000), None);
        history.record_at(at(start + 12), ms(2), None, Some(("timeout", &"too slow")));
        let snapshot = history.snapshot_at(at(start + 15));
        assert_eq!(snapshot.samples.len(), 2);
        let first = &snapshot.samples[0];
        assert_eq!((first.at, first.calls, first.errors), (start, 100, 0));
        // 1 ms is in the bucket below 1024 µs; 500 ms below 2^19 µs.
        assert_eq!(first.p50_us, 1024);
        assert_eq!(first.p99_us, 1024);
        assert_eq!(first.fuel_max, 50_000);
        assert_eq!(
            first.fuel_mean,
            (99 * 1_000 + (0..99).sum::<u64>() + 50_000) / 100
        );
        let second = &snapshot.samples[1];
        assert_eq!((second.calls, second.errors), (1, 1));
        assert_eq!(second.error_kinds, vec![("timeout", 1)]);
        assert_eq!(snapshot.minute_calls, 101);
        assert_eq!(snapshot.minute_errors, 1);
        assert_eq!(snapshot.hour_errors, vec![("timeout", 1)]);
        assert_eq!(snapshot.last_errors[0].message, "too slow");
        // The 100th of 101 calls is the 2 ms one.
        assert_eq!(snapshot.minute_p99_us, Some(2048));
    }

    #[test]
    fn the_slowest_percent_shows_in_p99() {
        let history = CallHistory::default();
        for _ in 0..90 {
            history.record_at(at(100), ms(1), None, None);
        }
        for _ in 0..10 {
            history.record_at(at(100), ms(300), None, None);
        }
        let snapshot = history.snapshot_at(at(101));
        assert_eq!(snapshot.minute_p50_us, Some(1024));
        assert_eq!(snapshot.minute_p99_us, Some(1 << 19));
    }

    #[test]
    fn an_hour_is_kept_and_no_more() {
        let history = CallHistory::default();
        let start = 10_000_000;
        // Two hours of calls, one per window.
        for window in 0..(2 * SAMPLES as u64) {
            history.record_at(at(start + window * SAMPLE_SECS), ms(1), None, None);
        }
        let end = start + 2 * SAMPLES as u64 * SAMPLE_SECS;
        let snapshot = history.snapshot_at(at(end));
        assert!(
            snapshot.samples.len() < SAMPLES,
            "{}",
            snapshot.samples.len()
        );
        assert!(snapshot.samples.len() >= SAMPLES - 2);
        assert!(snapshot.samples[0].at >= end - SAMPLES as u64 * SAMPLE_SECS);
        let inner = history.inner.lock().unwrap();
        assert!(inner.recent.len() <= RECENT_WINDOWS);
        // The last minute is the last six windows.
        drop(inner);
        assert_eq!(snapshot.minute_calls, RECENT_WINDOWS as u64);
    }

    #[test]
    fn one_message_per_kind_is_kept_cut_to_its_budget() {
        let history = CallHistory::default();
        let long = "x".repeat(10_000);
        for i in 0..1_000 {
            history.record_at(at(50), ms(1), None, Some(("trap", &format!("{i}{long}"))));
        }
        history.record_at(at(51), ms(1), None, Some(("timeout", &"slow")));
        let snapshot = history.snapshot_at(at(52));
        assert_eq!(snapshot.last_errors.len(), 2);
        assert_eq!(snapshot.last_errors[0].kind, "timeout");
        assert!(snapshot.last_errors[1].message.starts_with("999x"));
        assert!(snapshot.last_errors[1].message.len() <= MAX_MESSAGE_BYTES + "…".len());
        // Escaping counts toward the budget.
        history.record_at(at(53), ms(1), None, Some(("trap", &"\n".repeat(10_000))));
        let message = &history.snapshot_at(at(54)).last_errors[0].message;
        assert!(message.starts_with("\\n\\n"), "{message}");
        assert!(
            message.len() <= MAX_MESSAGE_BYTES + "…".len(),
            "{}",
            message.len()
        );
        assert_eq!(snapshot.hour_errors, vec![("trap", 1_000), ("timeout", 1)]);
    }

    #[test]
    fn a_clock_that_goes_back_a_little_counts_in_the_current_window() {
        let history = CallHistory::default();
        history.record_at(at(1_005), ms(1), None, None);
        history.record_at(at(999), ms(1), None, None);
        let snapshot = history.snapshot_at(at(1_006));
        assert_eq!(snapshot.samples.len(), 1);
        assert_eq!(snapshot.samples[0].calls, 2);
    }

    #[test]
    fn a_clock_that_goes_back_far_starts_the_windows_again_from_there() {
        let history = CallHistory::default();
        history.record_at(at(100_000), ms(1), None, None);
        history.record_at(at(100_020), ms(1), None, Some(("timeout", &"slow")));
        // An hour back: what came "later" cannot be drawn against this clock.
        history.record_at(at(96_400), ms(1), None, None);
        let snapshot = history.snapshot_at(at(96_401));
        assert_eq!(snapshot.samples.len(), 1);
        assert_eq!(snapshot.samples[0].at, 96_400);
        assert!(snapshot.last_errors.is_empty());
    }

    #[test]
    fn the_last_minute_says_how_long_it_is_and_slow_calls_are_not_rounded_down() {
        let history = CallHistory::default();
        history.record_at(at(1_000), Duration::from_secs(120), None, None);
        let snapshot = history.snapshot_at(at(1_003));
        assert_eq!(snapshot.minute_secs, 63);
        assert!(snapshot.minute_p99_us.unwrap() >= 120_000_000);
    }
}
