//! System calls: argument checks, capability look-ups, and the operations on kernel objects.
//!
//! Every argument a user passes is checked before anything changes; a failed check returns an
//! `rl4_abi::Error` code in `rax`, never a panic. See `docs/syscalls.md`.
use alloc::sync::Arc;
use rl4_abi::{CONSOLE_WRITE_MAX, Error, MAX_PRIORITY, ObjType, PAGE_SIZE, Rights, Sys, ThreadState, USER_END, stat};
use rl4_arch::entry::UserRegs;
use rl4_arch::{cpu, percpu, println};
use rl4_smp::cpus;

use crate::ipc::{self, Endpoint, Notification, Outcome};
use crate::obj::{Cap, Frame, KObj, LIVE_THREADS, Memory, Space, Task, Thread};
use crate::{mem, sched, thread, trace};

type Ret = Result<[u64; 3], Error>;

/// What follows a system call handled by [`handle`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The scheduler decides what runs: after an IPC call that did not switch directly, after
    /// a call that can change what this CPU should run ([`may_reschedule`]), or when something
    /// is pending for this CPU ([`sched::resched_pending`]).
    Decide,
    /// The CPU switched to another thread directly.
    Switched,
    /// The caller goes on, with only its result registers written (`Null`, `CapIdentify`...).
    Same,
}

/// Handles the current thread's system call `n` and writes the results into its registers.
#[inline(always)]
pub fn handle(n: u64) -> Next {
    // The IPC calls are numbered together but for `Signal` (checked below): two compares.
    if n.wrapping_sub(IPC_FIRST) <= IPC_LAST - IPC_FIRST && n != Sys::Signal as u64 {
        return handle_ipc(n);
    }
    // The others read their number and six arguments. No reference is taken on the running
    // thread: these calls never change this CPU's current slot (only a scheduling decision or
    // an IPC switch does, and neither happens in `dispatch`).
    // Failure injection (`failalloc=`) covers the call's own work, not the destruction below.
    let more = sched::with_current(|t| mem::in_call(t.task.id, || dispatch_into(t, n)));
    crate::reclaim::drain();
    if more.is_none() || may_reschedule(n) || sched::resched_pending() { Next::Decide } else { Next::Same }
}

const IPC_FIRST: u64 = Sys::Send as u64;
const IPC_LAST: u64 = Sys::Wait as u64;
const _: () = {
    let mut i = 0;
    while i < Sys::ALL.len() {
        let n = Sys::ALL[i] as u64;
        let ipc = n >= IPC_FIRST && n <= IPC_LAST && n != Sys::Signal as u64;
        assert!(ipc == is_ipc(Sys::ALL[i]));
        i += 1;
    }
};

/// The IPC calls (out of line: the entry's own function stays small for the other calls and
/// the fast path).
#[inline(never)]
fn handle_ipc(n: u64) -> Next {
    let Ok(s) = Sys::try_from(n) else { return Next::Decide };
    let Some(t) = sched::current() else { return Next::Decide };
    // A task whose first endpoint capability arrived by IPC (under locks) gets its table's
    // shadow at its first call on an endpoint that could take the fast path, once, before any
    // lock (see `Task::insert_cap_or_return`); a task that holds no endpoint is not charged
    // for one. A try refused (the budget, or the kernel's headroom, short) is not made again
    // for a tick (10 ms): before the thirty-fifth session every call tried again, and took the
    // allocator's lock, which every CPU takes (a review found it).
    if matches!(s, Sys::Call | Sys::ReplyRecv) && t.task.shadow.get().is_none() {
        let now = rl4_arch::cpu::rdtsc();
        if now >= t.task.shadow_retry.load(core::sync::atomic::Ordering::Relaxed) {
            let slot = t.regs.with(|r| r.ipc_in().0);
            let endpoint = t.task.caps.lock().lookup(slot, ObjType::Endpoint, Rights::NONE).is_ok();
            if endpoint {
                t.task.make_shadow_now_and_then(now);
            }
        }
    }
    // The IPC calls need the whole register block (a copy: delivering a message may rewrite the
    // caller's own registers).
    let res = match mem::in_call(t.task.id, || ipc_call(&t, &t.regs.get(), s)) {
        Outcome::Return(res) => res,
        Outcome::Received => return Next::Decide,
        Outcome::Blocked if sched::switched_directly(&t) => return Next::Switched,
        Outcome::Blocked => return Next::Decide,
    };
    set_results(&t, res);
    Next::Decide
}

/// Writes a system call's results into the calling thread's registers.
#[inline(always)]
fn set_results(t: &Thread, res: Ret) {
    t.regs.with(|regs| match res {
        Ok(r) => regs.set_results(r),
        Err(e) => regs.set_result(e as u64),
    });
}

/// The calls that can change what the calling CPU should run other than by making a thread
/// runnable (which [`sched::resched_pending`] sees): the caller yields, ends, stops, or changes
/// its own priority or CPU. One bit per call number.
const MAY_RESCHEDULE: u64 = 1 << Sys::Yield as u64
    | 1 << Sys::ThreadSuspend as u64
    | 1 << Sys::ThreadSetPriority as u64
    | 1 << Sys::ThreadSetAffinity as u64
    | 1 << Sys::ThreadExit as u64
    | 1 << Sys::TaskExit as u64
    | 1 << Sys::TaskKill as u64;

#[inline(always)]
fn may_reschedule(n: u64) -> bool {
    n < 64 && MAY_RESCHEDULE >> n & 1 != 0
}

const fn is_ipc(s: Sys) -> bool {
    matches!(s, Sys::Send | Sys::NbSend | Sys::Call | Sys::Recv | Sys::NbRecv | Sys::Reply | Sys::ReplyRecv | Sys::Wait)
}

/// The endpoint in `slot`, with the capability's badge and rights.
pub(crate) fn endpoint(task: &Task, slot: u64, rights: Rights) -> Result<(Arc<Endpoint>, u64, Rights), Error> {
    let caps = task.caps.lock();
    let c = caps.lookup(slot, ObjType::Endpoint, rights)?;
    match &c.obj {
        KObj::Endpoint(e) => Ok((e.clone(), c.badge, c.rights)),
        _ => unreachable!("type checked"),
    }
}

/// A send's capability reads, under one acquisition of the table's lock: the endpoint in `rdi`
/// (with its badge and rights) and, if the tag carries a capability, a snapshot of the slot in
/// `r13` (or the error reading it gave, which `ipc::send` reports after its own checks of the
/// tag and the endpoint's `GRANT`).
type SendCaps = (Arc<Endpoint>, u64, Rights, Option<Result<Snapshot, Error>>);

