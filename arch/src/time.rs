//! The TSC as the kernel's clock, and where its frequency comes from.
//!
//! Sources, in order of trust: CPUID leaf 0x15 (crystal × ratio), the hypervisor leaf
//! 0x4000_0010 (TSC kHz), CPUID leaf 0x16 (base MHz), else a measurement against one of the
//! reference clocks the kernel lists, first that answers: PIT channel 2 (channel 0 where channel
//! 2, gated through the PC speaker port, does not answer), the HPET's main counter
//! or the ACPI PM timer (the median of three 10 ms windows each). A PC BIOS promises the PIT;
//! UEFI does not (its PIT may be absent or not counting), so there the kernel lists the timers
//! ACPI describes first. A reference that does not advance within about 2^32 TSC ticks, or
//! gives an implausible frequency, is skipped. Under QEMU's icount mode the TSC counts guest
//! instructions, and every reference clock runs on the same virtual clock, so the calibration
//! still holds.
use crate::cpu::{self, rdtsc};
use crate::paging::{self, FrameSource, MapError};
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    Cpuid15,
    Hypervisor,
    Cpuid16,
    Pit,
    Hpet,
    PmTimer,
}

impl TscSource {
    pub fn describe(self) -> &'static str {
        match self {
            TscSource::Cpuid15 => "CPUID leaf 0x15",
            TscSource::Hypervisor => "hypervisor leaf 0x40000010",
            TscSource::Cpuid16 => "CPUID leaf 0x16 (base frequency)",
            TscSource::Pit => "calibrated against the PIT",
            TscSource::Hpet => "calibrated against the HPET",
            TscSource::PmTimer => "calibrated against the ACPI PM timer",
        }
    }
}

/// A clock to measure the TSC against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefClock {
    /// PIT channel 2 (ports 0x42, 0x43, 0x61): a PC/AT's; channel 0 (ports 0x40, 0x43) where
    /// channel 2 does not answer (no speaker gate).
    Pit,
    /// The HPET whose registers are at this physical address (ACPI HPET table); mapped
    /// uncached when it is tried.
    Hpet { phys: u64 },
    /// The ACPI PM timer (3.579545 MHz) at this I/O port, 24 or 32 bits wide (FADT).
    PmTimer { port: u16, bits32: bool },
}

static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Determines the TSC frequency once (on the BSP) and returns it with its source. `refs` are
/// the reference clocks to measure against, best first, when CPUID does not say; `frames`
/// supplies page tables for mapping the HPET. `None`: CPUID does not give it and no reference
/// clock answered (the kernel cannot keep time: the caller stops the boot with a line).
pub fn init_tsc(features: &cpu::Features, refs: &[RefClock], frames: &mut impl FrameSource) -> Option<(u64, TscSource)> {
    // A frequency CPUID gives is believed only if it is plausible (a hypervisor's leaf, or a
    // crystal ratio, that says otherwise is not the TSC's): else the reference clocks measure it.
    // Each CPUID source is held to it on its own: one that says nonsense leaves the next its say
    // (before the forty-third session the first that said anything was the only one asked,
    // and an implausible leaf 0x15 hid a good leaf 0x16; a review found it).
    let found = from_cpuid(features).or_else(|| refs.iter().find_map(|r| calibrate(*r, frames)));
    let (hz, src) = found?;
    TSC_HZ.store(hz.max(1), Ordering::Relaxed);
    Some((hz, src))
}

fn from_cpuid(f: &cpu::Features) -> Option<(u64, TscSource)> {
    if let Some((den, num, crystal, _)) = cpu::cpuid(0x15) {
        let hz = crystal as u64 * num as u64 / (den as u64).max(1);
        if den != 0 && plausible(hz) {
            return Some((hz, TscSource::Cpuid15));
        }
    }
    if f.hypervisor {
        if let Some((khz, ..)) = cpu::cpuid(0x4000_0010) {
            if plausible(khz as u64 * 1000) {
                return Some((khz as u64 * 1000, TscSource::Hypervisor));
            }
        }
    }
    if let Some((mhz, ..)) = cpu::cpuid(0x16) {
        let mhz = mhz & 0xffff;
        if plausible(mhz as u64 * 1_000_000) {
            return Some((mhz as u64 * 1_000_000, TscSource::Cpuid16));
        }
    }
    None
}

/// Length of one calibration window.
const WINDOW_MS: u64 = 10;
/// TSC ticks after which a reference clock that has not counted a window is given up on
/// (over a second at any real TSC frequency).
const GIVE_UP_TICKS: u64 = 1 << 32;

