//! The per-CPU schedulers.
//!
//! Each CPU owns a run queue (256 priorities, FIFO within each; `rl4_core::runqueue`), its
//! current thread, and an *inbox*: the only structure other CPUs touch. A thread made runnable
//! for CPU `c` (created, resumed, migrated, preempted elsewhere) is pushed into `c`'s inbox, and
//! `c` is sent a reschedule IPI only when that can change what it runs (it is idle, or the
//! thread outranks its current one). The owner drains its inbox into its run queue at every
//! scheduling decision. The running thread is not in the run queue.
//!
//! ## Locks, in the order they may be taken
//! 1. a thread's `sched` lock;
//! 2. a CPU's inbox lock (leaf).
//!
//! The run queue and `current` of a CPU are only ever touched by that CPU with interrupts off;
//! their locks are never contended and can take part in no cycle.
//!
//! ## A thread's scheduling state (`obj::Sched`)
//! `state` is one of Inactive, Runnable, Running, Suspended, Faulted, Dead; `on_cpu` says it is
//! some CPU's current thread and `queued` that it sits in an inbox or run queue. A thread is
//! queued at most once and is never queued while on a CPU: whoever sets `Runnable` enqueues it
//! only if `!on_cpu && !queued`, and a CPU that deschedules a thread still `Runnable` enqueues
//! it then. Threads popped in any other state, or meant for another CPU, are dropped or passed
//! on.
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use rl4_abi::ThreadState;
use rl4_arch::{cpu, entry, paging, percpu, println};
use rl4_core::pcid::{PcidAllocator, PcidCache};
use rl4_core::runqueue::RunQueue;
use rl4_smp::{MAX_CPUS, cpus, lapic};
use spin::{Mutex, Once};

use crate::obj::{Sched, Space, Thread};

/// Timer ticks a thread runs before others of its priority get a turn.
pub const TIME_SLICE_TICKS: u32 = 2;

/// A thread in a queue, compared by identity.
#[derive(Clone)]
pub struct TRef(pub Arc<Thread>);

impl PartialEq for TRef {
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.0, &o.0)
    }
}

/// What a CPU counts ([`count`], [`total`]).
#[derive(Clone, Copy)]
pub enum Count {
    /// IPC hand-overs that switched straight to the partner.
    IpcFast = 0,
    /// IPC hand-overs through a run queue or inbox.
    IpcSlow = 1,
    /// Wake-ups of a thread of another CPU.
    IpcCross = 2,
    /// Context switches.
    Switches = 3,
}

/// Aligned so that no two CPUs' schedulers share a cache line.
#[repr(align(128))]
pub struct CpuSched {
    /// Counters written only by this CPU (on a cache line no other CPU writes).
    counts: [AtomicU64; 4],
    rq: Mutex<RunQueue<TRef>>,
    pub(crate) current: Mutex<Option<Arc<Thread>>>,
    inbox: Mutex<Vec<TRef>>,
    /// Priority of the running thread, -1 when idle (read by other CPUs to decide on an IPI).
    current_prio: AtomicI32,
    idle: AtomicBool,
    slice: AtomicU32,
    /// The time slice ran out: rotate at the next decision.
    expired: AtomicBool,
    /// The PML4 this CPU's CR3 holds (the kernel's, or a user space kept loaded while idle).
    loaded_pml4: AtomicU64,
    pcids: Option<Mutex<PcidCache>>,
    /// TLB shootdown request: a PML4 address, bit 0 = the space is being destroyed.
    tlb_request: AtomicU64,
    tlb_done: AtomicU64,
    /// Waits with a deadline of threads of this CPU: (TSC deadline, thread).
    timeouts: Mutex<Vec<(u64, alloc::sync::Weak<Thread>)>>,
    /// Threads in the inbox (read without the lock by the idle poll).
    inbox_len: core::sync::atomic::AtomicUsize,
    /// BUSY, POLLING (idle and watching its inbox: needs no IPI) or HALTING.
    idle_state: core::sync::atomic::AtomicU8,
}

const BUSY: u8 = 0;
const POLLING: u8 = 1;
const HALTING: u8 = 2;

/// How long an idle CPU watches its inbox before it halts (TSC ticks; 0 = never).
static POLL_TICKS: AtomicU64 = AtomicU64::new(0);

