//! Device rules: where a legacy ISA interrupt arrives at the I/O APIC (the MADT's interrupt
//! source overrides), which port ranges the kernel keeps, and the set of port ranges a task
//! has open. Pure logic, host-tested; the kernel's `irq.rs` and `ioport.rs` apply it.

/// One MADT interrupt source override (ACPI 6.5 §5.2.12.5): ISA `irq` arrives at `gsi`, with
/// MPS INTI `flags` (polarity in bits 0..1, trigger mode in bits 2..3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Override {
    pub irq: u8,
    pub gsi: u32,
    pub flags: u16,
}

/// Where an ISA interrupt arrives and how it is sensed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsaRoute {
    pub gsi: u32,
    pub active_low: bool,
    pub level: bool,
}

/// The route of ISA interrupt `irq` (0..15): an override's global system interrupt and flags
/// (a "bus default" polarity or trigger is ISA's: active high, edge), else the identity
/// mapping, unless another ISA interrupt was moved onto that GSI (as QEMU moves IRQ 0 to GSI
/// 2): then `irq` has no line of its own (`None`). A GSI that overrides give to two ISA
/// interrupts (`7 -> 9` beside QEMU's `9 -> 9`, or `3 -> 10` and `5 -> 10`) is neither's: one
/// pin cannot be two lines, each bound, masked and unmasked by its own driver. Reserved flag
/// values (2) are refused too.
pub fn isa_route(irq: u8, overrides: &[Override]) -> Option<IsaRoute> {
    if irq >= 16 {
        return None;
    }
    // Each ISA interrupt's first override is the one that counts (a later one for it is
    // passed over, here and in the others' checks).
    let first = |i: u8| overrides.iter().find(|o| o.irq == i);
    let counts = |p: &&Override| first(p.irq).is_some_and(|f| core::ptr::eq(f, *p));
    if let Some(o) = first(irq) {
        if overrides.iter().filter(counts).any(|p| p.gsi == o.gsi && p.irq != irq) {
            return None;
        }
        let active_low = match o.flags & 3 {
            0 | 1 => false,
            3 => true,
            _ => return None,
        };
        let level = match (o.flags >> 2) & 3 {
            0 | 1 => false,
            3 => true,
            _ => return None,
        };
        return Some(IsaRoute { gsi: o.gsi, active_low, level });
    }
    if overrides.iter().filter(counts).any(|o| o.gsi == irq as u32 && o.irq != irq) {
        return None;
    }
    Some(IsaRoute { gsi: irq as u32, active_low: false, level: false })
}

/// A port range `base .. base + count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ports {
    pub base: u16,
    pub count: u32,
}

impl Ports {
    /// A checked range: not empty, within the 65,536 ports (any user values: the end is
    /// computed only once both are known to be small, so it cannot wrap).
    pub fn new(base: u64, count: u64) -> Option<Ports> {
        if count == 0 || base > 0xffff || count > 0x1_0000 || base + count > 0x1_0000 {
            return None;
        }
        Some(Ports { base: base as u16, count: count as u32 })
    }
    pub fn end(self) -> u32 {
        self.base as u32 + self.count
    }
    /// Whether port `p` is one of the range's.
    pub fn contains(self, p: u32) -> bool {
        self.base as u32 <= p && p < self.end()
    }
    pub fn overlaps(self, o: Ports) -> bool {
        (self.base as u32) < o.end() && (o.base as u32) < self.end()
    }
    /// Packed into one word (0 = none): base | count << 16 | 1 << 40.
    pub fn pack(self) -> u64 {
        self.base as u64 | (self.count as u64) << 16 | 1 << 40
    }
    pub fn unpack(w: u64) -> Option<Ports> {
        (w != 0).then(|| Ports { base: w as u16, count: ((w >> 16) & 0x1_ffff) as u32 })
    }
}

