//! Device capabilities and their system calls: `Devices` (the root task's slot 5) makes `Irq`
//! capabilities (one per interrupt line, `irq.rs`) and `IoPort` capabilities (a port range);
//! `IoPortOpen` opens a range to the calling task; `DeviceMemGet` makes a frame object for a
//! device page (the HPET's registers) that no RAM and no kernel device shares.
//!
//! Port access goes through each CPU's I/O permission bitmap (in its TSS, `arch::ioport`):
//! user code runs `in`/`out` itself, at full speed; a port whose bit is set faults (`#GP`)
//! before anything reaches the device. A task's open ranges (at most `IO_RANGES`) are kept in
//! its address space's [`IoSpace`]; [`sync`] makes this CPU's bitmap match the space being
//! switched to, which costs two loads and a compare when nothing changes and a few byte
//! writes per port otherwise (see docs/decisions.md).
use alloc::sync::{Arc, Weak};
use alloc::collections::VecDeque;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use rl4_abi::{Error, IO_RANGES, IRQ_CPU_CALLER, ObjType, PORT_OPENERS, Rights, Sys};
use rl4_core::device::{DevMemError, DeviceFrame, KERNEL_PORTS, MAX_DEVICE_PAGES, OpenSet, PhysRange, Ports};
use rl4_core::memmap::MemKind;
use rl4_smp::MAX_CPUS;
use spin::Once;

use crate::lock::{Level, Mutex};
use crate::obj::{Cap, KObj, Space, Task, Thread};

/// A task's open port ranges (kept in its address space: one per task). A range stays open
/// while the task's own table holds a capability to the object it was opened through, with
/// `WRITE` ([`IoPortObj`]).
pub struct IoSpace {
    /// Which state of the ranges this is: 0 while the task never opened one, else a number no
    /// other state of any space had (bumped after every change, from [`GENERATION`]). A CPU
    /// whose bitmap holds this generation needs no work at a switch.
    generation: AtomicU64,
    /// The ranges open now, packed (`Ports::pack`), read without a lock.
    packed: [AtomicU64; IO_RANGES],
    /// The task of the space (set by its first `IoPortOpen`: a space belongs to one task for
    /// ever), whose table is read to tell whether a range may stay open ([`holds`]).
    task: Once<Weak<Task>>,
    set: Mutex<IoSet, { Level::PORT_RANGES }>,
}

/// The ranges a task has open and, for each slot in use, the object they were opened through
/// (weak: so that the space can take itself off that object's list of openers when it goes).
struct IoSet {
    open: OpenSet<IO_RANGES>,
    objs: [Weak<IoPortObj>; IO_RANGES],
}

impl IoSpace {
    pub const fn new() -> IoSpace {
        IoSpace {
            generation: AtomicU64::new(0),
            packed: [const { AtomicU64::new(0) }; IO_RANGES],
            task: Once::new(),
            set: Mutex::new(IoSet { open: OpenSet::new(), objs: [const { Weak::new() }; IO_RANGES] }),
        }
    }

    /// The space `sp` is being destroyed (its destructor, no lock held): it leaves the lists of
    /// openers of the objects it has ranges open through (it is on an object's list exactly
    /// while it has a range open through it: [`IoPortObj::note`]).
    pub fn forget(&mut self, sp: *const Space) {
        let objs = core::mem::replace(&mut self.set.get_mut().objs, [const { Weak::new() }; IO_RANGES]);
        for w in objs {
            if let Some(o) = w.upgrade() {
                let mine = o.unnote(sp);
                // Its entry goes after that lock; a last reference to the object, whose
                // destructor goes through spaces, to the destruction list (no recursion).
                drop(mine);
                crate::reclaim::later(crate::reclaim::Garbage::IoPort(o));
            }
        }
    }
}

impl Default for IoSpace {
    fn default() -> Self {
        Self::new()
    }
}

/// The object of an `IoPort` capability: a port range. Copies of the capability share it. A
/// range opened through it (`IoPortOpen`) stays open until it is closed, its task ends, or the
/// task's own table holds no capability to the object with `WRITE` any more — deleted,
/// revoked, or gone with the table (a copy in another task's table does not count, nor one in
/// flight in a blocked sender, nor any reference the kernel holds): every capability to it that
/// leaves a slot of a task with a range open through it has that task look at its own table
/// ([`IoPortObj::recheck`], after the locks), so a driver whose capabilities were taken away
/// keeps no port, whoever else still holds one (before the
/// nineteenth session a range stayed open while any slot anywhere held a capability to the
/// object: revoking a driver's copy left its ports open while the root task kept the
/// original). Its heap is this record, charged to the budget of the task that made it
/// (`cost::IO_PORT`; before the twenty-ninth session to none, as only the holder of the
/// `Devices` capability makes one — but that holder could then fill tables with them past the
/// kernel's heap allowance, which a review found), and the list of openers, whose capacity is
/// the most spaces listed at once since the list was last empty, [`PORT_OPENERS`] at most (it
/// is freed when it empties; each entry is a space, charged on its own).
pub struct IoPortObj {
    pub ports: Ports,
    _charge: crate::obj::Charge,
    /// Capabilities to it in slots.
    slots: AtomicU64,
    /// The address spaces with a range open through it (weak: a space leaves the list when its
    /// last such range closes or when it is destroyed). Changed only under the port ranges'
    /// lock of the space concerned (but by the destructor of a space, or of this object, and
    /// when a close finds a dead space's entry), so that a space is on the list exactly while
    /// it has a range open through this object.
    /// Oldest first: a close takes entries from the front, each in O(1).
    openers: Mutex<VecDeque<Weak<Space>>, { Level::PORTS }>,
}

