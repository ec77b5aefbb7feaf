//! A growable vector whose memory comes in pieces that each fit in one page.
//!
//! The kernel heap serves an allocation larger than about a page with a run of physically
//! contiguous frames (`kernel/src/mem.rs`). Free memory fragmented into single frames (a task
//! can do that: take every frame, give back every other one) has no such run, and then a
//! growing `Vec` fails although the memory a budget promises is there. A [`PagedVec`] never
//! asks for more than [`PIECE_BYTES`] at once: its elements live in *leaves* of at most that
//! many bytes, the leaves are listed in *mids* of [`MID_LEAVES`] entries, and the mids in one
//! top-level vector, which stays under a page up to [`MID_LEAVES`] mids (for 8-byte elements
//! 128 × 128 × 256 = 4 million of them; beyond that the top vector's 24 bytes per mid are
//! the only allocation that grows past a page). Used for the kernel's object registries and a
//! task's thread list (docs/memory.md, "Contiguous memory").
//!
//! Growth is fallible ([`PagedVec::try_push`]); only the first leaf and a mid ever grow (by
//! doubling, up to [`PIECE_BYTES`]), and leaves are freed whole ([`PagedVec::shrink`]): so
//! shrinking needs no memory. [`PagedVec::compact`] then moves a small vector's single leaf
//! and lists into smaller allocations if the heap has them (fallible: nothing changes
//! without), so that a vector that once grew does not keep its first leaf's full size.
use alloc::vec::Vec;

/// The most bytes one allocation of a [`PagedVec`] takes: with its alignment (at most 64) and
/// the heap's tags, it fits in a one-page arena of the kernel heap.
pub const PIECE_BYTES: usize = 3840;
/// Leaves per mid (a mid is a `Vec` of leaves: 24 bytes each, 3,840 bytes in all).
pub const MID_LEAVES: usize = pow2_floor(PIECE_BYTES / core::mem::size_of::<Vec<u8>>());

/// The largest power of two not above `n` (1 for 0): leaf and mid sizes are powers of two, so
/// that finding an element is shifts and masks, not divisions by a constant (a capability
/// look-up on the general path went from 196 to 254 instructions when tables became paged;
/// the divisions were most of it).
const fn pow2_floor(n: usize) -> usize {
    if n <= 1 { 1 } else { 1 << (usize::BITS - 1 - n.leading_zeros()) }
}

pub struct PagedVec<T> {
    top: Vec<Vec<Vec<T>>>,
    len: usize,
    /// Leaves allocated (each holds [`Self::PER_LEAF`] elements at most).
    leaves: usize,
}

impl<T> Default for PagedVec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> PagedVec<T> {
    /// Elements per leaf.
    pub const PER_LEAF: usize = {
        let s = core::mem::size_of::<T>();
        if s == 0 || s >= PIECE_BYTES { 1 } else { pow2_floor(PIECE_BYTES / s) }
    };

