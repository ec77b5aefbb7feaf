//! One `BootInfo` from either boot protocol.
//!
//! * **PVH** (`qemu -kernel rl4.elf`): `ebx` holds the physical address of `hvm_start_info`
//!   (magic `0x336ec578`), which points at the memory map, the command line, the modules and the
//!   RSDP.
//! * **Multiboot2** (GRUB): `ebx` holds the physical address of the boot information, a list of
//!   tags: command line (1), loader name (2), modules (3), memory map (6), and a *copy* of the
//!   RSDP (14 = ACPI 1.0, 15 = ACPI 2.0+); the copy's own address is used as the RSDP address.
//!
//! * **Limine** (a Limine ISO, BIOS or UEFI): the kernel's requests in its `.requests` section
//!   are answered before it runs; the 64-bit entry (`arch/src/limine.rs`) notes where the
//!   responses are ([`LimineHandoff`]) while the boot loader's page tables still map them, and
//!   [`parse_limine`] reads them: memory map, modules, command line (kernel file), RSDP, firmware
//!   type, boot loader name. Limine's pointers are higher-half direct map (HHDM) addresses; each
//!   is turned back into a physical address and checked.
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
/// Bytes of a module's name kept (longer names are cut).
pub const MODULE_NAME_MAX: usize = 31;
pub const MAX_CMDLINE: usize = 1024;
pub const MAX_INFO_RANGES: usize = 4 + MAX_MODULES;
pub const MAX_LOADER_NAME: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Pvh,
    Multiboot2,
    Limine,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Pvh => "PVH",
            Protocol::Multiboot2 => "Multiboot2",
            Protocol::Limine => "Limine",
        }
    }
}

/// The firmware under the boot loader, as far as the protocol says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// A PC BIOS: a PC/AT platform (8259 PICs, 8254 PIT) may be assumed.
    Bios,
    /// UEFI: no legacy devices are promised; ACPI says what the machine has.
    Uefi,
    /// The protocol does not say (PVH).
    Unstated,
}

impl Firmware {
    pub fn describe(self) -> &'static str {
        match self {
            Firmware::Bios => "BIOS",
            Firmware::Uefi => "UEFI",
            Firmware::Unstated => "not stated (a PC/AT is assumed)",
        }
    }
}

/// What the Limine path adds to [`BootInfo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimineDetails {
    /// The base revision Limine loaded the kernel with.
    pub base_revision: u64,
    /// Limine's higher-half direct map offset.
    pub hhdm: u64,
    /// Where Limine put the kernel image: physical and virtual base.
    pub kernel_phys: u64,
    pub kernel_virt: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemEntry {
    pub range: Range,
    pub kind: MemKind,
}

/// A boot module: where its bytes are, and its name.
///
/// The name is, in order of preference: a `newc` archive member's file name; the string the
/// boot loader passes with the module (Multiboot2's module string, Limine's `module_cmdline`),
/// its last word; the module's path (Limine); `module<N>`. Any directory part and a `.elf`
/// suffix are dropped, and at most [`MODULE_NAME_MAX`] bytes are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module {
    pub range: Range,
    name: [u8; MODULE_NAME_MAX],
    name_len: u8,
    /// Its first bytes could not be read while the boot information was parsed (it lies where
    /// the boot page tables do not reach, above 4 GiB): whether it is an archive is decided once
    /// the direct map is up ([`BootInfo::expand_unread_archives`]).
    unread: bool,
}

impl Module {
    /// A module named `name` (cleaned as the type's documentation says).
    pub fn new(range: Range, name: &[u8]) -> Module {
        let mut m = Module { range, name: [0; MODULE_NAME_MAX], name_len: 0, unread: false };
        m.set_name(name);
        m
    }
    fn set_name(&mut self, raw: &[u8]) {
        // The last word, its last path component, without ".elf".
        let raw = raw.split(|&b| b == 0).next().unwrap_or(&[]);
        let word = raw.split(|b| b.is_ascii_whitespace()).rfind(|w| !w.is_empty()).unwrap_or(&[]);
        let base = word.rsplit(|&b| b == b'/').next().unwrap_or(&[]);
        let base = base.strip_suffix(b".elf").unwrap_or(base);
        let n = base.len().min(MODULE_NAME_MAX);
        self.name = [0; MODULE_NAME_MAX];
        self.name[..n].copy_from_slice(&base[..n]);
        self.name_len = n as u8;
    }
    /// The module's name ("" when it has none: the kernel then calls it `module<N>`).
    pub fn name(&self) -> &str {
        utf8_prefix(&self.name[..self.name_len as usize])
    }
}

/// Most bytes of a name string read from the boot loader's structures: its last ones, where
/// the name ([`Module`]'s last word, its last path component) is.
const NAME_READ_MAX: usize = 256;
/// Most bytes of a boot loader's string looked at for its end (NUL).
const NAME_SCAN_MAX: u64 = 4096;

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
    /// A Limine pointer that is not an address in its higher-half direct map.
    BadPointer(u64),
    /// Limine did not accept the base revision rl4 asks for (it reports the one it loaded with,
    /// 0 when it does not say).
    UnsupportedRevision(u64),
    /// Limine did not answer a request rl4 cannot boot without.
    Missing(&'static str),
}

