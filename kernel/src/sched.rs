//! The per-CPU schedulers.
//!
//! Each CPU owns a run queue (256 priorities, FIFO within each, intrusive lists through the
//! threads' run links and a priority bitmap; `rl4_core::runqueue`), its current thread, and an
//! *inbox*: the only scheduling structure other CPUs touch. The run queue and the current slot
//! are CPU-private (`percpu::CpuCell`, `percpu::CpuOwned`): no lock, no locked instruction. A thread made
//! runnable for CPU `c` (woken, resumed, moved, preempted elsewhere) is pushed into `c`'s inbox,
//! and `c` is sent a reschedule IPI only when that can change what it runs (it is halted, or
//! the thread outranks its current one; a polling idle CPU needs none). The owner drains its
//! inbox into its run queue at every scheduling decision. The running thread is not in the run
//! queue.
//!
//! Where a thread is held is part of its `Life` (`Place`: off, current on a CPU, or queued on a
//! CPU, exactly once): a queue entry is pushed only when [`Life::enqueue`] says so and consumed
//! through [`Life::dequeue`], which also tells a stale or misdirected entry apart.
//!
//! Locks (`lock.rs`): a thread's lock (its home CPU's, shared by the threads of that home) may be held while pushing into an inbox (a lock-free
//! mailbox, `rl4_core::mailbox`); the run queue and the current slot take no lock (only their
//! CPU touches them, with interrupts off); the timeout list is a `CPU`-level lock.
//!
//! A switch takes the lock of the thread that leaves (`Life::leave_cpu`) and of the one that
//! comes (`Life::dequeue`; one hold of their home's lock in a short `Yield` between threads of
//! one home): both may be changed by other CPUs meanwhile (killed, suspended,
//! moved). A `Yield` with nothing else ready at its priority or above takes none
//! ([`yield_now`]).
use alloc::boxed::Box;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU32, AtomicU64, Ordering};
use rl4_arch::{cpu, entry, percpu};
use rl4_core::life::{Leave, Pick};
use rl4_core::mailbox::{Idle, Mailbox};
use rl4_core::runqueue::RunQueue;
use rl4_smp::{MAX_CPUS, cpus, lapic};
use spin::Once;

use crate::lock::{Level, Mutex};
use crate::obj::{Life, Thread};
use crate::tlb::{self, CpuTlb};

/// Timer ticks a thread runs before others of its priority get a turn.
pub const TIME_SLICE_TICKS: u32 = 2;

/// What a CPU counts ([`count`], [`total`]).
#[derive(Clone, Copy)]
pub enum Count {
    /// IPC hand-overs that switched straight to the partner, and the cross-CPU fast path's
    /// (into the partner's CPU's inbox; `IpcCross` counts them too).
    IpcFast = 0,
    /// The general path's IPC hand-overs through a run queue or inbox.
    IpcSlow = 1,
    /// Wake-ups of a thread of another CPU.
    IpcCross = 2,
    /// Context switches.
    Switches = 3,
    /// Switches to a thread that uses the FPU/SIMD registers and whose registers this CPU still
    /// held (nothing loaded; a thread that has not used them is not counted).
    FpuKept = 4,
    /// Deadline entries the timer took out or looked at in a prune (`timeout.rs`).
    DeadlinesVisited = 5,
    /// Threads whose run-queue entry this CPU looked at again because another CPU asked
    /// ([`request`]: a kill or a priority change while it was queued here).
    SweepVisited = 6,
    /// Steps queued sends took to find their place among an endpoint's senders (`ipc.rs`).
    SendqSteps = 7,
    /// Fault reports left out (`fault.rs`).
    ReportsLeftOut = 8,
    /// Walks over every task that ended a task's descendants (`syscall::kill_task`).
    TaskWalks = 9,
    /// The same-CPU fast path's direct switches: each is an `IpcFast` and a `Switches`, counted
    /// once here (one increment a system call rather than two) and read into both
    /// ([`CpuSched::count_of`]).
    DirectFast = 10,
}

/// How many [`Count`]s there are.
const COUNTS: usize = 11;

/// A [`CpuSched::flags`] bit: the time slice ran out (or the thread yielded): rotate at the next
/// decision.
const EXPIRED: u8 = 1;
/// A [`CpuSched::flags`] bit: this CPU's running thread was stopped, moved or re-prioritised by
/// this CPU itself (a local [`kick`]): decide before returning to it.
const KICKED: u8 = 2;

/// Sets bits of this CPU's `flags` (only this CPU writes them: no locked instruction).
#[inline(always)]
fn set_flag(cs: Here, f: u8) {
    cs.flags.store(cs.flags.load(Ordering::Relaxed) | f, Ordering::Relaxed);
}

/// Clears bits of this CPU's `flags`.
#[inline(always)]
fn clear_flag(cs: Here, f: u8) {
    cs.flags.store(cs.flags.load(Ordering::Relaxed) & !f, Ordering::Relaxed);
}

/// The running thread starts a new time slice.
#[inline(always)]
fn new_slice(cs: Here) {
    cs.slice.store(TIME_SLICE_TICKS, Ordering::Relaxed);
    clear_flag(cs, EXPIRED);
}

/// Aligned so that no two CPUs' schedulers share a cache line.
#[repr(align(128))]
pub struct CpuSched {
    /// Counters written only by this CPU (on a cache line no other CPU writes).
    counts: [AtomicU64; COUNTS],
    /// The last reply ticket this CPU handed out: the CPU index in the low 8 bits, a count
    /// above them (unique machine-wide for 2^56 tickets a CPU, centuries at any rate a CPU can
    /// make calls; before the thirty-fifth session the index was in the top bits and the count
    /// below them, and a CPU's 2^48th ticket was another CPU's first: a review found it).
    tickets: AtomicU64,
    /// The run queue: only this CPU touches it (no lock; other CPUs reach this CPU through its
    /// inbox, and a queued thread they killed or re-prioritised through [`request`]).
    rq: percpu::CpuCell<RunQueue<Thread>>,
    /// The highest priority in the run queue, -1 if empty: a copy kept by every change of the
    /// queue ([`with_rq`]; `Yield`'s rotation, which cannot change it, goes around it), so that
    /// the IPC paths' "nothing more urgent" guard and `Yield` read one word.
    rq_top: AtomicI32,
    /// The running thread: only this CPU touches it (no lock).
    current: percpu::CpuOwned<Option<Arc<Thread>>>,
    /// The inbox: threads pushed by any CPU, with the priority each was pushed at, and this
    /// CPU's idle state (busy, polling, halting), in one word on a cache line of its own
    /// (`rl4_core::mailbox`): a push is one compare-and-swap on the thread's link and one on
    /// this word, allocates nothing and takes no lock.
    mail: Mailbox<Thread>,
    /// Priority of the running thread, -1 when idle (read by other CPUs to decide on an IPI).
    current_prio: AtomicI32,
    slice: AtomicU32,
    /// [`EXPIRED`] and [`KICKED`], in one word so that the paths that return straight to the
    /// running thread test both at once; written only by this CPU (plain loads and stores).
    flags: AtomicU8,
    /// Threads queued here whose entry must be looked at again — killed, or their priority
    /// changed — named by the CPU that changed them ([`request`]), each at most once (their
    /// request link; the list holds a reference of each); taken by this CPU's next decision.
    requests: Mutex<rl4_core::wlist::WList<Thread, Req>, { Level::CPU }>,
    /// `requests` is not empty (set under its lock by the push that filled it, cleared by this
    /// CPU before it takes the list): a plain load at each decision when nothing was asked.
    requested: AtomicBool,
    /// A reschedule interrupt was sent for the requests now listed (set and cleared under the
    /// list's lock): the next urgent [`request`] sends none.
    request_kicked: AtomicBool,
    /// This CPU's tick count (plus one) when another CPU last asked it at once about a thread
    /// raised above its queue's top only ([`reprio_urgent`]): once per tick at most.
    top_asked: AtomicU64,
    /// The reply a thread of this CPU awaits from a server of another CPU, and the time such
    /// replies took, on average: the idle loop polls a few of those before it halts
    /// (`rl4_core::replypoll`).
    replies: rl4_core::replypoll::ReplyPoll,
    pub(crate) tlb: CpuTlb,
    /// Waits with a deadline of threads of this CPU (`timeout.rs`).
    pub(crate) timeouts: Mutex<crate::timeout::List, { Level::CPU }>,
}

/// How long an idle CPU watches its inbox before it halts (TSC ticks; 0 = never).
static POLL_TICKS: AtomicU64 = AtomicU64::new(0);

/// Sets the idle poll time (`poll_us=` on the command line).
pub fn set_poll_us(us: u64) {
    POLL_TICKS.store(rl4_arch::time::us_to_ticks(us), Ordering::Relaxed);
}

