//! The IPC fast path: `Call` and `ReplyRecv` between two threads of one CPU, with a message that
//! fits in registers.
//!
//! A straight list of guards, each falling back to the general path (`syscall::handle`, which
//! gives the same results) before anything has changed; then the point of no return, where the
//! message is copied register to register, the partner is marked running here, the caller
//! blocks, and the CPU switches to the partner without a scheduling decision. Lock order as in
//! `ipc`: endpoint queue, then one thread at a time.
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};
use rl4_abi::ipc::{FOREVER, Tag};
use rl4_abi::{Rights, Sys};

use rl4_core::life::WaitOn;

use crate::obj::{EpRef, Thread, Wait};
use crate::qsbr::InEntry;
use crate::{sched, thread, trace};

/// The system calls that may take a fast path, one bit per number (`fastpath=off` on the
/// command line clears them: every system call then takes the general path, the reference the
/// fast paths must agree with).
static FAST: AtomicU64 = AtomicU64::new(1 << Sys::Call as u64 | 1 << Sys::ReplyRecv as u64);
const _: () = assert!((Sys::Call as u64) < 64 && (Sys::ReplyRecv as u64) < 64);

/// Turns the fast paths on or off (at boot, before any user thread runs).
pub fn enable(on: bool) {
    FAST.store(if on { 1 << Sys::Call as u64 | 1 << Sys::ReplyRecv as u64 } else { 0 }, Ordering::Relaxed);
}

/// Whether system call `n` may take the fast path at all (a load and a bit test, for every
/// system call).
#[inline(always)]
pub fn candidate(n: u64) -> bool {
    n < 64 && FAST.load(Ordering::Relaxed) >> n & 1 != 0
}

/// Tries the fast path for system call `n` (a [`candidate`]) the running thread just made;
/// returns whether it handled it (the CPU now runs the partner).
pub fn try_fast(n: u64) -> bool {
    let cs = sched::this_cpu();
    // The running thread's reference is taken out of the CPU's slot rather than cloned (no
    // reference-count traffic); the switch puts the partner's in, a fallback puts it back.
    // Nothing on this CPU looks at the slot meanwhile, and no other CPU does.
    let Some(cur) = cs.current.take() else { return false };
    let (slot, tag, timeout) = cur.regs.with(|r| r.ipc_in());
    let tag = Tag(tag);
    if !(tag.fits_registers() && timeout == FOREVER) {
        cs.current.replace(Some(cur));
        return false;
    }
    // Each path consumes the reference on success (it becomes the reply right or the queue
    // entry) and hands it back otherwise.
    let entry = crate::qsbr::InEntry::new();
    let back = if n == Sys::Call as u64 { call(cs, &entry, cur, slot, tag) } else { reply_recv(cs, &entry, cur, slot, tag) };
    // Nothing read from the shadow lives past this point: the decision below may idle.
    drop(entry);
    match back {
        Ok(decide) => {
            if decide {
                sched::decide();
            }
            true
        }
        Err(cur) => {
            cs.current.replace(Some(cur));
            false
        }
    }
}


/// Copies the message words and tag of the running thread `from` into `to`'s saved registers.
fn copy_message(from: &Thread, to: &Thread, tag: Tag, badge: u64) {
    let words = from.regs.with(|r| r.ipc_words());
    to.regs.with(|r| r.set_ipc_out(badge, Tag::new(tag.label(), tag.len(), 0).0, words));
}

