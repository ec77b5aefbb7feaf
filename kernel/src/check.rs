//! The kernel's own consistency check (`Sys::KernelCheck`): it stops every other CPU, then
//! compares what the kernel's structures say with what they should say.
//!
//! * **Reference counts.** Every live object (found through the registries in `obj`) must
//!   have exactly as many strong references as there are holders the kernel knows of:
//!   capabilities in slots (one in flight with a blocked sender holds none: a weak reference), a thread's task and space, a
//!   task's parent (the task that made it), an
//!   address space's mappings, reply rights, every object's budget charge, run
//!   queues, inboxes, request lists, current threads, endpoint and notification queues. One more is a leak,
//!   one fewer would be a use-after-free waiting to happen.
//! * **Threads.** Each thread's `Life` matches where it is found: current on a CPU ⇔ that
//!   CPU's current slot holds it; queued ⇔ in exactly one run queue or inbox; held nowhere ⇔
//!   in none; blocked on an endpoint or notification ⇔ in exactly that queue and no other
//!   (the queues' links consistent, and a thread's wait link claimed ⇔ it is in one of them);
//!   waiting for a reply ⇔ exactly one thread holds the right with its ticket; running ⇒
//!   current; runnable ⇒ current or queued (else it would never run: a lost wake-up); a wait
//!   with a deadline ⇒ an entry in a CPU's timeout list; a thread of an ended task is dead;
//!   a task whose parent ended has ended, each task counts the tasks naming it as parent, and
//!   lies one below it (at most `obj::MOST_TASK_DEPTH` below the root task).
//! * **Locks and reclamation.** No CPU has destroyed a kernel object while holding a lock, no
//!   object waits to be destroyed while every CPU is stopped, and (in a `lockcheck` kernel) no
//!   lock was ever taken out of order (`lock.rs`, `reclaim.rs`).
//! * **Budgets.** Each memory budget's charged bytes equal the sum of what its objects, page
//!   tables and mappings cost.
//! * **Kernel heap.** The bytes allocated from the heap do not exceed the heap shares of the
//!   live objects' charges (`obj::heap_bound`), the kernel's own at boot and a fixed
//!   allowance: memory a task made the kernel allocate is paid for as long as it is held.
//! * **Address spaces.** Each shares the kernel half; its page tables map exactly its recorded
//!   mappings (frame, writable, executable); its table count matches what it was charged.
//! * **Frames.** Every physical frame the allocator manages is either free and owned by
//!   nothing, or allocated and owned exactly once: by a frame object, a page table (kernel or
//!   user), the kernel heap or a kernel stack. No page of a boot module (the boot loader's
//!   copy, which stays reserved) is the allocator's: the root task's copies of the modules are
//!   frame objects like any other, owned by its mappings. A device frame (`DeviceMemGet`) is
//!   no allocator frame: it must be one of the device pages fixed at boot, the only live frame
//!   object of its page, and mapped uncached and never executable.
//! * **Each CPU's MMU, I/O permission bitmap and FPU.** Once every CPU has stopped, each reads
//!   its own hardware ([`read_stopped_cpus`]). The root its MMU translates with must be the
//!   root the CPU published (which TLB shoot-downs go by) and, if the CPU runs a thread, that
//!   thread's space's. Its
//!   I/O permission bitmap must open exactly the port ranges it records, and those must be
//!   its running task's, or ports its task has open while an open's interrupt is on its way;
//!   a CPU that owes itself a re-read of them (it answered or made a close while running no
//!   thread) may hold anything until then, but must have the reschedule interrupt that does
//!   it pending (`device::check_cpu`). Its FPU/SIMD registers are off in hardware (`CR0.TS`)
//!   exactly when its record says so and, running a thread, exactly when that thread has not
//!   used them.
//! * **The direct map's memory types.** Each of its pages is write-back where memory is and
//!   uncached elsewhere (`mem::direct_ranges`), and no page of the kernel's device window (local
//!   APIC, I/O APICs, HPET) and no device page is mapped write-back there.
//!
//! Stopping the world: the checking CPU sends every other CPU the freeze IPI and waits until
//! all of them spin in `hold`. The kernel runs with interrupts off except in the idle loop (its
//! halt, and the windows its poll and its rounds open), so a CPU takes the IPI only in user mode
//! or idle, where it holds no lock and no temporary reference (the one system call that halts,
//! `Measure(IPI_FLOOR)`, cannot be under way: the check holds its lock, `measure::exclusive`).
//! A CPU waiting for a TLB shootdown is released because frozen CPUs (and
//! the checker while it waits) keep answering TLB requests.
//!
//! `unsafe` here: only the page-table walks and the reads of CPUs' current-thread slots, sound
//! because every other CPU is stopped.
#![allow(unsafe_code)]

use alloc::sync::Arc;

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use rl4_abi::{Error, PAGE_SIZE, ThreadState};
use rl4_arch::layout::{DIRECT_MAP, DIRECT_MAP_SIZE, HEAP_BASE, HEAP_SIZE, MMIO_BASE, MMIO_SIZE, STACKS_BASE, STACKS_SIZE, phys_to_virt};
use rl4_arch::paging::{self, Visit};
use rl4_arch::{cpu, percpu, println};
use rl4_smp::{MAX_CPUS, cpus, lapic};

use rl4_core::life::{Place, State};

use crate::obj::{self, KObj, MAP_COST, Thread, Wait, grow};
use crate::{mem, sched};

/// Held by the CPU that runs a check.
static WORLD: crate::count::GlobalSpin<()> = crate::count::GlobalSpin::new(crate::count::Global::Check, ());
/// Other CPUs must stay in `hold`.
static FROZEN: AtomicBool = AtomicBool::new(false);
/// CPUs spinning in `hold`.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// How long the checker waits for the other CPUs to stop (µs). vCPUs of an overcommitted
/// host can be off their physical CPU for a long time.
const STOP_WAIT_US: u64 = 5_000_000;

/// Violations printed in full (the rest are only counted).
const PRINTED: u64 = 40;

/// The freeze IPI.
pub fn freeze_interrupt() {
    cpus::eoi();
    hold();
}

fn hold() {
    if !FROZEN.load(SeqCst) {
        return;
    }
    HELD.fetch_add(1, SeqCst);
    while FROZEN.load(SeqCst) {
        crate::tlb::service_tlb_here();
        read_own();
        cpu::relax();
    }
    HELD.fetch_sub(1, SeqCst);
}

/// What each CPU read of its own hardware for the check whose number is `asked`
/// ([`read_stopped_cpus`]): the root its MMU translates with, whether the reschedule interrupt is
/// pending there, and whether its FPU/SIMD registers are off.
struct SeenCpu {
    root: AtomicU64,
    resched_pending: AtomicBool,
    /// Its FPU/SIMD registers off in hardware (`CR0.TS`), and as its per-CPU record says.
    fpu_off: AtomicBool,
    fpu_off_recorded: AtomicBool,
    asked: AtomicU64,
}

