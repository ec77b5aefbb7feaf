//! The kernel's side of every entry from user mode and of interrupts in the idle loop.
//!
//! `arch::entry` saves the user registers and calls these; each user-mode entry ends in
//! `sched::decide`, which picks the thread the return path resumes.
#![allow(unsafe_code)] // `no_mangle` only: the entry assembly calls these by name.

use rl4_smp::{cpus, lapic};

use crate::sched;

fn interrupt(vector: u8) {
    crate::timeline::event(crate::timeline::Kind::Irq, vector as u64, 0);
    match vector {
        lapic::VEC_TIMER => {
            cpus::timer_interrupt();
            sched::tick();
        }
        lapic::VEC_RESCHED => {
            // The ranges first, then the count a sender may wait for (the boot's IPI check):
            // once counted, the interrupt has done all its work.
            crate::device::on_resched();
            cpus::resched_interrupt();
        }
        v if (crate::irq::VEC_BASE..crate::irq::VEC_BASE + crate::irq::LINES as u8).contains(&v) => {
            crate::irq::interrupt((v - crate::irq::VEC_BASE) as usize)
        }
        lapic::VEC_TLB => crate::tlb::tlb_interrupt(),
        lapic::VEC_PING => crate::measure::ping_interrupt(),
        lapic::VEC_PONG => crate::measure::pong_interrupt(),
        lapic::VEC_FREEZE => crate::check::freeze_interrupt(),
        lapic::VEC_ERROR => cpus::error_interrupt(),
        lapic::VEC_SPURIOUS => {} // no acknowledgement
        v => stray(v),
    }
}

/// Interrupts on vectors nothing of rl4's sends (every CPU).
static STRAYS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// An interrupt on vector `v`, which nothing of rl4's sends (an I/O APIC pin or a device's MSI
/// the firmware left enabled, an LVT entry rl4 does not program): acknowledged (without the
/// EOI its CPU would take no interrupt of its priority class or below again) and reported —
/// the first 16, then one in 1,024 (each line holds the CPU a few milliseconds). The running
/// thread is not blamed: its trap ends in a decision like any interrupt's.
#[cold]
fn stray(v: u8) {
    cpus::eoi();
    let n = STRAYS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    if n < 16 || n % 1024 == 0 {
        rl4_arch::println!("interrupt: unexpected vector {v:#x} (nothing rl4 set up sends it): acknowledged and ignored ({} so far)", n + 1);
    }
}

/// Traps from user mode whose kernel code found the direction or alignment-check flag set (a
/// kernel bug: the entry clears both); `KernelCheck` reports any.
static FLAG_LEAKS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// See [`FLAG_LEAKS`].
pub fn flag_leaks() -> u64 {
    FLAG_LEAKS.load(core::sync::atomic::Ordering::Relaxed)
}

