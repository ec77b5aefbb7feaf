//! How long an idle CPU watches its inbox before it halts, adapted to the replies its threads
//! await from other CPUs (`sched::idle`).
//!
//! A thread that calls a server of another CPU leaves its CPU, which usually has nothing else
//! to run: polling a few recent reply times catches the reply without the halt and the IPI.
//! The CPU notes the call ([`ReplyPoll::awaiting`]: when, and which thread), and the awaited
//! thread's arrival, however it comes (into the idle loop, or drained by a busy CPU's
//! decision: [`ReplyPoll::arrived`]), gives one sample of the reply time to an exponentially
//! weighted mean and ends the wait. Only the awaited thread's arrival counts, and a sample is
//! capped at the longest window: before the seventeenth session any arrival after a reply
//! drained while busy (or never coming: the caller killed, its call ended some other way) took
//! the time since that old call as a sample, and one such sample put every later idle poll at
//! the longest window, with interrupts off (a review found it). A wait no reply ended is
//! forgotten by the first poll that ends empty-handed once the longest window has passed since
//! the call ([`ReplyPoll::nothing_came`]): the CPU polls the plain time again.
//!
//! Only its own CPU uses one (interrupts off); the fields are atomics so that the per-CPU
//! record can be shared, all accesses `Relaxed`.
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Windows are at least the plain poll time and at most this many times it.
pub const MAX_FACTOR: u64 = 20;
/// A window covers this many mean reply times.
pub const MEANS: u64 = 4;

/// One CPU's awaited reply and the mean reply time (TSC ticks).
pub struct ReplyPoll {
    /// When the awaited call began (0: none awaited).
    since: AtomicU64,
    /// The thread whose reply is awaited.
    who: AtomicU64,
    /// The mean reply time (0: no sample yet).
    mean: AtomicU64,
}

impl Default for ReplyPoll {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyPoll {
    pub const fn new() -> Self {
        ReplyPoll { since: AtomicU64::new(0), who: AtomicU64::new(0), mean: AtomicU64::new(0) }
    }

    /// Thread `who` of this CPU called a server of another CPU at `now` and awaits the reply.
    #[inline(always)]
    pub fn awaiting(&self, now: u64, who: u64) {
        self.who.store(who, Relaxed);
        self.since.store(now.max(1), Relaxed);
    }

    /// How long to poll, the plain poll time being `base` (0: never poll): `base`, or, while a
    /// reply is awaited, `MEANS` mean reply times, between `base` and `MAX_FACTOR` times it.
    #[inline(always)]
    pub fn window(&self, base: u64) -> u64 {
        if base == 0 || self.since.load(Relaxed) == 0 {
            return base;
        }
        MEANS.saturating_mul(self.mean.load(Relaxed)).clamp(base, MAX_FACTOR * base)
    }

    /// A poll ended at `now` with nothing arrived: a wait that began the longest window or more
    /// before is forgotten (its reply is not coming soon, if at all: the caller was killed, or
    /// its reply went another way), so that the next polls are plain ones again — after at most
    /// one more long poll.
    pub fn nothing_came(&self, now: u64, base: u64) {
        let since = self.since.load(Relaxed);
        if since != 0 && now.saturating_sub(since) >= MAX_FACTOR * base {
            self.since.store(0, Relaxed);
        }
    }

    /// Thread `who` arrived in this CPU's inbox and was taken out at `now` (`now` is read only
    /// for the awaited thread: `now()`). If it is the awaited one, its reply time (at most the
    /// longest window) goes into the mean and the wait ends. Returns whether it was awaited.
    #[inline(always)]
    pub fn arrived(&self, who: u64, base: u64, now: impl FnOnce() -> u64) -> bool {
        let since = self.since.load(Relaxed);
        if since == 0 || self.who.load(Relaxed) != who {
            return false;
        }
        let took = now().saturating_sub(since).min(MAX_FACTOR * base.max(1));
        let mean = self.mean.load(Relaxed);
        self.mean.store(if mean == 0 { took } else { (7 * mean + took) / 8 }, Relaxed);
        self.since.store(0, Relaxed);
        true
    }

