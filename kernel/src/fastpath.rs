//! The IPC fast path: `Call` and `ReplyRecv` between two threads of one CPU, with a message that
//! fits in registers.
//!
//! A list of guards, each falling back to the general path (`syscall::handle`, which gives the
//! same results). The ones about the running thread and its capability come before anything is
//! written; the partner's (it waits here, on this CPU, nothing more urgent waits) are its own
//! transition, made after the running thread has blocked and left the CPU in the same hold of
//! their home CPU's lock (`lock::HomeMutex`: one lock for both threads): if that transition
//! refuses, the running thread takes its wait back (`Life::take_back`) and the general path runs
//! the call. Then the CPU switches to the partner without a scheduling decision, still under
//! the locks, reads the sender's words last under its home lock, and leaves the kernel with them
//! in registers ([`Message::end`]). Locks: the running thread's home lock first (its
//! locked instruction is the barrier the lock-free capability read needs: [`entered`]), then
//! the endpoint's queue lock with a try that never waits (`Mutex::try_lock_unordered`: the one
//! exception to `ipc`'s order, queue then home; held elsewhere: the general path). A partner of
//! another home is reached after the first home lock is released, under the queue's lock, in
//! that order (the cross-CPU fast path).
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};
use rl4_abi::ipc::{FOREVER, REG_WORDS, Tag};
use rl4_abi::Rights;

use rl4_core::life::WaitOn;

use crate::obj::{EpRef, Thread, Wait};
use crate::qsbr::InEntry;
use crate::{sched, thread, trace};

/// One more than the largest `Tag` low half (length, capability count and reserved bits, as
/// [`Tag::fits_registers`] compares them) a fast path takes: `REG_WORDS + 1`, or 0 with
/// `fastpath=off` on the command line (no message passes: every `Call` and `ReplyRecv` then
/// takes the general path, the reference the fast paths must agree with). The switch costs
/// nothing of its own: it is the message's one compare (before the twenty-eighth session a
/// bit mask of system-call numbers, five instructions per call).
static FAST_BELOW: AtomicU64 = AtomicU64::new(REG_WORDS + 1);
const _: () = assert!(Tag(REG_WORDS).fits_registers() && !Tag(REG_WORDS + 1).fits_registers());

/// Turns the fast paths on or off (at boot, before any user thread runs).
pub fn enable(on: bool) {
    FAST_BELOW.store(if on { REG_WORDS + 1 } else { 0 }, Ordering::Relaxed);
}

/// Tries the fast path of `Call` (`CALL`) or `ReplyRecv` the running thread just made; returns
/// whether it handled it (the CPU now runs the partner). `trap::rl4_syscall` calls it by the
/// number, one function for each (no test of the number here).
#[inline(always)]
pub fn try_fast<const CALL: bool>() -> bool {
    // SAFETY: a system call comes from a thread this CPU runs, after its scheduler was set up.
    #[allow(unsafe_code)]
    let cs = unsafe { sched::this_cpu_running() };
    // The running thread's reference is taken out of the CPU's slot rather than cloned (no
    // reference-count traffic); the switch puts the partner's in, a fallback puts it back.
    // Nothing on this CPU looks at the slot meanwhile, and no other CPU does.
    let Some(cur) = cs.take_current() else { return false };
    let (slot, tag, timeout) = cur.regs.with(|r| r.ipc_in());
    // `Tag::fits_registers` against the on/off bound, and no timeout.
    if !(tag & 0xffff < FAST_BELOW.load(Ordering::Relaxed) && timeout == FOREVER) {
        back(cs, cur);
        return false;
    }
    let tag = Tag(tag);
    // Each path consumes the reference on success (it becomes the reply right or the queue
    // entry) and puts it back in the slot otherwise ([`back`]). Nothing read from a shadow
    // lives past its return (each path's `InEntry` is its own): the decision below may idle.
    let fast = if CALL { call(cs, cur, slot, tag) } else { reply_recv(cs, cur, slot, tag) };
    match fast {
        Fast::Resume => true,
        Fast::Decide => {
            sched::decide();
            true
        }
        Fast::Idle => {
            if sched::may_idle_now(cs) {
                sched::idle();
            }
            sched::decide();
            true
        }
        Fast::General => false,
    }
}

