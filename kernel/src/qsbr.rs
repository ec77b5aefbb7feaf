//! Endpoints that left a capability slot, kept alive until every CPU has left the kernel once
//! (the grace period of `rl4_core::qsbr`, which explains the protocol).
//!
//! The IPC fast path reads an endpoint's address from its task's slot shadow without a lock
//! and without a reference (`fastpath.rs`); a removal from a slot (`CapDelete`, `CapRevoke`,
//! a task's end) puts a clone of the slot's reference here ([`defer`], called by the capability
//! table under its lock), so that the object outlives the slot's own reference, which the
//! remover drops after the lock. Each CPU keeps its own *limbo*: new entries wait in
//! `next`; at the CPU's next [`poll`] (the end of a kernel entry, with no lock held:
//! `reclaim::drain`) they become `waiting`, under a snapshot of the other CPUs' exit counters;
//! once every other CPU has returned to user mode or sits idle, they are dropped by the
//! owner's `poll`. A CPU that [`settle`]s (`MemoryInfo`, `KernelCheck`, the statistics) and
//! finds another limbo's grace period over marks its entries ready and asks the owner to drop
//! them (one reschedule interrupt per grace period), and waits for that: what an endpoint's
//! end sets off (its waiters woken, what their waits held let go of — a task's whole graph,
//! perhaps) runs on the CPU where its capability was deleted, never on a third party's that
//! only asked for its budget (before the twenty-third session the settling CPU dropped them
//! itself, for as long as that took with interrupts off: a review found it).
//! A CPU with a pending limbo does not halt in its idle loop (it polls instead, taking pending
//! interrupts through a window every round), so the memory never waits for an interrupt.
//!
//! Lock order: a limbo's lock is a leaf (level `RECLAIM`, taken under a capability table's
//! lock by `defer`); nothing is dropped under it.
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use rl4_core::paged::PagedVec;
use rl4_core::qsbr::Grace;
use rl4_smp::MAX_CPUS;

use crate::ipc::Endpoint;
use crate::lock::{Level, Mutex};

/// The lists are made of page-sized pieces (`PagedVec`): they hold every endpoint capability
/// removed on this CPU while a grace period is open, which a long system call on another CPU
/// keeps open, so they have no constant bound; growing one never needs more than one frame.
#[derive(Default)]
struct Lists {
    /// Deferred since the last snapshot.
    next: PagedVec<Arc<Endpoint>>,
    /// Deferred before `grace` was taken.
    waiting: PagedVec<Arc<Endpoint>>,
    grace: Option<Grace>,
}

struct Limbo {
    lists: Mutex<Lists, { Level::RECLAIM }>,
    /// Something waits here (read without the lock by `reclaim::drain` and the idle loop).
    pending: AtomicBool,
    /// Another CPU saw `waiting`'s grace period end: the owner drops them at its next
    /// [`advance`], and its idle poll stops for it ([`ready_here`]). Changed under the lists'
    /// lock, read without it by the idle poll.
    ready: AtomicBool,
}

static LIMBOS: [crossbeam_utils::CachePadded<Limbo>; MAX_CPUS] = [const {
    crossbeam_utils::CachePadded::new(Limbo {
        lists: Mutex::new(Lists { next: PagedVec::new(), waiting: PagedVec::new(), grace: None }),
        pending: AtomicBool::new(false),
        ready: AtomicBool::new(false),
    })
}; MAX_CPUS];

fn me() -> usize {
    rl4_arch::percpu::cpu_index() as usize % MAX_CPUS
}

fn exits(i: usize) -> u64 {
    rl4_smp::cpus::get(i).map_or(0, |c| c.header.exits())
}

/// Keeps `e` (the reference a slot held) until a grace period has passed. Called under the
/// capability table's lock; allocates (a capability deletion, never an IPC path).
pub fn defer(e: Arc<Endpoint>) {
    let l = &LIMBOS[me()];
    // Not fallible (docs/memory.md): a removal from a slot cannot be refused. Should not even
    // one frame be had, the endpoint is kept for ever rather than dropped before its grace
    // period (a reader could still be using it) or the kernel stopped.
    if let Err(e) = crate::mem::must_not_fail(|| l.lists.lock().next.try_push(e)) {
        keep_for_ever(e);
    }
    l.pending.store(true, Ordering::Relaxed);
    crate::reclaim::wake_drain();
}

#[cold]
fn keep_for_ever(e: Arc<Endpoint>) {
    rl4_arch::println!("qsbr: no memory for the endpoint limbo: an endpoint is kept for ever");
    core::mem::forget(e);
}

/// Whether this CPU's limbo holds anything.
#[inline(always)]
pub fn pending_here() -> bool {
    LIMBOS[me()].pending.load(Ordering::Relaxed)
}