impl IoPortObj {
    /// A range's object, charged to `mem`.
    pub fn new(ports: Ports, mem: &Arc<crate::obj::Memory>) -> Result<Arc<IoPortObj>, Error> {
        let charge = crate::obj::Charge::new(mem, rl4_abi::cost::IO_PORT)?;
        Arc::try_new(IoPortObj { ports, _charge: charge, slots: AtomicU64::new(0), openers: Mutex::new(VecDeque::new()) })
            .map_err(|_| Error::OutOfMemory)
    }
    /// What its record costs, and whom.
    pub fn charge(&self) -> &crate::obj::Charge {
        &self._charge
    }
    /// The number its ranges are opened under in an `OpenSet` (its address: unique while it
    /// lives, and all its ranges are closed before it is freed).
    fn owner(&self) -> u64 {
        self as *const IoPortObj as u64
    }
    /// Capabilities to it in slots now (for `KernelCheck`).
    pub fn slots_held(&self) -> u64 {
        self.slots.load(Ordering::SeqCst)
    }
    /// A capability to it entered a slot (`KObj`'s `captable::Object::entered`).
    pub fn entered(&self) {
        self.slots.fetch_add(1, Ordering::SeqCst);
    }
    /// A capability to it left a slot (under that table's lock) of the task whose address space
    /// is at `space`: whether that space has a range open through it (it is on the list), which
    /// must then look at its task's table once the lock is released
    /// (`reclaim::Garbage::PortsLeft`, [`IoPortObj::recheck`]). (An `IoPortOpen` puts its space
    /// on the list before it reads its table, under that table's lock: a leave it did not see
    /// finds it listed here.)
    pub fn left(&self, space: usize) -> bool {
        self.slots.fetch_sub(1, Ordering::SeqCst);
        self.openers.lock().iter().any(|w| w.as_ptr() as usize == space)
    }
    /// Puts `sp` on the list of openers (under `sp`'s port-range lock, before a range is opened
    /// through this object there; nothing if it is on it already). `Busy` if [`PORT_OPENERS`]
    /// spaces are on it: the list is walked by every leave of a capability to the object
    /// ([`IoPortObj::left`], under a table's lock) and by the look that follows
    /// ([`IoPortObj::recheck`]), so its length bounds those walks. (Before the thirty-second
    /// session it had no bound: a task holding copies in thousands of tasks that had each opened
    /// through it made one `CapRevoke` walk thousands of entries per copy, interrupts off —
    /// work quadratic in the budget; a review found it.)
    fn note(&self, sp: &Arc<Space>) -> Result<(), Error> {
        let mut o = self.openers.lock();
        if o.iter().any(|w| w.as_ptr() == Arc::as_ptr(sp)) {
            return Ok(());
        }
        if o.len() >= PORT_OPENERS {
            return Err(Error::Busy);
        }
        o.try_reserve(1).map_err(|_| Error::OutOfMemory)?;
        o.push_back(Arc::downgrade(sp));
        Ok(())
    }
    /// Takes `sp` off the list of openers (under `sp`'s port-range lock once no range is open
    /// through this object there, or in its destructor); its entry, to be dropped after the
    /// locks.
    /// The list keeps its order (older entries ahead of newer ones), so that a close that
    /// walks as many entries from the front as the list held when it began reaches every space
    /// listed then ([`IoPortObj::close_everywhere`]).
    /// The front entry (the one a close takes) goes in O(1); an emptied list frees its buffer.
    fn unnote(&self, sp: *const Space) -> Option<Weak<Space>> {
        let mut l = self.openers.lock();
        let w = l.iter().position(|s| core::ptr::eq(s.as_ptr(), sp)).and_then(|i| l.remove(i));
        if l.is_empty() {
            *l = VecDeque::new();
        }
        w
    }
    /// A capability to it left a slot of the task whose address space is at `space`
    /// ([`PortsLeft`], no lock held): if that space still has a range open through it, under its
    /// port-range lock (and, inside it, its task's table lock) the task's table is read, and if
    /// it holds no capability to this object with `WRITE` the ranges through it close and the
    /// space leaves the list ([`holds`]), with the reschedule IPIs. Only the space whose table
    /// changed is looked at: another task's leave changes nothing of what this one holds, and
    /// each leave is followed by its own look, made after it (a look that found the capability
    /// just before a later leave is followed by that leave's).
    pub fn recheck(&self, space: usize) {
        let owner = self.owner();
        // (The entry is cloned under the list's lock and upgraded after it: the space's last
        // reference must not go under a lock.)
        let Some(w) = self.openers.lock().iter().find(|w| w.as_ptr() as usize == space).cloned() else { return };
        // A space being destroyed takes itself off the list (`IoSpace::forget`).
        let Some(sp) = w.upgrade() else { return };
        drop(w);
        let task = sp.io.task.get().and_then(Weak::upgrade);
        let r = change(&sp.io, |set| {
            if holds(task.as_deref(), owner) {
                return Err(Error::InvalidState);
            }
            let freed = set.open.close_owner(owner);
            let entry = self.unnote(Arc::as_ptr(&sp));
            Ok(((freed != 0, entry), take_objs(set, freed)))
        });
        if let Ok((closed, entry)) = r {
            drop(entry);
            if closed {
                resync(&sp, true);
            }
        }
        // Last references to the space and its task go to the destruction list (a space's
        // destructor goes through port objects: no recursion).
        crate::reclaim::later(crate::reclaim::Garbage::Space(sp));
        if let Some(t) = task {
            crate::reclaim::later(crate::reclaim::Garbage::Task(t));
        }
    }
    /// Closes every range opened through it, in every task that opened one (its destructor: a
    /// safety net), and has the CPUs that may run those tasks' threads re-read their running
    /// task's ranges ([`Resync`]). One space at a time, the first on the list, which leaves it
    /// (so a space is on the list exactly while it has a range open through this object); at
    /// most as many as the list held when it began, each followed by an answer to other CPUs'
    /// TLB shoot-downs; then, if it closed anything, the reschedule IPIs, once.
    fn close_everywhere(&self) {
        let owner = self.owner();
        let n = self.openers.lock().len();
        let (mut closed_any, mut resync) = (false, Resync::new());
        for _ in 0..n {
            let Some(w) = self.openers.lock().front().cloned() else { break };
            match w.upgrade() {
                // A space being destroyed (it takes itself off the list too).
                None => drop(self.unnote(w.as_ptr())),
                Some(sp) => {
                    let (closed, entry) = change(&sp.io, |set| {
                        let freed = set.open.close_owner(owner);
                        let entry = self.unnote(Arc::as_ptr(&sp));
                        Ok(((freed != 0, entry), take_objs(set, freed)))
                    })
                    .unwrap_or((false, None));
                    if closed {
                        resync.add(&sp);
                    }
                    drop(entry);
                    closed_any |= closed;
                    // A last reference to the space goes after its lock, to the destruction
                    // list (its destructor goes through port objects: no recursion).
                    crate::reclaim::later(crate::reclaim::Garbage::Space(sp));
                }
            }
            drop(w);
            crate::tlb::service_tlb_here();
        }
        if closed_any {
            resync.send(true);
        }
    }
    /// For `KernelCheck` (every other CPU stopped): whether `sp` is on the list of openers
    /// (`None`: the list's lock is held).
    pub fn lists(&self, sp: *const Space) -> Option<bool> {
        self.openers.peek().map(|l| l.iter().any(|w| core::ptr::eq(w.as_ptr(), sp)))
    }
}

