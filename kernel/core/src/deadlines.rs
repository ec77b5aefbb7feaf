//! One CPU's wait deadlines: a binary min-heap (earliest deadline at the root) over a
//! [`PagedVec`], with entries removed lazily.
//!
//! The timer takes out the due entries, earliest first, O(log N) each; a tick with nothing due
//! looks at the root only, however many threads wait with a deadline. (The unsorted list this
//! replaced was walked whole at every tick once it held 64 entries, so N threads waiting with
//! long timeouts cost their CPU O(N) at every tick, with interrupts off.)
//!
//! A wait that ends early (a partner came, the thread was killed) leaves its entry behind: the
//! thread that ends it may run on another CPU, and the IPC paths take no lock of the waiter's
//! CPU for that. Such a *stale* entry goes when its deadline comes (the transition it asks for
//! is refused: the wait it names is over), or at a [`Deadlines::prune`], which the owner runs
//! when [`Deadlines::wants_prune`] says: when the heap has doubled since the last prune (so
//! that prunes cost O(1) per entry added, however fast waits come and go). The entries of
//! threads that died (the kernel counts them per CPU: its *epoch*; an entry keeps its thread's
//! record allocated) go sooner, by a [`Deadlines::sweep`]: a few entries per call, which the
//! owner makes at each tick while [`Deadlines::wants_sweep`] says that the epoch moved since the
//! last complete sweep, so that a thread's death costs its CPU a bounded amount per tick however
//! many live waits it holds (before the twenty-fifth session a prune of every entry, each
//! thread's lock taken, ran within a second of any death: a task could have a CPU walk all its
//! live waits once a second). After a burst of waits has ended,
//! [`Deadlines::wants_shrink`] says when the heap holds leaves it does not need.
//!
//! The caller decides what an entry's `W` is and which entries are stale or dead; this module
//! only orders them (`tests/deadlines_model.rs` checks it against a sorted model).
use crate::paged::PagedVec;

/// The heap is not pruned below this many entries.
pub const PRUNE_MIN: usize = 64;

pub struct Deadlines<W> {
    heap: PagedVec<(u64, W)>,
    /// [`Deadlines::wants_prune`] once the heap holds this many entries.
    prune_at: usize,
    /// The epoch the last complete sweep (or prune) started at: the entries of threads that
    /// died before it are gone.
    epoch: u64,
    /// The sweep under way: the next index it looks at, and the epoch it started at.
    sweep: Option<(usize, u64)>,
    /// Whether, since the sweep under way started, an entry may have moved from where it had
    /// yet to look to where it had looked (a take of a due entry moves entries up; so may the
    /// sweep's own removals): it then starts again rather than end.
    disturbed: bool,
    /// Entries of the heap this one stands in for while that one is out ([`Deadlines::take_out`]).
    away: usize,
}

impl<W> Default for Deadlines<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> Deadlines<W> {
    pub const fn new() -> Self {
        Deadlines { heap: PagedVec::new(), prune_at: PRUNE_MIN, epoch: 0, sweep: None, disturbed: false, away: 0 }
    }

    /// Entries held, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Entries held, with those of the heap this one stands in for while it is out.
    pub fn held(&self) -> usize {
        self.heap.len() + self.away
    }

