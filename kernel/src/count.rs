//! Heap allocations and global-lock acquisitions, counted per CPU (feature `countglobal`).
//!
//! The cross-core IPC path should allocate nothing and take no lock that more than the two CPUs
//! involved may take. A kernel built with the `countglobal` feature shows whether it does: the
//! global allocator counts every allocation and free, and every *global* lock — one that every
//! CPU may take: the heap's, the frame allocator's, the object registries', the PCID
//! allocator's, the shoot-down lock, the measurement and consistency-check locks — counts its
//! acquisitions, per CPU and per lock. `Stat(HEAP_ALLOCS | HEAP_FREES | GLOBAL_LOCKS)` reads the
//! sums over all CPUs; while `Measure(COUNT_EVENTS, 1)` has armed it, each CPU also records its
//! first [`EVENTS`] counted events with the return addresses of their call chain, which
//! `Measure(COUNT_EVENTS, 0)` prints (`countglobal:` lines; `scripts/bench` symbolizes them).
//!
//! Without the feature every hook compiles to nothing, the counters take no space, and the
//! `Stat` and `Measure` selectors answer `InvalidArgument`.
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use crossbeam_utils::CachePadded;
use rl4_smp::MAX_CPUS;

/// Whether this kernel counts.
pub const BUILT: bool = cfg!(feature = "countglobal");

/// The global locks, by what they guard.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Global {
    Heap = 0,
    Frames = 1,
    Registry = 2,
    Pcids = 3,
    Shootdown = 4,
    Measure = 5,
    Check = 6,
}

pub const LOCKS: usize = 7;
const LOCK_NAMES: [&str; LOCKS] = ["heap", "frames", "registry", "pcids", "shootdown", "measure", "check"];

const CPUS: usize = if BUILT { MAX_CPUS } else { 0 };
/// Events recorded per CPU while armed, and return addresses per event.
pub const EVENTS: usize = if BUILT { 24 } else { 0 };
const FRAMES: usize = 10;

/// Event kinds (the first word of a record): lock `i` is `KIND_LOCK + i`.
const KIND_ALLOC: u64 = 1;
const KIND_FREE: u64 = 2;
const KIND_LOCK: u64 = 16;

struct PerCpu {
    allocs: AtomicU64,
    frees: AtomicU64,
    locks: [AtomicU64; LOCKS],
    /// The counts when the records were armed: allocs, frees, then each lock's.
    base: [AtomicU64; 2 + LOCKS],
    /// Events claimed (may exceed EVENTS: only the first EVENTS are kept).
    next: AtomicU64,
    /// [kind, size, FRAMES return addresses] per event.
    events: [[AtomicU64; 2 + FRAMES]; EVENTS],
}

static COUNTS: [CachePadded<PerCpu>; CPUS] = [const {
    CachePadded::new(PerCpu {
        allocs: AtomicU64::new(0),
        frees: AtomicU64::new(0),
        locks: [const { AtomicU64::new(0) }; LOCKS],
        base: [const { AtomicU64::new(0) }; 2 + LOCKS],
        next: AtomicU64::new(0),
        events: [const { [const { AtomicU64::new(0) }; 2 + FRAMES] }; EVENTS],
    })
}; CPUS];

static ARMED: AtomicBool = AtomicBool::new(false);

/// This CPU's counters; none while its per-CPU block is not installed yet (an AP allocates its
/// descriptor tables before it has one: `GS` is 0 then, and reading the CPU index would fault).
#[inline(always)]
fn mine() -> Option<&'static PerCpu> {
    if x86_64::registers::model_specific::GsBase::read().as_u64() == 0 {
        return None;
    }
    COUNTS.get(rl4_arch::percpu::cpu_index() as usize % MAX_CPUS.max(1)).map(|c| &**c)
}

/// Records an event of `kind` with the caller's call chain, if armed and there is room.
#[inline(never)]
fn record(c: &PerCpu, kind: u64, size: u64) {
    let i = c.next.fetch_add(1, Relaxed) as usize;
    let Some(e) = c.events.get(i) else { return };
    e[0].store(kind, Relaxed);
    e[1].store(size, Relaxed);
    rl4_arch::paging::backtrace(rl4_arch::cpu::frame_pointer(), FRAMES, |j, ret| e[2 + j].store(ret, Relaxed));
}

/// A heap allocation of `size` bytes.
#[inline(always)]
pub fn alloc(size: usize) {
    if BUILT && let Some(c) = mine() {
        c.allocs.fetch_add(1, Relaxed);
        if ARMED.load(Relaxed) {
            record(c, KIND_ALLOC, size as u64);
        }
    }
}

/// A heap free of `size` bytes.
#[inline(always)]
pub fn free(size: usize) {
    if BUILT && let Some(c) = mine() {
        c.frees.fetch_add(1, Relaxed);
        if ARMED.load(Relaxed) {
            record(c, KIND_FREE, size as u64);
        }
    }
}