static SEEN: [SeenCpu; MAX_CPUS] = [const {
    SeenCpu {
        root: AtomicU64::new(0),
        resched_pending: AtomicBool::new(false),
        fpu_off: AtomicBool::new(false),
        fpu_off_recorded: AtomicBool::new(false),
        asked: AtomicU64::new(0),
    }
}; MAX_CPUS];
/// The number of the last check that asked the stopped CPUs to read their own hardware.
static ASKED: AtomicU64 = AtomicU64::new(0);

/// In [`hold`], and by the checker for itself: this CPU reads its own hardware for the check
/// that asks.
fn read_own() {
    let asked = ASKED.load(SeqCst);
    let seen = &SEEN[percpu::cpu_index() as usize % MAX_CPUS];
    if seen.asked.load(SeqCst) != asked {
        seen.root.store(paging::current_pml4(), SeqCst);
        seen.resched_pending.store(lapic::pending(lapic::VEC_RESCHED), SeqCst);
        seen.fpu_off.store(rl4_arch::fpu::off_in_hardware(), SeqCst);
        seen.fpu_off_recorded.store(percpu::fpu_off(), SeqCst);
        seen.asked.store(asked, SeqCst);
    }
}

/// Once every CPU has stopped: each reads its own hardware ([`read_own`]). Asked only now, not
/// as it stops: a CPU stopped in `hold` may yet answer a TLB shoot-down that loads the
/// kernel's root (a space's destruction), until its shooter has its answer and stops too;
/// once all have stopped, nothing changes a root or an I/O permission bitmap. Whether every
/// CPU answered within the stop's wait.
fn read_stopped_cpus(me: usize) -> bool {
    let asked = ASKED.fetch_add(1, SeqCst) + 1;
    read_own();
    wait_until(STOP_WAIT_US, || {
        (0..MAX_CPUS).filter(|&i| i != me && sched::cpu_online(i as u64)).all(|i| SEEN[i].asked.load(SeqCst) == asked)
    })
}

/// Spins until `done`, answering TLB requests; false after `us` microseconds.
fn wait_until(us: u64, done: impl Fn() -> bool) -> bool {
    let end = cpu::rdtsc().saturating_add(rl4_arch::time::us_to_ticks(us));
    while !done() {
        if cpu::rdtsc() > end {
            return false;
        }
        crate::tlb::service_tlb_here();
        cpu::relax();
    }
    true
}

/// Runs the check for the system call of `caller` (the running thread, which its handler
/// borrows from this CPU's current slot without a reference of its own).
/// Returns (violations, objects checked, frames checked).
pub fn run(caller: &Arc<Thread>) -> Result<[u64; 3], Error> {
    // Endpoints deleted a moment ago are gone, if their grace period allows (`qsbr.rs`); the
    // ones still kept are counted as held below.
    crate::qsbr::settle();
    let Some(world) = WORLD.try_lock() else { return Err(Error::InvalidState) };
    // No CPU halts in `Measure(IPI_FLOOR)` meanwhile, whose halts put their CPU's destructions
    // off (`reclaim::deferred`): frozen there, it would hold objects the check counts as
    // waiting to be destroyed, and their references as extra (a review of the thirty-seventh
    // session). Nor does one start: the check holds the measurement's lock.
    let Some(_measuring) = crate::measure::exclusive() else { return Err(Error::InvalidState) };
    // A CPU still leaving the previous check's `hold` would be counted as stopped.
    if !wait_until(STOP_WAIT_US, || HELD.load(SeqCst) == 0) {
        return Err(Error::Timeout);
    }
    let me = percpu::cpu_index() as usize;
    // Walked, not listed: nothing here allocates before the lists' own fallible allocations
    // (a collected list of the CPUs made an allocation that cannot fail, which at heap
    // exhaustion panicked in the allocator's failure handler: a review found it).
    // The IPIs sent are counted; a CPU that came online meanwhile (an AP given up on as stuck
    // that finished its set-up late) and got none makes the count of online CPUs differ after
    // the stop, and the check answers as for a CPU that did not stop (before, a CPU that came
    // online after the list was made ran through the whole check: a review found it).
    FROZEN.store(true, SeqCst);
    let mut n_others = 0usize;
    for i in (0..MAX_CPUS).filter(|&i| i != me && sched::cpu_online(i as u64)) {
        cpus::send_ipi(i, lapic::VEC_FREEZE);
        n_others += 1;
    }
    let stopped = wait_until(STOP_WAIT_US, || HELD.load(SeqCst) == n_others) && sched::online_count() == n_others as u64 + 1 && read_stopped_cpus(me);
    let result = if stopped {
        match check_all(caller) {
            Ok(r) => {
                println!("check: {} objects, {} frames: {} violations", r[1], r[2], r[0]);
                Ok(r)
            }
            Err(NoMemory) => {
                println!("check: no memory for the check's lists; nothing checked");
                Err(Error::OutOfMemory)
            }
        }
    } else {
        println!("check: not every CPU stopped within {} ms; nothing checked", STOP_WAIT_US / 1000);
        Err(Error::Timeout)
    };
    FROZEN.store(false, SeqCst);
    drop(world);
    result
}

#[derive(Default)]
struct Report {
    violations: u64,
}

impl Report {
    fn fail(&mut self, args: fmt::Arguments<'_>) {
        self.violations += 1;
        if self.violations <= PRINTED {
            println!("check: VIOLATION: {args}");
        }
    }
}

macro_rules! fail {
    ($r:expr, $($t:tt)*) => { $r.fail(format_args!($($t)*)) };
}

fn key<T>(a: &Arc<T>) -> usize {
    Arc::as_ptr(a) as usize
}

/// References found: the object's address, once per reference, in a list grown fallibly (a
/// B-tree's nodes are allocated without a way to fail: with the memory spent on objects, the
/// check stopped the kernel there before the thirty-fourth session, which a review found and
/// `exhaust-overcommit-smp2` showed). Sorted when first counted.
#[derive(Default)]
struct Refs {
    keys: Vec<usize>,
    sorted: bool,
    /// A reference could not be listed: the counts are not to be trusted ([`NoMemory`]).
    full: bool,
}