/// How a fast path ended.
enum Fast {
    /// The CPU runs the partner, whose message is in its block: the ordinary way back.
    Resume,
    /// The CPU must make a scheduling decision (after the shadow's borrow ends).
    Decide,
    /// The running thread blocked, went to another CPU's thread, and this CPU holds none now:
    /// with nothing queued, in the inbox or asked of it (`sched::may_idle_now`), the idle loop
    /// runs next (after the shadow's borrow ends), else a decision, as for `Decide`. (Before the
    /// thirty-first session always a decision, which with nothing there entered the idle loop
    /// after its own reclaim drain, serve and pick: some 50 instructions a system call.)
    Idle,
    /// Not taken: the running thread is current here again, and the general path runs its
    /// call.
    General,
}

/// A message for the thread the CPU switched to, as its system call returns it: the badge, the
/// tag (label and length) and the four words.
struct Message {
    badge: u64,
    tag: u64,
    words: [u64; 4],
}

impl Message {
    #[inline(always)]
    fn new(badge: u64, tag: Tag, words: [u64; 4]) -> Message {
        Message { badge, tag: Tag::new(tag.label(), tag.len(), 0).0, words }
    }

    /// How a same-CPU fast path of `Call` (`CALL`) or `ReplyRecv` ends once it has switched,
    /// let go of its locks and dropped its [`InEntry`] token: the partner returns to user mode
    /// with the message in registers (`entry::return_with_message`, straight from here: the
    /// words, read last under the locks, go into the registers the exit expects them in, not
    /// through the partner's block and back); or, if the CPU must decide first (`decide`), the
    /// message goes into the partner's block (it is current: `gs:32`) and the decision follows
    /// (`Fast::Decide`).
    #[inline(always)]
    fn end<const CALL: bool>(self, decide: bool) -> Fast {
        if decide {
            rl4_arch::entry::set_current_ipc_out(self.badge, self.tag, self.words);
            return Fast::Decide;
        }
        trace::stamp(trace::DONE);
        let n = if CALL { rl4_abi::Sys::Call } else { rl4_abi::Sys::ReplyRecv } as u64;
        crate::timeline::event(crate::timeline::Kind::SysExit, n, 1);
        rl4_arch::entry::return_with_message(self.badge, self.tag, self.words)
    }
}

/// The token of a fast path's capability read ([`crate::qsbr::endpoint`]), made right after
/// the running thread's home lock `l` was taken. That acquisition is a locked read-modify-write,
/// a full barrier on x86: the count of this CPU's last exit from the kernel (a plain increment
/// before `sysret`, which does not drain the store buffer, nor does `syscall`) is visible to
/// every CPU before the read, so a grace period that counts that exit began before the read
/// and does not end before this entry's own exit (`rl4_core::qsbr`; loom:
/// `barrier_orders_the_last_exit_before_the_read`). Before the twenty-third session the read
/// came first: a remover could see the earlier exit's count land after its snapshot and free an
/// endpoint this entry had just read (a review found it).
#[inline(always)]
fn entered(l: &crate::lock::HomeMutexGuard<'_, crate::obj::Life>) -> InEntry {
    // SAFETY: nothing before the token's end returns to user mode, idles or settles a grace
    // period (`InEntry::new`'s contract): each path ends in a switch that only fills this CPU's
    // slots, then drops the token before it leaves the kernel ([`Message::end`]), or returns
    // (a fallback, or `Fast::Decide`/`Fast::Resume`/`Fast::Idle`, the token gone with the path's
    // frame) to `try_fast`, which makes the decision or idles, or returns to the way out. The
    // barrier the contract asks for is `l`'s acquisition (above).
    #[allow(unsafe_code)]
    unsafe {
        InEntry::new(l)
    }
}

/// The fast path is not taken: the running thread `cur`, taken out of this CPU's current slot
/// at the start, goes back there.
#[inline(always)]
fn back(cs: sched::Here, cur: Arc<Thread>) -> Fast {
    cs.fill_current(cur);
    Fast::General
}


