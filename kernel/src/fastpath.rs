//! The IPC fast path: `Call` and `ReplyRecv` between two threads of one CPU, with a message that
//! fits in registers.
//!
//! A straight list of guards, each falling back to the general path (`syscall::handle`, which
//! gives the same results) before anything has changed; then the point of no return, where the
//! message is copied register to register, the partner is marked running here, the caller
//! blocks, and the CPU switches to the partner without a scheduling decision. Lock order as in
//! `ipc`: endpoint queue, then one thread at a time.
use alloc::sync::Arc;
use core::sync::atomic::Ordering;
use rl4_abi::ipc::{FOREVER, Tag};
use rl4_abi::{Rights, Sys, ThreadState};

use crate::ipc::{self, Endpoint, Wait};
use crate::obj::Thread;
use crate::{sched, trace};

/// Whether system call `n` may take the fast path at all (a load and two compares, for every
/// system call).
#[inline(always)]
pub fn candidate(n: u64) -> bool {
    n == Sys::Call as u64 || n == Sys::ReplyRecv as u64
}

/// Tries the fast path for system call `n` (a [`candidate`]) the running thread just made;
/// returns whether it handled it (the CPU now runs the partner).
pub fn try_fast(n: u64) -> bool {
    let cs = sched::this_cpu();
    // The running thread's reference is taken out of the CPU's slot rather than cloned (no
    // reference-count traffic); the switch puts the partner's in, a fallback puts it back.
    // Nothing on this CPU looks at the slot meanwhile, and no other CPU does.
    let Some(cur) = cs.current.lock().take() else { return false };
    let (slot, tag, timeout) = cur.regs.with(|r| (r.rdi, Tag(r.rsi), r.r12));
    let fits = tag.fits_registers() && timeout == FOREVER;
    let done = fits
        && if n == Sys::Call as u64 {
            call(cs, &cur, slot, tag)
        } else {
            n == Sys::ReplyRecv as u64 && reply_recv(cs, &cur, slot, tag)
        };
    if !done {
        *cs.current.lock() = Some(cur);
    }
    done
}

/// The endpoint in `slot` of the running thread's task, with its badge (errors: general path).
fn endpoint(cur: &Thread, slot: u64, rights: Rights) -> Option<(Arc<Endpoint>, u64)> {
    crate::syscall::endpoint(&cur.task, slot, rights).ok().map(|(e, badge, _)| (e, badge))
}

/// Copies the message words and tag of the running thread `from` into `to`'s saved registers.
fn copy_message(from: &Thread, to: &Thread, tag: Tag, badge: u64) {
    let (w0, w1, w2, w3) = from.regs.with(|r| (r.rdx, r.r10, r.r8, r.r9));
    to.regs.with(|r| {
        r.rax = 0;
        r.rsi = Tag::new(tag.label(), tag.len(), 0).0;
        r.rdi = badge;
        r.rdx = w0;
        r.r10 = w1;
        r.r8 = w2;
        r.r9 = w3;
    });
}

fn call(cs: &sched::CpuSched, cur: &Arc<Thread>, slot: u64, tag: Tag) -> bool {
    trace::stamp(trace::SETUP);
    let Some((ep, badge)) = endpoint(cur, slot, Rights::SEND) else { return false };
    trace::stamp(trace::LOOKUP);
    let me = rl4_arch::percpu::cpu_index();
    let mut q = ep.q.lock();
    let Some(r) = q.receivers.pop_front() else { return false };
    let mut rs = r.sched.lock();
    let waits_here = matches!(&rs.wait, Wait::Recv { ep: w } if core::ptr::eq(w.as_ptr(), Arc::as_ptr(&ep)));
    if rs.state != ThreadState::BlockedRecv || !waits_here || rs.cpu != me || !sched::nothing_more_urgent(cs, rs.prio) {
        drop(rs);
        q.receivers.push_front(r);
        return false;
    }
    // Point of no return.
    drop(q);
    trace::stamp(trace::PARTNER);
    copy_message(cur, &r, tag, badge);
    rs.wait.set(Wait::None);
    rs.deadline = u64::MAX;
    r.wait_deadline.store(u64::MAX, Ordering::Relaxed);
    let old = rs.reply_to.replace(cur.clone());
    rs.state = ThreadState::Running;
    rs.on_cpu = true;
    rs.resume_iret = false;
    let prio = rs.prio;
    drop(rs);
    {
        let mut s = cur.sched.lock();
        s.state = ThreadState::BlockedReply;
        s.wait.set(Wait::Reply);
        s.on_cpu = false;
        s.resume_iret = false;
    }
    if let Some(old) = old {
        ipc::fail_caller(&old);
    }
    cs.bump(sched::Count::IpcFast);
    trace::stamp(trace::DELIVERED);
    sched::switch_direct_blocked(cs, r, prio);
    trace::stamp(trace::SWITCHED);
    true
}

fn reply_recv(cs: &sched::CpuSched, cur: &Arc<Thread>, slot: u64, tag: Tag) -> bool {
    trace::stamp(trace::SETUP);
    let Some((ep, _)) = endpoint(cur, slot, Rights::RECEIVE) else { return false };
    trace::stamp(trace::LOOKUP);
    let Some(caller) = cur.sched.lock().reply_to.clone() else { return false };
    let me = rl4_arch::percpu::cpu_index();
    let mut q = ep.q.lock();
    if !q.senders.is_empty() {
        return false; // the server takes the next message: the general path
    }
    let mut cl = caller.sched.lock();
    if cl.state != ThreadState::BlockedReply || cl.cpu != me || !sched::nothing_more_urgent(cs, cl.prio) {
        return false;
    }
    // Point of no return.
    trace::stamp(trace::PARTNER);
    copy_message(cur, &caller, tag, 0);
    cl.wait.set(Wait::None);
    cl.deadline = u64::MAX;
    cl.state = ThreadState::Running;
    cl.on_cpu = true;
    cl.resume_iret = false;
    let prio = cl.prio;
    drop(cl);
    trace::stamp(trace::DELIVERED);
    {
        let mut s = cur.sched.lock();
        s.reply_to = None;
        s.state = ThreadState::BlockedRecv;
        s.wait.set(Wait::Recv { ep: ep.weak() });
        s.deadline = u64::MAX;
        s.on_cpu = false;
        s.resume_iret = false;
    }
    cur.wait_deadline.store(u64::MAX, Ordering::Relaxed);
    q.receivers.push_back(cur.clone());
    drop(q);
    cs.bump(sched::Count::IpcFast);
    sched::switch_direct_blocked(cs, caller, prio);
    trace::stamp(trace::SWITCHED);
    true
}