/// The ports the kernel keeps for itself on a PC: the 8259 PICs, the PIT and port 0x61 (the
/// TSC calibration), the debug-exit device, QEMU's debug console, COM1 (the kernel's log),
/// the PCI configuration mechanism, and those that would let a task write memory or alias it
/// (the ISA DMA controllers, system control port A, QEMU's firmware configuration DMA and its
/// VAPIC device), the
/// IMCR, and QEMU's hotplug controllers (which would take a CPU away). Firmware-described ports (the ACPI PM timer block, SMI command port and PM1 control
/// blocks) are added by the kernel at boot.
pub const KERNEL_PORTS: &[Ports] = &[
    // The ISA DMA controllers and their page registers: programmed by a task, they would
    // write memory (the kernel's included) on behalf of a legacy device such as the floppy
    // controller.
    Ports { base: 0x00, count: 16 },
    Ports { base: 0x81, count: 15 },
    Ports { base: 0xc0, count: 32 },
    Ports { base: 0x20, count: 2 },
    // The IMCR (interrupt mode configuration, select and data): a write would route the
    // PICs' interrupt line past the local APICs, whose interrupts the kernel takes.
    Ports { base: 0x22, count: 2 },
    Ports { base: 0x40, count: 4 },
    Ports { base: 0x61, count: 1 },
    // System control port A: its A20 bit would alias memory above 1 MiB, its reset bit resets
    // the machine.
    Ports { base: 0x92, count: 1 },
    Ports { base: 0xa0, count: 2 },
    Ports { base: 0xe9, count: 1 },
    Ports { base: 0xf4, count: 4 },
    Ports { base: 0x3f8, count: 8 },
    Ports { base: 0xcf8, count: 8 },
    // QEMU's firmware configuration device: its DMA interface (0x514..0x51b) reads a request
    // from any physical address a task writes there, writes its status back there and copies
    // the chosen item's bytes to the address the request names: a write anywhere. (Other
    // machines have nothing there: keeping the ports costs them nothing.)
    Ports { base: 0x510, count: 12 },
    // QEMU's VAPIC device (its `kvmvapic`, made under TCG as well): a 16-bit write takes the
    // writer's instruction pointer plus the value for the physical address of an option ROM,
    // reads its size from there and rewrites every hypercall pattern it finds in up to 127 KiB
    // of guest memory from there; further writes make the emulated local APIC write its state
    // to guest memory. (Kept since the forty-second session: a review found it.)
    Ports { base: 0x7e, count: 2 },
    // QEMU's ACPI hotplug controllers, which its DSDT describes (not the FADT, which the kernel
    // reads): a few writes eject a CPU (0xaf00..0xaf1f on `pc`, 0xcd8..0xcf7 on `q35`), memory
    // (0xa00..0xa17) or a PCI device (0xae00..0xae17 on `pc`, 0xcc0..0xcd7 on `q35`) at once,
    // without a word to the kernel; a CPU gone so would never answer a TLB shoot-down, and
    // every CPU would wait for it for ever. (Kept since the thirty-fourth session: a review
    // found the CPU's.)
    Ports { base: 0xa00, count: 24 },
    Ports { base: 0xae00, count: 24 },
    Ports { base: 0xaf00, count: 32 },
    Ports { base: 0xcc0, count: 24 },
    Ports { base: 0xcd8, count: 32 },
];

/// The ISA interrupts the kernel keeps: 0 (the PIT), 2 (the cascade, never a device),
/// 4 (COM1, the kernel's log).
pub const KERNEL_IRQS: &[u8] = &[0, 2, 4];

/// Why a range cannot be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// All slots are in use.
    Full,
}

/// A task's open port ranges: at most `N`, each kept with the port object it was opened through
/// (`owner`: a number naming that object, the kernel's `IoPortObj`) and counted as many times as
/// it was opened through it (so that two capabilities to one object open and close it
/// independently). When the object goes — its last capability deleted or revoked — every range
/// opened through it closes ([`OpenSet::close_owner`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenSet<const N: usize> {
    /// (range, owner, count); a count of 0 is a free slot.
    pub ranges: [(Ports, u64, u32); N],
}