    pub const fn new() -> Self {
        PagedVec { top: Vec::new(), len: 0, leaves: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Leaves allocated; [`Self::shrink`] keeps `len.div_ceil(PER_LEAF)` of them.
    pub fn leaves(&self) -> usize {
        self.leaves
    }

    /// Elements its leaves hold room for.
    pub fn capacity(&self) -> usize {
        self.top.iter().flatten().map(Vec::capacity).sum()
    }

    /// (mid, leaf in mid, element in leaf) of element `i`.
    #[inline(always)]
    fn at(i: usize) -> (usize, usize, usize) {
        let leaf = i / Self::PER_LEAF;
        (leaf / MID_LEAVES, leaf % MID_LEAVES, i % Self::PER_LEAF)
    }

    /// Makes room for one more element: `Err(())` if there is no memory for it (nothing
    /// changed then). The first leaf grows by doubling up to its full size (a vector of a few
    /// elements holds a few); every later leaf is made at its full size.
    pub fn try_reserve_one(&mut self) -> Result<(), ()> {
        let (m, l, _) = Self::at(self.len);
        if let Some(leaf) = self.top.get_mut(m).and_then(|mid| mid.get_mut(l)) {
            if leaf.len() < leaf.capacity() {
                return Ok(());
            }
            // Only the first leaf is ever made smaller than full.
            let want = Self::PER_LEAF.min(2 * leaf.capacity()).max(4.min(Self::PER_LEAF));
            return leaf.try_reserve_exact(want - leaf.len()).map_err(|_| ());
        }
        // A new leaf (the first: small), in mid `m` (which may be new), at its end `l`.
        let mut leaf = Vec::new();
        leaf.try_reserve_exact(if self.leaves == 0 { 4.min(Self::PER_LEAF) } else { Self::PER_LEAF }).map_err(|_| ())?;
        self.room_for_leaf(m)?;
        self.top[m].push(leaf);
        self.leaves += 1;
        Ok(())
    }

    /// Makes room in mid `m` (made if it is the next) for one more leaf.
    fn room_for_leaf(&mut self, m: usize) -> Result<(), ()> {
        let new = m == self.top.len();
        if new {
            self.top.try_reserve(1).map_err(|_| ())?;
            self.top.push(Vec::new());
        }
        let mid = &mut self.top[m];
        if mid.len() == mid.capacity() {
            let want = MID_LEAVES.min(2 * mid.capacity()).max(4);
            if mid.try_reserve_exact(want - mid.len()).is_err() {
                // No empty mid is left behind (every mid holds a leaf: `shrink` and `compact`
                // count on it).
                if new {
                    self.top.pop();
                }
                return Err(());
            }
        }
        Ok(())
    }

    /// `n` elements made by `f`, in leaves of their full size (no growth later), or `None` if
    /// there is no memory for them.
    pub fn try_filled(n: usize, mut f: impl FnMut() -> T) -> Option<Self> {
        let mut v = PagedVec::new();
        while v.len < n {
            let k = Self::PER_LEAF.min(n - v.len);
            let mut leaf = Vec::new();
            leaf.try_reserve_exact(k).ok()?;
            leaf.resize_with(k, &mut f);
            let (m, _, _) = Self::at(v.len);
            v.room_for_leaf(m).ok()?;
            v.top[m].push(leaf);
            (v.leaves, v.len) = (v.leaves + 1, v.len + k);
        }
        Some(v)
    }

    /// Appends `x`, or hands it back if there is no memory for it.
    pub fn try_push(&mut self, x: T) -> Result<(), T> {
        if self.try_reserve_one().is_err() {
            return Err(x);
        }
        let (m, l, _) = Self::at(self.len);
        // The leaf has room (reserved): this never reallocates.
        self.top[m][l].push(x);
        self.len += 1;
        Ok(())
    }

    #[inline]
    pub fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len {
            return None;
        }
        let (m, l, e) = Self::at(i);
        Some(&self.top[m][l][e])
    }

    #[inline]
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        if i >= self.len {
            return None;
        }
        let (m, l, e) = Self::at(i);
        Some(&mut self.top[m][l][e])
    }

