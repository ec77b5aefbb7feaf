//! The physical frame allocator: one bit per 4 KiB frame of every free range.
//!
//! Built once at boot from the ranges that survived [`RangeSet`](crate::memmap::RangeSet)
//! (usable memory minus everything reserved), so it can never hand out the kernel image, boot
//! modules, ACPI tables or the AP trampoline: those frames are simply not in any zone. The
//! bitmap lives in memory the caller carved out of the free ranges beforehand (it needs
//! [`FrameAllocator::bitmap_words`] words).
//!
//! Invariants: a bit is 1 exactly when its frame is free; `free` counts the 1 bits; each zone's
//! `hint` is a word index at or below which no free bit was skipped since the last `free`.
//! The kernel wraps the allocator in a lock; nothing here is concurrent.

use crate::PAGE_SIZE;
use crate::memmap::Range;

/// Most disjoint free ranges the allocator manages (firmware maps rarely exceed a few dozen).
pub const MAX_ZONES: usize = 64;

#[derive(Clone, Copy, Debug, Default)]
struct Zone {
    /// First frame number of the zone.
    base: u64,
    /// Number of frames.
    frames: u64,
    /// Index of the zone's first word in the bitmap (zones start on a word boundary).
    word: usize,
    /// Search hint: first word that may hold a free bit.
    hint: usize,
}

impl Zone {
    fn words(&self) -> usize {
        self.frames.div_ceil(64) as usize
    }
    fn contains(&self, frame: u64) -> bool {
        frame >= self.base && frame < self.base + self.frames
    }
}

/// Why a frame could not be freed or reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The address is not 4 KiB aligned.
    Misaligned,
    /// The frame is not managed by this allocator (reserved at boot, or not RAM).
    NotManaged,
    /// The frame is already free (double free).
    AlreadyFree,
    /// The frame is already in use (reserve of an allocated frame).
    InUse,
}

pub struct FrameAllocator<'a> {
    zones: [Zone; MAX_ZONES],
    nzones: usize,
    bitmap: &'a mut [u64],
    free: u64,
    total: u64,
}

impl<'a> FrameAllocator<'a> {
    /// Words of bitmap needed to manage `ranges` (whole pages, as produced by `RangeSet`).
    pub fn bitmap_words(ranges: &[Range]) -> usize {
        ranges.iter().take(MAX_ZONES).map(|r| (r.len() / PAGE_SIZE).div_ceil(64) as usize).sum()
    }

    /// Builds an allocator in which every page of `ranges` is free. Ranges past [`MAX_ZONES`]
    /// are left out (and so never handed out); `bitmap` must hold at least
    /// [`bitmap_words`](Self::bitmap_words) words, or the zones that do not fit are left out too.
    pub fn new(ranges: &[Range], bitmap: &'a mut [u64]) -> Self {
        let mut a = FrameAllocator { zones: [Zone::default(); MAX_ZONES], nzones: 0, bitmap, free: 0, total: 0 };
        let mut word = 0;
        for r in ranges.iter().take(MAX_ZONES) {
            let base = r.start.div_ceil(PAGE_SIZE);
            let end = r.end / PAGE_SIZE;
            if end <= base {
                continue;
            }
            let z = Zone { base, frames: end - base, word, hint: word };
            if word + z.words() > a.bitmap.len() {
                break;
            }
            let full = (z.frames / 64) as usize;
            a.bitmap[word..word + full].fill(u64::MAX);
            let rest = z.frames % 64;
            if rest != 0 {
                a.bitmap[word + full] = (1u64 << rest) - 1;
            }
            word += z.words();
            a.free += z.frames;
            a.total += z.frames;
            a.zones[a.nzones] = z;
            a.nzones += 1;
        }
        a
    }

    /// Free frames.
    pub fn free_frames(&self) -> u64 {
        self.free
    }

    /// Frames managed in all (free and allocated).
    pub fn total_frames(&self) -> u64 {
        self.total
    }

    fn zones(&self) -> &[Zone] {
        &self.zones[..self.nzones]
    }

    fn locate(&self, addr: u64) -> Result<(usize, usize, u64), FrameError> {
        if addr % PAGE_SIZE != 0 {
            return Err(FrameError::Misaligned);
        }
        let f = addr / PAGE_SIZE;
        let zi = self.zones().iter().position(|z| z.contains(f)).ok_or(FrameError::NotManaged)?;
        let z = &self.zones[zi];
        let off = f - z.base;
        Ok((zi, z.word + (off / 64) as usize, 1u64 << (off % 64)))
    }

    /// Allocates one frame and returns its physical address.
    pub fn alloc(&mut self) -> Option<u64> {
        self.alloc_below(u64::MAX)
    }

    /// Allocates one frame that lies wholly below `limit` (e.g. 4 GiB for a 32-bit CR3).
    pub fn alloc_below(&mut self, limit: u64) -> Option<u64> {
        for zi in 0..self.nzones {
            let z = self.zones[zi];
            if z.base * PAGE_SIZE >= limit {
                break;
            }
            for w in z.hint..z.word + z.words() {
                let bits = self.bitmap[w];
                if bits == 0 {
                    continue;
                }
                let bit = bits.trailing_zeros() as u64;
                let frame = z.base + (w - z.word) as u64 * 64 + bit;
                if (frame + 1) * PAGE_SIZE > limit {
                    break;
                }
                self.bitmap[w] &= !(1u64 << bit);
                self.zones[zi].hint = w;
                self.free -= 1;
                return Some(frame * PAGE_SIZE);
            }
        }
        None
    }

