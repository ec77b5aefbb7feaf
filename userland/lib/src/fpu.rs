//! The FPU/SIMD isolation test's threads (docs/security.md, "FPU and SIMD registers"), shared
//! by the root task and the worker so that threads of two tasks run the same code.
//!
//! Each thread loads a pattern of its own into the registers the test's mode names (MMX `mm0-7`;
//! SSE `xmm0-15` and MXCSR; AVX the whole of `ymm0-15`) once, then keeps checking that they still
//! hold it, spinning (to be preempted by the timer) or calling and serving an endpoint (to be
//! switched away by IPC). User programs are compiled without SSE (`x86_64-unknown-none`), so
//! nothing but this module's `asm!` touches those registers.
//!
//! The threads share one page (see `word`): a stop flag, the mode, the TSC rate, and one record
//! per thread.
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Where the shared page is mapped, in the root task and in the worker.
pub const PAGE: u64 = 0x0000_7200_0000_0000;
/// Mode bits.
pub const MMX: u64 = 1;
pub const SSE: u64 = 2;
pub const AVX: u64 = 4;
/// Roles (the low byte of a thread's operand; the next byte is its number `k`, 1..=[`THREADS`]).
pub const SPIN: u64 = 0;
pub const CLIENT: u64 = 1;
pub const SERVER: u64 = 2;
/// Spins for a gap, then sleeps as long (a receive with a timeout on an endpoint of its own
/// that nobody sends to), and again: its CPU idles now and then.
pub const NAP: u64 = 3;
/// A flag of a server's operand: it runs no FPU or SIMD instruction until it has served
/// [`LATE_AFTER`] requests, then checks that the registers hold a new thread's state (its first
/// use: the threads it switched with must have left none of their values) and loads its pattern
/// as the others do. Until then every round trip switches between a thread that uses the
/// registers and one that does not.
pub const LATE: u64 = 1 << 16;
/// The requests a [`LATE`] server serves without the registers.
pub const LATE_AFTER: u64 = 300;
/// Test threads: 1 and 2 in the root task, 3 and 4 in the worker.
pub const THREADS: u64 = 4;

/// Header words of the shared page.
pub mod header {
    /// Non-zero: stop.
    pub const STOP: usize = 0;
    /// The mode bits.
    pub const MODE: usize = 1;
    /// TSC ticks that count as having been switched out (a gap between two looks).
    pub const GAP: usize = 2;
}
/// A thread's record: word `16 * k + field`.
pub mod rec {
    /// Checks done.
    pub const CHECKS: usize = 0;
    /// Checks that found a register not holding this thread's pattern.
    pub const BAD: usize = 1;
    /// The first wrong value seen, and the value expected there.
    pub const SEEN: usize = 2;
    pub const WANT: usize = 3;
    /// Times the thread saw a gap in time between two looks (it was switched out).
    pub const GAPS: usize = 4;
    /// IPC round trips (client) or requests served (server).
    pub const IPCS: usize = 5;
    /// Set when the thread has loaded its pattern.
    pub const STARTED: usize = 6;
    /// The register the first wrong value was in: kind << 8 | index (kind 1 mm, 2 xmm/ymm, 3 MXCSR).
    pub const WHERE: usize = 7;
    /// What the thread found before it loaded its pattern, if that was not a new thread's
    /// state: kind << 8 | index + 1 (kind 4: the x87 control word), then the value found.
    pub const DIRTY_WHERE: usize = 8;
    pub const DIRTY_SEEN: usize = 9;
}

/// Word `i` of the shared page at `page`.
///
/// # Safety
/// The page must be mapped readable and writable at `page` for as long as the reference is used.
pub unsafe fn word(page: u64, i: usize) -> &'static AtomicU64 {
    assert!(i < 512);
    // SAFETY: per the contract; i < 512 keeps it inside the page.
    unsafe { &*((page + 8 * i as u64) as *const AtomicU64) }
}

/// The pattern of thread `k`: lane `j` (64 bits) of register `i`.
pub fn value(k: u64, i: u64, j: u64) -> u64 {
    0xf900_0000_0000_0000 | k << 40 | i << 8 | j
}

/// Thread `k`'s MXCSR: its own rounding mode (and flush-to-zero for k >= 4), all exceptions masked.
pub fn mxcsr(k: u64) -> u32 {
    0x1f80 | ((k & 3) as u32) << 13 | if k >= 4 { 0x8000 } else { 0 }
}

