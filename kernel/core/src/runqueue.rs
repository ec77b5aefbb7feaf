//! A CPU's run queue: 256 priorities, FIFO within each, a two-level bitmap for an O(1) pick of
//! the highest non-empty priority.
//!
//! The running thread is not in the queue (lazy scheduling: a thread that blocks is never
//! touched here on the fast path). `T` is whatever the kernel uses to name a thread; the queue
//! only moves it around.
use alloc::collections::VecDeque;

pub const PRIORITIES: usize = 256;

pub struct RunQueue<T> {
    /// Bit `w` set: word `w` of `bits` is non-zero.
    top: u64,
    /// Bit `p % 64` of word `p / 64` set: priority `p` has a thread.
    bits: [u64; PRIORITIES / 64],
    queues: [VecDeque<T>; PRIORITIES],
    len: usize,
}

impl<T: PartialEq> Default for RunQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: PartialEq> RunQueue<T> {
    pub fn new() -> Self {
        RunQueue { top: 0, bits: [0; 4], queues: core::array::from_fn(|_| VecDeque::new()), len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn mark(&mut self, p: u8) {
        let (w, b) = (p as usize / 64, p as usize % 64);
        self.bits[w] |= 1 << b;
        self.top |= 1 << w;
    }

    fn unmark_if_empty(&mut self, p: u8) {
        if self.queues[p as usize].is_empty() {
            let (w, b) = (p as usize / 64, p as usize % 64);
            self.bits[w] &= !(1 << b);
            if self.bits[w] == 0 {
                self.top &= !(1 << w);
            }
        }
    }

    /// Every queued entry with its priority, highest priority first.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &T)> {
        (0..PRIORITIES).rev().flat_map(move |p| self.queues[p].iter().map(move |t| (p as u8, t)))
    }

    /// Whether the bitmaps and the length agree with the queues (the kernel's consistency
    /// check asks).
    pub fn is_consistent(&self) -> bool {
        let mut len = 0;
        for p in 0..PRIORITIES {
            let (w, b) = (p / 64, p % 64);
            let marked = self.bits[w] & (1 << b) != 0;
            if marked == self.queues[p].is_empty() {
                return false;
            }
            len += self.queues[p].len();
        }
        let top = (0..PRIORITIES / 64).filter(|&w| self.bits[w] != 0).fold(0u64, |t, w| t | 1 << w);
        top == self.top && len == self.len
    }

    /// Adds `t` at the tail of priority `p` (a thread that used up its slice, or a new one).
    pub fn push_back(&mut self, p: u8, t: T) {
        self.queues[p as usize].push_back(t);
        self.mark(p);
        self.len += 1;
    }

    /// Adds `t` at the head of priority `p` (a preempted thread keeps its turn).
    pub fn push_front(&mut self, p: u8, t: T) {
        self.queues[p as usize].push_front(t);
        self.mark(p);
        self.len += 1;
    }

    /// The highest priority that has a thread.
    pub fn highest(&self) -> Option<u8> {
        if self.top == 0 {
            return None;
        }
        let w = 63 - self.top.leading_zeros() as usize;
        let b = 63 - self.bits[w].leading_zeros() as usize;
        Some((w * 64 + b) as u8)
    }

    /// Takes the first thread of the highest priority.
    pub fn pop(&mut self) -> Option<(u8, T)> {
        let p = self.highest()?;
        let t = self.queues[p as usize].pop_front().expect("bitmap says non-empty");
        self.unmark_if_empty(p);
        self.len -= 1;
        Some((p, t))
    }

    /// Takes out the first entry, highest priority first, for which `f` holds (a linear walk:
    /// for sweeping out entries that will never run).
    pub fn take_first_where(&mut self, mut f: impl FnMut(&T) -> bool) -> Option<(u8, T)> {
        for p in (0..PRIORITIES).rev() {
            if let Some(i) = self.queues[p].iter().position(&mut f) {
                let t = self.queues[p].remove(i).expect("just found");
                self.unmark_if_empty(p as u8);
                self.len -= 1;
                return Some((p as u8, t));
            }
        }
        None
    }

    /// Removes `t` from priority `p`, wherever it is in that FIFO. Returns whether it was there.
    pub fn remove(&mut self, p: u8, t: &T) -> bool {
        let q = &mut self.queues[p as usize];
        match q.iter().position(|x| x == t) {
            Some(i) => {
                q.remove(i);
                self.unmark_if_empty(p);
                self.len -= 1;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_priority_first_fifo_within() {
        let mut q = RunQueue::new();
        q.push_back(10, 'a');
        q.push_back(200, 'b');
        q.push_back(10, 'c');
        q.push_back(0, 'd');
        q.push_back(255, 'e');
        q.push_back(63, 'f');
        q.push_back(64, 'g');
        assert_eq!(q.len(), 7);
        let order: Vec<_> = core::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec![(255, 'e'), (200, 'b'), (64, 'g'), (63, 'f'), (10, 'a'), (10, 'c'), (0, 'd')]);
        assert!(q.is_empty());
        assert_eq!(q.highest(), None);
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn push_front_keeps_the_turn() {
        let mut q = RunQueue::new();
        q.push_back(5, 1);
        q.push_back(5, 2);
        q.push_front(5, 3);
        assert_eq!(q.pop(), Some((5, 3)));
        assert_eq!(q.pop(), Some((5, 1)));
    }

    #[test]
    fn remove_keeps_the_bitmap_right() {
        let mut q = RunQueue::new();
        q.push_back(100, 1);
        q.push_back(100, 2);
        q.push_back(3, 3);
        assert!(q.remove(100, &1));
        assert!(!q.remove(100, &1));
        assert!(!q.remove(7, &3));
        assert_eq!(q.highest(), Some(100));
        assert!(q.remove(100, &2));
        assert_eq!(q.highest(), Some(3));
        assert!(q.remove(3, &3));
        assert_eq!(q.highest(), None);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn every_priority_is_reachable() {
        let mut q = RunQueue::new();
        for p in 0..=255u8 {
            q.push_back(p, p as u32);
        }
        for p in (0..=255u8).rev() {
            assert_eq!(q.pop(), Some((p, p as u32)));
        }
    }

    #[test]
    fn iteration_and_self_check() {
        let mut q = RunQueue::new();
        assert!(q.is_consistent());
        q.push_back(3, 'a');
        q.push_back(200, 'b');
        q.push_front(3, 'c');
        assert!(q.is_consistent());
        assert_eq!(q.iter().collect::<Vec<_>>(), [(200, &'b'), (3, &'c'), (3, &'a')]);
        q.pop();
        q.remove(3, &'a');
        assert!(q.is_consistent());
        assert_eq!(q.iter().collect::<Vec<_>>(), [(3, &'c')]);
        q.len += 1;
        assert!(!q.is_consistent());
    }

    #[test]
    fn take_first_where_keeps_the_rest_in_order() {
        let mut q = RunQueue::new();
        for (p, t) in [(5u8, 1u32), (9, 2), (5, 3), (0, 4)] {
            q.push_back(p, t);
        }
        assert_eq!(q.take_first_where(|&t| t % 2 == 1), Some((5, 1)));
        assert_eq!(q.take_first_where(|&t| t == 7), None);
        assert!(q.is_consistent());
        assert_eq!(q.iter().map(|(p, &t)| (p, t)).collect::<Vec<_>>(), vec![(9, 2), (5, 3), (0, 4)]);
        assert_eq!(q.take_first_where(|&t| t == 4), Some((0, 4)));
        assert!(q.is_consistent() && q.len() == 2);
    }
}