    /// Allocates `count` physically contiguous frames whose first frame is aligned to `align`
    /// bytes (a power of two, at least 4 KiB) and returns the first address.
    pub fn alloc_contiguous(&mut self, count: u64, align: u64) -> Option<u64> {
        if count == 0 || !align.is_power_of_two() {
            return None;
        }
        let step = (align / PAGE_SIZE).max(1);
        for zi in 0..self.nzones {
            let z = self.zones[zi];
            // No free frame lies below the zone's hint word.
            let mut f = (z.base + (z.hint - z.word) as u64 * 64).next_multiple_of(step);
            while f + count <= z.base + z.frames {
                // Skip whole words with no free frame.
                let off = f - z.base;
                if self.bitmap[z.word + (off / 64) as usize] >> (off % 64) == 0 {
                    f = (z.base + (off / 64 + 1) * 64).next_multiple_of(step);
                    continue;
                }
                match (f..f + count).find(|&g| !self.bit(zi, g)) {
                    None => {
                        for g in f..f + count {
                            self.set_bit(zi, g, false);
                        }
                        self.free -= count;
                        return Some(f * PAGE_SIZE);
                    }
                    Some(busy) => f = (busy + 1).next_multiple_of(step),
                }
            }
        }
        None
    }

    fn bit(&self, zi: usize, frame: u64) -> bool {
        let z = &self.zones[zi];
        let off = frame - z.base;
        self.bitmap[z.word + (off / 64) as usize] & (1 << (off % 64)) != 0
    }

    fn set_bit(&mut self, zi: usize, frame: u64, free: bool) {
        let z = self.zones[zi];
        let off = frame - z.base;
        let w = z.word + (off / 64) as usize;
        if free {
            self.bitmap[w] |= 1 << (off % 64);
            self.zones[zi].hint = self.zones[zi].hint.min(w);
        } else {
            self.bitmap[w] &= !(1 << (off % 64));
        }
    }

    /// Returns the frame at `addr` to the allocator.
    pub fn free(&mut self, addr: u64) -> Result<(), FrameError> {
        let (zi, w, mask) = self.locate(addr)?;
        if self.bitmap[w] & mask != 0 {
            return Err(FrameError::AlreadyFree);
        }
        self.bitmap[w] |= mask;
        self.zones[zi].hint = self.zones[zi].hint.min(w);
        self.free += 1;
        Ok(())
    }

    /// Whether the frame at `addr` is managed and free.
    pub fn is_free(&self, addr: u64) -> bool {
        self.locate(addr).is_ok_and(|(_, w, mask)| self.bitmap[w] & mask != 0)
    }

    /// A dense index of the managed frame at `addr` (below [`index_limit`](Self::index_limit)),
    /// for tables that say something about every frame (the kernel's consistency check).
    pub fn index(&self, addr: u64) -> Option<usize> {
        self.locate(addr).ok().map(|(zi, _, _)| {
            let z = &self.zones[zi];
            z.word * 64 + (addr / PAGE_SIZE - z.base) as usize
        })
    }

    /// One past the largest [`index`](Self::index).
    pub fn index_limit(&self) -> usize {
        self.zones().last().map_or(0, |z| (z.word + z.words()) * 64)
    }

    /// Calls `f(address, index, free)` for every managed frame.
    pub fn for_each_frame(&self, mut f: impl FnMut(u64, usize, bool)) {
        for z in self.zones() {
            for off in 0..z.frames {
                let w = z.word + (off / 64) as usize;
                let free = self.bitmap[w] & (1u64 << (off % 64)) != 0;
                f((z.base + off) * PAGE_SIZE, z.word * 64 + off as usize, free);
            }
        }
    }