/// `Call`; `Ok(true)`: the CPU must make a scheduling decision (after the shadow's borrow ends).
fn call(cs: &sched::CpuSched, entry: &InEntry, cur: Arc<Thread>, slot: u64, tag: Tag) -> Result<bool, Arc<Thread>> {
    trace::stamp(trace::SETUP);
    // Read without a lock or a reference (`qsbr.rs`); errors are the general path's.
    let Some((ep, badge)) = crate::qsbr::endpoint(entry, &cur.task, slot, Rights::SEND) else { return Err(cur) };
    trace::stamp(trace::LOOKUP);
    let me = rl4_arch::percpu::cpu_index();
    let mut q = ep.q.lock();
    let Some(r) = q.receivers.pop_front() else { return Err(cur) };
    let mut rl = r.life.lock();
    // The last guard is the transition itself: it changes nothing unless the receiver waits on
    // this endpoint, belongs to this CPU and no CPU holds it.
    let woken = if sched::nothing_more_urgent(cs, rl.prio) { rl.wake_here(WaitOn::Recv(ep.id()), me).ok() } else { None };
    let Some(wait) = woken else {
        if rl.cpu != me {
            drop(rl);
            return call_cross(cs, cur, ep, q, r, badge, tag);
        }
        drop(rl);
        // Back where it was (the list took it out a moment ago: it cannot be refused).
        if let Err(r) = q.receivers.push_front(r) {
            crate::reclaim::later_thread(r);
        }
        return Err(cur);
    };
    // Point of no return: the receiver is Running here.
    drop(q);
    crate::timeline::event(crate::timeline::Kind::Send, crate::timeline::ep(ep.id()) << 32 | r.id, badge);
    trace::stamp(trace::PARTNER);
    copy_message(&cur, &r, tag, badge);
    let prio = rl.prio;
    // One thread's lock at a time: the receiver's goes before the caller's is taken.
    drop(rl);
    // Block the caller before the receiver gets the reply right: a kill of the receiver from
    // another CPU fails the caller through that right, which only works once it waits.
    let ticket = cs.next_ticket();
    block_caller(cs, &cur, ticket);
    // The caller's reference becomes the receiver's reply right (handed straight back if the
    // receiver was killed meanwhile).
    let old = r.life.lock().grant_reply(cur, ticket);
    crate::obj::dispose(wait);
    // A right that died: our own handed back (the receiver was killed or faulted meanwhile), or
    // an older one the receiver held (that caller is woken into this CPU's inbox). Either way
    // the CPU must decide again rather than return into the receiver.
    let decide_again = old.is_some();
    if let Some((c, t)) = old {
        thread::fail_caller(c, t);
    }
    cs.bump(sched::Count::IpcFast);
    trace::stamp(trace::DELIVERED);
    sched::switch_direct_blocked(cs, r, prio);
    trace::stamp(trace::SWITCHED);
    // Not straight into a dead receiver, nor ahead of a woken caller that outranks it: the
    // caller decides (the decision may idle and never come back, so it is made after this
    // frame and the shadow's borrow are gone).
    Ok(decide_again)
}

/// The server `cur` (the running thread) waits on `ep` again and leaves this CPU: blocked in
/// `Recv` and queued on `ep` (its queue `q` held by the caller and released here), its
/// reference becoming the queue entry; a server killed or suspended meanwhile does not wait
/// (its call returns `Interrupted` when it runs again) and is let go.
#[inline(always)]
fn wait_again(cs: &sched::CpuSched, cur: Arc<Thread>, ep: &crate::ipc::Endpoint, mut q: crate::lock::Guard<'_, crate::ipc::EpQueues, { crate::lock::Level::QUEUE }>) {
    let blocked = {
        let mut l = cur.life.lock();
        let blocked = match l.block(Wait::Recv { ep: EpRef(ep.weak()) }, u64::MAX) {
            Ok(()) => true,
            Err((_, w)) => {
                thread::set_result(&cur, Err(rl4_abi::Error::Interrupted));
                crate::obj::dispose(w);
                false
            }
        };
        sched::leave_fast(cs, &cur, &mut l);
        blocked
    };
    if blocked {
        crate::ipc::enqueue(&mut q.receivers, cur, None);
        drop(q);
    } else {
        drop(q);
        drop(cur);
    }
}

/// Blocks the running thread `cur` (locked in its own lock) in its wait for the reply `ticket`
/// and takes it off this CPU; a thread killed or suspended meanwhile does not wait (the
/// receiver's reply will find it gone; its call returns `Interrupted` when it runs again).
#[inline(always)]
fn block_caller(cs: &sched::CpuSched, cur: &Arc<Thread>, ticket: u64) {
    let mut l = cur.life.lock();
    if let Err((_, w)) = l.block(Wait::Reply { ticket }, u64::MAX) {
        thread::set_result(cur, Err(rl4_abi::Error::Interrupted));
        crate::obj::dispose(w);
    }
    sched::leave_fast(cs, cur, &mut l);
}

/// `Call` to a receiver of another CPU (the cross-CPU fast path): the receiver `r` (just taken
/// off `ep`'s queue `q`) gets the message in its registers and the reply right,
/// and is pushed into its CPU's inbox (an IPI only if that CPU halts); the caller waits for the
/// reply, and this CPU runs whatever comes next. The same transitions as the general path's
/// (`ipc::send`, `place_claimed`), without its look-ups done again.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn call_cross(
    cs: &sched::CpuSched,
    cur: Arc<Thread>,
    ep: &crate::ipc::Endpoint,
    mut q: crate::lock::Guard<'_, crate::ipc::EpQueues, { crate::lock::Level::QUEUE }>,
    r: Arc<Thread>,
    badge: u64,
    tag: Tag,
) -> Result<bool, Arc<Thread>> {
    let mut rl = r.life.lock();
    // The guards: it waits on this endpoint and no CPU holds it (one that still runs it, about to
    // leave it, would keep running it the moment it is woken, before it has the reply right:
    // the general path gives both under one lock); a refusal changes nothing. Woken `Ready` and
    // held by nobody, it is in this call's hands until it is placed below.
    let woken = if rl.place() == rl4_core::life::Place::Off { rl.wake(WaitOn::Recv(ep.id())).ok() } else { None };
    let Some(wait) = woken else {
        drop(rl);
        if let Err(r) = q.receivers.push_front(r) {
            crate::reclaim::later_thread(r);
        }
        return Err(cur);
    };
    drop(q);
    crate::timeline::event(crate::timeline::Kind::Send, crate::timeline::ep(ep.id()) << 32 | r.id, badge);
    copy_message(&cur, &r, tag, badge);
    drop(rl);
    // As on this CPU: the caller waits before the receiver can answer (or die and fail it).
    let ticket = cs.next_ticket();
    block_caller(cs, &cur, ticket);
    let old = {
        let mut rl = r.life.lock();
        let old = rl.grant_reply(cur, ticket);
        thread::place(&r, &mut rl);
        old
    };
    crate::obj::dispose(wait);
    if let Some((c, t)) = old {
        thread::fail_caller(c, t);
    }
    cs.bump(sched::Count::IpcFast);
    cs.bump(sched::Count::IpcCross);
    cs.await_reply();
    // No lock is held: the inbox holds its own reference.
    drop(r);
    // The caller left this CPU: the caller of this function decides what runs next.
    Ok(true)
}