    /// Removes and returns the last element.
    pub fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let (m, l, _) = Self::at(self.len - 1);
        let x = self.top[m][l].pop();
        self.len -= 1;
        x
    }

    /// Drops the elements from `n` on (keeping their leaves: [`Self::shrink`] frees them).
    pub fn truncate(&mut self, n: usize) {
        while self.len > n {
            drop(self.pop());
        }
    }

    /// Swaps elements `i` and `j` (both below [`Self::len`]; panics otherwise).
    pub fn swap(&mut self, i: usize, j: usize) {
        assert!(i < self.len && j < self.len, "swap({i}, {j}) out of range ({} elements)", self.len);
        let (i, j) = if i <= j { (i, j) } else { (j, i) };
        let ((mi, li, ei), (mj, lj, ej)) = (Self::at(i), Self::at(j));
        if (mi, li) == (mj, lj) {
            self.top[mi][li].swap(ei, ej);
        } else if mi == mj {
            let (a, b) = self.top[mi].split_at_mut(lj);
            core::mem::swap(&mut a[li][ei], &mut b[0][ej]);
        } else {
            let (a, b) = self.top.split_at_mut(mj);
            core::mem::swap(&mut a[mi][li][ei], &mut b[0][lj][ej]);
        }
    }

    /// Keeps only the elements for which `f` is true, in their order (no allocation).
    pub fn retain(&mut self, mut f: impl FnMut(&T) -> bool) {
        let mut kept = 0;
        for i in 0..self.len {
            let keep = self.get(i).is_some_and(&mut f);
            if keep {
                if kept != i {
                    self.swap(kept, i);
                }
                kept += 1;
            }
        }
        self.truncate(kept);
    }

    /// Frees the leaves (and mids) its elements do not use, so what it holds stays within a
    /// leaf of its elements. Allocates nothing.
    pub fn shrink(&mut self) {
        self.shrink_keeping(0);
    }

    /// [`Self::shrink`], keeping `spare` leaves beyond what its elements use (the first leaf
    /// among them, as grown: the room a vector that empties and fills again at about the same
    /// size reuses without allocating). Allocates nothing.
    pub fn shrink_keeping(&mut self, spare: usize) {
        let want = self.len.div_ceil(Self::PER_LEAF).saturating_add(spare);
        while self.leaves > want {
            let m = (self.leaves - 1) / MID_LEAVES;
            drop(self.top[m].pop());
            if self.top[m].is_empty() {
                drop(self.top.pop());
            }
            self.leaves -= 1;
        }
        if self.top.is_empty() {
            self.top = Vec::new();
        }
    }

    /// After [`Self::shrink`], gives back what a small vector's single leaf and its lists hold
    /// beyond about twice its elements (the first leaf grew by doubling and never shrinks on its
    /// own): each is moved into a smaller allocation, if one can be had (nothing changes
    /// otherwise). Takes at most one leaf's elements' moves.
    pub fn compact(&mut self) {
        if self.leaves == 0 {
            self.top = Vec::new();
            return;
        }
        // One mid holding one leaf (then each list below is moved into a list of one, which
        // its reservation holds: `extend` cannot reallocate).
        if self.leaves > 1 || self.top.len() != 1 || self.top[0].len() != 1 {
            return;
        }
        let want = self.len.max(4).next_power_of_two().min(Self::PER_LEAF);
        let leaf = &mut self.top[0][0];
        if leaf.capacity() > want {
            let mut smaller = Vec::new();
            if smaller.try_reserve_exact(want).is_ok() {
                smaller.extend(leaf.drain(..));
                *leaf = smaller;
            }
        }
        if self.top[0].capacity() > 1 {
            let mut mid = Vec::new();
            if mid.try_reserve_exact(1).is_ok() {
                mid.extend(self.top[0].drain(..));
                self.top[0] = mid;
            }
        }
        if self.top.capacity() > 1 {
            let mut top = Vec::new();
            if top.try_reserve_exact(1).is_ok() {
                top.extend(self.top.drain(..));
                self.top = top;
            }
        }
    }

    /// Bytes its pieces hold (leaves, mids and the top list, by capacity).
    pub fn bytes(&self) -> usize {
        let t = core::mem::size_of::<Vec<T>>();
        self.top.capacity() * core::mem::size_of::<Vec<Vec<T>>>()
            + self.top.iter().map(|m| m.capacity() * t + m.iter().map(|l| l.capacity() * core::mem::size_of::<T>()).sum::<usize>()).sum::<usize>()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.top.iter().flatten().flatten()
    }

    /// Takes every element out (as `Vec::drain(..)`), leaving it empty with no memory.
    pub fn drain(&mut self, _all: core::ops::RangeFull) -> impl Iterator<Item = T> {
        let top = core::mem::take(&mut self.top);
        (self.len, self.leaves) = (0, 0);
        top.into_iter().flatten().flatten()
    }
}

impl<T> core::ops::Index<usize> for PagedVec<T> {
    type Output = T;
    #[inline]
    fn index(&self, i: usize) -> &T {
        assert!(i < self.len, "index {i} out of range ({} elements)", self.len);
        let (m, l, e) = Self::at(i);
        &self.top[m][l][e]
    }
}

impl<T> core::ops::IndexMut<usize> for PagedVec<T> {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut T {
        assert!(i < self.len, "index {i} out of range ({} elements)", self.len);
        let (m, l, e) = Self::at(i);
        &mut self.top[m][l][e]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_vector_gives_back_its_grown_first_leaf() {
        let mut v = PagedVec::new();
        for i in 0..40u64 {
            v.try_push(i).unwrap();
        }
        let grown = v.bytes();
        v.truncate(3);
        v.shrink();
        assert_eq!(v.bytes(), grown, "shrink frees whole pieces only");
        v.compact();
        assert!(v.bytes() <= 4 * 8 + 2 * 24, "{} bytes for 3 elements", v.bytes());
        assert_eq!((0..3).map(|i| v[i]).collect::<Vec<_>>(), [0, 1, 2]);
        v.try_push(9).unwrap();
        v.try_push(10).unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(v[4], 10);
    }