fn send_caps(task: &Arc<Task>, r: &UserRegs) -> Result<SendCaps, Error> {
    let caps = task.caps.lock();
    let c = caps.lookup(r.ipc_slot(), ObjType::Endpoint, Rights::SEND)?;
    let KObj::Endpoint(e) = &c.obj else { return Err(Error::WrongType) };
    let xfer = if rl4_abi::ipc::Tag(r.ipc_tag()).caps() == 1 { Some(caps.get(r.ipc_send_slot()).cloned()) } else { None };
    let read = (e.clone(), c.badge, c.rights);
    drop(caps);
    // The capability sent becomes a child of the one in the slot when it is delivered
    // (an original gets its derivation tree now, the first time something comes from it).
    // Not one `send` refuses whatever happens: without `GRANT`, sent through an endpoint
    // capability without `GRANT`, or with a tag `send` refuses (no root node is made, and
    // charged, for a send that cannot carry it).
    // (The tag is looked at here only when a capability goes: `send` checks it anyway. Not the
    // sender's IPC buffer, which another thread may set or unmap before `send` looks: a
    // snapshot let through untracked here and sent all the same was delivered as an original
    // of the receiver's, out of its sender's revocation — a review found the race.)
    let may_carry = |cap: &Cap| {
        cap.rights.contains(Rights::GRANT) && read.2.contains(Rights::GRANT) && crate::ipc::tag_valid(rl4_abi::ipc::Tag(r.ipc_tag()))
    };
    let xfer = xfer.map(|x| x.and_then(|cap| if may_carry(&cap) { crate::obj::tracked(task, r.ipc_send_slot(), cap) } else { Ok(cap) }));
    Ok((read.0, read.1, read.2, xfer))
}

fn notification(task: &Task, slot: u64, rights: Rights) -> Result<(Arc<Notification>, u64), Error> {
    let caps = task.caps.lock();
    let c = caps.lookup(slot, ObjType::Notification, rights)?;
    match &c.obj {
        KObj::Notification(n) => Ok((n.clone(), c.badge)),
        _ => unreachable!("type checked"),
    }
}

/// The IPC calls: `rdi` = endpoint (or notification) slot, timeout in `r12`.
fn ipc_call(t: &Arc<Thread>, r: &UserRegs, s: Sys) -> Outcome {
    let task = &t.task;
    let timeout = r.ipc_timeout();
    let res = (|| -> Result<Outcome, Error> {
        Ok(match s {
            Sys::Send | Sys::NbSend | Sys::Call => {
                trace::stamp(trace::SETUP);
                let (ep, badge, rights, xfer) = send_caps(task, r)?;
                trace::stamp(trace::LOOKUP);
                let timeout = if s == Sys::NbSend { 0 } else { timeout };
                ipc::send(t, r, &ep, badge, rights.contains(Rights::GRANT), xfer, s == Sys::Call, timeout)
            }
            Sys::Recv | Sys::NbRecv => {
                let (ep, _, _) = endpoint(task, r.ipc_slot(), Rights::RECEIVE)?;
                ipc::recv(t, &ep, if s == Sys::NbRecv { 0 } else { timeout }, None)
            }
            Sys::Reply => {
                ipc::reply(t, r, false)?;
                Outcome::Return(Ok([0; 3]))
            }
            Sys::ReplyRecv => {
                trace::stamp(trace::SETUP);
                let (ep, _, _) = endpoint(task, r.ipc_slot(), Rights::RECEIVE)?;
                trace::stamp(trace::LOOKUP);
                // A missing caller is not an error for the server loop's first round, and a
                // reply the kernel could not resume a faulted caller with stopped that caller
                // (`BadFaultReply` to a plain `Reply`): the server receives all the same. A
                // client may make any endpoint it can send to its fault handler, so a server
                // that echoes what it receives answers a fault as a reply like any other; its
                // loop must not end there (a review found `ReplyRecv` failing without
                // receiving, and the library's loop stopping for every client).
                let woken = match ipc::reply(t, r, true) {
                    Ok(w) => w,
                    Err(Error::NoCaller) | Err(Error::PartnerGone) | Err(Error::BadFaultReply) => None,
                    Err(e) => return Err(e),
                };
                ipc::recv(t, &ep, timeout, woken)
            }
            Sys::Wait => {
                let (n, _) = notification(task, r.ipc_slot(), Rights::RECEIVE)?;
                ipc::wait(t, &n, timeout)
            }
            _ => unreachable!("is_ipc"),
        })
    })();
    res.unwrap_or_else(|e| Outcome::Return(Err(e)))
}

/// One read of a capability slot: its object, type (the object's), rights and badge, cloned
/// under one acquisition of the table's lock. A system call reads each slot it uses once, into
/// a snapshot or straight into the object it needs, and makes every check and effect from
/// what it read: another thread of the task may change the slot meanwhile (delete it, fill
/// it with something else), and a second read would see that. Slots read together (a
/// source and a destination task, a space and a frame) are read under one acquisition.
type Snapshot = Cap;

/// A snapshot of `slot`, checked to hold a `ty` with at least `rights`.
fn snapshot(task: &Task, slot: u64, ty: ObjType, rights: Rights) -> Result<Snapshot, Error> {
    task.caps.lock().lookup(slot, ty, rights).cloned()
}

fn lookup(task: &Task, slot: u64, ty: ObjType, rights: Rights) -> Result<KObj, Error> {
    Ok(task.caps.lock().lookup(slot, ty, rights)?.obj.clone())
}

fn memory(task: &Task, slot: u64) -> Result<Arc<Memory>, Error> {
    match lookup(task, slot, ObjType::Memory, Rights::ALLOCATE)? {
        KObj::Memory(m) => Ok(m),
        _ => unreachable!("type checked"),
    }
}

fn task_obj(task: &Task, slot: u64, rights: Rights) -> Result<Arc<Task>, Error> {
    match lookup(task, slot, ObjType::Task, rights)? {
        KObj::Task(t) => Ok(t),
        _ => unreachable!("type checked"),
    }
}

fn thread_obj(task: &Task, slot: u64, rights: Rights) -> Result<Arc<Thread>, Error> {
    match lookup(task, slot, ObjType::Thread, rights)? {
        KObj::Thread(t) => Ok(t),
        _ => unreachable!("type checked"),
    }
}

fn space_obj(task: &Task, slot: u64, rights: Rights) -> Result<Arc<Space>, Error> {
    match lookup(task, slot, ObjType::AddressSpace, rights)? {
        KObj::Space(s) => Ok(s),
        _ => unreachable!("type checked"),
    }
}

/// `CapCopy`'s and `CapMint`'s reads, under one acquisition of the table's lock: the
/// destination task in `dst_slot` (`WRITE`), the copy of the capability in `src` limited to
/// `mask`, and the source's own rights (for the `GRANT` check).
fn copy_source(task: &Task, src: u64, dst_slot: u64, mask: u64) -> Result<(Arc<Task>, Cap, Rights), Error> {
    let caps = task.caps.lock();
    let KObj::Task(dst) = &caps.lookup(dst_slot, ObjType::Task, Rights::WRITE)?.obj else {
        return Err(Error::WrongType);
    };
    let cap = caps.derive(src, mask)?;
    let orig = caps.get(src)?.rights;
    Ok((dst.clone(), cap, orig))
}