/// The TSC frequency measured against `r` (median of three windows), if `r` answers sensibly.
fn calibrate(r: RefClock, frames: &mut impl FrameSource) -> Option<(u64, TscSource)> {
    let (hz, src) = match r {
        // Channel 2 needs the PC speaker gate (port 0x61); where it does not answer (QEMU's
        // microvm has no such port) channel 0 is tried.
        RefClock::Pit => (median(|| pit_window(WINDOW_MS)).or_else(|| median(|| pit0_window(WINDOW_MS)))?, TscSource::Pit),
        // SAFETY: a `RefClock::Hpet` names the block the ACPI HPET table gives (the kernel's
        // `reference_clocks` makes it from that table only, at boot).
        RefClock::Hpet { phys } => (unsafe { Hpet::map(frames, phys) }.ok()?.calibrate()?, TscSource::Hpet),
        RefClock::PmTimer { port, bits32 } => (median(|| pm_timer_window(port, bits32))?, TscSource::PmTimer),
    };
    plausible(hz).then_some((hz, src))
}

/// A TSC below 10 MHz or above 100 GHz means the reference did not count what it should.
fn plausible(hz: u64) -> bool {
    (10_000_000..=100_000_000_000).contains(&hz)
}

/// The median of three measurements (TSC frequencies in Hz), if all three worked.
fn median(mut window: impl FnMut() -> Option<u64>) -> Option<u64> {
    let mut s = [window()?, window()?, window()?];
    s.sort_unstable();
    Some(s[1])
}

/// PIT input clock.
const PIT_HZ: u64 = 1_193_182;

/// One PIT channel 2 window of `ms` ms: the TSC frequency it implies.
fn pit_window(ms: u64) -> Option<u64> {
    let mut gate: Port<u8> = Port::new(0x61);
    let mut mode: Port<u8> = Port::new(0x43);
    let mut ch2: Port<u8> = Port::new(0x42);
    let count = (PIT_HZ * ms / 1000) as u16;
    // SAFETY: ports 0x61/0x43/0x42 are the PC speaker gate and PIT channel 2, used only here
    // (speaker output bit 1 kept off). Mode 0 counts down once and raises OUT2 at zero. On a
    // machine without a PIT the reads return junk and the loop gives up.
    unsafe {
        let g = gate.read();
        gate.write((g & !0x02) & !0x01);
        mode.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        ch2.write(count as u8);
        ch2.write((count >> 8) as u8);
        // Mode 0 holds OUT2 low from the control word until the count ends: a high OUT2 now is
        // no PIT (a machine without one reads the port as all ones). Without this check the
        // window "ended" at the first read, and under a loaded host the few thousand ticks the
        // reads took passed for a 13 MHz TSC (seen with `-machine pit=off`): every timeout
        // would have run 200 times too long.
        if gate.read() & 0x20 != 0 {
            gate.write(g & !0x03);
            return None;
        }
        let start = rdtsc();
        gate.write((g & !0x02) | 0x01);
        let mut done = false;
        while !done && rdtsc() - start < GIVE_UP_TICKS {
            done = gate.read() & 0x20 != 0;
            cpu::relax();
        }
        let t = rdtsc() - start;
        gate.write(g & !0x03);
        done.then(|| t * 1000 / ms)
    }
}

/// One window of `ms` ms counted on PIT channel 0 (ports 0x40, 0x43), for a PIT without the PC
/// speaker gate that [`pit_window`] needs: as there, mode 0 counts down once and raises the
/// output at zero, but the output is read with the read-back command's status byte (bit 7 the
/// output, bit 6 "null count": the count not loaded yet; bits 5..0 the mode as programmed, which
/// tells a PIT from ports that read all ones or all zeros). Channel 0 has no gate to hold it: it
/// counts from the count's second byte, so the TSC is read just before that byte, and a window
/// that ended before its first look (the vCPU held up for longer than the window) is tried
/// again rather than taken for no PIT. Like the firmware's own channel-0 ticks, the rising
/// output is an IRQ 0 edge (the kernel sets up its interrupt lines after).
fn pit0_window(ms: u64) -> Option<u64> {
    const PROGRAMMED: u8 = 0b11_000_0; // lobyte/hibyte, mode 0, binary (status bits 5..0)
    let mut mode: Port<u8> = Port::new(0x43);
    let mut ch0: Port<u8> = Port::new(0x40);
    let count = (PIT_HZ * ms / 1000) as u16;
    for _ in 0..3 {
        // SAFETY: ports 0x43/0x40 are the PIT's mode register and channel 0, used only here and
        // only while the bootstrap CPU calibrates (nothing else programs the PIT: the kernel's
        // timer is the local APIC's). On a machine without a PIT the writes go nowhere.
        let start = unsafe {
            mode.write(0b0011_0000); // channel 0, lobyte/hibyte, mode 0, binary
            ch0.write(count as u8);
            let t = rdtsc();
            ch0.write((count >> 8) as u8);
            t
        };
        // SAFETY: as above; 0b11_1_0_001_0: read-back, not the count, the status, channel 0.
        let mut status = || unsafe {
            mode.write(0b1110_0010);
            ch0.read()
        };
        let mut s = status();
        if s & 0x3f != PROGRAMMED {
            return None;
        }
        if s & 0x80 != 0 {
            continue;
        }
        while s & 0x80 == 0 || s & 0x40 != 0 {
            if rdtsc() - start > GIVE_UP_TICKS {
                return None;
            }
            cpu::relax();
            s = status();
        }
        return Some((rdtsc() - start) * 1000 / ms);
    }
    None
}

