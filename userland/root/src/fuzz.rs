//! The system-call fuzzer run: random, hostile system calls from several tasks on every CPU,
//! while checked IPC pairs keep working next to them.
//!
//! Each fuzzer is the `worker` program's `FUZZ` command in a task of its own, holding its own
//! task, address space and thread, the memory budget, a machine capability without rights, and
//! an endpoint and a notification shared by all fuzzers. A fuzzer that ends itself (by a fault, or
//! by deleting or unmapping what it runs on) is counted and replaced by a new one with the next
//! seed (a fuzzer that suspended itself counts as ended too: nothing would resume it). Alongside, the stress pairs check every message. At the end the fuzzers are removed and
//! the kernel must be back where it started: no thread left over, the whole memory budget back.
//!
//! Each fuzzer's sequence of calls follows from its seed (`seed`, then `seed + 1`, ...); how
//! the calls of different fuzzers interleave depends on timing.
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
use rl4_abi::{BootInfo, Rights, ThreadState, stat};
use rl4_user::sys;
use rl4_user::worker::{FUZZ, FUZZ_PAGE};
use rl4_user::println;

use crate::space::*;

const MAX_FUZZERS: usize = 16;
/// Where the root task sees fuzzer `i`'s counters page.
const COUNTERS_VA: u64 = 0x0000_6a00_0000_0000;

struct Fuzzer {
    child: Child,
    thread: u64,
    seed: u64,
}

static NEXT_SEED: AtomicU64 = AtomicU64::new(0);

fn counters(i: usize) -> *mut u64 {
    (COUNTERS_VA + i as u64 * 4096) as *mut u64
}

fn start(bi: &BootInfo, i: usize, ep: u64, note: u64) -> Option<Fuzzer> {
    let seed = NEXT_SEED.fetch_add(1, SeqCst);
    // The machine capability it gets has no rights: no console (it would print garbage), no
    // shutdown, no measurements.
    let child = Child::load_with(bi, "worker", Rights::NONE).ok()?;
    let page = slot();
    let ok = (|| -> Result<u64, rl4_abi::Error> {
        sys::frame_alloc(MEMORY, page)?;
        // The root task keeps its view of the counters page from run to run.
        let _ = sys::unmap(SPACE, COUNTERS_VA + i as u64 * 4096);
        sys::map(SPACE, page, COUNTERS_VA + i as u64 * 4096, Rights::READ.union(Rights::WRITE))?;
        sys::map(child.space, page, FUZZ_PAGE, Rights::READ.union(Rights::WRITE))?;
        sys::cap_copy(MEMORY, child.task, MEMORY, Rights::ALL)?;
        sys::cap_copy(child.task, child.task, TASK, Rights::ALL)?;
        sys::cap_copy(child.space, child.task, SPACE, Rights::ALL)?;
        sys::cap_copy(ep, child.task, 5, Rights::ALL)?;
        sys::cap_copy(note, child.task, 6, Rights::ALL)?;
        let top = 0x0000_7000_0000_0000;
        map_fresh(child.space, top - 4 * 4096, 4, Rights::READ.union(Rights::WRITE))?;
        let t = slot();
        sys::thread_create(MEMORY, child.task, child.entry, top, 50, i as u64 % cpus(), t)?;
        sys::thread_set_args(t, FUZZ, seed)?;
        // Its own thread capability, then let it go.
        sys::cap_copy(t, child.task, THREAD, Rights::ALL)?;
        sys::thread_resume(t)?;
        Ok(t)
    })();
    release(page);
    match ok {
        Ok(thread) => Some(Fuzzer { child, thread, seed }),
        Err(_) => {
            child.release();
            None
        }
    }
}

fn stop(f: Fuzzer) {
    let _ = sys::thread_suspend(f.thread);
    release(f.thread);
    f.child.release();
}