/// Everything the kernel learns from its boot loader.
#[derive(Clone, Debug)]
pub struct BootInfo {
    pub protocol: Protocol,
    pub firmware: Firmware,
    loader: [u8; MAX_LOADER_NAME],
    loader_len: usize,
    /// Limine only: revision, HHDM and where the kernel was loaded.
    pub limine: Option<LimineDetails>,
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
            firmware: Firmware::Unstated,
            loader: [0; MAX_LOADER_NAME],
            loader_len: 0,
            limine: None,
            memmap: [MemEntry { range: Range::new(0, 0), kind: MemKind::Reserved }; MAX_MEMMAP],
            memmap_len: 0,
            memmap_dropped: 0,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            cmdline_truncated: false,
            rsdp: None,
            modules: [Module { range: Range::new(0, 0), name: [0; MODULE_NAME_MAX], name_len: 0, unread: false }; MAX_MODULES],
            modules_len: 0,
            modules_dropped: 0,
            info_ranges: [Range::new(0, 0); MAX_INFO_RANGES],
            info_ranges_len: 0,
        }
    }

    pub fn memory_map(&self) -> &[MemEntry] {
        &self.memmap[..self.memmap_len]
    }
    /// Whether `r` (a module's range) lies in memory as the memory map tells it
    /// (`memmap::within_memory`); when the map was too long and entries were dropped (the one
    /// that held `r` may be among them), whether no entry that is not memory shares a byte with
    /// it (`memmap::clear_of_non_memory`). What the archive probe here and the root task's loader
    /// (`kernel/src/root.rs`) ask before they read a module.
    pub fn in_memory(&self, r: Range) -> bool {
        let map = self.memory_map().iter().map(|e| (e.range, e.kind));
        if self.memmap_dropped > 0 {
            rl4_core::memmap::clear_of_non_memory(r, map)
        } else {
            rl4_core::memmap::within_memory(r, map)
        }
    }
    pub fn modules(&self) -> &[Module] {
        &self.modules[..self.modules_len]
    }
    pub fn info_ranges(&self) -> &[Range] {
        &self.info_ranges[..self.info_ranges_len]
    }
    /// The command line; bytes that are not UTF-8 end it early ([`BootInfo::cmdline_cut`]).
    pub fn cmdline(&self) -> &str {
        utf8_prefix(&self.cmdline[..self.cmdline_len])
    }
    /// Where the command line's first byte that is not UTF-8 is, if it has one: [`cmdline`]
    /// ends there (the boot line says so). Not a character the length limit cut in two (then
    /// `cmdline_truncated` says what happened).
    pub fn cmdline_cut(&self) -> Option<usize> {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).err().filter(|e| e.error_len().is_some()).map(|e| e.valid_up_to())
    }
    /// The boot loader's name (and version), when the protocol passes one ("" otherwise).
    pub fn loader(&self) -> &str {
        utf8_prefix(&self.loader[..self.loader_len])
    }

    /// Appends the NUL-terminated string at `pa` to the loader name (at most `max` bytes of
    /// it), as far as there is room.
    fn append_loader(&mut self, mem: &impl PhysMem, pa: u64, max: u64) -> Result<(), BootError> {
        let mut byte = [0u8];
        for i in 0..max {
            mem.read(pa + i, &mut byte).ok_or(BootError::Unreadable(pa + i))?;
            if byte[0] == 0 || self.loader_len == MAX_LOADER_NAME {
                break;
            }
            self.loader[self.loader_len] = byte[0];
            self.loader_len += 1;
        }
        Ok(())
    }

    fn push_mem(&mut self, start: u64, len: u64, kind: MemKind) {
        // Physical memory beyond what the direct map can cover (64 TiB) is left out: the
        // kernel could neither map nor use it, and a firmware entry that ends there (or wraps)
        // must not size the direct map's page-table slots past their end.
        let Some(end) = start.checked_add(len) else { return };
        let end = end.min(crate::layout::DIRECT_MAP_SIZE);
        if start >= end {
            return;
        }
        // An entry that goes on where the previous one of the same kind ended is that entry
        // (firmware maps list many adjacent pieces of one kind).
        if let Some(last) = self.memmap[..self.memmap_len].last_mut()
            && last.kind == kind
            && last.range.end == start
        {
            last.range.end = end;
            return;
        }
        let entry = MemEntry { range: Range::new(start, end), kind };
        if self.memmap_len == MAX_MEMMAP {
            self.memmap_dropped += 1;
            // Full: a usable range is what may be left out (memory lost, nothing worse), the
            // smallest one above 1 MiB (the application processors' start page comes from below
            // 1 MiB: those go last): a range the kernel must keep out of the allocator, map or
            // read (reserved, ACPI, modules) takes its place, and so does a larger usable one.
            // (The last usable entry went before the twenty-first session: in an address-sorted
            // map that is often the large range above 4 GiB, tens of GiB lost to one entry.)
            let smallest = (0..self.memmap_len)
                .filter(|&i| self.memmap[i].kind == MemKind::Usable)
                .min_by_key(|&i| (self.memmap[i].range.start < 1 << 20, self.memmap[i].range.len()));
            if let Some(i) = smallest
                && (kind != MemKind::Usable || self.memmap[i].range.len() < entry.range.len())
            {
                self.memmap[i] = entry;
            }
            return;
        }
        self.memmap[self.memmap_len] = entry;
        self.memmap_len += 1;
    }

    fn push_info(&mut self, start: u64, len: u64) {
        if len == 0 || self.info_ranges_len == MAX_INFO_RANGES {
            return;
        }
        self.info_ranges[self.info_ranges_len] = Range::new(start, start.saturating_add(len));
        self.info_ranges_len += 1;
    }

    /// A module as the loader gives it; its range is reserved as boot information only if it is
    /// kept (one past [`MAX_MODULES`] is counted as dropped), so that the modules take at most
    /// [`MAX_MODULES`] of the [`MAX_INFO_RANGES`] and the structures read after them keep their
    /// room (before the forty-third session a dropped module took a slot too, and from the
    /// seventeenth on PVH's memory map, then its command line, lost their reservation; a review
    /// found it).
    fn push_module(&mut self, start: u64, end: u64, name: &[u8]) {
        if self.modules_len < MAX_MODULES {
            self.push_info(start, end.saturating_sub(start));
        }
        self.add_module(Module::new(Range::new(start, end), name));
    }

    fn add_module(&mut self, m: Module) {
        if self.modules_len == MAX_MODULES {
            self.modules_dropped += 1;
        } else {
            self.modules[self.modules_len] = m;
            self.modules_len += 1;
        }
    }

    /// Replaces every module that is a `newc` cpio archive (how `scripts/run` passes several
    /// programs through PVH, which carries one module) by its regular-file members, each named
    /// by its file name. A malformed archive is kept whole (its user sees what it is); a
    /// member past [`MAX_MODULES`] counts as dropped. The archive's range stays reserved.
    pub fn expand_archives(&mut self, mem: &impl PhysMem) {
        self.expand(mem, |_| true);
    }

    /// [`expand_archives`](Self::expand_archives) for the modules whose first bytes the parser
    /// could not read (above the 4 GiB the boot page tables map: Limine may load a module
    /// there), through `mem` that reads them now; the others are left as they are (a member
    /// that is itself an archive stays one file). Returns how many such modules there were, and
    /// how many of those `mem` could not read either (they are kept whole, still marked).
    pub fn expand_unread_archives(&mut self, mem: &impl PhysMem) -> (usize, usize) {
        let unread = |bi: &BootInfo| bi.modules().iter().filter(|m| m.unread).count();
        let n = unread(self);
        if n > 0 {
            self.expand(mem, |m| m.unread);
        }
        (n, unread(self))
    }

    /// Replaces each module `pick` chooses that is a `newc` archive by its members; a chosen
    /// module whose first bytes `mem` cannot read is kept, marked unread.
    fn expand(&mut self, mem: &impl PhysMem, pick: impl Fn(&Module) -> bool) {
        let mut all = [Module::new(Range::new(0, 0), b""); MAX_MODULES];
        let n = self.modules_len;
        all[..n].copy_from_slice(&self.modules[..n]);
        self.modules_len = 0;
        for m in &all[..n] {
            // Not read where the memory map says it is not memory (device registers, RAM
            // found defective): kept whole, for the root task's loader to refuse with a line
            // (before the forty-third session the probe read its first bytes, and an archive's
            // headers, wherever the loader said it was; a review found it).
            if !pick(m) || !self.in_memory(m.range) {
                self.add_module(*m);
                continue;
            }
            // Unread if its first or its last bytes cannot be read (a range that starts below
            // 4 GiB and ends above, as well as one wholly above): `read_newc` would take it for
            // malformed.
            let (mut head, mut last) = ([0u8; 6], [0u8; 1]);
            if !m.range.is_empty() && (mem.read(m.range.start, &mut head).is_none() || mem.read(m.range.end - 1, &mut last).is_none()) {
                self.add_module(Module { unread: true, ..*m });
                continue;
            }
            let m = &Module { unread: false, ..*m };
            let mut members = [Module::new(Range::new(0, 0), b""); MAX_MODULES];
            match read_newc(mem, m.range, &mut members) {
                Some((count, extra)) => {
                    for x in &members[..count] {
                        self.add_module(*x);
                    }
                    self.modules_dropped += extra;
                }
                None => self.add_module(*m),
            }
        }
    }

    /// Reads the NUL-terminated string at `pa` (its first `max` bytes at most, and at most
    /// [`NAME_SCAN_MAX`]; up to the first byte that cannot be read) as a name: its last
    /// [`NAME_READ_MAX`] bytes, where the name is (before the thirty-fifth session its first
    /// ones: a module string or path longer than that was named after a piece of its start).
    fn read_name(mem: &impl PhysMem, pa: u64, max: u64, buf: &mut [u8; NAME_READ_MAX]) -> usize {
        let mut len = 0;
        let mut byte = [0u8];
        while len < max.min(NAME_SCAN_MAX) && pa.checked_add(len).and_then(|a| mem.read(a, &mut byte)).is_some() && byte[0] != 0 {
            len += 1;
        }
        // (No overflow: with `n` > 0, `pa + len - 1` is an address the loop read.)
        let n = len.min(NAME_READ_MAX as u64);
        match mem.read(pa + (len - n), &mut buf[..n as usize]) {
            Some(()) => n as usize,
            None => 0,
        }
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

fn utf8_prefix(b: &[u8]) -> &str {
    match core::str::from_utf8(b) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or(""),
    }
}

