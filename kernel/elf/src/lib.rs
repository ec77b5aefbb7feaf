//! A strict reader of ELF64 executables for x86_64, enough to load rl4's user programs.
//!
//! The kernel uses it for the root task and the root task for every other program, so it
//! trusts nothing: every offset and size is checked against the image, every loadable segment
//! must lie inside the user range the caller gives, segments may not overlap (by page), and
//! file contents may not exceed memory size. Only `ET_EXEC` images for `EM_X86_64`,
//! little-endian, are accepted. No `unsafe`, no allocation.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use core::fmt;

pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;
const PT_LOAD: u32 = 1;
const PAGE: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    TooShort,
    BadMagic,
    NotElf64LittleEndian,
    NotExecutable,
    WrongMachine,
    BadHeader,
    /// A program header or segment lies outside the image.
    OutOfBounds,
    /// A segment's file size exceeds its memory size, or sizes overflow.
    BadSegment,
    /// A segment lies outside the allowed address range.
    BadAddress,
    /// Two loadable segments share a page.
    Overlap,
    /// The entry point is not inside an executable segment.
    BadEntry,
    NoSegments,
    /// More program headers than [`MAX_PHNUM`].
    TooManyHeaders,
}

/// Most program headers an image may have (a program has a handful; the check of every loadable
/// segment against the others is quadratic, and 65,535 headers made it take minutes).
pub const MAX_PHNUM: u64 = 256;

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
    /// `PF_R | PF_W | PF_X` bits.
    pub flags: u32,
}

impl Segment {
    /// First page and one past the last page the segment touches.
    pub fn pages(&self) -> (u64, u64) {
        (self.vaddr & !(PAGE - 1), (self.vaddr + self.memsz).div_ceil(PAGE) * PAGE)
    }
}

/// A checked executable.
#[derive(Clone, Copy, Debug)]
pub struct Elf<'a> {
    data: &'a [u8],
    pub entry: u64,
    phoff: u64,
    phnum: u64,
    phentsize: u64,
}

fn u16_at(d: &[u8], o: u64) -> Result<u16, ElfError> {
    let o = usize::try_from(o).map_err(|_| ElfError::OutOfBounds)?;
    d.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]])).ok_or(ElfError::OutOfBounds)
}
fn u32_at(d: &[u8], o: u64) -> Result<u32, ElfError> {
    let o = usize::try_from(o).map_err(|_| ElfError::OutOfBounds)?;
    d.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).ok_or(ElfError::OutOfBounds)
}
fn u64_at(d: &[u8], o: u64) -> Result<u64, ElfError> {
    let o = usize::try_from(o).map_err(|_| ElfError::OutOfBounds)?;
    d.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap())).ok_or(ElfError::OutOfBounds)
}