fn put(task: &Arc<Task>, slot: u64, obj: KObj, rights: Rights) -> Result<(), Error> {
    task.insert_cap(slot, Cap::new(obj, rights, 0))
}

fn check_cpu(cpu: u64) -> Result<u32, Error> {
    if sched::cpu_online(cpu) { Ok(cpu as u32) } else { Err(Error::InvalidCpu) }
}

/// Highest user address a mapping may cover: the last page of the lower half stays unmapped,
/// so a `syscall` can never return to a non-canonical address.
const MAP_LIMIT: u64 = USER_END - PAGE_SIZE;

/// The page-table frames a mapping needs in a space, charged to the space's budget and taken
/// before its tables are touched ([`ChargedTables::stock`]), so that a mapping refused for
/// lack of memory leaves no table behind. (Before the thirty-first session each table was
/// charged and taken as the walk made it, and a walk that could not have the second or third
/// left the ones before it linked and charged until the space ended, which the promise that a
/// failed call changes nothing did not allow: a review of docs/security.md found it.)
struct ChargedTables<'a> {
    space: &'a Space,
    stock: [Option<rl4_core::frames::OwnedFrame>; 3],
}

impl<'a> ChargedTables<'a> {
    /// `n` (at most 3) frames for new tables, each charged; none if one cannot be had.
    fn stock(space: &'a Space, n: usize) -> Result<Self, Error> {
        let mut t = ChargedTables { space, stock: [None, None, None] };
        for i in 0..n.min(3) {
            let f = match space.memory.charge(PAGE_SIZE) {
                Ok(()) => mem::alloc_user_frame(),
                Err(e) => {
                    t.give_back();
                    return Err(e);
                }
            };
            match f {
                Some(f) => t.stock[i] = Some(f),
                None => {
                    space.memory.uncharge(PAGE_SIZE);
                    t.give_back();
                    return Err(Error::OutOfMemory);
                }
            }
        }
        Ok(t)
    }

    /// Frees what the walk did not use, and takes its charge back.
    fn give_back(mut self) {
        for f in self.stock.iter_mut().filter_map(Option::take) {
            self.space.memory.uncharge(PAGE_SIZE);
            mem::free_frame(f);
        }
    }
}

impl rl4_arch::paging::FrameSource for ChargedTables<'_> {
    fn alloc_frame(&mut self) -> Option<rl4_core::frames::OwnedFrame> {
        let f = self.stock.iter_mut().find_map(Option::take)?;
        self.space.table_pages.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        Some(f)
    }
}

/// Maps `frame` at `va` in `space` (checked by the caller). The mapping's bookkeeping and any
/// page tables it needs are charged to the space's budget.
pub fn map_frame(space: &Space, va: u64, frame: Arc<Frame>, write: bool, exec: bool) -> Result<(), Error> {
    let mut maps = space.maps.lock();
    // Its task died: nothing would ever use the mapping, and it would keep the frame.
    if !space.may_map(&maps) {
        return Err(Error::InvalidState);
    }
    if maps.contains_key(&va) {
        return Err(Error::AlreadyMapped);
    }
    space.memory.charge(crate::obj::MAP_COST)?;
    // The B-tree's nodes for the insertion below, which cannot fail then (`mem::MapNodes`).
    if let Err(e) = mem::stock_map_nodes(maps.len()) {
        space.memory.uncharge(crate::obj::MAP_COST);
        return Err(e);
    }
    // SAFETY: `maps`, this space's lock of its tables, is held (above) until the mapping is made.
    #[allow(unsafe_code)]
    let need = unsafe { rl4_arch::paging::tables_missing(&space.pml4, va) };
    let mut tables = match ChargedTables::stock(space, need) {
        Ok(t) => t,
        Err(e) => {
            space.memory.uncharge(crate::obj::MAP_COST);
            return Err(e);
        }
    };
    // SAFETY: as above.
    #[allow(unsafe_code)]
    let r = unsafe { rl4_arch::paging::map_user(&mut tables, &space.pml4, va, frame.user_frame(), write, exec) };
    tables.give_back();
    // (`OutOfMemory` cannot come from the walk now, which draws only on the tables stocked for
    // what `tables_missing` counted; were it to, the tables linked before would stay, charged.)
    if let Err(e) = r {
        space.memory.uncharge(crate::obj::MAP_COST);
        return Err(match e {
            rl4_arch::paging::MapError::Overlap(_) => Error::AlreadyMapped,
            _ => Error::OutOfMemory,
        });
    }
    // Its nodes come from the stock filled above.
    maps.insert(va, (frame, write, exec));
    mem::trim_map_nodes();
    crate::obj::mapped(true);
    // An `Unmap` of this space that has not finished its shoot-down (of this page, it may be:
    // another CPU may still reach the old frame through it) is waited for by shooting down
    // the space here (before the thirty-fourth session the mapping was said to be made while
    // another CPU of the task could still write to the frame unmapped: a review found it).
    let unmapping = space.unmapping.load(core::sync::atomic::Ordering::Relaxed) != 0;
    drop(maps);
    if unmapping {
        crate::tlb::flush_space(space);
    }
    Ok(())
}

/// The 200 ms a test's window takes (`inject=slowunmap`: between an `Unmap`'s change of the
/// page tables and its shoot-down; `inject=slowcopy`: between finding a long message's sender
/// buffer and reading it; `inject=slowack`: between an `IrqAck`'s finding its binding lapsed
/// and its ending it; `inject=slowfault`: between a user fault without a handler and its
/// thread's stop), answering other CPUs' shoot-downs meanwhile.
#[cold]
pub(crate) fn injected_window() {
    let end = rl4_arch::cpu::rdtsc().saturating_add(rl4_arch::time::us_to_ticks(200_000));
    while rl4_arch::cpu::rdtsc() < end {
        crate::tlb::service_tlb_here();
        core::hint::spin_loop();
    }
}

fn check_page(va: u64) -> Result<(), Error> {
    if va >= MAP_LIMIT {
        return Err(Error::InvalidAddress);
    }
    if va % PAGE_SIZE != 0 {
        return Err(Error::Misaligned);
    }
    Ok(())
}

