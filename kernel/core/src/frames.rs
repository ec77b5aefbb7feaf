//! The physical frame allocator: one bit per 4 KiB frame of every free range.
//!
//! Built once at boot from the ranges that survived [`RangeSet`](crate::memmap::RangeSet)
//! (usable memory minus everything reserved), so it can never hand out the kernel image, boot
//! modules, ACPI tables or the AP trampoline: those frames are simply not in any zone. The
//! bitmap lives in memory the caller carved out of the free ranges beforehand (it needs
//! [`FrameAllocator::bitmap_words`] words).
//!
//! Invariants: a bit is 1 exactly when its frame is free; `free` counts the 1 bits; each zone's
//! `hint` is a word index below which the zone has no free bit; a bit of the *summary* (one per
//! bitmap word) is 1 exactly when its word has a free bit, so that a search from the hint skips
//! 64 words at a time: before, a task that freed its lowest frame and allocated twice made the
//! next allocation scan every word of a full zone, one by one, under the allocator's global
//! lock (4,096 words per 1 GiB; a review found it).
//! The kernel wraps the allocator in a lock; nothing here is concurrent.
//!
//! Ownership is in the types: [`FrameAllocator::alloc`] hands out an [`OwnedFrame`], which
//! safe code cannot make from a number, copy or clone, and [`FrameAllocator::free`] consumes
//! it, so a frame freed twice, or freed while a holder still uses it, needs `unsafe` code
//! ([`OwnedFrame::from_raw`]) to write. The kernel's functions that read or write a frame's
//! bytes take an `OwnedFrame` (see `docs/memory.md`, "Typed physical memory").

use crate::PAGE_SIZE;
use crate::memmap::Range;

/// Most disjoint free ranges the allocator manages: as many as the kernel's free-range set
/// holds (`mem.rs`), so that no range that set kept is left out. A fragmented UEFI map split by
/// the kernel's own reservations (modules, boot information, ACPI tables, `reserve=`) can
/// exceed a hundred; 64, the earlier limit, silently dropped the highest ranges, on a large
/// machine most of its memory.
pub const MAX_ZONES: usize = crate::memmap::MAX_FREE_RANGES;

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

/// One 4 KiB frame of RAM that its holder owns: made only by a [`FrameAllocator`] (whose
/// constructor is `unsafe`: it vouches for the RAM it manages), or, in
/// `unsafe` code, by [`OwnedFrame::from_raw`] from an address an earlier `OwnedFrame` gave up),
/// given back by [`FrameAllocator::free`], which consumes it. It is neither `Copy` nor `Clone`,
/// and its address field is private, so safe code cannot make one from a number:
///
/// ```compile_fail,E0603
/// let f = rl4_core::frames::OwnedFrame(0x1000); // the field is private
/// ```
///
/// ```compile_fail,E0382
/// # fn f(a: &mut rl4_core::frames::FrameAllocator<'_>) {
/// let f = a.alloc().unwrap();
/// let _ = a.free(f);
/// let _ = a.free(f); // double free: `f` was moved into the first `free`
/// # }
/// ```
///
/// ```compile_fail,E0599
/// # fn f(a: &mut rl4_core::frames::FrameAllocator<'_>) {
/// let f = a.alloc().unwrap();
/// let g = f.clone(); // no second owner
/// # }
/// ```
///
/// Nor can safe code build an allocator of its own over memory it chose, to get frames from:
///
/// ```compile_fail,E0133
/// use rl4_core::{frames::FrameAllocator, memmap::Range};
/// let mut bitmap = [0u64; 1];
/// let mut a = FrameAllocator::new(&[Range::new(0x0, 0x1000)], &mut bitmap); // `unsafe fn`
/// ```
///
/// What the allocator hands out it takes back, once:
///
/// ```
/// use rl4_core::{frames::FrameAllocator, memmap::Range};
/// let mut bitmap = [0u64; 3];
/// // SAFETY: a host test: these frames are never read or written.
/// let mut a = unsafe { FrameAllocator::new(&[Range::new(0x1000, 0x3000)], &mut bitmap) };
/// let f = a.alloc().unwrap();
/// assert_eq!((f.addr(), a.free_frames()), (0x1000, 1));
/// assert_eq!(a.free(f), Ok(()));
/// assert_eq!(a.free_frames(), 2);
/// ```
///
/// A holder may read and write the frame's bytes through the kernel's direct map (the
/// kernel's `mem` module does, for a reference to it); the frame lies in RAM the allocator
/// manages, is 4 KiB aligned, and no other `OwnedFrame` names it. Dropping one without freeing
/// it leaks the frame (the kernel's frame objects free theirs in their destructors).
/// `#[repr(transparent)]`: it costs exactly what a `u64` costs.
#[repr(transparent)]
#[derive(Debug, PartialEq, Eq)]
pub struct OwnedFrame(u64);

