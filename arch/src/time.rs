//! The TSC as the kernel's clock, and where its frequency comes from.
//!
//! Sources, in order of trust: CPUID leaf 0x15 (crystal × ratio), the hypervisor leaf
//! 0x4000_0010 (TSC kHz), CPUID leaf 0x16 (base MHz), else a measurement against PIT channel 2
//! (the median of three 10 ms windows). Under QEMU's icount mode the TSC counts guest
//! instructions, and the PIT runs on the same virtual clock, so the calibration still holds.
use crate::cpu::{self, rdtsc};
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    Cpuid15,
    Hypervisor,
    Cpuid16,
    Pit,
}

impl TscSource {
    pub fn describe(self) -> &'static str {
        match self {
            TscSource::Cpuid15 => "CPUID leaf 0x15",
            TscSource::Hypervisor => "hypervisor leaf 0x40000010",
            TscSource::Cpuid16 => "CPUID leaf 0x16 (base frequency)",
            TscSource::Pit => "calibrated against the PIT",
        }
    }
}

static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Determines the TSC frequency once (on the BSP) and returns it with its source.
pub fn init_tsc(features: &cpu::Features) -> (u64, TscSource) {
    let (hz, src) = from_cpuid(features).unwrap_or_else(|| (pit_calibrate(), TscSource::Pit));
    TSC_HZ.store(hz.max(1), Ordering::Relaxed);
    (hz, src)
}

fn from_cpuid(f: &cpu::Features) -> Option<(u64, TscSource)> {
    if let Some((den, num, crystal, _)) = cpu::cpuid(0x15) {
        if den != 0 && num != 0 && crystal != 0 {
            return Some((crystal as u64 * num as u64 / den as u64, TscSource::Cpuid15));
        }
    }
    if f.hypervisor {
        if let Some((khz, ..)) = cpu::cpuid(0x4000_0010) {
            if khz != 0 {
                return Some((khz as u64 * 1000, TscSource::Hypervisor));
            }
        }
    }
    if let Some((mhz, ..)) = cpu::cpuid(0x16) {
        let mhz = mhz & 0xffff;
        if mhz != 0 {
            return Some((mhz as u64 * 1_000_000, TscSource::Cpuid16));
        }
    }
    None
}

/// PIT input clock.
const PIT_HZ: u64 = 1_193_182;

fn pit_window(ms: u64) -> u64 {
    let mut gate: Port<u8> = Port::new(0x61);
    let mut mode: Port<u8> = Port::new(0x43);
    let mut ch2: Port<u8> = Port::new(0x42);
    let count = (PIT_HZ * ms / 1000) as u16;
    // SAFETY: ports 0x61/0x43/0x42 are the PC speaker gate and PIT channel 2, used only here
    // (speaker output bit 1 kept off). Mode 0 counts down once and raises OUT2 at zero.
    unsafe {
        let g = gate.read();
        gate.write((g & !0x02) & !0x01);
        mode.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        ch2.write(count as u8);
        ch2.write((count >> 8) as u8);
        let start = rdtsc();
        gate.write((g & !0x02) | 0x01);
        while gate.read() & 0x20 == 0 {
            cpu::relax();
        }
        let t = rdtsc() - start;
        gate.write(g & !0x03);
        t
    }
}

fn pit_calibrate() -> u64 {
    let ms = 10;
    let mut s = [pit_window(ms), pit_window(ms), pit_window(ms)];
    s.sort_unstable();
    s[1] * 1000 / ms
}

/// TSC ticks per second (1 until `init_tsc` ran).
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