/// `ConsoleWrite` by task `task`, out of line: its buffer would otherwise make every system
/// call's stack frame a page larger. Every line is printed as `[cpuN task T] text`: a task
/// cannot print a line the kernel (`[cpuN] `) or another task would have printed.
#[inline(never)]
fn console_write(task: u64, buf_addr: u64, len: u64) -> Ret {
    if len > CONSOLE_WRITE_MAX {
        return Err(Error::InvalidArgument);
    }
    let mut buf = [0u8; CONSOLE_WRITE_MAX as usize];
    let buf = &mut buf[..len as usize];
    rl4_arch::entry::copy_from_user(buf, buf_addr).map_err(|_| Error::Fault)?;
    // Bytes that are not UTF-8 are dropped: an invalid sequence at the start is taken (and
    // nothing printed) by itself, so that the caller's next call prints what follows it.
    let text = match core::str::from_utf8(buf) {
        Ok(s) => s,
        Err(e) if e.valid_up_to() == 0 => return Ok([e.error_len().unwrap_or(buf.len()) as u64, 0, 0]),
        Err(e) => core::str::from_utf8(&buf[..e.valid_up_to()]).unwrap_or(""),
    };
    // A bounded amount of output per call (`rl4_core::conout`: the console is written with
    // interrupts off); the caller writes the rest with its next call. The prefix counted is
    // the one `print_user_line` writes, `[cpuN task T] `.
    let digits = |x: u64| x.checked_ilog10().unwrap_or(0) as usize + 1;
    // (And the `\r` the console writes before each line end.)
    let prefix = "[cpu task ] ".len() + digits(rl4_arch::percpu::cpu_index() as u64) + digits(task) + 1;
    let used = rl4_core::conout::take_lines(text, rl4_core::conout::OUTPUT_MAX, prefix, |line| {
        // Waiting for the console, and after every 8 bytes it writes (interrupts off), this
        // CPU answers TLB shoot-downs: a task's output holds up an `Unmap` elsewhere by 8 bytes
        // (0.7 ms of a 115,200-baud UART), not by its kilobyte. (A CPU waiting to print a
        // kernel line does not answer them: kernel lines are few and rate-limited.)
        rl4_arch::console::print_user_line(task, line, crate::tlb::service_tlb_here)
    });
    // An invalid sequence after valid text is left for the next call (which drops it).
    Ok([used as u64, 0, 0])
}

/// Every system call but IPC, from and into the caller's registers.
#[inline(never)]
fn dispatch_into(t: &Arc<Thread>, n: u64) {
    let a = t.regs.with(|r| r.syscall_args());
    set_results(t, dispatch(t, n, a));
}

/// Whether a system call may allocate kernel memory (an object, a capability's derivation
/// node, a mapping's entry or page tables): such a call first checks that the kernel has the
/// frames for it (`mem::headroom`). Its allocations are fallible (an `OutOfMemory` answer) but
/// for the few bounded ones (`mem::must_not_fail`), which these frames serve (docs/memory.md,
/// "Allocation failure injection").
fn allocates(s: Sys) -> bool {
    matches!(
        s,
        Sys::CapCopy
            | Sys::CapMint
            | Sys::TaskCreate
            | Sys::TaskAddressSpace
            | Sys::FrameAlloc
            | Sys::Map
            | Sys::ThreadCreate
            | Sys::EndpointCreate
            | Sys::NotificationCreate
            | Sys::IrqGet
            | Sys::IoPortGet
            | Sys::IoPortOpen
            | Sys::DeviceMemGet
    )
}

