//! The root task's own bookkeeping: free capability slots, stacks for its threads, loading a
//! program into a new task, and waiting with a timeout.
use core::sync::atomic::{AtomicU64, Ordering};
use rl4_abi::{BootInfo, Error, PAGE_SIZE, Rights, root_slots};
use rl4_elf::{Elf, PF_W, PF_X};
use rl4_user::sys;

pub const TASK: u64 = root_slots::TASK;
pub const SPACE: u64 = root_slots::SPACE;
pub const THREAD: u64 = root_slots::THREAD;
pub const MEMORY: u64 = root_slots::MEMORY;
pub const MACHINE: u64 = root_slots::MACHINE;

/// Priority the root thread normally runs at (the kernel's choice).
pub const ROOT_PRIO: u64 = 100;

static TSC_HZ: AtomicU64 = AtomicU64::new(1);
static CPUS: AtomicU64 = AtomicU64::new(1);

pub fn init(bi: &BootInfo) {
    TSC_HZ.store(bi.tsc_hz.max(1), Ordering::Relaxed);
    CPUS.store(bi.cpus.max(1), Ordering::Relaxed);
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

pub fn cpus() -> u64 {
    CPUS.load(Ordering::Relaxed)
}

/// Free slots of the root task's capability table (bit set = used).
static SLOTS: [AtomicU64; 4] = [AtomicU64::new(0xff), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// A free slot of the root task's table.
pub fn slot() -> u64 {
    for (w, word) in SLOTS.iter().enumerate() {
        loop {
            let v = word.load(Ordering::Relaxed);
            if v == u64::MAX {
                break;
            }
            let b = (!v).trailing_zeros() as u64;
            if word.compare_exchange(v, v | 1 << b, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                return w as u64 * 64 + b;
            }
        }
    }
    panic!("root: out of capability slots")
}

/// Deletes the capability in `s` (if any) and frees the slot.
pub fn release(s: u64) {
    let _ = sys::cap_delete(s);
    SLOTS[(s / 64) as usize].fetch_and(!(1 << (s % 64)), Ordering::AcqRel);
}

/// Virtual memory of the root task handed out for stacks and scratch mappings.
static NEXT_VA: AtomicU64 = AtomicU64::new(0x0000_5000_0000_0000);

/// Unused virtual memory of the root task for a program load's scratch page ([`load_pages`]).
pub fn scratch_range() -> u64 {
    NEXT_VA.fetch_add(2 * PAGE_SIZE, Ordering::Relaxed)
}

/// Maps `pages` fresh zeroed frames into `space` at `va` with `rights`. The frame capabilities
/// are deleted afterwards: the mappings keep the frames alive.
pub fn map_fresh(space: u64, va: u64, pages: u64, rights: Rights) -> Result<(), Error> {
    for i in 0..pages {
        let f = slot();
        let r = sys::frame_alloc(MEMORY, f).and_then(|_| sys::map(space, f, va + i * PAGE_SIZE, rights));
        release(f);
        r?;
    }
    Ok(())
}

/// A new stack of `pages` pages in the root task (below a guard page); returns its top.
pub fn stack(pages: u64) -> u64 {
    try_stack(pages).expect("root: stack")
}

/// [`stack`], or the error that left it unmapped (its addresses are not used again).
pub fn try_stack(pages: u64) -> Result<u64, Error> {
    let base = NEXT_VA.fetch_add((pages + 1) * PAGE_SIZE, Ordering::Relaxed) + PAGE_SIZE;
    map_fresh(SPACE, base, pages, Rights::READ.union(Rights::WRITE))?;
    Ok(base + pages * PAGE_SIZE)
}

/// How many things costing `per` bytes of budget each (`rl4_abi::cost`) a test makes: its `target`
/// (the 288 MiB suites make every full count), or on a smaller machine as many as the budget left
/// pays for less a third or 8 MiB ([`spendable`]; at `-m 64M` with `test=all` about 20 MiB are
/// left). The rest is for what the test makes besides (holder tasks, page tables, derivation
/// nodes). A smaller count still checks teardown and accounting; the regressions the teardown and
/// reply-chain tests were written for (a kernel stack overflow at 3,000 tasks or 2,000 endpoints, a
/// heap leak that passed its allowance near 6,000 threads) show only at the full counts, which the
/// 288 MiB suites run: each report gives the count made against the full one. No budget (none left,
/// or `MemoryInfo` failed) makes the full count, which then fails.
pub fn sized(target: u64, per: u64) -> u64 {
    match sys::memory_info(MEMORY).map_or(0, |m| m.0) {
        0 => target,
        b => target.min(spendable(b) / per).max(1),
    }
}

/// What of a budget of `b` bytes a test that sizes what it makes by the budget may spend on its
/// objects: `b` less a third of it, or less 8 MiB once that is smaller (kept for what it makes
/// besides, and for costs its estimate leaves out). At 288 MiB that pays for every full count of
/// the suites (a chain of 10,000 tasks of 24,960 bytes needs 238 MiB of the about 274 MiB left).
fn spendable(b: u64) -> u64 {
    b - (b / 3).min(8 << 20)
}

/// Where the next stack or scratch mapping of the root task goes: a mark for [`free_since`].
pub fn mark() -> u64 {
    NEXT_VA.load(Ordering::Relaxed)
}

/// Unmaps every page of the root task's stacks and scratch mappings made since `mark` (the
/// guard pages between them are not mapped: their errors are ignored), so that their frames
/// come back. Every thread that ran on one of those stacks must have ended, and nothing else
/// may have taken addresses meanwhile (one test at a time).
pub fn free_since(mark: u64) {
    let end = NEXT_VA.load(Ordering::Relaxed);
    for va in (mark..end).step_by(PAGE_SIZE as usize) {
        let _ = sys::unmap(SPACE, va);
    }
}

/// Free slots of the root task's capability table now.
pub fn free_slots() -> u64 {
    SLOTS.iter().map(|w| w.load(Ordering::Relaxed).count_zeros() as u64).sum()
}

/// [`spawn`] on a one-page stack, answering an error (the slot is freed) rather than stopping
/// the root task: for tests that start many threads.
pub fn try_spawn(f: fn(u64), arg: u64, prio: u64, cpu: u64) -> Result<u64, Error> {
    let t = slot();
    let base = NEXT_VA.fetch_add(2 * PAGE_SIZE, Ordering::Relaxed) + PAGE_SIZE;
    map_fresh(SPACE, base, 1, Rights::READ.union(Rights::WRITE)).inspect_err(|_| release(t))?;
    let r = sys::thread_create(MEMORY, TASK, rl4_user::thread_entry(), base + PAGE_SIZE, prio, cpu, t)
        .and_then(|_| sys::thread_set_args(t, f as *const () as u64, arg))
        .and_then(|_| sys::thread_resume(t));
    match r {
        Ok(()) => Ok(t),
        Err(e) => {
            // The thread never ran on the stack: it goes with the slot.
            release(t);
            let _ = sys::unmap(SPACE, base);
            Err(e)
        }
    }
}

/// Starts `f(arg)` as a new thread of the root task on `cpu` at `prio`; returns its slot.
pub fn spawn(f: fn(u64), arg: u64, prio: u64, cpu: u64) -> u64 {
    spawn_on(f, arg, prio, cpu, stack(4))
}

/// [`spawn`] on the stack whose top is `top` (a test that starts a helper per round reuses one
/// stack once the last helper is `Dead`: the root task never frees a stack).
pub fn spawn_on(f: fn(u64), arg: u64, prio: u64, cpu: u64, top: u64) -> u64 {
    try_spawn_on(f, arg, prio, cpu, top, None).expect("root: starting a thread")
}

/// [`spawn_on`], with its IPC buffer at `ipc_buffer` (set before it starts) if given, or the
/// error that kept it from starting (its slot released again).
pub fn try_spawn_on(f: fn(u64), arg: u64, prio: u64, cpu: u64, top: u64, ipc_buffer: Option<u64>) -> Result<u64, Error> {
    let t = slot();
    let r = sys::thread_create(MEMORY, TASK, rl4_user::thread_entry(), top, prio, cpu, t)
        .and_then(|_| sys::thread_set_args(t, f as *const () as u64, arg))
        .and_then(|_| ipc_buffer.map_or(Ok(()), |b| sys::set_ipc_buffer(t, b)))
        .and_then(|_| sys::thread_resume(t));
    match r {
        Ok(()) => Ok(t),
        Err(e) => {
            release(t);
            Err(e)
        }
    }
}

/// A race test's round made up to three times while `missed` says it missed its window (a CPU
/// held back by its host): the number of rounds made and the last one's outcome.
pub fn up_to_three_rounds<R>(mut round: impl FnMut() -> R, missed: impl Fn(&R) -> bool) -> (u32, R) {
    let mut rounds = 1;
    let mut r = round();
    while rounds < 3 && missed(&r) {
        rounds += 1;
        r = round();
    }
    (rounds, r)
}

/// Waits up to `ms` milliseconds for `cond`. It first yields (cheap, and enough when the
/// awaited threads run elsewhere or at this priority); after a few rounds it sleeps between looks,
/// so that threads of lower priority on this CPU get to run too.
pub fn wait_ms(ms: u64, mut cond: impl FnMut() -> bool) -> bool {
    // Saturating: a wait of `seconds=` beyond the TSC's range is a wait without end, not one
    // that wrapped round to a moment.
    let end = rl4_user::rdtsc().saturating_add((TSC_HZ.load(Ordering::Relaxed) / 1000).saturating_mul(ms));
    let mut rounds = 0u32;
    loop {
        if cond() {
            return true;
        }
        if rl4_user::rdtsc() > end {
            return cond();
        }
        rounds += 1;
        if rounds < 64 {
            sys::yield_now();
        } else {
            crate::stress::sleep_ms(1);
        }
    }
}

/// The ELF image of the embedded program `name`, parsed.
pub fn program(bi: &BootInfo, name: &str) -> Result<Elf<'static>, Error> {
    let p = bi.programs().iter().find(|p| p.name() == name).ok_or(Error::InvalidArgument)?;
    // SAFETY: the kernel maps each program image read-only at `addr` for `len` bytes, for the
    // root task's life.
    let image: &'static [u8] = unsafe { core::slice::from_raw_parts(p.addr as *const u8, p.len as usize) };
    Elf::parse(image, PAGE_SIZE, rl4_abi::PROGRAMS_ADDR).map_err(|_| Error::InvalidArgument)
}

/// Copies each page of a program into a fresh frame, through the root task's page at `scratch`
/// (mapped and unmapped for each page), and hands it to `place(frame slot, address, rights)`,
/// which maps it where it belongs and says whether it keeps the frame's slot (else the slot is
/// released: the mapping keeps the frame). Returns the entry point.
pub fn load_pages(
    elf: &Elf<'_>,
    scratch: u64,
    mut place: impl FnMut(u64, u64, Rights) -> Result<bool, Error>,
) -> Result<u64, Error> {
    for seg in elf.segments() {
        let seg = seg.map_err(|_| Error::InvalidArgument)?;
        let (p0, p1) = seg.pages();
        let file = elf.file_bytes(&seg);
        let mut va = p0;
        while va < p1 {
            let f = slot();
            let copied = sys::frame_alloc(MEMORY, f).and_then(|_| sys::map(SPACE, f, scratch, Rights::READ.union(Rights::WRITE))).and_then(|_| {
                // Copy the part of the segment's file bytes that falls into this page.
                let page_lo = va.max(seg.vaddr);
                let page_hi = (va + PAGE_SIZE).min(seg.vaddr + seg.filesz);
                if page_lo < page_hi {
                    let src = &file[(page_lo - seg.vaddr) as usize..(page_hi - seg.vaddr) as usize];
                    let dst = (scratch + (page_lo - va)) as *mut u8;
                    // SAFETY: `scratch..scratch+4096` is mapped writable just above, and the
                    // range stays inside that page.
                    unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
                }
                sys::unmap(SPACE, scratch)
            });
            if let Err(e) = copied {
                // The frame (and its slot) go back, and the scratch page is free for the next
                // load (out of memory half-way: a program refused, the root task goes on).
                let _ = sys::unmap(SPACE, scratch);
                release(f);
                return Err(e);
            }
            let mut r = Rights::READ;
            if seg.flags & PF_W != 0 {
                r = r.union(Rights::WRITE);
            }
            if seg.flags & PF_X != 0 {
                r = r.union(Rights::EXECUTE);
            }
            let keep = place(f, va, r);
            if keep != Ok(true) {
                release(f);
            }
            keep?;
            va += PAGE_SIZE;
        }
    }
    Ok(elf.entry)
}

/// Waits up to `ms` milliseconds for `cond`, spinning for the first 2 ms: unlike [`wait_ms`],
/// which sleeps a timer tick once it has yielded a while, this notices at once what happens
/// soon, and sleeps (leaving the host's cores to the other emulated CPUs) only for what takes
/// longer. Only for a thread that has its CPU to itself (the root thread on CPU 0 while the
/// threads it waits for run elsewhere).
pub fn spin_ms(ms: u64, mut cond: impl FnMut() -> bool) -> bool {
    let start = rl4_user::rdtsc();
    let (spin_end, end) = (start + tsc_hz() / 500, start + tsc_hz() / 1000 * ms);
    loop {
        if cond() {
            return true;
        }
        let now = rl4_user::rdtsc();
        if now > end {
            return cond();
        }
        if now > spin_end {
            crate::stress::sleep_ms(1);
        } else {
            core::hint::spin_loop();
        }
    }
}

/// A task made from one of the embedded programs.
pub struct Child {
    pub task: u64,
    pub space: u64,
    pub entry: u64,
}

impl Child {
    /// Loads the program `name` into a new task, gives it a console capability (console right
    /// only) in its `MACHINE` slot. Frames are copied through a scratch page of the root task.
    pub fn load(bi: &BootInfo, name: &str) -> Result<Child, Error> {
        Self::load_with(bi, name, Rights::CONSOLE)
    }

    /// Like [`Child::load`], with `console` the rights of the child's machine capability.
    pub fn load_with(bi: &BootInfo, name: &str, console: Rights) -> Result<Child, Error> {
        Self::load_elf(&program(bi, name)?, console)
    }

    /// Like [`Child::load_with`], for an image already checked.
    pub fn load_elf(image: &Elf<'_>, console: Rights) -> Result<Child, Error> {
        let task = slot();
        match sys::task_create(MEMORY, task) {
            Ok(()) => Self::load_into(image, task, console, scratch_range()),
            Err(e) => {
                release(task);
                Err(e)
            }
        }
    }

    /// Like [`Child::load_elf`], into the task in the root task's slot `task` (made by another
    /// task, say), copying through the root task's page at `scratch` ([`scratch_range`]): the
    /// `Child` owns that slot from here, and releases it if the load fails.
    pub fn load_into(image: &Elf<'_>, task: u64, console: Rights, scratch: u64) -> Result<Child, Error> {
        let space = slot();
        let loaded = (|| {
            sys::task_space(task, space)?;
            let entry = load_pages(image, scratch, |f, va, r| sys::map(space, f, va, r).map(|_| false))?;
            sys::cap_copy(MACHINE, task, MACHINE, console)?;
            Ok(entry)
        })();
        match loaded {
            Ok(entry) => Ok(Child { task, space, entry }),
            Err(e) => {
                // Whatever was made goes back (deleting empty slots is harmless).
                Child { task, space, entry: 0 }.release();
                Err(e)
            }
        }
    }

    /// Starts a thread of the child at its entry point with arguments `(a0, a1)`, with a fresh
    /// stack at `stack_top`; returns the thread's slot in the root task.
    pub fn thread(&self, stack_top: u64, a0: u64, a1: u64, prio: u64, cpu: u64) -> Result<u64, Error> {
        map_fresh(self.space, stack_top - 4 * PAGE_SIZE, 4, Rights::READ.union(Rights::WRITE))?;
        let t = slot();
        sys::thread_create(MEMORY, self.task, self.entry, stack_top, prio, cpu, t)?;
        sys::thread_set_args(t, a0, a1)?;
        sys::thread_resume(t)?;
        Ok(t)
    }

    /// Ends the child (its threads stop, its table is emptied) and deletes the root task's
    /// capabilities to it: everything it had goes back to the budget.
    pub fn release(self) {
        let _ = sys::task_kill(self.task);
        release(self.space);
        release(self.task);
    }
}

/// Where a child's IPC buffer and its first thread's stack go.
pub const CHILD_BUF: u64 = 0x0000_6400_0000_0000;
pub const CHILD_STACK_TOP: u64 = 0x0000_7000_0000_0000;

/// A server thread running the `worker` program in a task of its own, on an endpoint of the
/// root task's.
pub struct Server {
    pub child: Child,
    /// The endpoint, in the root task's table (the worker holds a receive-only copy).
    pub ep: u64,
    pub thread: u64,
}

impl Server {
    /// Starts `worker` command `cmd` (`ECHO` or `STAMP`) on `cpu` and waits until it receives.
    pub fn start(bi: &BootInfo, cpu: u64, cmd: u64) -> Result<Server, Error> {
        use rl4_user::worker::EP_SLOT;
        let child = Child::load(bi, "worker")?;
        let ep = slot();
        sys::endpoint_create(MEMORY, ep)?;
        sys::cap_copy(ep, child.task, EP_SLOT, Rights::RECEIVE)?;
        map_fresh(child.space, CHILD_BUF, 1, Rights::READ.union(Rights::WRITE))?;
        map_fresh(child.space, CHILD_STACK_TOP - 4 * PAGE_SIZE, 4, Rights::READ.union(Rights::WRITE))?;
        let thread = slot();
        sys::thread_create(MEMORY, child.task, child.entry, CHILD_STACK_TOP, ROOT_PRIO, cpu, thread)?;
        sys::thread_set_args(thread, cmd, CHILD_BUF)?;
        sys::set_ipc_buffer(thread, CHILD_BUF)?;
        sys::thread_resume(thread)?;
        let blocked = |t| sys::thread_info(t).map(|r| r[0]) == Ok(rl4_abi::ThreadState::BlockedRecv as u64);
        wait_ms(5000, || blocked(thread));
        Ok(Server { child, ep, thread })
    }

    /// Stops the server: deleting the endpoint wakes its receive with `PartnerGone`.
    pub fn stop(self) {
        let _ = sys::thread_suspend(self.thread);
        release(self.ep);
        release(self.thread);
        self.child.release();
    }
}

/// Which of the root task's 256 capability slots hold something, as a bitmap (a test compares
/// it before and after, to find a capability left behind).
pub fn occupied_slots() -> [u64; 4] {
    let mut m = [0u64; 4];
    for i in 0..256u64 {
        if sys::cap_identify(i).is_ok() {
            m[(i / 64) as usize] |= 1 << (i % 64);
        }
    }
    m
}