/// Writes a message (the sender's words, read under its lock after it blocked) into `to`'s
/// saved registers.
#[inline(always)]
fn deliver(to: &Thread, words: [u64; 4], tag: Tag, badge: u64) {
    to.regs.with(|r| r.set_ipc_out(badge, Tag::new(tag.label(), tag.len(), 0).0, words));
}

/// The caller whose reply right the receiver `rl` (under its home lock, the caller's too: the
/// same-CPU case) was just granted, as it leaves this CPU for the receiver `to`: its FPU state is
/// handed over (`sched::fpu_switch_fast`) and its message words read, both under that lock (once
/// the caller waits, a suspension from another CPU may write its registers, and a resume may
/// run it elsewhere, but only under or after that lock). (Here rather than before the grant,
/// which moves the caller's reference: there, the FPU's out-of-line save made the compiler read
/// the receiver's state again for the grant's own test: 445 instructions a round trip, 428 here.)
#[inline(always)]
fn caller_leaves(cs: sched::Here, rl: &crate::obj::Life, to: &Thread) -> [u64; 4] {
    match rl.reply_right() {
        Some((c, _)) => {
            sched::fpu_switch_fast(cs, c, to);
            c.regs.with(|r| r.ipc_words())
        }
        None => unreachable!("the right was granted under this lock, to a receiver that runs"),
    }
}

/// Puts a receiver the fast path took off an endpoint's queue back where it was (the list
/// took it out a moment ago: it cannot be refused).
#[inline(always)]
fn put_back(q: &mut crate::ipc::EpQueues, r: Arc<Thread>) {
    if let Err(r) = q.receivers.push_front(r) {
        crate::reclaim::later_thread(r);
    }
}