/// Every system call but IPC: number `n`, arguments `a` (`rdi`, `rsi`, `rdx`, `r10`, `r8`, `r9`).
#[inline(always)]
fn dispatch(t: &Arc<Thread>, n: u64, a: [u64; 6]) -> Ret {
    let sys = Sys::try_from(n).map_err(|_| Error::InvalidSyscall)?;
    let [a0, a1, a2, a3, a4, a5] = a;
    let task = &t.task;
    if allocates(sys) {
        mem::headroom()?;
    }
    match sys {
        Sys::Null => Ok([0; 3]),
        Sys::ConsoleWrite => {
            lookup(task, a0, ObjType::Machine, Rights::CONSOLE)?;
            console_write(task.id, a1, a2)
        }
        Sys::Yield => {
            sched::yield_current();
            Ok([0; 3])
        }
        Sys::CapCopy => {
            let (dst, cap, orig) = copy_source(task, a0, a1, a3)?;
            if !Arc::ptr_eq(&dst, task) && !orig.contains(Rights::GRANT) {
                return Err(Error::MissingRight);
            }
            // The destination's refusals come before the source gets a derivation tree (a
            // failed copy leaves no charged root node behind).
            dst.may_insert(a2)?;
            let cap = crate::obj::tracked(task, a0, cap)?;
            dst.insert_cap(a2, cap)?;
            Ok([0; 3])
        }
        Sys::CapDelete => {
            let _ = crate::qsbr::throttle();
            let c = task.caps.lock().remove(a0)?;
            drop(c);
            Ok([0; 3])
        }
        Sys::CapRevoke => Ok([crate::obj::revoke(task, a0)?, 0, 0]),
        Sys::EndpointCancelBadged => {
            // Badge 0 is "no badge": every unbadged sender's, not a client's to retire.
            if a1 == 0 {
                return Err(Error::InvalidArgument);
            }
            let (ep, _, _) = endpoint(task, a0, Rights::RECEIVE)?;
            let n = crate::ipc::cancel_badged(&ep, a1);
            crate::reclaim::later(crate::reclaim::Garbage::Ep(ep));
            Ok([n, 0, 0])
        }
        Sys::CapIdentify => {
            let caps = task.caps.lock();
            let c = caps.get(a0)?;
            use rl4_core::captable::Object;
            Ok([c.obj.obj_type() as u64, c.rights.0, c.badge])
        }
        Sys::TaskCreate => {
            let m = memory(task, a0)?;
            task.caps.lock().check_free(a1)?;
            let space = Space::new(&m)?;
            // The caller's end looks for children while it has some (`Task::new` counts the
            // child before it is registered); a child registered after its end's walk finds
            // it ended here (both orders are sequentially consistent: one of the two sees the
            // other).
            let nt = Task::new(&m, space, Some(task.clone()))?;
            if task.dead.load(core::sync::atomic::Ordering::SeqCst) {
                return Err(Error::InvalidState);
            }
            // While some task's end walks for its descendants, no descendant of an ended task
            // may add one ([`ancestry_refusal`]).
            if CASCADES.load(core::sync::atomic::Ordering::SeqCst) > 0 {
                ancestry_refusal(task)?;
            }
            put(task, a1, KObj::Task(nt), Rights::ALL)?;
            Ok([0; 3])
        }
        Sys::TaskAddressSpace => {
            // The new capability's rights are those of the task capability that was checked:
            // one snapshot for both.
            // It is derived from the task capability: revoking that takes it back too.
            let snap = snapshot(task, a0, ObjType::Task, Rights::READ)?;
            let KObj::Task(other) = &snap.obj else { return Err(Error::WrongType) };
            let space = other.space.clone();
            task.may_insert(a1)?;
            let parent = crate::obj::tracked(task, a0, snap)?;
            task.insert_cap(a1, Cap { obj: KObj::Space(space), rights: parent.rights, badge: 0, link: parent.link.clone() })?;
            Ok([0; 3])
        }
        Sys::FrameAlloc => {
            let m = memory(task, a0)?;
            task.caps.lock().check_free(a1)?;
            let f = Frame::new(&m)?;
            put(task, a1, KObj::Frame(f), Rights::READ.union(Rights::WRITE).union(Rights::EXECUTE).union(Rights::GRANT))?;
            Ok([0; 3])
        }
        Sys::Map => {
            let (space, frame, frights) = {
                let caps = task.caps.lock();
                let KObj::Space(space) = &caps.lookup(a0, ObjType::AddressSpace, Rights::WRITE)?.obj else {
                    return Err(Error::WrongType);
                };
                let f = caps.lookup(a1, ObjType::Frame, Rights::NONE)?;
                let KObj::Frame(frame) = &f.obj else { return Err(Error::WrongType) };
                (space.clone(), frame.clone(), f.rights)
            };
            let rwx = Rights::READ.union(Rights::WRITE).union(Rights::EXECUTE);
            if !Rights::is_valid(a3) || Rights(a3).intersect(rwx) != Rights(a3) || !Rights(a3).contains(Rights::READ) {
                return Err(Error::InvalidArgument);
            }
            if !frights.contains(Rights(a3)) {
                return Err(Error::MissingRight);
            }
            check_page(a2)?;
            map_frame(&space, a2, frame, Rights(a3).contains(Rights::WRITE), Rights(a3).contains(Rights::EXECUTE))?;
            Ok([0; 3])
        }
        Sys::Unmap => {
            let space = space_obj(task, a0, Rights::WRITE)?;
            check_page(a1)?;
            // The page tables change under the space's lock, as `map_frame`'s do (another CPU
            // may be mapping into the same table, or emptying the space of a task that died).
            use core::sync::atomic::Ordering::Relaxed;
            let old = {
                let mut maps = space.maps.lock();
                match maps.remove(&a1) {
                    Some(old) => {
                        // SAFETY: under `maps`, the space's lock of its tables.
                        #[allow(unsafe_code)]
                        unsafe {
                            rl4_arch::paging::unmap_user(&space.pml4, a1)
                        };
                        space.unmapping.fetch_add(1, Relaxed);
                        Ok(old)
                    }
                    // Not mapped, perhaps by another `Unmap` whose shoot-down has not ended:
                    // then it is waited for as `map_frame` does, before the answer.
                    None => Err(space.unmapping.load(Relaxed) != 0),
                }
            };
            let old = match old {
                Ok(old) => old,
                Err(unmapping) => {
                    if unmapping {
                        crate::tlb::flush_space(&space);
                    }
                    return Err(Error::NotMapped);
                }
            };
            space.memory.uncharge(crate::obj::MAP_COST);
            crate::obj::mapped(false);
            if crate::inject() & rl4_core::cmdline::inject::SLOW_UNMAP != 0 {
                injected_window();
            }
            crate::tlb::flush_space(&space);
            space.unmapping.fetch_sub(1, Relaxed);
            drop(old);
            Ok([0; 3])
        }
        Sys::ThreadCreate => {
            let (m, target) = {
                let caps = task.caps.lock();
                let KObj::Memory(m) = &caps.lookup(a0, ObjType::Memory, Rights::ALLOCATE)?.obj else {
                    return Err(Error::WrongType);
                };
                let KObj::Task(target) = &caps.lookup(a1, ObjType::Task, Rights::WRITE)?.obj else {
                    return Err(Error::WrongType);
                };
                (m.clone(), target.clone())
            };
            let prio = a4 & 0xffff_ffff;
            if prio > MAX_PRIORITY || prio > t.life.lock().mcp as u64 {
                return Err(Error::InvalidPriority);
            }
            let cpu = check_cpu(a4 >> 32)?;
            if a2 >= MAP_LIMIT || a3 > MAP_LIMIT {
                return Err(Error::InvalidAddress);
            }
            task.caps.lock().check_free(a5)?;
            if target.dead.load(core::sync::atomic::Ordering::Acquire) {
                return Err(Error::InvalidState);
            }
            let th = Thread::new(&m, target, a2, a3, prio as u8, cpu)?;
            put(task, a5, KObj::Thread(th), Rights::READ.union(Rights::WRITE).union(Rights::GRANT))?;
            Ok([0; 3])
        }
        Sys::ThreadResume => {
            let th = thread_obj(task, a0, Rights::WRITE)?;
            thread::resume(&th).map_err(|_| Error::InvalidState)?;
            Ok([0; 3])
        }
        Sys::ThreadSuspend => {
            let th = thread_obj(task, a0, Rights::WRITE)?;
            thread::suspend(&th).map_err(|_| Error::InvalidState)?;
            Ok([0; 3])
        }
        Sys::ThreadSetPriority => {
            let th = thread_obj(task, a0, Rights::WRITE)?;
            // Nobody raises a thread above its own maximum controlled priority.
            if a1 > MAX_PRIORITY || a1 > t.life.lock().mcp as u64 {
                return Err(Error::InvalidPriority);
            }
            thread::set_priority(&th, a1 as u8).map_err(|_| Error::InvalidState)?;
            Ok([0; 3])
        }
        Sys::ThreadSetAffinity => {
            let th = thread_obj(task, a0, Rights::WRITE)?;
            let cpu = check_cpu(a1)?;
            thread::set_affinity(&th, cpu).map_err(|_| Error::InvalidState)?;
            Ok([0; 3])
        }
        Sys::ThreadSetArg => {
            let th = thread_obj(task, a0, Rights::WRITE)?;
            let l = th.life.lock();
            if l.view() != ThreadState::Inactive {
                return Err(Error::InvalidState);
            }
            th.regs.with(|r| {
                r.set_arg(0, a1);
                r.set_arg(1, a2);
            });
            Ok([0; 3])
        }
        Sys::ThreadInfo => {
            let th = thread_obj(task, a0, Rights::READ)?;
            let l = th.life.lock();
            Ok([l.view() as u64, l.cpu as u64, l.prio as u64])
        }
        Sys::ThreadExit => {
            thread::kill(t);
            Ok([0; 3])
        }
        Sys::TaskExit => {
            kill_task(&t.task);
            Ok([0; 3])
        }
        Sys::TaskKill => {
            let target = task_obj(task, a0, Rights::WRITE)?;
            kill_task(&target);
            Ok([0; 3])
        }
        Sys::CpuInfo => Ok([percpu::cpu_index() as u64, sched::online_count(), 0]),
        Sys::Shutdown => {
            lookup(task, a0, ObjType::Machine, Rights::SHUTDOWN)?;
            // A panic under way elsewhere ends the machine with its failure, not this success:
            // this CPU halts (`rl4_smp::cpus::stop_others` lets one CPU stop the others).
            if crate::panic::panicking() {
                // (Up to a second for the panic to end it, then with failure from here.)
                rl4_arch::time::wait_until(1_000_000, || false);
                rl4_arch::console::print_line_stopped(format_args!("shutdown: a panic under way did not end the machine; exiting with failure"));
                cpu::exit(cpu::QemuExit::Failure);
            }
            println!("shutdown requested by task {} with code {a1}", task.id);
            // (A CPU that runs the root task has its local APIC: the others stop.)
            // The others stopped (or 100 ms waited) before the timeline's rings are read.
            if cpus::stop_others() {
                let _ = cpus::wait_stopped(100_000);
            }
            crate::timeline::dump();
            // A panic that began elsewhere after the look above (its CPU halted in this one's
            // NMI, or at the stop's refusal) ends the machine with its failure all the same.
            if crate::panic::panicking() {
                rl4_arch::console::print_line_stopped(format_args!("shutdown: a panic began on another CPU meanwhile; exiting with failure"));
                cpu::exit(cpu::QemuExit::Failure);
            }
            cpu::exit(if a1 == 0 { cpu::QemuExit::Success } else { cpu::QemuExit::Failure })
        }
        Sys::MemoryInfo => {
            let m = match lookup(task, a0, ObjType::Memory, Rights::NONE)? {
                KObj::Memory(m) => m,
                _ => unreachable!("type checked"),
            };
            // What deleted endpoints were charged is back first (`qsbr.rs`; it waits only if
            // a limbo holds something).
            crate::qsbr::settle();
            // What can really be had: the budget, but no more than the frames a user can still
            // take (the heap may hold some of what the budget would allow). The budget read
            // once: another thread charging it between two reads would make the first result
            // larger than the third (a review of the thirty-ninth session).
            let left = m.left();
            Ok([left.min(mem::user_frames_left() * PAGE_SIZE), m.total, left])
        }
        Sys::Stat => {
            // Machine-wide counters tell what other tasks do (their IPC, their interrupts'
            // timing): for holders of the READ right, not every task given the console.
            lookup(task, a0, ObjType::Machine, Rights::READ)?;
            crate::qsbr::settle();
            let v = match a1 {
                stat::SWITCHES => sched::switches(),
                stat::TICKS => cpus::this().ticks.load(core::sync::atomic::Ordering::Relaxed),
                stat::FREE_FRAMES => mem::free_frames(),
                stat::THREADS => LIVE_THREADS.load(core::sync::atomic::Ordering::Relaxed),
                stat::IPC_FAST => sched::total(sched::Count::IpcFast),
                stat::IPC_SLOW => sched::total(sched::Count::IpcSlow),
                stat::IPC_CROSS => sched::total(sched::Count::IpcCross),
                stat::FPU_KEPT => sched::total(sched::Count::FpuKept),
                stat::DEADLINES_VISITED => sched::total(sched::Count::DeadlinesVisited),
                stat::DEADLINES_HELD => crate::timeout::held(),
                stat::SWEEP_VISITED => sched::total(sched::Count::SweepVisited),
                stat::SENDQ_STEPS => sched::total(sched::Count::SendqSteps),
                stat::FAULT_REPORTS_LEFT_OUT => sched::total(sched::Count::ReportsLeftOut),
                stat::TASK_WALKS => sched::total(sched::Count::TaskWalks),
                stat::IPIS_SENT => cpus::IPIS_SENT.load(core::sync::atomic::Ordering::Relaxed),
                stat::HEAP_BYTES => mem::heap_size(),
                stat::HEAP_IN_USE => mem::heap_in_use(),
                stat::HEAP_BOUND => crate::obj::heap_bound(),
                stat::THREAD_BYTES => crate::obj::thread_bytes(),
                stat::HEAP_ALLOCS if crate::count::BUILT => crate::count::allocs(),
                stat::HEAP_FREES if crate::count::BUILT => crate::count::frees(),
                stat::GLOBAL_LOCKS if crate::count::BUILT => crate::count::global_locks(),
                stat::IRQS_DELIVERED => crate::irq::delivered(),
                stat::IRQ_LINES_ENABLED => crate::irq::enabled_lines(),
                stat::FAILED_ALLOCS => mem::failed_allocs(),
                _ => return Err(Error::InvalidArgument),
            };
            Ok([v, 0, 0])
        }
        Sys::EndpointCreate => {
            let m = memory(task, a0)?;
            task.caps.lock().check_free(a1)?;
            let e = Endpoint::new(&m)?;
            put(task, a1, KObj::Endpoint(e), Rights::SEND.union(Rights::RECEIVE).union(Rights::GRANT))?;
            Ok([0; 3])
        }
        Sys::NotificationCreate => {
            let m = memory(task, a0)?;
            task.caps.lock().check_free(a1)?;
            let n = Notification::new(&m)?;
            put(task, a1, KObj::Notification(n), Rights::SEND.union(Rights::RECEIVE).union(Rights::GRANT))?;
            Ok([0; 3])
        }
        Sys::Signal => {
            let (n, badge) = notification(task, a0, Rights::SEND)?;
            // A badged capability names its holder: it signals its badge and nothing else,
            // whatever `bits` says (as seL4's does), so a client cannot set another client's
            // bits or those an interrupt is bound to, and a server signalling a capability a
            // client gave it needs not know its badge. An unbadged one is its maker's: it
            // signals the bits it is given.
            let bits = if badge != 0 { badge } else { a1 };
            if bits == 0 {
                return Err(Error::InvalidArgument);
            }
            ipc::signal(&n, bits);
            Ok([0; 3])
        }
        Sys::Poll => {
            let (n, _) = notification(task, a0, Rights::RECEIVE)?;
            Ok([ipc::poll(&n), 0, 0])
        }
        Sys::SetIpcBuffer => {
            let th = thread_obj(task, a0, Rights::WRITE)?;
            check_page(a1)?;
            // A task whose end has run answers as one whose end is under way (below): its space
            // is empty by then, and the look-up would answer `NotMapped` (before the
            // thirty-sixth session it did: a review found it). So does a thread that exited
            // (`Dead`) in a task that lives on: it never receives again (since the forty-second
            // session, as `ThreadSetPriority`; a kill after this look is the later event).
            if th.task.dead.load(core::sync::atomic::Ordering::Acquire) || th.life.lock().is_dead() {
                return Err(Error::InvalidState);
            }
            // (Whether an `Unmap` of the space is between its change and its shoot-down, read
            // under the same lock.)
            let (look, unmapping) = {
                let maps = th.space.maps.lock();
                let look = maps.get(&a1).map(|(f, write, _)| (f.device_page().is_some(), *write));
                (look, th.space.unmapping.load(core::sync::atomic::Ordering::Relaxed) != 0)
            };
            match look {
                // The kernel writes message words into the buffer: never into a device.
                Some((true, _)) => return Err(Error::InvalidArgument),
                Some((_, true)) => {}
                Some(_) => return Err(Error::MissingRight),
                // (A kill between the check above and the look-up empties the space after it
                // marks the task dead: the same answer as before the kill.)
                None if th.task.dead.load(core::sync::atomic::Ordering::Acquire) => return Err(Error::InvalidState),
                None => {
                    // Not mapped, perhaps by an `Unmap` whose shoot-down has not ended: waited
                    // for first, as `Map` and `Unmap` do (since the forty-third session; a
                    // review found the answer came while another CPU could still reach the page).
                    if unmapping {
                        crate::tlb::flush_space(&th.space);
                    }
                    return Err(Error::NotMapped);
                }
            }
            // The address is kept, not the frame: each long message uses what is mapped there
            // then (`ipc::with_buffer`). A thread of a task that died gave its buffer up
            // (`kill_task`, which marks the task dead before it takes each buffer under this
            // lock): it takes none again.
            let mut b = th.ipc_buffer.lock();
            if th.task.dead.load(core::sync::atomic::Ordering::Acquire) {
                return Err(Error::InvalidState);
            }
            *b = Some(a1);
            Ok([0; 3])
        }
        Sys::CapMint => {
            let (dst, cap, orig) = copy_source(task, a0, a1, a3)?;
            if !matches!(cap.obj, KObj::Endpoint(_) | KObj::Notification(_)) {
                return Err(Error::WrongType);
            }
            if cap.badge != 0 {
                return Err(Error::InvalidState);
            }
            if !Arc::ptr_eq(&dst, task) && !orig.contains(Rights::GRANT) {
                return Err(Error::MissingRight);
            }
            dst.may_insert(a2)?;
            let mut cap = crate::obj::tracked(task, a0, cap)?;
            cap.badge = a4;
            dst.insert_cap(a2, cap)?;
            Ok([0; 3])
        }
        Sys::Measure => {
            // The kernel spins while it measures: only holders of the shutdown right (the root
            // task's machine capability) may, and only briefly.
            lookup(task, a0, ObjType::Machine, Rights::SHUTDOWN)?;
            match a1 {
                rl4_abi::measure::CR3_FLOOR if (1..=10_000).contains(&a2) => Ok(crate::measure::cr3_floor(a2)),
                rl4_abi::measure::FPU_FLOOR if (1..=10_000).contains(&a2) => Ok(crate::measure::fpu_floor(a2)),
                rl4_abi::measure::IPC_TRACE | rl4_abi::measure::IPC_TRACE_READ if !trace::BUILT => Err(Error::InvalidArgument),
                rl4_abi::measure::COUNT_EVENTS if crate::count::BUILT => {
                    crate::count::arm(a2 != 0);
                    Ok([0; 3])
                }
                rl4_abi::measure::IPC_TRACE => {
                    trace::set(a2 != 0);
                    Ok([0; 3])
                }
                rl4_abi::measure::IPC_TRACE_READ if a2 >> 8 <= 1 && a2 & 0xff < trace::STEPS as u64 => {
                    let (sum, count) = trace::read((a2 >> 8) as usize, (a2 & 0xff) as usize);
                    Ok([sum, count, 0])
                }
                rl4_abi::measure::FAILALLOC if a2 <= 1 => mem::root_fails(a2 == 1),
                rl4_abi::measure::FAULT_FLOOR if (1..=100_000).contains(&a2) => {
                    crate::fault::arm_floor(t, a2);
                    Ok([0; 3])
                }
                rl4_abi::measure::IPI_FLOOR => {
                    let (target, iters) = (a2 & 0xffff, a2 >> 16);
                    check_cpu(target)?;
                    if target == percpu::cpu_index() as u64 || !(1..=1_000).contains(&iters) {
                        return Err(Error::InvalidArgument);
                    }
                    crate::measure::ipi_floor(target as usize, iters)
                }
                _ => Err(Error::InvalidArgument),
            }
        }
        Sys::ThreadSetFaultHandler => {
            // Both slots read in one hold of the table's lock, as syscalls.md says of every call
            // that reads two (before the thirty-sixth session two holds: harmless, as each fault
            // checks both slots again, but not what the text said; a review found it). The
            // thread's reference is cloned only once both reads succeeded.
            let read = {
                let caps = task.caps.lock();
                caps.lookup(a0, ObjType::Thread, Rights::WRITE).and_then(|t| {
                    let ep = if a1 == rl4_abi::ipc::NO_SLOT {
                        None
                    } else {
                        let c = caps.lookup(a1, ObjType::Endpoint, Rights::SEND)?;
                        match &c.obj {
                            KObj::Endpoint(e) => Some((e.weak(), c.badge)),
                            _ => unreachable!("type checked"),
                        }
                    };
                    match &t.obj {
                        KObj::Thread(th) => Ok((th.clone(), ep)),
                        _ => unreachable!("type checked"),
                    }
                })
            };
            let (th, ep) = read?;
            // A thread that exited (`Dead`) in a task that lives on never faults again: refused,
            // as for `SetIpcBuffer` (since the forty-second session).
            if th.life.lock().is_dead() {
                return Err(Error::InvalidState);
            }
            // The binding names the two slots it was set with: it acts only while they hold
            // these capabilities (`fault::handler_of`).
            let new = ep.map(|(ep, badge)| crate::obj::FaultHandler { ep, badge, setter: Arc::downgrade(task), thread_slot: a0, ep_slot: a1 });
            // The old handler's weak reference goes after the lock. A thread of a task that died
            // gave its handler up (`kill_task`, as for `SetIpcBuffer`): it takes none again.
            let old = {
                let mut h = th.fault_handler.lock();
                if th.task.dead.load(core::sync::atomic::Ordering::Acquire) {
                    drop(h);
                    drop(new);
                    return Err(Error::InvalidState);
                }
                core::mem::replace(&mut *h, new)
            };
            drop(old);
            Ok([0; 3])
        }
        Sys::KernelCheck => {
            // It stops every CPU for as long as it takes: only for holders of the shutdown right.
            lookup(task, a0, ObjType::Machine, Rights::SHUTDOWN)?;
            // Its lists of every object are the checker's own, for the holder of the shutdown
            // right: not failed on purpose (docs/memory.md, "Allocation failure injection").
            mem::must_not_fail(|| crate::check::run(t))
        }
        Sys::IrqGet | Sys::IrqBind | Sys::IrqAck | Sys::IrqUnbind | Sys::IoPortGet | Sys::IoPortOpen | Sys::IoPortClose | Sys::DeviceMemGet => {
            crate::device::syscall(t, sys, a)
        }
        Sys::Send | Sys::NbSend | Sys::Call | Sys::Recv | Sys::NbRecv | Sys::Reply | Sys::ReplyRecv | Sys::Wait => {
            unreachable!("IPC calls are handled by ipc_call")
        }
    }
}

