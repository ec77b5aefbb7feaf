//! Sets of physical address ranges, used to turn the boot memory map into the list of frames
//! the kernel may hand out.
//!
//! The boot path inserts every usable range of the firmware's map (shrunk inwards to whole
//! pages), then removes every range that must never be handed out (grown outwards to whole
//! pages): every entry of the map that is not usable (firmware maps can overlap them,
//! [`free_pages`]), ranges the command line reserves, the first megabyte with the AP trampoline, the kernel image, the boot modules, the
//! boot information and the ACPI tables. What remains feeds the [frame
//! allocator](crate::frames). A [`RangeSet`] has a fixed capacity because it is used before the
//! kernel has a heap.

use crate::{PAGE_SIZE, align_down, align_up};

/// A half-open physical address range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

impl Range {
    pub const fn new(start: u64, end: u64) -> Self {
        Range { start, end }
    }
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
    /// Whether the two share a byte.
    pub const fn overlaps(&self, o: Range) -> bool {
        self.start < o.end && o.start < self.end && !self.is_empty() && !o.is_empty()
    }
}

/// What the firmware says a range of the memory map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    Usable,
    Reserved,
    AcpiReclaimable,
    AcpiNvs,
    Defective,
    /// Limine: the boot loader's own structures (page tables, responses, its stack); reusable
    /// once nothing reads them any more. rl4 leaves them alone.
    BootloaderReclaimable,
    /// Limine: the kernel image and the boot modules.
    KernelAndModules,
    /// Limine: the framebuffer.
    Framebuffer,
    /// Any other type number the firmware used.
    Other(u32),
}

impl MemKind {
    /// The E820 / Multiboot2 / PVH type numbers (they agree for 1..=5).
    pub fn from_e820(t: u32) -> MemKind {
        match t {
            1 => MemKind::Usable,
            2 => MemKind::Reserved,
            3 => MemKind::AcpiReclaimable,
            4 => MemKind::AcpiNvs,
            5 => MemKind::Defective,
            n => MemKind::Other(n),
        }
    }

    /// Whether the range is memory the kernel may read write-back: RAM, ACPI tables and
    /// storage, the boot loader's, the kernel and its modules. Not: what the firmware keeps
    /// (device registers may lie there), a framebuffer, RAM found defective (a speculative
    /// read there may raise a machine check), a type rl4 does not know.
    pub fn is_memory(self) -> bool {
        matches!(
            self,
            MemKind::Usable | MemKind::AcpiReclaimable | MemKind::AcpiNvs | MemKind::BootloaderReclaimable | MemKind::KernelAndModules
        )
    }
}

/// The set is full: the input had more disjoint ranges than the set can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// How many free ranges the kernel's free set holds (`RangeSet<MAX_FREE_RANGES>`), and so the
/// frame allocator's zones (`frames::MAX_ZONES`).
pub const MAX_FREE_RANGES: usize = 256;

/// A sorted set of disjoint, non-adjacent ranges with room for `N` of them.
#[derive(Clone, Debug)]
pub struct RangeSet<const N: usize> {
    ranges: [Range; N],
    len: usize,
}

impl<const N: usize> Default for RangeSet<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> RangeSet<N> {
    pub const fn new() -> Self {
        RangeSet { ranges: [Range::new(0, 0); N], len: 0 }
    }

    pub fn as_slice(&self) -> &[Range] {
        &self.ranges[..self.len]
    }