/// `Call`.
///
/// One home lock for both threads (taken first, then the endpoint's queue with a try: see the
/// module's documentation): the caller waits for its reply and leaves this CPU, then the receiver is
/// woken and given the reply right in the same hold (a receiver of another home: in one hold of
/// its own home's lock, after the caller's is released), so that it never holds the right of
/// a caller that does not wait yet (a kill of the receiver fails the caller through that
/// right). A guard that fails after the caller blocked takes its wait back ([`take_back`]).
fn call(cs: sched::Here, cur: Arc<Thread>, slot: u64, tag: Tag) -> Fast {
    trace::stamp(trace::SETUP);
    // The caller's home lock first: its locked instruction is the barrier the capability read
    // needs ([`entered`]).
    let mut l = cur.life.lock();
    let entry = entered(&l);
    // Read without a lock or a reference (`qsbr.rs`); errors are the general path's.
    let Some((ep, badge)) = crate::qsbr::endpoint::<{ Rights::SEND.0 }>(&entry, &cur.task, &cur.memo, slot) else {
        drop(l);
        return back(cs, cur);
    };
    trace::stamp(trace::LOOKUP);
    let me = rl4_arch::percpu::cpu_index();
    // Under the home lock: a try (another CPU holding the queue sends the call to the general
    // path, which waits for it in the lock order's way).
    let Some(mut q) = ep.q.try_lock_unordered() else {
        drop(l);
        return back(cs, cur);
    };
    let Some(r) = q.receivers.pop_front() else {
        drop(q);
        drop(l);
        return back(cs, cur);
    };
    let ticket = cs.next_ticket();
    match block_caller(&mut l, ticket, me) {
        Ok(()) => {}
        Err(w) => {
            drop(l);
            put_back(&mut q, r);
            drop(q);
            // After every lock (`dispose`'s rule; a reply wait has nothing to drop today).
            crate::obj::dispose(w);
            return back(cs, cur);
        }
    };
    // A receiver of the caller's home is reached under the lock already held (the same-CPU
    // case: one lock for both threads); the last guard is the transition itself: it changes
    // nothing unless the receiver waits on this endpoint, belongs to this CPU and no CPU holds
    // it. (The lock is kept without the caller's value: its reference moves below.)
    let mut l = l.into_held();
    if let Some(mut rl) = l.other(&r.life) {
        // A receiver that holds an older reply right (it took a call with `Recv` and has not
        // answered) is left to the general path, which fails that caller: here the grant below
        // then never hands one back, and the compiler drops the code for it.
        // (Its priority read once: no transition changes it.)
        let prio = rl.prio;
        let woken = if sched::nothing_more_urgent(cs, prio) && rl.reply_right().is_none() {
            rl.wake_here(WaitOn::Recv(ep.id()), me).ok()
        } else {
            None
        };
        if let Some(wait) = woken {
            // Point of no return: the receiver is Running here. The caller's reference becomes
            // its reply right, and its endpoint reference stays with it for its next wait
            // there: right after the transition, so that the compiler sees the state it just
            // wrote (`grant_reply` tests it).
            let old = rl.grant_reply(cur, ticket);
            let stale = rl.keep_recv(wait);
            drop(q);
            crate::timeline::event(crate::timeline::Kind::Send, crate::timeline::ep(ep.id()) << 32 | r.id, badge);
            trace::stamp(trace::PARTNER);
            if old.is_some() || stale.is_some() {
                // Something to let go of after the locks (a receiver that waited on another
                // endpoint last, or held an older reply right): the message goes into its block
                // under them, and the switch comes after.
                deliver(&r, caller_leaves(cs, &rl, &r), tag, badge);
                drop(rl);
                drop(l);
                if let Some(w) = stale {
                    crate::obj::dispose(w);
                }
                // A woken caller may outrank the receiver: the CPU decides rather than return into it.
                let decide_again = old.is_some();
                if let Some((c, t)) = old {
                    thread::fail_caller(c, t);
                }
                cs.bump(sched::Count::DirectFast);
                let lowered = sched::switch_direct_blocked(cs, &r, prio);
                cs.fill_current(r);
                return if decide_again || lowered { Fast::Decide } else { Fast::Resume };
            }
            cs.bump(sched::Count::DirectFast);
            trace::stamp(trace::DELIVERED);
            // The switch under the home lock (it takes no lock of its own but the PCID cache's,
            // and waits for nobody), so that the caller's words are read last, under it (the
            // caller waits: a suspension from another CPU writes its registers only under that
            // lock), and go straight into the registers of the way out.
            let lowered = sched::switch_direct_blocked(cs, &r, prio);
            trace::stamp(trace::SWITCHED);
            // The decision may idle and never come back, so it is made after this frame and
            // the shadow's borrow are gone; the way out is such a point too.
            macro_rules! tail {
                ($decide:expr) => {{
                    let words = caller_leaves(cs, &rl, &r);
                    drop(rl);
                    drop(l);
                    cs.fill_current(r);
                    drop(entry);
                    Message::new(badge, tag, words).end::<true>($decide)
                }};
            }
            // (The tail in both arms: the compiler then branches on the priority's compare
            // itself, rather than keep its outcome in a register for a test at the end.)
            return if lowered { tail!(true) } else { tail!(false) };
        }
        drop(rl);
        sched::left_fast(&cur);
        drop(l);
        put_back(&mut q, r);
        drop(q);
        return take_back(cs, cur, WaitOn::Reply(ticket), me);
    }
    // The words are read under the caller's lock (see `block_caller`), last.
    let words = cur.regs.with(|r| r.ipc_words());
    sched::left_fast(&cur);
    drop(l);
    // The cross-CPU fast path: a receiver of another CPU that no CPU holds (one that still runs
    // it, about to leave it, is left to the general path) is woken `Ready`, gets the message
    // and the reply right in this one hold of its home's lock, and is pushed into its CPU's
    // inbox (an IPI only if that CPU halts); this CPU runs whatever comes next.
    let mut rl = r.life.lock();
    if rl.cpu != me && rl.place() == rl4_core::life::Place::Off {
        if let Ok(wait) = rl.wake(WaitOn::Recv(ep.id())) {
            drop(q);
            crate::timeline::event(crate::timeline::Kind::Send, crate::timeline::ep(ep.id()) << 32 | r.id, badge);
            deliver(&r, words, tag, badge);
            let who = cur.id;
            let old = rl.grant_reply(cur, ticket);
            let stale = rl.keep_recv(wait);
            let (to, prio, held) = queue_for_cpu(rl);
            hand_over(to, r, prio);
            drop(held);
            cross_done(cs, stale, old, Some(who));
            return Fast::Idle;
        }
    }
    drop(rl);
    put_back(&mut q, r);
    drop(q);
    take_back(cs, cur, WaitOn::Reply(ticket), me)
}