/// Sets the idle poll time (`poll_us=` on the command line).
pub fn set_poll_us(us: u64) {
    POLL_TICKS.store(rl4_arch::time::us_to_ticks(us), Ordering::Relaxed);
}

static CPUS: [Once<&'static CpuSched>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];
static PCID_ON: AtomicBool = AtomicBool::new(false);
static PCIDS: Mutex<Option<PcidAllocator>> = Mutex::new(None);
static SHOOTDOWN: Mutex<()> = Mutex::new(());

fn get(i: usize) -> Option<&'static CpuSched> {
    CPUS.get(i)?.get().copied()
}

/// The calling CPU's scheduler.
pub(crate) fn this_cpu() -> &'static CpuSched {
    this()
}

/// Whether a thread of priority `prio` may take this CPU straight away: nothing waits in the
/// inbox and nothing of higher priority in the run queue (the fast path's guard; it does not
/// drain the inbox).
#[inline(always)]
pub(crate) fn nothing_more_urgent(cs: &CpuSched, prio: u8) -> bool {
    cs.inbox_len.load(Ordering::SeqCst) == 0 && cs.rq.lock().highest().is_none_or(|h| h <= prio)
}

fn this() -> &'static CpuSched {
    get(percpu::cpu_index() as usize).expect("scheduler initialised on this CPU")
}

fn me() -> u32 {
    percpu::cpu_index()
}

/// Sets up the calling CPU's scheduler. `pcid`: the CPU uses PCIDs.
pub fn init_cpu(pcid: bool) {
    if pcid {
        PCID_ON.store(true, Ordering::Relaxed);
        PCIDS.lock().get_or_insert_with(PcidAllocator::new);
    }
    let s = Box::leak(Box::new(CpuSched {
        counts: [const { AtomicU64::new(0) }; 4],
        rq: Mutex::new(RunQueue::new()),
        current: Mutex::new(None),
        inbox: Mutex::new(Vec::new()),
        current_prio: AtomicI32::new(-1),
        idle: AtomicBool::new(false),
        slice: AtomicU32::new(TIME_SLICE_TICKS),
        expired: AtomicBool::new(false),
        loaded_pml4: AtomicU64::new(paging::kernel_pml4()),
        pcids: pcid.then(|| Mutex::new(PcidCache::new())),
        tlb_request: AtomicU64::new(0),
        tlb_done: AtomicU64::new(0),
        timeouts: Mutex::new(Vec::new()),
        inbox_len: core::sync::atomic::AtomicUsize::new(0),
        idle_state: core::sync::atomic::AtomicU8::new(BUSY),
    }));
    CPUS[me() as usize].call_once(|| s);
}

/// Whether CPU `i` runs a scheduler (is online).
pub fn cpu_online(i: u64) -> bool {
    i < MAX_CPUS as u64 && get(i as usize).is_some()
}

pub fn online_count() -> u64 {
    (0..MAX_CPUS).filter(|&i| get(i).is_some()).count() as u64
}

/// Context switches on the calling CPU.
pub fn switches() -> u64 {
    this().counts[Count::Switches as usize].load(Ordering::Relaxed)
}