impl<'a> Elf<'a> {
    /// Checks `data` and every loadable segment: each must lie within `[lo, hi)`.
    pub fn parse(data: &'a [u8], lo: u64, hi: u64) -> Result<Elf<'a>, ElfError> {
        if data.len() < 64 {
            return Err(ElfError::TooShort);
        }
        if &data[..4] != b"\x7fELF" {
            return Err(ElfError::BadMagic);
        }
        if data[4] != 2 || data[5] != 1 || data[6] != 1 {
            return Err(ElfError::NotElf64LittleEndian);
        }
        if u16_at(data, 16)? != 2 {
            return Err(ElfError::NotExecutable);
        }
        if u16_at(data, 18)? != 62 {
            return Err(ElfError::WrongMachine);
        }
        let e = Elf {
            data,
            entry: u64_at(data, 24)?,
            phoff: u64_at(data, 32)?,
            phentsize: u16_at(data, 54)? as u64,
            phnum: u16_at(data, 56)? as u64,
        };
        if e.phentsize < 56 {
            return Err(ElfError::BadHeader);
        }
        if e.phnum > MAX_PHNUM {
            return Err(ElfError::TooManyHeaders);
        }
        let table_end = e.phnum.checked_mul(e.phentsize).and_then(|n| n.checked_add(e.phoff));
        if table_end.is_none_or(|end| end > data.len() as u64) {
            return Err(ElfError::OutOfBounds);
        }
        let mut count = 0;
        let mut entry_ok = false;
        for (i, s) in e.segments().enumerate() {
            let s = s?;
            count += 1;
            let (p0, p1) = s.pages();
            if p0 < lo || p1 > hi {
                return Err(ElfError::BadAddress);
            }
            if s.flags & PF_X != 0 && e.entry >= s.vaddr && e.entry < s.vaddr + s.memsz {
                entry_ok = true;
            }
            for t in e.segments().take(i) {
                let (q0, q1) = t?.pages();
                if p0 < q1 && q0 < p1 {
                    return Err(ElfError::Overlap);
                }
            }
        }
        if count == 0 {
            return Err(ElfError::NoSegments);
        }
        if !entry_ok {
            return Err(ElfError::BadEntry);
        }
        Ok(e)
    }

    /// The `PT_LOAD` segments, each checked against the image.
    pub fn segments(&self) -> impl Iterator<Item = Result<Segment, ElfError>> + '_ {
        (0..self.phnum).filter_map(move |i| {
            let h = self.phoff + i * self.phentsize;
            let r = (|| {
                if u32_at(self.data, h)? != PT_LOAD {
                    return Ok(None);
                }
                let s = Segment {
                    flags: u32_at(self.data, h + 4)?,
                    offset: u64_at(self.data, h + 8)?,
                    vaddr: u64_at(self.data, h + 16)?,
                    filesz: u64_at(self.data, h + 32)?,
                    memsz: u64_at(self.data, h + 40)?,
                };
                // Its end, rounded up to a page, must fit in 64 bits (`Segment::pages`).
                if s.filesz > s.memsz || s.vaddr.checked_add(s.memsz).and_then(|e| e.checked_next_multiple_of(PAGE)).is_none() {
                    return Err(ElfError::BadSegment);
                }
                if s.offset.checked_add(s.filesz).is_none_or(|e| e > self.data.len() as u64) {
                    return Err(ElfError::OutOfBounds);
                }
                Ok(Some(s))
            })();
            r.transpose()
        })
    }

    /// The bytes a segment takes from the file.
    pub fn file_bytes(&self, s: &Segment) -> &'a [u8] {
        &self.data[s.offset as usize..(s.offset + s.filesz) as usize]
    }
}

