//! The fuzzer run: hostile system calls from several tasks on every CPU, while checked IPC
//! pairs keep working next to them, then a check that the kernel is back where it started.
//!
//! Each fuzzer is the `worker` program's `FUZZ` command (`userland/worker/src/fuzz.rs`) in a
//! task of its own, holding its own task, address space and first thread, the memory budget, a
//! machine capability without rights, and three endpoints and two notifications shared by all
//! fuzzers (slots in `rl4_user::fuzz::slot`), and more fuzzing threads (`threads=N`, default 3,
//! made by the root task too), which wait until the first has set the task's shadow up. With `cross=1` (the default) the root task also gives every
//! fuzzer capabilities (`READ | WRITE`) to the other fuzzers' tasks and first threads, so that
//! fuzzers suspend, resume, move, re-prioritise and kill each other across CPUs. With
//! `cross=0` there is none of that, and no fuzzer task is ended while one of its threads may be
//! in a call (`quiesce`): today's kernel races there (issue 15).
//!
//! A fuzzer whose first thread dies or faults is counted and replaced by a new one with the
//! next seed; so is one with a fuzzing thread that made no call for 2 s (blocked for good,
//! suspended or starved: the watchdog ends its task). A fuzzing thread the watchdog finds so, in
//! a call with a finite timeout under a second, that the kernel still shows blocked a second
//! after that timeout fails the run: a lost wake-up ([`lost_wakeup`]; the root task makes the
//! fuzzing threads after the first itself and keeps capabilities to them, so that it sees every
//! one's state). The kernel's consistency check runs every 3 s; one that could not
//! run fails the run too. When the time is up the fuzzers are ended while the IPC pairs still run (and what is
//! back 2 s later is reported); then the pairs stop, and the live threads must be back to the
//! count before the run and the memory budget back to the byte, less what the pairs keep, and
//! the kernel heap in use within its value at the start plus the allowance `KernelCheck` gives
//! (`rl4_abi::HEAP_ALLOWANCE`); the consistency check runs once more. The deep object graphs
//! the fuzzers build (`userland/worker/src/fuzz/deep.rs`) are summed in the report.
//!
//! Each fuzzer's sequence of calls follows from its seed (`seed`, then `seed + 1`, ...); how
//! the calls of different fuzzers and threads interleave depends on timing.
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
use rl4_abi::{BootInfo, Error, PAGE_SIZE, Rights, Sys, ThreadState, stat};
use rl4_elf::{Elf, PF_W, PF_X};
use rl4_user::fuzz::{FLAG_CROSS, MAX_THREADS, slot as fs, va, word};
use rl4_user::worker::FUZZ;
use rl4_user::{Line, println, rdtsc, sys};

use crate::space::*;
use crate::stress::sleep_ms;

const MAX_FUZZERS: usize = 16;
/// Where the root task sees fuzzer `i`'s counters page.
const COUNTERS_VA: u64 = 0x0000_6a00_0000_0000;
/// A page of the root task's space through which program pages are filled.
const SCRATCH_VA: u64 = 0x0000_6a80_0000_0000;
/// Most pages of the worker program.
const MAX_PAGES: usize = 32;
/// After the fuzzing time, how long the IPC pairs go on (the fuzzers are ended meanwhile).
const WIND_DOWN_S: u64 = 4;
/// A fuzzing thread without a call for this long ends its task.
const STUCK_MS: u64 = 2000;
/// The checked IPC pairs that run alongside (`stress::run_with`), and what their objects cost
/// the budget until they end: per pair an endpoint and two threads (`rl4_abi::cost`; a thread
/// costs 4 KiB and an FPU save area, `stat::THREAD_BYTES`). What else they take (their stacks,
/// the page tables behind them) the root task keeps.
const PAIRS: usize = 8;
/// How long the wind-down waits for the fuzzers' threads and memory to come back.
const WAIT_BACK_MS: u64 = 2000;
fn pair_objects() -> u64 {
    rl4_abi::cost::ENDPOINT + 2 * sys::stat(MACHINE, stat::THREAD_BYTES).expect("root: stat THREAD_BYTES")
}

/// The root task's own words on the command line: `threads=N`, `cross=0|1`.
pub fn owns(arg: &str) -> bool {
    arg.starts_with("threads=") || arg.starts_with("cross=")
}

/// The worker program, loaded once: its read-only pages are shared by every fuzzer task (the
/// root task keeps their frames), its writable pages copied for each.
struct Image {
    entry: u64,
    /// (address, root slot of the frame, rights)
    shared: [(u64, u64, Rights); MAX_PAGES],
    nshared: usize,
    /// (address, source address in the root task's view of the program, offset in the page,
    /// bytes, rights)
    copied: [(u64, u64, u64, u64, Rights); MAX_PAGES],
    ncopied: usize,
}

fn load_image(bi: &BootInfo) -> Result<Image, Error> {
    let p = bi.programs().iter().find(|p| p.name() == "worker").ok_or(Error::InvalidArgument)?;
    // SAFETY: the kernel maps each program image read-only at `addr` for `len` bytes.
    let image = unsafe { core::slice::from_raw_parts(p.addr as *const u8, p.len as usize) };
    let elf = Elf::parse(image, PAGE_SIZE, rl4_abi::PROGRAMS_ADDR).map_err(|_| Error::InvalidArgument)?;
    let mut img = Image { entry: elf.entry, shared: [(0, 0, Rights::NONE); MAX_PAGES], nshared: 0, copied: [(0, 0, 0, 0, Rights::NONE); MAX_PAGES], ncopied: 0 };
    for seg in elf.segments() {
        let seg = seg.map_err(|_| Error::InvalidArgument)?;
        let (p0, p1) = seg.pages();
        let file = elf.file_bytes(&seg);
        let mut rights = Rights::READ;
        if seg.flags & PF_W != 0 {
            rights = rights.union(Rights::WRITE);
        }
        if seg.flags & PF_X != 0 {
            rights = rights.union(Rights::EXECUTE);
        }
        let mut at = p0;
        while at < p1 {
            let lo = at.max(seg.vaddr);
            let hi = (at + PAGE_SIZE).min(seg.vaddr + seg.filesz);
            let (src, off, len) = if lo < hi { (file.as_ptr() as u64 + (lo - seg.vaddr), lo - at, hi - lo) } else { (0, 0, 0) };
            if rights.contains(Rights::WRITE) {
                if img.ncopied == MAX_PAGES {
                    return Err(Error::OutOfMemory);
                }
                img.copied[img.ncopied] = (at, src, off, len, rights);
                img.ncopied += 1;
            } else {
                if img.nshared == MAX_PAGES {
                    return Err(Error::OutOfMemory);
                }
                let f = fill_frame(src, off, len)?;
                img.shared[img.nshared] = (at, f, rights);
                img.nshared += 1;
            }
            at += PAGE_SIZE;
        }
    }
    Ok(img)
}