/// CPUID leaf `leaf`, sub-leaf `sub`: eax, ebx, ecx, edx.
fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: CPUID is unprivileged; rbx is saved around it (LLVM reserves it).
    unsafe {
        core::arch::asm!("mov {t:r}, rbx", "cpuid", "xchg {t:r}, rbx", t = out(reg) b, inout("eax") leaf => a, inout("ecx") sub => c, out("edx") d)
    };
    [a, b, c, d]
}

/// Whether the CPU offers AVX as the kernel can use it (CPUID.1:ECX\[28\] and XSAVE, ECX\[26\],
/// with CPUID leaf 0xD there to size its area: a CPU whose highest basic leaf is lower runs
/// without XSAVE, `rl4_arch::fpu`), and whether the kernel enabled it (OSXSAVE and XCR0 bits 1
/// and 2).
pub fn avx() -> (bool, bool) {
    let (max, c) = (cpuid(0, 0)[0], cpuid(1, 0)[2]);
    let has = c & (1 << 28) != 0 && c & (1 << 26) != 0 && max >= 0xd;
    if c & (1 << 27) == 0 {
        return (has, false);
    }
    let lo: u32;
    // SAFETY: XGETBV(0) is unprivileged once CR4.OSXSAVE is set, which CPUID.1:ECX[27] says.
    unsafe { core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _, options(nomem, nostack)) };
    (has, lo & 6 == 6)
}

/// Whether this is QEMU's TCG on a CPU model whose XSAVE it cannot turn on (CPUID leaf 0xD
/// sub-leaf 1 lists none of XSAVEOPT, XSAVEC, XGETBV1, XSAVES): the kernel then runs FXSAVE
/// and leaves AVX off, and says so at boot (`rl4_arch::fpu::init_this_cpu`).
pub fn tcg_xsave_quirk() -> bool {
    let l1 = cpuid(1, 0);
    if l1[2] & (1 << 26) == 0 || cpuid(0, 0)[0] < 0xd {
        return false;
    }
    let h = cpuid(0x4000_0000, 0);
    (h[1], h[2], h[3]) == (0x5447_4354, 0x4354_4743, 0x4743_5447) && cpuid(0xd, 1)[0] & 0xf == 0
}

/// Loads thread `k`'s pattern into the registers `mode` names.
fn load(mode: u64, k: u64) {
    let mut buf = [0u64; 64];
    if mode & MMX != 0 {
        for (i, b) in buf.iter_mut().take(8).enumerate() {
            *b = value(k, i as u64, 7);
        }
        let p = buf.as_ptr();
        // SAFETY: reads 64 bytes of `buf`; only MMX registers change (this program has no x87
        // or MMX code of its own).
        unsafe {
            core::arch::asm!(
            "movq mm0, [{p} + 0]",
            "movq mm1, [{p} + 8]",
            "movq mm2, [{p} + 16]",
            "movq mm3, [{p} + 24]",
            "movq mm4, [{p} + 32]",
            "movq mm5, [{p} + 40]",
            "movq mm6, [{p} + 48]",
            "movq mm7, [{p} + 56]",
            p = in(reg) p, options(nostack, readonly, preserves_flags))
        };
    }
    if mode & (SSE | AVX) != 0 {
        let lanes = if mode & AVX != 0 { 4 } else { 2 };
        for i in 0..16 {
            for j in 0..lanes {
                buf[i * lanes + j] = value(k, i as u64, j as u64);
            }
        }
        let p = buf.as_ptr();
        if mode & AVX != 0 {
            // SAFETY: reads 512 bytes of `buf` into ymm0-15 (the program's code uses none).
            unsafe {
                core::arch::asm!(
            "vmovdqu ymm0, [{p} + 0]",
            "vmovdqu ymm1, [{p} + 32]",
            "vmovdqu ymm2, [{p} + 64]",
            "vmovdqu ymm3, [{p} + 96]",
            "vmovdqu ymm4, [{p} + 128]",
            "vmovdqu ymm5, [{p} + 160]",
            "vmovdqu ymm6, [{p} + 192]",
            "vmovdqu ymm7, [{p} + 224]",
            "vmovdqu ymm8, [{p} + 256]",
            "vmovdqu ymm9, [{p} + 288]",
            "vmovdqu ymm10, [{p} + 320]",
            "vmovdqu ymm11, [{p} + 352]",
            "vmovdqu ymm12, [{p} + 384]",
            "vmovdqu ymm13, [{p} + 416]",
            "vmovdqu ymm14, [{p} + 448]",
            "vmovdqu ymm15, [{p} + 480]",
                p = in(reg) p, options(nostack, readonly, preserves_flags))
            };
        } else {
            // SAFETY: reads 256 bytes of `buf` into xmm0-15.
            unsafe {
                core::arch::asm!(
            "movdqu xmm0, [{p} + 0]",
            "movdqu xmm1, [{p} + 16]",
            "movdqu xmm2, [{p} + 32]",
            "movdqu xmm3, [{p} + 48]",
            "movdqu xmm4, [{p} + 64]",
            "movdqu xmm5, [{p} + 80]",
            "movdqu xmm6, [{p} + 96]",
            "movdqu xmm7, [{p} + 112]",
            "movdqu xmm8, [{p} + 128]",
            "movdqu xmm9, [{p} + 144]",
            "movdqu xmm10, [{p} + 160]",
            "movdqu xmm11, [{p} + 176]",
            "movdqu xmm12, [{p} + 192]",
            "movdqu xmm13, [{p} + 208]",
            "movdqu xmm14, [{p} + 224]",
            "movdqu xmm15, [{p} + 240]",
                p = in(reg) p, options(nostack, readonly, preserves_flags))
            };
        }
        let m = mxcsr(k);
        // SAFETY: a valid MXCSR (no reserved bit) from memory.
        unsafe { core::arch::asm!("ldmxcsr [{p}]", p = in(reg) &m, options(nostack, readonly, preserves_flags)) };
    }
}