/// Where ACPI's root pointer lies on a PC BIOS when the boot loader does not say (ACPI 6.5,
/// 5.2.5.1): on a 16-byte boundary in the first KiB of the extended BIOS data area (its segment
/// at 0x40E) or in the BIOS read-only area 0xE0000..0x100000, made by its signature "RSD PTR "
/// and the checksum of its first 20 bytes (of the 36 of an extended one, revision 2 on). For a
/// Multiboot2 loader that passes no RSDP tag (the tags are optional): without ACPI tables the
/// kernel runs on the bootstrap CPU alone. Never on UEFI, whose low memory promises nothing.
pub fn scan_bios_rsdp(mem: &impl PhysMem) -> Option<u64> {
    let mut seg = [0u8; 2];
    let ebda = mem.read(0x40e, &mut seg).map(|_| (u16::from_le_bytes(seg) as u64) << 4).filter(|e| (0x500..0xa_0000).contains(e));
    let areas = ebda.map(|e| (e, (e + 1024).min(0xa_0000))).into_iter().chain(core::iter::once((0xe_0000, 0x10_0000)));
    for (lo, hi) in areas {
        let mut pa = lo;
        while pa + 20 <= hi {
            if is_rsdp(mem, pa, hi) {
                return Some(pa);
            }
            pa += 16;
        }
    }
    None
}

/// Whether a valid RSDP lies at `pa`, within the area that ends at `hi` ([`scan_bios_rsdp`]).
fn is_rsdp(mem: &impl PhysMem, pa: u64, hi: u64) -> bool {
    let sum = |b: &[u8]| b.iter().fold(0u8, |s, &x| s.wrapping_add(x));
    let mut h = [0u8; 36];
    if mem.read(pa, &mut h[..20]).is_none() || &h[..8] != b"RSD PTR " || sum(&h[..20]) != 0 {
        return false;
    }
    // Revision 2 and later: the extended structure, 36 bytes, with its own checksum.
    h[15] < 2 || (pa + 36 <= hi && mem.read(pa, &mut h).is_some() && u32::from_le_bytes([h[20], h[21], h[22], h[23]]) >= 36 && sum(&h) == 0)
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
        let (start, size, cmd) = (rd64(e)?, rd64(e + 8)?, rd64(e + 16)?);
        let mut name = [0; NAME_READ_MAX];
        let n = if cmd != 0 { BootInfo::read_name(mem, cmd, NAME_SCAN_MAX, &mut name) } else { 0 };
        // A module must end within the physical address space: one that does not (a wrapping
        // or absurd size, which made the consistency check walk 2^52 pages with every CPU
        // stopped) is dropped and counted, as with Limine.
        match start.checked_add(size).filter(|&e| e <= MAX_PHYS) {
            Some(end) => bi.push_module(start, end, &name[..n]),
            None => bi.modules_dropped += 1,
        }
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
        bi.push_mem(rd64(e)?, rd64(e + 8)?, MemKind::from_e820(rd32(e + 16)?));
    }
    bi.expand_archives(mem);
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
    bi.firmware = Firmware::Bios;
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
            2 => bi.append_loader(mem, tag + 8, size - 8)?,
            // The EFI system table pointer (32- or 64-bit): GRUB ran on UEFI.
            11 | 12 => bi.firmware = Firmware::Uefi,
            3 if size >= 16 => {
                let (s, e) = (rd32(tag + 8)? as u64, rd32(tag + 12)? as u64);
                let mut name = [0; NAME_READ_MAX];
                let n = BootInfo::read_name(mem, tag + 16, size - 16, &mut name);
                bi.push_module(s, e.max(s), &name[..n]);
            }
            6 if size >= 16 => {
                let esize = rd32(tag + 8)? as u64;
                if esize < 24 {
                    return Err(BootError::BadLength(esize));
                }
                have_mmap = true;
                let mut e = tag + 16;
                while e + esize <= tag + size {
                    bi.push_mem(rd64(e)?, rd64(e + 8)?, MemKind::from_e820(rd32(e + 16)?));
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
    bi.expand_archives(mem);
    Ok(bi)
}

/// The base revision of the Limine protocol rl4 asks for: 2, the highest Limine 8.2.0 accepts
/// (a Limine that does not accept the revision asked for leaves the tag alone, and rl4 refuses
/// to go on). Pointers in responses are HHDM addresses; the RSDP
/// address is one too up to revision 2 and physical from 3 on, so both are accepted.
pub const LIMINE_BASE_REVISION: u64 = 2;

/// What the Limine entry noted while Limine's page tables were still loaded: the answers it
/// needs at once (HHDM offset, kernel address) and where the other responses are (their HHDM
/// addresses, 0 when Limine gave none). [`parse_limine`] reads the rest through [`PhysMem`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimineHandoff {
    /// Limine accepted [`LIMINE_BASE_REVISION`].
    pub revision_supported: bool,
    /// The base revision Limine says it loaded the kernel with, if it says.
    pub loaded_revision: Option<u64>,
    pub hhdm: Option<u64>,
    /// Kernel address response: (physical base, virtual base).
    pub kernel_address: Option<(u64, u64)>,
    pub memmap: u64,
    pub modules: u64,
    pub rsdp: u64,
    /// Executable (kernel) file response: its `cmdline` is the kernel command line in Limine 8.
    pub kernel_file: u64,
    /// Executable command line response (newer Limines), preferred when present.
    pub cmdline: u64,
    pub firmware: u64,
    pub bootloader: u64,
}

/// Limine's memory map types.
pub fn limine_mem_kind(t: u64) -> MemKind {
    match t {
        0 => MemKind::Usable,
        1 => MemKind::Reserved,
        2 => MemKind::AcpiReclaimable,
        3 => MemKind::AcpiNvs,
        4 => MemKind::Defective,
        5 => MemKind::BootloaderReclaimable,
        6 => MemKind::KernelAndModules,
        7 => MemKind::Framebuffer,
        n => MemKind::Other(u32::try_from(n).unwrap_or(u32::MAX)),
    }
}

/// Highest physical address rl4 believes (52 bits, the architectural limit).
const MAX_PHYS: u64 = 1 << 52;

