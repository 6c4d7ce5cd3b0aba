//! A circuit breaker per plugin: after `circuit_failures` consecutive
//! failures that say the plugin is unhealthy (traps, timeouts, limits, host
//! faults), calls fail fast with `circuit_open` for `circuit_cooldown`; then
//! one probe call is let through, and its success closes the circuit again.
//!
//! A plugin's own error values and a caller's oversized input are answers,
//! not ill health, so they neither open nor close the circuit.
//!
//! Admission hands out a [`Ticket`]; a probe whose ticket is dropped without
//! reporting (a cancelled call) gives the half-open state back, and a probe
//! that never reports at all expires after a cooldown, so no caller can lock
//! a plugin out. A reload closes the circuit.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// A probe has been in flight since `since`; other calls are refused
    /// until it reports, or until a cooldown passes without a report (a
    /// probe that never reports must not lock the plugin out).
    HalfOpen {
        since: Instant,
    },
}

/// The breaker of one plugin.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    state: Mutex<State>,
    /// Whether the state is `Closed { failures: 0 }`: the common case, which
    /// admits and records successes without taking the lock.
    healthy: AtomicBool,
    /// Changes (under the lock) whenever the circuit opens or a probe is
    /// let through. A ticket from an earlier epoch reports nothing: a call
    /// admitted before the circuit opened, or a probe that was given up on,
    /// cannot close or reopen it.
    epoch: AtomicU64,
}

/// Whether a call may go ahead.
#[derive(Debug)]
pub(crate) enum Admission<'a> {
    /// Call; report how it ended through the ticket.
    Admit(Ticket<'a>),
    /// The circuit is open: refuse, retrying makes sense after this long.
    Refuse(Duration),
}

/// An admitted call's duty to report how it ended. A probe's ticket that is
/// dropped without a report (the caller went away, the future was
/// cancelled) gives the half-open state back, so the next call probes.
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    epoch: u64,
}

impl Ticket<'_> {
    /// Whether this call is the probe of a half-open circuit.
    #[cfg(test)]
    fn is_probe(&self) -> bool {
        self.probe
    }

    /// Records how the call ended: `Ok(())` for success, `Err(kind)` for a
    /// failure. `threshold` 0 disables the breaker.
    pub(crate) fn record(self, outcome: Result<(), ErrorKind>, threshold: u32, cooldown: Duration) {
        self.record_at(outcome, threshold, cooldown, Instant::now);
    }

    fn record_at(
        mut self,
        outcome: Result<(), ErrorKind>,
        threshold: u32,
        cooldown: Duration,
        clock: impl FnOnce() -> Instant,
    ) {
        self.probe = false;
        self.breaker
            .record_at(self.epoch, outcome, threshold, cooldown, clock);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.abandon_probe(self.epoch, Instant::now());
        }
    }
}

/// Whether an outcome says something about the plugin's health (the
/// rollout judges a new version by it too).
pub(crate) fn counts_as_failure(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Trap
            | ErrorKind::Timeout
            | ErrorKind::OutOfFuel
            | ErrorKind::MemoryLimit
            | ErrorKind::StackOverflow
            | ErrorKind::BudgetExceeded
            | ErrorKind::OutputTooLarge
            | ErrorKind::Host
    )
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            healthy: AtomicBool::new(true),
            epoch: AtomicU64::new(0),
        }
    }
}