/// Walks for the descendants of an ended task under way ([`kill_task`]).
static CASCADES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// `TaskCreate` by a thread of `task` while a walk for the descendants of an ended task is under
/// way: refused (`InvalidState`, as for an ended parent) if one of `task`'s ancestors has
/// ended — at most `MOST_TASK_DEPTH` of them, the deepest a task lies. Without it, live
/// descendants not reached yet kept adding children, each of which the walk then had to reach
/// too, so a subtree spawning on other CPUs faster than the walk ended its members kept the
/// ending CPU in the kernel, interrupts off, for as long as it went on (before the
/// twenty-eighth session: a hostile review found it). The walk's counter is raised after the
/// ended task is marked and before the walk reads how far to go, and the child is registered
/// before the counter is read here (all sequentially consistent): either the walk reaches the
/// child, or this check sees the end of every ancestor the walk has ended.
fn ancestry_refusal(task: &Arc<Task>) -> Result<(), Error> {
    let mut at = task.parent.as_ref();
    while let Some(a) = at {
        if a.dead.load(core::sync::atomic::Ordering::SeqCst) {
            return Err(Error::InvalidState);
        }
        at = a.parent.as_ref();
    }
    Ok(())
}

/// Ends a task and every task it made, and theirs, and so on (`Task::parent`): a task that
/// deleted its last capability to a task it made, whose threads still run, cannot leave it
/// running after its own end, out of everybody's reach (a hostile review found the leak: the
/// CPU time and the memory were lost for good). One walk over every task in the order they
/// were made (a child comes after its parent, so one walk ends every generation), only for a
/// task whose children still exist (`Task::children`); allocates nothing and recurses nowhere.
pub fn kill_task(task: &Arc<Task>) {
    // One wait for the limbo (`qsbr::throttle`, 200 µs at most) for the whole cascade, not one
    // per task: ending thousands of tasks must not add up thousands of waits with interrupts off.
    let mut waited_out = false;
    kill_one(task, &mut waited_out);
    // One walk per ended task is enough (`Task::walked`): a task killed again and again while
    // the record of an ended child lives on (its `children` stays non-zero) does not walk every
    // task of the system again each time, interrupts off (a hostile review of the seventeenth
    // session found the repeated walk).
    if task.children.load(core::sync::atomic::Ordering::SeqCst) > 0 && !task.walked.load(core::sync::atomic::Ordering::Acquire) {
        sched::count(sched::Count::TaskWalks);
        // The walk reaches every task registered before the last end it made (`Registry::each`):
        // a child registered later finds its parent, or an ancestor, ended in `TaskCreate`
        // ([`ancestry_refusal`], while `CASCADES` counts this walk), so the ends it makes, and
        // the walk, are bounded: no descendant of this task registered after it began.
        CASCADES.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
        // A descendant another CPU is ending meanwhile (`dead`, not yet `ended`: a direct kill,
        // a second kill of this task, another walk) is waited for (`kill_one` waits for a kill
        // that is not its own first), so that this end answers only once every descendant has
        // ended. Before the thirty-fifth session the walk looked at `dead` and passed over it:
        // a kill answered while that task's threads still ran (a review found it).
        crate::obj::TASKS.each(|t| {
            let orphan = t.parent.as_ref().is_some_and(|p| p.dead.load(core::sync::atomic::Ordering::SeqCst));
            if !orphan || t.ended.load(core::sync::atomic::Ordering::Acquire) {
                return false;
            }
            // (Whether this walk made the end, which the walk's bound counts.)
            let first = !t.dead.load(core::sync::atomic::Ordering::SeqCst);
            kill_one(t, &mut waited_out);
            first
        });
        CASCADES.fetch_sub(1, core::sync::atomic::Ordering::SeqCst);
        // Every descendant registered before the walk's last end is ended; one registered
        // later found its parent ended in `TaskCreate`. A second CPU's kill that began before
        // this store walks too (at most once more); later kills need not.
        task.walked.store(true, core::sync::atomic::Ordering::Release);
    }
}