impl Drop for IoPortObj {
    /// A safety net: its last reference goes (each task's ranges through it closed when its own
    /// table lost its last capability to it with `WRITE`).
    fn drop(&mut self) {
        crate::reclaim::dropping("IoPortObj");
        self.close_everywhere();
    }
}

/// An `IoPort` object a capability to which left a slot of the table of a task (named by its
/// address space's address) that has a range open through it: when this is dropped — by the
/// destruction loop (`reclaim`), with no lock held — that task loses its ranges through the
/// object if its table no longer holds a capability to it ([`IoPortObj::recheck`]).
pub struct PortsLeft(pub Arc<IoPortObj>, pub usize);

impl Drop for PortsLeft {
    fn drop(&mut self) {
        crate::reclaim::dropping("PortsLeft");
        self.0.recheck(self.1);
    }
}

/// Whether `task`'s table holds a capability with `WRITE` to the port object numbered `owner`
/// (what keeps a range opened through that object open in the task's space; `None`, a task
/// gone, holds nothing). Under its space's port-range lock: the table's lock is taken inside
/// it, and the 256 slots are read (no reference count changes).
fn holds(task: Option<&Task>, owner: u64) -> bool {
    task.is_some_and(|t| table_holds(&t.caps.lock(), owner))
}

/// Whether `caps` holds a capability with `WRITE` to the port object numbered `owner` (its
/// address): the rule [`holds`] applies under the table's lock, and `KernelCheck` checks with
/// every CPU stopped.
pub fn table_holds(caps: &rl4_core::captable::CapTable<KObj>, owner: u64) -> bool {
    caps.iter().any(|(_, c)| c.rights.contains(Rights::WRITE) && matches!(&c.obj, KObj::IoPort(p) if p.owner() == owner))
}

/// Whether `set` has a range open through `owner`.
fn open_through(set: &IoSet, owner: u64) -> bool {
    set.open.ranges.iter().any(|e| e.2 > 0 && e.1 == owner)
}

/// For `KernelCheck` (every other CPU stopped): the objects `io` has ranges open through
/// (`None`: its lock is held), and the task whose table must hold them.
/// An open range whose object is gone is `Err` (its owner number could be another object's).
#[allow(clippy::type_complexity)]
pub fn open_objects(io: &IoSpace) -> Option<([Option<Result<Arc<IoPortObj>, Ports>>; IO_RANGES], Option<*const Task>)> {
    let set = io.set.peek()?;
    let task = io.task.get().map(|w| w.as_ptr());
    Some((core::array::from_fn(|i| (set.open.ranges[i].2 > 0).then(|| set.objs[i].upgrade().ok_or(set.open.ranges[i].0))), task))
}

/// The objects of the slots in `freed` (bit `i`: slot `i`), taken out of `set` (dropped after
/// its lock by [`change`]'s caller).
fn take_objs(set: &mut IoSet, freed: u32) -> [Weak<IoPortObj>; IO_RANGES] {
    core::array::from_fn(|i| if freed & 1 << i != 0 { core::mem::take(&mut set.objs[i]) } else { Weak::new() })
}

