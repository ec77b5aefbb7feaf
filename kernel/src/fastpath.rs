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
    match back {
        Ok(()) => true,
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

fn call(cs: &sched::CpuSched, entry: &InEntry, cur: Arc<Thread>, slot: u64, tag: Tag) -> Result<(), Arc<Thread>> {
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
    {
        let mut l = cur.life.lock();
        if let Err((_, w)) = l.block(Wait::Reply { ticket }, u64::MAX) {
            // Killed or suspended meanwhile: it does not wait (the receiver's reply will find
            // it gone); a suspended caller's call returns `Interrupted` when it is resumed.
            thread::set_result(&cur, Err(rl4_abi::Error::Interrupted));
            crate::obj::dispose(w);
        }
        sched::leave_fast(cs, &cur, &mut l);
    }
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
    if decide_again {
        // Not straight into a dead receiver, nor ahead of a woken caller that outranks it. The
        // decision may idle and never come back here, so nothing may stay alive on this frame
        // (`ep` is a plain reference, not used after this).
        sched::decide();
    }
    Ok(())
}

fn reply_recv(cs: &sched::CpuSched, entry: &InEntry, cur: Arc<Thread>, slot: u64, tag: Tag) -> Result<(), Arc<Thread>> {
    trace::stamp(trace::SETUP);
    let Some((ep, _)) = crate::qsbr::endpoint(entry, &cur.task, slot, Rights::RECEIVE) else { return Err(cur) };
    trace::stamp(trace::LOOKUP);
    let Some((caller, ticket)) = cur.life.lock().take_reply() else { return Err(cur) };
    let me = rl4_arch::percpu::cpu_index();
    let mut q = ep.q.lock();
    // The server takes the next message if one waits: the general path.
    let woken = if q.senders.is_empty() {
        let mut cl = caller.life.lock();
        if sched::nothing_more_urgent(cs, cl.prio) {
            cl.wake_here(WaitOn::Reply(ticket), me).ok().map(|w| (w, cl.prio))
        } else {
            None
        }
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
    // The server's reference becomes its receive-queue entry.
    if blocked {
        crate::ipc::enqueue(&mut q.receivers, cur, None);
        drop(q);
    } else {
        drop(q);
        drop(cur);
    }
    crate::obj::dispose(wait);
    cs.bump(sched::Count::IpcFast);
    sched::switch_direct_blocked(cs, caller, prio);
    trace::stamp(trace::SWITCHED);
    Ok(())
}
