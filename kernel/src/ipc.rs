//! Synchronous IPC through endpoints, notifications, and the thread states they use.
//!
//! See `docs/ipc.md` for the state machine, the lock order and the paths step by step.
//!
//! Lock order: an endpoint's or notification's queue lock → a thread's `sched` lock → a CPU's
//! inbox lock; a task's capability table and a thread's IPC-buffer lock are leaves. The running
//! thread's registers are touched without a lock (only its own CPU does); a blocked thread's
//! only under its `sched` lock.
use alloc::collections::VecDeque;
use alloc::sync::{Arc, Weak};
use core::sync::atomic::Ordering;
use rl4_abi::ipc::{MAX_WORDS, NO_SLOT, REG_WORDS, Tag};
use rl4_abi::{Error, ThreadState};
use rl4_arch::entry::UserRegs;
use spin::Mutex;

use crate::obj::{Cap, Frame, Sched, Thread};
use crate::{mem, sched};


/// What a blocked thread waits for.
#[derive(Default)]
pub enum Wait {
    #[default]
    None,
    /// In an endpoint's send queue; its message is in its registers (and IPC buffer).
    Send { ep: Weak<Endpoint>, call: bool, badge: u64, cap: Option<Cap> },
    /// In an endpoint's receive queue.
    Recv { ep: Weak<Endpoint> },
    /// Waiting for the reply to its call.
    Reply,
    /// In a notification's wait queue.
    Notify { n: Weak<Notification> },
}

impl Wait {
    /// Replaces the wait with `new`. Unlike an assignment it drops the old wait inline, and not
    /// at all when it holds nothing (the out-of-line drop glue of the whole enum costs the fast
    /// path a call and a dozen instructions each time).
    #[inline(always)]
    pub fn set(&mut self, new: Wait) {
        let old = core::mem::replace(self, new);
        match old {
            Wait::None | Wait::Reply => core::mem::forget(old),
            Wait::Recv { ep } => drop(ep),
            Wait::Notify { n } => drop(n),
            send @ Wait::Send { .. } => drop(send),
        }
    }
}

#[derive(Default)]
pub(crate) struct EpQueues {
    /// Highest priority first, FIFO within a priority.
    pub(crate) senders: VecDeque<Arc<Thread>>,
    pub(crate) receivers: VecDeque<Arc<Thread>>,
}

pub struct Endpoint {
    pub(crate) q: Mutex<EpQueues>,
    /// A weak reference to itself: a waiter's `Wait` gets a clone (one atomic add) instead of
    /// `Arc::downgrade` (a compare-and-swap loop, out of line) at every wait.
    me: Weak<Endpoint>,
    _charge: crate::obj::Charge,
}

impl Endpoint {
    pub fn new(mem: &Arc<crate::obj::Memory>) -> Result<Arc<Endpoint>, Error> {
        let charge = crate::obj::Charge::new(mem, crate::obj::ENDPOINT_COST)?;
        let e = Arc::new_cyclic(|me| Endpoint { q: Mutex::new(EpQueues::default()), me: me.clone(), _charge: charge });
        crate::obj::ENDPOINTS.add(&e);
        Ok(e)
    }

    /// A weak reference to this endpoint.
    #[inline(always)]
    pub fn weak(&self) -> Weak<Endpoint> {
        self.me.clone()
    }
    pub fn charge(&self) -> &crate::obj::Charge {
        &self._charge
    }
}