    pub fn iter(&self) -> impl Iterator<Item = Range> + '_ {
        self.as_slice().iter().copied()
    }

    /// Total bytes in the set.
    pub fn total(&self) -> u64 {
        self.iter().map(|r| r.len()).sum()
    }

    /// Adds `r`, merging it with the ranges it overlaps or touches.
    pub fn insert(&mut self, r: Range) -> Result<(), Full> {
        if r.is_empty() {
            return Ok(());
        }
        let (mut start, mut end) = (r.start, r.end);
        // First range that ends at or after `start` (could merge), and one past the last that
        // begins at or before `end`.
        let first = self.as_slice().iter().position(|x| x.end >= start).unwrap_or(self.len);
        let mut last = first;
        while last < self.len && self.ranges[last].start <= end {
            start = start.min(self.ranges[last].start);
            end = end.max(self.ranges[last].end);
            last += 1;
        }
        let merged = last - first;
        if merged == 0 {
            if self.len == N {
                return Err(Full);
            }
            self.ranges.copy_within(first..self.len, first + 1);
            self.len += 1;
        } else {
            self.ranges.copy_within(last..self.len, first + 1);
            self.len -= merged - 1;
        }
        self.ranges[first] = Range::new(start, end);
        Ok(())
    }

    /// Removes `r` from the set, splitting a range in two where `r` falls inside it.
    pub fn remove(&mut self, r: Range) -> Result<(), Full> {
        if r.is_empty() {
            return Ok(());
        }
        let mut i = 0;
        while i < self.len {
            let x = self.ranges[i];
            if x.end <= r.start || x.start >= r.end {
                i += 1;
                continue;
            }
            let left = Range::new(x.start, r.start.max(x.start));
            let right = Range::new(r.end.min(x.end), x.end);
            match (left.is_empty(), right.is_empty()) {
                (true, true) => {
                    self.ranges.copy_within(i + 1..self.len, i);
                    self.len -= 1;
                }
                (false, true) => {
                    self.ranges[i] = left;
                    i += 1;
                }
                (true, false) => {
                    self.ranges[i] = right;
                    i += 1;
                }
                (false, false) => {
                    if self.len == N {
                        return Err(Full);
                    }
                    self.ranges.copy_within(i + 1..self.len, i + 2);
                    self.ranges[i] = left;
                    self.ranges[i + 1] = right;
                    self.len += 1;
                    i += 2;
                }
            }
        }
        Ok(())
    }

    /// Adds `r` shrunk inwards to whole pages (for usable memory).
    pub fn insert_pages_within(&mut self, r: Range) -> Result<(), Full> {
        self.insert(Range::new(align_up(r.start, PAGE_SIZE), align_down(r.end, PAGE_SIZE)))
    }

    /// Removes `r` grown outwards to whole pages (for memory that must stay untouched).
    pub fn remove_pages_covering(&mut self, r: Range) -> Result<(), Full> {
        self.remove(Range::new(align_down(r.start, PAGE_SIZE), align_up(r.end, PAGE_SIZE)))
    }

    /// Takes `size` bytes aligned to `align` (a power of two) out of the lowest range that has
    /// room below `limit`, and returns the start address.
    pub fn take(&mut self, size: u64, align: u64, limit: u64) -> Option<u64> {
        let at = self.iter().find_map(|x| {
            let s = align_up(x.start, align);
            let e = s.checked_add(size)?;
            (e <= x.end && e <= limit).then_some(s)
        })?;
        // Taking from the inside of one range can split it; with a full set that fails and
        // the allocation is refused rather than lost.
        self.remove(Range::new(at, at + size)).ok()?;
        Some(at)
    }
}

/// The whole pages of the memory map's usable ranges that no other entry of it claims: a
/// firmware map may list a usable range over a reserved one (ACPI NVS, defective RAM, firmware
/// data), and the reserved one wins. `dropped` hears of every usable range the set had no room
/// for; `Err` gives the range whose removal found the set full (the caller cannot hand out
/// memory it failed to keep out).
pub fn free_pages<const N: usize>(map: impl Iterator<Item = (Range, MemKind)> + Clone, mut dropped: impl FnMut(Range)) -> Result<RangeSet<N>, Range> {
    let mut free = RangeSet::new();
    for (r, _) in map.clone().filter(|(_, k)| *k == MemKind::Usable) {
        if free.insert_pages_within(r).is_err() {
            dropped(r);
        }
    }
    for (r, _) in map.filter(|(_, k)| *k != MemKind::Usable) {
        free.remove_pages_covering(r).map_err(|_| r)?;
    }
    Ok(free)
}