    /// Takes every free frame that overlaps `r` out of circulation (for memory discovered to be
    /// in use after the allocator was built). Returns how many frames were taken, or
    /// [`FrameError::InUse`] if one of them had already been handed out (the rest are still
    /// taken).
    pub fn reserve(&mut self, r: Range) -> Result<u64, FrameError> {
        let mut taken = 0;
        let mut clash = false;
        let (first, end) = (r.start / PAGE_SIZE, r.end.div_ceil(PAGE_SIZE));
        for zi in 0..self.nzones {
            let z = self.zones[zi];
            for f in first.max(z.base)..end.min(z.base + z.frames) {
                if self.bit(zi, f) {
                    self.set_bit(zi, f, false);
                    taken += 1;
                } else {
                    clash = true;
                }
            }
        }
        self.free -= taken;
        if clash { Err(FrameError::InUse) } else { Ok(taken) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = PAGE_SIZE;

    fn alloc(ranges: &[Range]) -> (Vec<u64>, Vec<Range>) {
        (vec![0; FrameAllocator::bitmap_words(ranges)], ranges.to_vec())
    }

    #[test]
    fn hands_out_every_frame_once_and_only_managed_ones() {
        let (mut bm, rs) = alloc(&[Range::new(0x1000, 0x1000 + 70 * K), Range::new(0x100000, 0x100000 + 3 * K)]);
        let mut a = FrameAllocator::new(&rs, &mut bm);
        assert_eq!(a.total_frames(), 73);
        let mut got: Vec<u64> = core::iter::from_fn(|| a.alloc()).collect();
        assert_eq!(got.len(), 73);
        assert_eq!(a.free_frames(), 0);
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 73);
        assert!(got.iter().all(|&f| rs.iter().any(|r| f >= r.start && f + K <= r.end)));
    }

    #[test]
    fn free_checks_and_reuse() {
        let (mut bm, rs) = alloc(&[Range::new(0x10000, 0x10000 + 4 * K)]);
        let mut a = FrameAllocator::new(&rs, &mut bm);
        let f = a.alloc().unwrap();
        assert_eq!(f, 0x10000);
        assert!(!a.is_free(f));
        assert_eq!(a.free(f + 1), Err(FrameError::Misaligned));
        assert_eq!(a.free(0x0), Err(FrameError::NotManaged));
        assert_eq!(a.free(0x10000 + 4 * K), Err(FrameError::NotManaged));
        assert_eq!(a.free(f), Ok(()));
        assert_eq!(a.free(f), Err(FrameError::AlreadyFree));
        assert_eq!(a.alloc(), Some(f), "a freed frame is found again (hint moves back)");
    }

    #[test]
    fn below_limit() {
        let (mut bm, rs) = alloc(&[Range::new(0x200000, 0x200000 + 2 * K), Range::new(0x1_0000_0000, 0x1_0000_0000 + 8 * K)]);
        let mut a = FrameAllocator::new(&rs, &mut bm);
        assert_eq!(a.alloc_below(0x1_0000_0000), Some(0x200000));
        assert_eq!(a.alloc_below(0x1_0000_0000), Some(0x201000));
        assert_eq!(a.alloc_below(0x1_0000_0000), None);
        assert_eq!(a.alloc(), Some(0x1_0000_0000));
    }

    #[test]
    fn contiguous_and_aligned() {
        let (mut bm, rs) = alloc(&[Range::new(0x1000, 0x1000 + 200 * K)]);
        let mut a = FrameAllocator::new(&rs, &mut bm);
        let one = a.alloc().unwrap();
        assert_eq!(one, 0x1000);
        let blk = a.alloc_contiguous(16, 0x10000).unwrap();
        assert_eq!(blk % 0x10000, 0);
        assert_eq!(blk, 0x10000);
        for i in 0..16 {
            assert!(!a.is_free(blk + i * K));
        }
        assert_eq!(a.free_frames(), 200 - 17);
        assert_eq!(a.alloc_contiguous(1000, K), None);
        assert_eq!(a.alloc_contiguous(0, K), None);
        assert_eq!(a.alloc_contiguous(1, 3 * K), None);
    }

    #[test]
    fn reserve_takes_free_frames_and_reports_clashes() {
        let (mut bm, rs) = alloc(&[Range::new(0, 10 * K)]);
        let mut a = FrameAllocator::new(&rs, &mut bm);
        assert_eq!(a.reserve(Range::new(2 * K + 5, 4 * K)), Ok(2));
        assert!(!a.is_free(2 * K) && !a.is_free(3 * K) && a.is_free(4 * K));
        let f = a.alloc().unwrap();
        assert_eq!(a.reserve(Range::new(f, f + 2 * K)), Err(FrameError::InUse));
        assert_eq!(a.free_frames(), 10 - 2 - 1 - 1);
        assert_eq!(a.reserve(Range::new(100 * K, 200 * K)), Ok(0));
    }

    #[test]
    fn dense_indices_name_each_managed_frame_once() {
        let (mut bm, rs) = alloc(&[Range::new(0x1000, 0x1000 + 70 * K), Range::new(0x100000, 0x100000 + 3 * K)]);
        let mut a = FrameAllocator::new(&rs, &mut bm);
        let f = a.alloc().unwrap();
        let mut seen = vec![false; a.index_limit()];
        let (mut n, mut free) = (0, 0);
        a.for_each_frame(|pa, i, is_free| {
            assert_eq!(a.index(pa), Some(i));
            assert!(!seen[i]);
            seen[i] = true;
            n += 1;
            free += is_free as u64;
            assert_eq!(is_free, pa != f);
        });
        assert_eq!((n, free), (73, 72));
        assert_eq!(a.index(0x0), None);
        assert_eq!(a.index(0x1000 + 70 * K), None);
    }

    #[test]
    fn too_small_bitmap_drops_zones_instead_of_overrunning() {
        let rs = [Range::new(0, 64 * K), Range::new(0x100000, 0x100000 + 64 * K)];
        let mut bm = vec![0u64; 1];
        let a = FrameAllocator::new(&rs, &mut bm);
        assert_eq!(a.total_frames(), 64);
    }
}
