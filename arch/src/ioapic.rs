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
        pins_from_version(self.read(1))
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
    fn encodes_polarity_trigger_mask_and_destination() {
        let r = Redirection { vector: 0x43, dest: 2, active_low: false, level: false, masked: false };
        assert_eq!(r.encode(), (0x43, 2 << 24));
        let r = Redirection { vector: 0x49, dest: 1, active_low: true, level: true, masked: true };
        assert_eq!(r.encode(), (0x49 | 1 << 13 | 1 << 15 | 1 << 16, 1 << 24));
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