/// The low memory a PC BIOS keeps for itself below 640 KiB, from its data area's two words: the
/// extended BIOS data area's segment (at 0x40E) and the conventional memory's size in KiB (at
/// 0x413), which a memory map may well call usable (a known firmware quirk). The range runs from
/// the lower of the two (values below 128 KiB or at 640 KiB and above are not believed) to
/// 640 KiB, and takes at least the last 4 KiB below it. The kernel keeps it out before it
/// chooses the AP trampoline's page (which, before the twenty-fifth session, could land on the
/// EBDA a map called usable: the firmware's data overwritten; a review found it).
pub fn bios_low_reserved(ebda_segment: u16, base_kib: u16) -> Range {
    const LOW: u64 = 0x2_0000;
    const TOP: u64 = 0xa_0000;
    let ebda = (ebda_segment as u64) << 4;
    let base = (base_kib as u64) * 1024;
    let start = [ebda, base].into_iter().filter(|a| (LOW..TOP).contains(a)).fold(TOP - PAGE_SIZE, u64::min);
    Range::new(align_down(start, PAGE_SIZE), TOP)
}

/// The AP trampoline's page: the highest whole free page below 640 KiB other than page 0 (a
/// STARTUP IPI's vector is the page number, and the real-mode code runs there), or `None` if
/// the memory map left no such page free — then only the bootstrap CPU can run. Never in
/// 640 KiB .. 1 MiB, whatever the map says of it: the video memory and the option and system
/// ROMs' shadows live there (a copy may not stick, and the APs would run what is there), and
/// the SDM reserves the STARTUP vectors 0xA0..0xBF (before the thirty-second session a map that
/// called that range usable, under a firmware whose low area the kernel does not know, put the
/// page there; a review found it).
pub fn trampoline_page<const N: usize>(free: &RangeSet<N>) -> Option<u64> {
    free.iter()
        .filter_map(|r| {
            let start = align_up(r.start.max(PAGE_SIZE), PAGE_SIZE);
            let end = align_down(r.end.min(0xa_0000), PAGE_SIZE);
            (end > start).then(|| end - PAGE_SIZE)
        })
        .last()
}

/// Whether every byte of `r` lies in an entry of `map` that is memory ([`MemKind::is_memory`]),
/// the entries in any order, overlapping or touching (an empty `r` does). Each step moves to
/// the furthest end of an entry that holds the byte reached, so at most one step per entry.
pub fn within_memory(r: Range, map: impl Iterator<Item = (Range, MemKind)> + Clone) -> bool {
    let mut at = r.start;
    while at < r.end {
        match map.clone().filter(|(m, k)| k.is_memory() && m.start <= at && at < m.end).map(|(m, _)| m.end).max() {
            Some(end) => at = end,
            None => return false,
        }
    }
    true
}

/// Whether no entry of `map` that is not memory shares a byte with `r`: what can still be said
/// of a range when the map given was too long and entries of it were dropped (the one that held
/// `r` may be among them).
pub fn clear_of_non_memory(r: Range, mut map: impl Iterator<Item = (Range, MemKind)>) -> bool {
    !map.any(|(m, k)| !k.is_memory() && m.overlaps(r))
}