pub fn run(bi: &BootInfo, seconds: u64, seed: u64, n: usize) -> bool {
    let n = n.clamp(1, MAX_FUZZERS);
    NEXT_SEED.store(seed, SeqCst);
    let threads0 = sys::stat(MACHINE, stat::THREADS).unwrap_or(0);
    let left0 = sys::memory_info(MEMORY).map(|m| m.0).unwrap_or(0);
    let ep = slot();
    let note = slot();
    let _ = sys::endpoint_create(MEMORY, ep);
    let _ = sys::notification_create(MEMORY, note);
    println!("fuzz: seed {seed}, {n} fuzzer tasks, {seconds} s, with IPC stress pairs alongside");
    let mut fz: [Option<Fuzzer>; MAX_FUZZERS] = [const { None }; MAX_FUZZERS];
    for (i, f) in fz.iter_mut().enumerate().take(n) {
        *f = start(bi, i, ep, note);
    }
    let (mut calls, mut ended, mut faulted) = (0u64, 0u64, 0u64);
    let mut errors = [0u64; 32];
    let harvest = |i: usize, errors: &mut [u64; 32], calls: &mut u64| {
        let c = counters(i);
        // SAFETY: the root task maps each fuzzer's counters page at `COUNTERS_VA + i * 4096`.
        unsafe {
            *calls += c.read_volatile();
            for (e, slot) in errors.iter_mut().enumerate() {
                *slot += c.add(1 + e).read_volatile();
            }
        }
    };
    let mut last = [0u64; MAX_FUZZERS];
    let mut still = [0u32; MAX_FUZZERS];
    let mut stuck = 0u64;
    // The kernel's consistency check, every 3 s while the fuzzers run (it stops every CPU
    // wherever the fuzzers and pairs are), and once more at the end.
    let (mut checks, mut violations, mut ticks) = (0u64, 0u64, 0u64);
    let check = |checks: &mut u64, violations: &mut u64| match sys::kernel_check(MACHINE) {
        Ok([v, _, _]) => {
            *checks += 1;
            *violations += v;
        }
        Err(e) => println!("fuzz: the consistency check did not run: {e}"),
    };
    let mut monitor = || {
        ticks += 1;
        if ticks % 30 == 0 {
            check(&mut checks, &mut violations);
        }
        for i in 0..n {
            // A fuzzer that has made no call for 2 s is blocked on something no one will do
            // (fuzzers can wait on each other's replies): it is ended and replaced too.
            // SAFETY: as in `harvest`.
            let made = unsafe { counters(i).read_volatile() };
            if made == last[i] {
                still[i] += 1;
            } else {
                still[i] = 0;
                last[i] = made;
            }
            if still[i] >= 20 {
                if let Some(f) = fz[i].as_ref() {
                    let _ = sys::thread_suspend(f.thread);
                    stuck += 1;
                }
                still[i] = 0;
            }
            let st = fz[i].as_ref().map(|f| sys::thread_info(f.thread).map(|r| r[0]));
            // Dead, stopped by a fault, or suspended by its own hand (it would never run again).
            let dead = match st {
                Some(Ok(s)) => {
                    s == ThreadState::Dead as u64 || s == ThreadState::Faulted as u64 || s == ThreadState::Suspended as u64
                }
                Some(Err(_)) => true,
                None => true,
            };
            if dead {
                if let Some(f) = fz[i].take() {
                    if sys::thread_info(f.thread).map(|r| r[0]) == Ok(ThreadState::Faulted as u64) {
                        faulted += 1;
                    }
                    ended += 1;
                    harvest(i, &mut errors, &mut calls);
                    stop(f);
                }
                fz[i] = start(bi, i, ep, note);
            }
        }
    };
    let stress_ok = crate::stress::run_with(8, u64::MAX, seconds, false, &mut monitor);
    for (i, f) in fz.iter_mut().enumerate().take(n) {
        if let Some(f) = f.take() {
            let _ = sys::thread_suspend(f.thread);
            harvest(i, &mut errors, &mut calls);
            let _ = f.seed;
            stop(f);
        }
    }
    release(ep);
    release(note);
    let back = wait_ms(5000, || sys::stat(MACHINE, stat::THREADS) == Ok(threads0));
    let mut l = rl4_user::Line::new();
    use core::fmt::Write;
    let _ = write!(l, "fuzz: {calls} system calls; results:");
    for (e, &c) in errors.iter().enumerate() {
        if c > 0 {
            let name = if e == 0 { "ok" } else { rl4_abi::Error::try_from(e as u64).map(|x| x.name()).unwrap_or("other") };
            let _ = write!(l, " {name}={c}");
        }
    }
    l.flush();
    println!(
        "fuzz: {ended} fuzzer threads ended ({faulted} by a fault, {stuck} stuck waiting) and were replaced; next seed {}",
        NEXT_SEED.load(SeqCst)
    );
    check(&mut checks, &mut violations);
    println!("fuzz: kernel consistency checks: {checks} run (during the run and at its end), {violations} violations");
    let left = sys::memory_info(MEMORY).map(|m| m.0).unwrap_or(0);
    println!(
        "fuzz: after the run: live threads {} (before {threads0}): {}; memory budget {left} (before {left0}; the root task keeps \
         {} KiB: the stacks of the threads it made and the counter pages stay mapped in its own space)",
        sys::stat(MACHINE, stat::THREADS).unwrap_or(0),
        if back { "back" } else { "NOT BACK" },
        left0.saturating_sub(left) / 1024
    );
    let ok = stress_ok && back && calls > 0 && checks > 0 && violations == 0;
    println!("fuzz: {}", if ok { "passed" } else { "FAILED" });
    ok
}
