//! Faults of user threads.
//!
//! A thread with a fault handler (`ThreadSetFaultHandler`) has each fault delivered to it as a
//! `Call` made on its behalf (`ipc::fault_call`): the handler receives the fault message
//! (`rl4_abi::fault`) and the reply right, and its reply resumes the thread (with the
//! registers it names changed) or stops it. A thread without a handler, whose handler's
//! endpoint is gone, or whose binding lost the capabilities it was set with ([`handler_of`]),
//! is stopped at once (`Faulted`, a transition that a kill or a suspension made before it wins
//! over: a suspended thread runs the instruction again when resumed) and the kernel reports the
//! fault on the console.
use core::sync::atomic::{AtomicU64, Ordering};

use alloc::sync::Arc;
use rl4_arch::{cpu, println};

use crate::obj::Thread;
use crate::{sched, thread};

/// What became of a fault.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// The thread stopped, waits for its handler, or resumes: the scheduler decides.
    Decide,
    /// The CPU switched directly to the handler.
    Switched,
    /// Stepped over (the exception floor's `ud2`): the thread goes on at once.
    Resume,
}

/// The running thread took exception `vector` with `error` (the page-fault address comes
/// from the CPU).
pub fn fault_current(vector: u64, error: u64) -> Handled {
    crate::timeline::event(crate::timeline::Kind::Fault, vector, error);
    if vector == UD && floor_step() {
        return Handled::Resume;
    }
    let Some(t) = sched::current() else { return Handled::Decide };
    // Killed on another CPU while it ran here in user mode (the kick is on its way; its task's
    // space may be emptied under it), or its task is ending (the kill reaches it soon): its
    // fault goes to no handler and no console; the decision lets it go (or, not killed yet,
    // runs it again until the kill comes).
    if t.killed.load(core::sync::atomic::Ordering::Relaxed) || t.task.dead.load(core::sync::atomic::Ordering::Acquire) {
        return Handled::Decide;
    }
    let addr = if vector == rl4_abi::fault::PAGE_FAULT { cpu::cr2() } else { 0 };
    let rip = t.regs.get().ip();
    // The fetch bit as the ABI promises it, also where the CPU does not report it (no NX).
    let error = if vector == rl4_abi::fault::PAGE_FAULT {
        rl4_arch::pte::fault_error(error, addr, rip, rl4_arch::paging::no_execute())
    } else {
        error
    };
    // The handler is read under its lock and upgraded after it: the last reference to the
    // endpoint may go here, and its destructor takes queue and thread locks.
    let handler = t.fault_handler.lock().clone();
    if let Some(ep) = handler.as_ref().and_then(|h| handler_of(&t, h)) {
        let badge = handler.as_ref().map_or(0, |h| h.badge);
        let info = crate::ipc::fault_info(vector, addr, error);
        let switched = crate::ipc::fault_call(&t, &ep, badge, info, rip);
        crate::reclaim::later_queue(Some(thread::QueueRef::Ep(ep)));
        drop(handler);
        return if switched && sched::switched_directly(&t) { Handled::Switched } else { Handled::Decide };
    }
    // A binding whose authority is gone lapses for good (unless it was set again meanwhile).
    if let Some(h) = handler {
        let lapsed = {
            let mut g = t.fault_handler.lock();
            if g.as_ref().is_some_and(|x| x.same(&h)) { g.take() } else { None }
        };
        drop(lapsed);
        drop(h);
    }
    let slow = crate::inject() & rl4_core::cmdline::inject::SLOW_FAULT != 0;
    if slow {
        crate::syscall::injected_window();
    }
    // Said on the console only if the transition stopped it: a kill from another CPU since the
    // look above leaves it `Dead`, not stopped (before the thirty-eighth session the line came
    // first and said "stopped" of a killed thread: a review).
    if thread::fault(&t) {
        report(&t, vector, error, addr, rip);
    } else if slow {
        // For `fault-window-smp2`: the held fault met a suspension or a kill.
        let view = t.life.lock().view();
        println!("inject: slowfault: thread {}'s fault was not stopped: it was {view:?} by then", t.id);
    }
    Handled::Decide
}

/// The endpoint `t`'s faults go to under the binding `h`, if it still stands: the setter's task
/// lives and its table still holds, in the slot the binding names, a capability to the
/// endpoint with `SEND` and the same badge, and — a setter other than `t`'s own task, which
/// takes control of a thread not its own through the handler's replies — in the other slot a
/// capability to `t` with `WRITE` (read under the table's lock; no reference count changes
/// under it). A capability deleted or revoked since — the setter's or one it was derived from
/// — leaves none: the thread is stopped as if it had no handler.
fn handler_of(t: &Arc<Thread>, h: &crate::obj::FaultHandler) -> Option<Arc<crate::ipc::Endpoint>> {
    use crate::obj::holds;
    use rl4_abi::{ObjType, Rights};
    let setter = h.setter.upgrade()?;
    let held = !setter.dead.load(Ordering::Acquire) && {
        let caps = setter.caps.lock();
        (Arc::ptr_eq(&setter, &t.task) || holds(&caps, h.thread_slot, ObjType::Thread, Rights::WRITE, None, Arc::as_ptr(t) as usize))
            && holds(&caps, h.ep_slot, ObjType::Endpoint, Rights::SEND, Some(h.badge), h.ep.as_ptr() as usize)
    };
    // A last reference to the setter (its task ended meanwhile) is destroyed here, no lock held
    // (the task's destructor hands its table and parent to the destruction loop). Not through
    // `reclaim::later`, which cost about 210 instructions per fault (insn-profile of
    // `fault-round-trip`: 2,042 → 1,828) for a reference that is almost never the last.
    drop(setter);
    if held { h.ep.upgrade() } else { None }
}