    /// Takes the heap out (for work its owner does with no lock held), leaving an empty one
    /// that counts its entries in [`Deadlines::held`] until it is swapped back.
    pub fn take_out(&mut self) -> Self {
        let out = core::mem::take(self);
        self.away = out.heap.len();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &(u64, W)> {
        self.heap.iter()
    }

    /// Makes room for one more entry (`Err(())` if there is no memory for it), so that a
    /// [`Deadlines::try_push`] after it cannot fail.
    pub fn try_reserve_one(&mut self) -> Result<(), ()> {
        self.heap.try_reserve_one()
    }

    /// Adds `w` with `deadline`, or hands `w` back if there is no memory for it.
    pub fn try_push(&mut self, deadline: u64, w: W) -> Result<(), W> {
        self.heap.try_push((deadline, w)).map_err(|(_, w)| w)?;
        self.sift_up(self.heap.len() - 1);
        Ok(())
    }

    /// The earliest deadline held (stale entries included).
    pub fn earliest(&self) -> Option<u64> {
        self.heap.get(0).map(|e| e.0)
    }

    /// [`Deadlines::pop_due`] for an owner that knows which entries are dead (`dead`, as it
    /// tells [`Deadlines::sweep`]): a take during a sweep makes it start again only if a dead
    /// entry went from where the sweep had yet to look to where it had looked — the last entry,
    /// which takes the root's place, or one of those that move up as it goes down — not at every
    /// take (a CPU where a wait ends in every pass of a sweep swept for ever: a review found it).
    pub fn pop_due_with(&mut self, now: u64, mut dead: impl FnMut(&(u64, W)) -> bool) -> Option<(u64, W)> {
        let Some((at, _)) = self.sweep else { return self.pop_due(now) };
        if self.earliest()? > now {
            return None;
        }
        let last = self.heap.len() - 1;
        self.heap.swap(0, last);
        let e = self.heap.pop();
        // Watching what crosses `at`: each child that goes up from `c` to `i`.
        let mut crossed = false;
        let i = self.sift_down_by(0, |e, i, c| crossed |= i < at && c >= at && dead(e));
        self.disturbed |= crossed;
        let n = self.heap.len();
        // The last entry, from `last`, ended at `i`.
        if last >= at && i < at && i < n && dead(&self.heap[i]) {
            self.disturbed = true;
        }
        e
    }

    /// Takes out an entry whose deadline is at or before `now` (the earliest), if there is one.
    /// During a sweep, the sweep then starts again when it ends (an entry may have gone past it:
    /// [`Deadlines::pop_due_with`] looks).
    pub fn pop_due(&mut self, now: u64) -> Option<(u64, W)> {
        if self.earliest()? > now {
            return None;
        }
        self.disturbed |= self.sweep.is_some();
        let last = self.heap.len() - 1;
        self.heap.swap(0, last);
        let e = self.heap.pop();
        self.sift_down(0);
        e
    }

    /// Whether a prune is due: the heap has doubled since the last one (and holds at least
    /// [`PRUNE_MIN`] entries).
    pub fn wants_prune(&self) -> bool {
        self.heap.len() >= self.prune_at
    }

    /// Keeps only the entries for which `keep` is true and frees the memory the others held
    /// (allocates nothing). `keep` must refuse the entries of threads that died: the prune
    /// counts as a sweep that started at `epoch` (the owner's epoch read before it). Returns how
    /// many entries it looked at.
    pub fn prune(&mut self, epoch: u64, keep: impl FnMut(&(u64, W)) -> bool) -> usize {
        let seen = self.heap.len();
        self.heap.retain(keep);
        self.heap.shrink_keeping(1);
        // `retain` keeps the order of what stays, which is not a heap's: build one again.
        for i in (0..self.heap.len() / 2).rev() {
            self.sift_down(i);
        }
        self.prune_at = self.heap.len().saturating_mul(2).max(PRUNE_MIN);
        (self.epoch, self.sweep, self.disturbed) = (epoch, None, false);
        seen
    }

    /// Whether a sweep is under way, or due because `epoch` (the owner's count of deaths) is
    /// not the one the last complete sweep started at.
    pub fn wants_sweep(&self, epoch: u64) -> bool {
        self.sweep.is_some() || (epoch != self.epoch && !self.heap.is_empty())
    }

    /// One step of the sweep of dead entries: looks at up to `budget` entries from where the
    /// last step stopped (from the first, starting a sweep, if none is under way and
    /// [`Deadlines::wants_sweep`]), takes out those `dead` says are, and hands each to `gone`.
    /// A sweep ends once it has looked at every entry; if an entry may have moved past it
    /// meanwhile (`disturbed`), it starts again instead, with the epoch of then. Every entry
    /// that was dead when a sweep started is gone when it ends. Returns how many entries it
    /// looked at.
    pub fn sweep(&mut self, epoch: u64, budget: usize, mut dead: impl FnMut(&(u64, W)) -> bool, mut gone: impl FnMut((u64, W))) -> usize {
        let (mut at, started) = match self.sweep {
            Some(s) => s,
            None if self.wants_sweep(epoch) => {
                self.disturbed = false;
                (0, epoch)
            }
            None => return 0,
        };
        let mut seen = 0;
        while seen < budget && at < self.heap.len() {
            seen += 1;
            if dead(&self.heap[at]) {
                // The last entry takes its place; if it goes up, past the sweep, it is looked at
                // there: one that is dead makes the sweep start again (the entries it moves down
                // stay where the sweep has been or come to `at`).
                let (e, up) = self.remove_at(at);
                self.disturbed |= up.is_some_and(|p| dead(&self.heap[p]));
                gone(e);
            } else {
                at += 1;
            }
        }
        self.sweep = if at < self.heap.len() {
            Some((at, started))
        } else if self.disturbed {
            self.disturbed = false;
            Some((0, epoch))
        } else {
            self.epoch = started;
            None
        };
        seen
    }

    /// Takes out the entry at `i` (the last one takes its place and finds its own); and where
    /// that one went if it went up, before `i`.
    fn remove_at(&mut self, i: usize) -> ((u64, W), Option<usize>) {
        let last = self.heap.len() - 1;
        self.heap.swap(i, last);
        let e = self.heap.pop().expect("an entry at i");
        if i < self.heap.len() {
            let p = self.sift_up(i);
            if p < i {
                return (e, Some(p));
            }
            self.sift_down(i);
        }
        (e, None)
    }

    /// Whether the heap holds more than one leaf beyond what its entries fill (due entries were
    /// taken out: [`Deadlines::shrink`] would free memory).
    pub fn wants_shrink(&self) -> bool {
        self.heap.leaves() > self.heap.len().div_ceil(PagedVec::<(u64, W)>::PER_LEAF) + 1
    }

    /// Frees the leaves its entries do not fill but one (allocates nothing): the heap keeps the
    /// room of a leaf, its first as grown when it is empty, so that waits that come and go at
    /// about the same number find room without allocating on their way (before the forty-third
    /// session every leaf went, and a CPU whose waits with a timeout emptied its heap allocated
    /// it anew, 4 entries then doubling, on the next ones: a review pointed at the allocations on
    /// that IPC path).
    pub fn shrink(&mut self) {
        self.heap.shrink_keeping(1);
    }

    /// Moves the entry at `i` up to its place; returns where it went.
    fn sift_up(&mut self, mut i: usize) -> usize {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[parent].0 <= self.heap[i].0 {
                break;
            }
            self.heap.swap(parent, i);
            i = parent;
        }
        i
    }

