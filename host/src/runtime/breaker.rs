//! A circuit breaker per plugin: after `circuit_failures` consecutive
//! failures that say the plugin is unhealthy (traps, timeouts, limits, host
//! faults), calls fail fast with `circuit_open` for `circuit_cooldown`; then
//! one probe call is let through, and its success closes the circuit again.
//!
//! A plugin's own error values and a caller's oversized input are answers,
//! not ill health, so they neither open nor close the circuit.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::ErrorKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is in flight; other calls are refused until it reports.
    HalfOpen,
}

/// The breaker of one plugin.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    state: Mutex<State>,
    /// Whether the state is `Closed { failures: 0 }`: the common case, which
    /// admits and records successes without taking the lock.
    healthy: AtomicBool,
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The circuit is closed: call normally.
    Pass,
    /// The circuit was open and its cooldown passed: this call is the probe.
    Probe,
    /// The circuit is open: refuse, retrying makes sense after this long.
    Refuse(Duration),
}

/// Whether an outcome says something about the plugin's health.
fn counts_as_failure(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Trap
            | ErrorKind::Timeout
            | ErrorKind::OutOfFuel
            | ErrorKind::MemoryLimit
            | ErrorKind::StackOverflow
            | ErrorKind::OutputTooLarge
            | ErrorKind::Host
    )
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            healthy: AtomicBool::new(true),
        }
    }
}

impl CircuitBreaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides whether a call may proceed now.
    pub(crate) fn admit(&self) -> Admission {
        self.admit_at(Instant::now)
    }

    /// [`Self::admit`] with a clock that is read only when the circuit is
    /// not closed (the hot path reads no clock).
    fn admit_at(&self, clock: impl FnOnce() -> Instant) -> Admission {
        if self.healthy.load(Ordering::Acquire) {
            return Admission::Pass;
        }
        let mut state = self.lock();
        if let State::Closed { .. } = *state {
            return Admission::Pass;
        }
        let now = clock();
        match *state {
            State::Closed { .. } => Admission::Pass,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen;
                Admission::Probe
            }
            State::Open { until } => Admission::Refuse(until - now),
            State::HalfOpen => Admission::Refuse(Duration::ZERO),
        }
    }

    /// Records how a call that was admitted ended: `Ok(())` for success,
    /// `Err(kind)` for a failure. `threshold` 0 disables the breaker.
    pub(crate) fn record(
        &self,
        outcome: Result<(), ErrorKind>,
        threshold: u32,
        cooldown: Duration,
    ) {
        self.record_at(outcome, threshold, cooldown, Instant::now);
    }

    fn record_at(
        &self,
        outcome: Result<(), ErrorKind>,
        threshold: u32,
        cooldown: Duration,
        clock: impl FnOnce() -> Instant,
    ) {
        if outcome.is_ok() && self.healthy.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        if outcome.is_ok() && *state == (State::Closed { failures: 0 }) {
            return;
        }
        let now = clock();
        let unhealthy = matches!(outcome, Err(kind) if counts_as_failure(kind));
        let neutral = matches!(outcome, Err(kind) if !counts_as_failure(kind));
        *state = match (*state, unhealthy, neutral) {
            (_, _, _) if threshold == 0 => State::Closed { failures: 0 },
            // A neutral outcome changes nothing, except that a probe which
            // ended neutrally proved the plugin runs: close.
            (State::HalfOpen, _, true) => State::Closed { failures: 0 },
            (current, _, true) => current,
            (State::HalfOpen, true, _) => State::Open {
                until: now + cooldown,
            },
            (State::Closed { failures }, true, _) if failures + 1 >= threshold => State::Open {
                until: now + cooldown,
            },
            (State::Closed { failures }, true, _) => State::Closed {
                failures: failures + 1,
            },
            (State::Open { until }, true, _) => State::Open { until },
            (_, false, false) => State::Closed { failures: 0 },
        };
        self.healthy
            .store(*state == (State::Closed { failures: 0 }), Ordering::Release);
    }

    /// Whether the circuit is open (or probing) right now.
    pub(crate) fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_then_a_probe_closes_it() {
        let breaker = CircuitBreaker::default();
        let cooldown = Duration::from_secs(10);
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(breaker.admit_at(|| t0), Admission::Pass);
            breaker.record_at(Err(ErrorKind::Trap), 3, cooldown, || t0);
        }
        // A plugin error in between neither counts nor resets.
        breaker.record_at(Err(ErrorKind::PluginError), 3, cooldown, || t0);
        breaker.record_at(Err(ErrorKind::Timeout), 3, cooldown, || t0);
        assert!(breaker.is_open());
        assert!(
            matches!(breaker.admit_at(|| t0 + Duration::from_secs(1)), Admission::Refuse(d) if d == Duration::from_secs(9))
        );

        let later = t0 + cooldown;
        assert_eq!(breaker.admit_at(|| later), Admission::Probe);
        assert!(
            matches!(breaker.admit_at(|| later), Admission::Refuse(_)),
            "one probe at a time"
        );
        breaker.record_at(Ok(()), 3, cooldown, || later);
        assert!(!breaker.is_open());
        assert_eq!(breaker.admit_at(|| later), Admission::Pass);
    }

    #[test]
    fn a_failed_probe_opens_it_again_and_zero_disables_it() {
        let breaker = CircuitBreaker::default();
        let cooldown = Duration::from_secs(1);
        let t0 = Instant::now();
        breaker.record_at(Err(ErrorKind::Trap), 1, cooldown, || t0);
        assert_eq!(breaker.admit_at(|| t0 + cooldown), Admission::Probe);
        breaker.record_at(Err(ErrorKind::Trap), 1, cooldown, || t0 + cooldown);
        assert!(matches!(
            breaker.admit_at(|| t0 + cooldown),
            Admission::Refuse(_)
        ));

        let disabled = CircuitBreaker::default();
        for _ in 0..10 {
            disabled.record_at(Err(ErrorKind::Trap), 0, cooldown, || t0);
        }
        assert_eq!(disabled.admit_at(|| t0), Admission::Pass);
    }
}