impl CpuSched {
    /// Adds one to this CPU's counter `c`; only this CPU may call it.
    #[inline(always)]
    pub(crate) fn bump(&self, c: Count) {
        self.counts[c as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Adds one to the calling CPU's counter `c`.
#[inline]
pub fn count(c: Count) {
    this().bump(c);
}

/// Counter `c` summed over every CPU.
pub fn total(c: Count) -> u64 {
    (0..MAX_CPUS).filter_map(get).map(|cs| cs.counts[c as usize].load(Ordering::Relaxed)).sum()
}

/// A PCID and generation for a new space (PCID 0 and generation 0 without PCIDs).
pub fn pcid_alloc() -> (u16, u64) {
    if !PCID_ON.load(Ordering::Relaxed) {
        return (0, 0);
    }
    let mut a = PCIDS.lock();
    let a = a.as_mut().expect("PCID allocator");
    a.alloc().unwrap_or_else(|| (0, a.generation()))
}

pub fn pcid_free(pcid: u16) {
    if pcid != 0 {
        if let Some(a) = PCIDS.lock().as_mut() {
            a.free(pcid)
        }
    }
}

/// The running thread of this CPU.
pub fn current() -> Option<Arc<Thread>> {
    this().current.lock().clone()
}

/// Makes `t` runnable on its CPU if it is Runnable and neither running nor queued. The caller
/// holds `t`'s lock (`s`).
pub fn enqueue_locked(t: &Arc<Thread>, s: &mut Sched) {
    if s.state != ThreadState::Runnable || s.on_cpu || s.queued {
        return;
    }
    s.queued = true;
    let Some(target) = get(s.cpu as usize) else { return };
    {
        let mut inbox = target.inbox.lock();
        inbox.push(TRef(t.clone()));
        target.inbox_len.store(inbox.len(), Ordering::SeqCst);
    }
    poke(s.cpu, s.prio);
}

/// Tells CPU `cpu` that a thread of priority `prio` waits in its inbox.
fn poke(cpu: u32, prio: u8) {
    if cpu == me() {
        return; // drained at this CPU's next decision, which ends every kernel entry
    }
    let Some(t) = get(cpu as usize) else { return };
    match t.idle_state.load(Ordering::SeqCst) {
        // Watching its inbox: it will see the thread without an interrupt.
        POLLING => {}
        HALTING => cpus::send_ipi(cpu as usize, lapic::VEC_RESCHED),
        _ => {
            if t.idle.load(Ordering::SeqCst) || prio as i32 > t.current_prio.load(Ordering::SeqCst) {
                cpus::send_ipi(cpu as usize, lapic::VEC_RESCHED);
            }
        }
    }
}

/// Asks CPU `cpu` to look at its current thread again (it was suspended, killed or moved).
pub fn kick(cpu: u32) {
    if cpu != me() {
        cpus::send_ipi(cpu as usize, lapic::VEC_RESCHED);
    }
}

fn drain_inbox(cs: &CpuSched) {
    if cs.inbox_len.load(Ordering::SeqCst) == 0 {
        return;
    }
    let mut inbox = cs.inbox.lock();
    if inbox.is_empty() {
        return;
    }
    let items = core::mem::take(&mut *inbox);
    cs.inbox_len.store(0, Ordering::SeqCst);
    drop(inbox);
    let mut rq = cs.rq.lock();
    for t in items {
        let p = t.0.sched.lock().prio;
        rq.push_back(p, t);
    }
}

/// Called by the timer interrupt on this CPU.
pub fn tick() {
    let cs = this();
    expire_timeouts(cs);
    if cs.current_prio.load(Ordering::Relaxed) >= 0 {
        let left = cs.slice.load(Ordering::Relaxed).saturating_sub(1);
        cs.slice.store(left, Ordering::Relaxed);
        if left == 0 {
            cs.expired.store(true, Ordering::Relaxed);
        }
    }
}

/// Ends every kernel entry from user mode: decides which thread runs next on this CPU and
/// points the return path at it. Returns when that thread is set up; never returns if the CPU
/// must idle.
pub fn decide() {
    let cs = this();
    drain_inbox(cs);
    let cur = cs.current.lock().take();
    if let Some(cur) = cur {
        let mut s = cur.sched.lock();
        if s.state == ThreadState::Runnable && s.on_cpu {
            // Woken (e.g. its reply arrived from another CPU) before it left this CPU.
            s.state = ThreadState::Running;
        }
        let waiting = cs.rq.lock().highest();
        let expired = cs.expired.load(Ordering::Relaxed);
        let keep = s.state == ThreadState::Running
            && s.cpu == me()
            && match waiting {
                None => true,
                Some(p) => p < s.prio || (p == s.prio && !expired),
            };
        if keep {
            if expired {
                cs.slice.store(TIME_SLICE_TICKS, Ordering::Relaxed);
                cs.expired.store(false, Ordering::Relaxed);
            }
            drop(s);
            *cs.current.lock() = Some(cur);
            return;
        }
        s.on_cpu = false;
        s.resume_iret = entry::current_resumes_with_iret();
        if s.state == ThreadState::Running {
            s.state = ThreadState::Runnable;
            if s.cpu == me() {
                s.queued = true;
                let mut rq = cs.rq.lock();
                // A thread that used its slice goes to the back; a preempted one keeps its turn.
                if expired { rq.push_back(s.prio, TRef(cur.clone())) } else { rq.push_front(s.prio, TRef(cur.clone())) }
            } else {
                enqueue_locked(&cur, &mut s);
            }
        }
    }
    if !pick(cs) {
        idle();
    }
}

/// Switches to the best runnable thread of this CPU's queue, if there is one.
fn pick(cs: &CpuSched) -> bool {
    loop {
        let next = cs.rq.lock().pop();
        let Some((_, TRef(t))) = next else { return false };
        let mut s = t.sched.lock();
        s.queued = false;
        if s.state != ThreadState::Runnable || s.on_cpu {
            continue;
        }
        if s.cpu != me() {
            enqueue_locked(&t, &mut s);
            continue;
        }
        s.state = ThreadState::Running;
        s.on_cpu = true;
        let (iret, prio) = (s.resume_iret, s.prio);
        drop(s);
        switch_to(cs, t, iret, prio, true);
        return true;
    }
}

fn switch_to(cs: &CpuSched, t: Arc<Thread>, iret: bool, prio: u8, new_slice: bool) {
    entry::set_current(&t.regs, iret);
    load_space(cs, &t.space);
    cs.current_prio.store(prio as i32, Ordering::SeqCst);
    if new_slice {
        cs.slice.store(TIME_SLICE_TICKS, Ordering::Relaxed);
        cs.expired.store(false, Ordering::Relaxed);
    }
    cs.bump(Count::Switches);
    *cs.current.lock() = Some(t);
}

#[inline(always)]
fn load_space(cs: &CpuSched, sp: &Space) {
    match &cs.pcids {
        None => {
            // Without PCIDs a CR3 write flushes the TLB (thousands of cycles under TCG): never
            // write it when it already holds the right space.
            if cs.loaded_pml4.load(Ordering::Relaxed) != sp.pml4 {
                paging::load_cr3(sp.pml4, 0, false);
                cs.loaded_pml4.store(sp.pml4, Ordering::Relaxed);
            }
        }
        Some(cache) => {
            let g = sp.generation.load(Ordering::Acquire);
            let flush = cache.lock().switch_needs_flush(sp.pcid, g);
            if flush || cs.loaded_pml4.load(Ordering::Relaxed) != sp.pml4 {
                paging::load_cr3(sp.pml4, sp.pcid, !flush);
                cs.loaded_pml4.store(sp.pml4, Ordering::Relaxed);
            }
        }
    }
}

/// The idle loop: run whatever arrives; else watch the inbox for `poll_us` (a thread made
/// runnable here from another CPU then needs no IPI), then halt until an interrupt. The last
/// user address space stays loaded (a CR3 write is the dearest step of a switch under TCG).
pub fn idle() -> ! {
    let cs = this();
    cs.current_prio.store(-1, Ordering::SeqCst);
    loop {
        cs.idle.store(true, Ordering::SeqCst);
        drain_inbox(cs);
        if pick(cs) {
            cs.idle.store(false, Ordering::SeqCst);
            entry::return_to_user();
        }
        service_tlb(cs);
        let poll = POLL_TICKS.load(Ordering::Relaxed);
        if poll > 0 {
            cs.idle_state.store(POLLING, Ordering::SeqCst);
            let end = cpu::rdtsc() + poll;
            while cs.inbox_len.load(Ordering::SeqCst) == 0 && cs.tlb_request.load(Ordering::Relaxed) == 0 && cpu::rdtsc() < end {
                cpu::relax();
            }
        }
        cs.idle_state.store(HALTING, Ordering::SeqCst);
        if cs.inbox_len.load(Ordering::SeqCst) == 0 {
            cpu::idle_wait();
        }
        cs.idle_state.store(BUSY, Ordering::SeqCst);
        cs.idle.store(false, Ordering::SeqCst);
        crate::run::idle_hook();
    }
}

/// Whether the running thread may hand the CPU straight to a thread of priority `prio`: nothing
/// more urgent waits here.
pub fn may_switch_to(prio: u8) -> bool {
    let cs = this();
    if cs.inbox_len.load(Ordering::SeqCst) != 0 {
        drain_inbox(cs);
    }
    cs.rq.lock().highest().is_none_or(|h| h <= prio)
}

/// The same-CPU fast path: the running thread has blocked (or was woken meanwhile) and `to`,
/// already marked Running on this CPU, takes over without passing through the run queue.
pub fn switch_direct(to: Arc<Thread>, prio: u8) {
    let cs = this();
    if let Some(cur) = cs.current.lock().take() {
        let mut s = cur.sched.lock();
        s.on_cpu = false;
        s.resume_iret = entry::current_resumes_with_iret();
        if matches!(s.state, ThreadState::Running | ThreadState::Runnable) {
            s.state = ThreadState::Runnable;
            if !s.queued {
                s.queued = true;
                cs.rq.lock().push_front(s.prio, TRef(cur.clone()));
            }
        }
    }
    // The woken thread runs on what is left of the slice: a pair that keeps handing the CPU
    // back and forth must not get a fresh slice at every message and starve its neighbours.
    switch_to(cs, to, false, prio, false);
}

/// The fast path's switch: the running thread has already been marked blocked and off the CPU
/// (under its own lock, by the caller, so nobody can have queued it) and taken out of the CPU's
/// current slot, and `to` is marked Running here. One lock of the slot does the hand-over.
#[inline(always)]
pub(crate) fn switch_direct_blocked(cs: &CpuSched, to: Arc<Thread>, prio: u8) {
    entry::set_current(&to.regs, false);
    load_space(cs, &to.space);
    cs.current_prio.store(prio as i32, Ordering::SeqCst);
    cs.bump(Count::Switches);
    *cs.current.lock() = Some(to);
}

/// Whether the running thread of this CPU is no longer `t` (a direct switch happened).
pub fn switched_directly(t: &Arc<Thread>) -> bool {
    this().current.lock().as_ref().is_some_and(|c| !Arc::ptr_eq(c, t))
}

/// Registers a wait deadline of the running thread `t` (on this CPU).
pub fn add_timeout(deadline: u64, t: &Arc<Thread>) {
    this().timeouts.lock().push((deadline, Arc::downgrade(t)));
}

fn expire_timeouts(cs: &CpuSched) {
    let now = cpu::rdtsc();
    let mut held = Vec::new();
    let due: Vec<_> = {
        let mut l = cs.timeouts.lock();
        if l.is_empty() {
            return;
        }
        let mut due = Vec::new();
        // Waits that ended before their deadline leave stale entries: drop those too, so the
        // list stays about as long as the live waits. (References taken to look are dropped
        // after the lock is released.)
        let prune = l.len() >= 64;
        l.retain(|(d, w)| {
            if w.strong_count() == 0 {
                return false;
            }
            if *d <= now {
                due.push(w.clone());
                return false;
            }
            if prune {
                match w.upgrade() {
                    Some(t) => {
                        let live = t.wait_deadline.load(Ordering::Relaxed) == *d;
                        held.push(t);
                        live
                    }
                    None => false,
                }
            } else {
                true
            }
        });
        due
    };
    drop(held);
    for w in due {
        if let Some(t) = w.upgrade() {
            crate::ipc::expire(&t, now);
        }
    }
}

/// Where a CPU's scheduler holds a thread (for the consistency check).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Held {
    Current,
    RunQueue,
    Inbox,
}

/// For the consistency check, with every other CPU stopped: calls `f` for each thread
/// reference a CPU's scheduler holds, `t` for each entry of its timeout list, and `bad` for each
/// structural fault (a lock held, a run queue whose bitmaps disagree with its queues, an inbox
/// whose published length is wrong).
pub(crate) fn visit_cpus(
    mut f: impl FnMut(usize, Held, &Arc<Thread>),
    mut t: impl FnMut(usize, u64, &alloc::sync::Weak<Thread>),
    mut bad: impl FnMut(usize, &'static str),
) {
    for i in 0..MAX_CPUS {
        let Some(cs) = get(i) else { continue };
        match cs.current.try_lock() {
            Some(c) => c.iter().for_each(|th| f(i, Held::Current, th)),
            None => bad(i, "its current-thread lock is held"),
        }
        match cs.rq.try_lock() {
            Some(rq) => {
                if !rq.is_consistent() {
                    bad(i, "its run queue's bitmaps disagree with its queues");
                }
                rq.iter().for_each(|(_, th)| f(i, Held::RunQueue, &th.0));
            }
            None => bad(i, "its run-queue lock is held"),
        }
        match cs.inbox.try_lock() {
            Some(inbox) => {
                if inbox.len() != cs.inbox_len.load(Ordering::SeqCst) {
                    bad(i, "its inbox length is out of date");
                }
                inbox.iter().for_each(|th| f(i, Held::Inbox, &th.0));
            }
            None => bad(i, "its inbox lock is held"),
        }
        match cs.timeouts.try_lock() {
            Some(l) => l.iter().for_each(|(d, w)| t(i, *d, w)),
            None => bad(i, "its timeout-list lock is held"),
        }
    }
}

/// Runs this CPU's pending TLB request (a CPU that spins with interrupts off must keep doing
/// this, or a shootdown waiting for it never ends).
pub(crate) fn service_tlb_here() {
    service_tlb(this());
}

/// Runs a TLB request addressed to this CPU, if any.
fn service_tlb(cs: &CpuSched) {
    let req = cs.tlb_request.swap(0, Ordering::AcqRel);
    if req == 0 {
        return;
    }
    let pml4 = req & !1;
    if cs.loaded_pml4.load(Ordering::Relaxed) == pml4 {
        if req & 1 != 0 {
            let k = paging::kernel_pml4();
            paging::load_cr3(k, 0, false);
            cs.loaded_pml4.store(k, Ordering::Relaxed);
        } else {
            paging::flush_tlb_all_user();
        }
    }
    cs.tlb_done.fetch_add(1, Ordering::AcqRel);
}

/// The TLB shootdown IPI.
pub fn tlb_interrupt() {
    service_tlb(this());
    cpus::eoi();
}

/// Makes every CPU drop the TLB entries of `pml4` (`destroy`: and stop using it as CR3), and
/// waits until they have.
fn shootdown(pml4: u64, destroy: bool) {
    let cs = this();
    let guard = loop {
        if let Some(g) = SHOOTDOWN.try_lock() {
            break g;
        }
        service_tlb(cs);
        cpu::relax();
    };
    let req = pml4 | destroy as u64;
    let mut waiting: Vec<(usize, u64)> = Vec::new();
    for i in 0..MAX_CPUS {
        let Some(c) = get(i) else { continue };
        if c.loaded_pml4.load(Ordering::Acquire) != pml4 {
            continue;
        }
        if i == me() as usize {
            c.tlb_request.store(req, Ordering::Release);
            service_tlb(c);
            continue;
        }
        let done = c.tlb_done.load(Ordering::Acquire);
        c.tlb_request.store(req, Ordering::Release);
        cpus::send_ipi(i, lapic::VEC_TLB);
        waiting.push((i, done));
    }
    for (i, done) in waiting {
        let c = get(i).expect("online");
        while c.tlb_done.load(Ordering::Acquire) == done {
            service_tlb(cs);
            cpu::relax();
        }
    }
    drop(guard);
}

/// After a mapping of `sp` was removed: no CPU may keep the old translation.
pub fn flush_space(sp: &Space) {
    if PCID_ON.load(Ordering::Relaxed) {
        let g = PCIDS.lock().as_mut().map_or(0, |a| a.generation());
        sp.generation.store(g, Ordering::Release);
    }
    shootdown(sp.pml4, false);
}

/// Before the page tables at `pml4` are freed: no CPU may still have them in CR3.
pub fn forget_space(pml4: u64) {
    shootdown(pml4, true);
}

/// Reports a fault of the running thread and stops it.
pub fn fault_current(vector: u64, error: u64) {
    let Some(t) = current() else { return };
    let r = t.regs.get();
    let name = rl4_arch::idt::exception_name(vector);
    if vector == 14 {
        println!(
            "thread {} (task {}) stopped: {name} at rip={:#x}, address {:#x}, error {:#x} ({}{}{})",
            t.id,
            t.task.id,
            r.rip,
            cpu::cr2(),
            error,
            if error & 1 != 0 { "protection" } else { "not mapped" },
            if error & 2 != 0 { ", write" } else { ", read" },
            if error & 16 != 0 { ", instruction fetch" } else { "" }
        );
    } else {
        println!("thread {} (task {}) stopped: {name} (vector {vector}) at rip={:#x}, error {error:#x}", t.id, t.task.id, r.rip);
    }
    {
        // A thread killed while it ran (its CPU not yet told) stays dead.
        let mut s = t.sched.lock();
        if s.state != ThreadState::Dead {
            s.state = ThreadState::Faulted;
        }
    }
    crate::ipc::thread_stopped(&t);
}

/// The running thread gives up the rest of its slice.
pub fn yield_current() {
    this().expired.store(true, Ordering::Relaxed);
}