/// Changes `io`'s ranges with `f` under its lock and, if `f` succeeds, publishes them with a
/// new generation (this CPU's bitmap and the others' follow: [`Resync`]). `f` also
/// hands back the weak references it took out of the set, dropped after the lock.
fn change<R>(io: &IoSpace, f: impl FnOnce(&mut IoSet) -> Result<(R, [Weak<IoPortObj>; IO_RANGES]), Error>) -> Result<R, Error> {
    let (r, gone) = {
        let mut set = io.set.lock();
        let (r, gone) = f(&mut set)?;
        for (w, v) in io.packed.iter().zip(set.open.packed()) {
            w.store(v, Ordering::Relaxed);
        }
        io.generation.store(GENERATION.fetch_add(1, Ordering::Relaxed), Ordering::Release);
        (r, gone)
    };
    drop(gone);
    Ok(r)
}

/// After tasks' ranges changed ([`change`]): the other CPUs that may run a thread of one of
/// their spaces — those whose published root is one of them ([`Resync::add`]) — re-read their
/// running thread's ranges at the reschedule interrupt (`trap.rs`: [`on_resched`]), and this
/// CPU re-reads its own at once (or, running none at this instant — the fast path holds it out
/// of the slot — at the reschedule interrupt it sends itself, taken on the way back to user
/// mode). An open is seen by every thread of the task within one IPI; a close is waited for
/// ([`Resync::send`] with `wait`): the call that closed a range (or the revocation or
/// deletion whose capability's leave closed it) answers only once every CPU asked has passed
/// a point where it re-read its running thread's ranges (`rl4_core::asks`), so that no thread
/// of the task runs with the range open after that answer. (Before the thirty-eighth session
/// nothing waited: a thread on another CPU could drive the ports for the IPI's delivery time
/// after the revocation had answered — a review found it.) Other CPUs are not interrupted (a
/// task that opens and closes ports in a loop disturbs only the CPUs running its own threads,
/// or idle with its space still loaded).
struct Resync {
    others: [u64; MAX_CPUS.div_ceil(64)],
    /// This CPU's published root is one of the spaces'.
    here: bool,
}

impl Resync {
    fn new() -> Resync {
        Resync { others: [0; MAX_CPUS.div_ceil(64)], here: false }
    }

    /// Adds the other CPUs whose published root is `sp`'s. Called after [`change`] published
    /// `sp`'s new generation, and read behind a full fence: a CPU that switches to `sp`
    /// publishes its root before its CR3 write and reads the generation after it
    /// (`tlb::load_space`), so either its root is seen here or it sees the new ranges (the
    /// store-buffering pattern of the TLB shoot-down, `rl4_core::tlbsync`;
    /// `kernel/core/tests/io_loom.rs`).
    /// A fence and a look at every CPU's root: O(CPUs) per space.
    fn add(&mut self, sp: &Space) {
        rl4_core::tlbsync::shooter_fence();
        let (root, me) = (sp.pml4.addr(), rl4_arch::percpu::cpu_index() as usize);
        for c in 0..MAX_CPUS {
            if crate::sched::get(c).is_some_and(|cs| cs.tlb.shared.loaded() == root) {
                if c == me {
                    self.here = true;
                } else {
                    self.others[c / 64] |= 1 << (c % 64);
                }
            }
        }
    }

    /// This CPU re-reads its running thread's ranges (or, running none at this instant and
    /// having one of the spaces loaded, sends itself the IPI); the other CPUs added get it, and,
    /// with `wait` (a range closed), each is asked for an answer first and waited for.
    /// The caller holds no lock (a CPU asked may be spinning for it with interrupts off): the
    /// wait answers TLB shoot-downs and other CPUs' questions of this kind meanwhile, as a
    /// shoot-down's does, so that two CPUs closing ranges of each other's spaces at once do
    /// not wait for each other for ever.
    fn send(self, wait: bool) {
        if !sync_current() && self.here {
            resync_later(rl4_arch::percpu::cpu_index() as usize % MAX_CPUS);
        }
        if !wait {
            self.each_other(rl4_smp::cpus::send_resched);
            return;
        }
        // The tickets, on the stack (2 KiB, as a shoot-down's): closing allocates nothing.
        let mut tickets = [0u64; MAX_CPUS];
        self.each_other(|c| {
            tickets[c] = ASKS[c].ask();
            rl4_smp::cpus::send_resched(c);
        });
        self.each_other(|c| {
            while !ASKS[c].answered(tickets[c]) {
                // (Answers this CPU's own questions too.)
                crate::tlb::service_tlb_here();
                rl4_arch::cpu::relax();
            }
        });
    }

    fn each_other(&self, mut f: impl FnMut(usize)) {
        for (w, &bits) in self.others.iter().enumerate() {
            let mut b = bits;
            while b != 0 {
                f(w * 64 + b.trailing_zeros() as usize);
                b &= b - 1;
            }
        }
    }
}

/// Per CPU: the questions other CPUs that closed ranges put to it, and its answers
/// ([`Resync::send`]). Each on a line of its own: every reschedule interrupt reads its CPU's
/// (the cross-CPU path's wake-up of a halted CPU among them), and a close writes one CPU's
/// question while its neighbours' answers are read.
static ASKS: [crossbeam_utils::CachePadded<rl4_core::asks::Asks>; MAX_CPUS] =
    [const { crossbeam_utils::CachePadded::new(rl4_core::asks::Asks::new()) }; MAX_CPUS];