impl<const N: usize> Default for OpenSet<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> OpenSet<N> {
    pub const fn new() -> Self {
        OpenSet { ranges: [(Ports { base: 0, count: 0 }, 0, 0); N] }
    }
    /// Opens `p` through `owner` once more; the slot it is counted in.
    pub fn open(&mut self, p: Ports, owner: u64) -> Result<usize, OpenError> {
        if let Some(i) = self.ranges.iter().position(|e| e.2 > 0 && e.0 == p && e.1 == owner) {
            // A count that would wrap (2^32 opens) would read as a free slot: refused instead.
            self.ranges[i].2 = self.ranges[i].2.checked_add(1).ok_or(OpenError::Full)?;
            return Ok(i);
        }
        let i = self.ranges.iter().position(|e| e.2 == 0).ok_or(OpenError::Full)?;
        self.ranges[i] = (p, owner, 1);
        Ok(i)
    }
    /// Closes one opening of `p` through `owner`: the slot it was counted in and whether that
    /// slot is free now (`None`: it was not open; it stays open while other opens remain).
    pub fn close(&mut self, p: Ports, owner: u64) -> Option<(usize, bool)> {
        let i = self.ranges.iter().position(|e| e.2 > 0 && e.0 == p && e.1 == owner)?;
        self.ranges[i].2 -= 1;
        Some((i, self.ranges[i].2 == 0))
    }
    /// Closes every range opened through `owner`, however often; the slots freed (bit `i`:
    /// slot `i`), 0 if there was none.
    pub fn close_owner(&mut self, owner: u64) -> u32 {
        let mut freed = 0;
        for (i, e) in self.ranges.iter_mut().enumerate().filter(|(_, e)| e.2 > 0 && e.1 == owner) {
            e.2 = 0;
            freed |= 1 << i;
        }
        freed
    }
    /// The ranges open now, packed (`Ports::pack`, 0 = empty slot).
    pub fn packed(&self) -> [u64; N] {
        core::array::from_fn(|i| if self.ranges[i].2 > 0 { self.ranges[i].0.pack() } else { 0 })
    }
}

/// What a CPU's I/O permission bitmap is labelled with once it has loaded a space's ranges: the
/// space's generation `read` before them, or [`UNKNOWN_GENERATION`] when that is 0 and a range
/// was loaded all the same. Generation 0 is the one every space that never opened a port shares
/// (it stands for no range: a switch between two such spaces reloads nothing); the ranges are
/// read after it, and an open that published its ranges in between, its new generation still on
/// its way, would otherwise leave ranges loaded under the shared 0, which the next switch to any
/// never-opened space takes for its own (before the forty-third session; a review found it). Any
/// other generation names one state of one space (the counter is machine-wide), so a newer
/// state loaded under it is that space's and reloads at the next switch elsewhere.
pub fn bitmap_label(read: u64, loaded_any: bool) -> u64 {
    if read == 0 && loaded_any { UNKNOWN_GENERATION } else { read }
}

/// A label no space's generation ever has (they count up from 1): a bitmap that carries it
/// is reloaded at the next switch, whatever the space.
pub const UNKNOWN_GENERATION: u64 = u64::MAX;

/// Whether every port of `r` lies in one of the ranges `open` (packed, `Ports::pack`; 0 = an
/// empty slot) — together, as two overlapping ranges may cover it. The consistency check's rule
/// for a CPU whose bitmap holds an older state of its running task's ranges (an open's
/// interrupt on its way): what it opens must still be open.
pub fn covered(r: Ports, open: &[u64]) -> bool {
    let mut at = r.base as u32;
    while at < r.end() {
        // The furthest end of a range that holds `at`: the ports before it are covered.
        match open.iter().filter_map(|&w| Ports::unpack(w)).filter(|o| o.contains(at)).map(Ports::end).max() {
            Some(end) => at = end,
            None => return false,
        }
    }
    true
}