/// Ends one task: every thread stops (those running elsewhere are told to let go), and every
/// capability in its table is deleted, which frees what nothing else refers to (after the
/// table's lock).
///
/// The first kill does the work; a kill of the same task from another CPU meanwhile (a second
/// holder's `TaskKill`, the task's own `TaskExit`, a maker's walk) waits until it is done
/// before it answers. Before the twenty-sixth session a second kill found the thread list
/// already taken, emptied the space at once and answered success while the first was still
/// killing the threads one by one: they ran on in an empty space, and their faults went to
/// their handlers or to the console as the program's own (a hostile review found it).
fn kill_one(task: &Arc<Task>, waited_out: &mut bool) {
    if task.dead.swap(true, core::sync::atomic::Ordering::SeqCst) {
        // A thread of the task itself (its `TaskExit`, or `TaskKill` of its own task) need not
        // wait: it ends here, as the first kill would end it, and its CPU goes on (else every
        // CPU whose thread of a dying task calls `TaskExit` would spin, interrupts off, for the
        // whole end; a review of this session's diff).
        if let Some(me) = sched::current().filter(|c| Arc::ptr_eq(&c.task, task)) {
            thread::kill(&me);
            return;
        }
        // The first kill waits for nothing this CPU does but TLB shoot-downs and the answers
        // to closed port ranges (both answered here: `tlb::service_tlb_here`) and grace
        // periods (at most 200 µs, `qsbr::throttle`), and a waiting kill has begun no work of
        // its own: no two kills wait for each other.
        while !task.ended.load(core::sync::atomic::Ordering::Acquire) {
            crate::tlb::service_tlb_here();
            rl4_arch::cpu::relax();
        }
        return;
    }
    // Neither list is copied into one allocation (a task's thousands of threads or its full
    // table would need contiguous frames, which fragmented memory may not have): the thread
    // list is taken whole, the table emptied a piece at a time.
    let threads = core::mem::take(&mut *task.threads.lock_answering());
    for th in threads.iter().filter_map(|w| w.upgrade()) {
        thread::kill(&th);
        // Its IPC buffer and fault handler go with the task's memory (below), whoever keeps
        // the thread (each taken under its lock, the handler released after it; a copy under
        // way on another CPU holds the space's mapping lock, which the emptying below waits
        // for).
        th.ipc_buffer.lock().take();
        let handler = th.fault_handler.lock().take();
        drop(handler);
        // A task may have thousands of threads and this runs with interrupts off: a shoot-down
        // another CPU waits for is answered between them (a load when none waits).
        crate::tlb::service_tlb_here();
    }
    let mut next = 0;
    loop {
        // The guard is a temporary of this statement: each piece is dropped after the lock.
        let piece = task.caps.lock().drain_piece(&mut next);
        let Some(caps) = piece else { break };
        drop(caps);
        // The endpoints among them wait in this CPU's limbo (`qsbr::throttle`; 200 µs per
        // call at most).
        if !*waited_out {
            *waited_out = crate::qsbr::throttle();
        }
    }
    // Its mappings and page tables go back now, whoever still refers to the task, its space
    // or one of its threads (a server holding a killed caller's reply right, a capability to
    // the space).
    task.space.empty();
    drop(threads);
    task.ended.store(true, core::sync::atomic::Ordering::Release);
}