/// The reschedule interrupt (`trap.rs`): this CPU's bitmap made to match its running thread's
/// task, and an answer to the CPUs that asked since its last (their close is seen: the pass
/// reads the generations after the count of questions). Interrupts are taken only in user
/// mode, in the idle loop (no thread current: the next one comes through a switch, which
/// re-reads its task's ranges, `tlb::load_space`) and in a few waits inside system calls whose
/// thread is current: in each the thread that runs next in user mode either is the one just
/// synced or comes through a switch.
pub fn on_resched() {
    let me = rl4_arch::percpu::cpu_index() as usize % MAX_CPUS;
    if !ASKS[me].answer(|| {
        let _ = sync_current();
    }) {
        let _ = sync_current();
    }
    // A store only when set: every cross-CPU wake-up of a halted CPU comes here.
    let owed = &crate::sched::this_cpu().tlb.io_owed;
    if owed.load(Ordering::Relaxed) {
        owed.store(false, Ordering::Relaxed);
    }
}

/// This CPU (`me`), running no thread at this instant, re-reads its running thread's ranges at
/// the reschedule interrupt it sends itself, taken before any user instruction runs here. Until
/// it takes it, its bitmap may legitimately hold a range closed since: the thread that was out
/// of its slot may come back without a switch (a decision that keeps it, a fast path that falls
/// back), and the consistency check's freeze, a higher vector, may be taken first on the way
/// back to user mode. It notes that it owes itself the re-read (`CpuTlb::io_owed`, on its own
/// lines; cleared by [`on_resched`]), and the check holds it to an interrupt pending
/// ([`check_cpu`]; a review of the forty-first session's check found the case).
fn resync_later(me: usize) {
    crate::sched::this_cpu().tlb.io_owed.store(true, Ordering::Relaxed);
    rl4_smp::cpus::send_resched(me);
}

/// A CPU that spins with interrupts off waiting for other CPUs (every such wait answers TLB
/// shoot-downs through `tlb::service_tlb_here` or `service_tlb_if_up`, which call this too:
/// its own closes, a kill waiting for another, a lock, `KernelCheck`'s freeze and its checker)
/// answers the questions put to it: its bitmap re-read for its running thread or, running none
/// at this instant (the fast path may hold it out of the slot while a destruction it let go of
/// closes ranges, or a lock's wait in it finds a question), the reschedule interrupt sent to
/// itself, which re-reads it before any user instruction runs here. (A closer and a CPU whose
/// wait does not answer could otherwise wait for each other: two closers, a closer and a frozen
/// CPU, a closer and a kill waiting for the closer's own kill.) No lock is taken.
pub(crate) fn answer_asked() {
    let me = rl4_arch::percpu::cpu_index() as usize % MAX_CPUS;
    ASKS[me].answer(|| {
        if !sync_current() {
            resync_later(me);
        }
    });
}

/// [`Resync`] for one space (`wait`: a range closed).
fn resync(sp: &Space, wait: bool) {
    let mut r = Resync::new();
    r.add(sp);
    r.send(wait);
}

/// Generations of port-range states, machine-wide (taken only by `IoPortOpen`/`IoPortClose`).
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// The ranges each CPU's bitmap has open (its generation is in its `tlb::CpuTlb`).
static LOADED: [[AtomicU64; IO_RANGES]; MAX_CPUS] = [const { [const { AtomicU64::new(0) }; IO_RANGES] }; MAX_CPUS];

/// Makes this CPU's I/O permission bitmap open exactly `sp`'s ranges; `loaded` is the
/// generation it holds (this CPU's `CpuTlb::io_generation`). Two loads and a compare when it
/// holds them already (every switch between tasks that never opened a port). Called when the
/// CPU switches address spaces, and when the running task's ranges change.
#[inline(always)]
pub fn sync(loaded: &AtomicU64, sp: &Space) {
    if loaded.load(Ordering::Relaxed) != sp.io.generation.load(Ordering::Acquire) {
        reload(loaded, sp);
    }
}

#[inline(never)]
fn reload(loaded: &AtomicU64, sp: &Space) {
    let Some(map) = rl4_arch::ioport::this_cpu() else { return };
    let ranges = &LOADED[rl4_arch::percpu::cpu_index() as usize % MAX_CPUS];
    // The generation first: a change after this read bumps it again (and sends this CPU an
    // IPI), so the next `sync` looks again.
    let g = sp.io.generation.load(Ordering::Acquire);
    for l in ranges {
        if let Some(p) = Ports::unpack(l.swap(0, Ordering::Relaxed)) {
            map.set(p.base, p.count, false);
        }
    }
    let mut any = false;
    for (l, w) in ranges.iter().zip(&sp.io.packed) {
        let w = w.load(Ordering::Relaxed);
        if let Some(p) = Ports::unpack(w) {
            map.set(p.base, p.count, true);
            any = true;
        }
        l.store(w, Ordering::Relaxed);
    }
    // The ranges may be newer than `g`: under the generation every never-opened space shares, a
    // label that makes the next switch reload (`bitmap_label`; loom: `first_open_against_reload`).
    loaded.store(rl4_core::device::bitmap_label(g, any), Ordering::Relaxed);
}