    /// The mean reply time (TSC ticks; 0: no sample yet).
    pub fn mean(&self) -> u64 {
        self.mean.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 1000;

    #[test]
    fn plain_window_when_nothing_is_awaited() {
        let p = ReplyPoll::new();
        assert_eq!(p.window(BASE), BASE);
        assert_eq!(p.window(0), 0);
        p.awaiting(10, 7);
        assert_eq!(p.window(0), 0, "poll_us=0 never polls");
    }

    #[test]
    fn window_follows_the_mean_within_bounds() {
        let p = ReplyPoll::new();
        p.awaiting(100, 7);
        assert!(p.arrived(7, BASE, || 100 + 600));
        assert_eq!(p.mean(), 600);
        p.awaiting(2000, 7);
        assert_eq!(p.window(BASE), 2400);
        // Short replies: never below the plain time.
        let q = ReplyPoll::new();
        q.awaiting(1, 3);
        q.arrived(3, BASE, || 11);
        q.awaiting(50, 3);
        assert_eq!(q.window(BASE), BASE);
    }

    #[test]
    fn another_threads_arrival_is_no_sample() {
        let p = ReplyPoll::new();
        p.awaiting(100, 7);
        assert!(!p.arrived(8, BASE, || panic!("no clock read for a thread not awaited")));
        assert_eq!(p.mean(), 0);
        assert!(p.arrived(7, BASE, || 400));
        assert_eq!(p.mean(), 300);
        // The wait ended: a second arrival of the same thread is no sample.
        assert!(!p.arrived(7, BASE, || 1_000_000));
        assert_eq!(p.mean(), 300);
    }

    /// The review's case: the reply was drained while the CPU was busy (an arrival all the
    /// same: the wait ends there), and a much later arrival of anything takes no sample.
    #[test]
    fn a_reply_drained_while_busy_leaves_no_stale_wait() {
        let p = ReplyPoll::new();
        p.awaiting(100, 7);
        p.arrived(7, BASE, || 500);
        let m = p.mean();
        assert!(!p.arrived(7, BASE, || 100_000_000));
        assert_eq!(p.mean(), m);
        assert_eq!(p.window(BASE), BASE);
    }

    /// A reply that never comes (the caller killed) stops lengthening the polls at the first
    /// empty-handed poll the longest window after the call; a reply that comes very late is one
    /// capped sample.
    #[test]
    fn an_abandoned_wait_is_forgotten_and_samples_are_capped() {
        let p = ReplyPoll::new();
        p.awaiting(100, 7);
        p.arrived(7, BASE, || 100 + 3000);
        p.awaiting(10_000, 9);
        assert_eq!(p.window(BASE), 4 * 3000);
        p.nothing_came(10_000 + 4 * 3000, BASE);
        assert_eq!(p.window(BASE), 4 * 3000, "a poll of one window is not enough to give up");
        p.nothing_came(10_000 + MAX_FACTOR * BASE, BASE);
        assert_eq!(p.window(BASE), BASE);
        assert!(!p.arrived(9, BASE, || u64::MAX), "forgotten: no sample");
        p.awaiting(50_000, 9);
        assert!(p.arrived(9, BASE, || u64::MAX));
        assert_eq!(p.mean(), (7 * 3000 + MAX_FACTOR * BASE) / 8);
        p.awaiting(60_000, 9);
        assert!(p.window(BASE) <= MAX_FACTOR * BASE);
    }

    #[test]
    fn clock_going_backwards_is_no_sample_of_size() {
        let p = ReplyPoll::new();
        p.awaiting(1000, 7);
        p.arrived(7, BASE, || 10);
        assert_eq!(p.mean(), 0);
        assert_eq!(p.window(BASE), BASE);
    }
}
