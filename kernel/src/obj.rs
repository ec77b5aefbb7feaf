//! Kernel objects and what capabilities point at.
//!
//! | object | holds | dies when |
//! |---|---|---|
//! | [`Memory`] | an allocation budget in bytes, charged by every object and frame made from it | its last reference goes |
//! | [`Frame`] | one 4 KiB physical frame | no capability and no mapping refers to it; the frame returns to the allocator and the budget |
//! | [`Space`] | a page-table root sharing the kernel half, its PCID, the frames it maps | no capability and no thread refers to it; its page tables are freed |
//! | [`Task`] | a capability table, its threads | it exits (all threads stop, all capabilities are deleted) and nothing refers to it |
//! | [`Thread`] | user registers, scheduling state, its task and space | it exits or its task does, and nothing refers to it |
//! | `Machine` | console and shutdown rights | never (no state) |
//!
//! Objects are reference-counted (`Arc`); a capability, a mapping, a run queue entry or a
//! thread's link to its task each hold one reference. Cycles (a task holding a capability to
//! itself or to its threads) are broken when the task exits: its table is emptied.
use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use rl4_abi::{Error, ObjType};
use rl4_arch::entry::{RegsCell, UserRegs};
use rl4_core::captable::{self, CapTable};
use rl4_core::life::{Ident, Kinds};
use crate::lock::{GlobalMutex, Level, Mutex};

use crate::mem;

/// A capability's object.
#[derive(Clone)]
pub enum KObj {
    Task(Arc<Task>),
    Space(Arc<Space>),
    Thread(Arc<Thread>),
    Frame(Arc<Frame>),
    Memory(Arc<Memory>),
    Machine,
    Endpoint(Arc<crate::ipc::Endpoint>),
    Notification(Arc<crate::ipc::Notification>),
}

impl captable::Object for KObj {
    fn obj_type(&self) -> ObjType {
        match self {
            KObj::Task(_) => ObjType::Task,
            KObj::Space(_) => ObjType::AddressSpace,
            KObj::Thread(_) => ObjType::Thread,
            KObj::Frame(_) => ObjType::Frame,
            KObj::Memory(_) => ObjType::Memory,
            KObj::Machine => ObjType::Machine,
            KObj::Endpoint(_) => ObjType::Endpoint,
            KObj::Notification(_) => ObjType::Notification,
        }
    }
}

pub type Cap = captable::Cap<KObj>;

/// Every live object of one kind, as weak references, for the kernel's consistency check
/// (`check.rs`). Dead entries are pruned whenever the list has doubled since the last pruning,
/// so it stays within twice the live objects and adding is amortised O(1).
pub struct Registry<T> {
    list: GlobalMutex<(Vec<Weak<T>>, usize), { Level::OBJECT }>,
}

impl<T> Registry<T> {
    pub const fn new() -> Self {
        Registry { list: GlobalMutex::new(crate::count::Global::Registry, (Vec::new(), 0)) }
    }

    pub fn add(&self, a: &Arc<T>) {
        let mut l = self.list.lock();
        if l.0.len() >= 2 * l.1.max(32) {
            l.0.retain(|w| w.strong_count() > 0);
            l.1 = l.0.len();
        }
        l.0.push(Arc::downgrade(a));
    }

    /// A reference to every live object.
    pub fn live(&self) -> Vec<Arc<T>> {
        self.list.lock().0.iter().filter_map(Weak::upgrade).collect()
    }
}

pub static TASKS: Registry<Task> = Registry::new();
pub static SPACES: Registry<Space> = Registry::new();
pub static THREADS: Registry<Thread> = Registry::new();
pub static FRAMES: Registry<Frame> = Registry::new();
pub static MEMORIES: Registry<Memory> = Registry::new();
pub static ENDPOINTS: Registry<crate::ipc::Endpoint> = Registry::new();
pub static NOTIFICATIONS: Registry<crate::ipc::Notification> = Registry::new();