impl OwnedFrame {
    /// Its physical address (reading it gives no access to the frame).
    #[inline(always)]
    pub fn addr(&self) -> u64 {
        self.0
    }

    /// Gives up ownership without freeing the frame and returns its address: the frame is
    /// leaked unless an `unsafe` [`from_raw`](Self::from_raw) takes it back (a page table
    /// that links it in, for instance).
    #[inline(always)]
    pub fn into_raw(self) -> u64 {
        self.0
    }

    /// Takes back ownership of the frame at `pa`.
    ///
    /// # Safety
    /// `pa` is the address [`into_raw`](Self::into_raw) returned for an `OwnedFrame` (or one
    /// an allocator's bookkeeping shows allocated to the caller), and no other `OwnedFrame` for
    /// it exists or is made later from the same address: two owners could free it twice, or
    /// write it after the allocator gave it to someone else.
    #[allow(unsafe_code)]
    #[inline(always)]
    pub unsafe fn from_raw(pa: u64) -> OwnedFrame {
        debug_assert!(pa % PAGE_SIZE == 0);
        OwnedFrame(pa)
    }
}

pub struct FrameAllocator<'a> {
    zones: [Zone; MAX_ZONES],
    nzones: usize,
    bitmap: &'a mut [u64],
    /// One bit per word of `bitmap`: whether it has a free bit.
    summary: &'a mut [u64],
    free: u64,
    total: u64,
}

impl<'a> FrameAllocator<'a> {
    /// Words of bitmap needed to manage `ranges` (whole pages, as produced by `RangeSet`), its
    /// summary included.
    pub fn bitmap_words(ranges: &[Range]) -> usize {
        let w: usize = ranges.iter().take(MAX_ZONES).map(|r| (r.len() / PAGE_SIZE).div_ceil(64) as usize).sum();
        w + w.div_ceil(64) + 1
    }

