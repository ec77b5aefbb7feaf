//! Hardware floors measured inside the kernel, for the benchmarks (`Sys::Measure`): what a CR3
//! switch and an IPI round trip cost on this machine, next to which the IPC figures are read.
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use rl4_arch::{cpu, paging, percpu};
use rl4_smp::{cpus, lapic};

/// `iters` times: load the kernel's own page tables, then the caller's again (two CR3 writes,
/// each flushing the non-global TLB without PCIDs). Returns (mean, min, max) cycles per pair.
pub fn cr3_floor(iters: u64) -> [u64; 3] {
    let kernel = paging::kernel_root().loadable();
    let (mut min, mut max, mut sum) = (u64::MAX, 0, 0);
    // The caller's space: the one this CPU has loaded (a system call runs in its caller's).
    // The caller's root goes back with the PCID this CPU's records give it (`tlb::load_space`),
    // its entries flushed: with PCID 0 the CPU would go on filling its TLB for the space under
    // a tag its records do not name (harmless, since every load of PCID 0 flushes, but untrue;
    // the forty-second session's review).
    let pcid_on = crate::sched::this_cpu().tlb.with_pcids();
    crate::sched::with_current(|t| {
        let user = t.space.pml4.loadable();
        let pcid = if pcid_on { t.space.pcid } else { 0 };
        for _ in 0..iters.max(1) {
            let t = cpu::rdtsc();
            paging::load_cr3(kernel, 0, false);
            paging::load_cr3(user, pcid, false);
            let d = cpu::rdtsc() - t;
            min = min.min(d);
            max = max.max(d);
            sum += d;
        }
    });
    [sum / iters.max(1), min, max]
}

/// `iters` times: save the running thread's FPU/SIMD registers into its area and load them back
/// (what a switch away and back costs beyond the rest, when another thread ran meanwhile: the
/// load is made even though the registers still hold the area). Returns (mean, min, max)
/// cycles per pair.
pub fn fpu_floor(iters: u64) -> [u64; 3] {
    let (mut min, mut max, mut sum) = (u64::MAX, 0, 0);
    crate::sched::with_current(|t| {
        // Measured as for a thread that uses the registers, which this one may not (then it
        // goes back to not using them: its later switches are not changed by the measurement).
        let claimed = t.fpu.claim();
        for _ in 0..iters.max(1) {
            let s = cpu::rdtsc();
            crate::thread::fpu_leave(t);
            t.fpu.load();
            let d = cpu::rdtsc() - s;
            min = min.min(d);
            max = max.max(d);
            sum += d;
        }
        if claimed {
            t.fpu.unclaim();
        }
    });
    [sum / iters.max(1), min, max]
}

/// Per CPU: who pinged it last (answered by its ping handler), and the pongs it received.
static PING_FROM: [AtomicU32; rl4_smp::MAX_CPUS] = [const { AtomicU32::new(0) }; rl4_smp::MAX_CPUS];
static PONGS: [AtomicU64; rl4_smp::MAX_CPUS] = [const { AtomicU64::new(0) }; rl4_smp::MAX_CPUS];
/// One measurement at a time (two could ping the same CPU), and none during a consistency
/// check ([`exclusive`]).
static BUSY: crate::count::GlobalSpin<()> = crate::count::GlobalSpin::new(crate::count::Global::Measure, ());

/// Holds off IPI-floor measurements while the guard lives (`check::run`), or `None` if one is
/// under way.
pub fn exclusive() -> Option<spin::MutexGuard<'static, ()>> {
    BUSY.try_lock()
}

/// The ping IPI: answer the CPU that sent it.
pub fn ping_interrupt() {
    cpus::eoi();
    let me = percpu::cpu_index() as usize;
    cpus::send_ipi(PING_FROM[me].load(Ordering::Acquire) as usize, lapic::VEC_PONG);
}

/// The answer to a ping.
pub fn pong_interrupt() {
    PONGS[percpu::cpu_index() as usize].fetch_add(1, Ordering::AcqRel);
    cpus::eoi();
}

/// `iters` round trips of an IPI to `target` and its answer, this CPU halted while it waits.
/// Returns (mean, min, max) cycles; `Busy` if another CPU measures meanwhile, `Timeout` if an
/// answer did not come within 100 ms, or all of them within a second (before the twenty-seventh session both answered
/// `[0, 0, 0]` as a measurement: a review found it). A ping that a timed-out measurement left
/// pending at `target` is answered to whoever measures it next, whose round it may end early.
///
/// The wait halts with interrupts on inside the system call, holding [`BUSY`] and the system
/// call's shared borrow of its current slot: never while a consistency check runs, which holds
/// [`BUSY`] itself ([`exclusive`]).
pub fn ipi_floor(target: usize, iters: u64) -> Result<[u64; 3], rl4_abi::Error> {
    let Some(_one) = BUSY.try_lock() else { return Err(rl4_abi::Error::Busy) };
    let me = percpu::cpu_index();
    PING_FROM[target].store(me, Ordering::Release);
    let (mut min, mut max, mut sum) = (u64::MAX, 0, 0);
    // The whole measurement ends within a second: 1,000 slow answers, each within its 100 ms,
    // kept this CPU in one system call for 100 s (a review of the thirty-seventh session).
    let deadline = cpu::rdtsc() + rl4_arch::time::us_to_ticks(1_000_000);
    // An object whose last reference an interrupt lets go of during the halts (a timeout's
    // expiry) is destroyed after the measurement, not under `BUSY` (the same review).
    crate::reclaim::deferred(|| {
        for _ in 0..iters.max(1) {
            let before = PONGS[me as usize].load(Ordering::Acquire);
            let t = cpu::rdtsc();
            cpus::send_ipi(target, lapic::VEC_PING);
            // Never wait for good: a lost answer ends the measurement after 100 ms.
            let give_up = (t + rl4_arch::time::us_to_ticks(100_000)).min(deadline);
            while PONGS[me as usize].load(Ordering::Acquire) == before {
                if cpu::rdtsc() > give_up {
                    return Err(rl4_abi::Error::Timeout);
                }
                cpu::idle_wait();
            }
            let d = cpu::rdtsc() - t;
            min = min.min(d);
            max = max.max(d);
            sum += d;
        }
        Ok([sum / iters.max(1), min, max])
    })
}
