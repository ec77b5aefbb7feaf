//! The kernel's side of a thread's life: each transition of [`rl4_core::life`] together with
//! what must follow it — leaving the queue it waited in, the result its system call returns,
//! placing it on a CPU, failing the caller whose reply right dies with it, telling the CPU that
//! runs it.
//!
//! A thread's `Life` changes only under its lock (the lock of its home CPU, shared by every
//! thread of that home: `lock::HomeMutex`), and only through a named transition that
//! refuses a starting state it does not expect. A transition that ends a wait in an endpoint's
//! or notification's queue is made while that queue's lock is held too
//! ([`with_queue_locked`]), so that no queue ever holds an entry for a thread that no longer
//! waits there. What a transition gives back (a capability in flight, a reply right, a queue
//! object) is dropped after every lock is released.
use alloc::sync::Arc;
use rl4_abi::Error;
use rl4_core::life::{Ident, Refused, State, Stopped, Suspension, WaitOn};

use crate::ipc::{Endpoint, Notification};
use crate::obj::{Life, Thread, Wait};
use crate::sched;

/// Writes the result of the system call a thread waited in (it is blocked or stopped and not
/// running, so its registers are ours under its lock): an error code alone, or 0 and the three
/// result words, as a call that returns at once writes them (before the twenty-seventh session
/// a `Send` or `Wait` that ended after waiting left the caller's own `rsi` and `rdx` there).
pub fn set_result(t: &Thread, r: Result<[u64; 3], Error>) {
    t.regs.with(|regs| match r {
        Ok(v) => regs.set_results(v),
        Err(e) => regs.set_result(e as u64),
    });
}

/// Puts a `Ready` thread that no CPU holds into its CPU's inbox (does nothing for a thread that
/// is held somewhere or may not run). The caller holds `t`'s lock (`l`).
pub fn place(t: &Arc<Thread>, l: &mut Life) {
    if let Some(cpu) = l.enqueue() {
        sched::push(cpu, t, l.prio);
    }
}

/// The queue object a thread's wait is in, if it still exists.
pub(crate) enum QueueRef {
    Ep(Arc<Endpoint>),
    Ntf(Arc<Notification>),
}

fn queue_of(l: &Life) -> Option<QueueRef> {
    match l.state() {
        State::Blocked { wait: Wait::Send { ep, .. } | Wait::Recv { ep } | Wait::FaultSend { ep, .. }, .. } => {
            ep.weak.upgrade().map(QueueRef::Ep)
        }
        State::Blocked { wait: Wait::Notify { n }, .. } => n.0.upgrade().map(QueueRef::Ntf),
        _ => None,
    }
}

/// Whether the wait `l` of `t` is in still belongs to the queue object `q` the caller locked
/// (`None`: a wait in no queue, or in one whose object is already dying and which has let go
/// of `t`: an endpoint's destructor takes its waiters out of its lists one by one, and until it
/// has taken `t` out, `t` must not wait anywhere else). Compares identities only: it never
/// makes a strong reference, whose drop could run a destructor under the thread's lock.
fn same_queue(t: &Thread, l: &Life, q: &Option<QueueRef>) -> bool {
    let waits_on = match l.state() {
        State::Blocked { wait: Wait::Send { ep, .. } | Wait::Recv { ep } | Wait::FaultSend { ep, .. }, .. } => {
            Some((ep.ident(), ep.weak.strong_count()))
        }
        State::Blocked { wait: Wait::Notify { n }, .. } => Some((n.ident(), n.0.strong_count())),
        _ => None,
    };
    match (q, waits_on) {
        (None, None) => true,
        (None, Some((_, strong))) => strong == 0 && !t.wait_link.is_queued(),
        (Some(QueueRef::Ep(e)), Some((id, _))) => Arc::as_ptr(e) as usize == id,
        (Some(QueueRef::Ntf(n)), Some((id, _))) => Arc::as_ptr(n) as usize == id,
        (Some(_), None) => false,
    }
}