/// Whether another CPU found this CPU's limbo's grace period over: its entries wait for this
/// CPU to drop them (the idle loop's poll stops for it, and its next `reclaim::drain` drops
/// them).
#[inline(always)]
pub fn ready_here() -> bool {
    LIMBOS[me()].ready.load(Ordering::Relaxed)
}

/// Advances limbo `owner`: drops what waited out its grace period, and starts one for what
/// came since (only the owner starts one: its own removals come before its snapshot, and only
/// the owner drops: another CPU that sees a grace period end marks its entries ready and asks
/// the owner to look). The caller holds no lock and nothing it read from a shadow. Returns
/// whether anything still waits.
fn advance(owner: usize, me: usize) -> bool {
    let l = &LIMBOS[owner];
    if !l.pending.load(Ordering::Relaxed) {
        return false;
    }
    let cpus = rl4_smp::cpus::count().min(MAX_CPUS);
    let mut freed = PagedVec::new();
    let mut freed_now = PagedVec::new();
    let mut ask = false;
    let mut lists = l.lists.lock();
    let over = lists.grace.as_ref().is_some_and(|g| g.over(me, exits, crate::sched::is_idle));
    if over {
        lists.grace = None;
    }
    if owner == me && (over || l.ready.load(Ordering::Relaxed)) {
        l.ready.store(false, Ordering::Relaxed);
        freed = core::mem::take(&mut lists.waiting);
    } else if over {
        ask = true;
        l.ready.store(true, Ordering::Relaxed);
    }
    if owner == me && lists.grace.is_none() && !lists.next.is_empty() {
        // This CPU deferred every entry of `next` earlier in program order than this
        // snapshot (which fences first).
        // Without memory for the snapshot, `next` waits for a later poll.
        if let Some(g) = Grace::try_start(me, 0..cpus, exits) {
            if g.over(me, exits, crate::sched::is_idle) {
                freed_now = core::mem::take(&mut lists.next);
            } else {
                lists.waiting = core::mem::take(&mut lists.next);
                lists.grace = Some(g);
            }
        }
    }
    let still = lists.grace.is_some() || l.ready.load(Ordering::Relaxed) || !lists.next.is_empty();
    l.pending.store(still, Ordering::Relaxed);
    drop(lists);
    // One endpoint at a time, answering other CPUs' TLB shoot-downs between them (no lock is
    // held): a task's end can fill a limbo with tens of thousands of endpoints, whose
    // destructors would otherwise keep them waiting for the whole batch (a review of the
    // thirty-eighth session; docs/security.md promises an answer between destroyed objects).
    for mut list in [freed, freed_now] {
        while let Some(e) = list.pop() {
            drop(e);
            crate::tlb::service_tlb_here();
        }
    }
    if ask {
        // The owner drops them at its next `reclaim::drain` (its drain flag stays set while its
        // limbo is pending), which a reschedule interrupt brings at once if it runs a thread
        // (a user interrupt ends in a decision, which drains); an idle owner's poll stops for
        // `ready` and its loop drains. An owner inside a long kernel entry (a revocation) drops
        // them when the entry ends: a settling CPU may give up before (its 200 µs).
        // One interrupt per grace period (only the `Some` → `None` change asks).
        crate::sched::kick(owner as u32);
    }
    still
}

/// Entries this CPU's limbo may gather before a deletion waits for them ([`throttle`]).
const THROTTLE_AT: usize = 512;

/// Called by `CapDelete` and `CapRevoke` before they remove anything, by a revocation between
/// its batches and by a task's teardown between its pieces (no lock held, nothing read from a
/// shadow): if this CPU's limbo already holds [`THROTTLE_AT`] endpoints waiting for a grace
/// period, waits for it first ([`settle`], at most 200 µs). A limbo entry is kernel heap no
/// budget pays for (the deleted capability's charge came back at its deletion), and another
/// CPU can hold a grace period open for as long as its longest kernel entry: a task copying and
/// deleting an endpoint capability in a loop meanwhile grew this CPU's limbo for free, by one
/// entry per deletion (review finding, eleventh session). Now, once it is long, each step (a
/// deletion, a batch of 32, a piece of 64) first waits, up to 200 µs per system call in all.
/// Returns whether it waited: a caller that repeats it (a revocation's batches, a teardown's
/// pieces) then waits no more, so that one system call waits 200 µs at most.
pub fn throttle() -> bool {
    let l = &LIMBOS[me()];
    let long = || l.pending.load(Ordering::Relaxed) && l.lists.lock().next.len() >= THROTTLE_AT;
    if long() {
        settle();
        return true;
    }
    false
}