impl Refs {
    fn add<T>(&mut self, a: &Arc<T>) {
        self.add_key(key(a));
    }
    /// A reference to the object at `k` held as a raw `Arc` (an intrusive list's).
    fn add_key(&mut self, k: usize) {
        if grow(&mut self.keys, k) {
            self.sorted = false;
        } else {
            self.full = true;
        }
    }
    /// The references to the object at `k` found.
    fn count(&mut self, k: usize) -> u64 {
        if !self.sorted {
            self.keys.sort_unstable();
            self.sorted = true;
        }
        (self.keys.partition_point(|&x| x <= k) - self.keys.partition_point(|&x| x < k)) as u64
    }
    fn kobj(&mut self, o: &KObj) {
        match o {
            KObj::Task(a) => self.add(a),
            KObj::Space(a) => self.add(a),
            KObj::Thread(a) => self.add(a),
            KObj::Frame(a) => self.add(a),
            KObj::Memory(a) => self.add(a),
            KObj::Endpoint(a) => self.add(a),
            KObj::Notification(a) => self.add(a),
            KObj::Machine | KObj::Devices | KObj::Irq(_) | KObj::IoPort(_) => {}
        }
    }
    /// Compares with the strong count, less the snapshot's own reference.
    fn compare<T>(&mut self, r: &mut Report, a: &Arc<T>, what: fmt::Arguments<'_>) {
        let found = self.count(key(a));
        let counted = Arc::strong_count(a) as u64 - 1;
        if found != counted {
            fail!(r, "{what}: {counted} references, but {found} holders found");
        }
    }
}

/// Where a thread was found.
#[derive(Default)]
struct Seen {
    current: u32,
    queued: u32,
    /// CPUs' request lists it is on (`sched::request`).
    requests: u32,
    senders: Vec<usize>,
    receivers: Vec<usize>,
    waiters: Vec<usize>,
    /// Tickets of the reply rights other threads hold for it.
    reply_holders: Vec<u64>,
    deadlines: Vec<u64>,
}

/// The check could not have the memory for one of its lists (a list per kind of object, the
/// frames gathered, the frame table, the deadlines): it stops, and its count is not reported
/// (what it printed before stays printed: the heap's check, and violations of steps before the
/// deadlines'). Each such list is contiguous and sized by what tasks made, and a task can
/// fragment free memory: its allocation is fallible (a review found the check could stop the
/// kernel in the allocator's failure handler). So is every list that grows with what tasks
/// made: the references found ([`Refs`]), the threads' entries and their lists ([`SeenAll`],
/// [`grow`]), the tasks' parents (before the thirty-fourth session the first two were B-trees,
/// whose nodes cannot fail: the check stopped the kernel with the memory spent on waiters and
/// `overcommit=`). The one B-tree left has an entry per memory budget. Every list that grows
/// does so through [`grow`], the short ones too (a thread's queues, the CPUs' faults): a
/// `push` that cannot allocate stops the kernel.
struct NoMemory;

/// How a port object was met by the check.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PortMet {
    Slot,
    Range,
    Flight,
}

/// Where each thread was found, by its address: sorted, made with room for every thread.
struct SeenAll {
    by: Vec<(usize, Seen)>,
    /// An entry of a thread's lists could not be made ([`NoMemory`]).
    full: bool,
}

impl SeenAll {
    fn new(threads: &[Arc<Thread>]) -> Result<SeenAll, NoMemory> {
        let mut by = room(threads.len())?;
        by.extend(threads.iter().map(|t| (key(t), Seen::default())));
        by.sort_unstable_by_key(|(k, _)| *k);
        Ok(SeenAll { by, full: false })
    }
    fn get(&self, k: usize) -> Option<&Seen> {
        self.by.binary_search_by_key(&k, |(x, _)| *x).ok().map(|i| &self.by[i].1)
    }
    fn get_mut(&mut self, k: usize) -> Option<&mut Seen> {
        self.by.binary_search_by_key(&k, |(x, _)| *x).ok().map(|i| &mut self.by[i].1)
    }
    /// Appends `x` to the list `which` of thread `k`'s entry; false if `k` is no thread found.
    fn note<T>(&mut self, k: usize, which: fn(&mut Seen) -> &mut Vec<T>, x: T) -> bool {
        let Some(i) = self.by.binary_search_by_key(&k, |(x, _)| *x).ok() else { return false };
        if !grow(which(&mut self.by[i].1), x) {
            self.full = true;
        }
        true
    }
}

/// Bytes charged to each memory budget (by its address), a sorted list grown fallibly (a
/// B-tree before the thirty-sixth session: its first insertion was an allocation that cannot
/// fail, a panic at heap exhaustion; a review found it).
struct Tally(Vec<(usize, u64)>);

impl Tally {
    fn with_room(n: usize) -> Result<Tally, NoMemory> {
        Ok(Tally(room(n)?))
    }
    /// Adds `b` to `k`'s bytes; false if a new entry found no room.
    fn add(&mut self, k: usize, b: u64) -> bool {
        match self.0.binary_search_by_key(&k, |&(x, _)| x) {
            Ok(i) => {
                self.0[i].1 += b;
                true
            }
            Err(i) => {
                if self.0.try_reserve(1).is_err() {
                    return false;
                }
                self.0.insert(i, (k, b));
                true
            }
        }
    }
    fn get(&self, k: usize) -> u64 {
        self.0.binary_search_by_key(&k, |&(x, _)| x).map_or(0, |i| self.0[i].1)
    }
}

/// A vector with room for `n` elements, or [`NoMemory`].
fn room<T>(n: usize) -> Result<Vec<T>, NoMemory> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| NoMemory)?;
    Ok(v)
}