/// A new frame (in a root slot) holding `len` bytes from `src` at offset `off`.
fn fill_frame(src: u64, off: u64, len: u64) -> Result<u64, Error> {
    let f = slot();
    let r = (|| {
        sys::frame_alloc(MEMORY, f)?;
        sys::map(SPACE, f, SCRATCH_VA, Rights::READ.union(Rights::WRITE))?;
        if len > 0 {
            // SAFETY: the scratch page is mapped writable just above; `off + len` ≤ 4096; the
            // source lies in the program image the kernel mapped for the root task.
            unsafe { core::ptr::copy_nonoverlapping(src as *const u8, (SCRATCH_VA + off) as *mut u8, len as usize) };
        }
        sys::unmap(SPACE, SCRATCH_VA)
    })();
    match r {
        Ok(()) => Ok(f),
        Err(e) => {
            release(f);
            Err(e)
        }
    }
}

struct Config {
    threads: u64,
    cross: bool,
    shared: [u64; 5],
    /// The fuzzers' port object (`fs::PORTS_AT_START`), if the root task could make one.
    ports: Option<u64>,
    /// COM2's interrupt line (`fs::IRQ_AT_START`), if the machine has it ([`interrupt_line`]).
    irq: Option<u64>,
}

/// How many times the root task's kicker thread has made COM2 raise its interrupt.
static KICKS: AtomicU64 = AtomicU64::new(0);

/// The root task's kicker thread: for the rest of the boot, at every 1 ms sleep's end (the next
/// timer tick's: about every 10 ms at the default 100 Hz), empties
/// COM2's receive register and writes a byte, which loopback mode receives: the UART raises its
/// interrupt line (edge-triggered, ISA), and whichever notification a fuzzer bound the line to
/// gets it, unless the line is masked (unbound, or delivered and not acknowledged yet).
fn kick(_: u64) {
    loop {
        rl4_user::com::drain(rl4_user::com::COM2);
        sys::outb(rl4_user::com::COM2 + rl4_user::com::THR, 0x5a);
        KICKS.fetch_add(1, SeqCst);
        sleep_ms(1);
    }
}

/// The bit the root task's own binding of the line after the run delivers ([`line_works`]).
const LINE_BIT: u64 = 1 << 37;

/// After the run, whether the line still works as `IrqBind` and `IrqAck` promise: bound to a
/// notification of the root task's own (bit [`LINE_BIT`], on this CPU), an interrupt arrives
/// with that bit alone within a second, and another after an `IrqAck`; then the line is unbound
/// again (and the notification deleted: what it cost comes back). `Err(what)` if not.
fn line_works(irq: u64) -> Result<(), &'static str> {
    let n = slot();
    let r = (|| {
        sys::notification_create(MEMORY, n).map_err(|_| "no notification to bind it to")?;
        sys::irq_bind(irq, n, LINE_BIT, rl4_abi::IRQ_CPU_CALLER).map_err(|_| "IrqBind refused")?;
        for k in 0..2 {
            if k == 1 {
                sys::irq_ack(irq).map_err(|_| "IrqAck refused")?;
            }
            match sys::wait(n, tsc_hz()) {
                Ok(LINE_BIT) => {}
                Ok(_) => return Err("an interrupt came with other bits"),
                Err(_) => return Err(if k == 0 { "no interrupt within 1 s of IrqBind" } else { "no interrupt within 1 s of IrqAck" }),
            }
        }
        Ok(())
    })();
    let _ = sys::irq_unbind(irq);
    release(n);
    r
}

/// The fuzzers' interrupt line: COM2's (`-device isa-serial,index=1`, which `scripts/fuzz` and
/// the fuzz boots of `scripts/test` give QEMU), put in loopback mode with its receive
/// interrupt on, and the kicker thread ([`kick`]) started; `None` (said why) on a machine
/// without an I/O APIC or COM2. Made before the run's baselines (the kicker's thread and stack,
/// the line and port objects and whatever they cost are in them), and kept to the end of the
/// boot.
fn interrupt_line(bi: &BootInfo) -> Option<u64> {
    if bi.ioapic == 0 {
        println!("fuzz: no I/O APIC: no interrupt line for the fuzzers");
        return None;
    }
    let ports = slot();
    if sys::ioport_get(crate::drv_tests::DEVICES, rl4_user::com::COM2 as u64, 8, ports).is_err() || !crate::drv_tests::com2_present(ports) {
        println!("fuzz: no COM2 (QEMU's second serial port): no interrupt line for the fuzzers");
        release(ports);
        return None;
    }
    let irq = slot();
    if let Err(e) = sys::irq_get(crate::drv_tests::DEVICES, rl4_user::com::COM2_IRQ, irq) {
        println!("fuzz: COM2's interrupt line not to be had ({e}): none for the fuzzers");
        release(irq);
        release(ports);
        return None;
    }
    rl4_user::com::loopback(rl4_user::com::COM2);
    spawn(kick, 0, ROOT_PRIO, cpus() - 1);
    Some(irq)
}