/// Parses Limine's responses (see [`LimineHandoff`]).
pub fn parse_limine(mem: &impl PhysMem, h: &LimineHandoff) -> Result<BootInfo, BootError> {
    if !h.revision_supported {
        return Err(BootError::UnsupportedRevision(h.loaded_revision.unwrap_or(0)));
    }
    let hhdm = h.hhdm.ok_or(BootError::Missing("higher-half direct map"))?;
    // An HHDM address back to physical; anything outside the direct map is refused.
    let phys = |va: u64| va.checked_sub(hhdm).filter(|&pa| pa < MAX_PHYS).ok_or(BootError::BadPointer(va));
    let rd64 = |a: u64| mem.u64(a).ok_or(BootError::Unreadable(a));
    let mut bi = BootInfo::new(Protocol::Limine);
    let (kernel_phys, kernel_virt) = h.kernel_address.ok_or(BootError::Missing("kernel address"))?;
    bi.limine = Some(LimineDetails {
        base_revision: h.loaded_revision.unwrap_or(LIMINE_BASE_REVISION),
        hhdm,
        kernel_phys,
        kernel_virt,
    });

    // Memory map: revision, entry_count, entries (array of pointers to base, length, type).
    if h.memmap == 0 {
        return Err(BootError::NoMemoryMap);
    }
    let resp = phys(h.memmap)?;
    bi.push_info(resp, 24);
    let count = rd64(resp + 8)?;
    if count == 0 {
        return Err(BootError::NoMemoryMap);
    }
    if count > 65536 {
        return Err(BootError::BadLength(count));
    }
    let array = phys(rd64(resp + 16)?)?;
    bi.push_info(array, count * 8);
    for i in 0..count {
        let e = phys(rd64(array + i * 8)?)?;
        bi.push_mem(rd64(e)?, rd64(e + 8)?, limine_mem_kind(rd64(e + 16)?));
    }

    // Modules: revision, module_count, modules (array of pointers to `limine_file`).
    if h.modules != 0 {
        let resp = phys(h.modules)?;
        let count = rd64(resp + 8)?;
        if count > 4096 {
            return Err(BootError::BadLength(count));
        }
        if count > 0 {
            let array = phys(rd64(resp + 16)?)?;
            for i in 0..count {
                let file = phys(rd64(array + i * 8)?)?;
                let (start, size) = (phys(rd64(file + 8)?)?, rd64(file + 16)?);
                let Some(end) = start.checked_add(size).filter(|&e| e <= MAX_PHYS) else {
                    bi.modules_dropped += 1;
                    continue;
                };
                // The name: `module_cmdline`, else the path.
                let mut name = [0; NAME_READ_MAX];
                let mut n = 0;
                for field in [32, 24] {
                    let p = rd64(file + field)?;
                    if n == 0 && p != 0 {
                        n = BootInfo::read_name(mem, phys(p)?, NAME_SCAN_MAX, &mut name);
                    }
                }
                bi.push_module(start, end, &name[..n]);
            }
        }
    }

    // Command line: the executable command line response, else the kernel file's `cmdline`.
    let cmdline = if h.cmdline != 0 {
        rd64(phys(h.cmdline)? + 8)?
    } else if h.kernel_file != 0 {
        let file = phys(rd64(phys(h.kernel_file)? + 8)?)?;
        rd64(file + 32)?
    } else {
        0
    };
    if cmdline != 0 {
        bi.read_cmdline(mem, phys(cmdline)?, usize::MAX)?;
    }

    // RSDP: an HHDM address up to base revision 2, physical from 3 on.
    if h.rsdp != 0 {
        let a = rd64(phys(h.rsdp)? + 8)?;
        bi.rsdp = match a {
            0 => None,
            a if a >= hhdm => Some(phys(a)?),
            a if a < MAX_PHYS => Some(a),
            a => return Err(BootError::BadPointer(a)),
        };
    }

    if h.firmware != 0 {
        bi.firmware = match rd64(phys(h.firmware)? + 8)? {
            0 => Firmware::Bios,
            1 | 2 => Firmware::Uefi,
            _ => Firmware::Unstated,
        };
    }
    if h.bootloader != 0 {
        let resp = phys(h.bootloader)?;
        let (name, version) = (phys(rd64(resp + 8)?)?, phys(rd64(resp + 16)?)?);
        bi.append_loader(mem, name, 32)?;
        if bi.loader_len < MAX_LOADER_NAME {
            bi.loader[bi.loader_len] = b' ';
            bi.loader_len += 1;
        }
        bi.append_loader(mem, version, 32)?;
    }
    bi.expand_archives(mem);
    Ok(bi)
}