/// Runs transition `f` on `t` with the lock of the queue `t` waits in (if any) held around it
/// (lock order: queue, then thread), and removes `t` from that queue if `f` ended the wait.
/// The queue object and whatever `f` returns are dropped by the caller after the locks.
pub fn with_queue_locked<R>(t: &Arc<Thread>, mut f: impl FnMut(&mut Life) -> R) -> R {
    let mut again = false;
    loop {
        if again {
            // Looking again: the thread changed queues, or still sits in a dying endpoint's list,
            // which its destructor on another CPU empties one waiter at a time. That CPU may wait
            // for this one's answer to a TLB shoot-down meanwhile (a destructor it runs freed an
            // address space), or for its answer about closed port ranges (a destructor it runs
            // closed them: `device::Resync`): answer both while waiting, and spin politely.
            crate::tlb::service_tlb_here();
            rl4_arch::cpu::relax();
        }
        again = true;
        let q = queue_of(&t.life.lock());
        // `None`: it changed queues meanwhile (the arm's guards are gone at its end).
        let r = match &q {
            None => {
                let mut l = t.life.lock();
                // It started waiting meanwhile: look again.
                same_queue(t, &l, &q).then(|| f(&mut l))
            }
            Some(QueueRef::Ep(e)) => {
                let mut eq = e.q.lock();
                let mut l = t.life.lock();
                same_queue(t, &l, &q).then(|| {
                    let r = f(&mut l);
                    if !same_queue(t, &l, &q) {
                        eq.remove(t);
                    }
                    r
                })
            }
            Some(QueueRef::Ntf(n)) => {
                let mut nq = n.q.lock();
                let mut l = t.life.lock();
                same_queue(t, &l, &q).then(|| {
                    let r = f(&mut l);
                    if !same_queue(t, &l, &q) {
                        crate::reclaim::later_thread_opt(nq.waiters.remove(t));
                    }
                    r
                })
            }
        };
        // The queue's reference goes the same way whether the thread was found in it or it is
        // looked for again: it may be the last (the endpoint lost its last capability
        // meanwhile), and its destructor must not run here, where the caller may put
        // destruction off (`reclaim::deferred`: a timer's expiry during `Measure`'s IPI floor,
        // under its `BUSY`). Before the forty-second session a look again dropped it inline (a
        // review found it).
        crate::reclaim::later_queue(q);
        if let Some(r) = r {
            return r;
        }
    }
}

/// Ends `t`'s wait `on` with result `r` and queues it on its CPU. The caller holds the lock of
/// the queue the wait was in (or the wait has none: a reply). Returns the ended wait (drop it
/// after the locks), or `None` if `t` no longer waited so.
pub fn wake_locked(t: &Arc<Thread>, l: &mut Life, on: WaitOn, r: Result<[u64; 3], Error>) -> Option<Wait> {
    let w = l.wake(on).ok()?;
    set_result(t, r);
    place(t, l);
    Some(w)
}

/// A caller whose reply right (`ticket`) lapsed: it gets `PartnerGone`, if it still waits for
/// that reply.
///
/// A faulted thread whose handler lets go of its fault's reply right (it died, or was
/// destroyed holding it) is stopped as if it had no handler (`Faulted`).
///
/// A loop, not a recursion: a thread stopped so may itself hold the reply right of a thread
/// that faulted to it (a handler that faulted while it handled a fault), which fails next, and
/// so on, as long a chain as a task cares to build (recursing once per link, a few hundred
/// links overflowed the kernel stack: a review found it).
pub fn fail_caller(c: Arc<Thread>, ticket: u64) {
    let mut next = Some((c, ticket));
    while let Some((c, ticket)) = next.take() {
        let w = wake_locked(&c, &mut c.life.lock(), WaitOn::Reply(ticket), Err(Error::PartnerGone));
        match w {
            Some(w) => drop(w),
            None => next = fail_fault(&c, ticket),
        }
        crate::reclaim::later_thread(c);
        // A long chain runs with interrupts off: shoot-downs other CPUs wait for are answered
        // between links (a load when none waits).
        if next.is_some() && crate::lock::held() == 0 {
            crate::tlb::service_tlb_here();
        }
    }
}

/// [`fail_caller`] for a caller that waited in a fault (out of line: the IPC paths fail
/// callers on their cold branches only). Returns the reply right the stopped thread held.
#[cold]
#[inline(never)]
fn fail_fault(c: &Arc<Thread>, ticket: u64) -> Option<(Arc<Thread>, u64)> {
    stop_fault_owing(c, WaitOn::Fault(ticket), "its fault handler let go of the fault").ok().flatten()
}

/// Ends the fault `on` of `t` (its handler replied "stop", or the handler's endpoint died with
/// the fault queued): `Faulted`. Returns whether it was in that fault.
pub fn stop_fault(t: &Arc<Thread>, on: WaitOn, why: &str) -> bool {
    match stop_fault_owing(t, on, why) {
        Ok(owed) => {
            if let Some((c, ticket)) = owed {
                fail_caller(c, ticket);
            }
            true
        }
        Err(()) => false,
    }
}

/// [`stop_fault`], which hands back the reply right the stopped thread held (to be failed).
fn stop_fault_owing(t: &Arc<Thread>, on: WaitOn, why: &str) -> Result<Option<(Arc<Thread>, u64)>, ()> {
    let s = t.life.lock().stop_fault(on).map_err(|_| ())?;
    crate::fault::report_stopped(t, why);
    Ok(stopped(s))
}