/// An acquisition of global lock `g`.
#[inline(always)]
pub fn global_lock(g: Global) {
    if BUILT && let Some(c) = mine() {
        c.locks[g as usize].fetch_add(1, Relaxed);
        if ARMED.load(Relaxed) {
            record(c, KIND_LOCK + g as u64, 0);
        }
    }
}

fn sum(f: impl Fn(&PerCpu) -> u64) -> u64 {
    COUNTS.iter().map(|c| f(c)).sum()
}

/// Heap allocations so far, all CPUs.
pub fn allocs() -> u64 {
    sum(|c| c.allocs.load(Relaxed))
}

/// Heap frees so far, all CPUs.
pub fn frees() -> u64 {
    sum(|c| c.frees.load(Relaxed))
}

/// Global-lock acquisitions so far, all CPUs and locks.
pub fn global_locks() -> u64 {
    sum(|c| c.locks.iter().map(|l| l.load(Relaxed)).sum())
}

fn snapshot(c: &PerCpu) -> [u64; 2 + LOCKS] {
    let mut v = [0; 2 + LOCKS];
    v[0] = c.allocs.load(Relaxed);
    v[1] = c.frees.load(Relaxed);
    for (i, l) in c.locks.iter().enumerate() {
        v[2 + i] = l.load(Relaxed);
    }
    v
}

/// Arms the event records (clearing them), or disarms them and prints what they hold: per CPU
/// the counts since they were armed, by lock, then every recorded event with its return
/// addresses.
pub fn arm(on: bool) {
    if on {
        for c in COUNTS.iter() {
            for (b, v) in c.base.iter().zip(snapshot(c)) {
                b.store(v, Relaxed);
            }
            c.next.store(0, Relaxed);
            for e in c.events.iter() {
                for w in e.iter() {
                    w.store(0, Relaxed);
                }
            }
        }
        ARMED.store(true, Relaxed);
        return;
    }
    ARMED.store(false, Relaxed);
    for (cpu, c) in COUNTS.iter().enumerate() {
        let n = c.next.load(Relaxed);
        if n == 0 {
            continue;
        }
        rl4_arch::println!("countglobal: cpu {cpu}: {n} events while armed (the first {} follow)", n.min(EVENTS as u64));
        for (i, e) in c.events.iter().enumerate().take(n as usize) {
            let kind = e[0].load(Relaxed);
            let what = match kind {
                KIND_ALLOC => "alloc",
                KIND_FREE => "free",
                k if k >= KIND_LOCK && ((k - KIND_LOCK) as usize) < LOCKS => LOCK_NAMES[(k - KIND_LOCK) as usize],
                _ => "?",
            };
            let mut line = rl4_arch::console::lock(false);
            use core::fmt::Write;
            let _ = write!(line, "[cpu{}] countglobal: event cpu {cpu} #{i} {what} {}:", rl4_arch::percpu::cpu_index(), e[1].load(Relaxed));
            for w in &e[2..] {
                let a = w.load(Relaxed);
                if a != 0 {
                    let _ = write!(line, " {a:#x}");
                }
            }
            let _ = writeln!(line);
        }
    }
    for (cpu, c) in COUNTS.iter().enumerate() {
        let now = snapshot(c);
        let d: [u64; 2 + LOCKS] = core::array::from_fn(|i| now[i].wrapping_sub(c.base[i].load(Relaxed)));
        if d.iter().all(|&x| x == 0) {
            continue;
        }
        let mut line = rl4_arch::console::lock(false);
        use core::fmt::Write;
        let _ = write!(line, "[cpu{}] countglobal: while armed, cpu {cpu}: alloc {} free {}", rl4_arch::percpu::cpu_index(), d[0], d[1]);
        for (name, x) in LOCK_NAMES.iter().zip(&d[2..]) {
            let _ = write!(line, " {name} {x}");
        }
        let _ = writeln!(line);
    }
}

/// A `spin::Mutex` every CPU may take, counted as global lock `G`'s acquisitions.
pub struct GlobalSpin<T> {
    inner: spin::Mutex<T>,
    which: Global,
}

impl<T> GlobalSpin<T> {
    pub const fn new(which: Global, v: T) -> Self {
        GlobalSpin { inner: spin::Mutex::new(v), which }
    }

    #[inline(always)]
    pub fn lock(&self) -> spin::MutexGuard<'_, T> {
        global_lock(self.which);
        self.inner.lock()
    }

    #[inline(always)]
    pub fn try_lock(&self) -> Option<spin::MutexGuard<'_, T>> {
        let g = self.inner.try_lock()?;
        global_lock(self.which);
        Some(g)
    }
}