    fn sift_down(&mut self, i: usize) {
        self.sift_down_by(i, |_, _, _| {});
    }

    /// Moves the entry at `i` down to its place, telling `up` of each child it passes (the
    /// child, now at its parent's index, and the index it came from); returns where it went.
    fn sift_down_by(&mut self, mut i: usize, mut up: impl FnMut(&(u64, W), usize, usize)) -> usize {
        let n = self.heap.len();
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && self.heap[r].0 < self.heap[l].0 { r } else { l };
            if self.heap[i].0 <= self.heap[c].0 {
                break;
            }
            self.heap.swap(i, c);
            up(&self.heap[i], i, c);
            i = c;
        }
        i
    }

    /// Whether every entry's deadline is at or after its parent's (for tests).
    pub fn is_heap(&self) -> bool {
        (1..self.heap.len()).all(|i| self.heap[(i - 1) / 2].0 <= self.heap[i].0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_come_out_earliest_first() {
        let mut d = Deadlines::new();
        for (i, t) in [50u64, 10, 40, 10, 30, 20, 60].into_iter().enumerate() {
            d.try_push(t, i).unwrap();
            assert!(d.is_heap());
        }
        assert_eq!(d.pop_due(5), None);
        let mut out = alloc::vec::Vec::new();
        while let Some((t, _)) = d.pop_due(40) {
            out.push(t);
            assert!(d.is_heap());
        }
        assert_eq!(out, [10, 10, 20, 30, 40]);
        assert_eq!(d.earliest(), Some(50));
        assert_eq!(d.len(), 2);
    }

    /// Emptied and shrunk, the heap keeps its first leaf as grown: as many waits again find
    /// room with no allocation (each would fail here), after a shrink as after a prune.
    #[test]
    fn an_emptied_heap_fills_again_without_allocating() {
        let per_leaf = PagedVec::<(u64, u64)>::PER_LEAF as u64;
        for prune in [false, true] {
            let mut d = Deadlines::new();
            for i in 0..per_leaf + 10 {
                d.try_push(i, i).unwrap();
            }
            if prune {
                d.prune(0, |_| false);
            } else {
                while d.pop_due(u64::MAX).is_some() {}
                d.shrink();
            }
            assert_eq!(d.len(), 0);
            crate::test_alloc::no_memory(|| {
                for i in 0..per_leaf {
                    assert!(d.try_push(i, i).is_ok(), "entry {i} needed an allocation (prune: {prune})");
                }
            });
            assert!(d.try_push(0, 0).is_ok());
        }
    }

    #[test]
    fn shrink_after_a_burst() {
        let mut d = Deadlines::new();
        let per_leaf = PagedVec::<(u64, u64)>::PER_LEAF as u64;
        for i in 0..4 * per_leaf {
            d.try_push(i, i).unwrap();
        }
        assert!(!d.wants_shrink());
        while d.pop_due(3 * per_leaf).is_some() {}
        assert_eq!(d.len() as u64, per_leaf - 1);
        assert!(d.wants_shrink());
        d.shrink();
        assert!(!d.wants_shrink());
        assert!(d.is_heap());
        assert_eq!(d.earliest(), Some(3 * per_leaf + 1));
    }

    #[test]
    fn prune_runs_once_the_heap_has_doubled() {
        let mut d = Deadlines::new();
        for i in 0..PRUNE_MIN as u64 - 1 {
            d.try_push(1000 - i, i).unwrap();
        }
        assert!(!d.wants_prune());
        d.try_push(5, 99).unwrap();
        assert!(d.wants_prune());
        // Half the entries are stale.
        assert_eq!(d.prune(0, |&(_, w)| w % 2 == 0), PRUNE_MIN);
        assert!(d.is_heap());
        assert_eq!(d.len(), PRUNE_MIN / 2);
        assert!(!d.wants_prune(), "below PRUNE_MIN");
        assert!(!d.wants_sweep(0), "the prune was given epoch 0");
        assert!(d.wants_sweep(1), "a thread died since");
        for i in 0..PRUNE_MIN as u64 / 2 {
            d.try_push(2000 + i, 1000 + i).unwrap();
        }
        // 64 now: twice the 32 kept was 64.
        assert!(d.wants_prune());
        assert_eq!(d.prune(1, |_| true), PRUNE_MIN);
        assert!(!d.wants_prune(), "next prune at 128 entries");
        assert!(!d.wants_sweep(1));
        assert_eq!(d.earliest(), Some(1000 - (PRUNE_MIN as u64 - 2)));
    }

    #[test]
    fn a_heap_taken_out_is_still_counted() {
        let mut d = Deadlines::new();
        for i in 0..10u64 {
            d.try_push(i, i).unwrap();
        }
        let mut out = d.take_out();
        assert_eq!((d.len(), d.held()), (0, 10), "the stand-in counts what is out");
        out.pop_due(3);
        core::mem::swap(&mut d, &mut out);
        assert_eq!((d.len(), d.held()), (9, 9), "back, as it is now");
    }

    #[test]
    fn a_sweep_takes_the_dead_out_a_few_at_a_time() {
        let mut d = Deadlines::new();
        for i in 0..100u64 {
            d.try_push(1000 + (i * 37) % 101, i).unwrap();
        }
        assert!(!d.wants_sweep(0), "no death yet");
        assert_eq!(d.sweep(0, 8, |_| true, |_| panic!("no sweep")), 0);
        // Every third entry's thread died (epoch 1).
        let mut gone = alloc::vec::Vec::new();
        let mut steps = 0;
        while d.wants_sweep(1) {
            let seen = d.sweep(1, 8, |&(_, w)| w % 3 == 0, |(_, w)| gone.push(w));
            assert!(seen <= 8);
            assert!(d.is_heap());
            steps += 1;
            assert!(steps < 100, "the sweep ends");
        }
        gone.sort();
        assert_eq!(gone, (0..100).filter(|w| w % 3 == 0).collect::<alloc::vec::Vec<u64>>());
        assert_eq!(d.len(), 100 - gone.len());
        assert!(d.iter().all(|&(_, w)| w % 3 != 0));
        // Done until the next death.
        assert!(!d.wants_sweep(1));
        assert!(d.wants_sweep(2));
    }
}