/// Most device-memory pages the kernel hands out (`DeviceMemGet`): the pages of the firmware's
/// device ranges past this many are not offered. One live frame object per page.
pub const MAX_DEVICE_PAGES: usize = 16;

/// Why a physical page is not a device page a task may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevMemError {
    /// Not page-aligned.
    Misaligned,
    /// Outside every device range, or inside one of the excluded ranges.
    NotDevice,
}

/// A physical range `start .. end`, half-open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    pub start: u64,
    pub end: u64,
}

impl PhysRange {
    /// The 4 KiB pages covering `base .. base + len` (`None` if empty or past the address space).
    pub fn pages_of(base: u64, len: u64) -> Option<PhysRange> {
        let end = base.checked_add(len)?.checked_add(0xfff)? & !0xfff;
        (len > 0).then_some(PhysRange { start: base & !0xfff, end })
    }
    pub fn overlaps(self, o: PhysRange) -> bool {
        self.start < o.end && o.start < self.end
    }
    pub fn pages(self) -> u64 {
        (self.end - self.start) / 4096
    }
}

/// The device pages a task may be given: the pages of the firmware's device ranges
/// (`described`, in order) that overlap none of `excluded` (RAM, the kernel's own device
/// pages), at most [`MAX_DEVICE_PAGES`] in all; each page's number is its index in this list.
pub fn device_pages(described: &[PhysRange], excluded: &[PhysRange], out: &mut [u64; MAX_DEVICE_PAGES]) -> usize {
    let mut n = 0;
    for r in described {
        let mut pa = r.start;
        while pa < r.end && n < MAX_DEVICE_PAGES {
            let page = PhysRange { start: pa, end: pa + 4096 };
            if !excluded.iter().any(|x| x.overlaps(page)) && !out[..n].contains(&pa) {
                out[n] = pa;
                n += 1;
            }
            pa += 4096;
        }
    }
    n
}

/// Which of `pages` (the list [`device_pages`] made) the physical address `pa` names.
pub fn device_page(pa: u64, pages: &[u64]) -> Result<usize, DevMemError> {
    if pa % 4096 != 0 {
        return Err(DevMemError::Misaligned);
    }
    pages.iter().position(|&p| p == pa).ok_or(DevMemError::NotDevice)
}

/// One 4 KiB page of device registers that a frame object owns (`DeviceMemGet`): made only by
/// `unsafe` [`DeviceFrame::new`], which the kernel calls in one place (its `device` module,
/// for a page of [`device_pages`] whose claim it holds), so a number a task passes never
/// becomes one without that check. The kernel maps it into user space uncached and never
/// reads or writes it through this object, nor writes it for a task (an IPC buffer is refused
/// there); it reads it only as a task's own memory: a `ConsoleWrite` whose text a task placed
/// in such a page is copied through the task's mapping, as the task could read it itself. Neither `Copy` nor `Clone`; `#[repr(transparent)]`.
///
/// ```compile_fail,E0603
/// let d = rl4_core::device::DeviceFrame(0xfed0_0000); // only `unsafe` `DeviceFrame::new`
/// ```
#[repr(transparent)]
#[derive(Debug, PartialEq, Eq)]
pub struct DeviceFrame(u64);

impl DeviceFrame {
    /// Makes the device page at `pa` owned.
    ///
    /// # Safety
    /// `pa` is a 4 KiB aligned page of device registers that is no RAM (no frame the frame
    /// allocator manages, no kernel memory) and that the kernel does not drive, and no other
    /// `DeviceFrame` for it lives: mapping it, uncached, into user space then gives access to
    /// nothing but that device.
    #[allow(unsafe_code)]
    #[inline(always)]
    pub unsafe fn new(pa: u64) -> DeviceFrame {
        debug_assert!(pa % crate::PAGE_SIZE == 0);
        DeviceFrame(pa)
    }

