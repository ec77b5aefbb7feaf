//! One `BootInfo` from either boot protocol.
//!
//! * **PVH** (`qemu -kernel rl4.elf`): `ebx` holds the physical address of `hvm_start_info`
//!   (magic `0x336ec578`), which points at the memory map, the command line, the modules and the
//!   RSDP.
//! * **Multiboot2** (GRUB): `ebx` holds the physical address of the boot information, a list of
//!   tags: command line (1), loader name (2), modules (3), memory map (6), and a *copy* of the
//!   RSDP (14 = ACPI 1.0, 15 = ACPI 2.0+); the copy's own address is used as the RSDP address.
//!
//! Parsing reads physical memory only through [`PhysMem`], copies everything it needs into a
//! fixed-size [`BootInfo`] (the kernel has no heap yet), and checks every length and address it
//! is given, so a truncated or malformed structure is an error, not a wild read. The physical
//! ranges of the structures themselves are recorded so the frame allocator never hands them out
//! while they are still needed.
use rl4_core::memmap::{MemKind, Range};

/// Reads physical memory. Returns `None` when the range is not readable.
pub trait PhysMem {
    fn read(&self, pa: u64, buf: &mut [u8]) -> Option<()>;

    fn u32(&self, pa: u64) -> Option<u32> {
        let mut b = [0; 4];
        self.read(pa, &mut b)?;
        Some(u32::from_le_bytes(b))
    }
    fn u64(&self, pa: u64) -> Option<u64> {
        let mut b = [0; 8];
        self.read(pa, &mut b)?;
        Some(u64::from_le_bytes(b))
    }
}

pub const PVH_MAGIC: u32 = 0x336e_c578;
pub const MULTIBOOT2_MAGIC: u32 = 0x36d7_6289;