/// What is left after a thread stopped for good: its CPU is told, its wait (and any
/// capability it carried) is released; returns the reply right it held, whose caller the
/// caller of this fails ([`fail_caller`]).
#[must_use]
fn stopped(s: Stopped<crate::obj::KernelKinds>) -> Option<(Arc<Thread>, u64)> {
    if let Some(cpu) = s.kick {
        sched::kick(cpu);
    }
    crate::reclaim::later_wait(s.wait);
    s.reply
}

/// Ends `t` (`TaskKill`, `TaskExit`, `ThreadExit`): `Dead` from any state. Returns whether it was
/// alive.
pub fn kill(t: &Arc<Thread>) -> bool {
    let r = with_queue_locked(t, |l| -> Result<_, rl4_core::life::Refused> {
        let s = l.kill()?;
        // A thread queued in this CPU's run queue lets go of its task's memory now; one queued
        // on another CPU, at that CPU's next decision (interrupted now), not when that CPU gets
        // round to running it (threads of higher priority can keep that from happening). (One
        // still on a third CPU's request list, having moved, waits for that CPU's next decision
        // first, a tick at most: its request link is taken.)
        t.killed.store(true, core::sync::atomic::Ordering::Relaxed);
        if let rl4_core::life::Place::Queued(c) = l.place() {
            match sched::unqueue(c, t) {
                Some(entry) => {
                    let _ = l.unqueue(c);
                    crate::reclaim::later_thread(entry);
                }
                // In another CPU's run queue (only that CPU touches it), or still in the
                // inbox: that CPU's next decision takes it out.
                None => sched::request(c, t, || true),
            }
        }
        Ok(s)
    });
    match r {
        Ok(s) => {
            if let Some((c, ticket)) = stopped(s) {
                fail_caller(c, ticket);
            }
            true
        }
        Err(_) => false,
    }
}

/// The running thread `t` took a fault it cannot go on from: `Faulted` (unless a kill, or a
/// suspension, from another CPU came first: `Life::fault`); whether it stopped.
pub fn fault(t: &Arc<Thread>) -> bool {
    let r = t.life.lock().fault();
    let Ok(s) = r else { return false };
    if let Some((c, ticket)) = stopped(s) {
        fail_caller(c, ticket);
    }
    true
}

/// `ThreadSuspend`: a runnable thread stops; a waiting one stops and its call returns
/// `Interrupted` when it is resumed.
pub fn suspend(t: &Arc<Thread>) -> Result<(), Refused> {
    let s: Suspension<_> = with_queue_locked(t, |l| {
        let fault = l.in_fault();
        let s = l.suspend()?;
        // A fault's wait is no system call: its registers stay as the fault left them (on
        // resumption the instruction runs again).
        if s.cancelled.is_some() && !fault {
            set_result(t, Err(Error::Interrupted));
        }
        Ok(s)
    })?;
    if let Some(cpu) = s.kick {
        sched::kick(cpu);
    }
    crate::reclaim::later_wait(s.cancelled);
    Ok(())
}

/// `ThreadResume` (and the first start): a suspended or new thread becomes runnable.
pub fn resume(t: &Arc<Thread>) -> Result<(), Refused> {
    let mut l = t.life.lock();
    if l.resume()? {
        place(t, &mut l);
    }
    Ok(())
}

/// `ThreadSetAffinity`: the thread moves to `cpu`; the CPU that runs it now lets it go at once,
/// and the CPU whose queue holds it passes it on at its next decision (a request: before the
/// fifteenth session it waited until that CPU popped it, which a CPU kept busy by a thread of
/// higher priority never did, so that moving a starved thread to an idle CPU did nothing).
/// Refused (a `Dead` thread: `Life::set_cpu`), its home stays.
pub fn set_affinity(t: &Arc<Thread>, cpu: u32) -> Result<(), Refused> {
    // Its home moves with it (the only place `Life::cpu` changes): both CPUs' home locks.
    t.life.rehome_when(cpu, |l| {
        l.set_cpu(cpu)?;
        match l.place() {
            rl4_core::life::Place::Current(c) if c != cpu => sched::kick(c),
            // Not urgent: that CPU's next tick decides at the latest.
            rl4_core::life::Place::Queued(c) if c != cpu => sched::request(c, t, || false),
            _ => {}
        }
        Ok(())
    })
}