/// What each object costs its memory budget.
pub const THREAD_COST: u64 = 4096;
pub const TASK_COST: u64 = 3 * 4096;
/// The PML4 frame and the space's own record.
pub const SPACE_COST: u64 = 2 * 4096;
/// Bookkeeping of one mapping (page tables are charged as they are made).
pub const MAP_COST: u64 = 64;
pub const FRAME_COST: u64 = 4096;
pub const ENDPOINT_COST: u64 = 256;
pub const NOTIFICATION_COST: u64 = 256;

/// An allocation budget.
pub struct Memory {
    pub total: u64,
    used: AtomicU64,
}

impl Memory {
    pub fn new(total: u64) -> Arc<Memory> {
        let m = Arc::new(Memory { total, used: AtomicU64::new(0) });
        MEMORIES.add(&m);
        m
    }
    /// Bytes charged.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
    pub fn left(&self) -> u64 {
        self.total - self.used.load(Ordering::Relaxed)
    }
    /// Takes `bytes` from the budget.
    pub fn charge(&self, bytes: u64) -> Result<(), Error> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| u.checked_add(bytes).filter(|&n| n <= self.total))
            .map(|_| ())
            .map_err(|_| Error::OutOfMemory)
    }
    pub fn uncharge(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// A charge that is given back when dropped (so an object that fails half-way refunds).
pub struct Charge {
    mem: Arc<Memory>,
    bytes: u64,
}

impl Charge {
    pub fn new(mem: &Arc<Memory>, bytes: u64) -> Result<Charge, Error> {
        mem.charge(bytes)?;
        Ok(Charge { mem: mem.clone(), bytes })
    }
    /// The budget charged and how much.
    pub fn of(&self) -> (&Arc<Memory>, u64) {
        (&self.mem, self.bytes)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.mem.uncharge(self.bytes);
    }
}

/// One physical frame.
pub struct Frame {
    pub pa: u64,
    _charge: Charge,
}

impl Frame {
    /// A zeroed frame charged to `mem`.
    pub fn new(mem: &Arc<Memory>) -> Result<Arc<Frame>, Error> {
        let charge = Charge::new(mem, FRAME_COST)?;
        let pa = mem::alloc_frame().ok_or(Error::OutOfMemory)?;
        mem::zero_frame(pa);
        let f = Arc::new(Frame { pa, _charge: charge });
        FRAMES.add(&f);
        Ok(f)
    }
    pub fn charge(&self) -> &Charge {
        &self._charge
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        crate::reclaim::dropping("Frame");
        mem::free_frame(self.pa);
    }
}

/// A user address space.
pub struct Space {
    pub pml4: u64,
    pub pcid: u16,
    /// TLB generation (see `rl4_core::pcid`); bumped when a mapping is removed.
    pub generation: AtomicU64,
    /// Mapped frames by virtual page, with whether they are writable / executable.
    pub maps: Mutex<BTreeMap<u64, (Arc<Frame>, bool, bool)>, { Level::OBJECT }>,
    /// The budget it was made from: page tables and mappings are charged to it.
    pub memory: Arc<Memory>,
    /// Page-table frames made for it (charged, refunded when it dies).
    pub table_pages: AtomicU64,
    _charge: Charge,
}

impl Space {
    pub fn new(mem: &Arc<Memory>) -> Result<Arc<Space>, Error> {
        let charge = Charge::new(mem, SPACE_COST)?;
        let pml4 = rl4_arch::paging::new_user_space(&mut mem::Frames).map_err(|_| Error::OutOfMemory)?;
        let (pcid, generation) = crate::tlb::pcid_alloc();
        let s = Arc::new(Space {
            pml4,
            pcid,
            generation: AtomicU64::new(generation),
            maps: Mutex::new(BTreeMap::new()),
            memory: mem.clone(),
            table_pages: AtomicU64::new(0),
            _charge: charge,
        });
        SPACES.add(&s);
        Ok(s)
    }
    pub fn charge(&self) -> &Charge {
        &self._charge
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        crate::reclaim::dropping("Space");
        crate::tlb::forget_space(self.pml4);
        // The frames are released after the mappings' lock.
        let maps = core::mem::take(&mut *self.maps.lock());
        let mappings = maps.len() as u64;
        drop(maps);
        rl4_arch::paging::free_user_space(self.pml4, mem::free_frame);
        crate::tlb::pcid_free(self.pcid);
        let tables = self.table_pages.load(Ordering::Relaxed);
        self.memory.uncharge(tables * 4096 + mappings * MAP_COST);
    }
}

/// A task: a capability table and the threads that use it.
pub struct Task {
    pub id: u64,
    pub caps: Mutex<CapTable<KObj>, { Level::OBJECT }>,
    pub threads: Mutex<Vec<Weak<Thread>>, { Level::TASK_THREADS }>,
    pub space: Arc<Space>,
    pub dead: AtomicBool,
    _charge: Charge,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

impl Task {
    pub fn new(mem: &Arc<Memory>, space: Arc<Space>) -> Result<Arc<Task>, Error> {
        let charge = Charge::new(mem, TASK_COST)?;
        let t = Arc::new(Task {
            id: next_id(),
            caps: Mutex::new(CapTable::new(rl4_abi::CAP_SLOTS as usize)),
            threads: Mutex::new(Vec::new()),
            space,
            dead: AtomicBool::new(false),
            _charge: charge,
        });
        TASKS.add(&t);
        Ok(t)
    }
    pub fn charge(&self) -> &Charge {
        &self._charge
    }

    /// Puts `cap` into `slot` of this task's table, unless the task has ended: `kill_task`
    /// marks it dead before it empties the table, and this checks under the table's lock, so
    /// no capability can slip into a table after it was emptied (it would never be freed).
    pub fn insert_cap(&self, slot: u64, cap: Cap) -> Result<(), Error> {
        // A refused capability is dropped here, after the table's lock.
        self.insert_cap_or_return(slot, cap).map_err(|(e, _cap)| e)
    }

    /// [`Task::insert_cap`], handing a refused capability back (to drop after the caller's
    /// locks).
    pub fn insert_cap_or_return(&self, slot: u64, cap: Cap) -> Result<(), (Error, Cap)> {
        let mut caps = self.caps.lock();
        if self.dead.load(Ordering::Acquire) {
            return Err((Error::InvalidState, cap));
        }
        if let Err(e) = caps.check_free(slot) {
            return Err((e, cap));
        }
        caps.insert(slot, cap).map_err(|_| unreachable!("checked free"))
    }
}

/// What a thread's [`Life`] names: the kernel's references to endpoints, notifications,
/// capabilities in flight and callers.
pub struct KernelKinds;

/// A blocked thread's endpoint (weak: a waiter does not keep its endpoint alive).
pub struct EpRef(pub Weak<crate::ipc::Endpoint>);
/// A blocked thread's notification.
pub struct NtfRef(pub Weak<crate::ipc::Notification>);

impl Ident for EpRef {
    fn ident(&self) -> usize {
        self.0.as_ptr() as usize
    }
}
impl Ident for NtfRef {
    fn ident(&self) -> usize {
        self.0.as_ptr() as usize
    }
}

impl Kinds for KernelKinds {
    type Ep = EpRef;
    type Ntf = NtfRef;
    type Cap = Cap;
    type Caller = Arc<Thread>;
}

/// A thread's life as the kernel keeps it (see `rl4_core::life`).
pub type Life = rl4_core::life::Life<KernelKinds>;
pub type Wait = rl4_core::life::Wait<KernelKinds>;

/// Drops a wait that ended, inline (the enum's out-of-line drop glue costs the fast path a call
/// and a dozen instructions; a reply wait owns nothing). No lock may be held: a capability in
/// flight can be the last reference to an object.
#[inline(always)]
pub fn dispose(w: Wait) {
    if let rl4_core::life::Wait::Reply { .. } = &w {
        core::mem::forget(w);
        return;
    }
    match w {
        rl4_core::life::Wait::Recv { ep } => drop(ep),
        rl4_core::life::Wait::Notify { n } => drop(n),
        send => crate::reclaim::later_wait(Some(send)),
    }
}

pub struct Thread {
    pub regs: RegsCell,
    /// Its FPU/SIMD registers while it does not run (saved and restored by `thread::fpu_leave`
    /// and `thread::fpu_enter` at every switch).
    pub fpu: rl4_arch::fpu::FpuState,
    /// The IPC buffer frame (message words 4 and up), a leaf lock.
    pub ipc_buffer: Mutex<Option<Arc<Frame>>, { Level::OBJECT }>,
    pub id: u64,
    pub task: Arc<Task>,
    pub space: Arc<Space>,
    /// Its state, place, scheduling parameters and reply right: every change is a transition
    /// of [`Life`], made under this lock.
    pub life: Mutex<Life, { Level::THREAD }>,
    /// Its link in a CPU's inbox (`rl4_core::mailbox`), used while its `Life` says
    /// `Place::Queued` and it was pushed there.
    pub mail: rl4_core::mailbox::Link<Thread>,
    _charge: Charge,
}

// SAFETY: `link` returns the thread's own `mail` field, the same one at every call, which lives
// as long as the thread.
#[allow(unsafe_code)]
unsafe impl rl4_core::mailbox::Linked for Thread {
    fn link(&self) -> &rl4_core::mailbox::Link<Thread> {
        &self.mail
    }
}

pub static LIVE_THREADS: AtomicU64 = AtomicU64::new(0);

/// What a thread costs its budget: [`THREAD_COST`] and its FPU save area, whose size comes from
/// CPUID (`stat::THREAD_BYTES`).
pub fn thread_bytes() -> u64 {
    THREAD_COST + rl4_arch::fpu::area_bytes()
}

impl Thread {
    pub fn new(mem: &Arc<Memory>, task: Arc<Task>, entry: u64, stack: u64, prio: u8, cpu: u32) -> Result<Arc<Thread>, Error> {
        let charge = Charge::new(mem, thread_bytes())?;
        let fpu = rl4_arch::fpu::FpuState::new().ok_or(Error::OutOfMemory)?;
        let space = task.space.clone();
        let t = Arc::new(Thread {
            regs: RegsCell::new(UserRegs::new_thread(entry, stack, 0)),
            fpu,
            ipc_buffer: Mutex::new(None),
            id: next_id(),
            task: task.clone(),
            space,
            life: Mutex::new(Life::new(prio, cpu)),
            mail: rl4_core::mailbox::Link::new(),
            _charge: charge,
        });
        LIVE_THREADS.fetch_add(1, Ordering::Relaxed);
        {
            // Checked under the list's lock, which `kill_task` takes after marking the task
            // dead: a thread is either in the list it drains or never made.
            let mut list = task.threads.lock();
            if task.dead.load(Ordering::Acquire) {
                return Err(Error::InvalidState);
            }
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(&t));
        }
        THREADS.add(&t);
        Ok(t)
    }
    pub fn charge(&self) -> &Charge {
        &self._charge
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        crate::reclaim::dropping("Thread");
        // A thread destroyed while it still holds a reply right (suspended after it received a
        // call, then its last capability deleted): that caller gets `PartnerGone`, never a wait
        // that nobody can end.
        if let Some((caller, ticket)) = self.life.get_mut().take_reply() {
            crate::thread::fail_caller(caller, ticket);
        }
        LIVE_THREADS.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        crate::reclaim::dropping("Task");
    }
}
