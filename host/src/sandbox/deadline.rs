//! A call's timer: runs guest work until it finishes or its deadline passes.
//!
//! Guest code that computes is stopped at a yield point: with fuel yields
//! (the default [`crate::Interruption`]) wasmtime suspends the call every so
//! many fuel units and the task is polled again at once; with epochs the
//! store's epoch callback traps on its own. Dropping the future at a yield
//! unwinds the guest's stack and loses the instance, which is what a timed
//! out call does anyway.
//!
//! `tokio::time::timeout` alone is not enough here: tokio fires timers when a
//! worker parks or every few dozen polls, and tasks that yield and are woken
//! straight away keep the workers busy, so its timer fired about 10 ms late
//! (measured: two such tasks per worker, yielding every 0.5 ms, 20 ms
//! deadline). This reads the clock whenever the work yields.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::Instant;

/// The deadline passed before the work finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// Polls `work` until it finishes, or until `deadline` has passed when it
/// yields or waits (a timer wakes a wait that outlasts the deadline).
pub(crate) async fn within<F: Future>(deadline: Instant, work: F) -> Result<F::Output, Elapsed> {
    let mut work = pin!(work);
    let mut timer = pin!(tokio::time::sleep_until(deadline.into()));
    poll_fn(|cx| {
        if let Poll::Ready(output) = work.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if Instant::now() >= deadline || timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Elapsed));
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Computes for about `busy` on each poll, then wakes itself and
    /// yields, as a guest at a fuel yield does.
    async fn compute_in_slices(busy: Duration) {
        poll_fn(|cx| {
            let until = Instant::now() + busy;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        })
        .await
    }

    /// Two self-waking computations per worker, each with a 20 ms
    /// deadline: with `tokio::time::timeout` they were stopped about 10 ms
    /// late; reading the clock at each yield stops them within a slice.
    #[test]
    fn self_waking_computations_stop_at_their_deadlines() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let lates = rt.block_on(async {
            let tasks: Vec<_> = (0..2)
                .map(|_| {
                    tokio::spawn(async {
                        let deadline = Instant::now() + Duration::from_millis(20);
                        let work = compute_in_slices(Duration::from_micros(500));
                        assert_eq!(within(deadline, work).await, Err(Elapsed));
                        Instant::now().saturating_duration_since(deadline)
                    })
                })
                .collect();
            let mut lates = Vec::new();
            for task in tasks {
                lates.push(task.await.unwrap());
            }
            lates
        });
        for late in lates {
            assert!(late < Duration::from_millis(5), "stopped {late:?} late");
        }
    }

    #[tokio::test]
    async fn work_that_waits_past_its_deadline_is_woken_and_stopped() {
        let deadline = Instant::now() + Duration::from_millis(10);
        let wait = tokio::time::sleep(Duration::from_secs(30));
        assert_eq!(within(deadline, wait).await, Err(Elapsed));
    }

    #[tokio::test]
    async fn work_that_finishes_in_time_returns_its_output() {
        let deadline = Instant::now() + Duration::from_secs(30);
        assert_eq!(within(deadline, async { 7 }).await, Ok(7));
    }
}