/// `KernelCheck`'s rules for CPU `cpu`'s I/O permission bitmap (`tlb` its state), every CPU
/// stopped (none writes its bitmap or its [`LOADED`] then: the closes that ask a CPU to re-read
/// its ranges wait for its answer, and every closer has stopped too): the bitmap opens exactly
/// the ranges the CPU records; and running `current`, those are its task's ranges, slot by
/// slot, if the CPU holds their generation, else every port they open is open in its task (an
/// open's interrupt may still be on its way: it waits for nobody) — unless the CPU owes itself
/// a re-read ([`resync_later`]: it answered or made a close while running no thread), which
/// needs the reschedule interrupt it sent itself pending (`resched_pending`, which the CPU read
/// itself once every CPU had stopped). A CPU running no thread (idle) may keep a task's ranges it ran last: no user
/// instruction runs there before a switch, which re-reads them. `bad` gets each violation.
pub(crate) fn check_cpu(
    cpu: usize,
    tlb: &crate::tlb::CpuTlb,
    resched_pending: bool,
    current: Option<&Thread>,
    mut bad: impl FnMut(core::fmt::Arguments<'_>),
) {
    let owed = tlb.io_owed.load(Ordering::Relaxed);
    if owed && !resched_pending {
        bad(format_args!("it owes itself a re-read of its port ranges, but no reschedule interrupt is pending"));
    }
    let (Some(map), Some(loaded)) = (rl4_arch::ioport::of_cpu(cpu), LOADED.get(cpu)) else { return };
    let recorded: [u64; IO_RANGES] = core::array::from_fn(|i| loaded[i].load(Ordering::Relaxed));
    let ranges: [Option<Ports>; IO_RANGES] = recorded.map(Ports::unpack);
    if let Some(p) = map.first_disagreement(|p| ranges.iter().flatten().any(|r| r.contains(p as u32))) {
        bad(format_args!("its I/O permission bitmap does not open exactly the port ranges it records (port {p:#x})"));
    }
    let Some(t) = current else { return };
    let io = &t.space.io;
    let open: [u64; IO_RANGES] = core::array::from_fn(|i| io.packed[i].load(Ordering::Relaxed));
    if tlb.io_generation.load(Ordering::Relaxed) == io.generation.load(Ordering::Relaxed) {
        if recorded != open {
            bad(format_args!("its I/O permission bitmap holds its running task's generation of port ranges, but other ranges"));
        }
    } else if !owed {
        if let Some(r) = ranges.iter().flatten().find(|&&r| !rl4_core::device::covered(r, &open)) {
            bad(format_args!("its I/O permission bitmap opens ports its running task does not have open ({:#x}+{})", r.base, r.count));
        }
    }
}

/// This CPU's bitmap made to match its running thread's task (after the task's ranges
/// changed: through the reschedule IPI); whether it runs a thread at this instant.
fn sync_current() -> bool {
    let loaded = &crate::sched::this_cpu().tlb.io_generation;
    crate::sched::with_current(|t| sync(loaded, &t.space)).is_some()
}


/// Ports described by firmware that the kernel keeps: the ACPI PM timer block (it uses it),
/// and the SMI command port and PM1 control blocks, through which a task would enter firmware
/// code or power the machine off (`rl4_smp::acpi::Platform::fixed_ports`).
static FIRMWARE_PORTS: Once<alloc::vec::Vec<Ports>> = Once::new();

/// The device pages `DeviceMemGet` may hand out (`rl4_core::device::device_pages`), fixed at
/// boot, and whether a frame object for each lives now.
static DEVICE_PAGES: Once<([u64; MAX_DEVICE_PAGES], usize)> = Once::new();
static PAGE_TAKEN: [AtomicBool; MAX_DEVICE_PAGES] = [const { AtomicBool::new(false) }; MAX_DEVICE_PAGES];

/// The HPET's and the first I/O APIC's register addresses, and the SMI command port (ACPI; 0:
/// none), for the root task.
static DESCRIBED: Once<(u64, u64, u64)> = Once::new();

pub fn hpet() -> u64 {
    DESCRIBED.get().map_or(0, |h| h.0)
}
pub fn first_ioapic() -> u64 {
    DESCRIBED.get().map_or(0, |h| h.1)
}
pub fn smi_port() -> u64 {
    DESCRIBED.get().map_or(0, |h| h.2)
}

pub fn init(p: &rl4_smp::acpi::Platform) {
    FIRMWARE_PORTS.call_once(|| {
        let timer = p.pm_timer.and_then(|t| Ports::new(t.port as u64, 4));
        timer.into_iter().chain(p.fixed_ports.iter().filter_map(|&(base, n)| Ports::new(base as u64, n as u64))).collect()
    });
    DESCRIBED.call_once(|| (p.hpet.unwrap_or(0), p.ioapics.first().map_or(0, |a| a.address as u64), p.smi_port.map_or(0, u64::from)));
    DEVICE_PAGES.call_once(|| device_pages(p));
}

/// The device ranges the firmware's tables describe (the HPET's 1 KiB register block: the
/// kernel reads it only to calibrate the TSC at boot, before any task runs), less every page
/// that the memory map calls anything but "reserved" (RAM, ACPI tables and NVS, the kernel
/// and modules, the boot loader's, defective), that the direct map maps write-back (a page
/// memory touches, the first megabyte's too), that the frame allocator manages, that holds the local APIC
/// or an I/O APIC, which the kernel drives, or that holds a firmware table (wherever the memory
/// map puts it; the first `acpi::MAX_TABLE_RANGES` of them).
fn device_pages(p: &rl4_smp::acpi::Platform) -> ([u64; MAX_DEVICE_PAGES], usize) {
    let described: alloc::vec::Vec<PhysRange> = p.hpet.and_then(|b| PhysRange::pages_of(b, 1024)).into_iter().collect();
    let mut excluded: alloc::vec::Vec<PhysRange> = alloc::vec::Vec::new();
    excluded.extend(PhysRange::pages_of(p.lapic_address, 4096));
    excluded.extend(p.ioapics.iter().filter_map(|a| PhysRange::pages_of(a.address as u64, 4096)));
    if let Some(bi) = crate::boot_info() {
        // The firmware's tables, wherever the memory map puts them (`acpi::table_ranges`, as
        // the frame allocator keeps them out: the RSDP, the root table, every table it lists,
        // the FACS and the DSDT — the first `MAX_TABLE_RANGES`, and the boot says if there are
        // more): before the thirty-eighth session they were left out only where the map called
        // them ACPI memory, and an HPET table whose base pointed into tables kept in `Reserved`
        // memory offered their page (a review).
        if let Some(rsdp) = bi.rsdp {
            let mut out = [rl4_core::memmap::Range::default(); rl4_smp::acpi::MAX_TABLE_RANGES];
            let (n, _) = rl4_smp::acpi::table_ranges(&rl4_arch::paging::DirectMapMem, rsdp, &mut out);
            if n > out.len() {
                rl4_arch::println!("device: {} ACPI table(s) beyond the first {} not kept out of the device pages", n - out.len(), out.len());
            }
            excluded.extend(out[..n.min(out.len())].iter().filter(|r| r.end > r.start).map(|r| PhysRange { start: r.start & !0xfff, end: rl4_core::align_up(r.end, 4096) }));
        }
        for e in bi.memory_map().iter().filter(|e| e.kind != MemKind::Reserved) {
            if e.range.end > e.range.start {
                excluded.push(PhysRange { start: e.range.start, end: e.range.end });
            }
        }
    }
    // A page that memory touches is mapped write-back in the direct map (`mem::direct_ranges`:
    // the first megabyte among them): offered, it would be mapped uncached in its driver too.
    for r in crate::mem::direct_memory() {
        let (start, end) = (rl4_core::align_down(r.start, 4096), rl4_core::align_up(r.end, 4096));
        if end > start {
            excluded.push(PhysRange { start, end });
        }
    }
    let mut pages = [0u64; MAX_DEVICE_PAGES];
    let n = rl4_core::device::device_pages(&described, &excluded, &mut pages);
    // The allocator's frames are usable RAM, left out above; this holds even if a memory map
    // were inconsistent. (Unknown: the allocator is busy; the page is left out.)
    let mut kept = [0u64; MAX_DEVICE_PAGES];
    let mut k = 0;
    for &pa in &pages[..n] {
        if crate::mem::with_allocator(|a| a.index(pa).is_none()) == Some(true) {
            kept[k] = pa;
            k += 1;
        }
    }
    (kept, k)
}

/// The device pages `DeviceMemGet` hands out.
pub fn device_page_list() -> &'static [u64] {
    DEVICE_PAGES.get().map_or(&[][..], |(p, n)| &p[..*n])
}