#[cold]
fn flag_leak() {
    FLAG_LEAKS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

/// An interrupt or exception taken in user mode.
#[unsafe(no_mangle)]
extern "C" fn rl4_user_trap(vector: u64, error: u64) {
    // The user thread's flags stay in its frame; the kernel's must be clean (`entry.rs`).
    if !rl4_arch::entry::kernel_flags_clean() {
        flag_leak();
    }
    if vector < 32 {
        // A thread's first FPU or SIMD instruction (`rl4_arch::fpu`, "First use") runs again.
        if vector == 7 && crate::thread::fpu_first_use() {
            return;
        }
        match crate::fault::fault_current(vector, error) {
            crate::fault::Handled::Decide => {}
            // As on the system-call path (a hostile review of the twentieth session found this
            // path returning into the handler although something more urgent waited).
            crate::fault::Handled::Switched => return after_direct_switch(),
            crate::fault::Handled::Resume => return,
        }
    } else {
        interrupt(vector as u8);
    }
    sched::decide();
}

/// After a general path's direct switch (a system call's, or a fault's to its handler): a thread
/// more urgent than the one switched to runs first (`resched_pending`: pushed into this CPU's
/// inbox meanwhile, or the thread that left, queued again above it, `sched::switch_direct`), and
/// what was put aside under the locks goes before the thread runs (and a thread its destruction
/// woke here is looked at by a decision: `sched::decide_and_drain`).
#[inline(always)]
fn after_direct_switch() {
    // One look, after the drain (which may wake a thread here): what was pending before it is
    // still pending after.
    crate::reclaim::drain();
    if sched::resched_pending() {
        sched::decide_and_drain();
    }
}

/// An interrupt taken in kernel mode (the idle loop).
#[unsafe(no_mangle)]
fn rl4_kernel_interrupt(vector: u8) {
    interrupt(vector);
}

/// `syscall`: the entry code returns to the running thread (whichever it is now) through
/// `rl4_return_to_user`, which reloads its registers from its block.
///
/// A dispatcher of small handlers: `Null` is answered here when no scheduling decision is
/// pending (one per-CPU look), `Yield` by the scheduler (`sched::yield_now`); the IPC calls
/// try the fast path; everything else goes to the general handler, out of line, so that this
/// function needs no stack frame of its own.
///
/// It and [`general`] preserve no register for their caller (`rust-preserve-none`: the
/// number arrives in `r12`): the entry code has stored every user register in the thread's
/// block already, and restores from there whatever it returns to, so the callee-saved
/// registers that a C-ABI function would push and pop on every system call are not saved at
/// all (docs/decisions.md).
#[unsafe(no_mangle)]
extern "rust-preserve-none" fn rl4_syscall(n: u64) {
    // The IPC calls first, each to its own entry (its fast path first), then one compare for
    // every other call but `Null` and `Yield`.
    if n == rl4_abi::Sys::Call as u64 {
        return ipc::<true>();
    }
    if n == rl4_abi::Sys::ReplyRecv as u64 {
        return ipc::<false>();
    }
    if n > rl4_abi::Sys::Yield as u64 {
        return general(n);
    }
    if n == rl4_abi::Sys::Null as u64 && !cfg!(feature = "timeline") && !sched::resched_pending() {
        rl4_arch::entry::set_current_result(0);
        return;
    }
    if n == rl4_abi::Sys::Yield as u64 && !cfg!(feature = "timeline") {
        return sched::yield_now();
    }
    general(n)
}

/// `Call` (`CALL`) or `ReplyRecv`: the fast path, else the general handler.
#[inline(never)]
extern "rust-preserve-none" fn ipc<const CALL: bool>() {
    let n = if CALL { rl4_abi::Sys::Call } else { rl4_abi::Sys::ReplyRecv } as u64;
    crate::trace::enter(n);
    crate::timeline::event(crate::timeline::Kind::SysEnter, n, 0);
    // The fast path's hand-overs let go of nothing while they hold a lock; what its rare
    // fallbacks put aside under one (a thread that could not be queued again) waits for this
    // CPU's next `reclaim::drain`, at its next general system call or decision.
    if crate::fastpath::try_fast::<CALL>() {
        crate::trace::stamp(crate::trace::DONE);
        crate::timeline::event(crate::timeline::Kind::SysExit, n, 1);
        return;
    }
    handle(n)
}

/// Every system call the small handlers did not take but the IPC calls: the general handler.
#[inline(never)]
extern "rust-preserve-none" fn general(n: u64) {
    crate::trace::enter(n);
    crate::timeline::event(crate::timeline::Kind::SysEnter, n, 0);
    handle(n)
}

/// The general handler, for [`general`] and the IPC calls whose fast path was not taken.
#[inline(never)]
extern "rust-preserve-none" fn handle(n: u64) {
    let next = crate::syscall::handle(n);
    match next {
        crate::syscall::Next::Decide => sched::decide_and_drain(),
        // What the general path put aside under its locks goes before the partner runs; a
        // thread more urgent than the partner (`sched::switch_direct`) runs first.
        crate::syscall::Next::Switched => after_direct_switch(),
        // `handle` drained already.
        crate::syscall::Next::Same => {}
    }
    crate::trace::stamp(crate::trace::DONE);
    crate::timeline::event(crate::timeline::Kind::SysExit, n, 0);
}
