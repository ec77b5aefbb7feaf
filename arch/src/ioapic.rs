//! The I/O APIC's registers (82093AA and compatibles): an index register at offset 0 and a
//! data window at offset 0x10, 32 bits each. Register 1 is the version, whose bits 16..23 give
//! the last redirection entry; entry `n` is registers `0x10 + 2n` (low half: vector, delivery
//! and destination mode, polarity, trigger, mask) and `0x11 + 2n` (high half: the destination
//! APIC id in bits 24..31, physical destination mode).
//!
//! The index/window pair is one shared cursor: the caller serialises every use of an
//! [`IoApic`] (the kernel keeps each behind a lock, `kernel/src/irq.rs`).

/// Where one interrupt pin goes and how it is sensed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redirection {
    pub vector: u8,
    /// Destination local APIC id (physical mode; at most 255 without interrupt remapping).
    pub dest: u8,
    pub active_low: bool,
    pub level: bool,
    pub masked: bool,
}

impl Redirection {
    /// The entry as (low, high) register values: fixed delivery, physical destination.
    pub const fn encode(self) -> (u32, u32) {
        let mut low = self.vector as u32;
        if self.active_low {
            low |= 1 << 13;
        }
        if self.level {
            low |= 1 << 15;
        }
        if self.masked {
            low |= 1 << 16;
        }
        (low, (self.dest as u32) << 24)
    }

    /// An entry read back as (low, high) register values: `None` if it is not one
    /// [`Redirection::encode`] makes (another delivery mode, a logical destination, any other
    /// bit set: the pin was programmed by something else). The delivery-status and remote-IRR
    /// bits (12 and 14) are the chip's own and are ignored.
    pub const fn decode(low: u32, high: u32) -> Option<Redirection> {
        const OURS: u32 = 0xff | 1 << 13 | 1 << 15 | 1 << 16;
        if low & !(OURS | 1 << 12 | 1 << 14) != 0 || high & 0x00ff_ffff != 0 {
            return None;
        }
        Some(Redirection {
            vector: low as u8,
            dest: (high >> 24) as u8,
            active_low: low & 1 << 13 != 0,
            level: low & 1 << 15 != 0,
            masked: low & 1 << 16 != 0,
        })
    }
}

/// One I/O APIC, through its mapped registers.
pub struct IoApic {
    base: u64,
}

const MASK_BIT: u32 = 1 << 16;

impl IoApic {
    /// # Safety
    /// `base` is the virtual address of an I/O APIC's registers, mapped uncached for as long
    /// as the value lives, and no other `IoApic` value drives the same chip.
    pub const unsafe fn new(base: u64) -> IoApic {
        IoApic { base }
    }

    fn read(&mut self, reg: u32) -> u32 {
        // SAFETY: `base` maps the chip's registers (constructor contract); `&mut self` keeps
        // the index/window pair to one user at a time.
        unsafe {
            core::ptr::write_volatile(self.base as *mut u32, reg);
            core::ptr::read_volatile((self.base + 0x10) as *const u32)
        }
    }

    fn write(&mut self, reg: u32, v: u32) {
        // SAFETY: as in `read`.
        unsafe {
            core::ptr::write_volatile(self.base as *mut u32, reg);
            core::ptr::write_volatile((self.base + 0x10) as *mut u32, v);
        }
    }

    /// How many pins (redirection entries) the chip has.
    pub fn pins(&mut self) -> u32 {
        pins_from_version(self.version())
    }

    /// The version register (register 1).
    pub fn version(&mut self) -> u32 {
        self.read(1)
    }

    /// Programs pin `pin` (masked first, so that no half-written entry is ever live).
    pub fn set(&mut self, pin: u32, r: Redirection) {
        let (low, high) = r.encode();
        self.write(0x10 + 2 * pin, low | MASK_BIT);
        self.write(0x11 + 2 * pin, high);
        self.write(0x10 + 2 * pin, low);
    }

    /// Masks or unmasks pin `pin`, keeping the rest of its entry.
    pub fn set_masked(&mut self, pin: u32, masked: bool) {
        let low = self.read(0x10 + 2 * pin);
        self.write(0x10 + 2 * pin, if masked { low | MASK_BIT } else { low & !MASK_BIT });
    }

    /// Whether pin `pin` is masked now.
    pub fn is_masked(&mut self, pin: u32) -> bool {
        self.read(0x10 + 2 * pin) & MASK_BIT != 0
    }

    /// Pin `pin`'s entry read back ([`Redirection::decode`]): `Err(low)` with its mask bit if it
    /// is not one this module writes.
    pub fn get(&mut self, pin: u32) -> Result<Redirection, bool> {
        let low = self.read(0x10 + 2 * pin);
        let high = self.read(0x11 + 2 * pin);
        Redirection::decode(low, high).ok_or(low & MASK_BIT != 0)
    }
}

/// The bytes of an I/O APIC's registers: the index at offset 0, the data window at 0x10.
pub const WINDOW: u64 = 0x20;