/// `ReplyRecv`; `Ok(true)`: the CPU must make a scheduling decision.
fn reply_recv(cs: &sched::CpuSched, entry: &InEntry, cur: Arc<Thread>, slot: u64, tag: Tag) -> Result<bool, Arc<Thread>> {
    trace::stamp(trace::SETUP);
    let Some((ep, _)) = crate::qsbr::endpoint(entry, &cur.task, slot, Rights::RECEIVE) else { return Err(cur) };
    trace::stamp(trace::LOOKUP);
    let Some((caller, ticket)) = cur.life.lock().take_reply() else { return Err(cur) };
    let me = rl4_arch::percpu::cpu_index();
    let q = ep.q.lock();
    // The server takes the next message if one waits: the general path.
    let woken = if q.senders.is_empty() {
        let mut cl = caller.life.lock();
        let woken = if sched::nothing_more_urgent(cs, cl.prio) { cl.wake_here(WaitOn::Reply(ticket), me).ok() } else { None };
        if woken.is_none() && cl.cpu != me {
            drop(cl);
            return reply_recv_cross(cs, cur, ep, q, caller, ticket, tag);
        }
        woken.map(|w| (w, cl.prio))
    } else {
        None
    };
    let Some((wait, prio)) = woken else {
        drop(q);
        // Nothing changed: the reply right goes back.
        let old = cur.life.lock().grant_reply(caller, ticket);
        // Killed meanwhile: the right came back, and its caller must not wait for it.
        if let Some((c, t)) = old {
            thread::fail_caller(c, t);
        }
        return Err(cur);
    };
    // Point of no return: the caller is Running here.
    trace::stamp(trace::PARTNER);
    crate::timeline::event(crate::timeline::Kind::Reply, caller.id, ticket);
    copy_message(&cur, &caller, tag, 0);
    trace::stamp(trace::DELIVERED);
    wait_again(cs, cur, ep, q);
    crate::obj::dispose(wait);
    cs.bump(sched::Count::IpcFast);
    sched::switch_direct_blocked(cs, caller, prio);
    trace::stamp(trace::SWITCHED);
    Ok(false)
}

/// `ReplyRecv` to a caller of another CPU (the cross-CPU fast path): the caller gets the reply in its registers and is pushed into its CPU's inbox; the server waits
/// on `ep` again (its queue `q` held throughout, so a new call finds it there), and this CPU
/// runs whatever comes next. No sender waits (checked by the caller of this function).
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn reply_recv_cross(
    cs: &sched::CpuSched,
    cur: Arc<Thread>,
    ep: &crate::ipc::Endpoint,
    q: crate::lock::Guard<'_, crate::ipc::EpQueues, { crate::lock::Level::QUEUE }>,
    caller: Arc<Thread>,
    ticket: u64,
    tag: Tag,
) -> Result<bool, Arc<Thread>> {
    let mut cl = caller.life.lock();
    // The caller waits for this reply and no CPU holds it (one that still runs it is left to
    // the general path).
    let woken = if cl.place() == rl4_core::life::Place::Off { cl.wake(WaitOn::Reply(ticket)).ok() } else { None };
    let Some(w) = woken else {
        drop(cl);
        drop(q);
        // Nothing changed: the reply right goes back (as on this CPU).
        let old = cur.life.lock().grant_reply(caller, ticket);
        if let Some((c, t)) = old {
            thread::fail_caller(c, t);
        }
        return Err(cur);
    };
    crate::timeline::event(crate::timeline::Kind::Reply, caller.id, ticket);
    copy_message(&cur, &caller, tag, 0);
    thread::place(&caller, &mut cl);
    drop(cl);
    wait_again(cs, cur, ep, q);
    crate::obj::dispose(w);
    cs.bump(sched::Count::IpcFast);
    cs.bump(sched::Count::IpcCross);
    drop(caller);
    Ok(true)
}