static CPUS: [Once<&'static CpuSched>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];

pub(crate) fn get(i: usize) -> Option<&'static CpuSched> {
    CPUS.get(i)?.get().copied()
}

/// The calling CPU's scheduler.
pub(crate) fn this_cpu() -> Here {
    this()
}

/// [`this_cpu`] without its check that the scheduler is set up (two instructions the IPC fast
/// path saves on every call).
///
/// # Safety
/// This CPU's scheduler must be set up (`init_cpu` ran): true of any CPU that runs a user
/// thread, so of every system call.
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) unsafe fn this_cpu_running() -> Here {
    let p = percpu::kernel_block() as *const CpuSched;
    debug_assert!(!p.is_null());
    // SAFETY: as in [`this`]; the caller vouches that the address was stored.
    Here(unsafe { &*p }, core::marker::PhantomData)
}

/// [`this_cpu`], or `None` before this CPU's scheduler is set up (`init_cpu`).
pub(crate) fn this_cpu_if_up() -> Option<Here> {
    (percpu::kernel_block() != 0).then(this)
}

/// Whether a thread of priority `prio` may take this CPU straight away: nothing waits in the
/// inbox and nothing of higher priority in the run queue (the fast path's guard; it does not
/// drain the inbox).
#[inline(always)]
pub(crate) fn nothing_more_urgent(cs: Here, prio: u8) -> bool {
    cs.mail.is_empty() && cs.rq_top.load(Ordering::Relaxed) <= prio as i32
}

/// After a cross-CPU fast path left this CPU without a current thread: whether the idle loop may
/// run next rather than a decision, which would do no more — nothing queued, nothing in the
/// inbox, no request listed. (With something queued, `decide`'s second round serves a request
/// that came after its serve — `top_fell` sets `KICKED` — before the thread it picked runs; the
/// idle loop's pick does not: a review of the thirty-first session found the cross-CPU path then
/// running a thread ahead of one a late request raised, until the next tick.)
#[inline(always)]
pub(crate) fn may_idle_now(cs: Here) -> bool {
    cs.rq_top.load(Ordering::Relaxed) < 0 && cs.mail.is_empty() && !cs.requested.load(Ordering::Relaxed)
}

/// Changes this CPU's run queue and keeps its top-priority copy up to date.
#[inline(always)]
fn with_rq<R>(cs: Here, f: impl FnOnce(&mut RunQueue<Thread>) -> R) -> R {
    cs.rq.with(|rq| {
        let r = f(rq);
        let top = rq.highest().map_or(-1, |p| p as i32);
        if cs.rq_top.load(Ordering::Relaxed) > top {
            top_fell(cs, top);
        } else {
            cs.rq_top.store(top, Ordering::Relaxed);
        }
        r
    })
}

/// This CPU's run-queue top falls to `top`. A request pending here names a thread whose entry
/// may sit below its priority, which the old top covered ([`reprio_urgent`] sent no interrupt
/// for it): this CPU then decides again before it returns to a thread, serving it (`KICKED`:
/// [`decide`]'s next round, or [`resched_pending`] on the way out of a system call; the idle
/// loop's hand-over of a delivered thread leaves it to the next decision). The store
/// and the load are sequentially consistent, as are the requester's (`requested`, then the
/// top): of the two, at least one sees the other's write.
#[inline(never)]
fn top_fell(cs: Here, top: i32) {
    cs.rq_top.store(top, Ordering::SeqCst);
    if cs.requested.load(Ordering::SeqCst) {
        set_flag(cs, KICKED);
    }
}

/// Queues `t` in this CPU's run queue at `prio` (the tail, or the head: `front`). A thread
/// already in a run queue is handed back by the queue (a kernel bug that `Life`'s places rule
/// out): said on the console, and the extra reference goes (`KernelCheck` reports the thread's
/// place as wrong).
#[inline(always)]
fn rq_push(rq: &mut RunQueue<Thread>, prio: u8, t: Arc<Thread>, front: bool) {
    let r = if front { rq.push_front(prio, t) } else { rq.push_back(prio, t) };
    if let Err(t) = r {
        queued_twice(t);
    }
}

/// A thread found in a run queue already. This may run inside a loan of this CPU's run queue;
/// the reference let go here is not the thread's last (the run queue that holds it keeps one,
/// which only that queue's CPU lets go of), so no destructor runs inside the loan (one that did
/// and reached this queue again would meet the loan check, a panic, not an alias).
#[cold]
fn queued_twice(t: Arc<Thread>) {
    rl4_arch::println!("sched: thread {} pushed into a second run queue (a kernel bug)", t.id);
    crate::reclaim::later_thread(t);
}

/// This CPU's scheduler, through the address `init_cpu` put in the per-CPU header (one `gs:`
/// load instead of an array look-up behind a `Once`).
#[inline(always)]
#[allow(unsafe_code)]
fn this() -> Here {
    let p = percpu::kernel_block() as *const CpuSched;
    assert!(!p.is_null(), "scheduler initialised on this CPU");
    // SAFETY: the only value ever stored at gs:48 is the address of this CPU's `CpuSched`,
    // leaked by `init_cpu` (it lives for the rest of the kernel's life and is never moved); the
    // CPU's header is its own, so the address is this CPU's scheduler.
    Here(unsafe { &*p }, core::marker::PhantomData)
}

