//! Polls a group of rarely-ready futures only after one of them woke the task.
//!
//! A connection's task waits on its relay and on signals that fire once in
//! its life: revocation, shutdown, certificate expiry, the idle and drain
//! timers. `tokio::select!` polls every branch at every wake of the task,
//! and a `Notify` poll takes the notifier's lock: the signals cost ~400
//! instructions per wake, twice per bidi message, for nothing. Behind a gate
//! they are polled with the gate's own waker, and only once that waker fired
//! (or the gate was opened for new futures). The relay keeps its own
//! timers (keep-alive, backend sweep, grace, drain bound) behind one too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

pub struct Gate {
    flag: Arc<Flag>,
    /// `flag` as a waker, made once.
    waker: Waker,
}

struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Default for Gate {
    fn default() -> Gate {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(flag.clone());
        Gate { flag, waker }
    }
}

impl Gate {
    /// The next `poll` runs its futures: they are new, and have not
    /// registered the gate's waker yet.
    pub fn open(&self) {
        self.flag.woken.store(true, Ordering::Release);
    }

    /// Runs `poll` with the gate's waker if the gate was woken or opened
    /// since it last ran; `Pending` otherwise.
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        match self.enter(cx) {
            Some(waker) => poll(&mut Context::from_waker(&waker)),
            None => Poll::Pending,
        }
    }

    /// `poll` for futures that live beside the gate (borrowed with it): the
    /// waker to poll them with if the gate was woken or opened since it last
    /// ran, `None` otherwise. The task's waker is registered either way.
    pub fn enter(&self, cx: &mut Context<'_>) -> Option<Waker> {
        // Registered before the flag is read: a wake between the two reaches
        // this task.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(self.waker.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::future::Future;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_futures_run_when_opened_or_woken_and_their_wake_reaches_the_task() {
        let task = Arc::new(Count(AtomicUsize::new(0)));
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        let gate = Gate::default();
        let runs = AtomicUsize::new(0);
        let inner_waker = RefCell::new(None);
        let poll = |cx: &mut Context<'_>| {
            gate.poll(cx, |inner: &mut Context<'_>| {
                runs.fetch_add(1, Ordering::SeqCst);
                *inner_waker.borrow_mut() = Some(inner.waker().clone());
                Poll::<()>::Pending
            })
        };
        // New: runs once, then not again until something wakes it.
        assert!(poll(&mut cx).is_pending());
        assert!(poll(&mut cx).is_pending());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // A wake from what it polled reaches the task, and the next poll runs.
        let w = inner_waker.borrow_mut().take().unwrap();
        w.wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut cx).is_pending());
        assert!(poll(&mut cx).is_pending());
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        // Opened (new futures): runs without a wake.
        gate.open();
        assert!(poll(&mut cx).is_pending());
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_notify_behind_the_gate_wakes_the_task() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let gate = Gate::default();
        let n = notify.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            n.notify_waiters();
        });
        let notified = notify.notified();
        tokio::pin!(notified);
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| gate.poll(cx, |cx| notified.as_mut().poll(cx))),
        )
        .await
        .expect("the notification reached the task through the gate");
    }
}