    #[test]
    fn no_piece_exceeds_a_page() {
        assert!(PagedVec::<u64>::PER_LEAF * 8 <= PIECE_BYTES);
        assert!(MID_LEAVES * core::mem::size_of::<Vec<u64>>() <= PIECE_BYTES);
        assert_eq!(PagedVec::<[u8; 5000]>::PER_LEAF, 1);
        assert_eq!(PagedVec::<()>::PER_LEAF, 1);
        assert!(PagedVec::<u64>::PER_LEAF.is_power_of_two() && MID_LEAVES.is_power_of_two());
        assert_eq!(PagedVec::<[u8; 40]>::PER_LEAF, 64);
        // A leaf's allocation is exactly its reserve.
        let mut v: PagedVec<u64> = PagedVec::new();
        for i in 0..3 * PagedVec::<u64>::PER_LEAF as u64 {
            v.try_push(i).unwrap();
            assert!(v.top.iter().all(|m| m.capacity() <= MID_LEAVES));
            assert!(v.top.iter().flatten().all(|l| l.capacity() <= PagedVec::<u64>::PER_LEAF));
        }
        // A small one holds little.
        let mut w: PagedVec<u64> = PagedVec::new();
        w.try_push(1).unwrap();
        assert_eq!((w.capacity(), w.top[0].capacity()), (4, 4));
        let f = PagedVec::try_filled(1000, || 5u64).unwrap();
        assert_eq!((f.len(), f.capacity(), f.leaves), (1000, 1000, 4));
        assert!(f.iter().all(|x| *x == 5));
    }

    #[test]
    fn behaves_like_a_vec() {
        let mut v: PagedVec<u32> = PagedVec::new();
        let mut model: Vec<u32> = Vec::new();
        // Past several leaves and more than one mid (512 per leaf, 128 leaves per mid).
        let (per, mids) = (PagedVec::<u32>::PER_LEAF, MID_LEAVES);
        assert_eq!((per, mids), (512, 128));
        let n = per * (mids + 1) + 17;
        for i in 0..n as u32 {
            v.try_push(i).unwrap();
            model.push(i);
        }
        assert_eq!(v.len(), n);
        assert_eq!(v.top.len(), 2);
        assert!(v.iter().copied().eq(model.iter().copied()));
        assert_eq!(v.get(n), None);
        assert_eq!(v.get(per * mids), Some(&((per * mids) as u32)));
        *v.get_mut(5).unwrap() = 7;
        model[5] = 7;
        v.retain(|x| x % 3 != 0);
        model.retain(|x| x % 3 != 0);
        assert!(v.iter().copied().eq(model.iter().copied()));
        assert_eq!(v.len(), model.len());
        v.shrink();
        assert!(v.capacity() < v.len() + 960);
        v.retain(|x| *x < 100);
        model.retain(|x| *x < 100);
        v.shrink();
        assert_eq!((v.top.len(), v.leaves), (1, 1));
        assert!(v.iter().copied().eq(model.iter().copied()));
        assert_eq!(v.pop(), model.pop());
        let all: Vec<u32> = v.drain(..).collect();
        model.truncate(all.len());
        assert_eq!(all, model);
        assert!(v.is_empty() && v.capacity() == 0);
        v.retain(|_| true);
        v.shrink();
        v.try_push(3).unwrap();
        assert_eq!(v.iter().copied().collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn every_element_is_dropped_once() {
        use alloc::sync::Arc;
        let a = Arc::new(());
        let mut v = PagedVec::new();
        for _ in 0..5000 {
            v.try_push(a.clone()).unwrap();
        }
        assert_eq!(Arc::strong_count(&a), 5001);
        let mut k = 0;
        v.retain(|_| {
            k += 1;
            k % 2 == 0
        });
        assert_eq!(Arc::strong_count(&a), 2501);
        v.truncate(100);
        assert_eq!(Arc::strong_count(&a), 101);
        drop(v);
        assert_eq!(Arc::strong_count(&a), 1);
    }
}