pub const MAX_MEMMAP: usize = 128;
pub const MAX_MODULES: usize = 16;
pub const MAX_CMDLINE: usize = 1024;
pub const MAX_INFO_RANGES: usize = 4 + MAX_MODULES;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Pvh,
    Multiboot2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemEntry {
    pub range: Range,
    pub kind: MemKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module {
    pub range: Range,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// The PVH structure or Multiboot2 magic number is wrong.
    BadMagic(u32),
    /// A structure could not be read (address outside readable memory).
    Unreadable(u64),
    /// A length field is impossible.
    BadLength(u64),
    /// No memory map was passed.
    NoMemoryMap,
}

/// Everything the kernel learns from its boot loader.
#[derive(Clone, Debug)]
pub struct BootInfo {
    pub protocol: Protocol,
    memmap: [MemEntry; MAX_MEMMAP],
    memmap_len: usize,
    /// Entries past `MAX_MEMMAP` that were dropped.
    pub memmap_dropped: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    pub cmdline_truncated: bool,
    /// Physical address of an RSDP structure (for Multiboot2, the copy inside the boot info).
    pub rsdp: Option<u64>,
    modules: [Module; MAX_MODULES],
    modules_len: usize,
    pub modules_dropped: usize,
    /// Physical ranges holding the boot structures and modules: never hand them out.
    info_ranges: [Range; MAX_INFO_RANGES],
    info_ranges_len: usize,
}

impl BootInfo {
    fn new(protocol: Protocol) -> Self {
        BootInfo {
            protocol,
            memmap: [MemEntry { range: Range::new(0, 0), kind: MemKind::Reserved }; MAX_MEMMAP],
            memmap_len: 0,
            memmap_dropped: 0,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            cmdline_truncated: false,
            rsdp: None,
            modules: [Module { range: Range::new(0, 0) }; MAX_MODULES],
            modules_len: 0,
            modules_dropped: 0,
            info_ranges: [Range::new(0, 0); MAX_INFO_RANGES],
            info_ranges_len: 0,
        }
    }

    pub fn memory_map(&self) -> &[MemEntry] {
        &self.memmap[..self.memmap_len]
    }
    pub fn modules(&self) -> &[Module] {
        &self.modules[..self.modules_len]
    }
    pub fn info_ranges(&self) -> &[Range] {
        &self.info_ranges[..self.info_ranges_len]
    }
    /// The command line; bytes that are not UTF-8 end it early.
    pub fn cmdline(&self) -> &str {
        let b = &self.cmdline[..self.cmdline_len];
        match core::str::from_utf8(b) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    fn push_mem(&mut self, start: u64, len: u64, kind: u32) {
        let Some(end) = start.checked_add(len) else { return };
        if len == 0 {
            return;
        }
        if self.memmap_len == MAX_MEMMAP {
            self.memmap_dropped += 1;
            return;
        }
        self.memmap[self.memmap_len] = MemEntry { range: Range::new(start, end), kind: MemKind::from_e820(kind) };
        self.memmap_len += 1;
    }

    fn push_info(&mut self, start: u64, len: u64) {
        if len == 0 || self.info_ranges_len == MAX_INFO_RANGES {
            return;
        }
        self.info_ranges[self.info_ranges_len] = Range::new(start, start.saturating_add(len));
        self.info_ranges_len += 1;
    }

    fn push_module(&mut self, start: u64, end: u64) {
        if self.modules_len == MAX_MODULES {
            self.modules_dropped += 1;
        } else {
            self.modules[self.modules_len] = Module { range: Range::new(start, end) };
            self.modules_len += 1;
        }
        self.push_info(start, end.saturating_sub(start));
    }

    fn read_cmdline(&mut self, mem: &impl PhysMem, pa: u64, max: usize) -> Result<(), BootError> {
        let mut n = 0;
        let mut byte = [0u8];
        while n < max {
            mem.read(pa + n as u64, &mut byte).ok_or(BootError::Unreadable(pa + n as u64))?;
            if byte[0] == 0 {
                break;
            }
            if n == MAX_CMDLINE {
                self.cmdline_truncated = true;
                break;
            }
            self.cmdline[n] = byte[0];
            n += 1;
        }
        self.cmdline_len = n;
        Ok(())
    }
}

/// Parses PVH's `hvm_start_info` at `pa`.
pub fn parse_pvh(mem: &impl PhysMem, pa: u64) -> Result<BootInfo, BootError> {
    let rd32 = |a: u64| mem.u32(a).ok_or(BootError::Unreadable(a));
    let rd64 = |a: u64| mem.u64(a).ok_or(BootError::Unreadable(a));
    let magic = rd32(pa)?;
    if magic != PVH_MAGIC {
        return Err(BootError::BadMagic(magic));
    }
    let version = rd32(pa + 4)?;
    let mut bi = BootInfo::new(Protocol::Pvh);
    bi.push_info(pa, if version >= 1 { 56 } else { 40 });

    let nr_modules = rd32(pa + 12)? as u64;
    let modlist = rd64(pa + 16)?;
    if nr_modules > 4096 {
        return Err(BootError::BadLength(nr_modules));
    }
    if nr_modules > 0 {
        bi.push_info(modlist, nr_modules * 32);
    }
    for i in 0..nr_modules {
        let e = modlist + i * 32;
        let (start, size) = (rd64(e)?, rd64(e + 8)?);
        bi.push_module(start, start.saturating_add(size));
    }

    let cmdline = rd64(pa + 24)?;
    if cmdline != 0 {
        bi.read_cmdline(mem, cmdline, usize::MAX)?;
        bi.push_info(cmdline, bi.cmdline_len as u64 + 1);
    }
    let rsdp = rd64(pa + 32)?;
    bi.rsdp = (rsdp != 0).then_some(rsdp);

    if version < 1 {
        return Err(BootError::NoMemoryMap);
    }
    let memmap = rd64(pa + 40)?;
    let entries = rd32(pa + 48)? as u64;
    if memmap == 0 || entries == 0 {
        return Err(BootError::NoMemoryMap);
    }
    if entries > 65536 {
        return Err(BootError::BadLength(entries));
    }
    bi.push_info(memmap, entries * 24);
    for i in 0..entries {
        let e = memmap + i * 24;
        bi.push_mem(rd64(e)?, rd64(e + 8)?, rd32(e + 16)?);
    }
    Ok(bi)
}

/// Parses the Multiboot2 boot information at `pa` (`magic` is the loader's `eax`).
pub fn parse_multiboot2(mem: &impl PhysMem, magic: u32, pa: u64) -> Result<BootInfo, BootError> {
    if magic != MULTIBOOT2_MAGIC {
        return Err(BootError::BadMagic(magic));
    }
    let rd32 = |a: u64| mem.u32(a).ok_or(BootError::Unreadable(a));
    let rd64 = |a: u64| mem.u64(a).ok_or(BootError::Unreadable(a));
    let total = rd32(pa)? as u64;
    if !(16..=1 << 24).contains(&total) {
        return Err(BootError::BadLength(total));
    }
    let mut bi = BootInfo::new(Protocol::Multiboot2);
    bi.push_info(pa, total);
    let end = pa + total;
    let mut tag = pa + 8;
    let mut rsdp_v1 = None;
    let mut rsdp_v2 = None;
    let mut have_mmap = false;
    while tag + 8 <= end {
        let (ty, size) = (rd32(tag)?, rd32(tag + 4)? as u64);
        if size < 8 || tag + size > end {
            return Err(BootError::BadLength(size));
        }
        match ty {
            0 => break,
            1 => bi.read_cmdline(mem, tag + 8, (size - 8) as usize)?,
            3 if size >= 16 => {
                let (s, e) = (rd32(tag + 8)? as u64, rd32(tag + 12)? as u64);
                bi.push_module(s, e.max(s));
            }
            6 if size >= 16 => {
                let esize = rd32(tag + 8)? as u64;
                if esize < 24 {
                    return Err(BootError::BadLength(esize));
                }
                have_mmap = true;
                let mut e = tag + 16;
                while e + esize <= tag + size {
                    bi.push_mem(rd64(e)?, rd64(e + 8)?, rd32(e + 16)?);
                    e += esize;
                }
            }
            14 if size >= 8 + 20 => rsdp_v1 = Some(tag + 8),
            15 if size >= 8 + 36 => rsdp_v2 = Some(tag + 8),
            _ => {}
        }
        tag += size.next_multiple_of(8);
    }
    bi.rsdp = rsdp_v2.or(rsdp_v1);
    if !have_mmap {
        return Err(BootError::NoMemoryMap);
    }
    Ok(bi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fake physical memory: one buffer at physical address `base`.
    struct Mem {
        base: u64,
        bytes: Vec<u8>,
    }
    impl PhysMem for Mem {
        fn read(&self, pa: u64, buf: &mut [u8]) -> Option<()> {
            let off = pa.checked_sub(self.base)? as usize;
            buf.copy_from_slice(self.bytes.get(off..off + buf.len())?);
            Some(())
        }
    }
    impl Mem {
        fn put(&mut self, pa: u64, b: &[u8]) {
            let off = (pa - self.base) as usize;
            if self.bytes.len() < off + b.len() {
                self.bytes.resize(off + b.len(), 0);
            }
            self.bytes[off..off + b.len()].copy_from_slice(b);
        }
        fn put32(&mut self, pa: u64, v: u32) {
            self.put(pa, &v.to_le_bytes())
        }
        fn put64(&mut self, pa: u64, v: u64) {
            self.put(pa, &v.to_le_bytes())
        }
    }

    fn pvh_image(version: u32) -> Mem {
        let mut m = Mem { base: 0x1000, bytes: vec![] };
        m.put32(0x1000, PVH_MAGIC);
        m.put32(0x1004, version);
        m.put32(0x100c, 1); // one module
        m.put64(0x1010, 0x1100); // modlist
        m.put64(0x1018, 0x1200); // cmdline
        m.put64(0x1020, 0xf_5a00); // rsdp
        m.put64(0x1028, 0x1300); // memmap
        m.put32(0x1030, 3);
        m.put64(0x1100, 0x20_0000);
        m.put64(0x1108, 0x5000);
        m.put(0x1200, b"run=idle hz=50\0");
        for (i, (a, l, t)) in [(0u64, 0x9fc00u64, 1u32), (0x9fc00, 0x400, 2), (0x10_0000, 0x7ee_0000, 1)].iter().enumerate() {
            let e = 0x1300 + i as u64 * 24;
            m.put64(e, *a);
            m.put64(e + 8, *l);
            m.put32(e + 16, *t);
        }
        m
    }

    #[test]
    fn pvh_parses_everything() {
        let bi = parse_pvh(&pvh_image(1), 0x1000).unwrap();
        assert_eq!(bi.protocol, Protocol::Pvh);
        assert_eq!(bi.cmdline(), "run=idle hz=50");
        assert_eq!(bi.rsdp, Some(0xf_5a00));
        assert_eq!(bi.modules(), &[Module { range: Range::new(0x20_0000, 0x20_5000) }]);
        let mm = bi.memory_map();
        assert_eq!(mm.len(), 3);
        assert_eq!(mm[1], MemEntry { range: Range::new(0x9fc00, 0xa0000), kind: MemKind::Reserved });
        assert_eq!(mm[2].kind, MemKind::Usable);
        // start_info, modlist, module, cmdline, memmap are all recorded for reservation.
        for pa in [0x1000, 0x1100, 0x20_0000, 0x1200, 0x1300] {
            assert!(bi.info_ranges().iter().any(|r| r.start <= pa && pa < r.end), "{pa:#x}");
        }
    }

    #[test]
    fn pvh_rejects_bad_magic_old_version_and_wild_pointers() {
        assert_eq!(parse_pvh(&pvh_image(1), 0x1004).unwrap_err(), BootError::BadMagic(1));
        assert_eq!(parse_pvh(&pvh_image(0), 0x1000).unwrap_err(), BootError::NoMemoryMap);
        let mut m = pvh_image(1);
        m.put64(0x1028, 0xdead_0000);
        assert_eq!(parse_pvh(&m, 0x1000).unwrap_err(), BootError::Unreadable(0xdead_0000));
    }

    fn mb2_image() -> Mem {
        let mut m = Mem { base: 0x10000, bytes: vec![] };
        let mut t = 0x10008u64;
        // cmdline tag
        let cl = b"maxcpus=2 bogus\0";
        m.put32(t, 1);
        m.put32(t + 4, 8 + cl.len() as u32);
        m.put(t + 8, cl);
        t += (8 + cl.len() as u64).next_multiple_of(8);
        // module tag
        m.put32(t, 3);
        m.put32(t + 4, 17);
        m.put32(t + 8, 0x30_0000);
        m.put32(t + 12, 0x30_2000);
        m.put(t + 16, b"\0");
        t += 24;
        // mmap tag with two entries of 24 bytes
        m.put32(t, 6);
        m.put32(t + 4, 16 + 48);
        m.put32(t + 8, 24);
        m.put32(t + 12, 0);
        m.put64(t + 16, 0);
        m.put64(t + 24, 0x9f000);
        m.put32(t + 32, 1);
        m.put64(t + 40, 0x10_0000);
        m.put64(t + 48, 0x100_0000);
        m.put32(t + 56, 3);
        t += 64;
        // old and new RSDP copies
        m.put32(t, 14);
        m.put32(t + 4, 8 + 20);
        m.put(t + 8, b"RSD PTR ");
        let v1 = t + 8;
        t += 32;
        m.put32(t, 15);
        m.put32(t + 4, 8 + 36);
        m.put(t + 8, b"RSD PTR ");
        let v2 = t + 8;
        t += 48;
        m.put32(t, 0);
        m.put32(t + 4, 8);
        t += 8;
        m.put32(0x10000, (t - 0x10000) as u32);
        assert!(v2 > v1);
        m
    }

    #[test]
    fn multiboot2_parses_tags_and_prefers_acpi2_rsdp() {
        let m = mb2_image();
        let bi = parse_multiboot2(&m, MULTIBOOT2_MAGIC, 0x10000).unwrap();
        assert_eq!(bi.protocol, Protocol::Multiboot2);
        assert_eq!(bi.cmdline(), "maxcpus=2 bogus");
        assert_eq!(bi.modules(), &[Module { range: Range::new(0x30_0000, 0x30_2000) }]);
        assert_eq!(bi.memory_map().len(), 2);
        assert_eq!(bi.memory_map()[1].kind, MemKind::AcpiReclaimable);
        let rsdp = bi.rsdp.unwrap();
        let mut sig = [0u8; 8];
        m.read(rsdp, &mut sig).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        // The ACPI 2.0 copy (tag 15) comes after the 1.0 copy in this image.
        assert!(rsdp > 0x10000 + 8 + 24 + 24 + 64 + 32);
    }

    #[test]
    fn multiboot2_rejects_bad_magic_and_overlong_tags() {
        let mut m = mb2_image();
        assert_eq!(parse_multiboot2(&m, 0x2bad_b002, 0x10000).unwrap_err(), BootError::BadMagic(0x2bad_b002));
        m.put32(0x1000c, 0x10_0000); // first tag's size runs past the end
        assert!(matches!(parse_multiboot2(&m, MULTIBOOT2_MAGIC, 0x10000), Err(BootError::BadLength(_))));
    }
}