/// Called with no lock held at the end of kernel entries (`reclaim::drain`) and by the idle
/// loop: advances this CPU's limbo.
pub fn poll() {
    let me = me();
    advance(me, me);
}

/// Waits (a bounded time) until every CPU's limbo is empty, so that what deleted endpoints
/// were charged is back: for `MemoryInfo`, the statistics and `KernelCheck`. This CPU counts a
/// quiescent point first (it holds nothing read from a shadow here), so a limbo waiting for it
/// can finish. Answers other CPUs' TLB requests while it waits. Gives up after 200 µs (a CPU
/// running user code without entering the kernel, or a vCPU its host does not run): the
/// entries stay for later, and a caller that wants the memory back asks again. Interrupts stay
/// off meanwhile; what it drops is this CPU's own limbo's (another's is dropped by its owner,
/// [`advance`]), so the wait adds 200 µs to this CPU's interrupt latency, plus the teardowns
/// of endpoints whose capabilities this CPU deleted.
pub fn settle() {
    let me = me();
    if !(0..rl4_smp::cpus::count().min(MAX_CPUS)).any(|i| LIMBOS[i].pending.load(Ordering::Relaxed)) {
        return;
    }
    rl4_arch::percpu::current().count_exit();
    let end = rl4_arch::cpu::rdtsc().saturating_add(rl4_arch::time::us_to_ticks(200));
    loop {
        let cpus = rl4_smp::cpus::count().min(MAX_CPUS);
        let mut left = false;
        for i in 0..cpus {
            left |= advance(i, me);
        }
        if !left || rl4_arch::cpu::rdtsc() >= end {
            return;
        }
        crate::tlb::service_tlb_here();
        rl4_arch::cpu::relax();
    }
}

/// Every endpoint reference held in a limbo (for the consistency check, every other CPU
/// stopped). Returns false if a limbo's lock was held (its references were not visited).
pub fn visit(mut f: impl FnMut(&Arc<Endpoint>)) -> bool {
    let mut all = true;
    for l in LIMBOS.iter() {
        match l.lists.peek() {
            Some(lists) => lists.next.iter().chain(lists.waiting.iter()).for_each(&mut f),
            None => all = false,
        }
    }
    all
}

/// Proof, for the lifetime of a borrow of it, that this CPU stays inside one kernel entry
/// (made by an IPC fast path once it holds the running thread's home lock, never kept across
/// a return to user mode or the idle loop): what it reads from a shadow lives at least that
/// long.
pub struct InEntry(core::marker::PhantomData<*const ()>);

impl InEntry {
    /// Made only by the IPC fast paths (`fastpath::entered`), which drop it before this CPU
    /// leaves the kernel (from inside the path, `fastpath::Message::end`, or after it returns),
    /// right after taking the running thread's home lock (`_barrier`, whose
    /// acquisition is a locked instruction: a full barrier on x86 — a property of the
    /// architecture, not of the language's memory model, in which an acquiring
    /// read-modify-write of another word orders no earlier store before a later load; the
    /// exit count's store is the entry assembly's, outside that model too).
    ///
    /// # Safety
    /// Between this CPU's last exit count (`sysret` leaves the count's store in the store
    /// buffer) and the token, a full barrier — `_barrier`'s acquisition, made in this kernel
    /// entry (without it a remover's snapshot may read the count from before that exit, and
    /// take the exit for the end of this entry: `rl4_core::qsbr`). While the token, or
    /// anything read through it, lives, this CPU must not pass a quiescent point: return to
    /// user mode, idle (`sched::decide` may), or run `settle` or `count_exit`
    /// (`reclaim::drain` may) — any of which may end the grace period that keeps what it read
    /// alive. Its borrow ties what [`endpoint`] returns to it, not to that rule.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    #[allow(unsafe_code)]
    pub(crate) unsafe fn new<T>(_barrier: &crate::lock::HomeMutexGuard<'_, T>) -> Self {
        InEntry(core::marker::PhantomData)
    }
}

/// `None`, out of the fast path's line.
#[cold]
#[inline(never)]
fn not_here<'k>() -> Option<(&'k Endpoint, u64)> {
    None
}

/// A thread's memory of the last endpoint slot its fast path read ([`endpoint`]): the slot, the
/// stamp of that read (`rl4_core::qsbr::Stamp`: the address of the slot's sequence word in its
/// task's shadow, and its value), and what the read found. Only the thread's own system calls
/// touch it, one at a time (plain loads and stores: a thread runs on one CPU at a time, and
/// its move to another CPU orders its calls). A server answering on one endpoint, or a client
/// calling one, reads its slot with one load of the sequence word instead of the whole read
/// (the twenty-eighth session: 24 instructions per call became 10).
pub struct SlotMemo {
    /// The slot (`u64::MAX`: none yet).
    slot: AtomicU64,
    seq_at: AtomicU64,
    seq: AtomicU64,
    obj: AtomicU64,
    rights: AtomicU64,
    badge: AtomicU64,
}

