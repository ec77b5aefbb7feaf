//! Per-step time stamps on the IPC path, for the benchmark's breakdown (off unless asked for).
//!
//! With tracing on (`Measure(IPC_TRACE, 1)`), every `Call` and `ReplyRecv` records the TSC at a
//! few fixed points of its kernel path; the differences between consecutive points are summed per
//! step, per system call. Under QEMU's icount mode the TSC counts instructions, so the sums say how
//! many instructions each step takes (a stamp costs a few: those between its two time-stamp reads count in the step it ends).
//!
//! Only a kernel built with the `trace` feature has them (`scripts/bench` builds one for its
//! breakdown); otherwise every stamp compiles to nothing: even a load and a branch per stamp
//! cost the round trip about 50 instructions.
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use rl4_arch::cpu::rdtsc;

pub static ON: AtomicBool = AtomicBool::new(false);

/// Whether this kernel has the stamps at all.
pub const BUILT: bool = cfg!(feature = "trace");

#[inline(always)]
fn on() -> bool {
    BUILT && ON.load(Ordering::Relaxed)
}

/// Steps (the point that ends each one); the trace starts at the Rust entry of the call.
pub const SETUP: usize = 1; // current thread found, registers copied, number decoded
pub const LOOKUP: usize = 2; // endpoint capability looked up
pub const PARTNER: usize = 3; // partner found in the queue, or reply target taken
pub const DELIVERED: usize = 4; // message copied, states changed
pub const SWITCHED: usize = 5; // direct switch done (address space loaded)
pub const DONE: usize = 6; // about to leave the kernel
pub const STEPS: usize = 7;

/// Index 0: `Call`, 1: `ReplyRecv`.
static LAST: [AtomicU64; 2 * rl4_smp::MAX_CPUS] = [const { AtomicU64::new(0) }; 2 * rl4_smp::MAX_CPUS];
static SUMS: [[AtomicU64; STEPS]; 2] = [const { [const { AtomicU64::new(0) }; STEPS] }; 2];
static COUNT: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
/// The per-CPU syscall kind being traced (0, 1, or 2 = none).
static KIND: [AtomicU64; rl4_smp::MAX_CPUS] = [const { AtomicU64::new(2) }; rl4_smp::MAX_CPUS];

#[inline(always)]
fn cpu() -> usize {
    rl4_arch::percpu::cpu_index() as usize
}

/// At the Rust entry of every system call `n`: starts a trace if this is a `Call` or
/// `ReplyRecv`.
#[inline(always)]
pub fn enter(n: u64) {
    if on() {
        if n == rl4_abi::Sys::Call as u64 {
            begin(0);
        } else if n == rl4_abi::Sys::ReplyRecv as u64 {
            begin(1);
        }
    }
}

/// Starts tracing a system call of `kind` (0 `Call`, 1 `ReplyRecv`) on this CPU.
#[inline(always)]
pub fn begin(kind: usize) {
    if on() {
        let c = cpu();
        KIND[c].store(kind as u64, Ordering::Relaxed);
        LAST[c].store(rdtsc(), Ordering::Relaxed);
    }
}

/// Ends step `step` of the traced system call on this CPU.
#[inline(always)]
pub fn stamp(step: usize) {
    if on() {
        let c = cpu();
        let k = KIND[c].load(Ordering::Relaxed) as usize;
        if k < 2 {
            let now = rdtsc();
            let d = now - LAST[c].load(Ordering::Relaxed);
            SUMS[k][step].fetch_add(d, Ordering::Relaxed);
            LAST[c].store(rdtsc(), Ordering::Relaxed);
            if step == DONE {
                COUNT[k].fetch_add(1, Ordering::Relaxed);
                KIND[c].store(2, Ordering::Relaxed);
            }
        }
    }
}

/// This CPU idles: a call it traced ends there, unfinished (a `Call` that blocked with nothing
/// else to run), and is not counted; without this the next system call on this CPU took the
/// idle time as the traced call's last step.
#[inline(always)]
pub fn abandon() {
    if BUILT {
        KIND[cpu()].store(2, Ordering::Relaxed);
    }
}

/// Turns tracing on (clearing the sums and every CPU's unfinished call) or off (keeping the
/// sums for `read`; a call under way is dropped).
pub fn set(on: bool) {
    if on {
        for k in 0..2 {
            for s in &SUMS[k] {
                s.store(0, Ordering::Relaxed);
            }
            COUNT[k].store(0, Ordering::Relaxed);
        }
    }
    for k in &KIND {
        k.store(2, Ordering::Relaxed);
    }
    ON.store(on, Ordering::Release);
}

/// (sum, count) of step `step` of `kind`.
pub fn read(kind: usize, step: usize) -> (u64, u64) {
    (SUMS[kind.min(1)][step.min(STEPS - 1)].load(Ordering::Relaxed), COUNT[kind.min(1)].load(Ordering::Relaxed))
}
