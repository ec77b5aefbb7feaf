//! I/O port permissions: each CPU's TSS carries an I/O permission bitmap (one bit per port,
//! 0 = user mode may use it; Intel SDM vol. 1 §19.5.2), which the kernel rewrites when it
//! switches to a task whose open port ranges differ from those the bitmap allows. A `in`/`out`
//! to a port whose bit is set (or beyond the bitmap) faults with `#GP` before it reaches the
//! bus.
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

/// Bytes of the bitmap proper (65,536 ports), plus the terminating byte of ones the CPU needs.
pub const IOMAP_LEN: usize = 8192 + 1;

/// One CPU's I/O permission bitmap. It lives right after that CPU's TSS (`gdt::CpuTables`).
#[repr(C)]
pub struct IoMap {
    bits: [AtomicU8; IOMAP_LEN],
}

impl IoMap {
    /// Every port closed.
    pub const fn new() -> IoMap {
        IoMap { bits: [const { AtomicU8::new(0xff) }; IOMAP_LEN] }
    }

    /// Opens (`allow`) or closes ports `base .. base + count` (clamped to 65,536).
    ///
    /// A byte at a time, with a plain load and store: only the CPU the bitmap belongs to writes
    /// it (the switch into a task, with interrupts off), so no read-modify-write needs to be
    /// locked. (One locked operation per port made a task holding four ranges of 62,000 ports
    /// cost every switch into or out of it half a million locked operations.)
    pub fn set(&self, base: u16, count: u32, allow: bool) {
        let end = (base as u32).saturating_add(count).min(65_536);
        let mut p = base as u32;
        while p < end {
            let byte = p / 8;
            let (lo, hi) = (p % 8, (end - byte * 8).min(8));
            let mask = (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u8;
            let b = &self.bits[byte as usize];
            let v = b.load(Ordering::Relaxed);
            b.store(if allow { v & !mask } else { v | mask }, Ordering::Relaxed);
            p = (byte + 1) * 8;
        }
    }

    /// Whether port `p` is open.
    pub fn allows(&self, p: u16) -> bool {
        self.bits[p as usize / 8].load(Ordering::Relaxed) & (1 << (p % 8)) == 0
    }

    /// The first port whose bit disagrees with `open` (whether that port should be open), or
    /// 65,536 if the terminating byte is not all ones; `None` if the bitmap is exactly that.
    /// (The consistency check's comparison: 65,536 calls of `open`.)
    pub fn first_disagreement(&self, open: impl Fn(u16) -> bool) -> Option<u32> {
        if self.bits[IOMAP_LEN - 1].load(Ordering::Relaxed) != 0xff {
            return Some(65_536);
        }
        (0..=u16::MAX).find(|&p| self.allows(p) != open(p)).map(u32::from)
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.bits.as_ptr() as *const u8
    }
}

impl core::fmt::Debug for IoMap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "IoMap@{:p}", self)
    }
}

impl Default for IoMap {
    fn default() -> Self {
        Self::new()
    }
}

/// Most CPUs whose bitmaps are registered.
pub const MAX_CPUS: usize = 256;

static MAPS: [AtomicPtr<IoMap>; MAX_CPUS] = [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

/// Records CPU `cpu`'s bitmap (done once, when its TSS is loaded).
pub fn register(cpu: usize, map: &'static IoMap) {
    if cpu < MAX_CPUS {
        MAPS[cpu].store(map as *const IoMap as *mut IoMap, Ordering::Release);
    }
}

/// The calling CPU's bitmap (`None` before its TSS is loaded).
#[cfg(target_os = "none")]
pub fn this_cpu() -> Option<&'static IoMap> {
    of_cpu(crate::percpu::cpu_index() as usize % MAX_CPUS)
}

/// CPU `cpu`'s bitmap (`None` before its TSS is loaded): for the consistency check, which
/// reads another CPU's while that CPU is stopped (only the owner writes it: [`IoMap::set`]).
pub fn of_cpu(cpu: usize) -> Option<&'static IoMap> {
    let p = MAPS.get(cpu)?.load(Ordering::Acquire);
    // SAFETY: only `register` stores here, from a `&'static IoMap`.
    (!p.is_null()).then(|| unsafe { &*p })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_and_closes_exactly_the_range() {
        let m = IoMap::new();
        m.set(0x2f8, 8, true);
        assert!(!m.allows(0x2f7) && m.allows(0x2f8) && m.allows(0x2ff) && !m.allows(0x300));
        m.set(0xfff0, 0x100, true);
        assert!(m.allows(0xffff));
        m.set(0x2f8, 8, false);
        assert!(!(0x2f0..0x310).any(|p| m.allows(p)));
        assert_eq!(m.bits[IOMAP_LEN - 1].load(Ordering::Relaxed), 0xff);
    }

    #[test]
    fn first_disagreement_names_the_first_wrong_port() {
        let m = IoMap::new();
        assert_eq!(m.first_disagreement(|_| false), None);
        m.set(0x2f8, 8, true);
        m.set(0xfffe, 2, true);
        let open = |p: u16| (0x2f8..0x300).contains(&p) || p >= 0xfffe;
        assert_eq!(m.first_disagreement(open), None);
        assert_eq!(m.first_disagreement(|p| open(p) && p != 0x2fb), Some(0x2fb));
        assert_eq!(m.first_disagreement(|p| open(p) || p == 0x300), Some(0x300));
        assert_eq!(m.first_disagreement(|p| open(p) && p != 0xffff), Some(0xffff));
        assert_eq!(m.first_disagreement(|_| false), Some(0x2f8));
        m.bits[IOMAP_LEN - 1].store(0x7f, Ordering::Relaxed);
        assert_eq!(m.first_disagreement(open), Some(65_536));
    }

    /// Against a port-at-a-time model, for ranges with every alignment of their ends.
    #[test]
    fn byte_at_a_time_matches_port_at_a_time() {
        let m = IoMap::new();
        let mut model = vec![false; 65_536];
        let ranges = [(0u16, 1u32, true), (3, 10, true), (7, 1, false), (8, 8, true), (9, 6, false), (0x2f8, 8, true), (0xfff9, 100, true), (1000, 37, true), (1001, 35, false), (0, 65_536, false), (17, 0, true), (12, 60_000, true), (13, 3, false)];
        for &(base, count, allow) in &ranges {
            m.set(base, count, allow);
            for p in base as u32..(base as u32 + count).min(65_536) {
                model[p as usize] = allow;
            }
            assert!((0..65_536u32).all(|p| m.allows(p as u16) == model[p as usize]), "after {base:#x}+{count} {allow}");
            assert_eq!(m.bits[IOMAP_LEN - 1].load(Ordering::Relaxed), 0xff);
        }
    }
}
