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
/// 2): then `irq` has no line of its own (`None`). Reserved flag values (2) are refused too.
pub fn isa_route(irq: u8, overrides: &[Override]) -> Option<IsaRoute> {
    if irq >= 16 {
        return None;
    }
    if let Some(o) = overrides.iter().find(|o| o.irq == irq) {
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
    if overrides.iter().any(|o| o.gsi == irq as u32 && o.irq != irq) {
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
    /// A checked range: not empty, within the 65,536 ports.
    pub fn new(base: u64, count: u64) -> Option<Ports> {
        if count == 0 || base > 0xffff || base + count > 0x1_0000 {
            return None;
        }
        Some(Ports { base: base as u16, count: count as u32 })
    }
    pub fn end(self) -> u32 {
        self.base as u32 + self.count
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
/// the PCI configuration mechanism. Firmware-described ports (the ACPI PM timer block) are
/// added by the kernel at boot.
pub const KERNEL_PORTS: &[Ports] = &[
    Ports { base: 0x20, count: 2 },
    Ports { base: 0x40, count: 4 },
    Ports { base: 0x61, count: 1 },
    Ports { base: 0xa0, count: 2 },
    Ports { base: 0xe9, count: 1 },
    Ports { base: 0xf4, count: 4 },
    Ports { base: 0x3f8, count: 8 },
    Ports { base: 0xcf8, count: 8 },
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

/// A task's open port ranges: at most `N`, each counted as many times as it was opened (so
/// that two capabilities to one range open and close it independently).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenSet<const N: usize> {
    pub ranges: [(Ports, u32); N],
}

impl<const N: usize> Default for OpenSet<N> {
    fn default() -> Self {
        OpenSet { ranges: [(Ports::default(), 0); N] }
    }
}

impl<const N: usize> OpenSet<N> {
    pub fn open(&mut self, p: Ports) -> Result<(), OpenError> {
        if let Some(e) = self.ranges.iter_mut().find(|e| e.1 > 0 && e.0 == p) {
            e.1 += 1;
            return Ok(());
        }
        let e = self.ranges.iter_mut().find(|e| e.1 == 0).ok_or(OpenError::Full)?;
        *e = (p, 1);
        Ok(())
    }
    /// Whether `p` was open (it stays open while other opens of it remain).
    pub fn close(&mut self, p: Ports) -> bool {
        match self.ranges.iter_mut().find(|e| e.1 > 0 && e.0 == p) {
            Some(e) => {
                e.1 -= 1;
                true
            }
            None => false,
        }
    }
    /// The ranges open now, packed (`Ports::pack`, 0 = empty slot).
    pub fn packed(&self) -> [u64; N] {
        core::array::from_fn(|i| if self.ranges[i].1 > 0 { self.ranges[i].0.pack() } else { 0 })
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

    #[test]
    fn port_ranges_are_checked_and_packed() {
        assert_eq!(Ports::new(0x2f8, 0), None);
        assert_eq!(Ports::new(0xffff, 2), None);
        assert_eq!(Ports::new(0x1_0000, 1), None);
        let p = Ports::new(0xffff, 1).unwrap();
        assert_eq!(Ports::unpack(p.pack()), Some(p));
        let all = Ports::new(0, 0x1_0000).unwrap();
        assert_eq!(Ports::unpack(all.pack()), Some(all));
        let com2 = Ports::new(0x2f8, 8).unwrap();
        assert!(!KERNEL_PORTS.iter().any(|k| k.overlaps(com2)));
        assert!(KERNEL_PORTS.iter().any(|k| k.overlaps(Ports::new(0x3f0, 9).unwrap())));
    }

    #[test]
    fn open_set_counts_and_fills() {
        let mut s = OpenSet::<2>::default();
        let a = Ports::new(0x2f8, 8).unwrap();
        let b = Ports::new(0x60, 1).unwrap();
        s.open(a).unwrap();
        s.open(a).unwrap();
        s.open(b).unwrap();
        assert_eq!(s.open(Ports::new(0x70, 2).unwrap()), Err(OpenError::Full));
        assert!(s.close(a));
        assert!(s.packed().contains(&a.pack()));
        assert!(s.close(a));
        assert!(!s.packed().contains(&a.pack()));
        assert!(!s.close(a));
    }
}
