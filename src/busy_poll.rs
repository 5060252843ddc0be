//! Adaptive busy polling (`[runtime] busy_poll`): a connection that just went
//! quiet keeps its worker turning the event loop without blocking, for up to a
//! window, instead of parking it.
//!
//! Why: at one call in flight a call waits on four hops, and each one that
//! finds the gateway parked costs a wake-up. On a virtual machine a parked
//! vCPU halts and is woken by an inter-processor interrupt through the
//! hypervisor, tens of microseconds (haproxy's `busy-polling` documents the
//! same). A worker that is still polling sees the event at its next
//! non-blocking `epoll_wait`. That holds when it is the worker that polls the
//! driver: with one worker thread (the default on up to three cores). With
//! more, another parked worker may hold the driver, and the spin buys less.
//!
//! The price is CPU while calls come back to back, so it is off unless
//! configured, and each window adapts the way KVM's `halt_poll_ns` does: a
//! quiet spell longer than the configured maximum halves it (down to
//! nothing), one longer than the window but within the maximum doubles it,
//! one caught inside it leaves it. There are two windows: one for spells with
//! calls in flight (waiting for a backend's answer or a client's next
//! message) and one for spells with none (waiting for the client's next
//! call). A client whose calls come further apart than the maximum therefore
//! stops spinning between calls after a few of them, and spins only while
//! its calls wait.

use std::future::Future as _;
use std::task::Context;
use std::time::{Duration, Instant};

/// Where a window starts when it grows from nothing (KVM's
/// `halt_poll_ns_grow_start`); also the smallest maximum accepted.
pub const GROW_START: Duration = Duration::from_micros(10);

/// The largest maximum accepted: wake-ups cost tens of microseconds, so
/// spinning for longer than this buys nothing.
pub const MAX: Duration = Duration::from_millis(1);

/// One connection's busy-poll state.
#[derive(Debug)]
pub struct BusyPoll {
    max: Duration,
    /// Windows for quiet spells with no call in flight (0) and with some (1).
    window: [Duration; 2],
    /// When the connection last went quiet (its last poll that did work), and
    /// whether calls were in flight then.
    quiet_since: Option<(Instant, bool)>,
}

impl BusyPoll {
    /// `max` zero: never spins.
    pub fn new(max: Duration) -> BusyPoll {
        BusyPoll {
            max,
            window: [Duration::ZERO; 2],
            quiet_since: None,
        }
    }

    /// After a poll of the connection returned `Pending`: `moved` says whether
    /// it did any work, `in_flight` whether it has calls open. Schedules one
    /// more non-blocking turn of the event loop for this task when it should
    /// keep spinning, and says so.
    pub fn pending(&mut self, moved: bool, in_flight: bool, cx: &mut Context<'_>) -> bool {
        if self.max.is_zero() {
            return false;
        }
        let spin = self.spin_at(moved, in_flight, Instant::now());
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
            // `tests::deferral_repolls_the_task` pins this on both schedulers.
            let mut y = std::pin::pin!(tokio::task::yield_now());
            let _ = y.as_mut().poll(cx);
        }
        spin
    }

    /// The decision, with the clock passed in (tests drive it).
    fn spin_at(&mut self, moved: bool, in_flight: bool, now: Instant) -> bool {
        if moved {
            if let Some((since, busy)) = self.quiet_since {
                let gap = now.saturating_duration_since(since);
                self.window[usize::from(busy)] =
                    adapt(self.window[usize::from(busy)], gap, self.max);
            }
            self.quiet_since = Some((now, in_flight));
        }
        self.quiet_since.is_some_and(|(since, busy)| {
            now.saturating_duration_since(since) < self.window[usize::from(busy)]
        })
    }
}

