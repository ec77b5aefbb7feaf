//! One CPU's wait deadlines: a binary min-heap (earliest deadline at the root) over a
//! [`PagedVec`], with entries removed lazily.
//!
//! The timer looks at the root only: a tick with nothing due costs one compare, however many
//! threads wait with a deadline. (The unsorted list this replaced was walked whole at every tick
//! once it held 64 entries, so N threads waiting with long timeouts cost their CPU O(N) at every
//! tick, with interrupts off.) Adding a deadline or taking a due one is O(log N).
//!
//! A wait that ends early (a partner came, the thread was killed) leaves its entry behind: the
//! thread that ends it may run on another CPU, and the IPC paths take no lock of the waiter's
//! CPU for that. Such a *stale* entry goes when its deadline comes (the transition it asks for
//! is refused: the wait it names is over), or at a [`Deadlines::prune`], which the owner runs
//! when the heap has doubled since the last one ([`Deadlines::wants_prune`]): each prune visits
//! at most twice as many entries as were added since the one before, so pruning costs O(1) per
//! entry added, and the heap holds at most about twice the live waits (or [`PRUNE_MIN`]).
//!
//! The caller decides what an entry's `W` is and which entries are stale; this module only
//! orders them (`tests/deadlines_model.rs` checks it against a sorted model).
use crate::paged::PagedVec;

/// The heap is not pruned below this many entries.
pub const PRUNE_MIN: usize = 64;

pub struct Deadlines<W> {
    heap: PagedVec<(u64, W)>,
    /// [`Deadlines::wants_prune`] once the heap holds this many entries.
    prune_at: usize,
}

impl<W> Default for Deadlines<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> Deadlines<W> {
    pub const fn new() -> Self {
        Deadlines { heap: PagedVec::new(), prune_at: PRUNE_MIN }
    }

    /// Entries held, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
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

    /// Takes out an entry whose deadline is at or before `now` (the earliest), if there is one.
    pub fn pop_due(&mut self, now: u64) -> Option<(u64, W)> {
        if self.earliest()? > now {
            return None;
        }
        let last = self.heap.len() - 1;
        self.heap.swap(0, last);
        let e = self.heap.pop();
        self.sift_down(0);
        e
    }

    /// Whether the heap has doubled since the last [`Deadlines::prune`] (and holds at least
    /// [`PRUNE_MIN`] entries).
    pub fn wants_prune(&self) -> bool {
        self.heap.len() >= self.prune_at
    }

    /// Keeps only the entries for which `keep` is true and frees the memory the others held
    /// (allocates nothing). Returns how many entries it looked at.
    pub fn prune(&mut self, keep: impl FnMut(&(u64, W)) -> bool) -> usize {
        let seen = self.heap.len();
        self.heap.retain(keep);
        self.heap.shrink();
        // `retain` keeps the order of what stays, which is not a heap's: build one again.
        for i in (0..self.heap.len() / 2).rev() {
            self.sift_down(i);
        }
        self.prune_at = self.heap.len().saturating_mul(2).max(PRUNE_MIN);
        seen
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[parent].0 <= self.heap[i].0 {
                break;
            }
            self.heap.swap(parent, i);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
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
            i = c;
        }
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
        assert_eq!(d.prune(|&(_, w)| w % 2 == 0), PRUNE_MIN);
        assert!(d.is_heap());
        assert_eq!(d.len(), PRUNE_MIN / 2);
        assert!(!d.wants_prune(), "below PRUNE_MIN");
        for i in 0..PRUNE_MIN as u64 / 2 {
            d.try_push(2000 + i, 1000 + i).unwrap();
        }
        // 64 now: twice the 32 kept was 64.
        assert!(d.wants_prune());
        assert_eq!(d.prune(|_| true), PRUNE_MIN);
        assert!(!d.wants_prune(), "next prune at 128");
        assert_eq!(d.earliest(), Some(1000 - (PRUNE_MIN as u64 - 2)));
    }
}