/// Whether device page number `i` has a frame object (for the consistency check).
pub fn page_taken(i: usize) -> bool {
    PAGE_TAKEN[i % MAX_DEVICE_PAGES].load(Ordering::Acquire)
}

/// Device page number `i`, `page`, has no frame object any more (`Frame`'s drop, or a
/// `DeviceMemGet` that failed after its claim). Consuming `page` ends the only owner.
pub fn release_page(page: DeviceFrame, i: u8) {
    let _ = page;
    PAGE_TAKEN[i as usize % MAX_DEVICE_PAGES].store(false, Ordering::Release);
}

/// `DeviceMemGet`: a frame object for the device page at `pa`, charged to `mem`. The one place
/// that makes a [`DeviceFrame`] from an address: a task's number becomes one only if it is a
/// page of [`device_page_list`] (no RAM, no kernel device) whose claim this call just won.
#[allow(unsafe_code)]
fn device_frame(mem: &Arc<crate::obj::Memory>, pa: u64) -> Result<Arc<crate::obj::Frame>, Error> {
    let i = rl4_core::device::device_page(pa, device_page_list()).map_err(|e| match e {
        DevMemError::Misaligned => Error::Misaligned,
        DevMemError::NotDevice => Error::InvalidArgument,
    })?;
    if PAGE_TAKEN[i].compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return Err(Error::Busy);
    }
    // SAFETY: `device_page_list()[i]` is `pa` (checked just above), a page the firmware's
    // tables describe as a device's that is neither RAM, nor managed by the frame allocator,
    // nor a chip the kernel drives (`device_pages`); the claim just won means no other
    // `DeviceFrame` for it lives (one is made only here, after winning the claim, and the
    // claim ends only with `release_page`, which consumes it).
    let page = unsafe { DeviceFrame::new(device_page_list()[i]) };
    crate::obj::Frame::device(mem, page, i as u8).map_err(|(e, page)| {
        release_page(page, i as u8);
        e
    })
}


fn kernel_port(p: Ports) -> bool {
    KERNEL_PORTS.iter().chain(FIRMWARE_PORTS.get().into_iter().flatten()).any(|k| k.overlaps(p))
}

/// The object of the device capability in `slot` (of type `ty`), which must have `WRITE`: a copy
/// without it is for `CapIdentify` and copying only (before the sixteenth session no right was
/// asked for, so a narrowed copy could do everything the original could).
fn obj(t: &Thread, slot: u64, ty: ObjType) -> Result<KObj, Error> {
    Ok(t.task.caps.lock().lookup(slot, ty, Rights::WRITE)?.obj.clone())
}

fn irq_line(t: &Thread, slot: u64) -> Result<Arc<crate::irq::IrqLine>, Error> {
    match obj(t, slot, ObjType::Irq)? {
        KObj::Irq(l) => Ok(l),
        _ => Err(Error::WrongType),
    }
}