/// Blocks the running thread `cur` (its `Life` is `l`, under its home's lock) in its wait for
/// the reply `ticket` and takes it off this CPU. Its message words must be read under that
/// lock from then on (once it waits, a suspension from another CPU may write its registers,
/// under that lock too): the caller reads them in the same hold (for a partner of the same
/// home, after the switch, through the partner's new reply right: [`caller_leaves`]; for one of
/// another home, before the lock is let go), and its FPU state is handed over in that hold too
/// (`caller_leaves` to a partner of this CPU, `sched::left_fast` on every other way).
/// The wait back, changing nothing, if it may not wait (killed or suspended meanwhile;
/// `Life::block_here` also refuses a thread not current here, which cannot happen): the general
/// path gives the call's answer (the wait is disposed of after the lock is released).
#[inline(always)]
fn block_caller(l: &mut crate::obj::Life, ticket: u64, me: u32) -> Result<(), Wait> {
    if let Err((_, w)) = l.block_here(Wait::Reply { ticket }, u64::MAX, me) {
        return Err(w);
    }
    Ok(())
}

/// A guard failed after the running thread `cur` entered the wait `on` and left this CPU on
/// this path, before anybody could end that wait: it takes the wait back and is current here
/// again, and the general path runs its call (`Fast::General`). If the wait ended meanwhile (a
/// kill or a suspension from another CPU, which finished the call for it), the thread is let go
/// and the CPU decides what runs next (`Fast::Decide`).
#[cold]
#[inline(never)]
fn take_back(cs: sched::Here, cur: Arc<Thread>, on: WaitOn, me: u32) -> Fast {
    let (taken, moved) = {
        let mut l = cur.life.lock();
        (l.take_back(on, me), l.cpu != me)
    };
    match taken {
        Ok(w) => {
            crate::obj::dispose(w);
            // Moved to another CPU meanwhile: this CPU lets it go at its next decision.
            if moved {
                sched::kick(me);
            }
            back(cs, cur)
        }
        Err(_) => {
            crate::reclaim::later_thread(cur);
            Fast::Decide
        }
    }
}

/// The cross-CPU fast path's partner, woken `Ready` under its home's lock (`l`), is queued for
/// its CPU (`Life::enqueue`: the CPU, unless it may not run); its priority, and the lock kept
/// without the borrow of the partner's `Life`, so that its reference can move ([`hand_over`]).
#[inline(always)]
fn queue_for_cpu(mut l: crate::lock::HomeMutexGuard<'_, crate::obj::Life>) -> (Option<u32>, u8, crate::lock::HomeMutexHeld) {
    let to = l.enqueue();
    let prio = l.prio;
    (to, prio, l.into_held())
}

/// Under the partner's home lock ([`queue_for_cpu`]): its reference — the one this path holds —
/// goes into its CPU's inbox (as `thread::place` does with a new reference: no reference count
/// changes here), or, if it was not queued, is let go later.
#[inline(always)]
fn hand_over(to: Option<u32>, p: Arc<Thread>, prio: u8) {
    match to {
        Some(cpu) => sched::push_owned(cpu, p, prio),
        None => crate::reclaim::later_thread(p),
    }
}