/// The calling CPU's scheduler, as only that CPU can hold it: made only by [`this`] (from the
/// CPU's own `gs` block), and neither `Send` nor `Sync`, so it never reaches another CPU (the
/// kernel runs on one stack per CPU and never moves a kernel context between CPUs). What only
/// the owner may touch — the current slot — is reached through it without a run-time check of
/// the CPU (`CpuOwned::replace` checks; [`Here::replace_current`] does not need to). Any other
/// CPU's scheduler is a plain `&CpuSched` ([`get`]).
#[derive(Clone, Copy)]
pub(crate) struct Here(&'static CpuSched, core::marker::PhantomData<*const ()>);

impl core::ops::Deref for Here {
    type Target = CpuSched;
    #[inline(always)]
    fn deref(&self) -> &CpuSched {
        self.0
    }
}

#[allow(unsafe_code)]
impl CpuSched {
    /// This scheduler's current slot, from any CPU.
    ///
    /// # Safety
    /// As for `CpuOwned::peek`: the owning CPU is stopped outside any access to the slot (the
    /// consistency check's freeze) for as long as the reference lives.
    pub(crate) unsafe fn peek_current(&self) -> &Option<Arc<Thread>> {
        // SAFETY: the caller's.
        unsafe { self.current.peek() }
    }
}

#[allow(unsafe_code)]
impl Here {
    /// Puts `v` in this CPU's current slot and returns what was there.
    #[inline(always)]
    pub(crate) fn replace_current(self, v: Option<Arc<Thread>>) -> Option<Arc<Thread>> {
        // SAFETY: a `Here` is this CPU's scheduler (see the type), so this CPU owns the slot.
        unsafe { self.0.current.replace_owned(v) }
    }

    /// Fills this CPU's current slot, which the caller emptied ([`Here::take_current`]) and
    /// nothing has filled since, without reading it (a thread found there would be leaked,
    /// never dropped twice; a debug build checks).
    #[inline(always)]
    pub(crate) fn fill_current(self, v: Arc<Thread>) {
        debug_assert!(self.inspect_current(|c| c.is_none()));
        // SAFETY: as in `replace_current`.
        unsafe { self.0.current.put_owned(Some(v)) }
    }

    /// Takes the running thread out of this CPU's current slot.
    #[inline(always)]
    pub(crate) fn take_current(self) -> Option<Arc<Thread>> {
        self.replace_current(None)
    }

    /// `f` on this CPU's current slot (see `CpuOwned::inspect` for what `f` may do).
    #[inline(always)]
    pub(crate) fn inspect_current<R>(self, f: impl FnOnce(&Option<Arc<Thread>>) -> R) -> R {
        // SAFETY: as in `replace_current`.
        unsafe { self.0.current.inspect_owned(f) }
    }
}

fn me() -> u32 {
    percpu::cpu_index()
}

/// Bytes of kernel heap a CPU's scheduler takes, its table of PCID generations included (for
/// the boot's estimate of a CPU's memory).
pub const CPU_BYTES: usize = core::mem::size_of::<CpuSched>() + rl4_core::pcid::PcidCache::BYTES;

/// Schedulers made for CPUs that have not set theirs up yet ([`prepare_cpu`]).
static PREPARED: [core::sync::atomic::AtomicPtr<CpuSched>; MAX_CPUS] = [const { core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

/// Makes CPU `cpu`'s scheduler, before that CPU starts, so that its set-up ([`init_cpu`]) cannot
/// fail for memory: `Err` if the kernel heap has no room for it (the CPU is then not started;
/// before the twenty-fifth session a CPU made it itself and a heap short of memory stopped the
/// machine). `pcid`: with PCIDs (their table made here too), as the CPU will use them if its
/// own CPUID agrees ([`prepared_pcid`]).
pub fn prepare_cpu(cpu: u32, pcid: bool) -> Result<(), ()> {
    let tlb = CpuTlb::try_new(pcid).ok_or(())?;
    let s = Box::try_new(CpuSched {
        counts: [const { AtomicU64::new(0) }; COUNTS],
        tickets: AtomicU64::new(cpu as u64),
        rq: percpu::CpuCell::new(cpu, RunQueue::new(cpu)),
        rq_top: AtomicI32::new(-1),
        current: percpu::CpuOwned::new(cpu, None),
        mail: Mailbox::new(),
        current_prio: AtomicI32::new(-1),
        slice: AtomicU32::new(TIME_SLICE_TICKS),
        flags: AtomicU8::new(0),
        requests: Mutex::new(rl4_core::wlist::WList::new(cpu as usize + 1)),
        requested: AtomicBool::new(false),
        request_kicked: AtomicBool::new(false),
        top_asked: AtomicU64::new(0),
        replies: rl4_core::replypoll::ReplyPoll::new(),
        tlb,
        timeouts: Mutex::new(rl4_core::deadlines::Deadlines::new()),
    })
    .map_err(|_| ())?;
    let old = PREPARED[cpu as usize].swap(Box::into_raw(s), Ordering::AcqRel);
    assert!(old.is_null(), "scheduler of CPU {cpu} made twice");
    Ok(())
}

/// Gives back the scheduler [`prepare_cpu`] made for `cpu`, which will not start (at boot).
pub fn unprepare_cpu(cpu: u32) {
    let p = PREPARED[cpu as usize].swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !p.is_null() {
        // SAFETY: made by `Box::into_raw` in `prepare_cpu` and taken out of `PREPARED` just now.
        #[allow(unsafe_code)]
        let s = unsafe { Box::from_raw(p) };
        drop(s);
    }
}

/// Whether the scheduler [`prepare_cpu`] made for `cpu` has PCIDs: the CPU uses them only then
/// (and if its CPUID offers them).
pub fn prepared_pcid(cpu: u32) -> bool {
    let p = PREPARED[cpu as usize].load(Ordering::Acquire);
    // SAFETY: a non-null entry is a live box `prepare_cpu` made, which only `cpu` itself takes
    // (in `init_cpu`, after this look: the caller is `cpu`, before its set-up).
    #[allow(unsafe_code)]
    let with = !p.is_null() && unsafe { (*p).tlb.with_pcids() };
    with
}

/// Sets up the calling CPU's scheduler, made by [`prepare_cpu`]. `pcid`: the CPU uses PCIDs
/// (only if it was made with them: [`prepared_pcid`]).
pub fn init_cpu(pcid: bool) {
    let p = PREPARED[me() as usize].swap(core::ptr::null_mut(), Ordering::AcqRel);
    assert!(!p.is_null(), "scheduler of CPU {} made before it starts", me());
    // SAFETY: made by `Box::into_raw` in `prepare_cpu` and taken out of `PREPARED` just now.
    #[allow(unsafe_code)]
    let mut s = unsafe { Box::from_raw(p) };
    assert!(!pcid || s.tlb.with_pcids(), "a CPU uses PCIDs only if its scheduler was made with them");
    if !pcid {
        s.tlb.drop_pcids();
    }
    s.tlb.start();
    let s: &'static CpuSched = Box::leak(s);
    let kept = *CPUS[me() as usize].call_once(|| s);
    assert!(core::ptr::eq(kept, s), "scheduler of CPU {} set up twice", me());
    ONLINE.fetch_add(1, Ordering::Release);
    crate::timeline::init_cpu();
    // SAFETY: `s` is this CPU's scheduler (the one `CPUS` holds for it, checked above), leaked:
    // it lives at this address for the rest of the kernel's life.
    #[allow(unsafe_code)]
    unsafe {
        percpu::set_kernel_block(s as *const CpuSched as u64)
    };
}

/// Whether CPU `i` sits in its idle loop (polling or halted; a CPU with no scheduler yet runs
/// no threads either): it holds nothing it read without a lock (`qsbr.rs`). Its idle word
/// changes only by atomic read-modify-writes, so a CPU seen idle here reads, in its next kernel
/// entry, whatever was written before this look.
pub fn is_idle(i: usize) -> bool {
    get(i).is_none_or(|cs| cs.mail.state() != Idle::Busy)
}

/// Whether CPU `i` runs a scheduler (is online).
pub fn cpu_online(i: u64) -> bool {
    i < MAX_CPUS as u64 && get(i as usize).is_some()
}

/// CPUs whose scheduler is set up ([`init_cpu`], once per CPU): read per fault report and
/// `CpuInfo` without a look at every slot of `CPUS`.
static ONLINE: AtomicU64 = AtomicU64::new(0);

/// How many CPUs run a scheduler (are online).
pub fn online_count() -> u64 {
    ONLINE.load(Ordering::Acquire)
}

/// Context switches on the calling CPU.
pub fn switches() -> u64 {
    this().count_of(Count::Switches)
}

impl CpuSched {
    /// Adds one to this CPU's counter `c`; only this CPU may call it (a plain increment, no
    /// locked instruction: nobody else writes the counter).
    #[inline(always)]
    pub(crate) fn bump(&self, c: Count) {
        self.add_count(c, 1);
    }

    /// Counter `c` of this CPU (`IpcFast` and `Switches` with the `DirectFast` switches, which
    /// are both).
    fn count_of(&self, c: Count) -> u64 {
        let n = |c: Count| self.counts[c as usize].load(Ordering::Relaxed);
        match c {
            Count::IpcFast | Count::Switches => n(c) + n(Count::DirectFast),
            _ => n(c),
        }
    }

    /// Adds `k` to counter `c` of this CPU (only this CPU writes it: no locked instruction).
    #[inline(always)]
    pub(crate) fn add_count(&self, c: Count, k: u64) {
        let n = &self.counts[c as usize];
        n.store(n.load(Ordering::Relaxed) + k, Ordering::Relaxed);
    }

    /// A new reply ticket (only this CPU calls it).
    #[inline(always)]
    pub(crate) fn next_ticket(&self) -> u64 {
        let t = self.tickets.load(Ordering::Relaxed) + TICKET_STEP;
        self.tickets.store(t, Ordering::Relaxed);
        t
    }
}

impl CpuSched {
    /// Thread `who` of this CPU now waits for a reply from another CPU (the cross-CPU fast
    /// path): the idle loop polls a little longer for it (plain stores: only this CPU writes
    /// them).
    #[inline(always)]
    pub(crate) fn await_reply(&self, who: u64) {
        self.replies.awaiting(cpu::rdtsc(), who);
    }
}

/// How long the idle loop watches its inbox before it halts: `poll_us`, or, while a thread of
/// this CPU awaits a reply from another CPU, four of the recent replies' times (at most 20
/// times `poll_us`); `poll_us=0` never polls.
fn poll_ticks(cs: Here) -> u64 {
    cs.replies.window(POLL_TICKS.load(Ordering::Relaxed))
}

/// Thread `t` came out of this CPU's inbox (into the idle loop, or drained by a decision): if
/// it is the one whose reply was awaited, the reply's time goes into the mean.
#[inline(always)]
fn note_arrival(cs: Here, t: &Thread) {
    cs.replies.arrived(t.id, POLL_TICKS.load(Ordering::Relaxed), cpu::rdtsc);
}

/// The idle loop's hand-over: with nothing in the run queue and exactly one thread in the
/// inbox, that thread runs at once, without going through the run queue (a thread delivered
/// by another CPU's IPC, usually). With more, they all go into the run queue in order.
fn run_delivered(cs: Here) -> bool {
    // (Not while a request is pending: the idle loop's round serves it first; see there.)
    if cs.mail.is_empty() || cs.rq_top.load(Ordering::Relaxed) >= 0 || cs.requested.load(Ordering::Relaxed) {
        return false;
    }
    let Some(t) = delivered(cs, false) else { return false };
    run_entry(cs, t)
}

/// Drains the inbox (`busy`: and makes this CPU `Busy` in the same step): the one thread
/// that was there, or none if there were more (they all went into the run queue, in order).
#[inline(always)]
fn delivered(cs: Here, busy: bool) -> Option<Arc<Thread>> {
    let mut one: Option<(Arc<Thread>, u64)> = None;
    let mut spilled = false;
    let each = |t: Arc<Thread>, p: u64| {
        crate::timeline::event(crate::timeline::Kind::Drain, t.id, p);
        if one.is_none() && !spilled {
            one = Some((t, p));
            return;
        }
        spilled = true;
        spill(cs, one.take(), t, p);
    };
    if busy {
        cs.mail.drain_busy(each);
    } else {
        cs.mail.drain(each);
    }
    let (t, _) = one?;
    // Each thread that came out is noted (an awaited reply: `note_arrival`); the one that
    // runs at once after the drain.
    note_arrival(cs, &t);
    Some(t)
}

/// [`run_delivered`] found more than one thread in the inbox: `first` (the first one, the
/// first time) and `t` go into the run queue. Out of line: the usual drain of one thread
/// carries none of this code.
#[cold]
#[inline(never)]
fn spill(cs: Here, first: Option<(Arc<Thread>, u64)>, t: Arc<Thread>, p: u64) {
    with_rq(cs, |rq| {
        if let Some((t0, p0)) = first {
            note_arrival(cs, &t0);
            rq_push(rq, p0 as u8, t0, false);
        }
        note_arrival(cs, &t);
        rq_push(rq, p as u8, t, false);
    });
}

/// Consumes a queue entry of this CPU (`Life::dequeue`): switches to its thread if it may run
/// here (returns true), else forwards it to the CPU it belongs to now or lets it go.
#[inline(always)]
fn run_entry(cs: Here, t: Arc<Thread>) -> bool {
    run_entry_held(cs, t, None)
}

/// [`run_entry`], with a home lock this CPU may hold already (`held`, released before the
/// switch): a thread of that home is dequeued in the same hold.
#[inline(always)]
fn run_entry_held(cs: Here, t: Arc<Thread>, mut held: Option<crate::lock::HomeMutexHeld>) -> bool {
    let run = if let Some(mut l) = held.as_mut().and_then(|h| h.other(&t.life)) {
        dequeue_here(&t, &mut l)
    } else {
        drop(held.take());
        dequeue_here(&t, &mut t.life.lock())
    };
    drop(held);
    match run {
        Some(prio) => {
            switch_to(cs, t, prio, true);
            true
        }
        None => {
            crate::reclaim::later_thread(t);
            false
        }
    }
}

/// `Life::dequeue` of a queue entry of this CPU, under `t`'s lock: its priority if it runs
/// here; else it is forwarded to the CPU it belongs to now, or let go (`None`).
#[inline(always)]
fn dequeue_here(t: &Arc<Thread>, l: &mut Life) -> Option<u8> {
    match l.dequeue(me()) {
        Pick::Run => Some(l.prio),
        Pick::Forward(c) => {
            push(c, t, l.prio);
            None
        }
        Pick::Drop => None,
    }
}

/// A ticket's step: the CPU index below it.
const TICKET_STEP: u64 = 1 << 8;
const _: () = assert!(rl4_smp::MAX_CPUS as u64 <= TICKET_STEP);

/// A new reply ticket, unique machine-wide.
pub fn next_ticket() -> u64 {
    this().next_ticket()
}

/// Adds one to the calling CPU's counter `c`.
#[inline]
pub fn count(c: Count) {
    this().bump(c);
}

/// Counter `c` summed over every CPU.
pub fn total(c: Count) -> u64 {
    (0..MAX_CPUS).filter_map(get).map(|cs| cs.count_of(c)).sum()
}

/// The running thread of this CPU.
pub fn current() -> Option<Arc<Thread>> {
    this().inspect_current(Clone::clone)
}

/// Runs `f` on the running thread of this CPU without taking a reference (`None` if it runs
/// none). `f` must not change this CPU's current slot (no scheduling decision, no switch).
#[inline(always)]
pub fn with_current<R>(f: impl FnOnce(&Arc<Thread>) -> R) -> Option<R> {
    this().inspect_current(|c| c.as_ref().map(f))
}

/// Whether this CPU must make a scheduling decision before it returns to its running thread
/// although that thread's own call did not ask for one: a thread waits in its inbox (a wake-up
/// from this or another CPU), or the running thread's time slice ran out.
#[inline(always)]
pub fn resched_pending() -> bool {
    let cs = this();
    !cs.mail.is_empty() || cs.flags.load(Ordering::Relaxed) != 0
}

/// Pushes `t`, just queued for CPU `cpu` by [`Life::enqueue`] (or `dequeue`/`leave_cpu`), into
/// that CPU's inbox and tells it if that can change what it runs. The caller holds `t`'s lock.
pub fn push(cpu: u32, t: &Arc<Thread>, prio: u8) {
    push_owned(cpu, t.clone(), prio);
}

/// [`push`] with a reference of the caller's own, which goes into the inbox (no reference
/// count changes: the cross-CPU fast path hands over the one it holds).
pub fn push_owned(cpu: u32, t: Arc<Thread>, prio: u8) {
    let Some(target) = get(cpu as usize) else {
        crate::reclaim::later_thread(t);
        return;
    };
    let id = t.id;
    let pushed = match target.mail.push(t, prio as u64) {
        Ok(p) => p,
        Err(t) => return pushed_twice(t),
    };
    crate::timeline::event(crate::timeline::Kind::Push, id, cpu as u64 | (pushed.found as u64) << 8);
    if cpu == me() {
        return; // drained at this CPU's next decision (`resched_pending` sees it first)
    }
    match pushed.found {
        // Halted (or about to): the one IPI that wakes it (a later push finds it waking).
        Idle::Halting => send_resched(cpu),
        // Watching its inbox, or already being woken: it will see the thread.
        Idle::Polling | Idle::Waking => {}
        // Running something: interrupt it only if the thread outranks it (-1 while idle).
        Idle::Busy => {
            if prio as i32 > target.current_prio.load(Ordering::SeqCst) {
                send_resched(cpu);
            }
        }
    }
}

/// `Place::Queued` names one CPU at a time: a thread already in a mailbox is a kernel bug,
/// refused by the mailbox (no list is damaged); the extra reference `t` goes. Said on the
/// console, and `KernelCheck` reports the thread's place as wrong. (Out of line: inside
/// [`push_owned`], its formatting took a frame of 2 KiB on every push.)
#[cold]
#[inline(never)]
fn pushed_twice(t: Arc<Thread>) {
    rl4_arch::println!("sched: thread {} pushed into a second inbox (a kernel bug)", t.id);
    crate::reclaim::later_thread(t);
}

/// The tag of a thread's request link ([`request`]).
pub enum Req {}

/// Takes `t`, queued for CPU `cpu`, out of that CPU's run queue if that is this CPU and it is
/// there (a killed thread, `thread::kill`), returning the queue's reference (O(1): the queue is
/// intrusive, and the entry's link names its priority's list). The caller holds `t`'s lock.
/// Another CPU's run queue is that CPU's alone, and a thread still in the inbox stays there:
/// `None`, and the caller asks that CPU to look at it ([`request`]).
pub(crate) fn unqueue(cpu: u32, t: &Arc<Thread>) -> Option<Arc<Thread>> {
    if cpu != me() {
        return None;
    }
    // (A top that falls with it sends this CPU to decide again if a request is pending:
    // `with_rq`.)
    with_rq(this(), |rq| rq.remove_queued(t).map(|(_, r)| r))
}

/// A thread queued for CPU `cpu` was killed, or its priority changed, and its entry is not
/// where it should be (in `cpu`'s run queue at its old priority, or still in the inbox): `cpu`
/// looks at that one entry at its next decision — O(1) for both CPUs. The caller holds `t`'s
/// lock: every push onto a request list is made under it, so two CPUs never claim one thread's
/// request link at once (its owner may meanwhile let go of it without that lock: `WList`'s
/// claim sees the link free only after the release that ends its last use).
///
/// An `urgent` request asks for that decision now (a reschedule interrupt, or `KICKED` here),
/// once per list taken: while one such interrupt is pending, the decision it brings serves
/// every request made meanwhile (a task changing a queued thread's priority in a loop made one
/// interrupt per call once). Any other request waits for the CPU's next decision (its next
/// tick at the latest; `yield_now` and `decide` serve pending requests first): the caller says
/// a request is not urgent when its thread's new place cannot change what that CPU runs next
/// nor what its fast paths decide, and when it passes only that CPU's queue top and such a
/// request was urgent already since that CPU's last tick ([`reprio_urgent`]: a one-tick
/// inversion there at most, rather than one interrupt per change). A thread already on a request
/// list (this or another CPU's: it moved meanwhile) is not pushed again: whoever holds it
/// looks at it and hands it on ([`serve_requests`]).
pub(crate) fn request(cpu: u32, t: &Arc<Thread>, urgent: impl FnOnce() -> bool) {
    let Some(cs) = get(cpu as usize) else { return };
    let (kick_now, spare) = {
        let mut l = cs.requests.lock();
        let spare = match l.push_back(t.clone()) {
            Ok(()) => {
                // Sequentially consistent, and before `urgent` reads that CPU's words: see
                // [`top_fell`].
                cs.requested.store(true, Ordering::SeqCst);
                None
            }
            Err(t) => Some(t),
        };
        // A thread that was on another CPU's request list (it moved) is handed on by that CPU
        // (urgently): nothing is listed here for an interrupt to serve, and a flag set for
        // nothing would keep the next urgent request here from sending one.
        let k = !l.is_empty() && !cs.request_kicked.load(Ordering::Relaxed) && urgent();
        if k {
            cs.request_kicked.store(true, Ordering::Relaxed);
        }
        (k, spare)
    };
    if let Some(t) = spare {
        crate::reclaim::later_thread(t);
    }
    if kick_now {
        kick(cpu);
    }
}

/// Whether a queued thread of CPU `cpu` whose priority went from `old` to `new` must be looked
/// at by that CPU now ([`request`]): when it now outranks the thread running there, or rises
/// above every priority queued there (it would run next; the same-CPU fast paths compare with
/// that top) — the latter once per tick there at most. A thread lowered, or raised but still
/// below the queue's top and the running thread, changes neither what runs next nor a fast
/// path's guard (the top it reads is at least the truth), and waits for that CPU's next
/// decision: a task changing a queued thread's priority in a loop cannot interrupt another CPU
/// more than once per decision there (a review of the twelfth session's code found one
/// interrupt per call, taking most of a CPU away from a thread of higher priority). Nor once
/// per decision its own interrupt causes: a raise above the top and a lower straight after
/// asked again after every decision there, which put the thread back at the lowered
/// priority (a review of the twenty-first session's code: one interrupt per pair of calls); a
/// raise that only passes the top now waits for the next tick there if one such was asked
/// since the last (a fast path there may meanwhile switch to a thread below it: an inversion
/// of one tick at most, as a push that finds a stale priority there). Read after the request
/// is listed (and `requested` set, sequentially consistent): should that CPU's top fall
/// meanwhile below the raised priority, either this reads the fallen top, or that CPU sees the
/// request pending when its top falls and decides again ([`top_fell`]).
pub(crate) fn reprio_urgent(cpu: u32, old: u8, new: u8) -> bool {
    let Some(cs) = get(cpu as usize) else { return true };
    if new <= old {
        return false;
    }
    if new as i32 > cs.current_prio.load(Ordering::SeqCst) {
        return true;
    }
    // A raise on this CPU costs no interrupt (`ThreadSetPriority` decides on its way out) and
    // spends nothing of the tick's one.
    new as i32 > cs.rq_top.load(Ordering::SeqCst)
        && (cpu == me() || {
            let tick = cpus::get(cpu as usize).map_or(0, |c| c.ticks.load(Ordering::Relaxed)) + 1;
            cs.top_asked.swap(tick, Ordering::Relaxed) != tick
        })
}

/// Looks at every thread another CPU (or this one) asked about ([`request`]), one entry each:
/// a killed thread's entry leaves the run queue (`Life::dequeue`, which lets it go), and a
/// re-prioritised one's moves to the end of its priority's list now (`Thread::reprio`), and a
/// moved one (`ThreadSetAffinity`) goes to its new CPU's inbox (`Life::dequeue`'s forward). A
/// thread that is not in this run queue is in the inbox still (looked at again at the next
/// decision, after the inbox is drained), runs or waits (nothing to do), or was moved to
/// another CPU's queue meanwhile (that CPU is asked). Runs with interrupts off and no lock
/// held, after the inbox is drained.
///
/// Before the eleventh session a request set a flag and this CPU swept its whole run queue
/// for flagged entries (at most once a tick): a task that kept N threads queued here and asked
/// once a tick cost this CPU N entries a tick with interrupts off.
#[cold]
fn serve_requests(cs: Here) {
    let mut taken = {
        let mut l = cs.requests.lock();
        cs.request_kicked.store(false, Ordering::Relaxed);
        l.take()
    };
    cs.add_count(Count::SweepVisited, taken.len() as u64);
    let me = me();
    while let Some(t) = taken.pop_front() {
        // Between entries (no lock held) this CPU answers TLB shoot-downs, as a kill and the
        // destruction loop do: a task decides how many of its threads are listed here, and
        // each may be destroyed here (a review of the thirty-seventh session). Port-close
        // questions too.
        crate::tlb::serve_others(cs);
        let mut l = t.life.lock();
        let (killed, reprio) = (t.killed.load(Ordering::Relaxed), t.reprio.load(Ordering::Relaxed));
        // Moved to another CPU (`ThreadSetAffinity`) while queued here: passed on now, not when
        // this CPU, maybe held by a thread of higher priority, gets round to popping it.
        let moved = l.cpu != me;
        if !(killed || reprio || moved) {
            // Dealt with already (it ran, or a request before this one moved it) — unless it is
            // queued on a CPU not its own: moved there and back while listed here (an idle
            // hand-over, or a decision's pop right after its serve, forwarded it; the move back
            // could not list it on that CPU, being on this list), that CPU hands it on. Before
            // the thirty-first session it was dropped here, and stayed behind whatever that CPU
            // ran (a review found it).
            if let rl4_core::life::Place::Queued(c) = l.place()
                && c != l.cpu
            {
                request(c, &t, || true);
            }
            drop(l);
            crate::reclaim::later_thread(t);
            continue;
        }
        match with_rq(cs, |rq| rq.remove_queued(&t)) {
            Some((_, entry)) if !killed && !moved => {
                // Its priority changed: back at the end of its priority's list (the flag cleared
                // first; one set meanwhile comes with a request of its own).
                t.reprio.store(false, Ordering::Relaxed);
                let p = l.prio;
                with_rq(cs, |rq| rq_push(rq, p, entry, false));
            }
            Some((_, entry)) => {
                match l.dequeue(me) {
                    Pick::Drop => {}
                    // A hint that lied (never, once `Dead`): it goes back to wait for its turn,
                    // queued again as a yield leaves it (`dequeue` made it current here; a
                    // thread current and queued at once is what the run queue must never hold).
                    Pick::Run => {
                        if l.yield_cpu(me) {
                            let p = l.prio;
                            with_rq(cs, |rq| rq_push(rq, p, entry.clone(), false));
                        }
                    }
                    // Its new CPU's queue takes its new priority too.
                    Pick::Forward(c) => {
                        t.reprio.store(false, Ordering::Relaxed);
                        push(c, &t, l.prio)
                    }
                }
                drop(l);
                crate::reclaim::later_thread(entry);
                crate::reclaim::later_thread(t);
                continue;
            }
            None => {
                // (A moved thread already queued on its new CPU needs nothing more.)
                if let rl4_core::life::Place::Queued(c) = l.place()
                    && (killed || reprio || c != l.cpu)
                {
                    // In this CPU's inbox still (pushed after the drain), or queued on another
                    // CPU now: looked at there, after its drain.
                    request(c, &t, || true);
                }
            }
        }
        drop(l);
        crate::reclaim::later_thread(t);
    }
}

/// Asks CPU `cpu` to look at its current thread again (it was suspended, killed or moved).
pub fn kick(cpu: u32) {
    if cpu != me() {
        send_resched(cpu);
    } else {
        // Seen by `resched_pending` before this CPU returns to its thread.
        set_flag(this(), KICKED);
    }
}

/// Sends CPU `cpu` the reschedule IPI.
#[inline(always)]
fn send_resched(cpu: u32) {
    crate::timeline::event(crate::timeline::Kind::IpiSend, cpu as u64, lapic::VEC_RESCHED as u64);
    cpus::send_ipi(cpu as usize, lapic::VEC_RESCHED)
}

#[inline(always)]
fn drain_inbox(cs: Here) {
    if !cs.mail.is_empty() {
        drain_inbox_now(cs);
    }
}

fn drain_inbox_now(cs: Here) {
    with_rq(cs, |rq| {
        cs.mail.drain(|t, p| {
            crate::timeline::event(crate::timeline::Kind::Drain, t.id, p);
            // An awaited reply drained while busy ends the wait too (no stale wait left to
            // take the time since that call as a sample later: `rl4_core::replypoll`).
            note_arrival(cs, &t);
            rq_push(rq, p as u8, t, false)
        });
    });
}

/// Called by the timer interrupt on this CPU.
pub fn tick() {
    let cs = this();
    crate::timeout::expire_due(cs);
    if cs.current_prio.load(Ordering::Relaxed) >= 0 {
        let left = cs.slice.load(Ordering::Relaxed).saturating_sub(1);
        cs.slice.store(left, Ordering::Relaxed);
        if left == 0 {
            set_flag(cs, EXPIRED);
        }
    }
}

/// The running thread `cur` (locked in `l`) leaves this CPU: it is queued again if it may still
/// run, else held by nobody. `front`: it keeps its turn at its priority (preempted).
fn leave(cs: Here, cur: &Arc<Thread>, l: &mut Life, front: bool) {
    crate::thread::fpu_leave(cur);
    let left = l.leave_cpu(me());
    keep_slice(cs, cur, &left, front);
    requeue(cs, cur, l, left, front);
}

/// The running thread `cur` left this CPU as `left` says (its lock held): one preempted and still
/// runnable (`front`, queued again) keeps what is left of its slice for its next run
/// (`Thread::slice_left`, which [`switch_to`] takes); one that blocked, stopped or used up its
/// slice keeps nothing.
#[inline(always)]
fn keep_slice(cs: Here, cur: &Thread, left: &Leave, front: bool) {
    let runnable = matches!(left, Leave::Requeue(_) | Leave::Forward(_));
    let rest = if front && runnable { cs.slice.load(Ordering::Relaxed) } else { 0 };
    cur.slice_left.store(rest, Ordering::Relaxed);
}

/// Queues a thread that left this CPU still runnable, as `leave_cpu` said.
fn requeue(cs: Here, cur: &Arc<Thread>, l: &Life, left: Leave, front: bool) {
    match left {
        Leave::Requeue(_) => with_rq(cs, |rq| rq_push(rq, l.prio, cur.clone(), front)),
        Leave::Forward(c) => push(c, cur, l.prio),
        Leave::Gone => {}
    }
}

/// Drains the inbox into the run queue and then, if another CPU asked, looks at the entries it
/// named ([`request`]). A plain load when nothing was asked (no locked instruction on this
/// path); else an exchange clears the flag before the list is taken (under its lock): a
/// request that lands after the exchange either is in the list taken, or finds it empty and
/// sets the flag again (with an interrupt) for the next decision.
#[inline(always)]
fn drain_and_serve(cs: Here) {
    let serve = cs.requested.load(Ordering::Relaxed) && cs.requested.swap(false, Ordering::AcqRel);
    drain_inbox(cs);
    if serve {
        serve_requests(cs);
    }
}

/// Ends every interrupt and exception from user mode and every system call that needs it
/// (`syscall::Next::Decide`): decides which thread runs next on this CPU and points the return
/// path at it. Returns when that thread is set up; never returns if the CPU must idle.
///
/// A decision that left `KICKED` set (the run queue's top fell while a request was pending:
/// [`top_fell`]; or a local [`kick`] meanwhile) decides again before it returns, serving
/// those requests: else the thread it chose ran, and could hand the CPU on by the fast path
/// (whose guard reads the queue's top), ahead of a thread a pending request raised, until the
/// next tick (a review of the seventeenth session found the comment promising this unkept).
///
/// At most four rounds: requests that other CPUs keep adding are served at the next decision
/// or tick, as before (no unbounded loop with interrupts off).
pub fn decide() {
    for _ in 0..4 {
        decide_once();
        // Also again for a thread pushed into this CPU's own inbox after the round drained it
        // (a destruction inline — a thread whose last reference was its queue entry, failing
        // the caller it held the reply right of — pushes the caller here and sets no flag).
        let cs = this();
        if cs.flags.load(Ordering::Relaxed) & KICKED == 0 && cs.mail.is_empty() {
            return;
        }
    }
}

/// [`decide`], then what it put aside under its locks is let go ([`crate::reclaim::drain`]);
/// a destruction there that woke a thread of this CPU (into its own inbox, which sets no flag)
/// is looked at by one more decision rather than left for the next tick.
pub fn decide_and_drain() {
    decide();
    crate::reclaim::drain();
    if resched_pending() {
        decide();
        crate::reclaim::drain();
    }
}

fn decide_once() {
    crate::reclaim::drain();
    let cs = this();
    clear_flag(cs, KICKED);
    drain_and_serve(cs);
    let mut carry = None;
    if let Some(cur) = cs.take_current() {
        let mut l = cur.life.lock();
        let top = cs.rq_top.load(Ordering::Relaxed);
        let expired = cs.flags.load(Ordering::Relaxed) & EXPIRED != 0;
        let ahead = top > l.prio as i32 || (top == l.prio as i32 && expired);
        if !ahead && l.keep(me()) {
            // Its own `ThreadSetPriority` comes here: other CPUs read the priority for IPIs.
            set_current_prio(cs, l.prio as i32);
            if expired {
                new_slice(cs);
            }
            drop(l);
            cs.replace_current(Some(cur));
            return;
        }
        // A thread that used its slice goes to the back; a preempted one keeps its turn, and the
        // rest of its slice (`keep_slice`).
        let front = !expired;
        crate::timeline::event(crate::timeline::Kind::Leave, cur.id, ahead as u64 | (expired as u64) << 1);
        crate::thread::fpu_leave(&cur);
        let left = l.leave_cpu(me());
        keep_slice(cs, &cur, &left, front);
        match left {
            // Back into this CPU's queue, in the same loan of the queue that picks the next
            // thread, after the thread's lock (it is queued here already as far as its `Life`
            // says; nothing looks for it in the queue before this CPU's next decision, and
            // interrupts are off).
            Leave::Requeue(_) => {
                let prio = l.prio;
                drop(l);
                carry = Some((prio, cur, front));
            }
            left => {
                requeue(cs, &cur, &l, left, front);
                drop(l);
                crate::reclaim::later_thread(cur);
            }
        }
    }
    if !pick(cs, carry) {
        idle();
    }
}

/// Switches to the best runnable thread of this CPU's queue, if there is one. `carry`: a thread
/// that just left this CPU (priority, reference, keeps its turn) goes into the queue first, in
/// the same loan of the queue.
#[inline(always)]
fn pick(cs: Here, carry: Option<(u8, Arc<Thread>, bool)>) -> bool {
    // An empty queue (its top-priority copy is exact after every change, all on this CPU)
    // needs no loan of it: the idle loop and a CPU whose thread just blocked come here.
    if carry.is_none() && cs.rq_top.load(Ordering::Relaxed) < 0 {
        return false;
    }
    let next = with_rq(cs, |rq| {
        if let Some((p, t, front)) = carry {
            rq_push(rq, p, t, front);
        }
        rq.pop()
    });
    let Some((_, t)) = next else { return false };
    run_entry(cs, t) || pick_after_let_go(cs)
}

/// [`pick`] after an entry that may not run here (let go, or passed on): the next one. A thread
/// that the let-go entry's destruction woke here (a caller it owed a reply: into this CPU's
/// own inbox, which sets no flag) competes with the rest, not after a tick behind a lower one
/// (a review of the thirty-seventh session): the inbox is drained first — at most four times
/// in one pick, since other CPUs could keep pushing entries stale by the time they are popped
/// (interrupts are off here). Out of line: the common pick runs its first entry.
#[cold]
#[inline(never)]
fn pick_after_let_go(cs: Here) -> bool {
    let mut drains = 0;
    loop {
        if drains < 4 {
            drains += 1;
            drain_inbox(cs);
        }
        if cs.rq_top.load(Ordering::Relaxed) < 0 {
            return false;
        }
        let Some((_, t)) = with_rq(cs, |rq| rq.pop()) else { return false };
        if run_entry(cs, t) {
            return true;
        }
    }
}

/// Publishes the running thread's priority (-1: idle), read by other CPUs only to decide on
/// an IPI; written only when it changes. Whether this CPU must decide again before it returns
/// to user mode (`KICKED` is set then): see [`lowered`].
#[inline(always)]
fn set_current_prio(cs: Here, prio: i32) -> bool {
    let old = cs.current_prio.load(Ordering::Relaxed);
    if old == prio {
        return false;
    }
    if prio > old {
        // Pushers that read the old, lower priority sent an IPI where none was needed: harmless.
        cs.current_prio.store(prio, Ordering::Relaxed);
        return false;
    }
    lowered(cs, prio)
}

/// The published priority falls. A CPU that pushed a thread into this inbox while the decision
/// that chose the lower thread ran (after its inbox was drained) read the old priority and sent
/// no IPI: without a second look its thread would wait for this CPU's next tick behind a lower
/// one (a review of the twenty-fourth session). The store is a sequentially consistent exchange
/// (a locked one on x86) and the look at the inbox a sequentially consistent load; the pusher's
/// are a sequentially consistent compare-and-swap and then its read of the priority, the same
/// (`Mailbox::push`, `push_owned`): of the two, at least one sees the other's write — the
/// pusher the lower priority (and sends the IPI), or this CPU the thread in its inbox (and
/// decides again).
#[cold]
#[inline(never)]
fn lowered(cs: Here, prio: i32) -> bool {
    cs.current_prio.swap(prio, Ordering::SeqCst);
    if cs.mail.is_empty_after_store() {
        return false;
    }
    set_flag(cs, KICKED);
    true
}

#[inline(always)]
fn switch_to(cs: Here, t: Arc<Thread>, prio: u8, fresh: bool) {
    crate::timeline::event(crate::timeline::Kind::Switch, t.id, (prio as u64) << 8);
    entry::set_current(&t.regs);
    if crate::thread::fpu_enter(&t) {
        cs.bump(Count::FpuKept);
    }
    tlb::load_space(cs, &t.space);
    set_current_prio(cs, prio as i32);
    if fresh {
        // What a preemption left of its slice, else a new one. (Plain load and store: the word is
        // written under the thread's lock as it leaves a CPU, and read after the lock that took
        // it out of a queue.)
        match t.slice_left.load(Ordering::Relaxed) {
            0 => new_slice(cs),
            left => {
                t.slice_left.store(0, Ordering::Relaxed);
                cs.slice.store(left, Ordering::Relaxed);
                clear_flag(cs, EXPIRED);
            }
        }
    }
    cs.bump(Count::Switches);
    let none = cs.replace_current(Some(t));
    debug_assert!(none.is_none());
}

/// The idle loop: run whatever arrives; else watch the inbox for `poll_us` (a thread made
/// runnable here from another CPU then needs no IPI), then halt until an interrupt. The last
/// user address space stays loaded (a CR3 write is the dearest step of a switch under TCG).
pub fn idle() -> ! {
    let cs = this();
    cs.current_prio.store(-1, Ordering::SeqCst);
    crate::trace::abandon();
    // Whether the last round skipped the interrupt window because a thread arrived while this
    // CPU polled: the next round opens it whatever happens, so that a stream of arrivals that
    // do not run (killed meanwhile) cannot keep interrupts out.
    let mut skipped = false;
    loop {
        crate::timeline::event(crate::timeline::Kind::Idle, 0, 0);
        // Nothing read from a capability slot's shadow lives here: a quiescent point for the
        // other CPUs' grace periods (`qsbr.rs`), whatever this CPU's idle state says.
        percpu::current().count_exit();
        crate::reclaim::drain();
        // The hand-overs that skip the drain and the requests' service (here and below) wait
        // while a request is pending: it is served first (the round's `drain_and_serve`), so
        // that its flag that an interrupt is on its way comes down (`request_kicked`; before the
        // forty-third session a request whose interrupt woke this CPU from its halt stayed
        // unserved under the thread handed over, and kept a later urgent raise here from
        // sending one: a priority inversion of up to a tick, a review found).
        if run_delivered(cs) {
            entry::return_to_user();
        }
        // An idle CPU serves requests too: a request's interrupt taken here does not decide.
        drain_and_serve(cs);
        // (A thread drained here, an awaited reply among them, was noted as it came out of
        // the inbox: `drain_inbox_now`.)
        if pick(cs, None) {
            entry::return_to_user();
        }
        tlb::service_tlb(cs);
        let poll = poll_ticks(cs);
        if poll > 0 {
            crate::timeline::event(crate::timeline::Kind::PollStart, 0, 0);
            // What this CPU read in its last kernel entry comes before the idle state other CPUs
            // may see (`is_idle`, `qsbr.rs`).
            core::sync::atomic::fence(Ordering::Release);
            cs.mail.set_polling();
            // One cache line watched; the TSC read only every 64 rounds, and pending interrupts
            // taken every 8: a device's interrupt for a driver of this CPU, or the timer, waits
            // 8 rounds at most, not for the end of the poll (before the seventeenth session up
            // to `poll_us`, 20 times that while a reply was awaited: the 50,584 instructions of
            // `irq-latency-0-1` under icount were mostly the rest of a 50 µs poll). The window
            // is counted from the first of those reads, not from a read here: a poll that a
            // thread's arrival ends within 64 rounds (a cross-CPU reply, usually) reads the TSC
            // not at all, and a poll nothing ends runs 64 to 128 rounds past its time. (Under
            // TCG a TSC read takes a lock of the emulator's that every virtual CPU's reads
            // take, and writes the line it shares with them: this read, on both CPUs of every
            // cross-CPU round trip, cost it 2.5% of its TCG time on a quiet host — 6,089 cycles
            // against 6,244, medians of four `-smp 2` boots each, alternated — and 9% with a
            // fuzz run alongside, 5,677 against 6,216; under icount 8 instructions, 1,134 to
            // 1,126; thirty-second session.)
            let mut end = None;
            let mut n = 0u32;
            // A limbo another CPU found ready ends it too, looked at with the interrupts
            // (`qsbr::ready_here`: that CPU's `settle` waits for this one to drop what it
            // deferred).
            while cs.mail.is_empty() && !cs.tlb.shared.request_pending() {
                n = n.wrapping_add(1);
                if n % 8 == 0 {
                    cpu::take_interrupts();
                    if crate::qsbr::ready_here() {
                        break;
                    }
                }
                if n % 64 == 0 {
                    let now = cpu::rdtsc();
                    match end {
                        None => end = Some(now.saturating_add(poll)),
                        Some(e) if now >= e => {
                            cs.replies.nothing_came(now, POLL_TICKS.load(Ordering::Relaxed));
                            break;
                        }
                        Some(_) => {}
                    }
                }
                cpu::relax();
            }
        }
        // A thread arrived while this CPU watched: it runs at once (the next round), with no
        // attempt to halt and no interrupt window (it runs with interrupts on).
        let arrived = poll > 0 && !skipped && !cs.mail.is_empty();
        skipped = arrived;
        if !arrived {
            // Halting is published only if the inbox is empty, in the same word: a push after
            // it finds the CPU halting and sends the IPI, which stays pending across `sti; hlt`.
            // A CPU whose limbo waits for a grace period does not halt: it polls until its
            // endpoints are freed (`qsbr.rs`).
            core::sync::atomic::fence(Ordering::Release);
            // A request that came with an interrupt taken during the poll (its IPI is spent)
            // is served before halting: the next round (or `idle_hook` below, for the BSP's).
            if !crate::qsbr::pending_here()
                && !cs.requested.load(Ordering::Relaxed)
                && !crate::run::request_pending()
                && cs.mail.try_halt()
            {
                crate::timeline::event(crate::timeline::Kind::Halt, 0, 0);
                cpu::idle_wait();
                crate::timeline::event(crate::timeline::Kind::Wake, 0, 0);
            } else {
                // Not halting (its limbo waits for a grace period, or something arrived): pending
                // interrupts are taken all the same. Without this window a CPU whose limbo waits
                // took none for as long as it waited — the freeze of `KernelCheck`, which keeps
                // its own CPU in the kernel and so the grace period open, waited for it in vain
                // until its 5 s timeout.
                cpu::take_interrupts();
            }
        }
        // The hand-over of what arrived while this CPU polled (or halted), straight from here:
        // one compare-and-swap takes it and says `Busy` (not `set_busy`, a round of the loop and
        // the drain: two locked instructions and some 40 others on the way from a push on
        // another CPU to its thread running here). Else just `Busy`, and the next round.
        let one = if cs.rq_top.load(Ordering::Relaxed) < 0
            && !cs.mail.is_empty()
            && !cs.tlb.shared.request_pending()
            && !cs.requested.load(Ordering::Relaxed)
        {
            delivered(cs, true)
        } else {
            cs.mail.set_busy();
            None
        };
        // Leaving idle happens before any shadow read of the next kernel entry (`is_idle`).
        core::sync::atomic::fence(Ordering::SeqCst);
        crate::run::idle_hook();
        if let Some(t) = one
            && run_entry(cs, t)
        {
            entry::return_to_user();
        }
    }
}

/// Whether the running thread may hand the CPU straight to a thread of priority `prio`: nothing
/// more urgent waits here.
pub fn may_switch_to(prio: u8) -> bool {
    let cs = this();
    drain_inbox(cs);
    cs.rq_top.load(Ordering::Relaxed) <= prio as i32
}

/// A direct switch: `to` was made `Running` and current here ([`Life::run_here`]); the running
/// thread (blocked, or still runnable) leaves this CPU without a scheduling decision.
pub fn switch_direct(to: Arc<Thread>, prio: u8) {
    let cs = this();
    let cur = cs.take_current();
    if let Some(cur) = cur {
        let mut l = cur.life.lock();
        leave(cs, &cur, &mut l, true);
        drop(l);
        crate::reclaim::later_thread(cur);
    }
    // The thread that left may be runnable after all — its wait ended meanwhile from another
    // CPU (suspended and resumed: still current here, nobody placed it) — and outrank `to`
    // (`may_switch_to` compared only the run queue): the CPU decides again before it returns to
    // user mode (`trap::handle`, `resched_pending`), not at its next tick.
    if cs.rq_top.load(Ordering::Relaxed) > prio as i32 {
        set_flag(cs, KICKED);
    }
    // The woken thread runs on what is left of the slice: a pair that keeps handing the CPU
    // back and forth must not get a fresh slice at every message and starve its neighbours.
    switch_to(cs, to, prio, false);
}

/// The fast path's switch: the running thread has already left this CPU (its `Life` says so)
/// and was taken out of the current slot, and `to` is `Running` and current here: its
/// registers, address space and priority become this CPU's. Its FPU state is the caller's to
/// hand over, under the same home lock, before or after this ([`fpu_switch_fast`]: `Call`'s
/// side does it after, through the receiver's new reply right). The caller then puts
/// `to`'s reference into the current slot (`Here::fill_current`), before this CPU leaves the
/// kernel or decides: the fast paths switch while they still hold their locks, one of which
/// borrows `to` (its words are read under them afterwards: docs/decisions.md, twenty-ninth
/// session). Nothing here takes a lock but the PCID cache's (`tlb::load_space`, level
/// `OBJECT`, after the home and queue locks in the order), nor waits for another CPU.
///
/// Returns whether the CPU must decide before it returns to user mode (the published priority
/// fell and the inbox holds a thread: [`lowered`]).
#[inline(always)]
#[must_use]
pub(crate) fn switch_direct_blocked(cs: Here, to: &Thread, prio: u8) -> bool {
    crate::timeline::event(crate::timeline::Kind::Switch, to.id, (prio as u64) << 8 | 1);
    entry::set_current(&to.regs);
    tlb::load_space(cs, &to.space);
    // (Counted by the caller: `Count::DirectFast`, a switch and a fast IPC hand-over at once.)
    // Last: its common outcome (no change) returns straight into the fast path's own return.
    set_current_prio(cs, prio as i32)
}

/// The fast path's FPU hand-over from the running thread `from`, blocked and off this CPU in
/// one transition (`Life::block_here`, under its home lock), to `to`, just made `Running` here
/// in the same hold of that lock: one test when neither has used the registers
/// (`thread::fpu_switch`). Made before that lock is let go: once it is, `from` may be resumed
/// on another CPU (a suspension and a resume), which loads its save area.
#[inline(always)]
pub(crate) fn fpu_switch_fast(cs: Here, from: &Thread, to: &Thread) {
    if crate::thread::fpu_switch(from, to) {
        cs.bump(Count::FpuKept);
    }
}

/// The fast path's bookkeeping for the thread leaving when no partner runs here next: `cur`,
/// blocked and off this CPU in one transition (`Life::block_here`, under its home lock), stops
/// running here; before that lock is let go, as in [`fpu_switch_fast`].
#[inline(always)]
pub(crate) fn left_fast(cur: &Thread) {
    crate::thread::fpu_leave(cur);
}

/// Whether the running thread of this CPU is no longer `t` (a direct switch happened).
pub fn switched_directly(t: &Arc<Thread>) -> bool {
    this().inspect_current(|c| c.as_ref().is_some_and(|c| !Arc::ptr_eq(c, t)))
}

/// The running thread gives up the rest of its slice (the general handler's `Yield`; see
/// [`yield_now`]).
pub fn yield_current() {
    set_flag(this(), EXPIRED);
}

/// `Yield`, answered before the general system-call handler (`trap::rl4_syscall`). Writes the
/// caller's result (0); the return path then resumes whichever thread runs now.
///
/// Three ways, by what this CPU has ready:
/// - nothing in the inbox, nothing asked of this CPU (a local kick), and nothing in
///   the run queue at the caller's priority or above: the caller goes on with a new slice, no
///   decision and no lock. The priority compared is the one this CPU published for its running
///   thread ([`set_current_prio`]); whatever another CPU changes about that thread meanwhile
///   that can make it give way (kill, suspension, a lower priority, CPU) comes with a
///   reschedule interrupt, taken as soon as the thread is back in user mode, as after any other
///   system call (a raise is published at the next decision: until then the comparison is with
///   the old, lower priority, which can only send the caller to a decision it did not need);
/// - the same, but threads of its own priority are ready (and none above): the short decision
///   ([`yield_rotate`]);
/// - anything else: the slice ends and the full decision runs ([`decide`]).
///
/// Out of line: the system-call entry function jumps here and stays without a stack frame.
#[inline(never)]
pub fn yield_now() {
    let cs = this();
    entry::set_current_result(0);
    // An urgent request from another CPU comes with a reschedule interrupt (taken as soon as
    // the thread this CPU runs next is in user mode, and its decision serves it); one made by
    // this CPU set `KICKED` too ([`request`]). Any pending request, urgent or not, sends the
    // caller to the full decision, which serves it first: the run queue's top and lists may
    // name priorities that changed.
    if cs.mail.is_empty() && cs.flags.load(Ordering::Relaxed) & KICKED == 0 && !cs.requested.load(Ordering::Relaxed) {
        let (top, prio) = (cs.rq_top.load(Ordering::Relaxed), cs.current_prio.load(Ordering::Relaxed));
        if top < prio {
            new_slice(cs);
            return;
        }
        if top == prio && yield_rotate(cs, prio as u8) {
            return;
        }
    }
    set_flag(cs, EXPIRED);
    decide_and_drain();
}

/// The short decision of a `Yield` when the highest priority ready on this CPU is the caller's
/// own, `p`, and the inbox is empty: the caller, if its state allows (`Life::yield_cpu`: still
/// `Running` here, on its own CPU, at priority `p`), goes to the tail of `p`'s FIFO while the
/// head comes out (`RunQueue::rotate`: the bitmaps do not change) and runs (`Life::dequeue`).
/// One hold of a home lock when both threads share it (else one of each thread's), O(1) queue
/// work, nothing allocated, no reference count touched.
/// Returns false, having changed nothing, if the caller's state does not allow it (stopped,
/// moved or re-prioritised by another CPU, whose reschedule interrupt is still pending): the
/// full decision runs then.
#[inline(always)]
fn yield_rotate(cs: Here, p: u8) -> bool {
    let Some(cur) = cs.take_current() else { return false };
    let mut l = cur.life.lock();
    if l.prio != p || !l.yield_cpu(me()) {
        drop(l);
        cs.replace_current(Some(cur));
        return false;
    }
    crate::thread::fpu_leave(&cur);
    // The lock stays held for the next thread if it shares the home (its reference may move
    // into the run queue meanwhile: the lock no longer borrows it).
    let held = l.into_held();
    crate::timeline::event(crate::timeline::Kind::Leave, cur.id, 2);
    let next = match cs.rq.with(#[inline(always)] |rq| rq.rotate(p, cur)) {
        Ok(t) => t,
        Err(t) => {
            drop(held);
            queued_twice(t);
            if !pick_after_let_go(cs) {
                idle();
            }
            return true;
        }
    };
    if !run_entry_held(cs, next, Some(held)) {
        // An entry that may not run here (dropped, or passed on): the next one, among them a
        // thread its destruction woke here (`pick`'s own step for that).
        if !pick_after_let_go(cs) {
            idle();
        }
        crate::reclaim::drain();
    }
    true
}

/// Where a CPU's scheduler holds a thread (for the consistency check).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Held {
    RunQueue,
    Inbox,
    /// A request about it ([`request`]), waiting for that CPU's next decision.
    Request,
}

/// For the consistency check, with every other CPU stopped: calls `f` for each thread
/// reference a CPU's scheduler holds, `t` for each entry of its timeout list, and `bad` for each
/// structural fault (a lock held, a run queue whose bitmaps disagree with its queues).
pub(crate) fn visit_cpus(
    mut f: impl FnMut(usize, Held, &Thread),
    mut t: impl FnMut(usize, u64, &alloc::sync::Weak<Thread>),
    mut bad: impl FnMut(usize, &'static str),
) {
    for i in 0..MAX_CPUS {
        let Some(cs) = get(i) else { continue };
        // The current slot is read by the check itself (`check.rs`), which may look at another
        // CPU's private slot while that CPU is stopped.
        // SAFETY: every other CPU is stopped outside the kernel or in its idle loop (the
        // check's freeze), never inside a loan of its run queue, and this CPU is inside the
        // check's system call, not inside one either; the reference does not outlive the loop.
        #[allow(unsafe_code)]
        let rq = unsafe { cs.rq.peek() };
        if !rq.is_consistent() {
            bad(i, "its run queue's bitmaps or links disagree with its queues");
        }
        rq.iter().for_each(|(_, th)| f(i, Held::RunQueue, th));
        // SAFETY: every other CPU is stopped outside the kernel (the check's freeze), and only
        // the owner drains its mailbox; this CPU is the one checking, not draining.
        #[allow(unsafe_code)]
        unsafe {
            cs.mail.peek(|th, _| f(i, Held::Inbox, th))
        };
        match cs.timeouts.peek() {
            Some(l) => l.iter().for_each(|(d, w)| t(i, *d, w)),
            None => bad(i, "its timeout-list lock is held"),
        }
        if cs.requests.peek().is_some_and(|l| !l.is_empty()) && !cs.requested.load(Ordering::Relaxed) {
            bad(i, "its request list is not empty but not flagged: nothing would serve it");
        }
        match cs.requests.peek() {
            Some(l) if !l.is_consistent() => bad(i, "its request list's links are inconsistent"),
            Some(l) => l.iter().for_each(|(_, th)| f(i, Held::Request, th)),
            None => bad(i, "its request-list lock is held"),
        }
    }
}

