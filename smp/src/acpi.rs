//! ACPI: from the RSDP to the MADT.
//!
//! [`table_ranges`] walks RSDP → RSDT/XSDT → every table header (plus the FACS and DSDT that the
//! FADT points to) with nothing but a physical-memory reader, so it can run before the kernel has
//! a heap: its ranges are taken out of the frame allocator. [`discover`] then reads the MADT
//! (checked entry by entry) and returns the processors, IOAPICs and interrupt source overrides,
//! and from the FADT and the HPET table the timers the firmware describes (to measure the TSC
//! against where no PC/AT PIT is promised, as under UEFI).
//! Both are generic over how physical memory is reached, so they are tested on the host against
//! hand-built tables.
use ::acpi::address::AddressSpace;
use ::acpi::sdt::fadt::Fadt;
use ::acpi::{AcpiError, Handler};
use alloc::vec::Vec;
use rl4_arch::bootinfo::PhysMem;
use rl4_core::memmap::Range;

use crate::madt::CpuEntry;

pub use ::acpi::Handler as AcpiHandler;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    pub id: u8,
    pub address: u32,
    pub gsi_base: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqOverride {
    pub bus: u8,
    pub irq: u8,
    pub gsi: u32,
    /// MPS INTI flags: polarity in bits 0..1, trigger mode in bits 2..3.
    pub flags: u16,
}

impl IrqOverride {
    pub fn polarity(&self) -> &'static str {
        match self.flags & 3 {
            0 => "bus default",
            1 => "active high",
            3 => "active low",
            _ => "reserved",
        }
    }
    pub fn trigger(&self) -> &'static str {
        match (self.flags >> 2) & 3 {
            0 => "bus default",
            1 => "edge",
            3 => "level",
            _ => "reserved",
        }
    }
}

/// The ACPI power-management timer (3.579545 MHz), from the FADT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmTimer {
    /// Its I/O port (a PM timer in memory space is not used).
    pub port: u16,
    /// 32 bits wide (FADT flag TMR_VAL_EXT), else 24.
    pub bits32: bool,
}

/// What the MADT says about the machine's interrupt controllers and processors, and what the
/// FADT and HPET table say about its timers.
#[derive(Clone, Debug, Default)]
pub struct Platform {
    pub rsdp_revision: u8,
    /// Physical address of the local APICs' registers (after any 64-bit override).
    pub lapic_address: u64,
    /// MADT flag PCAT_COMPAT: the machine also has 8259 PICs.
    pub has_8259: bool,
    /// Processor entries in table order.
    pub cpus: Vec<CpuEntry>,
    pub ioapics: Vec<IoApic>,
    pub overrides: Vec<IrqOverride>,
    /// Every table found: signature and physical address.
    pub tables: Vec<([u8; 4], u64)>,
    /// Physical address of the HPET's registers (HPET table), when in memory space.
    pub hpet: Option<u64>,
    /// An HPET table [`read_hpet`] refused: the base it gave and why.
    pub hpet_refused: Option<(u64, &'static str)>,
    pub pm_timer: Option<PmTimer>,
    /// Ports of ACPI's fixed hardware that no task may reach (FADT, in I/O space), as (first
    /// port, count): the SMI command port (a write enters the firmware's SMM code: ACPI
    /// enable and disable, S4BIOS, performance-state control) and the PM1 control blocks (a
    /// write of the sleep type and enable bits puts the machine to sleep or powers it off).
    pub fixed_ports: Vec<(u16, u16)>,
    /// The SMI command port (FADT; one of `fixed_ports`), if the machine has one.
    pub smi_port: Option<u16>,
    /// FADT flag HW_REDUCED_ACPI: no fixed hardware (no PM timer, no legacy devices promised).
    pub hw_reduced: bool,
    /// The MADT had a malformed entry: it and the entries after it were not read.
    pub madt_cut: bool,
    /// The FADT at this address could not be read (its structure runs into memory the kernel
    /// cannot read): its fixed ports are not known, nor kept from tasks.
    pub fadt_unreadable: Option<u64>,
}

impl Platform {
    /// A machine without readable ACPI tables (`-machine acpi=off`, a boot loader that passed
    /// no RSDP, a MADT the kernel cannot read): the bootstrap CPU alone (no processor entries:
    /// the start plan adds it), its local APIC at `lapic_address` (from IA32_APIC_BASE), no
    /// I/O APIC (no device interrupts), no HPET or PM timer, and the 8259 PICs of a PC assumed
    /// present (they are masked; masking absent ones writes to nothing).
    pub fn without_acpi(lapic_address: u64) -> Platform {
        Platform { lapic_address, has_8259: true, ..Default::default() }
    }