/// `ThreadSetPriority`; refused for a `Dead` thread (`Life::set_prio`).
pub fn set_priority(t: &Arc<Thread>, prio: u8) -> Result<(), Refused> {
    let mut l = t.life.lock();
    let old = l.set_prio(prio)?;
    let sending = old != prio && matches!(l.state(), State::Blocked { wait: Wait::Send { .. } | Wait::FaultSend { .. } | Wait::Notify { .. }, .. });
    match l.place() {
        // Running on `c`: lowered, it may now be outranked there (and `c` published its old
        // priority for other CPUs' wake-ups to compare with); raised, nothing changes at once.
        rl4_core::life::Place::Current(c) if prio < old => sched::kick(c),
        // Its entry waits in the list of its old priority (in CPU `c`'s run queue, or in its
        // inbox with that priority): `c` moves it at its next decision, which this asks for
        // now if the change matters at once (`sched::reprio_urgent`: a raised thread must not
        // wait behind threads it now outranks).
        rl4_core::life::Place::Queued(c) if old != prio => {
            t.reprio.store(true, core::sync::atomic::Ordering::Release);
            sched::request(c, t, || sched::reprio_urgent(c, old, prio));
        }
        _ => {}
    }
    drop(l);
    if sending {
        resort_sender(t);
    }
    Ok(())
}

/// A thread whose priority changed while it waits in an endpoint's send queue (`Send`, `Call`,
/// a fault) or a notification's queue moves to the place of the priority it has now: those
/// queues serve their threads by priority (`docs/ipc.md`), last among those of its new one.
/// Lock order: the queue, then the thread; a thread leaves the queue only under the queue's
/// lock, so that whatever happened to it between the two looks is seen under both.
fn resort_sender(t: &Arc<Thread>) {
    let q = queue_of(&t.life.lock());
    match &q {
        Some(QueueRef::Ep(e)) => {
            let mut eq = e.q.lock();
            let l = t.life.lock();
            let sending = matches!(l.state(), State::Blocked { wait: Wait::Send { .. } | Wait::FaultSend { .. }, .. });
            if sending
                && same_queue(t, &l, &q)
                && let Some(a) = eq.senders.remove(t)
            {
                crate::ipc::enqueue_sender(&mut eq.senders, a, l.prio);
            }
            drop(l);
            drop(eq);
        }
        Some(QueueRef::Ntf(n)) => {
            let mut nq = n.q.lock();
            let l = t.life.lock();
            if matches!(l.state(), State::Blocked { wait: Wait::Notify { .. }, .. })
                && same_queue(t, &l, &q)
                && let Some(a) = nq.waiters.remove(t)
            {
                crate::ipc::enqueue_waiter(&mut nq.waiters, a, l.prio);
            }
            drop(l);
            drop(nq);
        }
        None => {}
    }
    crate::reclaim::later_queue(q);
}

/// A wait's deadline passed (the timer tick of the CPU whose list holds it).
pub fn expire(t: &Arc<Thread>, now: u64) {
    let w = with_queue_locked(t, |l| {
        let w = l.expire(now).ok()?;
        set_result(t, Err(Error::Timeout));
        place(t, l);
        Some(w)
    });
    crate::reclaim::later_wait(w);
}

/// The running thread `t` leaves this CPU: its FPU/SIMD registers go into its save area if it
/// has used them (`rl4_arch::fpu`, "First use"). Every path on which a thread stops being
/// current calls this.
#[inline(always)]
pub fn fpu_leave(t: &Thread) {
    t.fpu.leave();
}

/// `t` becomes this CPU's running thread: its FPU/SIMD registers are loaded if it has used
/// them, unless this CPU still holds them (it saved them last and loaded nothing since); `true`
/// only in that last case (a thread that has not used them loads none of its own — at most the
/// default image — and is not counted: `stat::FPU_KEPT` counts registers kept). Every path that
/// makes a thread current calls this (with `entry::set_current`) but the fast path's direct
/// switch, which calls [`fpu_switch`] (the same, with the leaving thread's save, in one test
/// when neither has used the registers).
#[inline(always)]
#[must_use]
pub fn fpu_enter(t: &Thread) -> bool {
    t.fpu.enter() == rl4_arch::fpu::Entered::Kept
}

/// The running thread `from` leaves this CPU and `to` becomes its running thread (a direct
/// switch): [`fpu_leave`] then [`fpu_enter`], in one test when neither has used the registers.
#[inline(always)]
#[must_use]
pub fn fpu_switch(from: &Thread, to: &Thread) -> bool {
    from.fpu.switch_to(&to.fpu, cfg!(feature = "lockcheck")) == rl4_arch::fpu::Entered::Kept
}

/// `#NM` in user mode: the running thread's first FPU or SIMD instruction (`true`: it now uses
/// them and runs that instruction again), or a fault (`false`).
pub fn fpu_first_use() -> bool {
    crate::sched::with_current(|t| t.fpu.first_use()).unwrap_or(false)
}