/// Checks that the registers still hold thread `k`'s pattern: `None`, or (where, seen, wanted).
fn check(mode: u64, k: u64) -> Option<(u64, u64, u64)> {
    check_with(mode, |i, j| value(k, i, j), mxcsr(k))
}

/// Checks that the registers hold the state of a new thread: every register zero, MXCSR 0x1f80
/// and the x87 control word 0x37f. `None`, or (where, seen, wanted); kind 4 is the FCW.
fn check_clean(mode: u64) -> Option<(u64, u64, u64)> {
    let mut fcw = 0u16;
    // SAFETY: writes the 2 bytes of `fcw`.
    unsafe { core::arch::asm!("fnstcw [{p}]", p = in(reg) &mut fcw, options(nostack, preserves_flags)) };
    if fcw != 0x37f {
        return Some((4 << 8, fcw as u64, 0x37f));
    }
    check_with(mode, |_, _| 0, 0x1f80)
}

fn check_with(mode: u64, value: impl Fn(u64, u64) -> u64, mxcsr: u32) -> Option<(u64, u64, u64)> {
    let mut buf = [0u64; 64];
    if mode & MMX != 0 {
        let p = buf.as_mut_ptr();
        // SAFETY: writes 64 bytes of `buf`.
        unsafe {
            core::arch::asm!(
            "movq [{p} + 0], mm0",
            "movq [{p} + 8], mm1",
            "movq [{p} + 16], mm2",
            "movq [{p} + 24], mm3",
            "movq [{p} + 32], mm4",
            "movq [{p} + 40], mm5",
            "movq [{p} + 48], mm6",
            "movq [{p} + 56], mm7",
            p = in(reg) p, options(nostack, preserves_flags))
        };
        for (i, &b) in buf.iter().take(8).enumerate() {
            if b != value(i as u64, 7) {
                return Some((1 << 8 | i as u64, b, value(i as u64, 7)));
            }
        }
    }
    if mode & (SSE | AVX) != 0 {
        let p = buf.as_mut_ptr();
        let lanes = if mode & AVX != 0 {
            // SAFETY: writes 512 bytes of `buf`.
            unsafe {
                core::arch::asm!(
            "vmovdqu [{p} + 0], ymm0",
            "vmovdqu [{p} + 32], ymm1",
            "vmovdqu [{p} + 64], ymm2",
            "vmovdqu [{p} + 96], ymm3",
            "vmovdqu [{p} + 128], ymm4",
            "vmovdqu [{p} + 160], ymm5",
            "vmovdqu [{p} + 192], ymm6",
            "vmovdqu [{p} + 224], ymm7",
            "vmovdqu [{p} + 256], ymm8",
            "vmovdqu [{p} + 288], ymm9",
            "vmovdqu [{p} + 320], ymm10",
            "vmovdqu [{p} + 352], ymm11",
            "vmovdqu [{p} + 384], ymm12",
            "vmovdqu [{p} + 416], ymm13",
            "vmovdqu [{p} + 448], ymm14",
            "vmovdqu [{p} + 480], ymm15",
                p = in(reg) p, options(nostack, preserves_flags))
            };
            4
        } else {
            // SAFETY: writes 256 bytes of `buf`.
            unsafe {
                core::arch::asm!(
            "movdqu [{p} + 0], xmm0",
            "movdqu [{p} + 16], xmm1",
            "movdqu [{p} + 32], xmm2",
            "movdqu [{p} + 48], xmm3",
            "movdqu [{p} + 64], xmm4",
            "movdqu [{p} + 80], xmm5",
            "movdqu [{p} + 96], xmm6",
            "movdqu [{p} + 112], xmm7",
            "movdqu [{p} + 128], xmm8",
            "movdqu [{p} + 144], xmm9",
            "movdqu [{p} + 160], xmm10",
            "movdqu [{p} + 176], xmm11",
            "movdqu [{p} + 192], xmm12",
            "movdqu [{p} + 208], xmm13",
            "movdqu [{p} + 224], xmm14",
            "movdqu [{p} + 240], xmm15",
                p = in(reg) p, options(nostack, preserves_flags))
            };
            2
        };
        for i in 0..16 {
            for j in 0..lanes {
                let want = value(i as u64, j as u64);
                if buf[i * lanes + j] != want {
                    return Some((2 << 8 | i as u64, buf[i * lanes + j], want));
                }
            }
        }
        let mut m = 0u32;
        // SAFETY: writes the 4 bytes of `m`.
        unsafe { core::arch::asm!("stmxcsr [{p}]", p = in(reg) &mut m, options(nostack, preserves_flags)) };
        // The exception flags (bits 0-5) may be set by nothing here; compare all bits.
        if m != mxcsr {
            return Some((3 << 8, m as u64, mxcsr as u64));
        }
    }
    None
}