    /// [`Platform::without_acpi`] for a machine whose MADT could not be read, keeping what the
    /// other tables of `read` said: the timers (HPET, PM timer) and the FADT's fixed ports, which
    /// tasks must not reach whatever the MADT holds (before the twenty-sixth session a missing
    /// or bad MADT let every task with the `Devices` capability have the SMI command port and
    /// the PM1 control blocks: a review found it).
    pub fn without_madt(lapic_address: u64, read: Platform) -> Platform {
        Platform {
            rsdp_revision: read.rsdp_revision,
            tables: read.tables,
            hpet: read.hpet,
            hpet_refused: read.hpet_refused,
            pm_timer: read.pm_timer,
            fixed_ports: read.fixed_ports,
            smi_port: read.smi_port,
            hw_reduced: read.hw_reduced,
            fadt_unreadable: read.fadt_unreadable,
            ..Platform::without_acpi(lapic_address)
        }
    }
}

/// The sanest length an ACPI table may claim (16 MiB).
const MAX_TABLE_LEN: u32 = 1 << 24;

/// The root table to read: the XSDT when the RSDP (revision 2 or later) names one whose header
/// is sound, else the RSDT if its header is; with the RSDP's revision. `None`: no RSDP at
/// `rsdp`, or neither table is readable with its signature and a length from 36 bytes to
/// [`MAX_TABLE_LEN`] (the `acpi` crate would take an XSDT address of 0, and a length below 36
/// makes its entry count wrap).
fn root_table(mem: &impl PhysMem, rsdp: u64) -> Option<(u64, bool, u8)> {
    let mut sig = [0u8; 8];
    mem.read(rsdp, &mut sig)?;
    if &sig != b"RSD PTR " {
        return None;
    }
    let mut rev = [0u8];
    mem.read(rsdp + 15, &mut rev)?;
    let sound = |a: u64, want: &[u8; 4]| {
        let mut s = [0u8; 4];
        a != 0 && mem.read(a, &mut s).is_some() && &s == want && mem.u32(a + 4).is_some_and(|l| (36..=MAX_TABLE_LEN).contains(&l))
    };
    if rev[0] >= 2
        && let Some(x) = mem.u64(rsdp + 24)
        && sound(x, b"XSDT")
    {
        return Some((x, true, rev[0]));
    }
    let r = u64::from(mem.u32(rsdp + 16)?);
    sound(r, b"RSDT").then_some((r, false, rev[0]))
}

/// The HPET's register block from the HPET table at `table`: only a base in memory space
/// (the generic address's space 0), 1 KiB aligned as the specification places the block, not 0
/// and below 2^52 (a physical address). Anything else is no HPET: the kernel then measures the
/// TSC with another clock. (The `acpi` crate takes any address space with a warning and
/// any address; mapping an address with bits above 51 panics in the `x86_64` crate, and
/// mapping RAM or an I/O port number as registers reads and writes the wrong thing.) The
/// kernel checks the base against the CPU's own address width and the memory map as well.
/// Refused: the base the table gives (0 if it gives none) and why.
fn read_hpet(mem: &impl PhysMem, table: u64) -> Result<u64, (u64, &'static str)> {
    let len = mem.u32(table + 4).ok_or((0, "unreadable"))?;
    if !(56..=MAX_TABLE_LEN).contains(&len) {
        return Err((0, "too short to name its registers"));
    }
    let mut space = [0u8];
    mem.read(table + 40, &mut space).ok_or((0, "unreadable"))?;
    let base = mem.u64(table + 44).ok_or((0, "unreadable"))?;
    match base {
        _ if space[0] != 0 => Err((base, "not in memory space")),
        0 => Err((0, "at address 0")),
        _ if base % 1024 != 0 => Err((base, "not 1 KiB aligned")),
        _ if base >= 1 << 52 => Err((base, "beyond 52 address bits")),
        _ => Ok(base),
    }
}

/// Most MADT entries read (a 16 MiB table of 2-byte entries would be 8 million).
const MAX_MADT_ENTRIES: usize = 65_536;

/// Reads the MADT at `madt` into `p` through `mem`, entry by entry, each checked: one shorter
/// than its type's structure, running past the table or unreadable ends the walk there
/// (`p.madt_cut`). (The `acpi` crate's iterator never moves past an entry of length 0, skips
/// reserved types internally, and builds each structure whatever the entry's length says.)
fn read_madt(mem: &impl PhysMem, madt: u64, p: &mut Platform) -> Result<(), AcpiError> {
    let bad = || AcpiError::TableNotFound(::acpi::sdt::Signature::MADT);
    let len = mem.u32(madt + 4).filter(|&l| (44..=MAX_TABLE_LEN).contains(&l)).ok_or_else(bad)?;
    p.lapic_address = u64::from(mem.u32(madt + 36).ok_or_else(bad)?);
    p.has_8259 = mem.u32(madt + 40).ok_or_else(bad)? & 1 != 0;
    let end = madt + u64::from(len);
    let (mut at, mut n) = (madt + 44, 0);
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    while at < end {
        let mut e = [0u8; 16];
        let mut h = [0u8; 2];
        if n == MAX_MADT_ENTRIES || end - at < 2 || mem.read(at, &mut h).is_none() {
            p.madt_cut = true;
            break;
        }
        let (kind, elen) = (h[0], h[1]);
        let need = match kind {
            0 => 8,  // processor local APIC
            1 => 12, // I/O APIC
            2 => 10, // interrupt source override
            5 => 12, // local APIC address override
            9 => 16, // processor local x2APIC
            _ => 2,
        };
        if elen < need || at + u64::from(elen) > end || mem.read(at, &mut e[..need as usize]).is_none() {
            p.madt_cut = true;
            break;
        }
        match kind {
            0 => p.cpus.push(CpuEntry { apic_id: e[3].into(), uid: e[2].into(), flags: u32_at(&e, 4), x2: false }),
            1 => p.ioapics.push(IoApic { id: e[2], address: u32_at(&e, 4), gsi_base: u32_at(&e, 8) }),
            2 => p.overrides.push(IrqOverride { bus: e[2], irq: e[3], gsi: u32_at(&e, 4), flags: u16::from_le_bytes([e[8], e[9]]) }),
            5 => p.lapic_address = u64::from(u32_at(&e, 4)) | u64::from(u32_at(&e, 8)) << 32,
            9 => p.cpus.push(CpuEntry { apic_id: u32_at(&e, 4), uid: u32_at(&e, 12), flags: u32_at(&e, 8), x2: true }),
            _ => {}
        }
        at += u64::from(elen);
        n += 1;
    }
    Ok(())
}

/// The root table's entries [`discover`] keeps in [`Platform::tables`]: the first ones, and
/// beyond them the first of each table it reads ([`USED_TABLES`]). A root table whose length a
/// flipped byte made 16 MiB (its checksum is not verified) listed up to four million "tables",
/// and their list grew towards a 64 MiB run of contiguous frames, which a small or fragmented
/// memory may not have (a review of the thirty-seventh session).
pub const KEPT_TABLES: usize = 256;

/// The tables the kernel reads: the FADT, the MADT, the HPET table.
const USED_TABLES: [[u8; 4]; 3] = [*b"FACP", *b"APIC", *b"HPET"];

/// Reads the MADT. `rsdp` is the physical address of the RSDP (or of a copy of it).
///
/// Nothing the firmware wrote is trusted beyond what is checked: the root table is chosen and
/// checked here ([`root_table`]), and its entries are read here too, every table's signature
/// as bytes (the crate's `as_str` panics on bytes that are not UTF-8, such as those of a null
/// XSDT entry), the MADT is read here, entry by entry ([`read_madt`]), and so is the HPET table
/// ([`read_hpet`]); `handler` answers a region it cannot read with zeros (`acpi_handler.rs`);
/// the crate gives only the FADT's type and its accessors.
///
/// An error comes with what the tables read before it said (everything but the MADT's
/// processors and interrupt controllers: [`Platform::without_madt`]).
///
/// # Safety
/// `handler` must map physical memory faithfully (or answer zeros for what it cannot read),
/// and `rsdp` must be the address the boot loader gave.
pub unsafe fn discover<H: Handler + PhysMem>(handler: H, rsdp: u64) -> Result<Platform, (AcpiError, Platform)> {
    let Some((root, xsdt, revision)) = root_table(&handler, rsdp) else {
        return Err((AcpiError::RsdpIncorrectSignature, Platform::default()));
    };
    let mem = handler.clone();
    let mut p = Platform { rsdp_revision: revision, ..Default::default() };
    // The root table's entries, read here byte by byte: the crate reads them through pointers
    // cast to `u64` (or `u32`), which an XSDT at an 8-aligned address — where firmware may put
    // it — leaves misaligned (undefined behaviour; a debug build stops on it).
    let (entry, root_len) = (if xsdt { 8 } else { 4 }, u64::from(mem.u32(root + 4).unwrap_or(36)));
    for i in 0..root_len.saturating_sub(36) / entry {
        let slot = root + 36 + i * entry;
        let addr = if xsdt { mem.u64(slot) } else { mem.u32(slot).map(u64::from) };
        let mut sig = [0u8; 4];
        // A null entry is no table (physical address 0 is readable: the interrupt vector table).
        if let Some(addr) = addr.filter(|&a| a != 0)
            && mem.read(addr, &mut sig).is_some()
            && (p.tables.len() < KEPT_TABLES || (USED_TABLES.contains(&sig) && !p.tables.iter().any(|(s, _)| *s == sig)))
        {
            p.tables.push((sig, addr));
        }
    }
    // The FADT is the first table signed so, read through the crate's type (packed: any
    // address will do) over the length its header gives, as the crate's own search maps it.
    let fadt_at = p.tables.iter().find(|(sig, _)| sig == b"FACP").map(|&(_, a)| a);
    // Only the structure is read (the crate's accessors read nothing beyond it), so only the
    // structure must be readable: a length the header claims beyond it that runs into memory
    // the kernel cannot read made the handler answer zeros for the whole table, and the fixed
    // ports were lost without a word (a review of the twenty-sixth session). A structure that
    // cannot be read is said so (`fadt_unreadable`).
    // A table shorter than the structure (an ACPI 1.0 length under a later revision, a known
    // firmware quirk) is read as far as its length, zeros beyond, as ACPICA does: what follows
    // it in memory is not its 64-bit fields, which the crate reads by the revision alone (a
    // review of the thirty-seventh session).
    // (Only as far as its length, too: a short table at the end of readable memory is read,
    // not taken for unreadable — before the forty-third session the whole structure's bytes
    // were asked for, and the fixed ports went to tasks; a review found it.)
    let fadt = fadt_at.and_then(|a| {
        let mut whole = [0u8; core::mem::size_of::<Fadt>()];
        let n = whole.len();
        let len = mem.u32(a + 4).map_or(n, |l| (l.min(MAX_TABLE_LEN) as usize).min(n));
        if mem.read(a, &mut whole[..len]).is_none() {
            p.fadt_unreadable = Some(a);
            return None;
        }
        // SAFETY: `Fadt` is `repr(C, packed)` (no alignment needed) and made of integers and
        // wrappers of them, for which any bytes are a value; `whole` holds all of it.
        Some(unsafe { core::ptr::read_unaligned(whole.as_ptr().cast::<Fadt>()) })
    });
    if let Some(fadt) = fadt {
        let flags = { fadt.flags };
        p.hw_reduced = flags.system_is_hw_reduced_acpi();
        if let Ok(Some(g)) = fadt.pm_timer_block() {
            if g.address_space == AddressSpace::SystemIo && g.address != 0 {
                if let Ok(port) = u16::try_from(g.address) {
                    p.pm_timer = Some(PmTimer { port, bits32: flags.pm_timer_is_32_bit() });
                }
            }
        }
        let f = &fadt;
        let smi = { f.smi_cmd_port };
        // At least the two bytes the ACPI specification gives a PM1 control register.
        let pm1_len = ({ f.pm1_control_length } as u16).max(2);
        let io = |g: &::acpi::address::GenericAddress| (g.address_space == AddressSpace::SystemIo && g.address != 0).then_some(g.address);
        // The blocks as the crate reads them (the 64-bit fields where given, else the 32-bit
        // ones), and the 32-bit fields themselves too: where a 64-bit field names a reserved
        // address space the crate answers an error and reads no 32-bit field, and a block
        // the firmware still has at the 32-bit field's port went to tasks (a review of the
        // thirty-fourth session found it). Keeping a port more from tasks costs nothing.
        let (legacy_a, legacy_b) = ({ f.pm1a_control_block } as u64, { f.pm1b_control_block } as u64);
        let blocks = [
            f.pm1a_control_block().ok().as_ref().and_then(io),
            f.pm1b_control_block().ok().flatten().as_ref().and_then(io),
            (legacy_a != 0).then_some(legacy_a),
            (legacy_b != 0).then_some(legacy_b),
        ];
        let mut blocks: Vec<u64> = blocks.into_iter().flatten().collect();
        blocks.sort_unstable();
        blocks.dedup();
        for (addr, len) in [(smi as u64, 1)].into_iter().chain(blocks.into_iter().map(|a| (a, pm1_len))) {
            // A port range past 0xffff is no port range: nothing to keep.
            if addr != 0 && addr.checked_add(len as u64).is_some_and(|e| e <= 0x1_0000) {
                p.fixed_ports.push((addr as u16, len));
                if addr == smi as u64 && len == 1 {
                    p.smi_port = Some(addr as u16);
                }
            }
        }
    }
    match p.tables.iter().find(|(sig, _)| sig == b"HPET").map(|&(_, a)| read_hpet(&mem, a)) {
        Some(Ok(base)) => p.hpet = Some(base),
        Some(Err(refused)) => p.hpet_refused = Some(refused),
        None => {}
    }
    let Some(madt) = p.tables.iter().find(|(sig, _)| sig == b"APIC").map(|&(_, a)| a) else {
        return Err((AcpiError::TableNotFound(::acpi::sdt::Signature::MADT), p));
    };
    match read_madt(&mem, madt, &mut p) {
        Ok(()) => Ok(p),
        Err(e) => Err((e, p)),
    }
}

/// Most ranges [`table_ranges`] reports.
pub const MAX_TABLE_RANGES: usize = 128;

/// The physical ranges of the RSDP, the RSDT/XSDT and every table they list (plus FACS and
/// DSDT), as far as `mem` can read them: how many there are (the first [`MAX_TABLE_RANGES`]
/// are in `out`; the caller says so if there are more), and how many tables it could not read.
pub fn table_ranges(mem: &impl PhysMem, rsdp: u64, out: &mut [Range; MAX_TABLE_RANGES]) -> (usize, usize) {
    let mut n = 0;
    let mut skipped = 0;
    fn push(out: &mut [Range; MAX_TABLE_RANGES], r: Range, n: &mut usize) {
        if let Some(o) = out.get_mut(*n) {
            *o = r;
        }
        *n += 1;
    }
    let mut sig = [0u8; 8];
    if mem.read(rsdp, &mut sig).is_none() || &sig != b"RSD PTR " {
        return (0, 1);
    }
    let revision = {
        let mut b = [0u8];
        mem.read(rsdp + 15, &mut b).map_or(0, |_| b[0])
    };
    push(out, Range::new(rsdp, rsdp + if revision >= 2 { 36 } else { 20 }), &mut n);
    // The same root table `discover` reads.
    let Some((root, xsdt, _)) = root_table(mem, rsdp) else { return (n, skipped + 1) };
    let entry = if xsdt { 8u64 } else { 4u64 };
    let header_len = |a: u64| mem.u32(a + 4).filter(|&l| (36..=1 << 24).contains(&l)).map(|l| l as u64);
    let Some(root_len) = header_len(root) else { return (n, skipped + 1) };
    push(out, Range::new(root, root + root_len), &mut n);
    let add_table = |out: &mut [Range; MAX_TABLE_RANGES], a: u64, n: &mut usize, skipped: &mut usize| -> Option<u64> {
        match header_len(a) {
            Some(l) => {
                push(out, Range::new(a, a + l), n);
                Some(l)
            }
            None => {
                *skipped += 1;
                None
            }
        }
    };
    for i in 0..(root_len - 36) / entry {
        let slot = root + 36 + i * entry;
        let t = if entry == 8 { mem.u64(slot) } else { mem.u32(slot).map(u64::from) };
        let Some(t) = t.filter(|&t| t != 0) else { continue };
        if add_table(out, t, &mut n, &mut skipped).is_none() {
            continue;
        }
        let mut s = [0u8; 4];
        if mem.read(t, &mut s).is_some() && &s == b"FACP" {
            // FACS (FIRMWARE_CTRL / X_FIRMWARE_CTRL) and DSDT (DSDT / X_DSDT).
            let len = header_len(t).unwrap_or(0);
            let x = |off: u64| if len >= off + 8 { mem.u64(t + off).filter(|&v| v != 0) } else { None };
            let facs = x(132).or_else(|| mem.u32(t + 36).map(u64::from).filter(|&v| v != 0));
            let dsdt = x(140).or_else(|| mem.u32(t + 40).map(u64::from).filter(|&v| v != 0));
            // The FACS has no checksum: its signature and a length as bounded as a table's
            // (64 bytes at least) are what is checked, so that a stray word cannot keep up
            // to 4 GiB out of the allocator (or stop the boot for want of low memory).
            if let Some(f) = facs {
                let mut s = [0u8; 4];
                match mem.u32(f + 4) {
                    Some(l) if (64..=1 << 24).contains(&l) && mem.read(f, &mut s).is_some() && &s == b"FACS" => {
                        push(out, Range::new(f, f + l as u64), &mut n)
                    }
                    _ => skipped += 1,
                }
            }
            if let Some(d) = dsdt {
                add_table(out, d, &mut n, &mut skipped);
            }
        }
    }
    (n, skipped)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use core::ptr::NonNull;
    use std::sync::Arc;

    /// A fake physical memory of 64 KiB at physical address 0xe0000, with hand-built tables.
    /// Its bytes start at offset `.1` of the vector, chosen so that physical address 0xe0000
    /// sits at 4 modulo 8 in host memory (`machine`; [`shifted`] moves it), instead of depending
    /// on where the allocator put the vector: when the `acpi` crate still read the XSDT's 64-bit
    /// entries as aligned `u64`s, a misaligned read aborted the test binary now and then.
    #[derive(Clone)]
    pub struct FakeMem(pub Arc<Vec<u8>>, pub usize);
    pub const BASE: u64 = 0xe0000;

    impl PhysMem for FakeMem {
        fn read(&self, pa: u64, buf: &mut [u8]) -> Option<()> {
            let off = pa.checked_sub(BASE)? as usize;
            if off.checked_add(buf.len())? > 0x10000 {
                return None;
            }
            buf.copy_from_slice(self.0.get(self.1 + off..self.1 + off + buf.len())?);
            Some(())
        }
    }

    fn checksum(b: &mut [u8], at: usize) {
        b[at] = 0;
        let s: u8 = b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
        b[at] = 0u8.wrapping_sub(s);
    }

    fn sdt(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(sig);
        t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
        t.push(1);
        t.push(0);
        t.extend_from_slice(b"RL4TST");
        t.extend_from_slice(b"RL4TABLE");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(b"RL4 ");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(body);
        checksum(&mut t, 9);
        t
    }

    /// RSDP v2 at 0xe0000, XSDT at 0xe1000, MADT at 0xe2000 (4 CPUs, one disabled, one
    /// x2APIC-only, one IOAPIC, one override), FADT at 0xe3000 (a 24-bit PM timer at port
    /// 0xb008) with a DSDT at 0xe4000, HPET table at 0xe5000 (registers at 0xfed00000).
    pub fn machine() -> FakeMem {
        let mut mem = vec![0u8; 0x10000];
        let mut put = |pa: u64, b: &[u8]| {
            let o = (pa - BASE) as usize;
            mem[o..o + b.len()].copy_from_slice(b)
        };
        let mut madt = Vec::new();
        madt.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        madt.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
        for (uid, id, flags) in [(0u8, 0u8, 1u32), (1, 1, 1), (2, 2, 0)] {
            madt.extend_from_slice(&[0, 8, uid, id]);
            madt.extend_from_slice(&flags.to_le_bytes());
        }
        madt.extend_from_slice(&[9, 16, 0, 0]);
        madt.extend_from_slice(&300u32.to_le_bytes());
        madt.extend_from_slice(&1u32.to_le_bytes());
        madt.extend_from_slice(&3u32.to_le_bytes());
        madt.extend_from_slice(&[1, 12, 7, 0]);
        madt.extend_from_slice(&0xfec0_0000u32.to_le_bytes());
        madt.extend_from_slice(&0u32.to_le_bytes());
        madt.extend_from_slice(&[2, 10, 0, 0]);
        madt.extend_from_slice(&2u32.to_le_bytes());
        madt.extend_from_slice(&0u16.to_le_bytes());
        put(0xe2000, &sdt(b"APIC", &madt));
        let mut fadt = vec![0u8; 244 - 36];
        fadt[40 - 36..44 - 36].copy_from_slice(&0xe4000u32.to_le_bytes());
        fadt[76 - 36..80 - 36].copy_from_slice(&0xb008u32.to_le_bytes()); // PM_TMR_BLK
        fadt[91 - 36] = 4; // PM_TMR_LEN
        fadt[48 - 36..52 - 36].copy_from_slice(&0xb2u32.to_le_bytes()); // SMI_CMD
        fadt[64 - 36..68 - 36].copy_from_slice(&0xb004u32.to_le_bytes()); // PM1a_CNT_BLK
        fadt[89 - 36] = 2; // PM1_CNT_LEN
        put(0xe3000, &sdt(b"FACP", &fadt));
        put(0xe4000, &sdt(b"DSDT", &[0u8; 10]));
        let mut hpet = Vec::new();
        hpet.extend_from_slice(&0x8086_a201u32.to_le_bytes()); // 64-bit counter, 3 comparators
        hpet.extend_from_slice(&[0, 64, 0, 0]); // memory space
        hpet.extend_from_slice(&0xfed0_0000u64.to_le_bytes());
        hpet.extend_from_slice(&[0, 0x80, 0, 0]);
        put(0xe5000, &sdt(b"HPET", &hpet));
        let mut xsdt = Vec::new();
        xsdt.extend_from_slice(&0xe2000u64.to_le_bytes());
        xsdt.extend_from_slice(&0xe3000u64.to_le_bytes());
        xsdt.extend_from_slice(&0xe5000u64.to_le_bytes());
        put(0xe1000, &sdt(b"XSDT", &xsdt));
        let mut rsdp = Vec::new();
        rsdp.extend_from_slice(b"RSD PTR ");
        rsdp.push(0);
        rsdp.extend_from_slice(b"RL4TST");
        rsdp.push(2);
        rsdp.extend_from_slice(&0u32.to_le_bytes());
        rsdp.extend_from_slice(&36u32.to_le_bytes());
        rsdp.extend_from_slice(&0xe1000u64.to_le_bytes());
        rsdp.extend_from_slice(&[0, 0, 0, 0]);
        checksum(&mut rsdp[..20], 8);
        checksum(&mut rsdp, 32);
        put(0xe0000, &rsdp);
        let mut v = vec![0u8; 0x10000 + 8];
        let pad = (v.as_ptr() as usize).wrapping_neg().wrapping_add(4) % 8;
        v[pad..pad + 0x10000].copy_from_slice(&mem);
        FakeMem(Arc::new(v), pad)
    }

    #[repr(C, align(4096))]
    struct ZeroPage([u8; 4096]);
    static ZERO_PAGE: ZeroPage = ZeroPage([0; 4096]);

    impl Handler for FakeMem {
        unsafe fn map_physical_region<T>(&self, pa: usize, size: usize) -> ::acpi::PhysicalMapping<Self, T> {
            // As the kernel's handler: what it cannot read is zeros (a zeroed page of its own),
            // and a whole `T` is readable whatever `size` says.
            let want = size.max(core::mem::size_of::<T>());
            let p = match pa.checked_sub(BASE as usize).filter(|off| off + want <= 0x10000) {
                Some(off) => self.0.as_ptr().wrapping_add(self.1 + off) as *mut T,
                None => {
                    assert!(want <= 4096, "a region of {want} bytes outside the fake memory");
                    ZERO_PAGE.0.as_ptr() as *mut T
                }
            };
            ::acpi::PhysicalMapping {
                physical_start: pa,
                virtual_start: NonNull::new(p).unwrap(),
                region_length: size,
                mapped_length: size,
                handler: self.clone(),
            }
        }
        fn unmap_physical_region<T>(_: &::acpi::PhysicalMapping<Self, T>) {}
        fn read_u8(&self, _: usize) -> u8 { unreachable!("no AML in these tests") }
        fn read_u16(&self, _: usize) -> u16 { unreachable!() }
        fn read_u32(&self, _: usize) -> u32 { unreachable!() }
        fn read_u64(&self, _: usize) -> u64 { unreachable!() }
        fn write_u8(&self, _: usize, _: u8) { unreachable!() }
        fn write_u16(&self, _: usize, _: u16) { unreachable!() }
        fn write_u32(&self, _: usize, _: u32) { unreachable!() }
        fn write_u64(&self, _: usize, _: u64) { unreachable!() }
        fn read_io_u8(&self, _: u16) -> u8 { unreachable!() }
        fn read_io_u16(&self, _: u16) -> u16 { unreachable!() }
        fn read_io_u32(&self, _: u16) -> u32 { unreachable!() }
        fn write_io_u8(&self, _: u16, _: u8) { unreachable!() }
        fn write_io_u16(&self, _: u16, _: u16) { unreachable!() }
        fn write_io_u32(&self, _: u16, _: u32) { unreachable!() }
        fn read_pci_u8(&self, _: ::acpi::PciAddress, _: u16) -> u8 { unreachable!() }
        fn read_pci_u16(&self, _: ::acpi::PciAddress, _: u16) -> u16 { unreachable!() }
        fn read_pci_u32(&self, _: ::acpi::PciAddress, _: u16) -> u32 { unreachable!() }
        fn write_pci_u8(&self, _: ::acpi::PciAddress, _: u16, _: u8) { unreachable!() }
        fn write_pci_u16(&self, _: ::acpi::PciAddress, _: u16, _: u16) { unreachable!() }
        fn write_pci_u32(&self, _: ::acpi::PciAddress, _: u16, _: u32) { unreachable!() }
        fn nanos_since_boot(&self) -> u64 { 0 }
        fn stall(&self, _: u64) {}
        fn sleep(&self, _: u64) {}
        fn create_mutex(&self) -> ::acpi::Handle { unreachable!() }
        fn acquire(&self, _: ::acpi::Handle, _: u16) -> Result<(), ::acpi::aml::AmlError> { unreachable!() }
        fn release(&self, _: ::acpi::Handle) { unreachable!() }
    }

    /// The same bytes at another offset modulo 8 of host memory.
    fn shifted(m: &FakeMem, modulo8: usize) -> FakeMem {
        let mut v = vec![0u8; 0x10000 + 8];
        let pad = (v.as_ptr() as usize).wrapping_neg().wrapping_add(modulo8) % 8;
        v[pad..pad + 0x10000].copy_from_slice(&m.0[m.1..m.1 + 0x10000]);
        FakeMem(Arc::new(v), pad)
    }

    /// The tables read the same wherever they sit modulo 8: the root table's entries are read
    /// byte by byte (an XSDT at an 8-aligned address leaves its 64-bit entries misaligned, which
    /// the crate read through a `u64` pointer: undefined behaviour, a panic in a debug build).
    #[test]
    fn discover_reads_tables_at_any_alignment() {
        let want = unsafe { discover(machine(), BASE) }.unwrap();
        for modulo8 in 0..8 {
            let p = unsafe { discover(shifted(&machine(), modulo8), BASE) }.unwrap();
            assert_eq!(p.tables, want.tables, "at {modulo8} modulo 8");
            assert_eq!(p.cpus, want.cpus);
            assert_eq!(p.pm_timer, want.pm_timer);
            assert_eq!(p.smi_port, want.smi_port);
        }
    }

    #[test]
    fn discover_reads_the_madt() {
        // SAFETY: the fake handler maps only inside its own buffer.
        let p = unsafe { discover(machine(), BASE) }.unwrap();
        assert_eq!(p.rsdp_revision, 2);
        assert_eq!(p.lapic_address, 0xfee0_0000);
        assert!(p.has_8259);
        let ids: Vec<_> = p.cpus.iter().map(|c| (c.apic_id, c.flags, c.x2)).collect();
        assert_eq!(ids, vec![(0, 1, false), (1, 1, false), (2, 0, false), (300, 1, true)]);
        assert_eq!(p.ioapics, vec![IoApic { id: 7, address: 0xfec0_0000, gsi_base: 0 }]);
        assert_eq!(p.overrides.len(), 1);
        assert_eq!((p.overrides[0].irq, p.overrides[0].gsi), (0, 2));
        assert_eq!(p.overrides[0].trigger(), "bus default");
        let sigs: Vec<_> = p.tables.iter().map(|(s, _)| *s).collect();
        assert_eq!(sigs, vec![*b"APIC", *b"FACP", *b"HPET"]);
    }

    #[test]
    fn discover_finds_the_timers_the_firmware_describes() {
        // SAFETY: as above.
        let p = unsafe { discover(machine(), BASE) }.unwrap();
        assert_eq!(p.hpet, Some(0xfed0_0000));
        assert_eq!(p.pm_timer, Some(PmTimer { port: 0xb008, bits32: false }));
        // The SMI command port and the PM1a control block (no PM1b): kept from tasks.
        assert_eq!(p.fixed_ports, vec![(0xb2, 1), (0xb004, 2)]);
        assert_eq!(p.smi_port, Some(0xb2));
        assert!(!p.hw_reduced);
    }

    /// A FADT (revision 3) whose 64-bit PM1a control field names a reserved address space (the
    /// crate answers an error for it, and reads no 32-bit field then): the 32-bit field's block
    /// is kept from tasks all the same (before the thirty-fourth session it was handed out).
    #[test]
    fn a_bad_64_bit_pm1_field_leaves_the_32_bit_one_kept() {
        let m = patched(&machine(), 0xe3008, &[3], None);
        // X_PM1a_CNT_BLK: address space 0x20 (reserved), 16 bits, port 0x1004.
        let mut gas = [0u8; 12];
        gas[0] = 0x20;
        gas[1] = 16;
        gas[4..12].copy_from_slice(&0x1004u64.to_le_bytes());
        let m = patched(&m, 0xe3000 + 172, &gas, Some(0xe3000));
        // SAFETY: the fake handler maps only inside its own buffer (zeros elsewhere).
        let p = unsafe { discover(m, BASE) }.unwrap();
        assert_eq!(p.fixed_ports, vec![(0xb2, 1), (0xb004, 2)]);
        // A sound 64-bit field of another port: both are kept.
        gas[0] = 1;
        let m = patched(&machine(), 0xe3008, &[3], None);
        let m = patched(&m, 0xe3000 + 172, &gas, Some(0xe3000));
        // SAFETY: as above.
        let p = unsafe { discover(m, BASE) }.unwrap();
        assert_eq!(p.fixed_ports, vec![(0xb2, 1), (0x1004, 2), (0xb004, 2)]);
    }

    /// Without a readable MADT the error comes with what the other tables said, and the
    /// machine without the MADT keeps it: the fixed ports stay out of tasks' reach, the timers
    /// measure the TSC (before the twenty-sixth session the kernel dropped them all).
    #[test]
    fn without_a_madt_the_fadt_and_hpet_still_count() {
        for (what, m) in [
            ("no MADT", patched(&machine(), 0xe2000, b"XXXX", None)),
            ("a MADT too short", patched(&machine(), 0xe2004, &40u32.to_le_bytes(), Some(0xe2000))),
        ] {
            // SAFETY: the fake handler maps only inside its own buffer (zeros elsewhere).
            let Err((_, read)) = (unsafe { discover(m, BASE) }) else { panic!("{what}: the MADT was read") };
            assert_eq!(read.fixed_ports, vec![(0xb2, 1), (0xb004, 2)], "{what}");
            let p = Platform::without_madt(0xfee0_0000, read);
            assert_eq!((p.fixed_ports.len(), p.smi_port, p.hpet), (2, Some(0xb2), Some(0xfed0_0000)), "{what}");
            assert_eq!(p.pm_timer, Some(PmTimer { port: 0xb008, bits32: false }), "{what}");
            assert!(p.cpus.is_empty() && p.ioapics.is_empty() && p.has_8259, "{what}");
        }
    }

    /// A root table of many entries: the first [`KEPT_TABLES`] are kept, and beyond them only
    /// the first of each table the kernel reads (which it still finds).
    #[test]
    fn a_long_root_table_keeps_the_first_entries_and_the_used_tables() {
        for used_first in [true, false] {
            let mut entries = Vec::new();
            let real = [0xe2000u64, 0xe3000, 0xe5000];
            if used_first {
                entries.extend(real);
            }
            entries.extend([0xe4000u64; 400]);
            if !used_first {
                entries.extend(real);
            }
            let bytes: Vec<u8> = entries.iter().flat_map(|a| a.to_le_bytes()).collect();
            assert!(0xe1000 + 36 + bytes.len() as u64 <= 0xe2000);
            let m = patched(&machine(), 0xe1000 + 36, &bytes, None);
            let m = patched(&m, 0xe1004, &((36 + bytes.len()) as u32).to_le_bytes(), None);
            // SAFETY: the fake handler maps only inside its own buffer (zeros elsewhere).
            let p = unsafe { discover(m, BASE) }.unwrap();
            assert_eq!(p.tables.len(), if used_first { KEPT_TABLES } else { KEPT_TABLES + 3 });
            assert_eq!((p.hpet, p.pm_timer.map(|t| t.port), p.cpus.len()), (Some(0xfed0_0000), Some(0xb008), 4), "{used_first}");
        }
    }

    /// A FADT shorter than its revision's structure (an ACPI 1.0 length, 116 bytes, under a
    /// revision that has the 64-bit fields: a known firmware quirk) is read as far as its length,
    /// zeros beyond, as ACPICA reads one: the bytes that follow it in memory are no 64-bit
    /// PM timer block (before the thirty-seventh session they were, and replaced the table's
    /// own 32-bit port: a review found it).
    #[test]
    fn a_short_fadt_is_read_as_far_as_its_length() {
        let m = patched(&machine(), 0xe3004, &116u32.to_le_bytes(), None);
        let m = patched(&m, 0xe3008, &[3], None);
        // An X_PM_TMR_BLK past the table's end: I/O space, 32 bits, port 0xdead.
        let gas = [1u8, 32, 0, 3, 0xad, 0xde, 0, 0, 0, 0, 0, 0];
        let m = patched(&m, 0xe3000 + 208, &gas, None);
        // SAFETY: the fake handler maps only inside its own buffer (zeros elsewhere).
        let p = unsafe { discover(m.clone(), BASE) }.unwrap();
        assert_eq!(p.pm_timer, Some(PmTimer { port: 0xb008, bits32: false }));
        assert_eq!(p.fixed_ports, vec![(0xb2, 1), (0xb004, 2)]);
        // The same bytes within a full-length table are its 64-bit field, which wins.
        let m = patched(&m, 0xe3004, &244u32.to_le_bytes(), None);
        // SAFETY: as above.
        let p = unsafe { discover(m, BASE) }.unwrap();
        assert_eq!(p.pm_timer, Some(PmTimer { port: 0xdead, bits32: false }));
    }

    /// A FADT whose header claims a length running past readable memory is read all the same
    /// (only its structure is needed: the handler answered zeros for the whole claimed length,
    /// and its ports were lost); one whose structure itself cannot be read is said so.
    #[test]
    fn a_fadt_is_read_as_far_as_its_structure() {
        let m = patched(&machine(), 0xe3004, &0x2_0000u32.to_le_bytes(), None);
        // SAFETY: as above.
        let p = unsafe { discover(m, BASE) }.unwrap();
        assert_eq!(p.fixed_ports, vec![(0xb2, 1), (0xb004, 2)]);
        assert_eq!(p.fadt_unreadable, None);
        // The XSDT's second entry names a FADT of 244 bytes 64 bytes before the end of memory.
        let at = BASE + 0x10000 - 64;
        let m = patched(&machine(), at, b"FACP", None);
        let m = patched(&m, at + 4, &244u32.to_le_bytes(), None);
        let m = patched(&m, 0xe1000 + 36 + 8, &at.to_le_bytes(), Some(0xe1000));
        // SAFETY: as above.
        let p = unsafe { discover(m, BASE) }.unwrap();
        assert_eq!((p.fadt_unreadable, p.fixed_ports.len(), p.pm_timer), (Some(at), 0, None));
        assert_eq!(p.cpus.len(), 4);
        // An ACPI 1.0 FADT (116 bytes) that ends 4 bytes before the end of memory: read as far as
        // its length, its ports kept (before the forty-third session the structure's 276 bytes
        // were asked for, and it was taken for unreadable).
        let m = machine();
        let src = m.1 + (0xe3000 - BASE) as usize;
        let mut fadt = m.0[src..src + 116].to_vec();
        fadt[4..8].copy_from_slice(&116u32.to_le_bytes());
        fadt[8] = 1;
        fadt[9] = 0;
        let sum = fadt.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        fadt[9] = 0u8.wrapping_sub(sum);
        let at = BASE + 0x10000 - 120;
        let m = patched(&m, at, &fadt, None);
        let m = patched(&m, 0xe1000 + 36 + 8, &at.to_le_bytes(), Some(0xe1000));
        // SAFETY: as above.
        let p = unsafe { discover(m, BASE) }.unwrap();
        assert_eq!(p.fadt_unreadable, None);
        assert_eq!(p.fixed_ports, vec![(0xb2, 1), (0xb004, 2)]);
    }

    #[test]
    fn madt_to_plan_end_to_end() {
        // SAFETY: as above.
        let p = unsafe { discover(machine(), BASE) }.unwrap();
        let plan = crate::madt::plan(&p.cpus, 1, false, None, 256);
        let ids: Vec<_> = plan.cpus.iter().map(|c| c.apic_id).collect();
        assert_eq!(ids, vec![1, 0]);
        assert_eq!(plan.skipped.len(), 2);
        let plan = crate::madt::plan(&p.cpus, 0, true, None, 256);
        assert_eq!(plan.cpus.iter().map(|c| c.apic_id).collect::<Vec<_>>(), vec![0, 1, 300]);
    }

    #[test]
    fn bad_rsdp_is_an_error() {
        // SAFETY: as above.
        assert!(unsafe { discover(machine(), BASE + 0x1000) }.is_err());
    }

    /// `m` with `bytes` written at `pa`, and the checksum of the table at `table` made right
    /// again (if any).
    fn patched(m: &FakeMem, pa: u64, bytes: &[u8], table: Option<u64>) -> FakeMem {
        let mut v = (*m.0).clone();
        let o = m.1 + (pa - BASE) as usize;
        v[o..o + bytes.len()].copy_from_slice(bytes);
        if let Some(t) = table {
            let o = m.1 + (t - BASE) as usize;
            let len = u32::from_le_bytes(v[o + 4..o + 8].try_into().unwrap()) as usize;
            checksum(&mut v[o..o + len], 9);
        }
        FakeMem(Arc::new(v), m.1)
    }

    /// A null and a wild entry in the XSDT (firmware does that): no panic, and they are not
    /// listed (the crate's `as_str` on the bytes at address 0 panicked).
    #[test]
    fn null_and_wild_xsdt_entries_are_passed_over() {
        let m = machine();
        // The XSDT grows by two entries: 0 and an address outside memory.
        let mut x = Vec::new();
        for a in [0xe2000u64, 0, 0xe3000, 0xdead_b000, 0xe5000] {
            x.extend_from_slice(&a.to_le_bytes());
        }
        let m = patched(&m, 0xe1000 + 36, &x, None);
        let m = patched(&m, 0xe1004, &((36 + x.len()) as u32).to_le_bytes(), Some(0xe1000));
        // SAFETY: the fake handler maps only inside its own buffer (zeros elsewhere).
        let p = unsafe { discover(m, BASE) }.unwrap();
        let sigs: Vec<_> = p.tables.iter().map(|(s, _)| *s).collect();
        assert_eq!(sigs, vec![*b"APIC", *b"FACP", *b"HPET"]);
        assert_eq!(p.cpus.len(), 4);
        assert_eq!(p.hpet, Some(0xfed0_0000));
    }

    /// An HPET table whose register block is in I/O space, at 0, unaligned or beyond a
    /// physical address's 52 bits names no HPET (the crate took each; the last panicked in the
    /// kernel's mapping); a sound one is read.
    #[test]
    fn an_unsound_hpet_base_is_no_hpet() {
        let m = machine();
        for (space, base, want) in [
            (0u8, 0xfed0_0000u64, Some(0xfed0_0000u64)),
            (0, 0x1_0000_0000_0000, Some(0x1_0000_0000_0000)),
            (1, 0xfed0_0000, None),
            (0, 0, None),
            (0, 0xfed0_0010, None),
            (0, 0x10_0000_0000_0000, None),
            (0, 0xffff_ffff_ffff_f000, None),
        ] {
            let m = patched(&m, 0xe5000 + 40, &[space], None);
            let m = patched(&m, 0xe5000 + 44, &base.to_le_bytes(), Some(0xe5000));
            // SAFETY: the fake handler maps only inside its own buffer.
            let p = unsafe { discover(m, BASE) }.unwrap();
            assert_eq!(p.hpet, want, "space {space}, base {base:#x}");
            assert_eq!(p.hpet_refused.is_some(), want.is_none(), "space {space}, base {base:#x}");
            assert_eq!(p.cpus.len(), 4);
        }
        // A table too short to hold the base.
        let m = patched(&m, 0xe5004, &40u32.to_le_bytes(), Some(0xe5000));
        // SAFETY: as above.
        let p = unsafe { discover(m, BASE) }.unwrap();
        assert_eq!((p.hpet, p.hpet_refused), (None, Some((0, "too short to name its registers"))));
    }

    /// An RSDP of revision 2 whose XSDT address is 0, or whose XSDT's length is below a
    /// header's: the RSDT is read instead (the crate took address 0, and a short length made its
    /// entry count wrap); with no sound RSDT either, an error.
    #[test]
    fn an_unsound_xsdt_falls_back_to_the_rsdt() {
        let m = machine();
        // An RSDT at 0xe6000 with the MADT only.
        let rsdt = sdt(b"RSDT", &0xe2000u32.to_le_bytes());
        let m = patched(&m, 0xe6000, &rsdt, None);
        let m = patched(&m, BASE + 16, &0xe6000u32.to_le_bytes(), None);
        for (what, m) in [
            ("XSDT address 0", patched(&m, BASE + 24, &0u64.to_le_bytes(), None)),
            ("XSDT length 20", patched(&m, 0xe1004, &20u32.to_le_bytes(), None)),
        ] {
            // SAFETY: as above.
            let p = unsafe { discover(m, BASE) }.unwrap_or_else(|e| panic!("{what}: {e:?}"));
            let sigs: Vec<_> = p.tables.iter().map(|(s, _)| *s).collect();
            assert_eq!(sigs, vec![*b"APIC"], "{what}");
            assert_eq!(p.cpus.len(), 4, "{what}");
        }
        let bad = patched(&m, BASE + 24, &0u64.to_le_bytes(), None);
        let bad = patched(&bad, 0xe6000, b"XXXX", None);
        // SAFETY: as above.
        assert!(unsafe { discover(bad, BASE) }.is_err());
    }

    /// An MADT entry of length 0 (or shorter than its type's structure) ends the walk there:
    /// the entries before it are read, and the crate's iterator, which never moves past a
    /// zero-length entry, is not given it.
    #[test]
    fn a_malformed_madt_entry_ends_the_walk() {
        // The third processor entry (44 + 16 bytes into the MADT) gets length 0, then 4.
        for len in [0u8, 4] {
            let m = patched(&machine(), 0xe2000 + 44 + 16 + 1, &[len], Some(0xe2000));
            // SAFETY: as above.
            let p = unsafe { discover(m, BASE) }.unwrap();
            assert!(p.madt_cut, "length {len}");
            assert_eq!(p.cpus.iter().map(|c| c.apic_id).collect::<Vec<_>>(), vec![0, 1], "length {len}");
            assert!(p.ioapics.is_empty(), "length {len}");
        }
        // SAFETY: as above.
        assert!(!unsafe { discover(machine(), BASE) }.unwrap().madt_cut);
        // A reserved/OEM entry type is passed over by its length; of length 0 it ends the walk.
        for (len, cut, cpus) in [(8u8, false, vec![0, 1, 300]), (0, true, vec![0, 1])] {
            let m = patched(&machine(), 0xe2000 + 44 + 16, &[0x80, len], Some(0xe2000));
            // SAFETY: as above.
            let p = unsafe { discover(m, BASE) }.unwrap();
            assert_eq!(p.madt_cut, cut, "OEM entry of length {len}");
            assert_eq!(p.cpus.iter().map(|c| c.apic_id).collect::<Vec<_>>(), cpus, "OEM entry of length {len}");
        }
    }

    #[test]
    fn table_ranges_cover_every_table() {
        let mut out = [Range::default(); MAX_TABLE_RANGES];
        let (n, skipped) = table_ranges(&machine(), BASE, &mut out);
        assert_eq!(skipped, 0);
        let starts: Vec<_> = out[..n].iter().map(|r| r.start).collect();
        assert_eq!(starts, vec![0xe0000, 0xe1000, 0xe2000, 0xe3000, 0xe4000, 0xe5000]);
        assert_eq!(out[1].len(), 36 + 24);
        assert_eq!(out[4].len(), 46);
        let (n, skipped) = table_ranges(&machine(), BASE + 8, &mut out);
        assert_eq!((n, skipped), (0, 1));
    }

    /// The FADT's FACS: kept with its signature and a bounded length; a word that is no FACS
    /// (no signature, or a length of 4 GiB) is counted as not read rather than kept.
    #[test]
    fn table_ranges_check_the_facs() {
        let m = machine();
        let m = patched(&m, 0xe3000 + 36, &0xe6000u32.to_le_bytes(), Some(0xe3000));
        let facs = |sig: &[u8; 4], len: u32| {
            let mut b = sig.to_vec();
            b.extend_from_slice(&len.to_le_bytes());
            patched(&m, 0xe6000, &b, None)
        };
        let mut out = [Range::default(); MAX_TABLE_RANGES];
        let (n, skipped) = table_ranges(&facs(b"FACS", 64), BASE, &mut out);
        assert_eq!(skipped, 0);
        assert!(out[..n].iter().any(|r| r.start == 0xe6000 && r.len() == 64));
        for (sig, len) in [(b"FACS", u32::MAX), (b"FACS", 63), (b"XXXX", 64)] {
            let (n, skipped) = table_ranges(&facs(sig, len), BASE, &mut out);
            assert_eq!(skipped, 1, "{sig:?} {len}");
            assert!(out[..n].iter().all(|r| r.start != 0xe6000), "{sig:?} {len}");
        }
    }

    /// More tables than `out` holds: the count says so (the ranges past the limit were dropped
    /// without a word before).
    #[test]
    fn table_ranges_count_what_does_not_fit() {
        let m = machine();
        let x: Vec<u8> = (0..200).flat_map(|_| 0xe2000u64.to_le_bytes()).collect();
        let m = patched(&m, 0xe1000 + 36, &x, None);
        let m = patched(&m, 0xe1004, &((36 + x.len()) as u32).to_le_bytes(), Some(0xe1000));
        let mut out = [Range::default(); MAX_TABLE_RANGES];
        let (n, skipped) = table_ranges(&m, BASE, &mut out);
        assert_eq!((n, skipped), (2 + 200, 0));
        assert!(out.iter().skip(2).all(|r| r.start == 0xe2000));
    }
}