impl SlotMemo {
    /// No read yet: a stamp that never holds (`Stamp::never`), so that a call naming the slot
    /// `u64::MAX` reads (and is refused) rather than trusting the empty memory.
    pub fn new() -> Self {
        let (at, seq) = rl4_core::qsbr::Stamp::never().parts();
        SlotMemo {
            slot: AtomicU64::new(u64::MAX),
            seq_at: AtomicU64::new(at as u64),
            seq: AtomicU64::new(seq),
            obj: AtomicU64::new(0),
            rights: AtomicU64::new(0),
            badge: AtomicU64::new(0),
        }
    }
}

impl Default for SlotMemo {
    fn default() -> Self {
        Self::new()
    }
}

/// The endpoint in `slot` of `task`'s table if it holds one with the rights `RIGHTS` (a
/// `Rights` value, not empty), with its badge, read from the table's shadow without a lock or a
/// reference count; `None` if not (or if a writer was at work: the caller takes the general
/// path, which reports the error). `memo` is the calling thread's (`task` is its task): a slot
/// it read before and that no write changed since is not read again.
#[inline(always)]
#[allow(unsafe_code)]
pub fn endpoint<'k, const RIGHTS: u64>(_entry: &'k InEntry, task: &crate::obj::Task, memo: &SlotMemo, slot: u64) -> Option<(&'k Endpoint, u64)> {
    // Some rights must be asked for (the test below stands for the address's).
    const { assert!(RIGHTS != 0) };
    let r = Ordering::Relaxed;
    let seen = if memo.slot.load(r) == slot
        // SAFETY: `seq_at` and `seq` are the parts of `Stamp::never` (`new`) or of a stamp of
        // this slot's read in the shadow of `task`'s table (written below, by this thread's own
        // calls; `task` is the thread's task, which never changes). That shadow lives as long as `task` — a task's table
        // gets one once (`Task::shadow`, a `Once`, holds a reference) and gives it up only in
        // the task's destructor — and `task` outlives this call (the running thread holds it).
        && unsafe { rl4_core::qsbr::Stamp::from_parts(memo.seq_at.load(r) as usize, memo.seq.load(r)) }.still()
    {
        // Unchanged since that read (`Stamp`): what it found.
        rl4_core::qsbr::Seen { obj: memo.obj.load(r), rights: rl4_abi::Rights(memo.rights.load(r)), badge: memo.badge.load(r) }
    } else {
        let (seen, stamp) = task.shadow.get()?.shadow.read_stamped(slot)?;
        let (at, seq) = stamp.parts();
        memo.slot.store(slot, r);
        memo.seq_at.store(at as u64, r);
        memo.seq.store(seq, r);
        memo.obj.store(seen.obj, r);
        memo.rights.store(seen.rights.0, r);
        memo.badge.store(seen.badge, r);
        seen
    };
    // A branch to a cold exit. A slot without an address has no rights in its shadow
    // (`Shadow::write`), so the rights asked for (some) mean the address is there.
    if seen.rights.0 & RIGHTS != RIGHTS {
        return not_here();
    }
    // SAFETY: the address is non-zero (the slot has rights, see above); a non-zero address in
    // a shadow is `Arc::as_ptr` of an endpoint that the slot held when this consistent read was
    // made (`KObj::fast_address`: only endpoints have one), or when the read whose stamp still
    // holds was (`Stamp::still`: the slot has not changed since, so it holds it now). A clone
    // of the slot's reference is kept until a grace period has passed (`defer`), which does not end
    // before this CPU returns to user mode or idles (its exit counter moves, or its idle word
    // says so); `InEntry` outlives the borrow, and its maker (`InEntry::new`'s contract) lets
    // this CPU pass no such point while it lives. Two drops skip the grace period: a slot of a
    // table without a shadow, which no reader reads, and a table emptied whole with its task
    // (`Task::drop`) — a reader reads only the table of the task of the thread it runs, which
    // that thread's reference keeps alive while the reader uses the address; a fast path whose
    // thread was let go meanwhile (killed or suspended from another CPU, its capabilities
    // deleted: `fastpath::take_back`'s and `undo_server`'s refused ends) may let go of that
    // reference, and the task with it, while its token lives, and then uses the address no
    // more (each names the endpoint by its id from there).
    // (The compiler is told the address is not null, which it cannot see, so that the `Some`
    // of a reference costs no test of its own.)
    let ep = unsafe {
        core::hint::assert_unchecked(seen.obj != 0);
        &*(seen.obj as *const Endpoint)
    };
    Some((ep, seen.badge))
}