/// Why the I/O APIC the MADT places at physical address `addr` is not driven, given the
/// register windows of the chips accepted before it (`earlier`) and the pages of the other
/// devices the kernel drives (`pages`: the local APICs', the HPET's): a window that overlaps
/// another chip's would interleave the two chips' index and data writes, so that a write meant
/// for one programs the other (a pin of the first unmasked with a vector of the kernel's
/// exceptions, before any check could see it); one on another device's page writes that
/// device's registers (the HPET's configuration register sits at offset 0x10).
pub fn window_refusal(addr: u64, earlier: &[u64], pages: &[u64]) -> Option<&'static str> {
    let Some(end) = addr.checked_add(WINDOW) else { return Some("its registers run past the address space") };
    let overlaps = |a: u64, n: u64| addr < a.saturating_add(n) && a < end;
    if earlier.iter().any(|&a| a == addr) {
        return Some("listed again");
    }
    if earlier.iter().any(|&a| overlaps(a, WINDOW)) {
        return Some("its registers overlap another I/O APIC's");
    }
    if pages.iter().any(|&p| overlaps(p & !0xfff, 0x1000)) {
        return Some("its registers lie on the local APIC's or the HPET's page");
    }
    None
}

/// Whether a version register reads as a chip that is not there (nothing answers at the
/// address: every bit set). Its pins would be lines that never interrupt.
pub fn absent(version: u32) -> bool {
    version == u32::MAX
}

/// The pin count the version register `v` gives (its maximum redirection entry plus one), at
/// most 120: the index register has 8 bits, and entry 119's second half is register 0xff. An
/// absent chip reads all ones (256 entries claimed), and 0x10 + 2 × pin would wrap onto the
/// ID and version registers.
fn pins_from_version(v: u32) -> u32 {
    (((v >> 16) & 0xff) + 1).min(120)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_count_fits_the_index_register() {
        assert_eq!(pins_from_version(0x0017_0020), 24);
        assert_eq!(pins_from_version(0xffff_ffff), 120);
        assert_eq!(pins_from_version(0x0077_0011), 120);
    }

    #[test]
    fn windows_that_overlap_or_sit_on_other_devices_are_refused() {
        let pages = [0xfee0_0000, 0xfed0_0000];
        assert_eq!(window_refusal(0xfec0_0000, &[], &pages), None);
        assert_eq!(window_refusal(0xfec0_1000, &[0xfec0_0000], &pages), None);
        // Next to each other, not overlapping.
        assert_eq!(window_refusal(0xfec0_0020, &[0xfec0_0000], &pages), None);
        assert_eq!(window_refusal(0xfec0_0000, &[0xfec0_0000], &pages), Some("listed again"));
        // One chip's index register on the other's data window, and the other way round.
        assert!(window_refusal(0xfec0_0010, &[0xfec0_0000], &pages).is_some());
        assert!(window_refusal(0xfebf_fff0, &[0xfec0_0000], &pages).is_some());
        assert!(window_refusal(0xfee0_0000, &[], &pages).is_some());
        assert!(window_refusal(0xfed0_0400, &[], &pages).is_some());
        // A window running into the HPET's page from below.
        assert!(window_refusal(0xfecf_fff0, &[], &pages).is_some());
        assert!(window_refusal(u64::MAX - 8, &[], &pages).is_some());
    }

    #[test]
    fn a_chip_reading_all_ones_is_absent() {
        assert!(absent(0xffff_ffff));
        assert!(!absent(0x0017_0020));
        assert!(!absent(0x00ff_0011));
    }

    #[test]
    fn encodes_polarity_trigger_mask_and_destination() {
        let r = Redirection { vector: 0x43, dest: 2, active_low: false, level: false, masked: false };
        assert_eq!(r.encode(), (0x43, 2 << 24));
        let r = Redirection { vector: 0x49, dest: 1, active_low: true, level: true, masked: true };
        assert_eq!(r.encode(), (0x49 | 1 << 13 | 1 << 15 | 1 << 16, 1 << 24));
    }

    #[test]
    fn decodes_what_it_encodes_and_nothing_else() {
        for (v, d, al, lv, m) in [(0x40, 0, false, false, false), (0x4f, 255, true, true, true), (0x43, 3, false, true, false)] {
            let r = Redirection { vector: v, dest: d, active_low: al, level: lv, masked: m };
            let (low, high) = r.encode();
            assert_eq!(Redirection::decode(low, high), Some(r));
            // The chip's delivery-status and remote-IRR bits are not the kernel's.
            assert_eq!(Redirection::decode(low | 1 << 12 | 1 << 14, high), Some(r));
        }
        // Lowest-priority delivery, a logical destination, a high word's low bits.
        assert_eq!(Redirection::decode(0x43 | 1 << 8, 0), None);
        assert_eq!(Redirection::decode(0x43 | 1 << 11, 0), None);
        assert_eq!(Redirection::decode(0x43, 1), None);
        // The value a chip's entries hold at reset: masked, vector 0.
        assert_eq!(Redirection::decode(1 << 16, 0).map(|r| r.masked), Some(true));
    }
}

/// Maps the I/O APIC whose registers are at physical address `phys` (uncached) and returns
/// it. Call once per chip: two values driving one chip would interleave their index writes.
///
/// # Safety
/// `phys` is an I/O APIC's register block (from the firmware's MADT), not RAM.
#[cfg(target_os = "none")]
pub unsafe fn map(frames: &mut impl crate::paging::FrameSource, phys: u64) -> Result<IoApic, crate::paging::MapError> {
    // SAFETY: the caller's contract is `map_mmio`'s.
    let va = unsafe { crate::paging::map_mmio(frames, phys, 0x20) }?;
    // SAFETY: `va` maps the chip's registers uncached, for good (the MMIO window is never
    // unmapped); the caller makes one value per chip.
    Ok(unsafe { IoApic::new(va) })
}