impl CircuitBreaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides whether a call may proceed now; `cooldown` is how long an
    /// unreported probe holds the half-open state.
    pub(crate) fn admit(&self, cooldown: Duration) -> Admission<'_> {
        self.admit_at(cooldown, Instant::now)
    }

    /// [`Self::admit`] with a clock that is read only when the circuit is
    /// not closed (the hot path reads no clock).
    fn admit_at(&self, cooldown: Duration, clock: impl FnOnce() -> Instant) -> Admission<'_> {
        let pass = |probe, epoch| {
            Admission::Admit(Ticket {
                breaker: self,
                probe,
                epoch,
            })
        };
        if self.healthy.load(Ordering::Acquire) {
            return pass(false, self.epoch.load(Ordering::Acquire));
        }
        let mut state = self.lock();
        if let State::Closed { .. } = *state {
            return pass(false, self.epoch.load(Ordering::Acquire));
        }
        let now = clock();
        let probe = |state: &mut State| {
            *state = State::HalfOpen { since: now };
            pass(true, self.epoch.fetch_add(1, Ordering::AcqRel) + 1)
        };
        match *state {
            State::Closed { .. } => pass(false, self.epoch.load(Ordering::Acquire)),
            State::Open { until } if now >= until => probe(&mut state),
            State::Open { until } => Admission::Refuse(until - now),
            // The probe never reported within a cooldown: let another try.
            State::HalfOpen { since } if now >= since + cooldown => probe(&mut state),
            State::HalfOpen { since } => Admission::Refuse(since + cooldown - now),
        }
    }

    /// A probe went away without reporting: the next call probes (unless
    /// another probe has been let through since).
    fn abandon_probe(&self, epoch: u64, now: Instant) {
        let mut state = self.lock();
        if let State::HalfOpen { .. } = *state
            && self.epoch.load(Ordering::Acquire) == epoch
        {
            *state = State::Open { until: now };
        }
    }

    fn record_at(
        &self,
        epoch: u64,
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
        if self.epoch.load(Ordering::Acquire) != epoch {
            // Admitted before the circuit last opened or probed: stale.
            return;
        }
        let now = clock();
        let unhealthy = matches!(outcome, Err(kind) if counts_as_failure(kind));
        let neutral = matches!(outcome, Err(kind) if !counts_as_failure(kind));
        *state = match (*state, unhealthy, neutral) {
            (_, _, _) if threshold == 0 => State::Closed { failures: 0 },
            // A neutral outcome changes nothing, except that a probe which
            // ended neutrally proved the plugin runs: close.
            (State::HalfOpen { .. }, _, true) => State::Closed { failures: 0 },
            (current, _, true) => current,
            (State::HalfOpen { .. }, true, _) => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                State::Open {
                    until: now + cooldown,
                }
            }
            (State::Closed { failures }, true, _) if failures + 1 >= threshold => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                State::Open {
                    until: now + cooldown,
                }
            }
            (State::Closed { failures }, true, _) => State::Closed {
                failures: failures + 1,
            },
            (State::Open { until }, true, _) => State::Open { until },
            (_, false, false) => State::Closed { failures: 0 },
        };
        self.healthy
            .store(*state == (State::Closed { failures: 0 }), Ordering::Release);
    }

    /// Closes the circuit: a new version of the plugin starts healthy.
    pub(crate) fn reset(&self) {
        let mut state = self.lock();
        *state = State::Closed { failures: 0 };
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.healthy.store(true, Ordering::Release);
    }

    /// Whether the circuit is open (or probing) right now.
    pub(crate) fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }

    /// Whether the circuit refuses calls now: open within its cooldown, or
    /// waiting for a probe's answer. An open circuit past its cooldown lets
    /// the next call through as a probe, so it does not count (readiness
    /// must not wait for traffic that it keeps away).
    pub(crate) fn refusing(&self) -> bool {
        match *self.lock() {
            State::Closed { .. } => false,
            State::Open { until } => Instant::now() < until,
            State::HalfOpen { .. } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(10);

    fn admit(breaker: &CircuitBreaker, at: Instant) -> Admission<'_> {
        breaker.admit_at(COOLDOWN, || at)
    }

    fn ticket(admission: Admission<'_>) -> Ticket<'_> {
        match admission {
            Admission::Admit(ticket) => ticket,
            Admission::Refuse(retry_in) => panic!("refused, retry in {retry_in:?}"),
        }
    }

    #[test]
    fn opens_after_consecutive_failures_then_a_probe_closes_it() {
        let breaker = CircuitBreaker::default();
        let t0 = Instant::now();
        for _ in 0..2 {
            ticket(admit(&breaker, t0)).record_at(Err(ErrorKind::Trap), 3, COOLDOWN, || t0);
        }
        // A plugin error in between neither counts nor resets.
        ticket(admit(&breaker, t0)).record_at(Err(ErrorKind::PluginError), 3, COOLDOWN, || t0);
        ticket(admit(&breaker, t0)).record_at(Err(ErrorKind::Timeout), 3, COOLDOWN, || t0);
        assert!(breaker.is_open());
        assert!(
            matches!(admit(&breaker, t0 + Duration::from_secs(1)), Admission::Refuse(d) if d == Duration::from_secs(9))
        );

        let later = t0 + COOLDOWN;
        let probe = ticket(admit(&breaker, later));
        assert!(probe.is_probe());
        assert!(
            matches!(admit(&breaker, later), Admission::Refuse(_)),
            "one probe at a time"
        );
        probe.record_at(Ok(()), 3, COOLDOWN, || later);
        assert!(!breaker.is_open());
        assert!(!ticket(admit(&breaker, later)).is_probe());
    }

    #[test]
    fn a_failed_probe_opens_it_again_and_zero_disables_it() {
        let breaker = CircuitBreaker::default();
        let cooldown = Duration::from_secs(1);
        let t0 = Instant::now();
        ticket(breaker.admit_at(cooldown, || t0)).record_at(
            Err(ErrorKind::Trap),
            1,
            cooldown,
            || t0,
        );
        let probe = ticket(breaker.admit_at(cooldown, || t0 + cooldown));
        assert!(probe.is_probe());
        probe.record_at(Err(ErrorKind::Trap), 1, cooldown, || t0 + cooldown);
        assert!(matches!(
            breaker.admit_at(cooldown, || t0 + cooldown),
            Admission::Refuse(_)
        ));

        let disabled = CircuitBreaker::default();
        for _ in 0..10 {
            ticket(admit(&disabled, t0)).record_at(Err(ErrorKind::Trap), 0, cooldown, || t0);
        }
        assert!(!ticket(admit(&disabled, t0)).is_probe());
    }

    #[test]
    fn an_abandoned_probe_does_not_lock_the_plugin_out() {
        let breaker = CircuitBreaker::default();
        let t0 = Instant::now();
        ticket(admit(&breaker, t0)).record_at(Err(ErrorKind::Trap), 1, COOLDOWN, || t0);
        let later = t0 + COOLDOWN;
        // The probe's caller goes away: its ticket is dropped unreported.
        drop(ticket(admit(&breaker, later)));
        let next = ticket(admit(&breaker, later));
        assert!(next.is_probe(), "the next call probes at once");
        next.record_at(Ok(()), 1, COOLDOWN, || later);
        assert!(!breaker.is_open());
    }

    #[test]
    fn a_probe_that_never_reports_expires_after_the_cooldown() {
        let breaker = CircuitBreaker::default();
        let t0 = Instant::now();
        ticket(admit(&breaker, t0)).record_at(Err(ErrorKind::Trap), 1, COOLDOWN, || t0);
        let probing_since = t0 + COOLDOWN;
        // Forgotten, not dropped: it will never report.
        std::mem::forget(ticket(admit(&breaker, probing_since)));
        assert!(matches!(
            admit(&breaker, probing_since + COOLDOWN / 2),
            Admission::Refuse(_)
        ));
        assert!(ticket(admit(&breaker, probing_since + COOLDOWN)).is_probe());
    }

    #[test]
    fn reset_closes_it() {
        let breaker = CircuitBreaker::default();
        let t0 = Instant::now();
        ticket(admit(&breaker, t0)).record_at(Err(ErrorKind::Trap), 1, COOLDOWN, || t0);
        assert!(breaker.is_open());
        breaker.reset();
        assert!(!breaker.is_open());
        assert!(!ticket(admit(&breaker, t0)).is_probe());
    }

    #[test]
    fn stale_tickets_cannot_close_or_reopen_the_circuit() {
        let breaker = CircuitBreaker::default();
        let t0 = Instant::now();
        // A long call admitted while the circuit was closed...
        let early = ticket(admit(&breaker, t0));
        ticket(admit(&breaker, t0)).record_at(Err(ErrorKind::Trap), 1, COOLDOWN, || t0);
        assert!(breaker.is_open());
        // ...succeeds after it opened: that does not close it.
        early.record_at(Ok(()), 1, COOLDOWN, || t0);
        assert!(breaker.is_open());

        // A probe outlives its cooldown; a second probe is let through, then
        // the first one's caller goes away: the second keeps its place.
        let first = ticket(admit(&breaker, t0 + COOLDOWN));
        let second = ticket(admit(&breaker, t0 + COOLDOWN * 2));
        assert!(first.is_probe() && second.is_probe());
        drop(first);
        assert!(matches!(
            admit(&breaker, t0 + COOLDOWN * 2),
            Admission::Refuse(_)
        ));
        second.record_at(Ok(()), 1, COOLDOWN, || t0 + COOLDOWN * 2);
        assert!(!breaker.is_open());
    }
}