fn ports(t: &Thread, slot: u64) -> Result<Arc<IoPortObj>, Error> {
    match obj(t, slot, ObjType::IoPort)? {
        KObj::IoPort(p) => Ok(p),
        _ => Err(Error::WrongType),
    }
}

/// Puts a new capability (read, write and grant rights) into `slot`.
fn put(t: &Thread, slot: u64, obj: KObj) -> Result<(), Error> {
    t.task.insert_cap(slot, Cap::new(obj, Rights::READ.union(Rights::WRITE).union(Rights::GRANT), 0))
}

/// The device system calls (`Sys::IrqGet` ..= `Sys::DeviceMemGet`), arguments `a`.
pub fn syscall(t: &Arc<Thread>, s: Sys, a: [u64; 6]) -> Result<[u64; 3], Error> {
    match s {
        Sys::IrqGet => {
            obj(t, a[0], ObjType::Devices)?;
            t.task.caps.lock().check_free(a[2])?;
            let line = crate::irq::get(a[1])?;
            put(t, a[2], KObj::Irq(line))?;
        }
        Sys::IrqBind => {
            // Both capabilities read and the binding made in one hold of the table's lock, so
            // that a revocation (which deletes under it) comes wholly before or after: before
            // the thirty-sixth session the line's slot and the notification's were read in two
            // holds and the binding made after both, so a bind whose capability was revoked
            // in between answered success, and could replace the binding of the line's next
            // holder (a review found it).
            let old = {
                let caps = t.task.caps.lock();
                let KObj::Irq(line) = &caps.lookup(a[0], ObjType::Irq, Rights::WRITE)?.obj else {
                    return Err(Error::WrongType);
                };
                let c = caps.lookup(a[1], ObjType::Notification, Rights::SEND)?;
                let KObj::Notification(n) = &c.obj else {
                    return Err(Error::WrongType);
                };
                let badge = c.badge;
                // As `Signal`: a badged capability's interrupts signal its badge, whatever `bits`
                // says (a task holding an interrupt cannot use it to set other bits than its own).
                let bits = if badge != 0 { badge } else { a[2] };
                let cpu = if a[3] == IRQ_CPU_CALLER { rl4_arch::percpu::cpu_index() as u64 } else { a[3] };
                if !crate::sched::cpu_online(cpu) {
                    return Err(Error::InvalidCpu);
                }
                // The binding names both slots: `IrqAck` unbinds it once either no longer holds
                // its capability (deleted, revoked).
                let binder = crate::irq::Binder { task: Arc::downgrade(&t.task), slot: a[1], badge, line_slot: a[0] };
                crate::irq::bind(line, n, bits, cpu as usize, binder)?
            };
            // What the line held before, after the lock (it may be a last weak reference).
            drop(old);
        }
        Sys::IrqAck => crate::irq::ack(&*irq_line(t, a[0])?)?,
        Sys::IrqUnbind => crate::irq::unbind(&*irq_line(t, a[0])?),
        Sys::IoPortGet => {
            obj(t, a[0], ObjType::Devices)?;
            let p = Ports::new(a[1], a[2]).ok_or(Error::InvalidArgument)?;
            if kernel_port(p) {
                return Err(Error::Busy);
            }
            t.task.caps.lock().check_free(a[3])?;
            put(t, a[3], KObj::IoPort(IoPortObj::new(p, &t.task.space.memory)?))?;
        }
        Sys::DeviceMemGet => {
            obj(t, a[0], ObjType::Devices)?;
            t.task.caps.lock().check_free(a[2])?;
            let f = device_frame(&t.task.space.memory, a[1])?;
            // Never `EXECUTE`: `Map` refuses an executable mapping of it (`MissingRight`).
            put(t, a[2], KObj::Frame(f))?;
        }
        Sys::IoPortOpen | Sys::IoPortClose => {
            let p = ports(t, a[0])?;
            let (range, owner, sp) = (p.ports, p.owner(), &t.space);
            if s == Sys::IoPortOpen {
                sp.io.task.call_once(|| Arc::downgrade(&t.task));
                change(&sp.io, |set| {
                    p.note(sp)?;
                    // The table is read after the space is listed: a capability that left it
                    // since the look-up is seen here, or its leave sees the space listed and
                    // has it look again (`IoPortObj::left`).
                    if !holds(Some(&t.task), owner) {
                        if !open_through(set, owner) {
                            drop(p.unnote(Arc::as_ptr(sp)));
                        }
                        return Err(Error::EmptySlot);
                    }
                    match set.open.open(range, owner) {
                        Ok(i) => {
                            set.objs[i] = Arc::downgrade(&p);
                            Ok(((), [const { Weak::new() }; IO_RANGES]))
                        }
                        Err(_) => {
                            if !open_through(set, owner) {
                                drop(p.unnote(Arc::as_ptr(sp)));
                            }
                            Err(Error::Busy)
                        }
                    }
                })?;
            } else {
                change(&sp.io, |set| match set.open.close(range, owner) {
                    Some((i, free)) => {
                        if !open_through(set, owner) {
                            drop(p.unnote(Arc::as_ptr(sp)));
                        }
                        Ok(((), take_objs(set, if free { 1 << i } else { 0 })))
                    }
                    None => Err(Error::InvalidState),
                })?;
            }
            resync(sp, s == Sys::IoPortClose);
            // The object goes after its use (a capability deleted meanwhile on another CPU
            // leaves this reference the last: its destructor closes what was just opened).
            drop(p);
        }
        _ => return Err(Error::InvalidSyscall),
    }
    Ok([0; 3])
}