/// A test thread: `op` = role | k << 8, the shared page at [`PAGE`], the endpoint in `ep` (client
/// and server). Returns when the page says stop (the server only when its task is killed).
pub fn thread(op: u64, ep: u64) {
    let (role, k) = (op & 0xff, (op >> 8) & 0xff);
    if k == 0 || k > THREADS {
        return;
    }
    // SAFETY (all uses of `w`): the starter maps the page at PAGE, writable, before it starts the
    // thread, and unmaps it only after every thread stopped or its task was killed.
    let w = |i: usize| unsafe { word(PAGE, i) };
    let r = |f: usize| w(16 * k as usize + f);
    let mode = w(header::MODE).load(Relaxed);
    let gap = w(header::GAP).load(Relaxed);
    let first_use = || {
        if let Some((at, seen, _)) = check_clean(mode) {
            r(rec::DIRTY_SEEN).store(seen, Relaxed);
            r(rec::DIRTY_WHERE).store(at + 1, Relaxed);
        }
        load(mode, k);
    };
    let mut late = role == SERVER && op & LATE != 0;
    if !late {
        first_use();
    }
    r(rec::STARTED).store(1, Relaxed);
    let look = |last: &mut u64| {
        if let Some((at, seen, want)) = check(mode, k) {
            if r(rec::BAD).fetch_add(1, Relaxed) == 0 {
                r(rec::SEEN).store(seen, Relaxed);
                r(rec::WANT).store(want, Relaxed);
                r(rec::WHERE).store(at, Relaxed);
            }
            load(mode, k);
        }
        r(rec::CHECKS).fetch_add(1, Relaxed);
        let now = crate::rdtsc();
        if now.wrapping_sub(*last) > gap {
            r(rec::GAPS).fetch_add(1, Relaxed);
        }
        *last = crate::rdtsc();
    };
    let mut last = crate::rdtsc();
    match role {
        SERVER => {
            let mut m = crate::sys::recv(ep);
            while let Ok(msg) = m {
                if late && r(rec::IPCS).load(Relaxed) >= LATE_AFTER {
                    first_use();
                    late = false;
                }
                if !late {
                    look(&mut last);
                }
                r(rec::IPCS).fetch_add(1, Relaxed);
                m = crate::sys::reply_recv(ep, &msg);
            }
        }
        CLIENT => {
            while w(header::STOP).load(Relaxed) == 0 {
                look(&mut last);
                if crate::sys::call(ep, &crate::sys::Msg::default()).is_ok() {
                    r(rec::IPCS).fetch_add(1, Relaxed);
                }
                look(&mut last);
            }
        }
        NAP => {
            while w(header::STOP).load(Relaxed) == 0 {
                let start = crate::rdtsc();
                while crate::rdtsc().wrapping_sub(start) < gap && w(header::STOP).load(Relaxed) == 0 {
                    look(&mut last);
                }
                let _ = crate::sys::recv_timeout(ep, gap.max(1));
                look(&mut last);
            }
        }
        _ => {
            while w(header::STOP).load(Relaxed) == 0 {
                look(&mut last);
            }
        }
    }
}