struct Fuzzer {
    index: usize,
    task: u64,
    space: u64,
    thread: u64,
    /// Capabilities to fuzzing threads 1.. (0: none), which the root task made (the watchdog
    /// looks at their states).
    others: [u64; MAX_THREADS],
    /// Where the root task puts the next capability to another fuzzer.
    next_peer: u64,
    /// Per fuzzing thread: calls made at the last look, and when that number last moved.
    last: [u64; MAX_THREADS],
    moved: [u64; MAX_THREADS],
}

static NEXT_SEED: AtomicU64 = AtomicU64::new(0);

fn counters(i: usize) -> *mut u64 {
    (COUNTERS_VA + i as u64 * PAGE_SIZE) as *mut u64
}

fn read(i: usize, w: usize) -> u64 {
    // SAFETY: the root task maps each fuzzer's counters page at `COUNTERS_VA + i * 4096`
    // while the fuzzer lives (and until the next one of that index starts).
    unsafe { counters(i).add(w).read_volatile() }
}

/// The watchdog found fuzzer `i`'s fuzzing thread `t` (`thread`) stuck at `progress` calls, in a
/// call that may block with a finite timeout (word `TIMEOUT + t`): if the kernel says it waits in that
/// call (blocked in `Send`, `Recv`, a reply or `Wait`), and a second after that timeout, counted
/// from now — later than any deadline the call can have, as it was made before this look — it
/// still waits there, with no call made since, its deadline was lost: its state. (A thread
/// suspended, killed, starved before its call or after it was woken is not blocked; timeouts of
/// a second or more are not judged.)
fn lost_wakeup(i: usize, t: usize, thread: u64, progress: u64, hz: u64) -> Option<u64> {
    let timeout = read(i, word::TIMEOUT + t);
    let blocked = || sys::thread_info(thread).ok().map(|r| r[0]).filter(|s| (ThreadState::BlockedSend as u64..=ThreadState::BlockedNotify as u64).contains(s));
    if timeout >= hz || blocked().is_none() {
        return None;
    }
    sleep_ms(1000 + timeout * 1000 / hz.max(1) + 1);
    let s = blocked()?;
    (read(i, word::PROGRESS + t) == progress && read(i, word::TIMEOUT + t) == timeout).then_some(s)
}

fn start(img: &Image, cfg: &Config, i: usize, fz: &mut [Option<Fuzzer>]) -> Option<Fuzzer> {
    let seed = NEXT_SEED.fetch_add(1, SeqCst);
    let (task, space, thread) = (slot(), slot(), slot());
    let r = (|| -> Result<(), Error> {
        sys::task_create(MEMORY, task)?;
        sys::task_space(task, space)?;
        for &(at, f, rights) in &img.shared[..img.nshared] {
            sys::map(space, f, at, rights)?;
        }
        for &(at, src, off, len, rights) in &img.copied[..img.ncopied] {
            let f = fill_frame(src, off, len)?;
            let r = sys::map(space, f, at, rights);
            release(f);
            r?;
        }
        // The counters page, with the configuration, seen by both.
        let page = fill_frame(0, 0, 0)?;
        let _ = sys::unmap(SPACE, COUNTERS_VA + i as u64 * PAGE_SIZE);
        let r = sys::map(SPACE, page, COUNTERS_VA + i as u64 * PAGE_SIZE, Rights::READ.union(Rights::WRITE));
        let r = r.and_then(|_| {
            let c = counters(i);
            // SAFETY: mapped just above, writable.
            unsafe {
                c.add(word::CFG_FLAGS).write_volatile(if cfg.cross { FLAG_CROSS } else { 0 });
                c.add(word::CFG_THREADS).write_volatile(cfg.threads);
                c.add(word::CFG_CPUS).write_volatile(cpus());
                c.add(word::CFG_INDEX).write_volatile(i as u64);
            }
            sys::map(space, page, rl4_user::fuzz::PAGE, Rights::READ.union(Rights::WRITE))
        });
        release(page);
        r?;
        // The machine capability it gets reads the counters (`Stat`, whose grace-period
        // settling it exercises) and nothing more: no console (it would print garbage), no
        // shutdown, no measurements, no consistency checks.
        sys::cap_copy(MACHINE, task, fs::MACHINE, Rights::READ)?;
        sys::cap_copy(MEMORY, task, fs::MEMORY, Rights::ALL)?;
        sys::cap_copy(task, task, fs::TASK, Rights::ALL)?;
        sys::cap_copy(space, task, fs::SPACE, Rights::ALL)?;
        for (k, &s) in cfg.shared.iter().enumerate() {
            sys::cap_copy(s, task, fs::SHARED[k], Rights::ALL)?;
        }
        sys::cap_mint(cfg.shared[0], task, fs::BADGED, Rights::ALL, rl4_user::fuzz::BADGE_AT_START)?;
        if let Some(p) = cfg.ports {
            sys::cap_copy(p, task, fs::PORTS_AT_START, Rights::ALL)?;
        }
        if let Some(l) = cfg.irq {
            sys::cap_copy(l, task, fs::IRQ_AT_START, Rights::ALL)?;
        }
        map_fresh(space, va::STACK_TOP - 4 * PAGE_SIZE, 4, Rights::READ.union(Rights::WRITE))?;
        sys::thread_create(MEMORY, task, img.entry, va::STACK_TOP, 50, i as u64 % cpus(), thread)?;
        sys::thread_set_args(thread, FUZZ, seed)?;
        sys::cap_copy(thread, task, fs::THREAD, Rights::ALL)
    })();
    if r.is_err() {
        let _ = sys::task_kill(task);
        release(thread);
        release(space);
        release(task);
        return None;
    }
    let now = rdtsc();
    let mut f = Fuzzer { index: i, task, space, thread, others: [0; MAX_THREADS], next_peer: fs::PEERS, last: [0; MAX_THREADS], moved: [now; MAX_THREADS] };
    // The other fuzzing threads: each with a stack and an IPC buffer, in its slot of the task's
    // table (`THREADS + t - 1`), on the CPU after the one before; they wait for the first
    // thread's set-up. The root task keeps a capability to each (`others`), so that its
    // watchdog sees their states.
    for t in 1..cfg.threads as usize {
        let top = va::STACKS + (t as u64 + 1) * 0x10000;
        let ts = slot();
        let made = map_fresh(space, top - 4 * PAGE_SIZE, 4, Rights::READ.union(Rights::WRITE))
            .and_then(|_| map_fresh(space, va::IPC_BUFFERS + t as u64 * PAGE_SIZE, 1, Rights::READ.union(Rights::WRITE)))
            .and_then(|_| sys::thread_create(MEMORY, task, img.entry, top, 50, (i + t) as u64 % cpus(), ts))
            .and_then(|_| sys::thread_set_args(ts, rl4_user::worker::FUZZ_THREAD, t as u64))
            .and_then(|_| sys::cap_copy(ts, task, fs::THREADS + t as u64 - 1, Rights::ALL))
            .and_then(|_| sys::thread_resume(ts));
        if made.is_err() {
            release(ts);
            break;
        }
        // Kept by even fuzzers only: a capability the root task holds keeps the thread alive
        // when a sibling deletes the one in its slot, and the odd fuzzers keep that path (a
        // live fuzzing thread destroyed with its last capability) in the run.
        if i % 2 == 0 {
            f.others[t] = ts;
        } else {
            release(ts);
        }
        // SAFETY: the counters page is mapped at `i` while the fuzzer lives.
        unsafe { &*(counters(i).add(word::THREADS_STARTED) as *const AtomicU64) }.fetch_add(1, SeqCst);
    }
    if cfg.cross {
        for o in fz.iter_mut().flatten() {
            give(o, &mut f);
            give(&f, o);
        }
    }
    if sys::thread_resume(thread).is_err() {
        stop(f);
        return None;
    }
    Some(f)
}