impl Drop for Endpoint {
    /// The last capability is gone: every waiter gets `PartnerGone`.
    fn drop(&mut self) {
        let q = core::mem::take(&mut *self.q.lock());
        for t in q.senders.into_iter().chain(q.receivers) {
            let mut s = t.sched.lock();
            if matches!(s.state, ThreadState::BlockedSend | ThreadState::BlockedRecv) {
                wake_with(&t, &mut s, Err(Error::PartnerGone));
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct NState {
    word: u64,
    pub(crate) waiters: VecDeque<Arc<Thread>>,
}

pub struct Notification {
    pub(crate) q: Mutex<NState>,
    _charge: crate::obj::Charge,
}

impl Notification {
    pub fn new(mem: &Arc<crate::obj::Memory>) -> Result<Arc<Notification>, Error> {
        let charge = crate::obj::Charge::new(mem, crate::obj::NOTIFICATION_COST)?;
        let n = Arc::new(Notification { q: Mutex::new(NState::default()), _charge: charge });
        crate::obj::NOTIFICATIONS.add(&n);
        Ok(n)
    }
    pub fn charge(&self) -> &crate::obj::Charge {
        &self._charge
    }

}

impl Drop for Notification {
    fn drop(&mut self) {
        let q = core::mem::take(&mut *self.q.lock());
        for t in q.waiters {
            let mut s = t.sched.lock();
            if s.state == ThreadState::BlockedNotify {
                wake_with(&t, &mut s, Err(Error::PartnerGone));
            }
        }
    }
}

/// Ends `t`'s wait: result registers, Runnable, queued on its CPU. Caller holds `t`'s lock and
/// `t` is blocked (not running), so its registers are ours to write.
fn wake_with(t: &Arc<Thread>, s: &mut Sched, r: Result<(), Error>) {
    s.wait.set(Wait::None);
    s.deadline = u64::MAX;
    t.wait_deadline.store(u64::MAX, Ordering::Relaxed);
    t.regs.with(|regs| regs.rax = match r {
        Ok(()) => 0,
        Err(e) => e as u64,
    });
    s.state = ThreadState::Runnable;
    if s.cpu != rl4_arch::percpu::cpu_index() {
        sched::count(sched::Count::IpcCross);
    }
    sched::enqueue_locked(t, s);
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
    buffer: Option<Arc<Frame>>,
    cap: Option<Cap>,
}

fn buffer_of(t: &Thread) -> Option<Arc<Frame>> {
    t.ipc_buffer.lock().clone()
}

/// The sender's IPC buffer, only if the message needs it.
fn long_buffer(t: &Thread, tag: Tag) -> Option<Arc<Frame>> {
    if tag.len() > REG_WORDS { buffer_of(t) } else { None }
}

/// Checks a tag the caller wants to send.
fn check_tag(t: &Thread, tag: Tag) -> Result<(), Error> {
    if tag.reserved() != 0 || tag.len() > MAX_WORDS {
        return Err(Error::InvalidArgument);
    }
    if tag.len() > REG_WORDS && t.ipc_buffer.lock().is_none() {
        return Err(Error::InvalidArgument);
    }
    Ok(())
}

/// Copies a message into `to` (blocked and locked, or the running thread): tag, badge, words,
/// the buffer part, and the capability into its receive slot.
fn deliver(to: &Thread, to_regs: &mut UserRegs, m: Outgoing<'_>) {
    let tag = Tag(m.regs.rsi);
    let mut len = tag.len();
    if len > REG_WORDS {
        let dst = buffer_of(to);
        match (&m.buffer, &dst) {
            (Some(src), Some(dst)) => mem::copy_frame_words(src.pa, dst.pa, REG_WORDS as usize, (len - REG_WORDS) as usize),
            _ => len = REG_WORDS,
        }
    }
    let mut caps = 0;
    if let Some(cap) = m.cap {
        let slot = to_regs.r14;
        if slot != NO_SLOT && to.task.insert_cap(slot, cap).is_ok() {
            caps = 1;
        }
    }
    to_regs.rsi = Tag::new(tag.label(), len, caps).0;
    to_regs.rdi = m.badge;
    to_regs.rdx = m.regs.rdx;
    to_regs.r10 = m.regs.r10;
    to_regs.r8 = m.regs.r8;
    to_regs.r9 = m.regs.r9;
    to_regs.rax = 0;
}

fn deadline(timeout: u64) -> u64 {
    if timeout == rl4_abi::ipc::FOREVER { u64::MAX } else { rl4_arch::cpu::rdtsc().saturating_add(timeout) }
}

/// Inserts `t` into a sender queue after every thread of equal or higher priority.
fn push_by_priority(q: &mut VecDeque<Arc<Thread>>, t: Arc<Thread>, prio: u8) {
    let at = q.iter().position(|o| o.sched.lock().prio < prio).unwrap_or(q.len());
    q.insert(at, t);
}

/// Marks the running thread blocked in `state` with `wait`.
fn block_current(cur: &Arc<Thread>, state: ThreadState, wait: Wait, timeout: u64) {
    let mut s = cur.sched.lock();
    s.state = state;
    s.wait.set(wait);
    s.deadline = deadline(timeout);
    cur.wait_deadline.store(s.deadline, Ordering::Relaxed);
    if s.deadline != u64::MAX {
        sched::add_timeout(s.deadline, cur);
    }
}

/// Hands the woken `to` (locked in `s`) to the CPU: directly, if it is for this CPU and the
/// caller is about to block (the same-CPU fast path), else through its CPU's queue.
fn hand_over(to: &Arc<Thread>, s: &mut Sched, direct: bool) -> bool {
    s.wait.set(Wait::None);
    s.deadline = u64::MAX;
    if direct && s.cpu == rl4_arch::percpu::cpu_index() && sched::may_switch_to(s.prio) {
        s.state = ThreadState::Running;
        s.on_cpu = true;
        s.resume_iret = false;
        sched::count(sched::Count::IpcFast);
        return true;
    }
    s.state = ThreadState::Runnable;
    sched::count(sched::Count::IpcSlow);
    if s.cpu != rl4_arch::percpu::cpu_index() {
        sched::count(sched::Count::IpcCross);
    }
    sched::enqueue_locked(to, s);
    false
}

/// Pops the first thread of `q` that still waits on `ep` in `state`; returns it locked.
fn pop_waiter<'a>(q: &mut VecDeque<Arc<Thread>>, ep: &Endpoint, state: ThreadState) -> Option<Arc<Thread>> {
    while let Some(t) = q.pop_front() {
        let ok = {
            let s = t.sched.lock();
            s.state == state
                && match &s.wait {
                    Wait::Send { ep: w, .. } | Wait::Recv { ep: w } => core::ptr::eq(w.as_ptr(), ep),
                    _ => false,
                }
        };
        if ok {
            return Some(t);
        }
    }
    None
}

/// `Send`, `NbSend` and `Call` by the running thread `cur` on `ep` (whose capability carries
/// `badge`; `grant`: it has the grant right).
pub fn send(cur: &Arc<Thread>, regs: &UserRegs, ep: &Arc<Endpoint>, badge: u64, grant: bool, call: bool, timeout: u64) -> Outcome {
    let tag = Tag(regs.rsi);
    if let Err(e) = check_tag(cur, tag) {
        return Outcome::Return(Err(e));
    }
    let cap = if tag.caps() == 1 {
        if !grant {
            return Outcome::Return(Err(Error::MissingRight));
        }
        match cur.task.caps.lock().get(regs.r13) {
            Ok(c) => Some(c.clone()),
            Err(e) => return Outcome::Return(Err(e)),
        }
    } else {
        None
    };
    if call {
        // Before anyone can see the message: the reply may come from another CPU at once.
        let mut s = cur.sched.lock();
        s.state = ThreadState::BlockedReply;
        s.wait.set(Wait::Reply);
    }
    let mut q = ep.q.lock();
    match pop_waiter(&mut q.receivers, ep, ThreadState::BlockedRecv) {
        Some(r) => {
            drop(q);
            crate::trace::stamp(crate::trace::PARTNER);
            let mut s = r.sched.lock();
            let m = Outgoing { regs, badge, buffer: long_buffer(cur, tag), cap };
            r.regs.with(|rr| deliver(&r, rr, m));
            let old = if call { s.reply_to.replace(cur.clone()) } else { None };
            let direct = hand_over(&r, &mut s, call);
            let prio_of_direct = s.prio;
            drop(s);
            if let Some(old) = old {
                fail_caller(&old);
            }
            crate::trace::stamp(crate::trace::DELIVERED);
            if direct {
                sched::switch_direct(r, prio_of_direct);
                crate::trace::stamp(crate::trace::SWITCHED);
                return Outcome::Blocked;
            }
            if call { Outcome::Blocked } else { Outcome::Return(Ok([0; 3])) }
        }
        None if timeout == 0 => {
            drop(q);
            if call {
                let mut s = cur.sched.lock();
                s.state = ThreadState::Running;
                s.wait.set(Wait::None);
            }
            Outcome::Return(Err(Error::Timeout))
        }
        None => {
            let prio = cur.sched.lock().prio;
            block_current(cur, ThreadState::BlockedSend, Wait::Send { ep: ep.weak(), call, badge, cap }, timeout);
            push_by_priority(&mut q.senders, cur.clone(), prio);
            Outcome::Blocked
        }
    }
}

/// `Recv`, `NbRecv` and the receive half of `ReplyRecv` by the running thread `cur`.
/// `direct_to`: a thread just woken by this call's reply, to switch to if `cur` blocks.
pub fn recv(cur: &Arc<Thread>, ep: &Arc<Endpoint>, timeout: u64, direct_to: Option<Arc<Thread>>) -> Outcome {
    let mut q = ep.q.lock();
    match pop_waiter(&mut q.senders, ep, ThreadState::BlockedSend) {
        Some(snd) => {
            drop(q);
            let mut s = snd.sched.lock();
            let (call, badge, cap) = match core::mem::take(&mut s.wait) {
                Wait::Send { call, badge, cap, .. } => (call, badge, cap),
                _ => unreachable!("checked by pop_waiter"),
            };
            let sregs = snd.regs.get();
            let m = Outgoing { regs: &sregs, badge, buffer: long_buffer(&snd, Tag(sregs.rsi)), cap };
            cur.regs.with(|rr| deliver(cur, rr, m));
            sched::count(sched::Count::IpcSlow);
            if call {
                s.state = ThreadState::BlockedReply;
                s.wait.set(Wait::Reply);
                s.deadline = u64::MAX;
                drop(s);
                let old = cur.sched.lock().reply_to.replace(snd.clone());
                if let Some(old) = old {
                    fail_caller(&old);
                }
            } else {
                wake_with(&snd, &mut s, Ok(()));
            }
            if let Some(t) = direct_to {
                requeue(&t);
            }
            Outcome::Received
        }
        None if timeout == 0 => {
            drop(q);
            if let Some(t) = direct_to {
                requeue(&t);
            }
            Outcome::Return(Err(Error::Timeout))
        }
        None => {
            block_current(cur, ThreadState::BlockedRecv, Wait::Recv { ep: ep.weak() }, timeout);
            q.receivers.push_back(cur.clone());
            drop(q);
            if let Some(t) = direct_to {
                // The server blocks: run the caller it just answered, right here.
                let (direct, prio) = {
                    let s = t.sched.lock();
                    (s.state == ThreadState::Running && s.on_cpu && sched::may_switch_to(s.prio), s.prio)
                };
                if direct {
                    sched::count(sched::Count::IpcFast);
                    sched::switch_direct(t, prio);
                    crate::trace::stamp(crate::trace::SWITCHED);
                } else {
                    requeue(&t);
                }
            }
            Outcome::Blocked
        }
    }
}

/// A thread `reply` reserved for a direct switch that will not happen: queue it normally.
fn requeue(t: &Arc<Thread>) {
    let mut s = t.sched.lock();
    if !s.on_cpu {
        return;
    }
    s.on_cpu = false;
    if s.state == ThreadState::Running {
        s.state = ThreadState::Runnable;
        sched::count(sched::Count::IpcSlow);
        sched::enqueue_locked(t, &mut s);
    }
}

/// `Reply` by the running thread `cur`. With `then_recv` the woken caller is reserved for a
/// direct switch (returned) instead of queued, if it is on this CPU.
pub fn reply(cur: &Arc<Thread>, regs: &UserRegs, then_recv: bool) -> Result<Option<Arc<Thread>>, Error> {
    let tag = Tag(regs.rsi);
    check_tag(cur, tag)?;
    let caller = cur.sched.lock().reply_to.take().ok_or(Error::NoCaller)?;
    let mut s = caller.sched.lock();
    if s.state != ThreadState::BlockedReply {
        return Err(Error::PartnerGone);
    }
    crate::trace::stamp(crate::trace::PARTNER);
    let m = Outgoing { regs, badge: 0, buffer: long_buffer(cur, tag), cap: None };
    caller.regs.with(|rr| deliver(&caller, rr, m));
    crate::trace::stamp(crate::trace::DELIVERED);
    s.wait.set(Wait::None);
    s.deadline = u64::MAX;
    if then_recv && s.cpu == rl4_arch::percpu::cpu_index() {
        // Reserved: `recv` switches to it if the server blocks, or queues it.
        s.state = ThreadState::Running;
        s.on_cpu = true;
        s.resume_iret = false;
        drop(s);
        return Ok(Some(caller));
    }
    s.state = ThreadState::Runnable;
    if s.cpu != rl4_arch::percpu::cpu_index() {
        sched::count(sched::Count::IpcCross);
    }
    sched::count(sched::Count::IpcSlow);
    sched::enqueue_locked(&caller, &mut s);
    Ok(None)
}

/// A caller whose reply right was dropped or whose server died: wake it with `PartnerGone`.
pub fn fail_caller(c: &Arc<Thread>) {
    let mut s = c.sched.lock();
    if s.state == ThreadState::BlockedReply {
        wake_with(c, &mut s, Err(Error::PartnerGone));
    }
}

/// A thread stopped for good (exit, fault, task exit): the caller it owes a reply gets
/// `PartnerGone`; if it waited in a queue, it leaves it.
pub fn thread_stopped(t: &Arc<Thread>) {
    let (owed, wait) = {
        let mut s = t.sched.lock();
        (s.reply_to.take(), core::mem::take(&mut s.wait))
    };
    if let Some(c) = owed {
        fail_caller(&c);
    }
    match wait {
        Wait::Send { ep, .. } | Wait::Recv { ep } => {
            if let Some(ep) = ep.upgrade() {
                let mut q = ep.q.lock();
                q.senders.retain(|o| !Arc::ptr_eq(o, t));
                q.receivers.retain(|o| !Arc::ptr_eq(o, t));
            }
        }
        Wait::Notify { n } => {
            if let Some(n) = n.upgrade() {
                n.q.lock().waiters.retain(|o| !Arc::ptr_eq(o, t));
            }
        }
        _ => {}
    }
}

/// A wait's deadline passed (called from the timer tick on the thread's CPU).
pub fn expire(t: &Arc<Thread>, now: u64) {
    let wait_obj = {
        let s = t.sched.lock();
        if s.deadline > now {
            return;
        }
        match &s.wait {
            Wait::Send { ep, .. } | Wait::Recv { ep } => (ep.upgrade(), None),
            Wait::Notify { n } => (None, n.upgrade()),
            Wait::Reply => (None, None),
            Wait::None => return,
        }
    };
    // Take the queue lock first (lock order), then check the wait is still the same one.
    let remove = |s: &mut Sched| {
        if s.deadline <= now && !matches!(s.wait, Wait::None) {
            wake_with(t, s, Err(Error::Timeout));
        }
    };
    match wait_obj {
        (Some(ep), _) => {
            let mut q = ep.q.lock();
            q.senders.retain(|o| !Arc::ptr_eq(o, t));
            q.receivers.retain(|o| !Arc::ptr_eq(o, t));
            remove(&mut t.sched.lock());
        }
        (_, Some(n)) => {
            let mut q = n.q.lock();
            q.waiters.retain(|o| !Arc::ptr_eq(o, t));
            remove(&mut t.sched.lock());
        }
        _ => remove(&mut t.sched.lock()),
    }
}

/// `Signal`: OR `bits` into the word, or hand them to a waiter.
pub fn signal(n: &Arc<Notification>, bits: u64) {
    let mut q = n.q.lock();
    while let Some(w) = q.waiters.pop_front() {
        let mut s = w.sched.lock();
        if s.state == ThreadState::BlockedNotify {
            let word = core::mem::take(&mut q.word) | bits;
            w.regs.with(|r| r.rdi = word);
            wake_with(&w, &mut s, Ok(()));
            return;
        }
    }
    q.word |= bits;
}

/// `Wait` (`timeout` 0: `Poll`).
pub fn wait(cur: &Arc<Thread>, n: &Arc<Notification>, timeout: u64) -> Outcome {
    let mut q = n.q.lock();
    if q.word != 0 || timeout == 0 {
        let w = core::mem::take(&mut q.word);
        return Outcome::Return(Ok([w, 0, 0]));
    }
    block_current(cur, ThreadState::BlockedNotify, Wait::Notify { n: Arc::downgrade(n) }, timeout);
    q.waiters.push_back(cur.clone());
    Outcome::Blocked
}