/// Reads a `newc` cpio archive (magic `070701`) in `r` into `out`: its regular files, each
/// named by its file name. Returns (members written, members that did not fit), or `None` when
/// `r` is not a well-formed archive (no magic, a header or file past `r`'s end, no trailer).
fn read_newc(mem: &impl PhysMem, r: Range, out: &mut [Module]) -> Option<(usize, usize)> {
    let hex = |b: &[u8]| -> Option<u64> {
        let s = core::str::from_utf8(b).ok()?;
        u64::from_str_radix(s, 16).ok()
    };
    let mut at = r.start;
    let (mut count, mut extra) = (0, 0);
    loop {
        let mut h = [0u8; 110];
        if at.checked_add(110)? > r.end {
            return None;
        }
        mem.read(at, &mut h)?;
        if &h[..6] != b"070701" {
            return None;
        }
        let mode = hex(&h[14..22])?;
        let filesize = hex(&h[54..62])?;
        let namesize = hex(&h[94..102])?;
        // The name (`namesize` counts its NUL) lies in the archive, and is read there: its
        // last bytes, where the file name is (one longer than the buffer was refused, and the
        // whole archive with it, before the thirty-fifth session; and the name was read before
        // its end was checked against the archive's).
        let names_end = (at + 110).checked_add(namesize).filter(|&e| namesize > 0 && e <= r.end)?;
        let kept = (namesize - 1).min(NAME_READ_MAX as u64);
        let mut name = [0u8; NAME_READ_MAX];
        mem.read(names_end - 1 - kept, &mut name[..kept as usize])?;
        let name = &name[..kept as usize];
        let data = names_end.next_multiple_of(4);
        let end = data.checked_add(filesize)?;
        if end > r.end {
            return None;
        }
        if name == b"TRAILER!!!" {
            return Some((count, extra));
        }
        // Regular files only (directories such as "." are skipped).
        if mode & 0o170000 == 0o100000 {
            if count < out.len() {
                out[count] = Module::new(Range::new(data, end), name);
                count += 1;
            } else {
                extra += 1;
            }
        }
        at = end.next_multiple_of(4);
    }
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

    /// A module whose end wraps or lies past the 52-bit physical address space is dropped and
    /// counted, the rest of the boot information kept (before the twenty-first session PVH's end
    /// saturated at 2^64, and the consistency check walked the module's pages, 2^52 of them,
    /// with every CPU stopped).
    #[test]
    fn pvh_drops_a_module_past_the_physical_address_space() {
        for size in [u64::MAX, u64::MAX - 0x20_0000, (1 << 52) - 0x20_0000 + 1] {
            let mut m = pvh_image(1);
            m.put64(0x1108, size);
            let bi = parse_pvh(&m, 0x1000).unwrap();
            assert!(bi.modules().is_empty(), "size {size:#x}");
            assert_eq!(bi.modules_dropped, 1);
            assert!(!bi.memory_map().is_empty());
        }
        let mut m = pvh_image(1);
        m.put64(0x1108, (1 << 52) - 0x20_0000);
        assert_eq!(parse_pvh(&m, 0x1000).unwrap().modules()[0].range, Range::new(0x20_0000, 1 << 52));
    }

    /// An RSDP (revision 0, or 2 with its extended checksum) in the EBDA's first KiB or the
    /// BIOS area is found; one with a bad checksum, off a 16-byte boundary or past the EBDA's
    /// first KiB is not.
    #[test]
    fn the_bios_area_scan_finds_a_valid_rsdp_only() {
        fn rsdp(rev: u8, good: bool) -> Vec<u8> {
            let mut r = vec![0u8; if rev >= 2 { 36 } else { 20 }];
            r[..8].copy_from_slice(b"RSD PTR ");
            r[9..15].copy_from_slice(b"BOCHS ");
            r[15] = rev;
            r[16..20].copy_from_slice(&0x7fe_0000u32.to_le_bytes());
            let fix = |r: &mut Vec<u8>, at: usize, n: usize| {
                let s = r[..n].iter().fold(0u8, |s, &x| s.wrapping_add(x));
                r[at] = r[at].wrapping_sub(s);
            };
            fix(&mut r, 8, 20);
            if rev >= 2 {
                r[20..24].copy_from_slice(&36u32.to_le_bytes());
                fix(&mut r, 32, 36);
            }
            if !good {
                r[19] ^= 1;
            }
            r
        }
        let image = |ebda_seg: u16, at: u64, r: &[u8]| {
            let mut m = Mem { base: 0, bytes: vec![0; 0x10_0000] };
            m.put(0x40e, &ebda_seg.to_le_bytes());
            m.put(at, r);
            m
        };
        assert_eq!(scan_bios_rsdp(&image(0x9fc0, 0xf_5250, &rsdp(0, true))), Some(0xf_5250));
        assert_eq!(scan_bios_rsdp(&image(0x9fc0, 0xe_0010, &rsdp(2, true))), Some(0xe_0010));
        assert_eq!(scan_bios_rsdp(&image(0x9fc0, 0x9_fc40, &rsdp(2, true))), Some(0x9_fc40));
        assert_eq!(scan_bios_rsdp(&image(0x9fc0, 0xf_5250, &rsdp(0, false))), None);
        assert_eq!(scan_bios_rsdp(&image(0x9fc0, 0xf_5258, &rsdp(0, true))), None);
        assert_eq!(scan_bios_rsdp(&image(0x9000, 0x9_0400, &rsdp(0, true))), None);
        let mut bad_ext = rsdp(2, true);
        bad_ext[33] ^= 1;
        assert_eq!(scan_bios_rsdp(&image(0x9fc0, 0xf_0000, &bad_ext)), None);
        // Nothing readable: nothing found.
        assert_eq!(scan_bios_rsdp(&Mem { base: 0x20_0000, bytes: vec![] }), None);
        // An EBDA segment of 0 is no EBDA (the interrupt table is not scanned).
        assert_eq!(scan_bios_rsdp(&image(0, 0x40, &rsdp(0, true))), None);
        // An extended one whose length is under 36, or that runs past the area's end.
        let mut short = rsdp(2, true);
        short[20..24].copy_from_slice(&20u32.to_le_bytes());
        short[32] = short[32].wrapping_add(16); // the extended checksum again (20 is 16 less than 36)
        assert_eq!(scan_bios_rsdp(&image(0x9fc0, 0xf_0000, &short)), None);
        let mut m = image(0x9fc0, 0xf_ffe0, &rsdp(2, true)[..20]);
        m.put(0x10_0000, &[0; 16]);
        assert_eq!(scan_bios_rsdp(&m), None, "a revision-2 one past 0x100000");
        assert_eq!(scan_bios_rsdp(&image(0x9fc0, 0xf_ffe0, &rsdp(0, true))), Some(0xf_ffe0));
        // The EBDA first, when both hold one.
        let mut both = image(0x9fc0, 0xe_0000, &rsdp(0, true));
        both.put(0x9_fc10, &rsdp(0, true));
        assert_eq!(scan_bios_rsdp(&both), Some(0x9_fc10));
    }

    #[test]
    fn pvh_parses_everything() {
        let bi = parse_pvh(&pvh_image(1), 0x1000).unwrap();
        assert_eq!(bi.protocol, Protocol::Pvh);
        assert_eq!(bi.cmdline(), "run=idle hz=50");
        assert_eq!(bi.rsdp, Some(0xf_5a00));
        assert_eq!(bi.modules().iter().map(|m| m.range).collect::<Vec<_>>(), [Range::new(0x20_0000, 0x20_5000)]);
        let mm = bi.memory_map();
        assert_eq!(mm.len(), 3);
        assert_eq!(mm[1], MemEntry { range: Range::new(0x9fc00, 0xa0000), kind: MemKind::Reserved });
        assert_eq!(mm[2].kind, MemKind::Usable);
        // start_info, modlist, module, cmdline, memmap are all recorded for reservation.
        for pa in [0x1000, 0x1100, 0x20_0000, 0x1200, 0x1300] {
            assert!(bi.info_ranges().iter().any(|r| r.start <= pa && pa < r.end), "{pa:#x}");
        }
    }

    /// Memory-map entries past what the direct map covers (64 TiB), or that wrap, are clipped
    /// or left out: one ending above 2^47 sized the direct map's top-level slots past the table.
    #[test]
    fn memory_beyond_the_direct_map_is_left_out() {
        let mut m = pvh_image(1);
        m.put32(0x1030, 5);
        for (i, (a, l, t)) in [(0x3f_ffff_e000_0000u64, 0x4000_0000u64, 2u32), (u64::MAX - 0xfff, 0x2000, 1)].iter().enumerate() {
            let e = 0x1300 + (3 + i) as u64 * 24;
            m.put64(e, *a);
            m.put64(e + 8, *l);
            m.put32(e + 16, *t);
        }
        // An entry across the limit keeps its part below it.
        let mut m2 = pvh_image(1);
        m2.put32(0x1030, 4);
        m2.put64(0x1300 + 3 * 24, crate::layout::DIRECT_MAP_SIZE - 0x1000);
        m2.put64(0x1300 + 3 * 24 + 8, 0x10_0000);
        m2.put32(0x1300 + 3 * 24 + 16, 2);
        let bi = parse_pvh(&m, 0x1000).unwrap();
        assert_eq!(bi.memory_map().len(), 3);
        assert!(bi.memory_map().iter().all(|e| e.range.end <= crate::layout::DIRECT_MAP_SIZE));
        let bi = parse_pvh(&m2, 0x1000).unwrap();
        assert_eq!(bi.memory_map()[3].range, Range::new(crate::layout::DIRECT_MAP_SIZE - 0x1000, crate::layout::DIRECT_MAP_SIZE));
    }

    /// A full table gives up its smallest usable ranges, never the large one: 123 one-page usable
    /// pieces with gaps (126 entries with the image's three), 64 GiB above 4 GiB, then reserved
    /// entries and more small usable ones (before the twenty-first session a reserved extra
    /// took the last usable one's place: the 64 GiB).
    #[test]
    fn a_full_memory_map_gives_up_its_smallest_usable_ranges() {
        let mut m = pvh_image(1);
        let mut entries: Vec<(u64, u64, u32)> = (0..123u64).map(|i| (0x800_0000 + i * 0x2000, 0x1000, 1)).collect();
        entries.push((0x1_0000_0000, 64 << 30, 1));
        entries.push((0xfd_0000_0000, 0x300_0000_0000 - 0xfd_0000_0000, 2));
        entries.push((0x380_0000_0000, 0x1000, 2));
        entries.push((0x400_0000_0000, 0x4000, 1)); // a usable piece larger than the one-page ones
        entries.push((0x500_0000_0000, 0x1000, 1)); // not larger: dropped itself
        m.put32(0x1030, 3 + entries.len() as u32);
        for (i, (a, l, t)) in entries.iter().enumerate() {
            let e = 0x1300 + (3 + i) as u64 * 24;
            m.put64(e, *a);
            m.put64(e + 8, *l);
            m.put32(e + 16, *t);
        }
        let bi = parse_pvh(&m, 0x1000).unwrap();
        let map = bi.memory_map();
        assert_eq!(map.len(), MAX_MEMMAP);
        assert_eq!(bi.memmap_dropped, 3 + entries.len() - MAX_MEMMAP);
        let has = |a: u64, l: u64, k: MemKind| map.iter().any(|e| e.kind == k && e.range == Range::new(a, a + l));
        assert!(has(0x1_0000_0000, 64 << 30, MemKind::Usable), "the 64 GiB range was given up");
        assert!(has(0xfd_0000_0000, 0x300_0000_0000 - 0xfd_0000_0000, MemKind::Reserved));
        assert!(has(0x380_0000_0000, 0x1000, MemKind::Reserved));
        assert!(has(0x400_0000_0000, 0x4000, MemKind::Usable));
        assert!(!has(0x500_0000_0000, 0x1000, MemKind::Usable));
        let usable: u64 = map.iter().filter(|e| e.kind == MemKind::Usable).map(|e| e.range.len()).sum();
        assert!(usable >= (64 << 30) + 0x4000, "usable {usable:#x}");
        // The low memory (the start page's) stays although smaller than what went.
        assert!(has(0, 0x9fc00, MemKind::Usable));
    }

    /// A map longer than the table keeps what the kernel must not lose: adjacent entries of one
    /// kind merge, and once the table is full a reserved entry takes a usable one's place (a
    /// dropped reserved range next to kept usable memory could be handed out; a dropped ACPI
    /// range would be left out of the direct map).
    #[test]
    fn a_long_memory_map_keeps_its_reserved_entries() {
        let mut m = pvh_image(1);
        let n = 3 + 200u32;
        m.put32(0x1030, n);
        for i in 0..200u64 {
            let e = 0x1300 + (3 + i) * 24;
            m.put64(e, 0x1_0000_0000 + i * 0x20_0000);
            m.put64(e + 8, 0x10_0000);
            m.put32(e + 16, if i == 170 { 4 } else { 1 });
        }
        let bi = parse_pvh(&m, 0x1000).unwrap();
        assert_eq!(bi.memory_map().len(), MAX_MEMMAP);
        assert_eq!(bi.memmap_dropped, 200 + 3 - MAX_MEMMAP);
        let nvs: Vec<_> = bi.memory_map().iter().filter(|e| e.kind == MemKind::AcpiNvs).collect();
        assert_eq!(nvs.len(), 1);
        assert_eq!(nvs[0].range.start, 0x1_0000_0000 + 170 * 0x20_0000);
        assert!(bi.memory_map().iter().any(|e| e.kind == MemKind::Reserved && e.range == Range::new(0x9fc00, 0xa0000)));
        // Two adjacent usable pieces are one entry; a reserved one after them is its own.
        let mut m = pvh_image(1);
        m.put32(0x1030, 6);
        for (i, (a, l, t)) in [(0x1_0000_0000u64, 0x1000u64, 1u32), (0x1_0000_1000, 0x2000, 1), (0x1_0000_3000, 0x1000, 2)].iter().enumerate() {
            let e = 0x1300 + (3 + i) as u64 * 24;
            m.put64(e, *a);
            m.put64(e + 8, *l);
            m.put32(e + 16, *t);
        }
        let bi = parse_pvh(&m, 0x1000).unwrap();
        assert_eq!(bi.memory_map().len(), 5);
        assert_eq!(bi.memory_map()[3].range, Range::new(0x1_0000_0000, 0x1_0000_3000));
        assert_eq!(bi.memory_map()[4].kind, MemKind::Reserved);
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

    /// A command line with a byte that is not UTF-8: it ends there, and where is known (the
    /// kernel's boot line says it; before the thirty-fourth session the rest went silently).
    #[test]
    fn a_command_line_byte_not_utf8_ends_it_and_says_where() {
        let mut bi = BootInfo::new(Protocol::Multiboot2);
        let line = b"hz=1000 \xff -- test=all";
        bi.cmdline[..line.len()].copy_from_slice(line);
        bi.cmdline_len = line.len();
        assert_eq!((bi.cmdline(), bi.cmdline_cut()), ("hz=1000 ", Some(8)));
        let line = b"hz=1000 -- test=all";
        bi.cmdline[..line.len()].copy_from_slice(line);
        bi.cmdline_len = line.len();
        assert_eq!((bi.cmdline(), bi.cmdline_cut()), ("hz=1000 -- test=all", None));
        // A character the length limit cut in two is no byte that is not UTF-8.
        let line = "name=é".as_bytes();
        bi.cmdline[..line.len() - 1].copy_from_slice(&line[..line.len() - 1]);
        bi.cmdline_len = line.len() - 1;
        assert_eq!((bi.cmdline(), bi.cmdline_cut()), ("name=", None));
    }

    #[test]
    fn multiboot2_parses_tags_and_prefers_acpi2_rsdp() {
        let m = mb2_image();
        let bi = parse_multiboot2(&m, MULTIBOOT2_MAGIC, 0x10000).unwrap();
        assert_eq!(bi.protocol, Protocol::Multiboot2);
        assert_eq!(bi.cmdline(), "maxcpus=2 bogus");
        assert_eq!(bi.modules().iter().map(|m| m.range).collect::<Vec<_>>(), [Range::new(0x30_0000, 0x30_2000)]);
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

    const HHDM: u64 = 0xffff_8000_0000_0000;

    /// Limine's responses as Limine 8.2.0 lays them out, at physical 0x1000.., pointers as HHDM
    /// addresses.
    fn limine_image() -> (Mem, LimineHandoff) {
        let mut m = Mem { base: 0x1000, bytes: vec![] };
        // memory map response and its three entries
        m.put64(0x1000, 0);
        m.put64(0x1008, 3);
        m.put64(0x1010, HHDM + 0x1100);
        for (i, (base, len, ty)) in [(0x1000u64, 0x9e000u64, 0u64), (0x10_0000, 0x20_0000, 5), (0x30_0000, 0x40_0000, 6)].iter().enumerate() {
            let e = 0x1200 + i as u64 * 24;
            m.put64(0x1100 + i as u64 * 8, HHDM + e);
            m.put64(e, *base);
            m.put64(e + 8, *len);
            m.put64(e + 16, *ty);
        }
        // modules response: one module
        m.put64(0x1300, 1);
        m.put64(0x1308, 1);
        m.put64(0x1310, HHDM + 0x1340);
        m.put64(0x1340, HHDM + 0x1400);
        m.put64(0x1408, HHDM + 0x20_0000);
        m.put64(0x1410, 0x3000);
        // kernel file response: its cmdline
        m.put64(0x1508, HHDM + 0x1600);
        m.put64(0x1620, HHDM + 0x1700);
        m.put(0x1700, b"run=boot maxcpus=2\0");
        // RSDP (an HHDM address up to base revision 2), firmware type (UEFI 64), boot loader name
        m.put64(0x1808, HHDM + 0xf_5250);
        m.put64(0x1908, 2);
        m.put64(0x1a08, HHDM + 0x1b00);
        m.put64(0x1a10, HHDM + 0x1b20);
        m.put(0x1b00, b"Limine\0");
        m.put(0x1b20, b"8.2.0\0");
        m.put64(0x1c00, 0);
        let h = LimineHandoff {
            revision_supported: true,
            loaded_revision: Some(2),
            hhdm: Some(HHDM),
            kernel_address: Some((0x7e0_0000, 0xffff_ffff_8010_9000)),
            memmap: HHDM + 0x1000,
            modules: HHDM + 0x1300,
            rsdp: HHDM + 0x1800,
            kernel_file: HHDM + 0x1500,
            cmdline: 0,
            firmware: HHDM + 0x1900,
            bootloader: HHDM + 0x1a00,
        };
        (m, h)
    }

    #[test]
    fn limine_parses_every_response() {
        let (m, h) = limine_image();
        let bi = parse_limine(&m, &h).unwrap();
        assert_eq!(bi.protocol, Protocol::Limine);
        assert_eq!(bi.firmware, Firmware::Uefi);
        assert_eq!(bi.loader(), "Limine 8.2.0");
        assert_eq!(bi.cmdline(), "run=boot maxcpus=2");
        assert_eq!(bi.rsdp, Some(0xf_5250));
        assert_eq!(bi.modules().iter().map(|m| m.range).collect::<Vec<_>>(), [Range::new(0x20_0000, 0x20_3000)]);
        let kinds: Vec<_> = bi.memory_map().iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [MemKind::Usable, MemKind::BootloaderReclaimable, MemKind::KernelAndModules]);
        assert_eq!(bi.memory_map()[0].range, Range::new(0x1000, 0x9f000));
        assert_eq!(
            bi.limine,
            Some(LimineDetails { base_revision: 2, hhdm: HHDM, kernel_phys: 0x7e0_0000, kernel_virt: 0xffff_ffff_8010_9000 })
        );
        // The module counts as boot information: the frame allocator must never hand it out.
        assert!(bi.info_ranges().iter().any(|r| r.start <= 0x20_0000 && 0x20_2fff < r.end));
    }

    #[test]
    fn limine_prefers_the_cmdline_response_and_takes_a_physical_rsdp() {
        let (mut m, mut h) = limine_image();
        m.put64(0x1c08, HHDM + 0x1d00);
        m.put(0x1d00, b"hz=250\0");
        h.cmdline = HHDM + 0x1c00;
        m.put64(0x1808, 0xf_5250); // base revision 3 and later: physical
        let bi = parse_limine(&m, &h).unwrap();
        assert_eq!(bi.cmdline(), "hz=250");
        assert_eq!(bi.rsdp, Some(0xf_5250));
        // Without firmware, boot loader, modules, RSDP or command line responses: still a boot.
        let h = LimineHandoff { modules: 0, rsdp: 0, kernel_file: 0, cmdline: 0, firmware: 0, bootloader: 0, ..h };
        let bi = parse_limine(&m, &h).unwrap();
        assert_eq!((bi.firmware, bi.loader(), bi.cmdline(), bi.rsdp, bi.modules().len()), (Firmware::Unstated, "", "", None, 0));
    }

    #[test]
    fn limine_rejects_what_it_cannot_trust() {
        let (mut m, h) = limine_image();
        let no = |h: LimineHandoff, m: &Mem| parse_limine(m, &h).unwrap_err();
        assert_eq!(no(LimineHandoff { revision_supported: false, loaded_revision: Some(2), ..h }, &m), BootError::UnsupportedRevision(2));
        assert_eq!(no(LimineHandoff { hhdm: None, ..h }, &m), BootError::Missing("higher-half direct map"));
        assert_eq!(no(LimineHandoff { kernel_address: None, ..h }, &m), BootError::Missing("kernel address"));
        assert_eq!(no(LimineHandoff { memmap: 0, ..h }, &m), BootError::NoMemoryMap);
        // A pointer that is not in the direct map, or an RSDP past the 52-bit limit.
        assert_eq!(no(LimineHandoff { memmap: 0x1000, ..h }, &m), BootError::BadPointer(0x1000));
        assert_eq!(no(LimineHandoff { rsdp: 0x1800, ..h }, &m), BootError::BadPointer(0x1800));
        let mut bad_rsdp = limine_image().0;
        bad_rsdp.put64(0x1808, 1 << 60); // neither in the HHDM nor a physical address
        assert_eq!(no(h, &bad_rsdp), BootError::BadPointer(1 << 60));
        // An entry pointer into memory that is not there.
        m.put64(0x1108, HHDM + 0xdead_0000);
        assert_eq!(no(h, &m), BootError::Unreadable(0xdead_0000));
        let (mut m, h) = limine_image();
        m.put64(0x1008, 1 << 20);
        assert_eq!(no(h, &m), BootError::BadLength(1 << 20));
        // A module whose size runs past the physical address space is dropped and counted (as
        // PVH's); the boot goes on.
        let (mut m, h) = limine_image();
        m.put64(0x1410, u64::MAX - 0x1000);
        let bi = parse_limine(&m, &h).unwrap();
        assert_eq!((bi.modules().len(), bi.modules_dropped), (0, 1));
    }

    #[test]
    fn multiboot2_tells_uefi_from_bios_and_names_the_loader() {
        let m = mb2_image();
        let bi = parse_multiboot2(&m, MULTIBOOT2_MAGIC, 0x10000).unwrap();
        assert_eq!((bi.firmware, bi.loader()), (Firmware::Bios, ""));
        // Append a loader name tag and an EFI 64-bit system table tag before the end tag.
        let mut m = mb2_image();
        let end = 0x10000 + m.bytes.len() as u64 - 8;
        m.put32(end, 2);
        m.put32(end + 4, 8 + 10);
        m.put(end + 8, b"GRUB 2.06\0");
        m.put32(end + 24, 12);
        m.put32(end + 28, 16);
        m.put64(end + 32, 0x7f00_0000);
        m.put32(end + 40, 0);
        m.put32(end + 44, 8);
        m.put32(0x10000, (end + 48 - 0x10000) as u32);
        let bi = parse_multiboot2(&m, MULTIBOOT2_MAGIC, 0x10000).unwrap();
        assert_eq!((bi.firmware, bi.loader()), (Firmware::Uefi, "GRUB 2.06"));
    }

    /// A `newc` archive of `files` (name, bytes), with a "." directory entry first.
    fn newc(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        let mut entry = |name: &str, mode: u32, data: &[u8]| {
            let h = format!("070701{:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}", 1, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0);
            v.extend_from_slice(h.as_bytes());
            v.extend_from_slice(name.as_bytes());
            v.push(0);
            while v.len() % 4 != 0 {
                v.push(0);
            }
            v.extend_from_slice(data);
            while v.len() % 4 != 0 {
                v.push(0);
            }
        };
        entry(".", 0o040755, b"");
        for (n, d) in files {
            entry(n, 0o100644, d);
        }
        entry("TRAILER!!!", 0, b"");
        v
    }

    #[test]
    fn module_names_are_cleaned() {
        let r = Range::new(0, 0);
        assert_eq!(Module::new(r, b"/boot/echo.elf").name(), "echo");
        assert_eq!(Module::new(r, b"/boot/echo.elf  client\0junk").name(), "client");
        assert_eq!(Module::new(r, b"a-very-long-module-name.elf").name(), "a-very-long-module-name");
        assert_eq!(Module::new(r, b"/boot/an-even-longer-module-name-than-that.elf").name(), "an-even-longer-module-name-than");
        // Cut within a character: the whole characters before it.
        assert_eq!(Module::new(r, "module-name-of-thirty-bytes-\u{e9}\u{e9}".as_bytes()).name(), "module-name-of-thirty-bytes-\u{e9}");
        assert_eq!(Module::new(r, b"").name(), "");
    }

    #[test]
    fn newc_archive_becomes_one_module_per_file() {
        let mut m = pvh_image(1);
        let ar = newc(&[("echo.elf", b"ECHO!"), ("client", &[7u8; 4096])]);
        m.put(0x20_0000, &ar);
        m.put64(0x1108, ar.len() as u64);
        let bi = parse_pvh(&m, 0x1000).unwrap();
        let mods: Vec<_> = bi.modules().iter().map(|x| (x.name().to_string(), x.range.len())).collect();
        assert_eq!(mods, [("echo".to_string(), 5), ("client".to_string(), 4096)]);
        let mut b = [0u8; 5];
        m.read(bi.modules()[0].range.start, &mut b).unwrap();
        assert_eq!(&b, b"ECHO!");
        // The whole archive stays reserved.
        assert!(bi.info_ranges().iter().any(|r| r.start == 0x20_0000 && r.len() == ar.len() as u64));
    }

    /// An archive the parser cannot read (Limine loads modules above 4 GiB, beyond the boot page
    /// tables) stays one module, marked, and is expanded once the kernel can read it (before the
    /// fifteenth session it was handed to the root task whole).
    #[test]
    fn archive_unreadable_at_parse_is_expanded_later() {
        struct Below<'a>(&'a Mem, u64);
        impl PhysMem for Below<'_> {
            fn read(&self, pa: u64, buf: &mut [u8]) -> Option<()> {
                (pa + buf.len() as u64 <= self.1).then_some(())?;
                self.0.read(pa, buf)
            }
        }
        let mut m = pvh_image(1);
        let ar = newc(&[("echo.elf", b"ECHO!"), ("client", &[7u8; 64])]);
        m.put(0x20_0000, &ar);
        m.put64(0x1108, ar.len() as u64);
        let mut bi = parse_pvh(&Below(&m, 0x20_0000), 0x1000).unwrap();
        assert_eq!(bi.modules().len(), 1);
        assert!(bi.modules()[0].unread);
        // Still unreadable: kept, still marked.
        assert_eq!(bi.expand_unread_archives(&Below(&m, 0x20_0000)), (1, 1));
        assert_eq!(bi.modules().len(), 1);
        assert_eq!(bi.expand_unread_archives(&m), (1, 0));
        let mods: Vec<_> = bi.modules().iter().map(|x| (x.name().to_string(), x.range.len(), x.unread)).collect();
        assert_eq!(mods, [("echo".to_string(), 5, false), ("client".to_string(), 64, false)]);
        assert_eq!(bi.expand_unread_archives(&m), (0, 0));
        // An archive whose start can be read but not its end (it crosses the limit): unread too.
        let mut bi = parse_pvh(&Below(&m, 0x20_0000 + ar.len() as u64 - 1), 0x1000).unwrap();
        assert!(bi.modules().len() == 1 && bi.modules()[0].unread);
        assert_eq!(bi.expand_unread_archives(&m), (1, 0));
        assert_eq!(bi.modules().len(), 2);
    }

    #[test]
    fn malformed_newc_archive_stays_one_module() {
        let mut m = pvh_image(1);
        let ar = newc(&[("echo", b"ECHO!")]);
        // Cut before the trailer: not an archive any more, the module stays whole.
        let cut = ar.len() - 120;
        m.put(0x20_0000, &ar);
        m.put64(0x1108, cut as u64);
        let bi = parse_pvh(&m, 0x1000).unwrap();
        assert_eq!(bi.modules().len(), 1);
        assert_eq!(bi.modules()[0].range.len(), cut as u64);
    }

    /// A module string, path or archive member name longer than the bytes read of it is named
    /// by its end, where the name is (before the thirty-fifth session by its first 256 bytes,
    /// and an archive with such a member was left whole).
    #[test]
    fn long_names_are_read_from_their_end() {
        let long = format!("{}/echo.elf", "/a-directory-with-a-long-name".repeat(12));
        assert!(long.len() > NAME_READ_MAX);
        // PVH: the module's command line.
        let mut m = pvh_image(1);
        m.put64(0x1110, 0x1400);
        m.put(0x1400, format!("{long} client\0").as_bytes());
        assert_eq!(parse_pvh(&m, 0x1000).unwrap().modules()[0].name(), "client");
        m.put(0x1400, format!("{long}\0").as_bytes());
        assert_eq!(parse_pvh(&m, 0x1000).unwrap().modules()[0].name(), "echo");
        // A string with no end within the bytes looked at: the last of those.
        m.put(0x1400, &[b'x'; 2 * NAME_SCAN_MAX as usize]);
        assert_eq!(parse_pvh(&m, 0x1000).unwrap().modules()[0].name(), "x".repeat(MODULE_NAME_MAX));
        // A newc member.
        let mut m = pvh_image(1);
        let ar = newc(&[(&long, b"ECHO!"), ("client", b"C")]);
        m.put(0x20_0000, &ar);
        m.put64(0x1108, ar.len() as u64);
        let names: Vec<_> = parse_pvh(&m, 0x1000).unwrap().modules().iter().map(|x| x.name().to_string()).collect();
        assert_eq!(names, ["echo", "client"]);
        // Multiboot2: the module string.
        let m = multiboot2_one_module(format!("{long} server\0").as_bytes());
        assert_eq!(parse_multiboot2(&m, MULTIBOOT2_MAGIC, 0x1000).unwrap().modules()[0].name(), "server");
    }

    /// An archive header whose name would run past the archive's end: the archive stays one
    /// module, and nothing past its end is read (before the thirty-fifth session the name was
    /// read first, up to 255 bytes past the module, and checked after).
    #[test]
    fn newc_names_past_the_end_are_not_read() {
        struct Within<'a>(&'a Mem, u64, core::cell::Cell<bool>);
        impl PhysMem for Within<'_> {
            fn read(&self, pa: u64, buf: &mut [u8]) -> Option<()> {
                if pa >= 0x20_0000 && pa + buf.len() as u64 > self.1 {
                    self.2.set(true);
                }
                self.0.read(pa, buf)
            }
        }
        let mut m = pvh_image(1);
        let mut ar = newc(&[("echo", b"ECHO!")]);
        // The trailer's header: its name size made 255, the module ending with its name.
        let trailer = ar.len() - 124;
        assert_eq!(&ar[trailer..trailer + 6], b"070701");
        ar[trailer + 94..trailer + 102].copy_from_slice(b"000000ff");
        let len = trailer as u64 + 110 + 11;
        m.put(0x20_0000, &ar);
        m.put(0x20_0000 + ar.len() as u64, &[0u8; 512]);
        m.put64(0x1108, len);
        let mem = Within(&m, 0x20_0000 + len, core::cell::Cell::new(false));
        let bi = parse_pvh(&mem, 0x1000).unwrap();
        assert_eq!((bi.modules().len(), bi.modules()[0].range.len()), (1, len));
        assert!(!mem.2.get(), "read past the archive's end");
    }

    /// PVH with more modules than are kept: the dropped ones take no boot-information slot, and
    /// the command line and memory map read after them stay reserved.
    #[test]
    fn dropped_modules_leave_the_later_structures_reserved() {
        let mut m = pvh_image(1);
        let n = MAX_MODULES as u64 + 4;
        m.put32(0x100c, n as u32);
        m.put64(0x1010, 0x2000);
        for i in 0..n {
            m.put64(0x2000 + i * 32, 0x20_0000 + i * 0x1000);
            m.put64(0x2008 + i * 32, 0x100);
            m.put64(0x2010 + i * 32, 0);
        }
        let bi = parse_pvh(&m, 0x1000).unwrap();
        assert_eq!((bi.modules().len(), bi.modules_dropped), (MAX_MODULES, 4));
        let has = |start: u64, len: u64| bi.info_ranges().iter().any(|r| r.start == start && r.len() == len);
        assert!(has(0x1300, 3 * 24), "the memory map");
        assert!(has(0x1200, 15), "the command line");
        assert!(has(0x2000, n * 32), "the module list");
        assert!(has(0x20_0000 + (MAX_MODULES as u64 - 1) * 0x1000, 0x100), "the last module kept");
        assert!(!has(0x20_0000 + MAX_MODULES as u64 * 0x1000, 0x100), "a dropped module");
    }

    /// A module the memory map gives to something other than memory (a device's registers) is
    /// not probed for an archive: none of its bytes is read, and it stays one module.
    #[test]
    fn a_module_outside_memory_is_not_read() {
        struct Watch<'a>(&'a Mem, core::cell::Cell<bool>);
        impl PhysMem for Watch<'_> {
            fn read(&self, pa: u64, buf: &mut [u8]) -> Option<()> {
                if pa + buf.len() as u64 > 0x800_0000 {
                    self.1.set(true);
                }
                self.0.read(pa, buf)
            }
        }
        let mut m = pvh_image(1);
        let ar = newc(&[("echo.elf", b"ECHO!")]);
        // The module just past the map's last usable byte (0x7ee_0000 + 1 MiB), over a range
        // the map reserves.
        m.put(0x800_0000, &ar);
        m.put64(0x1100, 0x800_0000);
        m.put64(0x1108, ar.len() as u64);
        m.put32(0x1030, 4);
        m.put64(0x1348, 0x800_0000);
        m.put64(0x1350, 0x10_0000);
        m.put32(0x1358, 2);
        let w = Watch(&m, core::cell::Cell::new(false));
        let mut bi = parse_pvh(&w, 0x1000).unwrap();
        assert!(!w.1.get(), "a byte of the reserved range was read");
        assert_eq!(bi.modules().len(), 1);
        assert!(!bi.in_memory(bi.modules()[0].range));
        assert!(!bi.modules()[0].unread);
        assert_eq!(bi.expand_unread_archives(&w), (0, 0));
        assert!(!w.1.get());
        // The same archive in usable memory is read and expanded.
        m.put32(0x1358, 1);
        let bi = parse_pvh(&m, 0x1000).unwrap();
        assert!(bi.in_memory(bi.modules()[0].range));
        assert_eq!(bi.modules()[0].name(), "echo");
        // A map that lost entries: only a range it gives to something else is refused.
        let mut bi = parse_pvh(&m, 0x1000).unwrap();
        bi.memmap_dropped = 1;
        assert!(bi.in_memory(Range::new(0x1_0000_0000, 0x1_0000_1000)));
        assert!(!bi.in_memory(Range::new(0x9f000, 0xa0000)));
    }

    /// Multiboot2 boot information at 0x1000 with one module (at 0x30_0000, 8 KiB, passed with
    /// `string`), a memory map and the end tag.
    fn multiboot2_one_module(string: &[u8]) -> Mem {
        let mut m = Mem { base: 0x1000, bytes: vec![] };
        let size = 16 + string.len() as u64;
        m.put32(0x1008, 3);
        m.put32(0x100c, size as u32);
        m.put32(0x1010, 0x30_0000);
        m.put32(0x1014, 0x30_2000);
        m.put(0x1018, string);
        let mut t = (0x1008 + size).next_multiple_of(8);
        m.put32(t, 6);
        m.put32(t + 4, 16 + 24);
        m.put32(t + 8, 24);
        m.put64(t + 16, 0x10_0000);
        m.put64(t + 24, 0x100_0000);
        m.put32(t + 32, 1);
        t += 40;
        m.put32(t, 0);
        m.put32(t + 4, 8);
        m.put32(0x1000, (t + 8 - 0x1000) as u32);
        m
    }

    #[test]
    fn multiboot2_module_string_names_the_module() {
        let m = multiboot2_one_module(b"/boot/echo.elf echo\0");
        let bi = parse_multiboot2(&m, MULTIBOOT2_MAGIC, 0x1000).unwrap();
        assert_eq!(bi.modules()[0].name(), "echo");
    }

}
