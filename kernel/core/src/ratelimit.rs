//! A token bucket for what a task can make the kernel do at a cost out of proportion to its
//! own: printing a fault report on the serial console.
//!
//! A report is a line of about 100 bytes, which a 16550 at 115200 baud sends in about 9 ms while
//! the reporting CPU waits, interrupts off, and every other CPU that has a line to print waits
//! for the console lock. A thread that faults costs its task a few microseconds (a thread
//! created, started, stopped, deleted), so without a bound a task could keep the console and a
//! CPU busy far beyond its share. [`Bucket::admit`] lets `burst` reports through at once and one
//! more per `interval` of time after that, counts the ones it refuses, and hands that count to
//! the next report it lets through (so the console says how many lines were left out).
//!
//! One bucket per CPU, used only by its CPU with interrupts off: the words are atomics only so
//! that the buckets can live in a `static`; each access is a plain load or store.
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct Bucket {
    /// Reports that may go now.
    tokens: AtomicU64,
    /// The time up to which tokens have been added.
    filled: AtomicU64,
    /// Reports refused since the last one let through.
    refused: AtomicU64,
}

impl Bucket {
    /// An empty bucket whose first [`admit`](Self::admit) fills it (the time since 0 is long).
    pub const fn new() -> Bucket {
        Bucket { tokens: AtomicU64::new(0), filled: AtomicU64::new(0), refused: AtomicU64::new(0) }
    }

    /// Whether a report may go at time `now` (one token per `interval` since the last fill, at
    /// most `burst` kept): `Some(n)`, `n` the reports refused since the last one let through;
    /// `None` (counted) if not. A clock that goes back adds nothing; an `interval` of 0 is
    /// taken as 1.
    pub fn admit(&self, now: u64, interval: u64, burst: u64) -> Option<u64> {
        let interval = interval.max(1);
        let (mut tokens, filled) = (self.tokens.load(Relaxed), self.filled.load(Relaxed));
        let add = now.saturating_sub(filled) / interval;
        if add > 0 {
            if tokens.saturating_add(add) >= burst {
                tokens = burst;
                self.filled.store(now, Relaxed);
            } else {
                tokens += add;
                // `add * interval` is at most `now - filled`: no overflow.
                self.filled.store(filled + add * interval, Relaxed);
            }
        }
        if tokens == 0 {
            self.refused.store(self.refused.load(Relaxed).saturating_add(1), Relaxed);
            return None;
        }
        self.tokens.store(tokens - 1, Relaxed);
        let refused = self.refused.load(Relaxed);
        self.refused.store(0, Relaxed);
        Some(refused)
    }
}

impl Default for Bucket {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let b = Bucket::new();
        let t0 = 1_000_000;
        for _ in 0..16 {
            assert_eq!(b.admit(t0, 100, 16), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(b.admit(t0 + 50, 100, 16), None);
        }
        // One interval later: one token, and the five refused are told.
        assert_eq!(b.admit(t0 + 100, 100, 16), Some(5));
        assert_eq!(b.admit(t0 + 150, 100, 16), None);
        // Partial intervals are not lost: 100 after the last fill (at t0 + 100), not after the
        // last call.
        assert_eq!(b.admit(t0 + 200, 100, 16), Some(1));
        // A long quiet time refills only up to the burst.
        for _ in 0..16 {
            assert!(b.admit(t0 + 1_000_000, 100, 16).is_some());
        }
        assert_eq!(b.admit(t0 + 1_000_000, 100, 16), None);
    }

    #[test]
    fn a_clock_going_back_or_huge_values_add_nothing_wrong() {
        let b = Bucket::new();
        assert_eq!(b.admit(u64::MAX, 1, 2), Some(0));
        assert_eq!(b.admit(u64::MAX, 1, 2), Some(0));
        assert_eq!(b.admit(5, 1, 2), None, "time went back: nothing added");
        assert_eq!(b.admit(u64::MAX, 0, 2), None, "interval 0 is 1; no time passed since the fill");
        let c = Bucket::new();
        assert_eq!(c.admit(0, 10, 1), None, "nothing has passed at time 0");
        assert_eq!(c.admit(10, 10, 1), Some(1));
    }

    proptest::proptest! {
        /// Over any sequence of calls with a clock that moves forward, the reports let through
        /// never exceed `burst` plus one per whole interval elapsed since the first call, and
        /// every refused one is told exactly once.
        #[test]
        fn never_more_than_the_rate(steps in proptest::collection::vec(0u64..300, 1..400), burst in 1u64..20, interval in 1u64..100) {
            let b = Bucket::new();
            let start = 10_000u64;
            let (mut now, mut through, mut refused, mut told) = (start, 0u64, 0u64, 0u64);
            for s in steps {
                now += s;
                match b.admit(now, interval, burst) {
                    Some(n) => {
                        through += 1;
                        told += n;
                    }
                    None => refused += 1,
                }
                proptest::prop_assert!(through <= burst + (now - start) / interval);
            }
            // What is still untold is told by the next report let through.
            let late = now + interval * (burst + 1);
            if let Some(n) = b.admit(late, interval, burst) {
                told += n;
            }
            proptest::prop_assert_eq!(told, refused);
        }
    }
}