fn check_all(caller: &Arc<Thread>) -> Result<[u64; 3], NoMemory> {
    let mut r = Report::default();
    // 0. The kernel heap, before the check allocates anything: what is in use stays within
    // what the live objects are charged for, plus the kernel's own and a fixed allowance.
    let bound = obj::heap_bound();
    match mem::try_heap_in_use() {
        Some(used) => {
            println!(
                "check: kernel heap: {used} bytes in use, {bound} allowed, {} held ({} arena frames)",
                mem::heap_size(),
                mem::heap_arenas()
            );
            if used > bound {
                fail!(r, "kernel heap: {used} bytes in use, but the live objects and the allowance account for {bound}");
            }
        }
        None => {
            // Nothing below may run: the registries' lists are copied into the heap, whose
            // lock no CPU would let go of (a review of the thirty-ninth session).
            fail!(r, "the kernel heap is locked while every CPU is stopped");
            return Ok([r.violations, 0, 0]);
        }
    }
    let tasks = obj::TASKS.try_live().ok_or(NoMemory)?;
    let spaces = obj::SPACES.try_live().ok_or(NoMemory)?;
    let threads = obj::THREADS.try_live().ok_or(NoMemory)?;
    let frames = obj::FRAMES.try_live().ok_or(NoMemory)?;
    let memories = obj::MEMORIES.try_live().ok_or(NoMemory)?;
    let endpoints = obj::ENDPOINTS.try_live().ok_or(NoMemory)?;
    let notifications = obj::NOTIFICATIONS.try_live().ok_or(NoMemory)?;
    let objects = [tasks.len(), spaces.len(), threads.len(), frames.len(), memories.len(), endpoints.len(), notifications.len()]
        .iter()
        .sum::<usize>() as u64;

    // Every lock must be free: the other CPUs stopped where they hold none.
    macro_rules! locked {
        ($m:expr, $what:expr) => {
            match $m.peek() {
                Some(g) => g,
                None => {
                    fail!(r, "{} is locked while every CPU is stopped", $what);
                    return Ok([r.violations, objects, 0]);
                }
            }
        };
    }
    let mut task_caps = room(tasks.len())?;
    for t in &tasks {
        task_caps.push(locked!(t.caps, format_args!("task {}'s capability table", t.id)));
    }
    // Threads' states: every CPU's home lock at once.
    let homes = match crate::lock::peek_homes() {
        Ok(h) => h,
        Err(cpu) => {
            fail!(r, "cpu {}'s home lock (its threads' states) is locked while every CPU is stopped", cpu);
            return Ok([r.violations, objects, 0]);
        }
    };
    let mut thread_sched = room(threads.len())?;
    for t in &threads {
        match t.life.peeked(&homes) {
            Some(l) if t.life.home_is(l.cpu) => thread_sched.push(l),
            Some(l) => {
                fail!(r, "thread {}'s home lock is not its CPU's ({}), as `Life::cpu` says", t.id, l.cpu);
                return Ok([r.violations, objects, 0]);
            }
            None => {
                fail!(r, "thread {}'s home lock is none of the CPUs' home locks", t.id);
                return Ok([r.violations, objects, 0]);
            }
        }
    }
    let mut space_maps = room(spaces.len())?;
    for s in &spaces {
        space_maps.push(locked!(s.maps, format_args!("the mappings of space {:#x}", s.pml4)));
    }
    let mut ep_q = room(endpoints.len())?;
    for e in &endpoints {
        ep_q.push(locked!(e.q, "an endpoint's queues"));
    }
    let mut n_q = room(notifications.len())?;
    for n in &notifications {
        n_q.push(locked!(n.q, "a notification's queue"));
    }

    // The long lists of steps 4 and 5, made before step 1 reports anything (without room for
    // them nothing is checked). Room for every frame object, root and page table charged: a
    // walk that finds more tables than were charged (a violation reported below) leaves the
    // extra ones out (`gather`) rather than grow the list. The frame table's size does not
    // change while the check runs (the allocator's bitmap is fixed at boot).
    let charged: usize = spaces.iter().map(|s| 1 + s.table_pages.load(SeqCst) as usize).sum();
    let mut users_pa: Vec<u64> = room(frames.len() + charged + 64)?;
    let mut owned: Vec<u64> = room(mem::with_allocator(|a| a.index_limit()).unwrap_or(0).div_ceil(64))?;
    // Step 3's bytes per budget (every object's budget is a live one: it holds it) and step 4's
    // device frames (one per device page at most; more is a violation, and grows fallibly).
    let mut budgets = Tally::with_room(memories.len() + 8)?;
    let device_pages = crate::device::device_page_list();
    let mut device_pa: Vec<u64> = room(device_pages.len())?;

    // 1. Reference counts.
    let mut refs = Refs::default();
    let mut seen = SeenAll::new(&threads)?;
    let mut census = obj::LinkCensus::default();
    if !crate::qsbr::visit(|e| refs.add(e)) {
        fail!(r, "a CPU's limbo of endpoints is locked while every CPU is stopped");
    }
    // Port objects, each time one is met: in a slot, through a range open, in flight. The ones
    // in slots are counted against the count each object keeps (its ranges close when that
    // count reaches zero: one too many would keep them open for ever); every one found is
    // charged (port objects have no registry). A list grown fallibly, as `Refs` (B-trees before
    // the thirty-fourth session, whose nodes cannot fail: a review found the check could stop
    // the kernel with the memory spent on port objects).
    let mut port_met: Vec<(usize, PortMet, Arc<crate::device::IoPortObj>)> = Vec::new();
    let mut port_full = false;
    let mut met = |port_met: &mut Vec<_>, p: &Arc<crate::device::IoPortObj>, how| {
        port_full |= !grow(port_met, (Arc::as_ptr(p) as usize, how, p.clone()));
    };
    // Each task's count of the tasks it made that exist (`Task::children`) against the tasks
    // found naming it as their parent.
    let mut made: Vec<usize> = room(tasks.len())?;
    made.extend(tasks.iter().filter_map(|t| t.parent.as_ref().map(|p| Arc::as_ptr(p) as usize)));
    made.sort_unstable();
    for t in &tasks {
        let k = Arc::as_ptr(t) as usize;
        let found = (made.partition_point(|&x| x <= k) - made.partition_point(|&x| x < k)) as u64;
        let counted = t.children.load(SeqCst);
        if found != counted {
            fail!(r, "task {} counts {counted} tasks it made, but {found} exist", t.id);
        }
    }
    for (t, caps) in tasks.iter().zip(&task_caps) {
        caps.iter().for_each(|(_, c)| refs.kobj(&c.obj));
        for (_, c) in caps.iter() {
            if let KObj::IoPort(p) = &c.obj {
                met(&mut port_met, p, PortMet::Slot);
            }
        }
        for (slot, c) in caps.iter() {
            census.slot(t, slot, &c.link, |a| r.fail(a));
        }
        refs.add(&t.space);
        refs.add(t.charge().of().0);
        if let Some(p) = &t.parent {
            refs.add(p);
            if p.dead.load(SeqCst) && !t.dead.load(SeqCst) {
                fail!(r, "task {} lives on after task {}, which made it, ended", t.id, p.id);
            }
        }
        // Its depth is one more than its maker's (0 for the root task), within the limit that
        // bounds `TaskCreate`'s look at its ancestors.
        let depth = t.parent.as_ref().map_or(0, |p| p.depth + 1);
        if t.depth != depth || t.depth > obj::MOST_TASK_DEPTH {
            fail!(r, "task {} says it lies {} below the root task, its maker says {depth} (at most {})", t.id, t.depth, obj::MOST_TASK_DEPTH);
        }
        if let Some(sh) = t.shadow.get() {
            refs.add(sh.charge().of().0);
        }
        if t.dead.load(SeqCst) && !caps.is_empty() {
            fail!(r, "task {} has ended but its table still holds {} capabilities", t.id, caps.used());
        }
    }
    for (t, s) in threads.iter().zip(&thread_sched) {
        refs.add(&t.task);
        refs.add(&t.space);
        refs.add(t.charge().of().0);
        if let Some((c, ticket)) = s.reply_right() {
            refs.add(c);
            if !seen.note(key(c), |x| &mut x.reply_holders, *ticket) {
                fail!(r, "thread {} holds the reply right of thread {}, which is not registered", t.id, c.id);
            }
        }
        // A capability in flight holds no reference to its object (`obj::InFlight`).
        if let State::Blocked { wait: Wait::Send { cap: Some(c), .. }, .. } = s.state()
            && let Some(KObj::IoPort(p)) = c.object()
        {
            met(&mut port_met, &p, PortMet::Flight);
        }
    }
    for (sp, maps) in spaces.iter().zip(&space_maps) {
        maps.values().for_each(|(f, _, _)| refs.add(f));
        refs.add(&sp.memory);
        refs.add(sp.charge().of().0);
        // The port objects its ranges are open through: each lists the space, and counts the
        // capabilities in slots (one found in no slot must count none); its task's table holds
        // a capability to each with `WRITE`.
        match crate::device::open_objects(&sp.io) {
            None => fail!(r, "address space {:#x}: its port ranges' lock is held", sp.pml4),
            Some((objs, task)) => {
                // (Looked for only in a space with a range open: few are.)
                let caps = || task.and_then(|t| tasks.iter().position(|x| core::ptr::eq(Arc::as_ptr(x), t))).map(|i| &task_caps[i]);
                for o in objs.iter().flatten() {
                    let p = match o {
                        Ok(p) => p,
                        Err(range) => {
                            fail!(r, "address space {:#x}: ports {:#x}+{} are open through a port object that is gone", sp.pml4, range.base, range.count);
                            continue;
                        }
                    };
                    met(&mut port_met, p, PortMet::Range);
                    if p.lists(Arc::as_ptr(sp)) != Some(true) {
                        fail!(r, "address space {:#x}: a range is open through port object {:#x}, whose list of openers does not name it", sp.pml4, Arc::as_ptr(p) as usize);
                    }
                    let held = caps().is_some_and(|c| crate::device::table_holds(c, Arc::as_ptr(p) as u64));
                    if !held {
                        fail!(r, "address space {:#x}: a range is open through port object {:#x}, but its task's table holds no capability to it with WRITE", sp.pml4, Arc::as_ptr(p) as usize);
                    }
                }
            }
        }
    }
    if port_full {
        return Err(NoMemory);
    }
    port_met.sort_unstable_by_key(|(k, _, _)| *k);
    // Each port object once, for its charge.
    let mut port_objs: Vec<&Arc<crate::device::IoPortObj>> = room(port_met.chunk_by(|a, b| a.0 == b.0).count())?;
    for group in port_met.chunk_by(|a, b| a.0 == b.0) {
        let (p, obj) = (group[0].0, &group[0].2);
        port_objs.push(obj);
        // Met in no slot and through no range (only in flight): no count to compare.
        if group.iter().all(|(_, how, _)| *how == PortMet::Flight) {
            continue;
        }
        let found = group.iter().filter(|(_, how, _)| *how == PortMet::Slot).count() as u64;
        let counted = obj.slots_held();
        if found != counted {
            fail!(r, "port object {p:#x}: {found} capabilities in slots, but it counts {counted}");
        } else if found == 0 {
            // Met only through an open range: its last capability left its slot, and nothing
            // waits to be destroyed (checked below), so the close that follows in the same
            // kernel entry did not happen.
            fail!(r, "port object {p:#x}: a range is open through it, but no slot holds a capability to it");
        }
    }
    frames.iter().for_each(|f| refs.add(f.charge().of().0));
    let mut unregistered = 0u64;
    // A count of `t`'s entry changed, or `unregistered` if `t` is no thread found.
    fn count_in(seen: &mut SeenAll, t: usize, unregistered: &mut u64, f: impl FnOnce(&mut Seen)) {
        match seen.get_mut(t) {
            Some(x) => f(x),
            None => *unregistered += 1,
        }
    }
    for (e, q) in endpoints.iter().zip(&ep_q) {
        refs.add(e.charge().of().0);
        if !q.senders.is_consistent() || !q.receivers.is_consistent() {
            fail!(r, "endpoint {:#x}: its wait queues' links are inconsistent", key(e));
        }
        for (_, t) in q.senders.iter() {
            let t = t as *const Thread as usize;
            refs.add_key(t);
            if !seen.note(t, |x| &mut x.senders, key(e)) {
                unregistered += 1;
            }
        }
        for (_, t) in q.receivers.iter() {
            let t = t as *const Thread as usize;
            refs.add_key(t);
            if !seen.note(t, |x| &mut x.receivers, key(e)) {
                unregistered += 1;
            }
        }
    }
    for (n, q) in notifications.iter().zip(&n_q) {
        refs.add(n.charge().of().0);
        if !q.waiters.is_consistent() {
            fail!(r, "notification {:#x}: its wait queue's links are inconsistent", key(n));
        }
        for (_, t) in q.waiters.iter() {
            let t = t as *const Thread as usize;
            refs.add_key(t);
            if !seen.note(t, |x| &mut x.waiters, key(n)) {
                unregistered += 1;
            }
        }
    }
    let mut cpu_faults: Vec<(usize, &'static str)> = Vec::new();
    let mut faults_full = false;
    // As long as the deadline lists (tasks set that): grown fallibly; without room the check
    // stops ([`NoMemory`]).
    let mut timeouts: Vec<(usize, u64)> = Vec::new();
    let mut timeouts_full = false;
    sched::visit_cpus(
        |_, held, t| {
            // The queues hold raw references (intrusive lists).
            let t = t as *const Thread as usize;
            refs.add_key(t);
            count_in(&mut seen, t, &mut unregistered, |x| match held {
                sched::Held::RunQueue | sched::Held::Inbox => x.queued += 1,
                // A reference of its own, in no run queue.
                sched::Held::Request => x.requests += 1,
            });
        },
        |_, deadline, w| {
            if timeouts.try_reserve(1).is_ok() {
                timeouts.push((w.as_ptr() as usize, deadline));
            } else {
                timeouts_full = true;
            }
        },
        |cpu, what| faults_full |= !grow(&mut cpu_faults, (cpu, what)),
    );
    if timeouts_full || faults_full {
        return Err(NoMemory);
    }
    for i in 0..MAX_CPUS {
        let Some(cs) = sched::get(i) else { continue };
        // SAFETY: every other CPU is stopped in `hold` (entered from user mode or the idle loop,
        // never inside an access to its current slot: `Measure(IPI_FLOOR)`'s halt, the one
        // other place, is excluded while the check runs), and this CPU is inside the
        // check's system call, which only reads its slot too; the reference does not outlive
        // the check.
        let current = unsafe { cs.peek_current() };
        for th in current.iter() {
            refs.add(th);
            count_in(&mut seen, key(th), &mut unregistered, |x| x.current += 1);
        }
        // What the CPU's MMU and I/O permission bitmap hold: the root it read itself
        // ([`read_stopped_cpus`]) is the one it published for TLB shoot-downs and, running a
        // thread, that thread's space's; its bitmap follows `device::check_cpu`'s rules.
        let root = SEEN[i].root.load(SeqCst);
        let published = cs.tlb.shared.loaded();
        if root != published {
            fail!(r, "cpu {i}: translates with root {root:#x}, not the root it published ({published:#x}), which TLB shoot-downs go by");
        }
        if let Some(t) = current {
            if root != t.space.pml4.addr() {
                fail!(r, "cpu {i}: runs thread {} but translates with root {root:#x}, not its space's ({:#x})", t.id, t.space.pml4.addr());
            }
        }
        // Its FPU/SIMD registers: off in hardware exactly when its record says so and, running
        // a thread, exactly when that thread has not used them (`arch::fpu`'s "First use": such
        // a thread runs over registers reset to the default, and its first use traps).
        let (off, recorded) = (SEEN[i].fpu_off.load(SeqCst), SEEN[i].fpu_off_recorded.load(SeqCst));
        if off != recorded {
            fail!(r, "cpu {i}: its FPU/SIMD registers are {} in hardware, but its record says {}", if off { "off" } else { "on" }, if recorded { "off" } else { "on" });
        }
        if let Some(t) = current {
            if t.fpu.used() == off {
                fail!(r, "cpu {i}: runs thread {}, which has {}used the FPU/SIMD registers, with them {}", t.id, if off { "" } else { "not " }, if off { "off" } else { "on" });
            }
        }
        let pending = SEEN[i].resched_pending.load(SeqCst);
        crate::device::check_cpu(i, &cs.tlb, pending, current.as_deref(), |what| fail!(r, "cpu {i}: {what}"));
    }
    for (cpu, what) in cpu_faults {
        fail!(r, "cpu {cpu}: {what}");
    }
    if unregistered > 0 {
        fail!(r, "{unregistered} queue entries name threads that are not registered");
    }
    for (t, d) in timeouts {
        seen.note(t, |x| &mut x.deadlines, d);
    }
    // Each derivation node's charge holds a reference to its budget, as each port object's.
    let node_charges = census.take_charges();
    for &(m, _, _) in &node_charges {
        refs.add_key(m);
    }
    port_objs.iter().for_each(|p| refs.add(p.charge().of().0));
    // A reference or a thread's entry that could not be listed: no count is to be trusted, and
    // none is compared.
    if refs.full || seen.full || census.full() {
        return Err(NoMemory);
    }
    // The system call being handled borrows the caller from the current slot, which is
    // counted above: no reference of its own (`syscall::handle`).
    let _ = caller;

    for t in &tasks {
        refs.compare(&mut r, t, format_args!("task {}", t.id));
    }
    for t in &threads {
        refs.compare(&mut r, t, format_args!("thread {}", t.id));
    }
    for s in &spaces {
        refs.compare(&mut r, s, format_args!("address space {:#x}", s.pml4));
    }
    for f in &frames {
        refs.compare(&mut r, f, format_args!("frame {:#x}", f.pa()));
    }
    for m in &memories {
        refs.compare(&mut r, m, format_args!("memory budget of {} bytes", m.total));
    }
    for e in &endpoints {
        refs.compare(&mut r, e, format_args!("endpoint {:#x}", key(e)));
    }
    for n in &notifications {
        refs.compare(&mut r, n, format_args!("notification {:#x}", key(n)));
    }
    census.finish(|a| r.fail(a));

    // 2. Thread states: each thread's `Life` against where it was found.
    for (t, s) in threads.iter().zip(&thread_sched) {
        // (Every thread has its entry: `SeenAll::new`.)
        let Some(x) = seen.get(key(t)) else { continue };
        let id = t.id;
        let st = s.view();
        let place = s.place();
        let in_queues = x.senders.len() + x.receivers.len() + x.waiters.len();
        match place {
            Place::Current(_) if x.current != 1 || x.queued != 0 => {
                fail!(r, "thread {id} ({st:?}) is current on a CPU but found current on {} CPUs and in {} queues", x.current, x.queued)
            }
            Place::Queued(_) if x.queued != 1 || x.current != 0 => {
                fail!(r, "thread {id} ({st:?}) is queued but found in {} run queues or inboxes and current on {} CPUs", x.queued, x.current)
            }
            Place::Off if x.queued != 0 || x.current != 0 => {
                fail!(r, "thread {id} ({st:?}) is held nowhere but found in {} run queues or inboxes and current on {} CPUs", x.queued, x.current)
            }
            _ => {}
        }
        if !s.consistent() {
            fail!(r, "thread {id} is {st:?} but queued to run");
        }
        let wait_fits = match s.state() {
            State::Blocked { wait: Wait::Send { ep, .. } | Wait::FaultSend { ep, .. }, .. } => {
                ep.weak.strong_count() > 0 && x.senders == [ep.weak.as_ptr() as usize] && in_queues == 1
            }
            State::Blocked { wait: Wait::Recv { ep }, .. } => ep.weak.strong_count() > 0 && x.receivers == [ep.weak.as_ptr() as usize] && in_queues == 1,
            State::Blocked { wait: Wait::Notify { n }, .. } => n.0.strong_count() > 0 && x.waiters == [n.0.as_ptr() as usize] && in_queues == 1,
            _ => in_queues == 0,
        };
        if !wait_fits {
            fail!(
                r,
                "thread {id} ({st:?}): its wait does not match its queues (in {} send, {} receive, {} notification queues)",
                x.senders.len(),
                x.receivers.len(),
                x.waiters.len()
            );
        }
        // On one request list at most, and its request link claimed exactly then.
        if x.requests > 1 || t.req_link.is_queued() != (x.requests == 1) {
            fail!(r, "thread {id} ({st:?}): its request link is {}claimed, but it is on {} request lists", if t.req_link.is_queued() { "" } else { "not " }, x.requests);
        }
        // A link claimed by no list walked above: a lost list (its threads would never leave it).
        if t.wait_link.is_queued() != (in_queues > 0) {
            fail!(r, "thread {id} ({st:?}): its wait link is {}claimed, but it is in {in_queues} wait queues", if t.wait_link.is_queued() { "" } else { "not " });
        }
        match s.state() {
            State::Running if !matches!(place, Place::Current(_)) => fail!(r, "thread {id} is Running on no CPU"),
            State::Ready if place == Place::Off => fail!(r, "thread {id} is Runnable but in no queue and on no CPU (a lost wake-up)"),
            State::Blocked { wait: Wait::Reply { ticket } | Wait::FaultReply { ticket }, .. } => {
                let n = x.reply_holders.iter().filter(|&&h| h == *ticket).count();
                if n != 1 {
                    fail!(r, "thread {id} ({st:?}) waits for a reply, but {n} threads hold the right to answer it");
                }
            }
            _ => {}
        }
        if let Some(d) = s.deadline() {
            if !x.deadlines.contains(&d) {
                fail!(r, "thread {id} ({st:?}) waits with a deadline that no CPU's timeout list holds");
            }
        }
        if t.task.dead.load(SeqCst) && st != ThreadState::Dead {
            fail!(r, "thread {id} of ended task {} is {st:?}, not Dead", t.task.id);
        }
        if !Arc::ptr_eq(&t.space, &t.task.space) {
            fail!(r, "thread {id} runs in another space than its task's");
        }
    }
    // The interrupt lines against their I/O APIC pins.
    crate::irq::check(|which, n, what| fail!(r, "{which} {n}: {what}"));
    // Locks and reclamation, as counted by every CPU since boot.
    let (order, drops, last) = crate::lock::violations();
    if order > 0 {
        fail!(r, "{order} lock acquisitions broke the lock order (last: level {} taken holding levels {:#b})", last & 0xff, last >> 8);
    }
    let pending = crate::reclaim::pending();
    if pending > 0 {
        fail!(r, "{pending} objects wait to be destroyed while every CPU is stopped");
    }
    if drops > 0 {
        fail!(r, "{drops} kernel objects were destroyed while their CPU held a lock");
    }
    let missed = crate::mem::map_nodes_missed();
    if missed > 0 {
        fail!(r, "{missed} nodes of mapping B-trees were not in their CPU's stock (rl4_core::btreenodes' bound)");
    }
    let leaks = crate::trap::flag_leaks();
    if leaks > 0 {
        fail!(r, "{leaks} traps from user mode ran kernel code with the direction or alignment-check flag set");
    }

    // 3. Budgets.
    let mut heap_shares = 0u64;
    let mut short = false;
    let mut charge = |c: &obj::Charge| {
        let (m, b) = c.of();
        short |= !budgets.add(key(m), b);
        heap_shares += c.heap();
    };
    tasks.iter().for_each(|t| charge(t.charge()));
    tasks.iter().filter_map(|t| t.shadow.get()).for_each(|s| charge(s.charge()));
    threads.iter().for_each(|t| charge(t.charge()));
    spaces.iter().for_each(|s| charge(s.charge()));
    frames.iter().for_each(|f| charge(f.charge()));
    endpoints.iter().for_each(|e| charge(e.charge()));
    notifications.iter().for_each(|n| charge(n.charge()));
    port_objs.iter().for_each(|p| charge(p.charge()));
    for (sp, maps) in spaces.iter().zip(&space_maps) {
        let tables = sp.table_pages.load(SeqCst);
        short |= !budgets.add(key(&sp.memory), tables * PAGE_SIZE + maps.len() as u64 * MAP_COST);
    }
    heap_shares += space_maps.iter().map(|m| m.len() as u64).sum::<u64>() * obj::MAP_HEAP;
    for &(m, bytes, heap) in &node_charges {
        short |= !budgets.add(m, bytes);
        heap_shares += heap;
    }
    if short {
        return Err(NoMemory);
    }
    if heap_shares != obj::heap_charged() {
        fail!(r, "the live objects' heap shares add up to {heap_shares} bytes, but {} are counted", obj::heap_charged());
    }
    for m in &memories {
        let c = budgets.get(key(m));
        if m.used() != c || m.used() > m.total {
            fail!(r, "memory budget of {} bytes: {} charged, but its objects account for {c}", m.total, m.used());
        }
    }

    // 4. Address spaces: page tables against mappings. The frames of user page tables and
    // frame objects are gathered here for step 5 (which must not allocate).
    let gather = |v: &mut Vec<u64>, pa: u64| {
        if v.len() < v.capacity() {
            v.push(pa);
        }
    };
    users_pa.extend(frames.iter().filter(|f| f.device_page().is_none()).map(|f| f.pa()));
    // Device frames: each is the device page its number names, claimed, and the only live
    // frame object of that page (step 5 checks that the allocator does not manage it).
    let mut device_seen = 0u64;
    for f in frames.iter() {
        let Some(i) = f.device_page() else { continue };
        // (Fallibly: more device frames than device pages is a violation reported below.)
        if !grow(&mut device_pa, f.pa()) {
            return Err(NoMemory);
        }
        let i = i as usize;
        if device_pages.get(i) != Some(&f.pa()) {
            fail!(r, "device frame {:#x}: not device page {i} of the pages the firmware's tables give", f.pa());
        } else if device_seen & (1 << i) != 0 {
            fail!(r, "device page {:#x} has more than one frame object", f.pa());
        } else if !crate::device::page_taken(i) {
            fail!(r, "device frame {:#x} lives but its page is not marked taken", f.pa());
        }
        device_seen |= 1 << (i % 64);
    }
    for (sp, maps) in spaces.iter().zip(&space_maps) {
        gather(&mut users_pa, sp.pml4.addr());
        if !paging::shares_kernel_half(&sp.pml4) {
            fail!(r, "address space {:#x}: its kernel half differs from the kernel's", sp.pml4);
        }
        let (mut tables, mut leaves, mut wrong, mut first_wrong) = (0u64, 0u64, 0u64, 0u64);
        let nx = paging::no_execute();
        // SAFETY: every other CPU is stopped and this one changes no page table during the walk.
        unsafe {
            paging::walk(&sp.pml4, 0..256, |v| match v {
                Visit::Table { pa, .. } => {
                    tables += 1;
                    gather(&mut users_pa, pa);
                }
                Visit::Leaf { va, pa, size, write, exec, user, uncached } => {
                    leaves += 1;
                    // A device page uncached and never executable; RAM cached. (On a CPU
                    // without NX every page is executable: what was asked is not in the entry.)
                    let ok = size == PAGE_SIZE
                        && user
                        && maps.get(&va).is_some_and(|(f, w, x)| {
                            let device = f.device_page().is_some();
                            f.pa() == pa && *w == write && (!nx || (*x == exec && !(exec && device))) && uncached == device
                        });
                    if !ok {
                        wrong += 1;
                        if first_wrong == 0 {
                            first_wrong = va | 1;
                        }
                    }
                }
            })
        };
        if wrong > 0 || leaves != maps.len() as u64 {
            fail!(
                r,
                "address space {:#x}: {leaves} pages mapped in its tables, {} recorded, {wrong} disagree (first at {:#x})",
                sp.pml4,
                maps.len(),
                first_wrong & !1
            );
        }
        if tables != sp.table_pages.load(SeqCst) {
            fail!(r, "address space {:#x}: {tables} page tables, {} charged", sp.pml4, sp.table_pages.load(SeqCst));
        }
    }

    // 5. Frames: free, or owned exactly once. Nothing below allocates while the allocator is
    // locked (the heap grows from it).
    let Some(limit) = mem::with_allocator(|a| a.index_limit()) else {
        fail!(r, "the frame allocator is locked while every CPU is stopped");
        return Ok([r.violations, objects, 0]);
    };
    if owned.capacity() < limit.div_ceil(64) {
        return Err(NoMemory);
    }
    owned.resize(limit.div_ceil(64), 0);
    let checked = mem::with_allocator(|a| {
        let (mut dup, mut first_dup, mut unmanaged, mut frames_checked) = (0u64, 0u64, 0u64, 0u64);
        let mut own = |pa: u64, user: bool| match a.index(pa) {
            Some(i) => {
                let (w, b) = (i / 64, 1u64 << (i % 64));
                if owned[w] & b != 0 {
                    dup += 1;
                    if first_dup == 0 {
                        first_dup = pa | 1;
                    }
                }
                owned[w] |= b;
            }
            None if user => unmanaged += 1,
            None => {}
        };
        let k = paging::kernel_root();
        own(k.addr(), false);
        // SAFETY: as above; the kernel half changes only under the page-table lock, which no
        // stopped CPU holds, and this CPU maps nothing during the walk.
        unsafe {
            paging::walk(k, 256..512, |v| match v {
                Visit::Table { pa, .. } => own(pa, false),
                Visit::Leaf { va, pa, .. } => {
                    let heap = (HEAP_BASE..HEAP_BASE + HEAP_SIZE).contains(&va);
                    let stack = (STACKS_BASE..STACKS_BASE + STACKS_SIZE).contains(&va);
                    if heap || stack {
                        own(pa, false)
                    }
                }
            })
        };
        users_pa.iter().for_each(|&pa| own(pa, true));
        // The heap's frames outside its window (arenas, spares, large allocations).
        mem::for_each_heap_frame(|i| {
            let (w, b) = (i / 64, 1u64 << (i % 64));
            if owned[w] & b != 0 {
                dup += 1;
                if first_dup == 0 {
                    first_dup = 1;
                }
            }
            owned[w] |= b;
        });
        // A device page is never the allocator's.
        let device_managed = device_pa.iter().filter(|&&pa| a.index(pa).is_some()).count() as u64;
        // Boot modules stay out of the allocator (`mem::init` reserves them).
        let mut module_pages = 0u64;
        // Only the part of each module within the managed range can be the allocator's: the
        // walk never goes further, whatever the boot loader said about the module's size.
        let (lo, hi) = a.span();
        for m in crate::boot_info().map_or(&[][..], |b| b.modules()) {
            let mut pa = (m.range.start & !(PAGE_SIZE - 1)).max(lo);
            while pa < m.range.end.min(hi) {
                if a.index(pa).is_some() {
                    module_pages += 1;
                }
                pa += PAGE_SIZE;
            }
        }
        let (mut free_owned, mut leaked, mut first_free_owned, mut first_leak) = (0u64, 0u64, 0u64, 0u64);
        a.for_each_frame(|pa, i, free| {
            frames_checked += 1;
            let o = owned[i / 64] & (1 << (i % 64)) != 0;
            if free && o {
                free_owned += 1;
                if first_free_owned == 0 {
                    first_free_owned = pa | 1;
                }
            }
            if !free && !o {
                leaked += 1;
                if first_leak == 0 {
                    first_leak = pa | 1;
                }
            }
        });
        (dup, first_dup, unmanaged, free_owned, first_free_owned, leaked, first_leak, frames_checked, module_pages, device_managed)
    });
    let Some((dup, first_dup, unmanaged, free_owned, first_free_owned, leaked, first_leak, frames_checked, module_pages, device_managed)) =
        checked
    else {
        fail!(r, "the frame allocator is locked while every CPU is stopped");
        return Ok([r.violations, objects, 0]);
    };
    if dup > 0 {
        fail!(r, "{dup} frames are owned more than once (first {:#x})", first_dup & !1);
    }
    if unmanaged > 0 {
        fail!(r, "{unmanaged} frames of user objects or page tables are not the allocator's");
    }
    if free_owned > 0 {
        fail!(r, "{free_owned} frames are free but still owned (first {:#x})", first_free_owned & !1);
    }
    if leaked > 0 {
        fail!(r, "{leaked} frames are allocated but owned by nothing (first {:#x})", first_leak & !1);
    }
    if module_pages > 0 {
        fail!(r, "{module_pages} pages of boot modules are managed by the frame allocator");
    }
    if device_managed > 0 {
        fail!(r, "{device_managed} device frames are pages the frame allocator manages");
    }

    // 6. The direct map's memory types (`mem::direct_ranges`): write-back where memory is,
    // uncached elsewhere, and no page that the kernel maps uncached in its device window
    // (local APIC, I/O APICs, HPET), and no device page, mapped write-back there.
    let slots = |base: u64, size: u64| {
        let first = ((base >> 39) & 511) as usize;
        first..first + size.div_ceil(1 << 39) as usize
    };
    let mut aliased = 0u64;
    let mut first_alias = 0u64;
    let mut write_back = |pa: u64| {
        // (Beyond the direct map's reach, `phys_to_virt` would name another window.)
        if pa < DIRECT_MAP_SIZE && paging::mapped_uncached(phys_to_virt(pa)) == Some(false) {
            aliased += 1;
            if first_alias == 0 {
                first_alias = pa | 1;
            }
        }
    };
    // SAFETY: as above (the kernel half changes only under the page-table lock).
    unsafe {
        paging::walk(paging::kernel_root(), slots(MMIO_BASE, MMIO_SIZE), |v| {
            if let Visit::Leaf { pa, .. } = v {
                write_back(pa);
            }
        })
    };
    device_pages.iter().for_each(|&pa| write_back(pa));
    let memory = mem::direct_memory();
    let (mut wrong_type, mut first_wrong) = (0u64, 0u64);
    // SAFETY: as above.
    unsafe {
        paging::walk(paging::kernel_root(), slots(DIRECT_MAP, DIRECT_MAP_SIZE), |v| {
            let Visit::Leaf { pa, size, uncached, .. } = v else { return };
            let end = pa + size;
            if uncached == memory.iter().any(|m| m.start < end && pa < m.end) {
                wrong_type += 1;
                if first_wrong == 0 {
                    first_wrong = pa | 1;
                }
            }
        })
    };
    if wrong_type > 0 {
        fail!(r, "{wrong_type} direct-map pages of the wrong memory type (first at {:#x})", first_wrong & !1);
    }
    if aliased > 0 {
        fail!(r, "{aliased} direct-map pages map device registers write-back (first at {:#x})", first_alias & !1);
    }
    Ok([r.violations, objects, frames_checked])
}