    /// Its physical address.
    #[inline(always)]
    pub fn addr(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // QEMU's MADT: IRQ 0 → GSI 2, and IRQs 5, 9, 10, 11 active high, level.
    const QEMU: &[Override] = &[
        Override { irq: 0, gsi: 2, flags: 0 },
        Override { irq: 5, gsi: 5, flags: 0xd },
        Override { irq: 9, gsi: 9, flags: 0xd },
    ];

    #[test]
    fn overrides_move_lines_and_set_flags() {
        assert_eq!(isa_route(0, QEMU), Some(IsaRoute { gsi: 2, active_low: false, level: false }));
        assert_eq!(isa_route(2, QEMU), None, "GSI 2 carries IRQ 0");
        assert_eq!(isa_route(3, QEMU), Some(IsaRoute { gsi: 3, active_low: false, level: false }));
        assert_eq!(isa_route(9, QEMU), Some(IsaRoute { gsi: 9, active_low: false, level: true }));
        let low = [Override { irq: 7, gsi: 20, flags: 0xf }];
        assert_eq!(isa_route(7, &low), Some(IsaRoute { gsi: 20, active_low: true, level: true }));
        assert_eq!(isa_route(7, &[Override { irq: 7, gsi: 7, flags: 2 }]), None, "reserved polarity");
        assert_eq!(isa_route(16, &[]), None);
    }

    /// Overrides that give one GSI to two ISA interrupts (hostile or broken firmware): the pin
    /// is neither's, so that two drivers never share it; the other lines keep theirs.
    #[test]
    fn a_gsi_two_overrides_name_is_nobodys() {
        let mut both = QEMU.to_vec();
        both.push(Override { irq: 7, gsi: 9, flags: 0 });
        assert_eq!(isa_route(7, &both), None, "IRQ 7 moved onto IRQ 9's GSI");
        assert_eq!(isa_route(9, &both), None, "GSI 9 is claimed by IRQ 7 too");
        assert_eq!(isa_route(0, &both), Some(IsaRoute { gsi: 2, active_low: false, level: false }));
        assert_eq!(isa_route(5, &both), Some(IsaRoute { gsi: 5, active_low: false, level: true }));
        let two = [Override { irq: 3, gsi: 10, flags: 0 }, Override { irq: 5, gsi: 10, flags: 0 }];
        assert_eq!(isa_route(3, &two), None);
        assert_eq!(isa_route(5, &two), None);
        assert_eq!(isa_route(10, &two), None, "GSI 10 carries other lines");
        // The same override listed twice is one claim.
        let twice = [Override { irq: 4, gsi: 12, flags: 0 }, Override { irq: 4, gsi: 12, flags: 0 }];
        assert_eq!(isa_route(4, &twice), Some(IsaRoute { gsi: 12, active_low: false, level: false }));
        // A second override for one interrupt is passed over: it claims no GSI from another.
        let later = [Override { irq: 6, gsi: 14, flags: 0 }, Override { irq: 6, gsi: 3, flags: 0 }];
        assert_eq!(isa_route(6, &later), Some(IsaRoute { gsi: 14, active_low: false, level: false }));
        assert_eq!(isa_route(3, &later), Some(IsaRoute { gsi: 3, active_low: false, level: false }));
        // Every line of each table ends on a GSI of its own.
        for table in [QEMU, &both[..], &two[..], &twice[..], &later[..]] {
            let gsis: Vec<u32> = (0..16).filter_map(|i| isa_route(i, table)).map(|r| r.gsi).collect();
            let mut sorted = gsis.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), gsis.len(), "{table:?}");
        }
    }

    #[test]
    fn port_ranges_are_checked_and_packed() {
        assert_eq!(Ports::new(0x2f8, 0), None);
        assert_eq!(Ports::new(0xffff, 2), None);
        assert_eq!(Ports::new(0x1_0000, 1), None);
        // Counts that would wrap the end (a user's values): refused, not opened as everything.
        assert_eq!(Ports::new(1, u64::MAX), None);
        assert_eq!(Ports::new(0, u64::MAX), None);
        assert_eq!(Ports::new(0xffff, u64::MAX - 0xfffe), None);
        assert_eq!(Ports::new(u64::MAX, 2), None);
        assert_eq!(Ports::new(0, 0x1_0001), None);
        let p = Ports::new(0xffff, 1).unwrap();
        assert_eq!(Ports::unpack(p.pack()), Some(p));
        let all = Ports::new(0, 0x1_0000).unwrap();
        assert_eq!(Ports::unpack(all.pack()), Some(all));
        let com2 = Ports::new(0x2f8, 8).unwrap();
        assert!(!KERNEL_PORTS.iter().any(|k| k.overlaps(com2)));
        assert!(KERNEL_PORTS.iter().any(|k| k.overlaps(Ports::new(0x3f0, 9).unwrap())));
        // The ports through which a task could make a legacy device write memory, or alias it.
        for (base, count) in [(0x00, 1), (0x0f, 1), (0x81, 1), (0x8f, 1), (0xc0, 1), (0xdf, 1), (0x92, 1), (0x514, 4), (0x518, 4), (0x510, 1), (0xa00, 1), (0xa17, 1), (0xae17, 1), (0xaf00, 1), (0xaf1f, 1), (0xcc0, 1), (0xcd7, 1), (0xcd8, 1), (0xcf7, 1), (0x7e, 1), (0x7f, 1)] {
            assert!(KERNEL_PORTS.iter().any(|k| k.overlaps(Ports::new(base, count).unwrap())), "port {base:#x}");
        }
        assert!(!KERNEL_PORTS.iter().any(|k| k.overlaps(Ports::new(0x60, 1).unwrap())), "the keyboard data port stays a driver's");
        assert!(!KERNEL_PORTS.iter().any(|k| k.overlaps(Ports::new(0x70, 14).unwrap())), "the RTC's ports stay a driver's");
    }

    #[test]
    fn open_set_counts_and_fills() {
        let mut s = OpenSet::<2>::default();
        let a = Ports::new(0x2f8, 8).unwrap();
        let b = Ports::new(0x60, 1).unwrap();
        assert_eq!(s.open(a, 7), Ok(0));
        assert_eq!(s.open(a, 7), Ok(0));
        assert_eq!(s.open(b, 7), Ok(1));
        assert_eq!(s.open(Ports::new(0x70, 2).unwrap(), 7), Err(OpenError::Full));
        // Another object's range takes a slot of its own (none left).
        assert_eq!(s.open(a, 8), Err(OpenError::Full));
        // Closed only through the object it was opened through.
        assert_eq!(s.close(a, 8), None);
        assert_eq!(s.close(a, 7), Some((0, false)));
        assert!(s.packed().contains(&a.pack()));
        assert_eq!(s.close(a, 7), Some((0, true)));
        assert!(!s.packed().contains(&a.pack()));
        assert_eq!(s.close(a, 7), None);
        // A range opened 2^32 - 1 times: one more open is refused, not wrapped to a free slot.
        let mut s = OpenSet::<2>::default();
        s.ranges[0] = (a, 1, u32::MAX);
        assert_eq!(s.open(a, 1), Err(OpenError::Full));
        assert!(s.packed().contains(&a.pack()));
    }

    #[test]
    fn an_owner_that_goes_closes_its_ranges() {
        let mut s = OpenSet::<4>::default();
        let a = Ports::new(0x2f8, 8).unwrap();
        let b = Ports::new(0x60, 1).unwrap();
        s.open(a, 1).unwrap();
        s.open(a, 1).unwrap();
        s.open(b, 1).unwrap();
        s.open(a, 2).unwrap();
        assert_eq!(s.close_owner(1), 0b011);
        // Owner 2's open of the same range stays.
        assert_eq!(s.packed().iter().filter(|&&w| w != 0).count(), 1);
        assert!(s.packed().contains(&a.pack()));
        assert_eq!(s.close_owner(1), 0);
        assert_eq!(s.close_owner(2), 0b100);
        assert!(s.packed().iter().all(|&w| w == 0));
        // The slots are free again.
        for o in 3..7 {
            s.open(b, o).unwrap();
        }
    }
    /// Against a port-at-a-time model: ranges of every small base and length, covered by sets
    /// of up to three ranges (overlapping, adjacent, apart, empty slots), and the ends of the
    /// port space.
    #[test]
    fn covered_means_every_port_is_in_an_open_range() {
        let p = |b: u64, n: u64| Ports::new(b, n).unwrap();
        let sets: &[&[u64]] = &[
            &[],
            &[0, 0],
            &[p(4, 4).pack()],
            &[p(4, 4).pack(), p(8, 3).pack()],
            &[p(2, 5).pack(), 0, p(5, 6).pack()],
            &[p(0, 3).pack(), p(6, 2).pack(), p(9, 4).pack()],
            &[p(3, 1).pack(), p(3, 9).pack(), p(4, 2).pack()],
        ];
        for set in sets {
            let open = |q: u32| set.iter().filter_map(|&w| Ports::unpack(w)).any(|o| o.base as u32 <= q && q < o.end());
            for b in 0..14 {
                for n in 1..14 {
                    let r = p(b, n);
                    let model = (r.base as u32..r.end()).all(open);
                    assert_eq!(covered(r, set), model, "{r:?} in {set:?}");
                }
            }
        }
        let top = [p(0xfff0, 0x10).pack()];
        assert!(covered(p(0xfff8, 8), &top) && !covered(p(0xffef, 2), &top));
        assert!(covered(p(0, 0x1_0000), &[p(0, 0x8000).pack(), p(0x8000, 0x8000).pack()]));
        assert!(!covered(p(0, 0x1_0000), &[p(0, 0x8000).pack(), p(0x8001, 0x7fff).pack()]));
    }

    #[test]
    fn device_pages_leave_out_ram_and_kernel_pages() {
        let hpet = PhysRange::pages_of(0xfed0_0000, 1024).unwrap();
        assert_eq!(hpet, PhysRange { start: 0xfed0_0000, end: 0xfed0_1000 });
        assert_eq!(PhysRange::pages_of(0xfed0_0800, 0x1000).unwrap().pages(), 2);
        assert_eq!(PhysRange::pages_of(0x1000, 0), None);
        assert_eq!(PhysRange::pages_of(u64::MAX - 10, 100), None);
        let lapic = PhysRange::pages_of(0xfee0_0000, 4096).unwrap();
        let ioapic = PhysRange::pages_of(0xfec0_0000, 4096).unwrap();
        let ram = PhysRange { start: 0x10_0000, end: 0x800_0000 };
        // A table that claims RAM, the local APIC page or the I/O APIC page as a device range
        // gets nothing there; the HPET page stays.
        let described = [hpet, PhysRange { start: 0x20_0000, end: 0x20_2000 }, lapic, ioapic, hpet];
        let mut out = [0; MAX_DEVICE_PAGES];
        let n = device_pages(&described, &[ram, lapic, ioapic], &mut out);
        assert_eq!(&out[..n], &[0xfed0_0000]);
        assert_eq!(device_page(0xfed0_0000, &out[..n]), Ok(0));
        assert_eq!(device_page(0xfed0_0008, &out[..n]), Err(DevMemError::Misaligned));
        assert_eq!(device_page(0xfee0_0000, &out[..n]), Err(DevMemError::NotDevice));
        assert_eq!(device_page(0x10_0000, &out[..n]), Err(DevMemError::NotDevice));
        assert_eq!(device_page(0xfed0_1000, &out[..n]), Err(DevMemError::NotDevice));
        // A partial overlap with RAM removes only the pages it touches; the list is capped.
        let big = [PhysRange { start: 0x7ff_f000, end: 0x900_0000 }];
        let n = device_pages(&big, &[ram], &mut out);
        assert_eq!(n, MAX_DEVICE_PAGES);
        assert_eq!(out[0], 0x800_0000);
        assert_eq!(out[MAX_DEVICE_PAGES - 1], 0x800_0000 + (MAX_DEVICE_PAGES as u64 - 1) * 4096);
    }
}
