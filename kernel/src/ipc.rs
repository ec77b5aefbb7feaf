//! Synchronous IPC through endpoints, and notifications.
//!
//! See `docs/ipc.md` for the state machine, the lock order and the paths step by step. Every
//! change of a thread's state here is a transition of `rl4_core::life` (through `thread.rs`),
//! under one rule: **nobody can answer or fail a thread before it waits.** A `Call` enters its
//! reply wait before any receiver can see it, and takes it back (`unwait`) if none waits; a
//! partner is claimed (taken out of its queue, its wait ended, under the queue's and its own
//! lock), given the reply right in the same step, and placed last (switched to directly, or
//! queued on its CPU).
//!
//! Lock order (`lock.rs`): an endpoint's or notification's queue lock → one home lock (which
//! guards a thread's `life`) → a CPU's timeout list (a CPU's run queue and inbox take no lock);
//! capability tables and IPC-buffer slots are leaves below them.
use alloc::sync::{Arc, Weak};
use rl4_abi::Error;
use rl4_abi::ipc::{MAX_WORDS, NO_SLOT, REG_WORDS, Tag};
use rl4_arch::entry::UserRegs;
use rl4_core::life::WaitOn;

use crate::lock::{Level, Mutex};
use rl4_core::wlist::{KeyedList, WList};
use crate::obj::{Cap, EpRef, NtfRef, Thread, Wait};
use rl4_core::frames::OwnedFrame;
use crate::{mem, reclaim, sched, thread, timeout};

/// An endpoint's waiters: intrusive lists through the threads' `wait_link` (`rl4_core::wlist`),
/// owned by the endpoint's queue lock. Queueing a thread allocates nothing; a cancelled wait
/// leaves its queue in O(1).
pub(crate) struct EpQueues {
    /// Highest priority first, FIFO within a priority (the key: the priority each was queued
    /// at); an insertion walks one step per priority below its own that waits.
    pub(crate) senders: KeyedList<Thread>,
    pub(crate) receivers: WList<Thread>,
}

impl EpQueues {
    /// Empty queues of the endpoint at `addr` (their tokens: `addr` and `addr + 1`).
    fn new(addr: usize) -> Self {
        EpQueues { senders: WList::new(addr), receivers: WList::new(addr + 1) }
    }

    /// Removes `t` (it no longer waits here). The reference goes after the locks (the caller
    /// holds another one).
    pub(crate) fn remove(&mut self, t: &Arc<Thread>) {
        let a = self.senders.remove(t);
        let b = self.receivers.remove(t);
        reclaim::later_thread_opt(a);
        reclaim::later_thread_opt(b);
    }
}

/// Queues `t` last on `q`; a thread already in a queue is a kernel bug, refused by the list
/// (nothing is damaged): said on the console, and `KernelCheck` reports the thread's wait.
#[inline(always)]
pub(crate) fn enqueue(q: &mut WList<Thread>, t: Arc<Thread>) {
    if let Err(t) = q.push_back(t) {
        queued_twice(t);
    }
}

/// Queues the sender `t` on `q` at its priority `prio` (as [`enqueue`]); the steps its place
/// took are counted (`stat::SENDQ_STEPS`).
pub(crate) fn enqueue_sender(q: &mut KeyedList<Thread>, t: Arc<Thread>, prio: u8) {
    match q.insert_by_key(t, prio as u64) {
        Ok(steps) => sched::this_cpu().add_count(sched::Count::SendqSteps, steps as u64),
        Err(t) => queued_twice(t),
    }
}

/// Queues the notification waiter `t` on `q` at its priority `prio` (as [`enqueue_sender`],
/// uncounted: the walk is one step per priority below its own that waits, 255 at most).
pub(crate) fn enqueue_waiter(q: &mut KeyedList<Thread>, t: Arc<Thread>, prio: u8) {
    if let Err(t) = q.insert_by_key(t, prio as u64) {
        queued_twice(t);
    }
}

#[cold]
fn queued_twice(t: Arc<Thread>) {
    rl4_arch::println!("ipc: thread {} put into a second wait queue (a kernel bug)", t.id);
    reclaim::later_thread(t);
}

pub struct Endpoint {
    pub(crate) q: Mutex<EpQueues, { Level::QUEUE }>,
    /// A weak reference to itself: a waiter's `Wait` gets a clone (one atomic add) instead of
    /// `Arc::downgrade` (a compare-and-swap loop, out of line) at every wait.
    me: Weak<Endpoint>,
    _charge: crate::obj::Charge,
}

impl Endpoint {
    pub fn new(mem: &Arc<crate::obj::Memory>) -> Result<Arc<Endpoint>, Error> {
        let charge = crate::obj::Charge::new(mem, crate::obj::ENDPOINT_COST)?;
        let e = crate::mem::try_new_cyclic(|at| Endpoint { q: Mutex::new(EpQueues::new(at)), me: Weak::new(), _charge: charge }, |e| &mut e.me)?;
        crate::obj::ENDPOINTS.add(&e)?;
        Ok(e)
    }

    /// A weak reference to this endpoint.
    #[inline(always)]
    pub fn weak(&self) -> Weak<Endpoint> {
        self.me.clone()
    }
    #[inline(always)]
    pub fn id(&self) -> usize {
        self as *const Endpoint as usize
    }
    pub fn charge(&self) -> &crate::obj::Charge {
        &self._charge
    }
}