/// The bytes the ranges `r` cover, each counted once however the ranges overlap (sorts `r`).
pub fn union_len(r: &mut [Range]) -> u64 {
    r.sort_unstable_by_key(|x| x.start);
    let (mut total, mut end) = (0u64, 0u64);
    for x in r.iter() {
        let start = x.start.max(end);
        if x.end > start {
            total += x.end - start;
            end = x.end;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Overlapping, contained, touching and empty ranges, in any order: each byte once.
    #[test]
    fn union_len_counts_each_byte_once() {
        let mut r = [Range::new(0x5000, 0x9000), Range::new(0x1000, 0x3000), Range::new(0x2000, 0x6000), Range::new(0x7000, 0x8000), Range::new(0x9000, 0xa000), Range::new(0x4000, 0x4000)];
        assert_eq!(union_len(&mut r), 0x9000);
        assert_eq!(union_len(&mut []), 0);
    }

    /// A boot module must lie in memory: entries in any order, touching or overlapping, cover
    /// it together; a gap, a reserved or unknown entry, or a range past the map does not.
    #[test]
    fn within_memory_needs_every_byte_in_memory() {
        let map = [
            (Range::new(0x10_0000, 0x20_0000), MemKind::Usable),
            (Range::new(0x30_0000, 0x40_0000), MemKind::KernelAndModules),
            (Range::new(0x20_0000, 0x30_0000), MemKind::BootloaderReclaimable),
            (Range::new(0x38_0000, 0x50_0000), MemKind::Usable),
            (Range::new(0x60_0000, 0x70_0000), MemKind::Usable),
            (Range::new(0x70_0000, 0x71_0000), MemKind::Reserved),
            (Range::new(0x71_0000, 0x72_0000), MemKind::Other(12)),
            (Range::new(0x80_0000, 0x90_0000), MemKind::AcpiNvs),
        ];
        let m = || map.iter().copied();
        assert!(within_memory(Range::new(0x10_0000, 0x50_0000), m()), "touching and overlapping entries");
        assert!(within_memory(Range::new(0x4f_ffff, 0x50_0000), m()));
        assert!(within_memory(Range::new(0x80_1000, 0x80_2000), m()), "ACPI storage is memory");
        assert!(within_memory(Range::new(0x65_0000, 0x65_0000), m()), "an empty range");
        assert!(!within_memory(Range::new(0x4f_f000, 0x50_0001), m()), "one byte past");
        assert!(!within_memory(Range::new(0x40_0000, 0x60_1000), m()), "a gap");
        assert!(!within_memory(Range::new(0x6f_f000, 0x70_1000), m()), "into a reserved entry");
        assert!(!within_memory(Range::new(0x71_0000, 0x71_1000), m()), "an unknown type");
        assert!(!within_memory(Range::new(0xfee0_0000, 0xfee0_1000), m()), "past the map");
        // With entries dropped: only what is known not to be memory refuses.
        assert!(clear_of_non_memory(Range::new(0x40_0000, 0x60_1000), m()), "a gap may be a dropped entry");
        assert!(clear_of_non_memory(Range::new(0xfee0_0000, 0xfee0_1000), m()));
        assert!(!clear_of_non_memory(Range::new(0x6f_f000, 0x70_1000), m()), "into a reserved entry");
        assert!(!clear_of_non_memory(Range::new(0x71_0fff, 0x71_1000), m()), "an unknown type");
        assert!(Range::new(0x1000, 0x3000).overlaps(Range::new(0x2fff, 0x4000)));
        assert!(!Range::new(0x1000, 0x3000).overlaps(Range::new(0x3000, 0x4000)));
        assert!(!Range::new(0x2000, 0x2000).overlaps(Range::new(0x1000, 0x3000)), "an empty range shares nothing");
    }

    #[test]
    fn bios_low_memory_kept_from_the_ebda_or_the_base_size() {
        // SeaBIOS: EBDA at 0x9fc00, 639 KiB of base memory.
        assert_eq!(bios_low_reserved(0x9fc0, 639), Range::new(0x9f000, 0xa0000));
        // An EBDA of 8 KiB below a base size that says 640 KiB.
        assert_eq!(bios_low_reserved(0x9e00, 640), Range::new(0x9e000, 0xa0000));
        // The lower of the two.
        assert_eq!(bios_low_reserved(0x9800, 620), Range::new(0x98000, 0xa0000));
        // Nonsense (0, below 128 KiB, at or above 640 KiB): the last page below 640 KiB only.
        assert_eq!(bios_low_reserved(0, 0), Range::new(0x9f000, 0xa0000));
        assert_eq!(bios_low_reserved(0x100, 64), Range::new(0x9f000, 0xa0000));
        assert_eq!(bios_low_reserved(0xa000, 700), Range::new(0x9f000, 0xa0000));
        assert_eq!(bios_low_reserved(0xffff, 0xffff), Range::new(0x9f000, 0xa0000));
        // The trampoline then lands below it.
        let mut free: RangeSet<8> = RangeSet::new();
        free.insert_pages_within(Range::new(0x1000, 0xa0000)).unwrap();
        free.remove_pages_covering(bios_low_reserved(0x9e00, 640)).unwrap();
        assert_eq!(trampoline_page(&free), Some(0x9d000));
    }

    #[test]
    fn reserved_entries_win_over_usable_ones() {
        let map = [
            (Range::new(0, 0x100_0000), MemKind::Usable),
            // ACPI NVS inside it, not page-aligned: its pages go.
            (Range::new(0x40_0000, 0x40_0064), MemKind::AcpiNvs),
            // Defective RAM straddling its end, and a usable range wholly inside a reserved one.
            (Range::new(0xff_f800, 0x101_0000), MemKind::Defective),
            (Range::new(0x200_0000, 0x300_0000), MemKind::Reserved),
            (Range::new(0x280_0000, 0x290_0000), MemKind::Usable),
            // Usable ranges that overlap each other merge; a wrapped or empty entry is nothing.
            (Range::new(0x400_0000, 0x500_0000), MemKind::Usable),
            (Range::new(0x480_0000, 0x600_0000), MemKind::Usable),
            (Range::new(0x700_0000, 0x600_0000), MemKind::Reserved),
        ];
        let mut dropped = Vec::new();
        let free = free_pages::<8>(map.iter().copied(), |r| dropped.push(r)).unwrap();
        assert_eq!(v(&free), vec![(0, 0x40_0000), (0x40_1000, 0xff_f000), (0x400_0000, 0x600_0000)]);
        assert!(dropped.is_empty());
        // No room: the usable range left out is reported; a removal that would split a full
        // set is an error naming the range.
        let full = [(Range::new(0, 0x1000), MemKind::Usable), (Range::new(0x2000, 0x3000), MemKind::Usable), (Range::new(0x4000, 0x5000), MemKind::Usable)];
        let mut dropped = Vec::new();
        let two = free_pages::<2>(full.iter().copied(), |r| dropped.push(r)).unwrap();
        assert_eq!(two.as_slice(), &[Range::new(0, 0x1000), Range::new(0x2000, 0x3000)]);
        assert_eq!(dropped, vec![Range::new(0x4000, 0x5000)]);
        let split = [(Range::new(0, 0x3000), MemKind::Usable), (Range::new(0x1000, 0x2000), MemKind::Reserved)];
        assert_eq!(free_pages::<1>(split.iter().copied(), |_| {}).err(), Some(Range::new(0x1000, 0x2000)));
    }

    #[test]
    fn the_trampoline_is_the_highest_free_page_below_640_kib() {
        // A PC: low memory up to the EBDA, then RAM above 1 MiB.
        assert_eq!(trampoline_page(&set(&[(0, 0x9fc00), (0x10_0000, 0x800_0000)])), Some(0x9e000));
        // Only page 0 free below 640 KiB (firmware that reserved the rest), or nothing at all.
        assert_eq!(trampoline_page(&set(&[(0, 0x1000), (0x10_0000, 0x800_0000)])), None);
        assert_eq!(trampoline_page(&set(&[(0x10_0000, 0x800_0000)])), None);
        // A range straddling 1 MiB gives the page just below 640 KiB: never one in 640 KiB ..
        // 1 MiB (video memory, ROM shadows), even if the map says it is free.
        assert_eq!(trampoline_page(&set(&[(0x8_0000, 0x20_0000)])), Some(0x9_f000));
        assert_eq!(trampoline_page(&set(&[(0xa_0000, 0x20_0000)])), None);
        assert_eq!(trampoline_page(&set(&[(0x9_f800, 0x20_0000)])), None);
        // A partial page is no page.
        assert_eq!(trampoline_page(&set(&[(0x1000, 0x1800)])), None);
        assert_eq!(trampoline_page(&set(&[(0x800, 0x2000)])), Some(0x1000));
    }

    fn set(rs: &[(u64, u64)]) -> RangeSet<8> {
        let mut s = RangeSet::new();
        for &(a, b) in rs {
            s.insert(Range::new(a, b)).unwrap();
        }
        s
    }
    fn v(s: &RangeSet<8>) -> Vec<(u64, u64)> {
        s.iter().map(|r| (r.start, r.end)).collect()
    }

    #[test]
    fn insert_sorts_and_merges() {
        let s = set(&[(50, 60), (10, 20), (30, 40), (20, 25), (58, 70), (0, 0)]);
        assert_eq!(v(&s), vec![(10, 25), (30, 40), (50, 70)]);
        let s = set(&[(10, 20), (30, 40), (50, 60), (15, 55)]);
        assert_eq!(v(&s), vec![(10, 60)]);
        assert_eq!(s.total(), 50);
    }

    #[test]
    fn insert_reports_full() {
        let mut s: RangeSet<2> = RangeSet::new();
        s.insert(Range::new(0, 1)).unwrap();
        s.insert(Range::new(5, 6)).unwrap();
        assert_eq!(s.insert(Range::new(10, 11)), Err(Full));
        assert_eq!(s.insert(Range::new(1, 5)), Ok(()));
        assert_eq!(s.as_slice(), &[Range::new(0, 6)]);
    }

    #[test]
    fn remove_splits_trims_and_drops() {
        let mut s = set(&[(0, 100), (200, 300)]);
        s.remove(Range::new(40, 60)).unwrap();
        assert_eq!(v(&s), vec![(0, 40), (60, 100), (200, 300)]);
        s.remove(Range::new(90, 250)).unwrap();
        assert_eq!(v(&s), vec![(0, 40), (60, 90), (250, 300)]);
        s.remove(Range::new(0, 1000)).unwrap();
        assert_eq!(v(&s), vec![]);
    }

    #[test]
    fn page_rounding() {
        let mut s: RangeSet<8> = RangeSet::new();
        s.insert_pages_within(Range::new(0x1001, 0x5fff)).unwrap();
        assert_eq!(s.as_slice(), &[Range::new(0x2000, 0x5000)]);
        s.remove_pages_covering(Range::new(0x2fff, 0x3001)).unwrap();
        assert_eq!(s.as_slice(), &[Range::new(0x4000, 0x5000)]);
    }

    #[test]
    fn take_respects_alignment_and_limit() {
        let mut s = set(&[(0x1000, 0x3000), (0x10000, 0x40000)]);
        assert_eq!(s.take(0x1000, 0x1000, u64::MAX), Some(0x1000));
        assert_eq!(s.take(0x8000, 0x10000, u64::MAX), Some(0x10000));
        assert_eq!(s.take(0x100000, 0x1000, u64::MAX), None);
        assert_eq!(s.take(0x1000, 0x1000, 0x2000), None);
        assert_eq!(v(&s), vec![(0x2000, 0x3000), (0x18000, 0x40000)]);
    }

    #[test]
    fn e820_kinds() {
        assert_eq!(MemKind::from_e820(1), MemKind::Usable);
        assert_eq!(MemKind::from_e820(3), MemKind::AcpiReclaimable);
        assert_eq!(MemKind::from_e820(12), MemKind::Other(12));
    }

    /// What the direct map maps write-back: memory, not what may hold device registers or
    /// defective RAM.
    #[test]
    fn which_kinds_are_memory() {
        let memory: Vec<u32> = (0..16).filter(|&t| MemKind::from_e820(t).is_memory()).collect();
        assert_eq!(memory, vec![1, 3, 4]);
        assert!(MemKind::BootloaderReclaimable.is_memory() && MemKind::KernelAndModules.is_memory());
        assert!(!MemKind::Framebuffer.is_memory() && !MemKind::Defective.is_memory() && !MemKind::Reserved.is_memory());
    }
}