/// The end of a cross-CPU fast path, after every lock is released: what the partner (in its
/// CPU's inbox) let go of is dropped (`wait`; `ReplyRecv` disposes of its caller's reply wait
/// itself, inline) and a reply right that died fails its caller, both out of line (rare); the
/// counts; and a caller (`caller`, `Call`) expects its reply soon. Out of line and cold, and
/// so is, for the compiler, the cross-CPU path that calls it: made inline (thirty-first
/// session), the cross-CPU round trip took 108 instructions fewer under icount, but the
/// same-CPU one, laid out in the same function, 24 more (the cross-CPU part in a function of
/// its own behind `core::hint::cold_path`: 36 and 6 more). Its rare part is a function of its
/// own, so that this one needs little of a frame: 36 instructions a cross-CPU round trip fewer
/// than with it inside.
#[cold]
#[inline(never)]
fn cross_done(cs: sched::Here, wait: Option<Wait>, old: Option<(Arc<Thread>, u64)>, caller: Option<u64>) {
    match (wait, old) {
        (None, None) => {}
        (wait, old) => cross_let_go(wait, old),
    }
    cs.bump(sched::Count::IpcFast);
    cs.bump(sched::Count::IpcCross);
    if let Some(who) = caller {
        cs.await_reply(who);
    }
}

/// [`cross_done`]'s rare part: a wait the partner let go of, a reply right that died.
#[cold]
#[inline(never)]
fn cross_let_go(wait: Option<Wait>, old: Option<(Arc<Thread>, u64)>) {
    if let Some(w) = wait {
        crate::obj::dispose(w);
    }
    if let Some((c, t)) = old {
        thread::fail_caller(c, t);
    }
}

/// `ReplyRecv`.
///
/// Under the endpoint's queue lock (so that no call finds the server before it is queued
/// again), under the server's home lock: the server takes its reply right, waits on `ep` again
/// and leaves this CPU; then the caller is woken in the same hold (one of another home: under
/// its home's lock, after the server's is released). A guard that fails after the server
/// blocked gives it its wait and its reply right back ([`undo_server`]).
fn reply_recv(cs: sched::Here, cur: Arc<Thread>, slot: u64, tag: Tag) -> Fast {
    trace::stamp(trace::SETUP);
    // As in [`call`]: the server's home lock, then the read, then a try of the queue's lock.
    let mut l = cur.life.lock();
    let entry = entered(&l);
    let Some((ep, _)) = crate::qsbr::endpoint::<{ Rights::RECEIVE.0 }>(&entry, &cur.task, &cur.memo, slot) else {
        drop(l);
        return back(cs, cur);
    };
    trace::stamp(trace::LOOKUP);
    let me = rl4_arch::percpu::cpu_index();
    let Some(mut q) = ep.q.try_lock_unordered() else {
        drop(l);
        return back(cs, cur);
    };
    // The server takes the next message if one waits: the general path.
    if !q.senders.is_empty() {
        drop(q);
        drop(l);
        return back(cs, cur);
    }
    let Some((caller, ticket)) = l.take_reply() else {
        drop(l);
        drop(q);
        return back(cs, cur);
    };
    // The endpoint reference its last wait there left with it, if any (`Life::keep_recv`).
    let epref = match l.kept_recv(ep.id()) {
        Some(e) => e,
        None => EpRef::new(ep),
    };
    if let Err((_, w)) = l.block_here(Wait::Recv { ep: epref }, u64::MAX, me) {
        // Killed or suspended meanwhile: nothing changes here (the right goes back, or dies
        // with a thread that can never reply); the general path answers.
        let old = l.grant_reply(caller, ticket);
        drop(l);
        drop(q);
        crate::obj::dispose(w);
        if let Some((c, t)) = old {
            thread::fail_caller(c, t);
        }
        return back(cs, cur);
    }
    // From here its words are read under its lock (see `block_caller`), and its FPU state is
    // handed over before that lock is let go (`sched::fpu_switch_fast`, `sched::left_fast`).
    // A caller of the server's home is reached under the lock already held (the same-CPU
    // case: one lock for both threads).
    if let Some(mut cl) = l.other(&caller.life) {
        let prio = cl.prio;
        let woken = if sched::nothing_more_urgent(cs, prio) { cl.wake_here(WaitOn::Reply(ticket), me).ok() } else { None };
        if let Some(wait) = woken {
            // Point of no return: the caller is Running here (its registers are this CPU's now).
            sched::fpu_switch_fast(cs, &cur, &caller);
            drop(cl);
            trace::stamp(trace::PARTNER);
            cs.bump(sched::Count::DirectFast);
            trace::stamp(trace::DELIVERED);
            // The switch under the server's home lock and the queue's (no lock of its own but
            // the PCID cache's, no wait: as in `call`), so that the server's words are read
            // last, under its lock, and go straight into the registers of the way out.
            let lowered = sched::switch_direct_blocked(cs, &caller, prio);
            trace::stamp(trace::SWITCHED);
            let words = cur.regs.with(|r| r.ipc_words());
            drop(l);
            // The server's reference becomes its queue entry.
            crate::ipc::enqueue(&mut q.receivers, cur);
            drop(q);
            crate::timeline::event(crate::timeline::Kind::Reply, caller.id, ticket);
            cs.fill_current(caller);
            crate::obj::dispose(wait);
            drop(entry);
            // (One tail here: two, as in `call`, measured 22 instructions more a round trip
            // under icount, not fewer.)
            return Message::new(0, tag, words).end::<false>(lowered);
        }
        drop(cl);
        sched::left_fast(&cur);
        drop(l);
        return undo_server(cs, cur, ep.id(), q, caller, ticket);
    }
    let words = cur.regs.with(|r| r.ipc_words());
    sched::left_fast(&cur);
    drop(l);
    // The cross-CPU fast path: a caller of another CPU that no CPU holds gets the reply in this
    // one hold of its home's lock and is pushed into its CPU's inbox; the server is queued
    // again, and this CPU runs whatever comes next.
    let mut cl = caller.life.lock();
    if cl.cpu != me && cl.place() == rl4_core::life::Place::Off {
        if let Ok(wait) = cl.wake(WaitOn::Reply(ticket)) {
            crate::timeline::event(crate::timeline::Kind::Reply, caller.id, ticket);
            deliver(&caller, words, tag, 0);
            let (to, prio, held) = queue_for_cpu(cl);
            hand_over(to, caller, prio);
            drop(held);
            crate::ipc::enqueue(&mut q.receivers, cur);
            drop(q);
            crate::obj::dispose(wait);
            cross_done(cs, None, None, None);
            return Fast::Idle;
        }
    }
    drop(cl);
    undo_server(cs, cur, ep.id(), q, caller, ticket)
}