/// At most this many fault reports at once (one per CPU with more CPUs), then
/// [`REPORTS_PER_SECOND`], machine-wide
/// (`rl4_core::ratelimit`: a task must not be able to keep the serial console and a CPU busy
/// printing its threads' faults). Each CPU has its share: a burst of `16 / CPUs` (at least 1)
/// and `10 / CPUs` a second, so that a task cannot multiply the rate by spreading its threads
/// over the CPUs, and no lock or shared word is added to the path.
const REPORT_BURST: u64 = 16;
const REPORTS_PER_SECOND: u64 = 10;

/// Each CPU's fault reports (used only by that CPU, interrupts off).
static REPORTS: [rl4_core::ratelimit::Bucket; rl4_smp::MAX_CPUS] = [const { rl4_core::ratelimit::Bucket::new() }; rl4_smp::MAX_CPUS];

/// Whether this CPU may print a fault report now: `Some(n)`, `n` the reports it left out since
/// the last it printed (said in the report's own line: a notice of its own would be a line the
/// limit does not count).
fn may_report() -> Option<u64> {
    let b = &REPORTS[rl4_arch::percpu::cpu_index() as usize % rl4_smp::MAX_CPUS];
    let cpus = sched::online_count().max(1);
    let interval = (rl4_arch::time::tsc_hz() / REPORTS_PER_SECOND).saturating_mul(cpus);
    let r = b.admit(rl4_arch::cpu::rdtsc(), interval, (REPORT_BURST / cpus).max(1));
    if r.is_none() {
        sched::this_cpu().add_count(sched::Count::ReportsLeftOut, 1);
    }
    r
}

/// The end of a report's line: how many this CPU left out before it.
struct LeftOut(u64);
impl core::fmt::Display for LeftOut {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} earlier reports left out on this CPU: at most {REPORT_BURST} at once, then {REPORTS_PER_SECOND} a second, machine-wide)"),
        }
    }
}

fn report(t: &Thread, vector: u64, error: u64, addr: u64, rip: u64) {
    let Some(n) = may_report() else { return };
    let left = LeftOut(n);
    let name = rl4_arch::idt::exception_name(vector);
    if vector == rl4_abi::fault::PAGE_FAULT {
        println!(
            "thread {} (task {}) stopped: {name} at rip={:#x}, address {:#x}, error {:#x} ({}{}{}){left}",
            t.id,
            t.task.id,
            rip,
            addr,
            error,
            if error & 1 != 0 { "protection" } else { "not mapped" },
            if error & 2 != 0 { ", write" } else { ", read" },
            if error & 16 != 0 { ", instruction fetch" } else { "" }
        );
    } else {
        println!("thread {} (task {}) stopped: {name} (vector {vector}) at rip={rip:#x}, error {error:#x}{left}", t.id, t.task.id);
    }
}

/// Reports a thread whose fault, delivered to its handler, ended in `Faulted`.
pub fn report_stopped(t: &Arc<Thread>, why: &str) {
    let Some(n) = may_report() else { return };
    println!("thread {} (task {}) stopped at rip={:#x}: {why}{}", t.id, t.task.id, t.regs.get().ip(), LeftOut(n));
}

/// The invalid-opcode exception (`ud2`).
const UD: u64 = 6;

/// Per CPU: the thread (by id) whose next `ud2`s are stepped over, and how many are left
/// (`Measure(FAULT_FLOOR)`). Only the CPU itself reads and writes its entry.
static FLOOR_THREAD: [AtomicU64; rl4_smp::MAX_CPUS] = [const { AtomicU64::new(0) }; rl4_smp::MAX_CPUS];
static FLOOR_LEFT: [AtomicU64; rl4_smp::MAX_CPUS] = [const { AtomicU64::new(0) }; rl4_smp::MAX_CPUS];

/// `Measure(FAULT_FLOOR, n)`: the calling thread's next `n` `ud2`s on this CPU are stepped
/// over without a report: the raw cost of an exception's entry and return. Any invalid opcode
/// of that thread's is stepped over by `ud2`'s two bytes (the instruction is not read: that
/// would add to the floor); only a `SHUTDOWN` holder arms it, for its own thread.
pub fn arm_floor(t: &Thread, n: u64) {
    let me = rl4_arch::percpu::cpu_index() as usize;
    FLOOR_THREAD[me].store(t.id, Ordering::Relaxed);
    FLOOR_LEFT[me].store(n, Ordering::Relaxed);
}

/// Steps the running thread over a `ud2` if the exception floor is armed for it.
fn floor_step() -> bool {
    let me = rl4_arch::percpu::cpu_index() as usize;
    let left = FLOOR_LEFT[me].load(Ordering::Relaxed);
    if left == 0 {
        return false;
    }
    let ours = sched::with_current(|t| {
        if t.id != FLOOR_THREAD[me].load(Ordering::Relaxed) {
            return false;
        }
        t.regs.with(|r| r.set_ip(r.ip().wrapping_add(2)));
        true
    });
    if ours == Some(true) {
        FLOOR_LEFT[me].store(left - 1, Ordering::Relaxed);
        return true;
    }
    false
}