/// Copies capabilities to `from`'s task and first thread (`READ | WRITE`, no `GRANT`) into
/// free slots of `to`'s peer range.
fn give(from: &Fuzzer, to: &mut Fuzzer) {
    for (src, w) in [(from.task, word::PEER_TASKS), (from.thread, word::PEER_THREADS)] {
        for _ in 0..8 {
            let s = to.next_peer;
            to.next_peer = fs::PEERS + (s + 1 - fs::PEERS) % (fs::PEERS_END - fs::PEERS);
            match sys::cap_copy(src, to.task, s, Rights::READ.union(Rights::WRITE)) {
                Err(Error::SlotOccupied) => continue,
                Ok(()) => {
                    // SAFETY: `to`'s counters page is mapped at its index while it lives; the
                    // fuzzer takes these bits with atomic swaps.
                    let word = unsafe { &*(counters(to.index).add(w) as *const AtomicU64) };
                    word.fetch_or(1 << (s - fs::PEERS), SeqCst);
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// Without `cross`: asks the fuzzers `fz` to stop (`word::STOP`) and waits until each fuzzing
/// thread has parked, or has sat in a blocking call since the request (at most 300 ms), and the
/// helpers have seen it, so that no thread of theirs is in the middle of a call when their
/// tasks are ended.
fn quiesce(fz: &[(usize, u64)], threads: u64) {
    let stop = |i: usize| {
        // SAFETY: fuzzer `i`'s counters page is mapped at its index while it lives.
        unsafe { &*(counters(i).add(word::STOP) as *const AtomicU64) }
    };
    let mut seen = [[0u64; MAX_THREADS]; MAX_FUZZERS];
    for &(i, _) in fz {
        stop(i).store(1, SeqCst);
        for t in 0..threads as usize {
            seen[i][t] = read(i, word::PROGRESS + t);
        }
    }
    sleep_ms(20);
    let blocking = [Sys::Send, Sys::Call, Sys::Recv, Sys::ReplyRecv, Sys::Wait];
    wait_ms(300, || {
        fz.iter().all(|&(i, _)| {
            (0..threads as usize).all(|t| {
                let cur = read(i, word::CURRENT + t) & 0xff;
                match read(i, word::ACTIVE + t) {
                    1 => read(i, word::PROGRESS + t) == seen[i][t] && blocking.iter().any(|&b| b as u64 == cur),
                    _ => true,
                }
            })
        })
    });
    sleep_ms(10);
}

fn stop(f: Fuzzer) {
    let _ = sys::task_kill(f.task);
    for &t in f.others.iter().filter(|&&t| t != 0) {
        release(t);
    }
    release(f.thread);
    release(f.space);
    release(f.task);
}

/// Everything the fuzzers counted, summed over every fuzzer that ran.
struct Totals([u64; word::WORDS]);

impl Totals {
    fn harvest(&mut self, i: usize) {
        // (Per-thread words — progress, the call, its timeout — are summed too, meaninglessly,
        // and wrap: the timeout's is `u64::MAX` after most calls.)
        for w in (0..word::CFG_FLAGS).chain(word::CYCLES..word::WORDS) {
            if word::MAXIMA.contains(&w) {
                self.0[w] = self.0[w].max(read(i, w));
            } else {
                self.0[w] = self.0[w].wrapping_add(read(i, w));
            }
        }
    }
}

fn parse(args: &str) -> (u64, bool) {
    let (mut threads, mut cross) = (3, true);
    for w in args.split_ascii_whitespace() {
        if let Some(n) = w.strip_prefix("threads=").and_then(|v| v.parse::<u64>().ok()) {
            threads = n.clamp(1, MAX_THREADS as u64);
        } else if let Some(v) = w.strip_prefix("cross=") {
            cross = v != "0";
        }
    }
    (threads, cross)
}

/// How many threads wait on the shared endpoint `ep`: the senders taken by `NbRecv` and the
/// receivers served by `NbSend` in a row, until none is left (at most 256 each). The last
/// caller taken gets an empty reply (the ones before it get `PartnerGone` as the next is taken).
fn probe(ep: u64) -> (u64, u64) {
    let (mut senders, mut receivers) = (0, 0);
    while senders < 256 && sys::nb_recv(ep).is_ok() {
        senders += 1;
    }
    if senders > 0 {
        let _ = sys::reply(&sys::Msg::default());
    }
    while receivers < 256 && sys::nb_send(ep, &sys::Msg::default()).is_ok() {
        receivers += 1;
    }
    (senders, receivers)
}

fn sys_name(n: usize) -> &'static str {
    Sys::try_from(n as u64).map(|s| s.name()).unwrap_or("InvalidNumbers")
}

fn err_name(e: usize) -> &'static str {
    if e == 0 { "ok" } else { Error::try_from(e as u64).map(|x| x.name()).unwrap_or("other") }
}

pub fn run(bi: &BootInfo, seconds: u64, seed: u64, n: usize) -> bool {
    let n = n.clamp(1, MAX_FUZZERS);
    let (threads, cross) = parse(bi.cmdline());
    NEXT_SEED.store(seed, SeqCst);
    let irq = interrupt_line(bi);
    let delivered0 = sys::stat(MACHINE, stat::IRQS_DELIVERED).unwrap_or(0);
    let threads0 = sys::stat(MACHINE, stat::THREADS).unwrap_or(0);
    // The root derivation nodes of the machine, memory and interrupt line capabilities, which
    // every fuzzer's copy of them needs and which stay charged to this task while it holds
    // them: made now, by a first copy, so that they are in the baseline.
    let tmp = slot();
    for o in [MACHINE, MEMORY].into_iter().chain(irq) {
        let _ = sys::cap_copy(o, TASK, tmp, Rights::NONE);
        let _ = sys::cap_delete(tmp);
    }
    release(tmp);
    // The budget's uncharged bytes (`MemoryInfo`'s third answer): its first is also capped by the free
    // frames, which the heap's partly used arenas may hold for a while after a run.
    let left0 = sys::memory_info_all(MEMORY).map(|m| m[2]).unwrap_or(0);
    let heap = || sys::stat(MACHINE, stat::HEAP_IN_USE).unwrap_or(u64::MAX);
    let heap0 = heap();
    let mut heap_peak = heap0;
    let mut least_left = u64::MAX;
    // The page tables behind the counters pages and the scratch page stay with the root task:
    // made before the memory is measured.
    if let Ok(p) = fill_frame(0, 0, 0) {
        let _ = sys::map(SPACE, p, COUNTERS_VA, Rights::READ);
        let _ = sys::unmap(SPACE, COUNTERS_VA);
        release(p);
    }
    let left_a = sys::memory_info_all(MEMORY).map(|m| m[2]).unwrap_or(0);
    // Shared by every fuzzer for the run: the shared objects, the program's read-only pages.
    let mut shared = [0u64; 5];
    for (k, s) in shared.iter_mut().enumerate() {
        *s = slot();
        let r = if fs::SHARED_NOTES.contains(&fs::SHARED[k]) { sys::notification_create(MEMORY, *s) } else { sys::endpoint_create(MEMORY, *s) };
        if let Err(e) = r {
            println!("fuzz: cannot make the shared objects: {e}");
            return false;
        }
    }
    let img = match load_image(bi) {
        Ok(i) => i,
        Err(e) => {
            println!("fuzz: cannot load the worker program: {e}");
            return false;
        }
    };
    // One port object for every fuzzer (uncharged: the budget's check is not changed by it).
    let ports = slot();
    let have_ports = sys::ioport_get(crate::drv_tests::DEVICES, rl4_user::fuzz::PORTS.0, rl4_user::fuzz::PORTS.1, ports);
    if let Err(e) = have_ports {
        println!("fuzz: no port object for the fuzzers ({e}): IoPortOpen/IoPortClose only with bad arguments");
    }
    let cfg = Config { threads, cross, shared, ports: have_ports.is_ok().then_some(ports), irq };
    println!(
        "fuzz: seed {seed}, {n} fuzzer tasks of {threads} fuzzing threads, {seconds} s, capabilities to each other's tasks and threads: {}, with IPC stress pairs alongside",
        if cross { "yes" } else { "no (cross=0)" }
    );
    let hz = tsc_hz();
    let mut fz: [Option<Fuzzer>; MAX_FUZZERS] = [const { None }; MAX_FUZZERS];
    let mut tot = Totals([0; word::WORDS]);
    let (mut ended, mut faulted, mut stuck, mut failed_starts) = (0u64, 0u64, 0u64, 0u64);
    let (mut stuck_in, mut stuck_forever, mut stuck_suspended) = ([0u64; 64], 0u64, 0u64);
    let mut lost_wakeups = 0u64;
    let (mut most_senders, mut most_receivers) = (0u64, 0u64);
    let (mut checks, mut violations, mut check_cycles) = (0u64, 0u64, 0u64);
    // A check that could not run fails the run too: no fuzzer may call it or measure
    // (`InvalidState` cannot happen), a CPU that does not stop within its 5 s (`Timeout`) is one that hung with
    // interrupts off, and the root task's own allocations do not fail here (before the
    // thirty-ninth session such a check was only printed; a review).
    let mut check_errors = 0u64;
    let check = |checks: &mut u64, violations: &mut u64, cycles: &mut u64, errors: &mut u64| {
        let t = rdtsc();
        match sys::kernel_check(MACHINE) {
            Ok([v, _, _]) => {
                *checks += 1;
                *violations += v;
            }
            Err(e) => {
                *errors += 1;
                println!("fuzz: the consistency check did not run: {e}");
            }
        }
        *cycles += rdtsc() - t;
    };
    // The baseline is taken when the IPC pairs run and no fuzzer does yet; the comparison when
    // the fuzzers are gone and the pairs still run.
    let mut phase = 0; // 0 before, 1 fuzzing, 2 done
    let (mut t0, mut last_check, mut fuzz_ms) = (0u64, 0u64, 0u64);
    let (mut base_threads, mut base_left) = (0u64, 0u64);
    let (mut after_threads, mut after_left) = (0u64, 0u64);
    let mut baseline_back = false;
    let end_fuzzers = |fz: &mut [Option<Fuzzer>; MAX_FUZZERS], tot: &mut Totals| {
        if !cross {
            let mut live = [(0usize, 0u64); MAX_FUZZERS];
            let mut k = 0;
            for (i, f) in fz.iter().enumerate() {
                if let Some(f) = f {
                    live[k] = (i, f.thread);
                    k += 1;
                }
            }
            quiesce(&live[..k], threads);
        }
        for (i, f) in fz.iter_mut().enumerate() {
            if let Some(f) = f.take() {
                stop(f);
                tot.harvest(i);
            }
        }
        for i in 0..MAX_FUZZERS {
            let _ = sys::unmap(SPACE, COUNTERS_VA + i as u64 * PAGE_SIZE);
        }
        // The line's binding names its binder's task and notification weakly, which keeps
        // their records allocated: ended here (the line masked), so that the heap comes back.
        if let Some(l) = irq {
            let _ = sys::irq_unbind(l);
        }
    };
    let mut monitor = || {
        let now = rdtsc();
        match phase {
            0 => {
                base_threads = sys::stat(MACHINE, stat::THREADS).unwrap_or(0);
                base_left = sys::memory_info_all(MEMORY).map(|m| m[2]).unwrap_or(0);
                for i in 0..n {
                    let f = start(&img, &cfg, i, &mut fz);
                    fz[i] = f;
                }
                t0 = now;
                last_check = now;
                phase = 1;
                return;
            }
            2 => return,
            _ => {}
        }
        if now - t0 >= seconds * hz {
            fuzz_ms = (now - t0) / (hz / 1000).max(1);
            end_fuzzers(&mut fz, &mut tot);
            baseline_back = wait_ms(WAIT_BACK_MS, || {
                sys::stat(MACHINE, stat::THREADS) == Ok(base_threads) && sys::memory_info_all(MEMORY).map(|m| m[2]) == Ok(base_left)
            });
            after_threads = sys::stat(MACHINE, stat::THREADS).unwrap_or(0);
            after_left = sys::memory_info_all(MEMORY).map(|m| m[2]).unwrap_or(0);
            phase = 2;
            return;
        }
        if now - last_check >= 3 * hz {
            last_check = now;
            check(&mut checks, &mut violations, &mut check_cycles, &mut check_errors);
            heap_peak = heap_peak.max(heap());
            least_left = least_left.min(sys::memory_info(MEMORY).map(|m| m.0).unwrap_or(0));
            for k in fs::SHARED_EPS {
                let (s, r) = probe(cfg.shared[fs::SHARED.iter().position(|&x| x == k).unwrap_or(0)]);
                most_senders = most_senders.max(s);
                most_receivers = most_receivers.max(r);
            }
        }
        let now = rdtsc();
        for i in 0..n {
            let Some(f) = fz[i].as_mut() else {
                failed_starts += 1;
                let f = start(&img, &cfg, i, &mut fz);
                fz[i] = f;
                continue;
            };
            let st = sys::thread_info(f.thread).map(|r| r[0]);
            let mut end = match st {
                Ok(s) if s == ThreadState::Dead as u64 => true,
                Ok(s) if s == ThreadState::Faulted as u64 => {
                    faulted += 1;
                    true
                }
                Ok(_) => false,
                Err(_) => true,
            };
            if !end {
                for t in 0..threads as usize {
                    let p = read(i, word::PROGRESS + t);
                    if read(i, word::ACTIVE + t) == 0 || p != f.last[t] {
                        f.last[t] = p;
                        f.moved[t] = now;
                    } else if now.saturating_sub(f.moved[t]) > STUCK_MS * hz / 1000 {
                        stuck += 1;
                        let cur = read(i, word::CURRENT + t);
                        stuck_in[(cur & 0xff).min(63) as usize] += 1;
                        stuck_forever += cur >> 8 & 1;
                        if t == 0 && st == Ok(ThreadState::Suspended as u64) {
                            stuck_suspended += 1;
                        }
                        let th = if t == 0 { f.thread } else { f.others[t] };
                        if th != 0 && cur >> 8 & 1 == 0 {
                            if let Some(s) = lost_wakeup(i, t, th, p, hz) {
                                lost_wakeups += 1;
                                println!(
                                    "fuzz: LOST WAKE-UP: fuzzer {i}'s fuzzing thread {t} still in state {s} in {} with timeout {} ticks, a second after the timeout would have ended it",
                                    sys_name((cur & 0xff).min(63) as usize),
                                    read(i, word::TIMEOUT + t)
                                );
                            }
                        }
                        end = true;
                        break;
                    }
                }
            }
            if end {
                ended += 1;
                if let Some(f) = fz[i].take() {
                    if !cross {
                        quiesce(&[(i, f.thread)], threads);
                    }
                    stop(f);
                    tot.harvest(i);
                }
                let f = start(&img, &cfg, i, &mut fz);
                fz[i] = f;
            }
        }
    };
    let left_s = sys::memory_info_all(MEMORY).map(|m| m[2]).unwrap_or(0);
    let stress_ok = crate::stress::run_with(PAIRS, u64::MAX, seconds + WIND_DOWN_S, false, &mut monitor);
    if phase != 2 {
        // The pairs stopped early (a failure of theirs): end the fuzzers now.
        println!("fuzz: the IPC pairs stopped before the fuzzing time was up");
        fuzz_ms = (rdtsc() - t0) / (hz / 1000).max(1);
        end_fuzzers(&mut fz, &mut tot);
    }
    for &s in &shared {
        release(s);
    }
    release(ports);
    for &(_, f, _) in &img.shared[..img.nshared] {
        release(f);
    }
    // The interrupts the fuzzers' bindings got (the line is unbound since the fuzzers ended:
    // nothing more is counted until the root task's own binding below, whose two must not be).
    let delivered = sys::stat(MACHINE, stat::IRQS_DELIVERED).unwrap_or(0).saturating_sub(delivered0);
    // The line, however the fuzzers left it, still delivers (checked before the budget's
    // comparison: the notification it is bound to for that is gone again by then).
    let works = irq.map(line_works);
    let back = wait_ms(5000, || sys::stat(MACHINE, stat::THREADS) == Ok(threads0));
    // Back to the byte: what the root task had before the shared objects were made, less what
    // the IPC pairs keep (what they took before the first fuzzer, less their objects).
    let _ = wait_ms(5000, || {
        let expect = left_a - (left_s - base_left).saturating_sub(PAIRS as u64 * pair_objects());
        sys::memory_info_all(MEMORY).map(|m| m[2]) == Ok(expect)
    });
    let left = sys::memory_info_all(MEMORY).map(|m| m[2]).unwrap_or(0);
    let kept = (left_s - base_left).saturating_sub(PAIRS as u64 * pair_objects()) + (left0 - left_a);
    let mem_back = left == left0 - kept;
    // The kernel heap, everything the run made gone: back within the allowance `KernelCheck`
    // gives the kernel beyond what the live objects pay for.
    let heap1 = heap();
    let bound1 = sys::stat(MACHINE, stat::HEAP_BOUND).unwrap_or(0);
    let heap_ok = heap0 != u64::MAX && heap1 <= heap0 + rl4_abi::HEAP_ALLOWANCE;
    // The last consistency check: no fuzzer, no IPC pair, everything they made gone.
    check(&mut checks, &mut violations, &mut check_cycles, &mut check_errors);

    let w = &tot.0;
    let calls = w[word::CALLS];
    let secs = fuzz_ms.max(1);
    let mut l = Line::new();
    let _ = write!(l, "fuzz: {calls} system calls by fuzzing threads in {} ms ({} per second), {} by helper threads; results:", fuzz_ms, calls * 1000 / secs, w[word::HELPER_CALLS]);
    for e in 0..32 {
        if w[word::RESULTS + e] > 0 {
            let _ = write!(l, " {}={}", err_name(e), w[word::RESULTS + e]);
        }
    }
    l.flush();
    // Shares, largest first.
    let mut order: [usize; 32] = core::array::from_fn(|i| i);
    order.sort_unstable_by(|a, b| w[word::RESULTS + b].cmp(&w[word::RESULTS + a]));
    let _ = write!(l, "fuzz: results by share:");
    for &e in &order {
        let c = w[word::RESULTS + e];
        if c > 0 {
            let per_mille = c * 1000 / calls.max(1);
            let _ = write!(l, " {} {}.{}%", err_name(e), per_mille / 10, per_mille % 10);
        }
    }
    l.flush();
    let first = w[word::RESULTS + Error::SlotOutOfRange as usize] + w[word::RESULTS + Error::EmptySlot as usize];
    println!(
        "fuzz: stopped at the first slot check (SlotOutOfRange, EmptySlot): {}%, succeeded: {}%",
        first * 100 / calls.max(1),
        w[word::RESULTS] * 100 / calls.max(1)
    );
    // Per call: made/ok, eight to a line; the numbers that name no call summed last (the
    // numbers are not contiguous: before the eighteenth session the calls numbered past the
    // count of calls were summed with the invalid ones).
    let mut k = 0;
    let valid = |s: usize| Sys::try_from(s as u64).is_ok();
    let invalid: u64 = (0..64).filter(|&s| !valid(s)).map(|s| w[word::PER_CALL + s]).sum();
    for s in (0..64).filter(|&s| valid(s)).chain([64]) {
        let made = if s == 64 { invalid } else { w[word::PER_CALL + s] };
        if made == 0 {
            continue;
        }
        if k % 8 == 0 {
            if k > 0 {
                l.flush();
            }
            let _ = write!(l, "fuzz: calls made/ok:");
        }
        let ok = if s == 64 { 0 } else { w[word::PER_CALL_OK + s] };
        let _ = write!(l, " {} {}/{}", sys_name(s), made, ok);
        k += 1;
    }
    l.flush();
    // Where the fuzzing threads' time went: the calls that took longest in all (waits count).
    let mut by_time: [usize; word::CYCLE_CALLS] = core::array::from_fn(|i| i);
    by_time.sort_unstable_by(|a, b| w[word::CYCLES + b].cmp(&w[word::CYCLES + a]));
    let in_calls: u64 = (0..word::CYCLE_CALLS).map(|k| w[word::CYCLES + k]).sum();
    let _ = write!(l, "fuzz: time in calls: {} thread-s in all; longest:", in_calls / hz.max(1));
    for &k in by_time.iter().take(10) {
        let _ = write!(l, " {} {}.{:02} s", sys_name(k), w[word::CYCLES + k] / hz.max(1), w[word::CYCLES + k] * 100 / hz.max(1) % 100);
    }
    l.flush();
    let _ = write!(l, "fuzz: stopped at the first slot check, by call:");
    for s in 0..64 {
        if w[word::FIRST_CHECK + s] > 0 {
            let _ = write!(l, " {} {}", sys_name(s), w[word::FIRST_CHECK + s]);
        }
    }
    l.flush();
    let _ = write!(l, "fuzz: on another fuzzer's task or thread, made/ok:");
    let mut any = false;
    for s in 0..64 {
        if w[word::CROSS_CALLS + s] > 0 {
            any = true;
            let _ = write!(l, " {} {}/{}", sys_name(s), w[word::CROSS_CALLS + s], w[word::CROSS_OK + s]);
        }
    }
    if !any {
        let _ = write!(l, " none");
    }
    l.flush();
    println!(
        "fuzz: most threads found waiting on one shared endpoint (every 3 s): {most_senders} senders, {most_receivers} receivers"
    );
    println!(
        "fuzz: fuzzing threads started besides the first {}, helper threads started {}, calls with timeout FOREVER {}, long messages sent {} and received {}, capabilities received through IPC {}, faults taken on purpose {}",
        w[word::THREADS_STARTED],
        w[word::HELPERS_STARTED],
        w[word::FOREVER_CALLS],
        w[word::LONG_SENT],
        w[word::LONG_RECEIVED],
        w[word::CAPS_RECEIVED],
        w[word::FAULTS_TAKEN]
    );
    println!(
        "fuzz: {ended} fuzzer tasks ended and were replaced ({faulted} by a fault of the first thread, {stuck} stuck: a thread made no call for {} s and the watchdog ended its task, the rest dead: ended by themselves or killed by another fuzzer); {failed_starts} starts failed; next seed {}",
        STUCK_MS / 1000,
        NEXT_SEED.load(SeqCst)
    );
    if stuck > 0 {
        let _ = write!(l, "fuzz: the watchdog's stuck threads were last in:");
        for (k, &c) in stuck_in.iter().enumerate() {
            if c > 0 {
                let _ = write!(l, " {} {c}", sys_name(k));
            }
        }
        let _ = write!(l, " (with timeout FOREVER: {stuck_forever}; first thread suspended: {stuck_suspended})");
        l.flush();
    }
    println!(
        "fuzz: deep graphs: task chains built {} ({} tasks, deepest {}), endpoint chains {} ({} endpoints passed on in flight, deepest {}), derivation chains {} ({} capabilities, deepest {})",
        w[word::DEEP_TASK_CHAINS],
        w[word::DEEP_TASK_LINKS],
        w[word::DEEP_TASK_MAX],
        w[word::DEEP_EP_CHAINS],
        w[word::DEEP_EP_LINKS],
        w[word::DEEP_EP_MAX],
        w[word::DEEP_DERIV_CHAINS],
        w[word::DEEP_DERIV_LINKS],
        w[word::DEEP_DERIV_MAX]
    );
    println!(
        "fuzz: deep graphs torn down: heads deleted or killed {}, roots revoked {} ({} capabilities revoked), left standing for later {}; longest such call {} us; calls racing on their slots from other threads {} ({} ok)",
        w[word::DEEP_HEADS_DELETED],
        w[word::DEEP_ROOTS_REVOKED],
        w[word::DEEP_REVOKED_CAPS],
        w[word::DEEP_LEFT],
        w[word::DEEP_LONGEST] / (hz / 1_000_000).max(1),
        w[word::DEEP_RACES],
        w[word::DEEP_RACES_OK]
    );
    println!(
        "fuzz: kernel heap in use: {heap0} bytes at the start, at most {heap_peak} at the checks during the run, {heap1} at the end (bound {bound1}); the end within the start plus the allowance of {} bytes: {}; the least memory budget left at the checks {least_left} bytes",
        rl4_abi::HEAP_ALLOWANCE,
        if heap_ok { "within" } else { "EXCEEDED" }
    );
    // With the kernel's `failalloc=SEED/N` (scripts/fuzz --failalloc N): how many of the
    // fuzzers' kernel allocations failed on purpose (the root task's own calls never do here).
    if let Ok(n) = sys::stat(MACHINE, stat::FAILED_ALLOCS) {
        if n > 0 {
            println!("fuzz: kernel heap allocations failed on purpose (failalloc): {n}");
        }
    }
    println!(
        "fuzz: kernel consistency checks: {checks} run (during the run and at its end), {violations} violations, {check_errors} not run; {} ms in all",
        check_cycles / (hz / 1000).max(1)
    );
    // Informative: killed threads that wait in a run queue behind the IPC pairs' (of a
    // priority at least theirs) are freed only when their CPU gets to them, after the pairs.
    println!(
        "fuzz: {} s after the fuzzers were ended, with the IPC pairs still running: live threads {after_threads} (before the first fuzzer {base_threads}), memory budget {after_left} (before {base_left}){}",
        WAIT_BACK_MS / 1000,
        if baseline_back { ": back" } else { ": not yet back (checked again after the pairs stop)" }
    );
    println!(
        "fuzz: after the run: live threads {} (before {threads0}): {}; memory budget {left} (before {left0}, less {kept} bytes \
         the root task keeps: the IPC pairs' stacks and page tables): {}",
        sys::stat(MACHINE, stat::THREADS).unwrap_or(0),
        if back { "back" } else { "NOT BACK" },
        if mem_back { "back" } else { "NOT BACK" }
    );
    println!("fuzz: lost wake-ups (a fuzzing thread still blocked a second after its finite timeout): {lost_wakeups}");
    println!(
        "fuzz: copies and badged copies held to the ABI's rules: {} (made as they should be: {} copies, {} badged copies), of which broke them: {}",
        w[word::CAPS_CHECKED],
        w[word::COPIES_OK],
        w[word::MINTS_OK],
        w[word::CAPS_WRONG]
    );
    println!(
        "fuzz: calls after which a register the ABI preserves had changed: {} (the highest call number among them {})",
        w[word::REGS_CHANGED],
        w[word::REGS_CHANGED_CALL].wrapping_sub(1) as i64
    );
    // The interrupt line: unmasked after the run (unbound) is a kernel bug, and so is a run in
    // which it fired and no interrupt reached a fuzzer (hundreds do in 10 s).
    let enabled = sys::stat(MACHINE, stat::IRQ_LINES_ENABLED).unwrap_or(u64::MAX);
    let kicks = KICKS.load(SeqCst);
    let line_ok = irq.is_none() || (enabled == 0 && kicks > 0 && delivered > 0 && works == Some(Ok(())));
    if irq.is_some() {
        println!(
            "fuzz: interrupt line {} (COM2 in loopback): raised {kicks} times, {delivered} interrupts delivered to the fuzzers' notifications; lines unmasked after the run {enabled}: {}",
            rl4_user::com::COM2_IRQ,
            if enabled == 0 { "none, as it should be" } else { "NOT MASKED" }
        );
        println!(
            "fuzz: interrupt line {} after the run, bound to a notification of the root task's: {}",
            rl4_user::com::COM2_IRQ,
            match works {
                Some(Ok(())) => "two interrupts, each with its bit alone, the second after IrqAck: works",
                Some(Err(e)) => e,
                None => "not tried",
            }
        );
    }
    let ok = line_ok && stress_ok && back && mem_back && heap_ok && calls > 0 && checks > 0 && violations == 0 && check_errors == 0 && lost_wakeups == 0 && w[word::REGS_CHANGED] == 0 && w[word::CAPS_WRONG] == 0 && w[word::COPIES_OK] > 0 && w[word::MINTS_OK] > 0;
    println!("fuzz: {}", if ok { "passed" } else { "FAILED" });
    ok
}