/// KVM's rule: the window after a quiet spell of `gap`.
fn adapt(window: Duration, gap: Duration, max: Duration) -> Duration {
    if gap <= window {
        // Caught while spinning: the window is right.
        window
    } else if gap > max {
        let half = window / 2;
        if half < GROW_START {
            Duration::ZERO
        } else {
            half
        }
    } else {
        (window * 2).max(GROW_START).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;

    const US: Duration = Duration::from_micros(1);

    /// Runs quiet spells (`gap` in µs, calls in flight during it) through the
    /// rule, each ended by a poll that did work; returns the windows after
    /// each.
    fn run(max: Duration, spells: &[(u64, bool)]) -> Vec<[Duration; 2]> {
        let mut b = BusyPoll::new(max);
        let mut now = Instant::now();
        let mut in_flight = spells.first().is_some_and(|s| s.1);
        assert!(!b.spin_at(true, in_flight, now), "starts with no window");
        spells
            .iter()
            .enumerate()
            .map(|(i, (gap, _))| {
                now += US * u32::try_from(*gap).unwrap();
                in_flight = spells.get(i + 1).is_some_and(|s| s.1);
                b.spin_at(true, in_flight, now);
                b.window
            })
            .collect()
    }

    fn idle(w: &[[Duration; 2]]) -> Vec<Duration> {
        w.iter().map(|w| w[0]).collect()
    }

    #[test]
    fn back_to_back_calls_grow_the_window_to_the_maximum() {
        let w = idle(&run(200 * US, &[(90, false); 7]));
        assert_eq!(w, [10, 20, 40, 80, 160, 160, 160].map(|u| u * US));
        // A spell above the window but within the maximum still grows it.
        let w = idle(&run(
            200 * US,
            &[
                (90, false),
                (90, false),
                (90, false),
                (90, false),
                (90, false),
                (190, false),
            ],
        ));
        assert_eq!(w.last(), Some(&(200 * US)));
    }

    #[test]
    fn spells_past_the_maximum_shrink_it_to_nothing() {
        let mut spells = vec![(190, false); 6];
        spells.extend([(1_000, false); 6]);
        let w = idle(&run(200 * US, &spells));
        assert_eq!(w[5], 200 * US);
        let halves = [100_000, 50_000, 25_000, 12_500, 0, 0].map(Duration::from_nanos);
        assert_eq!(&w[6..], halves);
    }

    #[test]
    fn a_sparse_client_spins_only_while_its_calls_wait() {
        // A call every millisecond, answered in 50 µs: the spell before each
        // call has none in flight, the one before each answer has one.
        let spells: Vec<(u64, bool)> = (0..10).flat_map(|_| [(950, false), (50, true)]).collect();
        let w = run(200 * US, &spells);
        assert_eq!(w.last(), Some(&[Duration::ZERO, 80 * US]));
        let mut b = BusyPoll {
            max: 200 * US,
            window: [Duration::ZERO, 80 * US],
            quiet_since: None,
        };
        let t = Instant::now();
        assert!(b.spin_at(true, true, t), "a call waits: spin");
        assert!(
            !b.spin_at(true, false, t + 50 * US),
            "answered, none in flight: no spin"
        );
    }

    #[test]
    fn spins_only_within_the_window_after_work() {
        let mut b = BusyPoll::new(200 * US);
        let t0 = Instant::now();
        for i in 0..7 {
            b.spin_at(true, false, t0 + 190 * US * i);
        }
        let quiet = t0 + 190 * US * 6;
        assert_eq!(b.window[0], 200 * US);
        assert!(b.spin_at(false, false, quiet + 199 * US));
        assert!(
            !b.spin_at(false, false, quiet + 200 * US),
            "the window ended"
        );
        assert!(!b.spin_at(false, false, quiet + 10_000 * US));
    }

    #[test]
    fn a_maximum_below_the_growth_start_does_not_panic() {
        let w = idle(&run(5 * US, &[(3, false); 4]));
        assert_eq!(w, [5 * US; 4]);
    }

    #[test]
    fn zero_maximum_never_spins() {
        let mut b = BusyPoll::new(Duration::ZERO);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..10 {
            assert!(!b.pending(true, true, &mut cx));
        }
        assert_eq!(b.window, [Duration::ZERO; 2]);
    }

    /// The deferral rests on tokio's internals (`yield_now` parks the waker
    /// in the scheduler's deferred list): a task that spins must be polled
    /// again with nothing else waking it, on both schedulers, as a spawned
    /// task (the gateway's connections are).
    #[test]
    fn deferral_repolls_the_task() {
        let runtimes = [
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build(),
        ];
        for rt in runtimes {
            let rt = rt.unwrap();
            let task = rt.spawn(async {
                let long = Duration::from_secs(5);
                let mut b = BusyPoll {
                    max: long,
                    window: [long; 2],
                    quiet_since: None,
                };
                let mut polls = 0;
                let spins = std::future::poll_fn(|cx| {
                    polls += 1;
                    if polls == 5 {
                        return Poll::Ready(());
                    }
                    assert!(b.pending(polls == 1, false, cx));
                    Poll::Pending
                });
                tokio::time::timeout(Duration::from_secs(10), spins).await
            });
            let spun = rt.block_on(task).unwrap();
            assert!(spun.is_ok(), "the task was not polled again");
        }
    }
}