#[cfg(test)]
mod hostile;

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF image: header, program headers for `segs` (vaddr, memsz, filesz, flags), then the
    /// file bytes of each segment.
    pub(crate) fn image(entry: u64, segs: &[(u64, u64, u64, u32)]) -> Vec<u8> {
        let mut d = vec![0u8; 64 + 56 * segs.len()];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[6] = 1;
        d[16..18].copy_from_slice(&2u16.to_le_bytes());
        d[18..20].copy_from_slice(&62u16.to_le_bytes());
        d[24..32].copy_from_slice(&entry.to_le_bytes());
        d[32..40].copy_from_slice(&64u64.to_le_bytes());
        d[54..56].copy_from_slice(&56u16.to_le_bytes());
        d[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        let mut off = d.len() as u64;
        for (i, &(va, mem, file, fl)) in segs.iter().enumerate() {
            let h = 64 + 56 * i;
            d[h..h + 4].copy_from_slice(&1u32.to_le_bytes());
            d[h + 4..h + 8].copy_from_slice(&fl.to_le_bytes());
            d[h + 8..h + 16].copy_from_slice(&off.to_le_bytes());
            d[h + 16..h + 24].copy_from_slice(&va.to_le_bytes());
            d[h + 32..h + 40].copy_from_slice(&file.to_le_bytes());
            d[h + 40..h + 48].copy_from_slice(&mem.to_le_bytes());
            off += file;
        }
        d.resize(off as usize, 0xab);
        d
    }

    const LO: u64 = 0x1000;
    const HI: u64 = 0x8000_0000_0000;

    #[test]
    fn accepts_a_normal_program() {
        let d = image(0x40_0010, &[(0x40_0000, 0x2000, 0x1800, PF_R | PF_X), (0x40_2000, 0x3000, 0x10, PF_R | PF_W)]);
        let e = Elf::parse(&d, LO, HI).unwrap();
        assert_eq!(e.entry, 0x40_0010);
        let segs: Vec<_> = e.segments().map(Result::unwrap).collect();
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[1].pages(), (0x40_2000, 0x40_5000));
        assert_eq!(e.file_bytes(&segs[0]).len(), 0x1800);
    }

    /// More headers than `MAX_PHNUM`, each a loadable segment of no page: refused at once (the
    /// pairwise check took quadratic time in them before).
    #[test]
    fn refuses_too_many_headers() {
        let mut segs = vec![(0x40_0000u64, 0x1000u64, 0x10u64, PF_R | PF_X)];
        segs.extend((0..MAX_PHNUM).map(|_| (0x50_0000u64, 0u64, 0u64, PF_R)));
        let d = image(0x40_0000, &segs);
        assert_eq!(Elf::parse(&d, LO, HI).unwrap_err(), ElfError::TooManyHeaders);
        let d = image(0x40_0000, &segs[..MAX_PHNUM as usize]);
        assert!(Elf::parse(&d, LO, HI).is_ok());
    }

    #[test]
    fn rejects_malformed_headers() {
        let good = image(0x40_0000, &[(0x40_0000, 0x1000, 0x10, PF_R | PF_X)]);
        assert_eq!(Elf::parse(&good[..40], LO, HI).unwrap_err(), ElfError::TooShort);
        let mut d = good.clone();
        d[0] = 0;
        assert_eq!(Elf::parse(&d, LO, HI).unwrap_err(), ElfError::BadMagic);
        let mut d = good.clone();
        d[4] = 1;
        assert_eq!(Elf::parse(&d, LO, HI).unwrap_err(), ElfError::NotElf64LittleEndian);
        let mut d = good.clone();
        d[16] = 3;
        assert_eq!(Elf::parse(&d, LO, HI).unwrap_err(), ElfError::NotExecutable);
        let mut d = good.clone();
        d[18] = 3;
        assert_eq!(Elf::parse(&d, LO, HI).unwrap_err(), ElfError::WrongMachine);
        let mut d = good.clone();
        d[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Elf::parse(&d, LO, HI).unwrap_err(), ElfError::OutOfBounds);
    }

    /// The program header table as the header describes it: entries `e_phentsize` apart (a
    /// larger stride than 56 is walked as such), only `PT_LOAD` entries taken (another type's
    /// offsets are not looked at), a stride below 56 refused; each identification byte checked
    /// by itself; a file range whose end overflows refused. (A review of the thirty-fifth
    /// session found these without a test.)
    #[test]
    fn walks_the_header_table_as_described() {
        let segs = [(0x40_0000u64, 0x1000u64, 0x10u64, PF_R | PF_X), (0x50_0000, 0x2000, 0x20, PF_R | PF_W)];
        let d = image(0x40_0000, &segs);
        let want: Vec<_> = Elf::parse(&d, LO, HI).unwrap().segments().map(|s| s.unwrap()).collect();
        assert_eq!(want.len(), 2);
        // The same table with 64-byte entries (8 bytes of padding each; the data 16 further on).
        let mut wide = d[..64].to_vec();
        wide[54..56].copy_from_slice(&64u16.to_le_bytes());
        for i in 0..2 {
            let mut h = d[64 + 56 * i..120 + 56 * i].to_vec();
            let off = u64::from_le_bytes(h[8..16].try_into().unwrap()) + 16;
            h[8..16].copy_from_slice(&off.to_le_bytes());
            wide.extend_from_slice(&h);
            wide.extend_from_slice(&[0xee; 8]);
        }
        wide.extend_from_slice(&d[64 + 56 * 2..]);
        let e = Elf::parse(&wide, LO, HI).unwrap();
        let got: Vec<_> = e.segments().map(|s| s.unwrap()).collect();
        assert_eq!(got.iter().map(|s| (s.vaddr, s.memsz, s.filesz, s.flags)).collect::<Vec<_>>(), want.iter().map(|s| (s.vaddr, s.memsz, s.filesz, s.flags)).collect::<Vec<_>>());
        assert_eq!(e.file_bytes(&got[1]), Elf::parse(&d, LO, HI).unwrap().file_bytes(&want[1]));
        // A stride below an entry's size.
        let mut narrow = d.clone();
        narrow[54..56].copy_from_slice(&48u16.to_le_bytes());
        assert_eq!(Elf::parse(&narrow, LO, HI).unwrap_err(), ElfError::BadHeader);
        // A `PT_NOTE` whose offset and size are wild: skipped, not checked.
        let mut note = d.clone();
        note[64 + 56..64 + 56 + 4].copy_from_slice(&4u32.to_le_bytes());
        note[64 + 56 + 8..64 + 56 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = Elf::parse(&note, LO, HI).unwrap();
        assert_eq!(e.segments().map(|s| s.unwrap().vaddr).collect::<Vec<_>>(), [0x40_0000]);
        // Each identification byte by itself: class, data encoding, version.
        for (at, v) in [(4, 1u8), (5, 2), (6, 0)] {
            let mut bad = d.clone();
            bad[at] = v;
            assert_eq!(Elf::parse(&bad, LO, HI).unwrap_err(), ElfError::NotElf64LittleEndian, "byte {at}");
        }
        // A file range whose end overflows 64 bits.
        let mut wrap = d.clone();
        wrap[64 + 8..64 + 16].copy_from_slice(&(u64::MAX - 4).to_le_bytes());
        assert_eq!(Elf::parse(&wrap, LO, HI).unwrap_err(), ElfError::OutOfBounds);
    }

    #[test]
    fn rejects_bad_segments() {
        let bad = |segs: &[(u64, u64, u64, u32)], entry| Elf::parse(&image(entry, segs), LO, HI).unwrap_err();
        assert_eq!(bad(&[(0x40_0000, 0x10, 0x20, PF_R | PF_X)], 0x40_0000), ElfError::BadSegment);
        assert_eq!(bad(&[(u64::MAX - 5, 0x10, 0, PF_R | PF_X)], 0x40_0000), ElfError::BadSegment);
        // An end that fits in 64 bits but not once rounded up to a page (it would wrap to 0
        // and pass the range check): refused.
        assert_eq!(bad(&[(0x40_0000, u64::MAX - 0x40_0000, 0, PF_R | PF_X)], 0x40_0000), ElfError::BadSegment);
        assert_eq!(bad(&[(0xffff_8000_0000_0000, 0x1000, 0, PF_R | PF_X)], 0xffff_8000_0000_0000), ElfError::BadAddress);
        assert_eq!(bad(&[(0, 0x1000, 0, PF_R | PF_X)], 0), ElfError::BadAddress);
        assert_eq!(
            bad(&[(0x40_0000, 0x1800, 0, PF_R | PF_X), (0x40_1000, 0x1000, 0, PF_R | PF_W)], 0x40_0000),
            ElfError::Overlap
        );
        assert_eq!(bad(&[(0x40_0000, 0x1000, 0, PF_R | PF_W)], 0x40_0000), ElfError::BadEntry);
        assert_eq!(bad(&[(0x40_0000, 0x1000, 0, PF_R | PF_X)], 0x50_0000), ElfError::BadEntry);
        assert_eq!(bad(&[], 0), ElfError::NoSegments);
        // File bytes beyond the image.
        let mut d = image(0x40_0000, &[(0x40_0000, 0x2000, 0x1000, PF_R | PF_X)]);
        d.truncate(d.len() - 1);
        assert_eq!(Elf::parse(&d, LO, HI).unwrap_err(), ElfError::OutOfBounds);
    }
}