/// A guard failed after the server `cur` blocked in `Recv` on the endpoint `ep` names (not
/// queued yet: its queue `q` is still held) and left this CPU: it takes that wait back and is
/// current here again, with its reply right for `caller`'s call `ticket`, and the general path
/// runs its call. Nobody can end the wait meanwhile (a kill or a suspension needs the queue
/// lock, which is held, and `Life::take_back` ignores an affinity changed meanwhile); if the
/// transition is refused all the same, the caller is failed and the server let go — which may
/// destroy objects inline (the server's task, its table), so the endpoint is named by its id,
/// not by a reference argument that the language would take to be live until the return, and
/// its queue's guard is let go before anything is (the server's let-go may drop the last
/// reference to its task, whose table's endpoints go without a grace period: nothing here
/// touches the endpoint after that).
#[cold]
#[inline(never)]
fn undo_server(
    cs: sched::Here,
    cur: Arc<Thread>,
    ep: usize,
    q: crate::lock::Guard<'_, crate::ipc::EpQueues, { crate::lock::Level::QUEUE }>,
    caller: Arc<Thread>,
    ticket: u64,
) -> Fast {
    let me = rl4_arch::percpu::cpu_index();
    let mut l = cur.life.lock();
    let taken = match l.take_back(WaitOn::Recv(ep), me) {
        Ok(w) => Ok((w, l.grant_reply(caller, ticket))),
        Err(_) => Err(caller),
    };
    let moved = l.cpu != me;
    drop(l);
    drop(q);
    match taken {
        Ok((w, old)) => {
            crate::obj::dispose(w);
            if moved {
                sched::kick(me);
            }
            if let Some((c, t)) = old {
                thread::fail_caller(c, t);
            }
            back(cs, cur)
        }
        Err(caller) => {
            thread::fail_caller(caller, ticket);
            crate::reclaim::later_thread(cur);
            Fast::Decide
        }
    }
}
