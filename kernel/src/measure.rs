//! Hardware floors measured inside the kernel, for the benchmarks (`Sys::Measure`): what a CR3
//! switch and an IPI round trip cost on this machine, next to which the IPC figures are read.
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use rl4_arch::{cpu, paging, percpu};
use rl4_smp::{cpus, lapic};

/// `iters` times: load the kernel's own page tables, then the caller's again (two CR3 writes,
/// each flushing the non-global TLB without PCIDs). Returns (mean, min, max) cycles per pair.
pub fn cr3_floor(iters: u64) -> [u64; 3] {
    let user = paging::current_pml4();
    let kernel = paging::kernel_pml4();
    let (mut min, mut max, mut sum) = (u64::MAX, 0, 0);
    for _ in 0..iters.max(1) {
        let t = cpu::rdtsc();
        paging::load_cr3(kernel, 0, false);
        paging::load_cr3(user, 0, false);
        let d = cpu::rdtsc() - t;
        min = min.min(d);
        max = max.max(d);
        sum += d;
    }
    [sum / iters.max(1), min, max]
}

static PING_FROM: AtomicU32 = AtomicU32::new(0);
static PONGS: AtomicU64 = AtomicU64::new(0);

/// The ping IPI: answer the CPU that sent it.
pub fn ping_interrupt() {
    cpus::eoi();
    cpus::send_ipi(PING_FROM.load(Ordering::Acquire) as usize, lapic::VEC_PONG);
}

/// The answer to a ping.
pub fn pong_interrupt() {
    PONGS.fetch_add(1, Ordering::AcqRel);
    cpus::eoi();
}

/// `iters` round trips of an IPI to `target` and its answer, this CPU halted while it waits.
/// Returns (mean, min, max) cycles.
pub fn ipi_floor(target: usize, iters: u64) -> [u64; 3] {
    PING_FROM.store(percpu::cpu_index(), Ordering::Release);
    let (mut min, mut max, mut sum) = (u64::MAX, 0, 0);
    for _ in 0..iters.max(1) {
        let before = PONGS.load(Ordering::Acquire);
        let t = cpu::rdtsc();
        cpus::send_ipi(target, lapic::VEC_PING);
        while PONGS.load(Ordering::Acquire) == before {
            cpu::idle_wait();
        }
        let d = cpu::rdtsc() - t;
        min = min.min(d);
        max = max.max(d);
        sum += d;
    }
    [sum / iters.max(1), min, max]
}