/// ACPI PM timer frequency.
const PM_TIMER_HZ: u64 = 3_579_545;

/// One ACPI PM timer window of [`WINDOW_MS`]: the TSC frequency it implies.
fn pm_timer_window(port: u16, bits32: bool) -> Option<u64> {
    let mask: u32 = if bits32 { u32::MAX } else { 0x00ff_ffff };
    let mut p: Port<u32> = Port::new(port);
    let want = PM_TIMER_HZ * WINDOW_MS / 1000;
    // SAFETY: `port` is the PM timer block the FADT names; reading the PM timer has no side
    // effects.
    let mut read = || unsafe { p.read() } & mask;
    let (c0, t0) = (read(), rdtsc());
    loop {
        let (c, t) = (read(), rdtsc());
        let ticks = c.wrapping_sub(c0) & mask;
        if ticks as u64 >= want {
            return Some(((t - t0) as u128 * PM_TIMER_HZ as u128 / ticks as u128) as u64);
        }
        if t - t0 > GIVE_UP_TICKS {
            return None;
        }
        cpu::relax();
    }
}

/// An HPET's registers, mapped uncached.
struct Hpet {
    regs: u64,
}

impl Hpet {
    const CAPABILITIES: u64 = 0x000;
    const CONFIG: u64 = 0x010;
    const COUNTER: u64 = 0x0f0;

    /// # Safety
    /// `phys` is the HPET's register block (from the ACPI HPET table), not RAM.
    unsafe fn map(frames: &mut impl FrameSource, phys: u64) -> Result<Hpet, MapError> {
        // SAFETY: the caller's contract is `map_mmio`'s.
        Ok(Hpet { regs: unsafe { paging::map_mmio(frames, phys, 1024) }? })
    }

    fn read(&self, reg: u64) -> u64 {
        // SAFETY: `regs` maps the HPET's 1 KiB register block uncached (`map`); the registers
        // read here (capabilities, configuration, main counter) have no read side effects.
        unsafe { ((self.regs + reg) as *const u64).read_volatile() }
    }

    fn write(&self, reg: u64, v: u64) {
        // SAFETY: as in `read`; only the configuration register's ENABLE bit is changed.
        unsafe { ((self.regs + reg) as *mut u64).write_volatile(v) }
    }

    /// The median of three windows; the counter is started for them if it was stopped, and
    /// left as it was found.
    fn calibrate(&self) -> Option<u64> {
        let cap = self.read(Self::CAPABILITIES);
        let period_fs = cap >> 32;
        // The specification allows periods up to 100 ns; 0 or more is not an HPET.
        if period_fs == 0 || period_fs > 100_000_000 {
            return None;
        }
        let wide = cap & (1 << 13) != 0;
        let mask = if wide { u64::MAX } else { u32::MAX as u64 };
        let config = self.read(Self::CONFIG);
        if config & 1 == 0 {
            self.write(Self::CONFIG, config | 1);
        }
        let want = WINDOW_MS * 1_000_000_000_000 / period_fs;
        let window = || {
            let (c0, t0) = (self.read(Self::COUNTER) & mask, rdtsc());
            loop {
                let (c, t) = (self.read(Self::COUNTER) & mask, rdtsc());
                let ticks = c.wrapping_sub(c0) & mask;
                if ticks >= want {
                    return Some(((t - t0) as u128 * 1_000_000_000_000_000 / (ticks as u128 * period_fs as u128)) as u64);
                }
                if t - t0 > GIVE_UP_TICKS {
                    return None;
                }
                cpu::relax();
            }
        };
        let hz = median(window);
        if config & 1 == 0 {
            self.write(Self::CONFIG, config);
        }
        hz
    }
}

/// TSC ticks per second (0 until `init_tsc` ran, at least 1 after).
#[inline]
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// TSC ticks in `us` microseconds.
pub fn us_to_ticks(us: u64) -> u64 {
    (tsc_hz() as u128 * us as u128 / 1_000_000) as u64
}

/// Microseconds in `ticks` TSC ticks.
pub fn ticks_to_us(ticks: u64) -> u64 {
    (ticks as u128 * 1_000_000 / tsc_hz().max(1) as u128) as u64
}

/// Busy-waits `us` microseconds.
pub fn delay_us(us: u64) {
    let end = rdtsc() + us_to_ticks(us);
    while rdtsc() < end {
        cpu::relax();
    }
}

/// Spins until `cond` holds or `us` microseconds pass; returns whether `cond` held.
pub fn wait_until(us: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = rdtsc() + us_to_ticks(us);
    loop {
        if cond() {
            return true;
        }
        if rdtsc() >= end {
            return cond();
        }
        cpu::relax();
    }
}