impl Drop for Endpoint {
    /// The last capability is gone: every waiter gets `PartnerGone`; a fault queued here
    /// stops its thread (`Faulted`), as if it had no handler.
    fn drop(&mut self) {
        reclaim::dropping("Endpoint");
        let id = self.id();
        let (mut senders, mut receivers) = {
            let mut q = self.q.lock();
            (q.senders.take(), q.receivers.take())
        };
        // The ended waits (a capability in flight holds its object's allocation, and its
        // lineage, by a last reference perhaps) and the threads go to the destruction loop
        // (`reclaim.rs`).
        while let Some(t) = senders.pop_front() {
            let w = thread::wake_locked(&t, &mut t.life.lock(), WaitOn::Send(id), Err(Error::PartnerGone));
            if w.is_none() {
                thread::stop_fault(&t, WaitOn::FaultSend(id), "its fault handler's endpoint was deleted");
            }
            reclaim::later_wait(w);
            reclaim::later_thread(t);
            // As many waiters as a task made, interrupts off: other CPUs' TLB shoot-downs are
            // answered between them (a review of the sixteenth session found them waiting).
            crate::tlb::service_tlb_here();
        }
        while let Some(t) = receivers.pop_front() {
            let w = thread::wake_locked(&t, &mut t.life.lock(), WaitOn::Recv(id), Err(Error::PartnerGone));
            reclaim::later_wait(w);
            reclaim::later_thread(t);
            crate::tlb::service_tlb_here();
        }
        crate::obj::ENDPOINTS.gone();
    }
}

/// The badge a send (or a fault) queued on the endpoint `ep` carries, if `l` is such a wait.
fn queued_badge(l: &crate::obj::Life, ep: usize) -> Option<u64> {
    use rl4_core::life::{Ident, State};
    match l.state() {
        State::Blocked { wait: Wait::Send { ep: e, badge, .. } | Wait::FaultSend { ep: e, badge, .. }, .. } if e.ident() == ep => Some(*badge),
        _ => None,
    }
}

/// `EndpointCancelBadged`: ends every send queued on `ep` that carries `badge` — a send or a
/// call gets `PartnerGone`, a queued fault stops its thread (`Faulted`) as if it had no
/// handler — and returns how many it ended. One walk of the send queue under its lock, each
/// thread's wait read and ended under its home lock in that same hold (queue, then thread;
/// one home lock at a time), as `recv` takes a sender: a wait is never ended after its thread
/// left the queue, so a thread that timed out or was resumed meanwhile and sent again is not
/// touched (a review found that ending the waits after the lock, as the endpoint's destructor
/// may for a queue nobody can join any more, could end such a new send and leave it queued).
/// What a stopped fault leaves — its report, the reply right it held (whose caller is failed)
/// — waits until the lock is released: the stopped threads go into a list of their own
/// through their wait links (free once out of the queue; a `Faulted` thread never waits
/// again), each keeping its reply right until then (`Life::stop_fault_later`), so the walk
/// allocates nothing and is never repeated. (It stopped at most 16 faults per walk, and walked
/// again while more were left: a review found a queue of F faults cost F²/32 steps with
/// interrupts off.) The walk answers TLB shoot-downs every 64 senders; it holds the lock,
/// interrupts off, one step per queued sender (as long as the queue a task's budget paid for)
/// — other CPUs waiting for that lock answer shoot-downs too (`lock::Mutex::lock`).
pub fn cancel_badged(ep: &Arc<Endpoint>, badge: u64) -> u64 {
    use core::cell::Cell;
    let id = ep.id();
    let (n, steps) = (Cell::new(0u64), Cell::new(0u32));
    // Its token: an address of this frame (unique while the list lives; no queue's).
    let mut stopped: WList<Thread> = WList::new(&n as *const Cell<u64> as usize);
    {
        let mut q = ep.q.lock();
        q.senders.remove_all_where(
            |t| {
                steps.set(steps.get().wrapping_add(1));
                if steps.get() % 64 == 0 {
                    crate::tlb::service_tlb_if_up();
                }
                queued_badge(&t.life.lock(), id) == Some(badge)
            },
            |t| {
                let mut l = t.life.lock();
                match thread::wake_locked(&t, &mut l, WaitOn::Send(id), Err(Error::PartnerGone)) {
                    Some(w) => {
                        drop(l);
                        n.set(n.get() + 1);
                        reclaim::later_wait(Some(w));
                        reclaim::later_thread(t);
                    }
                    None => {
                        let s = l.stop_fault_later(WaitOn::FaultSend(id));
                        drop(l);
                        match s {
                            Ok(w) => {
                                n.set(n.get() + 1);
                                reclaim::later_wait(Some(w));
                                // (Its link was freed by the queue a moment ago.)
                                if let Err(t) = stopped.push_back(t) {
                                    reclaim::later_thread(t);
                                }
                            }
                            Err(_) => reclaim::later_thread(t),
                        }
                    }
                }
            },
        );
    }
    // The lock is released: reports, and the callers whose reply rights died (a kill meanwhile
    // took a thread's right, and failed its caller, itself).
    while let Some(t) = stopped.pop_front() {
        let (reply, faulted) = {
            let mut l = t.life.lock();
            (l.take_reply(), l.view() == rl4_abi::ThreadState::Faulted)
        };
        // (A thread killed meanwhile is reported as killed, not as stopped.)
        if faulted {
            crate::fault::report_stopped(&t, "its fault's badge was cancelled at the handler's endpoint");
        }
        if let Some((c, ticket)) = reply {
            thread::fail_caller(c, ticket);
        }
        reclaim::later_thread(t);
        crate::tlb::service_tlb_here();
    }
    n.get()
}

