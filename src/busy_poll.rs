//! Adaptive busy polling (`[runtime] busy_poll`): a connection that just went
//! quiet keeps its worker turning the event loop without blocking, for up to a
//! window, instead of parking it.
//!
//! Why: at one call in flight a call waits on four hops, and each one that
//! finds the gateway parked costs a wake-up. On a virtual machine a parked
//! vCPU halts and is woken by an inter-processor interrupt through the
//! hypervisor, tens of microseconds (haproxy's `busy-polling` documents the
//! same). A worker that is still polling sees the event at its next
//! non-blocking `epoll_wait`.
//!
//! The price is CPU while calls come back to back, so it is off unless
//! configured, and the window adapts the way KVM's `halt_poll_ns` does: a
//! quiet spell longer than the configured maximum halves it (down to nothing),
//! one shorter grows it. Sparse traffic therefore stops spinning after a few
//! calls; back-to-back calls keep it.

use std::future::Future as _;
use std::task::Context;
use std::time::{Duration, Instant};

/// Where a window starts when it grows from nothing (KVM's
/// `halt_poll_ns_grow_start`).
const GROW_START: Duration = Duration::from_micros(10);

/// One connection's busy-poll state.
#[derive(Debug)]
pub struct BusyPoll {
    max: Duration,
    window: Duration,
    /// When the connection last went quiet (its last poll that did work).
    quiet_since: Option<Instant>,
}

impl BusyPoll {
    /// `max` zero: never spins.
    pub fn new(max: Duration) -> BusyPoll {
        BusyPoll {
            max,
            window: Duration::ZERO,
            quiet_since: None,
        }
    }

    /// The current window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// After a poll of the connection returned `Pending`: `moved` says whether
    /// it did any work. Schedules one more non-blocking turn of the event loop
    /// for this task when it should keep spinning, and says so.
    pub fn pending(&mut self, moved: bool, cx: &mut Context<'_>) -> bool {
        if self.max.is_zero() {
            return false;
        }
        let spin = self.spin_at(moved, Instant::now());
        if spin {
            // A spinning worker must not keep the client or the backend it
            // waits for off this CPU: `sched_yield` runs whatever else is
            // runnable here first (measured: p99 at one call in flight 568
            // -> 382 us against spinning without it).
            std::thread::yield_now();
            // `yield_now` hands the waker to the scheduler's deferred list:
            // the worker then polls the I/O driver with a zero timeout and
            // wakes this task after it, instead of blocking in the driver.
            // Its one poll is all that is needed; dropping it after is fine
            // (it holds no registration). Outside a runtime it wakes at once.
            let mut y = std::pin::pin!(tokio::task::yield_now());
            let _ = y.as_mut().poll(cx);
        }
        spin
    }

    /// The decision, with the clock passed in (tests drive it).
    fn spin_at(&mut self, moved: bool, now: Instant) -> bool {
        if moved {
            if let Some(since) = self.quiet_since {
                self.adapt(now.saturating_duration_since(since));
            }
            self.quiet_since = Some(now);
        }
        self.quiet_since
            .is_some_and(|since| now.saturating_duration_since(since) < self.window)
    }

    /// KVM's rule, with `gap` the quiet spell that just ended.
    fn adapt(&mut self, gap: Duration) {
        if gap <= self.window {
            // Caught while spinning: the window is right.
        } else if gap > self.max {
            self.window /= 2;
            if self.window < GROW_START {
                self.window = Duration::ZERO;
            }
        } else {
            self.window = (self.window * 2).clamp(GROW_START, self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    /// Runs `gaps` quiet spells through the rule, each followed by a poll that
    /// did work; returns the window after each.
    fn run(max: Duration, gaps: &[u64]) -> Vec<Duration> {
        let mut b = BusyPoll::new(max);
        let mut now = Instant::now();
        assert!(!b.spin_at(true, now), "starts with no window");
        gaps.iter()
            .map(|g| {
                now += US * u32::try_from(*g).unwrap();
                b.spin_at(true, now);
                b.window()
            })
            .collect()
    }

    #[test]
    fn back_to_back_calls_grow_the_window_to_the_maximum() {
        let w = run(200 * US, &[90; 7]);
        assert_eq!(w, [10, 20, 40, 80, 160, 160, 160].map(|u| u * US));
        // A spell above the window but within the maximum still grows it.
        let w = run(200 * US, &[90, 90, 90, 90, 90, 190]);
        assert_eq!(w.last(), Some(&(200 * US)));
    }

    #[test]
    fn sparse_calls_shrink_it_to_nothing() {
        let mut gaps = vec![190; 6];
        gaps.extend([1_000; 6]);
        let w = run(200 * US, &gaps);
        assert_eq!(w[5], 200 * US);
        let halves = [100_000, 50_000, 25_000, 12_500, 0, 0].map(Duration::from_nanos);
        assert_eq!(&w[6..], halves);
    }

    #[test]
    fn spins_only_within_the_window_after_work() {
        let mut b = BusyPoll::new(200 * US);
        let t0 = Instant::now();
        for i in 0..7 {
            b.spin_at(true, t0 + 190 * US * i);
        }
        let quiet = t0 + 190 * US * 6;
        assert_eq!(b.window(), 200 * US);
        assert!(b.spin_at(false, quiet + 199 * US));
        assert!(!b.spin_at(false, quiet + 200 * US), "the window ended");
        assert!(!b.spin_at(false, quiet + 10_000 * US));
    }

    #[test]
    fn zero_maximum_never_spins() {
        let mut b = BusyPoll::new(Duration::ZERO);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..10 {
            assert!(!b.pending(true, &mut cx));
        }
        assert_eq!(b.window(), Duration::ZERO);
    }
}