    /// Builds an allocator in which every page of `ranges` (sorted and disjoint, as a
    /// `RangeSet` gives them) is free. Ranges past [`MAX_ZONES`], and any range that does not
    /// start after the one before it, are left out (and so never handed out: the caller
    /// compares [`total_frames`](Self::total_frames) with what it gave to tell); `bitmap` must hold at least
    /// [`bitmap_words`](Self::bitmap_words) words, or the zones that do not fit are left out too.
    ///
    /// # Safety
    /// Every page of `ranges` is RAM, mapped in the kernel's direct map, that nothing else uses
    /// or will use while the allocator lives, and no other allocator manages it: each frame
    /// this allocator hands out becomes an [`OwnedFrame`], whose holder may write it. (On the
    /// host, where no `OwnedFrame` is ever dereferenced, any ranges do.)
    #[allow(unsafe_code)]
    pub unsafe fn new(ranges: &[Range], bitmap: &'a mut [u64]) -> Self {
        // The last 1/65 of the words (rounded up) is the summary: enough for the rest.
        let summary_words = bitmap.len().div_ceil(65);
        let (bitmap, summary) = bitmap.split_at_mut(bitmap.len() - summary_words);
        summary.fill(0);
        let mut a = FrameAllocator { zones: [Zone::default(); MAX_ZONES], nzones: 0, bitmap, summary, free: 0, total: 0 };
        let mut word = 0;
        for r in ranges.iter().take(MAX_ZONES) {
            let base = r.start.div_ceil(PAGE_SIZE);
            let end = r.end / PAGE_SIZE;
            // Zones stay sorted and disjoint (`locate` searches them by halving): a range that
            // does not start after the last zone is left out.
            let after_last = a.zones[..a.nzones].last().is_none_or(|z| base >= z.base + z.frames);
            if end <= base || !after_last {
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
            for w in word..word + z.words() {
                a.summary[w / 64] |= 1 << (w % 64);
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

    /// The first word at or after `from` and before `end` with a free bit, through the
    /// summary (64 words per look).
    fn next_free_word(&self, from: usize, end: usize) -> Option<usize> {
        let mut w = from;
        while w < end {
            let bits = self.summary[w / 64] >> (w % 64);
            if bits != 0 {
                let found = w + bits.trailing_zeros() as usize;
                return (found < end).then_some(found);
            }
            w = (w / 64 + 1) * 64;
        }
        None
    }

    /// Word `w` of the bitmap changed: the summary says whether it has a free bit.
    fn summarise(&mut self, w: usize) {
        if self.bitmap[w] != 0 {
            self.summary[w / 64] |= 1 << (w % 64);
        } else {
            self.summary[w / 64] &= !(1 << (w % 64));
        }
    }

    fn zones(&self) -> &[Zone] {
        &self.zones[..self.nzones]
    }

    fn locate(&self, addr: u64) -> Result<(usize, usize, u64), FrameError> {
        if addr % PAGE_SIZE != 0 {
            return Err(FrameError::Misaligned);
        }
        let f = addr / PAGE_SIZE;
        // Zones are sorted and disjoint (made in the order of the sorted free ranges): the one
        // that may hold `f` is the last that starts at or below it.
        let zi = self.zones().partition_point(|z| z.base <= f).checked_sub(1).ok_or(FrameError::NotManaged)?;
        let z = &self.zones[zi];
        if !z.contains(f) {
            return Err(FrameError::NotManaged);
        }
        let off = f - z.base;
        Ok((zi, z.word + (off / 64) as usize, 1u64 << (off % 64)))
    }

    /// Allocates one frame; the caller owns it until it gives it back with [`free`](Self::free).
    pub fn alloc(&mut self) -> Option<OwnedFrame> {
        self.alloc_below(u64::MAX)
    }

    /// Allocates one frame that lies wholly below `limit` (e.g. 4 GiB for a 32-bit CR3).
    pub fn alloc_below(&mut self, limit: u64) -> Option<OwnedFrame> {
        for zi in 0..self.nzones {
            let z = self.zones[zi];
            if z.base * PAGE_SIZE >= limit {
                break;
            }
            let Some(w) = self.next_free_word(z.hint, z.word + z.words()) else {
                // Full: later searches start at its end.
                self.zones[zi].hint = z.word + z.words();
                continue;
            };
            let bit = self.bitmap[w].trailing_zeros() as u64;
            let frame = z.base + (w - z.word) as u64 * 64 + bit;
            // No free bit below `w` in this zone: the hint may move up to it.
            self.zones[zi].hint = w;
            if (frame + 1) * PAGE_SIZE > limit {
                continue;
            }
            self.bitmap[w] &= !(1u64 << bit);
            self.summarise(w);
            self.free -= 1;
            // The bit was 1 (free) and is now 0: this is the frame's only owner.
            return Some(OwnedFrame(frame * PAGE_SIZE));
        }
        None
    }

    /// Allocates `count` physically contiguous frames whose first frame is aligned to `align`
    /// bytes (a power of two, at least 4 KiB) and returns the first address. The frames are
    /// the caller's; as a number this gives no access to them: a caller that reads or frees
    /// them makes each an [`OwnedFrame`] with `unsafe` [`OwnedFrame::from_raw`].
    pub fn alloc_contiguous(&mut self, count: u64, align: u64) -> Option<u64> {
        if count == 0 || !align.is_power_of_two() {
            return None;
        }
        let step = (align / PAGE_SIZE).max(1);
        for zi in 0..self.nzones {
            if let Some(f) = self.find_run(zi, count, step) {
                for g in f..f + count {
                    self.set_bit(zi, g, false);
                }
                self.free -= count;
                return Some(f * PAGE_SIZE);
            }
        }
        None
    }

    /// The lowest frame of zone `zi` that starts `count` free frames and is a multiple of
    /// `step` (a power of two), looked for a word (64 frames) at a time whatever the pattern of
    /// free frames: up to 64 frames, every start in a word at once (a run's bits shifted onto
    /// its start and combined, the next word's bits above the word's own); longer runs, which
    /// hold no whole run inside one word, by the free frames at each word's two ends. (Before
    /// the forty-third session a search went free run by free run, frame by frame where every
    /// other frame was free: a task that left memory so made each failing search, repeated at
    /// will, walk all of it under the allocator's lock, which every CPU takes; a review found it.)
    fn find_run(&self, zi: usize, count: u64, step: u64) -> Option<u64> {
        let z = self.zones[zi];
        let end = z.word + z.words();
        // No free frame lies below the zone's hint word.
        let mut w = self.next_free_word(z.hint, end)?;
        let first = |w: usize| z.base + (w - z.word) as u64 * 64;
        if count <= 64 {
            // The starts the alignment allows in a word whose first frame is `f0`: one bit every
            // `step` (at most one a word from 64 on).
            let pattern = if step < 64 { u64::MAX / ((1u64 << step) - 1) } else { 1 };
            let starts = |f0: u64| f0.checked_next_multiple_of(step).map(|a| a - f0).filter(|&p| p < 64).map_or(0, |p| pattern << p);
            loop {
                let f0 = first(w);
                // The next word's frames follow this word's only within the zone.
                let next = if w + 1 < end { self.bitmap[w + 1] } else { 0 };
                let v = (next as u128) << 64 | self.bitmap[w] as u128;
                // Bit i of `x`: frames i .. i + k of `v` free.
                let (mut x, mut k) = (v, 1);
                while k < count {
                    let s = k.min(count - k);
                    x &= x >> s;
                    k += s;
                }
                let hits = x as u64 & starts(f0);
                if hits != 0 {
                    return Some(f0 + hits.trailing_zeros() as u64);
                }
                w = self.next_free_word(w + 1, end)?;
            }
        }
        // A free run reaching the end of the word before (`run` frames from `from`), grown by
        // each word's free frames at its start, or begun anew by those at its end.
        let (mut from, mut run) = (0u64, 0u64);
        loop {
            let (f0, bits) = (first(w), self.bitmap[w]);
            if run > 0 && from + run == f0 {
                run += bits.trailing_ones() as u64;
            } else {
                (from, run) = (f0, 0);
            }
            if run > 0
                && let Some(a) = from.checked_next_multiple_of(step)
                && a.checked_add(count).is_some_and(|e| e <= from + run)
            {
                return Some(a);
            }
            // (A run begun here holds 64 frames at most, fewer than `count`: it is looked at once
            // the next word grows it.)
            if bits != u64::MAX || run == 0 {
                let top = bits.leading_ones() as u64;
                (from, run) = (f0 + 64 - top, top);
            }
            w = self.next_free_word(w + 1, end)?;
        }
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
        self.summarise(w);
    }

    /// Returns a frame to the allocator. Its type makes a double free impossible without
    /// `unsafe` code; the checks below still catch a frame that an `unsafe`
    /// [`OwnedFrame::from_raw`] made wrongly (a frame of another allocator, a free one).
    pub fn free(&mut self, frame: OwnedFrame) -> Result<(), FrameError> {
        let (zi, w, mask) = self.locate(frame.0)?;
        if self.bitmap[w] & mask != 0 {
            return Err(FrameError::AlreadyFree);
        }
        self.bitmap[w] |= mask;
        self.summarise(w);
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

    /// The managed range: from the lowest managed frame's address to one past the highest's
    /// (empty if nothing is managed); zones are in address order.
    pub fn span(&self) -> (u64, u64) {
        match (self.zones().first(), self.zones().last()) {
            (Some(a), Some(b)) => (a.base * PAGE_SIZE, (b.base + b.frames) * PAGE_SIZE),
            _ => (0, 0),
        }
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

    /// An allocator over made-up ranges: on the host no frame it hands out is dereferenced.
    fn new<'a>(ranges: &[Range], bitmap: &'a mut [u64]) -> FrameAllocator<'a> {
        #[allow(unsafe_code)]
        // SAFETY: host tests only compare addresses; nothing reads or writes the frames.
        unsafe {
            FrameAllocator::new(ranges, bitmap)
        }
    }

    fn alloc(ranges: &[Range]) -> (Vec<u64>, Vec<Range>) {
        (vec![0; FrameAllocator::bitmap_words(ranges)], ranges.to_vec())
    }

    #[test]
    fn span_covers_every_zone_and_nothing_past_them() {
        let rs = [Range::new(3 * K, 5 * K), Range::new(9 * K, 12 * K), Range::new(0x1_0000_0000, 0x1_0000_0000 + 2 * K)];
        let (mut bm, rs) = alloc(&rs);
        let a = new(&rs, &mut bm);
        assert_eq!(a.span(), (3 * K, 0x1_0000_0000 + 2 * K));
        let (mut bm0, rs0) = alloc(&[]);
        assert_eq!(new(&rs0, &mut bm0).span(), (0, 0));
    }

    #[test]
    fn manages_as_many_ranges_as_the_kernel_free_set_holds() {
        // 300 one-page ranges, two pages apart: the first MAX_ZONES are managed, every one of
        // them found again on free, the rest never handed out.
        let rs: Vec<Range> = (0..300u64).map(|i| Range::new((2 * i + 1) * K, (2 * i + 2) * K)).collect();
        let (mut bm, rs) = alloc(&rs);
        let mut a = new(&rs, &mut bm);
        assert_eq!(MAX_ZONES, 256);
        assert_eq!(a.total_frames(), MAX_ZONES as u64);
        let got: Vec<OwnedFrame> = core::iter::from_fn(|| a.alloc()).collect();
        assert_eq!(got.len(), MAX_ZONES);
        for f in got {
            assert_eq!(a.free(f), Ok(()));
        }
        assert_eq!(a.free_frames(), MAX_ZONES as u64);
        assert!(a.is_free(rs[MAX_ZONES - 1].start));
        assert!(!a.is_free(rs[MAX_ZONES].start));
        assert!(!a.is_free(0));
        assert!(!a.is_free(2 * K));
    }

    #[test]
    fn leaves_out_a_range_out_of_order() {
        let rs = [Range::new(0x10 * K, 0x20 * K), Range::new(0x8 * K, 0x9 * K), Range::new(0x18 * K, 0x30 * K), Range::new(0x40 * K, 0x41 * K)];
        let (mut bm, rs) = alloc(&rs);
        let mut a = new(&rs, &mut bm);
        assert_eq!(a.total_frames(), 0x10 + 1);
        let got: Vec<u64> = core::iter::from_fn(|| a.alloc()).map(OwnedFrame::into_raw).collect();
        assert!(got.iter().all(|&f| (0x10 * K..0x20 * K).contains(&f) || f == 0x40 * K));
    }

    #[test]
    fn hands_out_every_frame_once_and_only_managed_ones() {
        let (mut bm, rs) = alloc(&[Range::new(0x1000, 0x1000 + 70 * K), Range::new(0x100000, 0x100000 + 3 * K)]);
        let mut a = new(&rs, &mut bm);
        assert_eq!(a.total_frames(), 73);
        let mut got: Vec<u64> = core::iter::from_fn(|| a.alloc()).map(OwnedFrame::into_raw).collect();
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
        let mut a = new(&rs, &mut bm);
        let f = a.alloc().unwrap();
        let pa = f.addr();
        assert_eq!(pa, 0x10000);
        assert!(!a.is_free(pa));
        // Frames only `unsafe` code can make: what the checks in `free` are for.
        let forged = |pa: u64| OwnedFrame(pa);
        assert_eq!(a.free(forged(pa + 1)), Err(FrameError::Misaligned));
        assert_eq!(a.free(forged(0x0)), Err(FrameError::NotManaged));
        assert_eq!(a.free(forged(0x10000 + 4 * K)), Err(FrameError::NotManaged));
        assert_eq!(a.free(f), Ok(()));
        assert_eq!(a.free(forged(pa)), Err(FrameError::AlreadyFree));
        assert_eq!(a.alloc().map(OwnedFrame::into_raw), Some(pa), "a freed frame is found again (hint moves back)");
    }

    #[test]
    fn ownership_round_trip() {
        let (mut bm, rs) = alloc(&[Range::new(0x10000, 0x10000 + 3 * K)]);
        let mut a = new(&rs, &mut bm);
        // Every frame handed out once, each a distinct owner; all of them come back.
        let owned: Vec<OwnedFrame> = core::iter::from_fn(|| a.alloc()).collect();
        assert_eq!(owned.len(), 3);
        assert!(a.alloc().is_none());
        let addrs: Vec<u64> = owned.iter().map(OwnedFrame::addr).collect();
        assert_eq!(addrs, [0x10000, 0x11000, 0x12000]);
        for f in owned {
            assert_eq!(a.free(f), Ok(()));
        }
        assert_eq!(a.free_frames(), 3);
        // `into_raw` leaks: the frame stays allocated; `from_raw` takes it back.
        let f = a.alloc().unwrap();
        let pa = f.into_raw();
        assert!(!a.is_free(pa));
        assert_eq!(a.free_frames(), 2);
        #[allow(unsafe_code)]
        // SAFETY: `pa` came from `into_raw` just above and no other owner was made.
        let back = unsafe { OwnedFrame::from_raw(pa) };
        assert_eq!(a.free(back), Ok(()));
        assert_eq!(a.free_frames(), 3);
        assert_eq!(core::mem::size_of::<OwnedFrame>(), core::mem::size_of::<u64>());
    }

    #[test]
    fn below_limit() {
        let (mut bm, rs) = alloc(&[Range::new(0x200000, 0x200000 + 2 * K), Range::new(0x1_0000_0000, 0x1_0000_0000 + 8 * K)]);
        let mut a = new(&rs, &mut bm);
        let below = |a: &mut FrameAllocator<'_>| a.alloc_below(0x1_0000_0000).map(OwnedFrame::into_raw);
        assert_eq!(below(&mut a), Some(0x200000));
        assert_eq!(below(&mut a), Some(0x201000));
        assert_eq!(below(&mut a), None);
        assert_eq!(a.alloc().map(OwnedFrame::into_raw), Some(0x1_0000_0000));
    }

    #[test]
    fn contiguous_and_aligned() {
        let (mut bm, rs) = alloc(&[Range::new(0x1000, 0x1000 + 200 * K)]);
        let mut a = new(&rs, &mut bm);
        let one = a.alloc().unwrap();
        assert_eq!(one.addr(), 0x1000);
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
        let mut a = new(&rs, &mut bm);
        assert_eq!(a.reserve(Range::new(2 * K + 5, 4 * K)), Ok(2));
        assert!(!a.is_free(2 * K) && !a.is_free(3 * K) && a.is_free(4 * K));
        let f = a.alloc().unwrap().addr();
        assert_eq!(a.reserve(Range::new(f, f + 2 * K)), Err(FrameError::InUse));
        assert_eq!(a.free_frames(), 10 - 2 - 1 - 1);
        assert_eq!(a.reserve(Range::new(100 * K, 200 * K)), Ok(0));
    }

    #[test]
    fn dense_indices_name_each_managed_frame_once() {
        let (mut bm, rs) = alloc(&[Range::new(0x1000, 0x1000 + 70 * K), Range::new(0x100000, 0x100000 + 3 * K)]);
        let mut a = new(&rs, &mut bm);
        let f = a.alloc().unwrap().addr();
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

    /// The summary says, for every word, whether it has a free bit; no zone has a free bit below
    /// its hint.
    fn consistent(a: &FrameAllocator) {
        for z in a.zones() {
            for w in z.word..z.word + z.words() {
                assert_eq!(a.summary[w / 64] >> (w % 64) & 1 != 0, a.bitmap[w] != 0, "summary of word {w}");
                if w < z.hint {
                    assert_eq!(a.bitmap[w], 0, "a free bit below the hint");
                }
            }
        }
    }

    #[test]
    fn a_full_zone_and_a_low_free_frame_keep_the_summary_right() {
        // Two zones of 10,000 frames; the first filled, its lowest frame freed and taken again
        // (the hint back at word 0), then allocations go on in the second zone.
        let rs = [Range::new(0x10_0000, 0x10_0000 + 10_000 * K), Range::new(0x1000_0000, 0x1000_0000 + 10_000 * K)];
        let (mut bm, rs) = alloc(&rs);
        let mut a = new(&rs, &mut bm);
        let first: Vec<OwnedFrame> = (0..10_000).map(|_| a.alloc().unwrap()).collect();
        assert!(first.iter().all(|f| f.addr() < 0x1000_0000));
        consistent(&a);
        let mut first = first.into_iter();
        let low = first.next().unwrap();
        assert_eq!(low.addr(), 0x10_0000);
        assert_eq!(a.free(low), Ok(()));
        assert_eq!(a.alloc().map(OwnedFrame::into_raw), Some(0x10_0000));
        assert_eq!(a.alloc().map(OwnedFrame::into_raw), Some(0x1000_0000));
        consistent(&a);
        assert_eq!(a.alloc_below(0x1000_0000), None, "the first zone is full");
        // Its lowest frame freed again: a contiguous run still comes from the second zone.
        let low = first.next().unwrap();
        assert_eq!(a.free(low), Ok(()));
        assert_eq!(a.alloc_contiguous(4, 4 * K), Some(0x1000_0000 + 4 * K));
        consistent(&a);
    }

    #[test]
    fn random_allocations_and_frees_match_a_model() {
        let rs = [Range::new(0x1000, 0x1000 + 3000 * K), Range::new(0x100_0000, 0x100_0000 + 700 * K)];
        let (mut bm, rs) = alloc(&rs);
        let mut a = new(&rs, &mut bm);
        let mut held: Vec<OwnedFrame> = Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..40_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 5 < 3 {
                match a.alloc() {
                    Some(f) => {
                        // Always the lowest free frame.
                        assert!(held.iter().all(|h| h.addr() != f.addr()));
                        assert!(!(0x1000..f.addr()).step_by(K as usize).any(|pa| a.is_free(pa)), "a lower frame was free");
                        held.push(f);
                    }
                    None => assert_eq!(a.free_frames(), 0),
                }
            } else if !held.is_empty() {
                let f = held.swap_remove((x >> 8) as usize % held.len());
                assert_eq!(a.free(f), Ok(()));
            }
            if i % 997 == 0 {
                consistent(&a);
            }
            assert_eq!(a.free_frames(), 3700 - held.len() as u64);
        }
        consistent(&a);
    }

    #[test]
    fn too_small_bitmap_drops_zones_instead_of_overrunning() {
        let rs = [Range::new(0, 64 * K), Range::new(0x100000, 0x100000 + 64 * K)];
        // Two words: one for the summary, one for the first zone.
        let mut bm = vec![0u64; 2];
        let a = new(&rs, &mut bm);
        assert_eq!(a.total_frames(), 64);
    }

    /// The search before the forty-third session, free run by free run: the reference
    /// [`FrameAllocator::find_run`] must agree with (same frame, or none).
    fn find_run_by_frames(a: &FrameAllocator<'_>, zi: usize, count: u64, step: u64) -> Option<u64> {
        let z = a.zones[zi];
        let mut f = (z.base + (z.hint - z.word) as u64 * 64).next_multiple_of(step);
        while f + count <= z.base + z.frames {
            match (f..f + count).find(|&g| !a.bit(zi, g)) {
                None => return Some(f),
                Some(busy) => f = (busy + 1).next_multiple_of(step),
            }
        }
        None
    }

    /// Zones of odd sizes and bases, any pattern of free frames (runs of random lengths), any
    /// count up to 200 and alignment up to 512 frames: the word-at-a-time search finds the
    /// frame the frame-by-frame one finds, in every zone; and `alloc_contiguous` takes exactly
    /// those frames.
    #[test]
    fn word_search_agrees_with_the_frame_by_frame_one() {
        use proptest::prelude::*;
        let cfg = ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() };
        proptest!(cfg, |(
            lens in proptest::collection::vec(1u64..700, 1..4),
            gaps in proptest::collection::vec(0u64..300, 4),
            runs in proptest::collection::vec((0u64..130, any::<bool>()), 1..60),
            count in prop_oneof![1u64..=64, 65u64..=200],
            shift in 0u32..10,
        )| {
            let mut rs = Vec::new();
            let mut at = 0x1000 * (1 + gaps[3]);
            for (i, l) in lens.iter().enumerate() {
                rs.push(Range::new(at, at + l * K));
                at += (l + 1 + gaps[i]) * K;
            }
            let (mut bm, rs) = alloc(&rs);
            let mut a = new(&rs, &mut bm);
            // Take frames away run by run: a run of taken frames, then one left free, ...
            let (span_lo, span_hi) = a.span();
            let mut f = span_lo / K;
            for (len, take) in runs.iter().cycle().take(400) {
                if f >= span_hi / K {
                    break;
                }
                if *take {
                    let _ = a.reserve(Range::new(f * K, (f + len) * K));
                }
                f += len.max(&1);
            }
            let step = 1u64 << shift;
            for zi in 0..a.nzones {
                prop_assert_eq!(a.find_run(zi, count, step), find_run_by_frames(&a, zi, count, step), "zone {} count {} step {}", zi, count, step);
            }
            let want = (0..a.nzones).find_map(|zi| find_run_by_frames(&a, zi, count, step));
            let before = a.free_frames();
            let got = a.alloc_contiguous(count, step * K);
            prop_assert_eq!(got, want.map(|f| f * K));
            if let Some(pa) = got {
                prop_assert_eq!(a.free_frames(), before - count);
                for i in 0..count {
                    prop_assert!(!a.is_free(pa + i * K));
                }
            }
        });
    }
}