/// A notification's word and its waiters: an intrusive list through the threads' `wait_link`,
/// as an endpoint's queues (a thread waits on one thing at a time), owned by the notification's
/// queue lock, highest priority first and first come, first served within a priority (as an
/// endpoint's senders; before the twenty-fifth session first come, first served whatever the
/// priority). Waiting allocates nothing; a cancelled wait leaves the list in O(1).
pub(crate) struct NState {
    pub(crate) word: u64,
    pub(crate) waiters: KeyedList<Thread>,
}

impl NState {
    /// No bits and no waiters, for the notification at `addr` (the list's token: `addr`, which
    /// no endpoint's list has: an endpoint's tokens are its own address and the next byte, both
    /// inside its allocation, which is not this one).
    fn new(addr: usize) -> Self {
        NState { word: 0, waiters: WList::new(addr) }
    }
}

pub struct Notification {
    pub(crate) q: Mutex<NState, { Level::QUEUE }>,
    me: Weak<Notification>,
    _charge: crate::obj::Charge,
}

impl Notification {
    pub fn new(mem: &Arc<crate::obj::Memory>) -> Result<Arc<Notification>, Error> {
        let charge = crate::obj::Charge::new(mem, crate::obj::NOTIFICATION_COST)?;
        let n = crate::mem::try_new_cyclic(|at| Notification { q: Mutex::new(NState::new(at)), me: Weak::new(), _charge: charge }, |n| &mut n.me)?;
        crate::obj::NOTIFICATIONS.add(&n)?;
        Ok(n)
    }
    pub fn charge(&self) -> &crate::obj::Charge {
        &self._charge
    }
    fn id(&self) -> usize {
        self as *const Notification as usize
    }
}

impl Drop for Notification {
    /// The last capability is gone: every waiter gets `PartnerGone`.
    fn drop(&mut self) {
        reclaim::dropping("Notification");
        let id = self.id();
        let mut waiters = self.q.lock().waiters.take();
        // As an endpoint's: each waiter leaves the list (its link) only when it is woken here.
        while let Some(t) = waiters.pop_front() {
            let w = thread::wake_locked(&t, &mut t.life.lock(), WaitOn::Notify(id), Err(Error::PartnerGone));
            reclaim::later_wait(w);
            reclaim::later_thread(t);
            // As for an endpoint's waiters: shoot-downs are answered between them.
            crate::tlb::service_tlb_here();
        }
        crate::obj::NOTIFICATIONS.gone();
    }
}

/// The outcome of an IPC system call for the calling thread.
pub enum Outcome {
    /// Write this result into the caller's registers.
    Return(Result<[u64; 3], Error>),
    /// The caller's registers already hold the result (a message was received).
    Received,
    /// The caller blocked (its result comes when it is woken), or the CPU switched directly
    /// to another thread: write nothing.
    Blocked,
}

/// A message being sent: where its words are.
struct Outgoing<'a> {
    regs: &'a UserRegs,
    badge: u64,
    /// The sender, whose IPC buffer holds words 4 and up ([`with_buffer`]).
    from: &'a Thread,
    /// Whether the message's capability went into the receiver's table (the tag's `caps`):
    /// put there before ([`arrive`], by `send`) or marked after ([`arrive_here`], by `recv`),
    /// never under a home lock.
    caps: u64,
}

/// Runs `op` on the frame of `t`'s IPC buffer — the one mapped writable at its buffer address
/// in its space now, RAM (a device page is never a buffer) — under its space's mapping lock;
/// whether there was one. Looked up at every long message, not kept from `SetIpcBuffer` on: a
/// reference kept let a task go on writing and reading a frame through long messages after the
/// page was unmapped from its space (a review of the sixteenth session). And used under the
/// lock of the look-up: an `Unmap` takes the page out under it, so once it answers no copy
/// reads or writes the frame through that page (before the thirty-fifth session the copy came
/// after the lock was let go, and could, for as long as the copying CPU was held up: a review
/// found it, `long-message-copy-against-unmap`). Two leaf locks, one after the other.
fn with_buffer(t: &Thread, op: impl FnOnce(&OwnedFrame)) -> bool {
    let Some(va) = *t.ipc_buffer.lock() else { return false };
    let maps = t.space.maps.lock();
    match maps.get(&va) {
        Some((f, true, _)) if f.device_page().is_none() => match f.ram() {
            Some(frame) => {
                op(frame);
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// Whether a tag is one a send may carry at all (its reserved bits clear, its length within
/// bounds), whatever the sender's IPC buffer.
pub(crate) fn tag_valid(tag: Tag) -> bool {
    tag.reserved() == 0 && tag.len() <= MAX_WORDS
}

/// Checks a tag the caller wants to send.
pub(crate) fn check_tag(t: &Thread, tag: Tag) -> Result<(), Error> {
    if !tag_valid(tag) {
        return Err(Error::InvalidArgument);
    }
    if tag.len() > REG_WORDS && t.ipc_buffer.lock().is_none() {
        return Err(Error::InvalidArgument);
    }
    Ok(())
}

/// Copies a message into `to` (claimed and locked, or the running thread): tag, badge, words
/// and the buffer part. The capability a message carries is not here: it goes into the
/// receiver's table with no home lock held ([`arrive`]).
fn deliver(to: &Thread, to_regs: &mut UserRegs, m: Outgoing<'_>) {
    let tag = Tag(m.regs.ipc_tag());
    let mut len = tag.len();
    if len > REG_WORDS {
        // Through the kernel stack (124 words at most): the sender's page read under its
        // space's mapping lock, the receiver's written under its own, one lock at a time
        // ([`with_buffer`]). Without a buffer on either side the message arrives cut to 4
        // words.
        let mut words = [0u64; (MAX_WORDS - REG_WORDS) as usize];
        let n = (len - REG_WORDS) as usize;
        let read = with_buffer(m.from, |f| {
            if crate::inject() & rl4_core::cmdline::inject::SLOW_COPY != 0 {
                crate::syscall::injected_window();
            }
            mem::read_frame_words(f, REG_WORDS as usize, &mut words[..n]);
        });
        if !(read && with_buffer(to, |f| mem::write_frame_words(f, REG_WORDS as usize, &words[..n]))) {
            len = REG_WORDS;
        }
    }
    to_regs.set_ipc_out(m.badge, Tag::new(tag.label(), len, m.caps).0, m.regs.ipc_words());
}

/// A message's capability goes into `task`'s table at the receive `slot` its receiver named:
/// whether it went in, and the capability if it did not (no slot named, the slot refused, the
/// capability's tree refused it), to be let go after every lock. Called with no home lock
/// held: the insertion may wait for the capability's derivation tree, which another CPU may
/// hold for as long as a deletion there takes (`DerivTree`'s hand-up of a deleted capability's
/// children), and a home lock waited on so would stall that CPU's every scheduling decision
/// (before the forty-third session `deliver` inserted it under the receiver's or the sender's
/// home lock: a task could so stall a CPU it never ran on; a review found it). `send` calls it
/// under the endpoint's queue lock alone, `recv` under none.
fn arrive(task: &Arc<crate::obj::Task>, slot: u64, cap: Cap) -> (u64, Option<Cap>) {
    if slot == NO_SLOT {
        return (0, Some(cap));
    }
    match task.insert_cap_or_return(slot, cap) {
        Ok(()) => (1, None),
        Err((_, c)) => (0, Some(c)),
    }
}

/// [`arrive`] into the running thread `cur`'s own table (`recv`, after its locks), its message's
/// tag then saying so (`caps`: its registers are its own); what did not go in.
fn arrive_here(cur: &Arc<Thread>, slot: u64, cap: Cap) -> Option<Cap> {
    let (got, left) = arrive(&cur.task, slot, cap);
    if got == 1 {
        cur.regs.with(|rr| {
            let t = Tag(rr.ipc_tag());
            rr.set_ipc_tag(Tag::new(t.label(), t.len(), 1).0);
        });
    }
    left
}


pub(crate) fn deadline(timeout: u64) -> u64 {
    if timeout == rl4_abi::ipc::FOREVER { u64::MAX } else { rl4_arch::cpu::rdtsc().saturating_add(timeout) }
}


/// The running thread `cur` blocks in `wait` (under the lock of the queue it joins, if any).
/// Refused if it was killed or suspended meanwhile: then its call returns `Interrupted` (a
/// suspended thread sees that when it is resumed) and the wait's contents are released.
fn block_current(cur: &Arc<Thread>, wait: Wait, deadline: u64) -> Result<(), ()> {
    block_current_at(cur, wait, deadline).map(|_| ())
}

/// [`block_current`] in `Recv` on `ep`, with the endpoint reference the thread's last wait
/// there left with it (`Life::kept_recv`), as the fast path's `ReplyRecv` does: a fresh one
/// here made that path's next `Call` replace the kept reference to this very endpoint, and take
/// its slower way (a review of the thirty-seventh session).
fn block_current_recv(cur: &Arc<Thread>, ep: &Endpoint, deadline: u64) -> Result<(), ()> {
    let r = {
        let mut l = cur.life.lock();
        let epref = match l.kept_recv(ep.id()) {
            Some(e) => e,
            None => EpRef::new(ep),
        };
        l.block(Wait::Recv { ep: epref }, deadline)
    };
    r.map_err(|(_, w)| reclaim::later_wait(Some(w)))
}

/// [`block_current`], returning the priority the thread has as it blocks, read in the same hold
/// of its lock: a sender queues at it, and a priority change after it finds the thread waiting
/// and moves it in the queue (`thread::set_priority`), so that the queue never keeps one that
/// came in between.
fn block_current_at(cur: &Arc<Thread>, wait: Wait, deadline: u64) -> Result<u8, ()> {
    let r = {
        let mut l = cur.life.lock();
        let prio = l.prio;
        l.block(wait, deadline).map(|()| prio)
    };
    match r {
        Ok(prio) => Ok(prio),
        Err((_, w)) => {
            reclaim::later_wait(Some(w));
            Err(())
        }
    }
}

/// Places a thread claimed by this CPU (woken, held nowhere): switches to it directly if
/// `direct` and it may run here now (the caller has blocked), else queues it on its CPU.
/// Returns whether the CPU switched.
fn place_claimed(t: Arc<Thread>, direct: bool) -> bool {
    let me = rl4_arch::percpu::cpu_index();
    let mut l = t.life.lock();
    if direct && l.cpu == me && sched::may_switch_to(l.prio) && l.run_here(me).is_ok() {
        let prio = l.prio;
        drop(l);
        sched::count(sched::Count::IpcFast);
        sched::switch_direct(t, prio);
        return true;
    }
    sched::count(sched::Count::IpcSlow);
    if l.cpu != me {
        sched::count(sched::Count::IpcCross);
    }
    thread::place(&t, &mut l);
    drop(l);
    reclaim::later_thread(t);
    false
}

/// `Send`, `NbSend` and `Call` by the running thread `cur` on `ep` (whose capability carries
/// `badge`; `grant`: it has the grant right). `xfer`: if the tag carries a capability, the
/// snapshot of its slot that the caller read with the endpoint's (or the error reading it
/// gave). A call's `timeout` covers both the send and the reply wait.
///
/// Giving a capability away needs `GRANT` twice, as `CapCopy` does: on the endpoint and on the
/// capability itself (`MissingRight` otherwise, and nothing is sent).
#[allow(clippy::too_many_arguments)]
pub fn send(
    cur: &Arc<Thread>,
    regs: &UserRegs,
    ep: &Arc<Endpoint>,
    badge: u64,
    grant: bool,
    xfer: Option<Result<Cap, Error>>,
    call: bool,
    timeout: u64,
) -> Outcome {
    let tag = Tag(regs.ipc_tag());
    if let Err(e) = check_tag(cur, tag) {
        return Outcome::Return(Err(e));
    }
    // No lock is held here: a refused snapshot may be dropped at once.
    let cap = match xfer {
        None => None,
        Some(_) if !grant => return Outcome::Return(Err(Error::MissingRight)),
        Some(Err(e)) => return Outcome::Return(Err(e)),
        Some(Ok(c)) if !c.rights.contains(rl4_abi::Rights::GRANT) => return Outcome::Return(Err(Error::MissingRight)),
        Some(Ok(c)) => Some(c),
    };
    let deadline = deadline(timeout);
    // A send with timeout 0 never waits (no deadline to keep); a call with timeout 0 may wait
    // for its reply until the next tick. A call always waits (for its reply): no room, no call.
    // A send waits only if no receiver does: without room it still delivers to one that waits
    // (before the sixteenth session it answered `OutOfMemory` at once).
    let room = !(call || timeout != 0) || timeout::reserve(deadline).is_ok();
    if call && !room {
        reclaim::later_cap(cap);
        return Outcome::Return(Err(Error::OutOfMemory));
    }
    let ticket = if call { sched::next_ticket() } else { 0 };
    let mut q = ep.q.lock();
    // A call waits for its reply before any receiver can see it: the receiver may answer at
    // once from its own CPU, or die and fail the caller through the reply right.
    if call && block_current(cur, Wait::Reply { ticket }, deadline).is_err() {
        drop(q);
        reclaim::later_cap(cap);
        return Outcome::Return(Err(Error::Interrupted));
    }
    // Claim a waiting receiver.
    let mut cap = cap;
    let mut left = None;
    while let Some(r) = q.receivers.pop_front() {
        let mut rl = r.life.lock();
        if !rl.waits(WaitOn::Recv(ep.id())) {
            drop(rl);
            reclaim::later_thread(r);
            continue;
        }
        // The capability goes into its table first, under the queue's lock alone ([`arrive`]):
        // its receive slot is read while it waits, and nothing ends that wait meanwhile (every
        // transition that ends a wait in this queue holds its lock: `thread::with_queue_locked`).
        let mut caps = 0;
        if let Some(c) = cap.take() {
            let slot = r.regs.with(|rr| rr.ipc_receive_slot());
            drop(rl);
            let (got, back) = arrive(&r.task, slot, c);
            (caps, left) = (got, back);
            rl = r.life.lock();
        }
        let Ok(w) = rl.wake(WaitOn::Recv(ep.id())) else {
            // (Not reached, as above; were it, the message goes on to the next receiver, without
            // the capability if it went into this one's table.)
            drop(rl);
            reclaim::later_thread(r);
            continue;
        };
        crate::trace::stamp(crate::trace::PARTNER);
        crate::timeline::event(crate::timeline::Kind::Send, crate::timeline::ep(ep.id()) << 32 | r.id, badge);
        r.regs.with(|rr| deliver(&r, rr, Outgoing { regs, badge, from: cur, caps }));
        let old = if call { rl.grant_reply(cur.clone(), ticket) } else { None };
        drop(rl);
        drop(q);
        drop(w);
        reclaim::later_cap(left);
        if let Some((c, t)) = old {
            thread::fail_caller(c, t);
        }
        crate::trace::stamp(crate::trace::DELIVERED);
        if call {
            timeout::add(deadline, cur);
        }
        if place_claimed(r, call) {
            crate::trace::stamp(crate::trace::SWITCHED);
        }
        return if call { Outcome::Blocked } else { Outcome::Return(Ok([0; 3])) };
    }
    reclaim::later_cap(left);
    // No receiver: a call takes back its reply wait (nobody saw it) and waits as a sender.
    // Refused: the wait was ended meanwhile (killed, suspended, or a stale timeout entry
    // expired it), and whoever ended it wrote the call's result.
    if call && cur.life.lock().unwait(ticket, rl4_arch::percpu::cpu_index()).is_err() {
        drop(q);
        reclaim::later_cap(cap);
        return Outcome::Blocked;
    }
    if timeout == 0 {
        drop(q);
        reclaim::later_cap(cap);
        return Outcome::Return(Err(Error::Timeout));
    }
    if !room {
        drop(q);
        reclaim::later_cap(cap);
        return Outcome::Return(Err(Error::OutOfMemory));
    }
    // The capability waits with the sender without keeping its object alive (`InFlight`); the
    // snapshot's reference goes after the locks.
    let (cap, pin) = match cap.map(crate::obj::InFlight::park) {
        Some((f, p)) => (Some(f), Some(p)),
        None => (None, None),
    };
    let out = match block_current_at(cur, Wait::Send { ep: EpRef::new(ep), badge, call, cap }, deadline) {
        Ok(prio) => {
            crate::timeline::event(crate::timeline::Kind::Send, crate::timeline::ep(ep.id()) << 32, badge);
            enqueue_sender(&mut q.senders, cur.clone(), prio);
            drop(q);
            timeout::add(deadline, cur);
            Outcome::Blocked
        }
        Err(()) => {
            drop(q);
            Outcome::Return(Err(Error::Interrupted))
        }
    };
    reclaim::later_cap(pin);
    out
}

/// `Recv`, `NbRecv` and the receive half of `ReplyRecv` by the running thread `cur`.
/// `direct_to`: a caller just claimed by this call's reply, to switch to if `cur` blocks.
pub fn recv(cur: &Arc<Thread>, ep: &Arc<Endpoint>, timeout: u64, direct_to: Option<Arc<Thread>>) -> Outcome {
    let room = timeout == 0 || timeout::reserve(deadline(timeout)).is_ok();
    let mut q = ep.q.lock();
    while let Some(snd) = q.senders.pop_front() {
        let mut sl = snd.life.lock();
        let ticket = sched::next_ticket();
        let taken = match sl.take_sender(ep.id(), ticket) {
            Ok(t) => Ok(t),
            Err(_) => match sl.take_fault(ep.id(), ticket) {
                // Its registers are still those of the fault (it waits, and nobody holds its
                // reply right yet).
                Ok((badge, info)) => Err((badge, fault_message(info, snd.regs.get().ip()))),
                Err(_) => {
                    drop(sl);
                    reclaim::later_thread(snd);
                    continue;
                }
            },
        };
        let taken = match taken {
            Ok(t) => t,
            Err(fault) => {
                // A fault: its message is the one the kernel made, the reply right is the
                // faulted thread's.
                drop(sl);
                drop(q);
                cur.regs.with(|rr| deliver_fault(rr, fault.0, &fault.1));
                sched::count(sched::Count::IpcSlow);
                let old = cur.life.lock().grant_reply(snd, ticket);
                if let Some((c, t)) = old {
                    thread::fail_caller(c, t);
                }
                if let Some(t) = direct_to {
                    place_claimed(t, false);
                }
                return Outcome::Received;
            }
        };
        crate::timeline::event(crate::timeline::Kind::Recv, crate::timeline::ep(ep.id()) << 32 | snd.id, taken.badge);
        let sregs = snd.regs.get();
        // A capability in flight whose object is gone (and with it the capability it was read
        // from) arrives as none (`InFlight::arrive`).
        let (cap, gone) = match taken.cap.map(crate::obj::InFlight::arrive) {
            Some(Ok(c)) => (Some(c), None),
            Some(Err(f)) => (None, Some(f)),
            None => (None, None),
        };
        reclaim::later_in_flight(gone);
        // The words under the sender's lock (it may not run before they are read); the
        // capability after every lock ([`arrive`]), into the running thread's own table and
        // its own registers' tag.
        let m = Outgoing { regs: &sregs, badge: taken.badge, from: &snd, caps: 0 };
        cur.regs.with(|rr| deliver(cur, rr, m));
        let slot = cur.regs.with(|rr| rr.ipc_receive_slot());
        sched::count(sched::Count::IpcSlow);
        let left = if taken.call {
            drop(sl);
            drop(q);
            let left = cap.and_then(|c| arrive_here(cur, slot, c));
            let old = cur.life.lock().grant_reply(snd, ticket);
            if let Some((c, t)) = old {
                thread::fail_caller(c, t);
            }
            left
        } else {
            // Its call's result now, in the hold that ended its wait: a suspension and resumption
            // from another CPU may place it once its lock is let go.
            thread::set_result(&snd, Ok([0; 3]));
            let left = match cap {
                Some(c) => {
                    drop(sl);
                    drop(q);
                    let left = arrive_here(cur, slot, c);
                    sl = snd.life.lock();
                    left
                }
                None => {
                    drop(q);
                    None
                }
            };
            // (As `place_claimed` counts: a sender of another CPU goes into its inbox.) Placed
            // after its capability arrived, so that its `Send` returns with it in the receiver's
            // table (unless another CPU's resumption placed it meanwhile).
            if sl.cpu != rl4_arch::percpu::cpu_index() {
                sched::count(sched::Count::IpcCross);
            }
            thread::place(&snd, &mut sl);
            drop(sl);
            reclaim::later_thread(snd);
            left
        };
        reclaim::later_cap(left);
        if let Some(t) = direct_to {
            place_claimed(t, false);
        }
        return Outcome::Received;
    }
    if timeout == 0 {
        drop(q);
        if let Some(t) = direct_to {
            place_claimed(t, false);
        }
        return Outcome::Return(Err(Error::Timeout));
    }
    // The deadline list's room is made before the thread blocks (the kernel may be out of
    // memory; the endpoint's queue is intrusive and needs none).
    if !room {
        drop(q);
        if let Some(t) = direct_to {
            place_claimed(t, false);
        }
        return Outcome::Return(Err(Error::OutOfMemory));
    }
    let deadline = deadline(timeout);
    match block_current_recv(cur, ep, deadline) {
        Ok(()) => {
            enqueue(&mut q.receivers, cur.clone());
            drop(q);
            timeout::add(deadline, cur);
            if let Some(t) = direct_to {
                // The server blocks: run the caller it just answered, right here.
                if place_claimed(t, true) {
                    crate::trace::stamp(crate::trace::SWITCHED);
                }
            }
            Outcome::Blocked
        }
        Err(()) => {
            drop(q);
            if let Some(t) = direct_to {
                place_claimed(t, false);
            }
            Outcome::Return(Err(Error::Interrupted))
        }
    }
}

/// `Reply` by the running thread `cur`. With `then_recv` a woken caller of this CPU is returned
/// claimed (woken, held nowhere) for `recv` to place; otherwise it is queued.
pub fn reply(cur: &Arc<Thread>, regs: &UserRegs, then_recv: bool) -> Result<Option<Arc<Thread>>, Error> {
    let tag = Tag(regs.ipc_tag());
    check_tag(cur, tag)?;
    let (caller, ticket) = cur.life.lock().take_reply().ok_or(Error::NoCaller)?;
    let mut cl = caller.life.lock();
    let Ok(w) = cl.wake(WaitOn::Reply(ticket)) else {
        if cl.waits(WaitOn::Fault(ticket)) {
            drop(cl);
            return fault_reply(caller, ticket, regs, then_recv);
        }
        drop(cl);
        reclaim::later_thread(caller);
        return Err(Error::PartnerGone);
    };
    crate::trace::stamp(crate::trace::PARTNER);
    crate::timeline::event(crate::timeline::Kind::Reply, caller.id, ticket);
    let m = Outgoing { regs, badge: 0, from: cur, caps: 0 };
    caller.regs.with(|rr| deliver(&caller, rr, m));
    crate::trace::stamp(crate::trace::DELIVERED);
    let here = cl.cpu == rl4_arch::percpu::cpu_index();
    drop(cl);
    drop(w);
    if then_recv && here {
        return Ok(Some(caller));
    }
    place_claimed(caller, false);
    Ok(None)
}

/// What a fault is kept as while queued (`Wait::FaultSend`'s `info`): the address, and the
/// vector and error code (32 bits) in one word.
pub fn fault_info(vector: u64, addr: u64, error: u64) -> [u64; 2] {
    [addr, vector << 32 | (error & 0xffff_ffff)]
}

/// The fault message (`rl4_abi::fault`'s words) from a fault's `info` and instruction pointer.
fn fault_message(info: [u64; 2], rip: u64) -> [u64; 4] {
    let mut m = [0; 4];
    m[rl4_abi::fault::W_KIND] = info[1] >> 32;
    m[rl4_abi::fault::W_ADDR] = info[0];
    m[rl4_abi::fault::W_IP] = rip;
    m[rl4_abi::fault::W_ERROR] = info[1] & 0xffff_ffff;
    m
}

/// Writes a fault message into a receiver's registers: tag ([`rl4_abi::fault::LABEL`], 4
/// words), the handler's badge, the fault's words.
fn deliver_fault(to: &mut UserRegs, badge: u64, msg: &[u64; 4]) {
    to.set_ipc_out(badge, Tag::new(rl4_abi::fault::LABEL, REG_WORDS, 0).0, [msg[0], msg[1], msg[2], msg[3]]);
    to.set_result(0);
}

/// The running thread `cur` took a fault (`info`: [`fault_info`]) at `rip` and its handler's
/// endpoint is `ep` (`badge`: the handler capability's): a `Call` on its behalf, with the
/// fault message and no timeout. As for `send`, the thread enters its reply wait (`FaultReply`) before any
/// receiver can see the fault; with no receiver waiting it takes that wait back and queues on
/// the endpoint (`FaultSend`, the message kept in the wait: its registers stay as the fault
/// left them). Refused (killed or suspended meanwhile): nothing is sent; a suspended thread
/// runs the instruction again when resumed. Returns whether the CPU switched to the handler.
pub fn fault_call(cur: &Arc<Thread>, ep: &Arc<Endpoint>, badge: u64, info: [u64; 2], rip: u64) -> bool {
    let ticket = sched::next_ticket();
    let mut q = ep.q.lock();
    if block_current(cur, Wait::FaultReply { ticket }, u64::MAX).is_err() {
        return false;
    }
    while let Some(r) = q.receivers.pop_front() {
        let mut rl = r.life.lock();
        let Ok(w) = rl.wake(WaitOn::Recv(ep.id())) else {
            drop(rl);
            reclaim::later_thread(r);
            continue;
        };
        crate::timeline::event(crate::timeline::Kind::Send, crate::timeline::ep(ep.id()) << 32 | r.id, badge);
        r.regs.with(|rr| deliver_fault(rr, badge, &fault_message(info, rip)));
        let old = rl.grant_reply(cur.clone(), ticket);
        drop(rl);
        drop(q);
        drop(w);
        if let Some((c, t)) = old {
            thread::fail_caller(c, t);
        }
        return place_claimed(r, true);
    }
    if cur.life.lock().unwait(ticket, rl4_arch::percpu::cpu_index()).is_err() {
        return false;
    }
    if let Ok(prio) = block_current_at(cur, Wait::FaultSend { ep: EpRef::new(ep), badge, info }, u64::MAX) {
        crate::timeline::event(crate::timeline::Kind::Send, crate::timeline::ep(ep.id()) << 32, badge);
        enqueue_sender(&mut q.senders, cur.clone(), prio);
    }
    false
}

/// The register changes a fault handler's resuming reply asks for (see `rl4_abi::fault`), if
/// the kernel can resume with them.
fn fault_changes(regs: &UserRegs) -> Result<[Option<u64>; 3], Error> {
    use rl4_abi::fault::*;
    let len = Tag(regs.ipc_tag()).len();
    let w = regs.ipc_words();
    let word = |i: usize| if (i as u64) < len { w[i] } else { 0 };
    let set = word(R_SET);
    if set & !(SET_IP | SET_SP | SET_RAX) != 0 {
        return Err(Error::BadFaultReply);
    }
    // `iretq` to a non-canonical address would fault in the kernel.
    let user = |v: u64| if v < rl4_abi::USER_END - rl4_abi::PAGE_SIZE { Ok(v) } else { Err(Error::BadFaultReply) };
    Ok([
        if set & SET_IP != 0 { Some(user(word(R_IP))?) } else { None },
        if set & SET_SP != 0 { Some(user(word(R_SP))?) } else { None },
        (set & SET_RAX != 0).then(|| word(R_RAX)),
    ])
}

/// A fault handler `Reply`s to the fault `ticket` of `caller`: label `STOP` leaves it
/// `Faulted`; any other resumes it with the registers the reply names changed. A reply asking
/// for registers the kernel cannot resume with stops the thread and returns `BadFaultReply`.
fn fault_reply(caller: Arc<Thread>, ticket: u64, regs: &UserRegs, then_recv: bool) -> Result<Option<Arc<Thread>>, Error> {
    let changes = if Tag(regs.ipc_tag()).label() == rl4_abi::fault::STOP { None } else { Some(fault_changes(regs)) };
    // No lock is held here: `caller` may be dropped at the end.
    let stop = |why| thread::stop_fault(&caller, WaitOn::Fault(ticket), why);
    let changes = match changes {
        None => return if stop("its fault handler replied stop") { Ok(None) } else { Err(Error::PartnerGone) },
        // The thread stopped: `BadFaultReply`. Its fault ended meanwhile (killed or suspended on
        // another CPU since `reply` saw the wait; before the twenty-eighth session this still
        // said it was stopped: a hostile review found it): `PartnerGone`, as for `STOP`.
        Some(Err(e)) => {
            return if stop("its fault handler's reply named registers it cannot resume with") { Err(e) } else { Err(Error::PartnerGone) };
        }
        Some(Ok(c)) => c,
    };
    let mut cl = caller.life.lock();
    let Ok(w) = cl.wake(WaitOn::Fault(ticket)) else {
        drop(cl);
        reclaim::later_thread(caller);
        return Err(Error::PartnerGone);
    };
    crate::timeline::event(crate::timeline::Kind::Reply, caller.id, ticket);
    caller.regs.with(|r| {
        let [ip, sp, rax] = changes;
        if let Some(v) = ip {
            r.set_ip(v);
        }
        if let Some(v) = sp {
            r.set_sp(v);
        }
        if let Some(v) = rax {
            r.set_result(v);
        }
    });
    let here = cl.cpu == rl4_arch::percpu::cpu_index();
    drop(cl);
    drop(w);
    if then_recv && here {
        return Ok(Some(caller));
    }
    place_claimed(caller, false);
    Ok(None)
}

/// `Signal`: OR `bits` into the word, or hand them to a waiter.
pub fn signal(n: &Arc<Notification>, bits: u64) {
    let mut q = n.q.lock();
    while let Some(w) = q.waiters.pop_front() {
        let mut wl = w.life.lock();
        if wl.waits(WaitOn::Notify(n.id())) {
            let word = core::mem::take(&mut q.word) | bits;
            let old = thread::wake_locked(&w, &mut wl, WaitOn::Notify(n.id()), Ok([word, 0, 0]));
            drop(wl);
            drop(q);
            reclaim::later_wait(old);
            reclaim::later_thread(w);
            return;
        }
        drop(wl);
        reclaim::later_thread(w);
    }
    q.word |= bits;
}

/// `Wait`: the bits, or block until a signal (`timeout` 0 and no bits: `Timeout`).
pub fn wait(cur: &Arc<Thread>, n: &Arc<Notification>, timeout: u64) -> Outcome {
    // Room for the deadline is made before the lock, but only a wait that blocks needs it: bits
    // already signalled are taken without (as `recv` does).
    let room = timeout == 0 || timeout::reserve(deadline(timeout)).is_ok();
    let mut q = n.q.lock();
    if q.word != 0 {
        let w = core::mem::take(&mut q.word);
        return Outcome::Return(Ok([w, 0, 0]));
    }
    if timeout == 0 {
        return Outcome::Return(Err(Error::Timeout));
    }
    if !room {
        return Outcome::Return(Err(Error::OutOfMemory));
    }
    let deadline = deadline(timeout);
    match block_current_at(cur, Wait::Notify { n: NtfRef(n.me.clone()) }, deadline) {
        Ok(prio) => {
            // Into the intrusive list, at its priority: nothing to allocate, nothing to fail.
            enqueue_waiter(&mut q.waiters, cur.clone(), prio);
            drop(q);
            timeout::add(deadline, cur);
            Outcome::Blocked
        }
        Err(()) => Outcome::Return(Err(Error::Interrupted)),
    }
}

/// `Poll`: takes the bits (possibly none) without waiting.
pub fn poll(n: &Arc<Notification>) -> u64 {
    core::mem::take(&mut n.q.lock().word)
}
