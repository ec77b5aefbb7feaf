//! A thread's life: one state that names what the thread waits on, one place that says where
//! the schedulers hold it, and the named transitions that change them.
//!
//! Every change of a thread's state in the kernel goes through a method of [`Life`]: the same
//! methods serve the IPC fast path, the general path, kill, suspend, resume, faults and
//! timeouts. Each method accepts only the starting states it expects and otherwise returns
//! [`Refused`] (carrying the state it found) without changing anything, so a decision taken on a
//! stale view — another CPU killed, suspended or woke the thread since — can never overwrite a
//! newer state. The kernel holds a thread's `Life` under that thread's lock (the lock of its home CPU,
//! `kernel/src/lock.rs`); the methods here
//! are plain code, tested on the host (unit tests below, a model-based property test and `loom`
//! models in `kernel/core/tests/`).
//!
//! ## States ([`State`])
//! ```text
//!  Inactive ──resume──▶ Ready ◀──────────── wake / take_sender(send) / expire / cancel ─┐
//!                        │  ▲                                                          │
//!              run_here/ │  │ leave_cpu (preempted)                                    │
//!              dequeue   ▼  │                                                          │
//!                       Running ──block──▶ Blocked { Send | Recv | Reply | Notify } ───┘
//!                        │                   │ take_sender(call): Send ▶ Reply
//!                  fault │                   │
//!                        ▼                   │ suspend (wait cancelled)
//!                     Faulted     Suspended ◀┴── suspend (Ready/Running) ; resume ▶ Ready
//!  any state but Dead ──kill──▶ Dead (final)
//!
//!  Faults as messages (a thread with a fault handler, `kernel/src/fault.rs`):
//!  Running ──block(FaultReply) / unwait + block(FaultSend)──▶ Blocked { FaultSend | FaultReply }
//!     FaultSend ──take_fault──▶ FaultReply ──wake(Fault)──▶ Ready (the handler's resuming reply)
//!     FaultSend / FaultReply ──stop_fault──▶ Faulted (a "stop" reply, the handler or its
//!     endpoint gone); suspend and kill as for any wait; never `expire`, never a plain `wake`.
//! ```
//! ## Places ([`Place`])
//! `Off` (no CPU holds it), `Current(c)` (CPU `c` runs it, or is about to leave it), or
//! `Queued(c)` (it sits in CPU `c`'s inbox or run queue, exactly once). A `Queued` entry is
//! consumed by [`Life::dequeue`]; a thread is never `Current` and `Queued` at once, and a
//! `Blocked` thread is never `Queued`. A thread made `Ready` while `Off` is in the hands of
//! whoever woke it, which must place it ([`Life::enqueue`] or [`Life::run_here`]) before it
//! lets go: until then no other CPU can run it, and a kill or suspend in between simply makes
//! the placing refuse.
//!
//! ## Reply rights
//! A thread that receives a `Call` holds a one-shot reply right: the caller and a *ticket*
//! that names that one call. The caller waits in `Blocked { Reply { ticket } }`; a reply, a
//! failure or a timeout must present the same ticket, so a right that outlived its call (the
//! caller timed out, was suspended, or called again) can never end a later wait.
use rl4_abi::ThreadState;

/// The kernel's names for what a thread's state refers to.
pub trait Kinds {
    /// An endpoint a thread waits on (the kernel: a weak reference).
    type Ep: Ident;
    /// A notification a thread waits on.
    type Ntf: Ident;
    /// A capability carried by a waiting sender.
    type Cap;
    /// A caller named by a reply right (the kernel: a strong reference).
    type Caller;
}

/// Identity of an object a thread waits on (compared, never dereferenced).
pub trait Ident {
    fn ident(&self) -> usize;
}

/// What a blocked thread waits for.
pub enum Wait<K: Kinds> {
    /// In `ep`'s send queue with its message (in its registers), as `Send` or `Call`.
    Send { ep: K::Ep, badge: u64, call: bool, cap: Option<K::Cap> },
    /// In `ep`'s receive queue.
    Recv { ep: K::Ep },
    /// For the reply to the call named by `ticket`.
    Reply { ticket: u64 },
    /// In `n`'s wait queue.
    Notify { n: K::Ntf },
    /// A fault of this thread, in its fault handler's endpoint `ep`'s send queue with the
    /// handler's `badge` and what the fault message needs beyond the thread's registers
    /// (which stay as the fault left them): `info`, two words the kernel packs (the address,
    /// the exception vector and error code). Only [`Life::take_fault`] and
    /// [`Life::stop_fault`] end it (plus kill and suspend); a plain `wake` never does. (Two
    /// words, not the whole message: a larger variant changes how `Wait`'s variant is encoded,
    /// which costs the IPC fast path instructions.)
    FaultSend { ep: K::Ep, badge: u64, info: [u64; 2] },
    /// A fault of this thread, received by its handler, which holds the reply right `ticket`.
    /// The reply ends it (`wake(WaitOn::Fault)`: resume, or `stop_fault`); nothing else does
    /// but kill and suspend.
    FaultReply { ticket: u64 },
}

impl<K: Kinds> Wait<K> {
    /// The ABI's name of a thread blocked in this wait.
    #[inline(always)]
    pub fn view(&self) -> ThreadState {
        match self {
            Wait::Send { .. } => ThreadState::BlockedSend,
            Wait::Recv { .. } => ThreadState::BlockedRecv,
            Wait::Reply { .. } => ThreadState::BlockedReply,
            Wait::Notify { .. } => ThreadState::BlockedNotify,
            Wait::FaultSend { .. } | Wait::FaultReply { .. } => ThreadState::BlockedFault,
        }
    }

    /// Whether this is the wait `w` names.
    #[inline(always)]
    pub fn is(&self, w: WaitOn) -> bool {
        match (self, w) {
            (Wait::Send { ep, .. }, WaitOn::Send(id)) | (Wait::Recv { ep }, WaitOn::Recv(id)) => ep.ident() == id,
            (Wait::Reply { ticket }, WaitOn::Reply(t)) => *ticket == t,
            (Wait::Notify { n }, WaitOn::Notify(id)) => n.ident() == id,
            (Wait::FaultSend { ep, .. }, WaitOn::FaultSend(id)) => ep.ident() == id,
            (Wait::FaultReply { ticket }, WaitOn::Fault(t)) => *ticket == t,
            (_, WaitOn::Any) => true,
            _ => false,
        }
    }
}

/// Names a wait without owning anything (what a waker expects to find).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOn {
    Send(usize),
    Recv(usize),
    Reply(u64),
    Notify(usize),
    /// A fault queued on this endpoint.
    FaultSend(usize),
    /// A fault whose handler holds the reply right with this ticket.
    Fault(u64),
    /// Any wait at all (timeouts, cancellation of everything).
    Any,
}

/// A thread's state.
pub enum State<K: Kinds> {
    /// Made, never started.
    Inactive,
    /// May run; placed in a queue, current on a CPU, or in the hands of its waker.
    Ready,
    /// Runs (or is about to) on the CPU that holds it as current.
    Running,
    /// Waits; `deadline` is a TSC value (`u64::MAX`: none).
    Blocked { wait: Wait<K>, deadline: u64 },
    /// Stopped by `ThreadSuspend` until `ThreadResume`.
    Suspended,
    /// Stopped by a fault it took.
    Faulted,
    /// Ended; final.
    Dead,
}

/// Where the schedulers hold a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Off,
    /// The current thread of this CPU.
    Current(u32),
    /// In this CPU's inbox or run queue.
    Queued(u32),
}

/// One row of the transition table: a named transition, the states (as the ABI names them) it
/// accepts, and the state it leads to.
pub struct Transition {
    pub name: &'static str,
    pub from: &'static [ThreadState],
    pub to: ThreadState,
    /// States it accepts and leaves as they are (nothing to do).
    pub same: &'static [ThreadState],
}

use ThreadState::{
    BlockedFault as BF, BlockedNotify as BN, BlockedRecv as BR, BlockedReply as BP, BlockedSend as BS, Dead as D,
    Faulted as F, Inactive as I, Runnable as R, Running as X, Suspended as S,
};

/// Every state-changing transition of [`Life`] with the states it accepts. A unit test drives
/// each method from every state and requires exactly this table; `scripts/state-diagram` draws
/// `docs/states.svg` from it. (The place transitions — `enqueue`, `dequeue`, `keep`,
/// `leave_cpu`, `yield_cpu` — move a thread between `Ready` and `Running` as CPUs take it on and
/// off.)
pub const TRANSITIONS: &[Transition] = &[
    Transition { name: "resume", from: &[I, S], to: R, same: &[R, X] },
    Transition { name: "run_here", from: &[R], to: X, same: &[] },
    Transition { name: "block(Send)", from: &[X], to: BS, same: &[] },
    Transition { name: "block(Recv)", from: &[X], to: BR, same: &[] },
    Transition { name: "block(Reply)", from: &[X], to: BP, same: &[] },
    Transition { name: "block(Notify)", from: &[X], to: BN, same: &[] },
    Transition { name: "block(Fault)", from: &[X], to: BF, same: &[] },
    Transition { name: "block_here(Recv)", from: &[X], to: BR, same: &[] },
    Transition { name: "block_here(Reply)", from: &[X], to: BP, same: &[] },
    Transition { name: "take_sender(Send)", from: &[BS], to: R, same: &[] },
    Transition { name: "take_sender(Call)", from: &[BS], to: BP, same: &[] },
    Transition { name: "take_fault", from: &[BF], to: BF, same: &[] },
    Transition { name: "wake", from: &[BS, BR, BP, BN, BF], to: R, same: &[] },
    Transition { name: "wake_here", from: &[BS, BR, BP, BN, BF], to: X, same: &[] },
    Transition { name: "expire", from: &[BS, BR, BP, BN], to: R, same: &[] },
    Transition { name: "unwait", from: &[BP, BF], to: X, same: &[] },
    Transition { name: "take_back", from: &[BS, BR, BP, BN, BF], to: X, same: &[] },
    Transition { name: "suspend", from: &[R, X, BS, BR, BP, BN, BF], to: S, same: &[I, S] },
    Transition { name: "fault", from: &[X], to: F, same: &[] },
    Transition { name: "stop_fault", from: &[BF], to: F, same: &[] },
    Transition { name: "stop_fault_later", from: &[BF], to: F, same: &[] },
    Transition { name: "kill", from: &[I, R, X, BS, BR, BP, BN, BF, S, F], to: D, same: &[] },
];

/// A transition was asked of a thread whose state it does not start from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused(pub ThreadState);

/// What a kill or a fault leaves for the caller to clean up, after it has let go of the
/// thread's lock: the queue to leave, the caller whose reply right dies with it, the CPU to
/// tell.
pub struct Stopped<K: Kinds> {
    /// The wait it was in (its queue entry is now stale; its capability, if any, is dropped).
    pub wait: Option<Wait<K>>,
    /// The reply right it held: that caller gets `PartnerGone`.
    pub reply: Option<(K::Caller, u64)>,
    /// The CPU running it, which must be told to let it go.
    pub kick: Option<u32>,
}

/// What a suspension leaves for the caller to do.
pub struct Suspension<K: Kinds> {
    /// The wait it was in, now cancelled (its result is `Interrupted`).
    pub cancelled: Option<Wait<K>>,
    /// The CPU running it, which must be told to let it go.
    pub kick: Option<u32>,
}

/// A sender taken from an endpoint's queue by a receiver.
pub struct Taken<K: Kinds> {
    pub badge: u64,
    pub call: bool,
    pub cap: Option<K::Cap>,
    /// For a `Call`: it now waits for the reply with this deadline; otherwise it is `Ready`
    /// and the receiver must place it.
    pub deadline: u64,
}

/// What the queue owner does with an entry it took from its inbox or run queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// It is now `Running` and current here.
    Run,
    /// It is `Ready` for another CPU and was queued there (push it into that CPU's inbox).
    Forward(u32),
    /// It may not run (suspended, dead, blocked again...): forget the entry.
    Drop,
}

/// What a CPU does with the thread it stops running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leave {
    /// Still `Ready`: it was queued on this CPU (push it into the own run queue).
    Requeue(u32),
    /// Still `Ready` for another CPU: push it into that CPU's inbox.
    Forward(u32),
    /// Not runnable: nobody holds it now.
    Gone,
}

/// A thread's state, place, scheduling parameters and the reply right it holds.
pub struct Life<K: Kinds> {
    state: State<K>,
    place: Place,
    /// Priority.
    pub prio: u8,
    /// Maximum controlled priority: the highest priority it may give itself or any thread it
    /// creates or controls.
    pub mcp: u8,
    /// The CPU it runs on (its affinity).
    pub cpu: u32,
    /// The reply right it holds: the caller it received a `Call` from, and that call's ticket.
    reply: Option<(K::Caller, u64)>,
    /// The endpoint reference of the last `Recv` wait the IPC fast path ended, kept for its
    /// next wait there ([`Life::keep_recv`], [`Life::kept_recv`]): a server that waits on one
    /// endpoint round after round then takes and drops no reference per message. Not a wait:
    /// nothing reads it but those two.
    recv_ep: Option<K::Ep>,
}

impl<K: Kinds> Life<K> {
    /// A new thread: `Inactive`, nowhere.
    pub const fn new(prio: u8, cpu: u32) -> Self {
        Life { state: State::Inactive, place: Place::Off, prio, mcp: prio, cpu, reply: None, recv_ep: None }
    }

    pub fn state(&self) -> &State<K> {
        &self.state
    }
    pub fn place(&self) -> Place {
        self.place
    }
    pub fn reply_right(&self) -> Option<&(K::Caller, u64)> {
        self.reply.as_ref()
    }

    /// The ABI's view (`ThreadInfo`).
    pub fn view(&self) -> ThreadState {
        match &self.state {
            State::Inactive => ThreadState::Inactive,
            State::Ready => ThreadState::Runnable,
            State::Running => ThreadState::Running,
            State::Blocked { wait, .. } => wait.view(),
            State::Suspended => ThreadState::Suspended,
            State::Faulted => ThreadState::Faulted,
            State::Dead => ThreadState::Dead,
        }
    }

    /// Replaces a state that owns nothing (every caller has matched it: never `Blocked`)
    /// without running the enum's drop glue, an out-of-line call on the IPC fast path.
    #[inline(always)]
    fn set(&mut self, new: State<K>) {
        let old = core::mem::replace(&mut self.state, new);
        debug_assert!(!matches!(old, State::Blocked { .. }));
        core::mem::forget(old);
    }

    /// Inline: out of line, it returns the whole `Result` (a `Wait`, a `Taken`) through memory,
    /// and its callers on the IPC paths then keep what they take out of a thread on the stack.
    #[inline(always)]
    fn refuse<T>(&self) -> Result<T, Refused> {
        Err(Refused(self.view()))
    }

    /// The deadline of its wait, if it is blocked with one.
    pub fn deadline(&self) -> Option<u64> {
        match self.state {
            State::Blocked { deadline, .. } if deadline != u64::MAX => Some(deadline),
            _ => None,
        }
    }

    pub fn is_dead(&self) -> bool {
        matches!(self.state, State::Dead)
    }

    // ---- its scheduling parameters (no state changes) -----------------------------------

    /// `ThreadSetPriority`: its priority from now on; returns the old one. Refused for a `Dead`
    /// thread, which never runs again (before the forty-second session the call answered
    /// success and `ThreadInfo` showed the new value).
    pub fn set_prio(&mut self, prio: u8) -> Result<u8, Refused> {
        if self.is_dead() {
            return self.refuse();
        }
        Ok(core::mem::replace(&mut self.prio, prio))
    }

    /// `ThreadSetAffinity`: the CPU it runs on from now on (its home moves with it: the caller
    /// holds both homes' locks). Refused for a `Dead` thread, as [`Life::set_prio`].
    pub fn set_cpu(&mut self, cpu: u32) -> Result<(), Refused> {
        if self.is_dead() {
            return self.refuse();
        }
        self.cpu = cpu;
        Ok(())
    }

    /// Whether state and place agree: never `Blocked` (or `Inactive`) while queued.
    pub fn consistent(&self) -> bool {
        !matches!((&self.state, self.place), (State::Blocked { .. } | State::Inactive, Place::Queued(_)))
    }

    // ---- the thread's own transitions (it is running) ------------------------------------

    /// `Running` → `Blocked { wait }`. Refused (the wait handed back) if the thread was killed
    /// or suspended meanwhile: it must not block then.
    #[inline(always)]
    pub fn block(&mut self, wait: Wait<K>, deadline: u64) -> Result<(), (Refused, Wait<K>)> {
        match self.state {
            State::Running => {
                self.set(State::Blocked { wait, deadline });
                Ok(())
            }
            _ => Err((Refused(self.view()), wait)),
        }
    }

    /// The fast path's block: `Running` and current on `me` → `Blocked { wait }` and held by no
    /// CPU, in one step (what `block` and then `leave_cpu(me)` do, without the cases that
    /// `leave_cpu` has for a thread still runnable: a blocked one is never queued again).
    /// Refused, changing nothing (the wait handed back), if the thread was killed or suspended
    /// meanwhile, or is not current on `me`.
    #[inline(always)]
    pub fn block_here(&mut self, wait: Wait<K>, deadline: u64, me: u32) -> Result<(), (Refused, Wait<K>)> {
        match self.state {
            State::Running if self.place == Place::Current(me) => {
                self.set(State::Blocked { wait, deadline });
                self.place = Place::Off;
                Ok(())
            }
            _ => Err((Refused(self.view()), wait)),
        }
    }

    /// `Running` → `Faulted`. Returns what to clean up. Refused for a thread already stopped (a
    /// kill wins over the fault), and for one suspended — or suspended and resumed: `Ready` —
    /// by another CPU while it took the fault: the suspension came first, and the instruction
    /// runs again when the thread does, as when the fault goes to a handler (`block` refuses
    /// those states too). Before the thirty-ninth session both were made `Faulted`: a thread
    /// whose suspension had answered success was then stopped for good by an instruction that,
    /// for its suspender, never ran, and only where it had no handler (a review).
    pub fn fault(&mut self) -> Result<Stopped<K>, Refused> {
        match self.state {
            State::Running => {
                self.set(State::Faulted);
                Ok(Stopped { wait: None, reply: self.reply.take(), kick: None })
            }
            _ => self.refuse(),
        }
    }

    // ---- transitions by others -----------------------------------------------------------

    /// Any state but `Dead` → `Dead`.
    pub fn kill(&mut self) -> Result<Stopped<K>, Refused> {
        let old = match core::mem::replace(&mut self.state, State::Dead) {
            State::Dead => return self.refuse(),
            old => old,
        };
        let wait = match old {
            State::Blocked { wait, .. } => Some(wait),
            _ => None,
        };
        let kick = match self.place {
            Place::Current(c) => Some(c),
            _ => None,
        };
        Ok(Stopped { wait, reply: self.reply.take(), kick })
    }

    /// `Ready`/`Running` → `Suspended`; `Blocked` → `Suspended` with its wait cancelled;
    /// `Inactive`/`Suspended`: nothing to do. Refused for `Faulted` and `Dead`.
    pub fn suspend(&mut self) -> Result<Suspension<K>, Refused> {
        let kick = match self.place {
            Place::Current(c) => Some(c),
            _ => None,
        };
        match self.state {
            State::Inactive | State::Suspended => Ok(Suspension { cancelled: None, kick: None }),
            State::Ready | State::Running => {
                self.set(State::Suspended);
                Ok(Suspension { cancelled: None, kick })
            }
            State::Blocked { .. } => {
                let State::Blocked { wait, .. } = core::mem::replace(&mut self.state, State::Suspended) else {
                    unreachable!()
                };
                Ok(Suspension { cancelled: Some(wait), kick })
            }
            State::Faulted | State::Dead => self.refuse(),
        }
    }

    /// `Inactive`/`Suspended` → `Ready`; returns whether the caller must now place it (it is
    /// held nowhere). `Ready`/`Running`: nothing to do. Refused otherwise.
    pub fn resume(&mut self) -> Result<bool, Refused> {
        match self.state {
            State::Inactive | State::Suspended => {
                self.set(State::Ready);
                Ok(self.place == Place::Off)
            }
            State::Ready | State::Running => Ok(false),
            _ => self.refuse(),
        }
    }

    /// Ends the wait `on` (`Blocked` in exactly that wait → `Ready`): a message, a reply, a
    /// signal, a timeout, the partner gone. Returns the wait it was in; the caller places the
    /// thread.
    #[inline(always)]
    pub fn wake(&mut self, on: WaitOn) -> Result<Wait<K>, Refused> {
        match &self.state {
            State::Blocked { wait, .. } if wait.is(on) => {}
            _ => return self.refuse(),
        }
        let State::Blocked { wait, .. } = core::mem::replace(&mut self.state, State::Ready) else { unreachable!() };
        Ok(wait)
    }

    /// The same-CPU fast path's wake-up: `Blocked` in exactly the wait `on`, held nowhere and
    /// belonging to CPU `me` → `Running` and current on `me` (the waker switches to it at once).
    /// Refused, changing nothing, in any other case.
    #[inline(always)]
    pub fn wake_here(&mut self, on: WaitOn, me: u32) -> Result<Wait<K>, Refused> {
        if self.place != Place::Off || self.cpu != me || !self.waits(on) {
            return self.refuse();
        }
        let State::Blocked { wait, .. } = core::mem::replace(&mut self.state, State::Running) else { unreachable!() };
        self.place = Place::Current(me);
        Ok(wait)
    }

    /// The IPC fast path takes back a wait that the running thread entered, leaving its CPU, in
    /// the same system call, when a later guard failed before anybody could end that wait:
    /// `Blocked` in exactly `on` and held by no CPU → `Running` and current on `me` again,
    /// whatever its affinity says now (a thread moved meanwhile is sent on by the next
    /// decision, as any running thread is). Refused, changing nothing, if the wait ended
    /// meanwhile (killed or suspended: whoever ended it finishes the call).
    #[inline(always)]
    pub fn take_back(&mut self, on: WaitOn, me: u32) -> Result<Wait<K>, Refused> {
        if self.place != Place::Off || !self.waits(on) {
            return self.refuse();
        }
        let State::Blocked { wait, .. } = core::mem::replace(&mut self.state, State::Running) else { unreachable!() };
        self.place = Place::Current(me);
        Ok(wait)
    }

    /// Whether it waits in exactly the wait `on`.
    #[inline(always)]
    pub fn waits(&self, on: WaitOn) -> bool {
        matches!(&self.state, State::Blocked { wait, .. } if wait.is(on))
    }

    /// The running thread takes back a reply wait it entered before anybody could answer it
    /// (a `Call` blocks for its reply before it looks for a receiver, and found none):
    /// `Blocked { Reply { ticket } }` while still current on CPU `me`, the caller's → `Running`.
    /// Refused if the wait already ended (killed, suspended), or the thread is not current on
    /// `me`.
    pub fn unwait(&mut self, ticket: u64, me: u32) -> Result<(), Refused> {
        if self.place != Place::Current(me)
            || !(self.waits(WaitOn::Reply(ticket)) || self.waits(WaitOn::Fault(ticket)))
        {
            return self.refuse();
        }
        let State::Blocked { wait, .. } = core::mem::replace(&mut self.state, State::Running) else { unreachable!() };
        core::mem::forget(wait); // a reply wait owns nothing
        Ok(())
    }

    /// A timeout: `Blocked` with a deadline at or before `now` → `Ready`. A fault's wait has
    /// no deadline: refused.
    pub fn expire(&mut self, now: u64) -> Result<Wait<K>, Refused> {
        match &self.state {
            State::Blocked { wait: Wait::FaultSend { .. } | Wait::FaultReply { .. }, .. } => self.refuse(),
            State::Blocked { deadline, .. } if *deadline <= now => self.wake(WaitOn::Any),
            _ => self.refuse(),
        }
    }

    /// A receiver takes this sender from endpoint `ep`'s queue: `Blocked { Send }` on `ep` →
    /// `Blocked { Reply { ticket } }` for a call (same deadline: a call's timeout covers both
    /// waits), `Ready` otherwise.
    pub fn take_sender(&mut self, ep: usize, ticket: u64) -> Result<Taken<K>, Refused> {
        let deadline = match &self.state {
            State::Blocked { wait: Wait::Send { ep: e, .. }, deadline } if e.ident() == ep => *deadline,
            _ => return self.refuse(),
        };
        let State::Blocked { wait: Wait::Send { badge, call, cap, .. }, .. } =
            core::mem::replace(&mut self.state, State::Ready)
        else {
            unreachable!()
        };
        if call {
            self.set(State::Blocked { wait: Wait::Reply { ticket }, deadline });
        }
        Ok(Taken { badge, call, cap, deadline })
    }

    /// The fault handler takes this thread's fault from endpoint `ep`'s queue:
    /// `Blocked { FaultSend }` on `ep` → `Blocked { FaultReply { ticket } }`. Returns the
    /// handler's badge and the fault's `info`.
    pub fn take_fault(&mut self, ep: usize, ticket: u64) -> Result<(u64, [u64; 2]), Refused> {
        let (badge, msg) = match &self.state {
            State::Blocked { wait: Wait::FaultSend { ep: e, badge, info }, .. } if e.ident() == ep => (*badge, *info),
            _ => return self.refuse(),
        };
        let old = core::mem::replace(&mut self.state, State::Blocked { wait: Wait::FaultReply { ticket }, deadline: u64::MAX });
        let State::Blocked { wait: Wait::FaultSend { ep, .. }, .. } = old else { unreachable!() };
        drop(ep);
        Ok((badge, msg))
    }

    /// A fault's wait ends without resuming the thread: its handler replied "stop", died with
    /// the reply right, or its endpoint died while the fault was queued. `Blocked` in the fault
    /// wait `on` (`WaitOn::Fault` or `WaitOn::FaultSend`) → `Faulted`, as a fault without a
    /// handler would have left it; the reply right it held dies too.
    pub fn stop_fault(&mut self, on: WaitOn) -> Result<Stopped<K>, Refused> {
        if !matches!(on, WaitOn::Fault(_) | WaitOn::FaultSend(_)) || !self.waits(on) {
            return self.refuse();
        }
        let State::Blocked { wait, .. } = core::mem::replace(&mut self.state, State::Faulted) else { unreachable!() };
        Ok(Stopped { wait: Some(wait), reply: self.reply.take(), kick: None })
    }

    /// [`stop_fault`](Self::stop_fault) for a caller that stops many faults in one hold of a
    /// queue's lock and deals with what they leave after it (`EndpointCancelBadged`): the
    /// reply right stays with the thread until that caller takes it
    /// ([`take_reply`](Self::take_reply)) once its locks are released — the one window in which
    /// a `Faulted` thread holds one (it cannot reply: `Faulted` runs no more; a right granted to
    /// it meanwhile still fails at once, and a kill meanwhile takes this one as it takes any
    /// thread's). Returns the wait it was in.
    pub fn stop_fault_later(&mut self, on: WaitOn) -> Result<Wait<K>, Refused> {
        if !matches!(on, WaitOn::Fault(_) | WaitOn::FaultSend(_)) || !self.waits(on) {
            return self.refuse();
        }
        let State::Blocked { wait, .. } = core::mem::replace(&mut self.state, State::Faulted) else { unreachable!() };
        Ok(wait)
    }

    /// Whether it waits in a fault's wait (either half).
    pub fn in_fault(&self) -> bool {
        matches!(&self.state, State::Blocked { wait: Wait::FaultSend { .. } | Wait::FaultReply { .. }, .. })
    }

    // ---- reply rights --------------------------------------------------------------------

    /// Gives this thread the reply right for `caller`'s call `ticket`; returns the right that
    /// dies now (that caller gets `PartnerGone`): the one it held before, or the new one itself
    /// if this thread can never reply (`Dead` or `Faulted`: killed during its `Recv`, after
    /// `kill` or `fault` took the rights it held, so nobody else would ever fail this caller).
    #[inline(always)]
    pub fn grant_reply(&mut self, caller: K::Caller, ticket: u64) -> Option<(K::Caller, u64)> {
        if matches!(self.state, State::Dead | State::Faulted) {
            return Some((caller, ticket));
        }
        self.reply.replace((caller, ticket))
    }

    /// Takes the reply right (to reply, or because it lapses).
    #[inline(always)]
    pub fn take_reply(&mut self) -> Option<(K::Caller, u64)> {
        self.reply.take()
    }

    /// Keeps the endpoint reference of a `Recv` wait that just ended for this thread's next
    /// wait there; hands back what the caller must drop after its locks: any other wait, or
    /// the reference the kept one replaces.
    #[inline(always)]
    pub fn keep_recv(&mut self, w: Wait<K>) -> Option<Wait<K>> {
        match w {
            Wait::Recv { ep } => self.recv_ep.replace(ep).map(|ep| Wait::Recv { ep }),
            other => Some(other),
        }
    }

    /// The kept endpoint reference ([`Life::keep_recv`]) if it names endpoint `ident`.
    #[inline(always)]
    pub fn kept_recv(&mut self, ident: usize) -> Option<K::Ep> {
        match &self.recv_ep {
            Some(ep) if ep.ident() == ident => self.recv_ep.take(),
            _ => None,
        }
    }

    // ---- places --------------------------------------------------------------------------

    /// A `Ready` thread held nowhere is queued for its CPU: returns that CPU (push it into its
    /// inbox). `None`: it needs no entry (not ready, current somewhere, or already queued).
    #[inline(always)]
    pub fn enqueue(&mut self) -> Option<u32> {
        match (&self.state, self.place) {
            (State::Ready, Place::Off) => {
                self.place = Place::Queued(self.cpu);
                Some(self.cpu)
            }
            _ => None,
        }
    }

    /// Another CPU than its owner took this thread's queue entry on CPU `c` out of that CPU's
    /// run queue: a thread that will not run again (`Dead`) lets go of everything at once
    /// instead of when `c` reaches its turn, which threads of higher priority may put off
    /// indefinitely. `Queued(c)` → `Off`; refused for a thread that may still run or is placed
    /// elsewhere.
    pub fn unqueue(&mut self, c: u32) -> Result<(), Refused> {
        if self.place != Place::Queued(c) || !matches!(self.state, State::Dead) {
            return self.refuse();
        }
        self.place = Place::Off;
        Ok(())
    }

    /// CPU `me` consumed this thread's queue entry.
    #[inline(always)]
    pub fn dequeue(&mut self, me: u32) -> Pick {
        if self.place != Place::Queued(me) {
            return Pick::Drop; // a stale entry: the thread is held elsewhere now
        }
        self.place = Place::Off;
        match self.state {
            State::Ready if self.cpu == me => {
                self.set(State::Running);
                self.place = Place::Current(me);
                Pick::Run
            }
            State::Ready => {
                self.place = Place::Queued(self.cpu);
                Pick::Forward(self.cpu)
            }
            _ => Pick::Drop,
        }
    }

    /// CPU `me` runs a `Ready` thread that nobody holds (its waker switches to it directly).
    pub fn run_here(&mut self, me: u32) -> Result<(), Refused> {
        match (&self.state, self.place) {
            (State::Ready, Place::Off) if self.cpu == me => {
                self.set(State::Running);
                self.place = Place::Current(me);
                Ok(())
            }
            _ => self.refuse(),
        }
    }

    /// Whether CPU `me` may keep running its current thread: it is `Running`, or was woken
    /// (`Ready`) before it left, and belongs to this CPU. Makes a woken one `Running`.
    pub fn keep(&mut self, me: u32) -> bool {
        if self.place != Place::Current(me) || self.cpu != me {
            return false;
        }
        match self.state {
            State::Running => true,
            State::Ready => {
                self.set(State::Running);
                true
            }
            _ => false,
        }
    }

    /// The running thread yields its CPU `me` (a `Yield` while threads of its priority wait
    /// there): `Running`, current on `me` and belonging to `me` → `Ready` and queued on `me` (its
    /// CPU puts it at the back of its priority's FIFO). Refused (false), changing nothing, in any
    /// other case — stopped, woken, or moved to another CPU meanwhile: the CPU then makes a full
    /// decision, which lets go of it through [`Life::leave_cpu`].
    #[inline(always)]
    pub fn yield_cpu(&mut self, me: u32) -> bool {
        if self.place != Place::Current(me) || self.cpu != me || !matches!(self.state, State::Running) {
            return false;
        }
        self.set(State::Ready);
        self.place = Place::Queued(me);
        true
    }

    /// CPU `me` stops running this thread. A thread still runnable is queued again (here or on
    /// its own CPU); any other is held by nobody.
    #[inline(always)]
    pub fn leave_cpu(&mut self, me: u32) -> Leave {
        if self.place != Place::Current(me) {
            return Leave::Gone;
        }
        self.place = Place::Off;
        if let State::Running = self.state {
            self.set(State::Ready);
        }
        match self.state {
            State::Ready => {
                self.place = Place::Queued(self.cpu);
                if self.cpu == me { Leave::Requeue(me) } else { Leave::Forward(self.cpu) }
            }
            _ => Leave::Gone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub struct K;
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct Id(usize);
    impl Ident for Id {
        fn ident(&self) -> usize {
            self.0
        }
    }
    impl Kinds for K {
        type Ep = Id;
        type Ntf = Id;
        type Cap = u32;
        type Caller = u32;
    }
    type L = Life<K>;

    fn running() -> L {
        let mut l = L::new(10, 0);
        assert_eq!(l.resume(), Ok(true));
        assert_eq!(l.enqueue(), Some(0));
        assert_eq!(l.dequeue(0), Pick::Run);
        l
    }

    #[test]
    fn start_and_run() {
        let l = running();
        assert_eq!(l.view(), ThreadState::Running);
        assert_eq!(l.place(), Place::Current(0));
    }

    #[test]
    fn kept_receive_reference_is_reused_only_for_its_endpoint() {
        let mut l = running();
        assert!(l.kept_recv(1).is_none());
        l.block(Wait::Recv { ep: Id(1) }, u64::MAX).ok().unwrap();
        assert_eq!(l.leave_cpu(0), Leave::Gone);
        let w = l.wake_here(WaitOn::Recv(1), 0).ok().unwrap();
        // Kept: nothing to drop.
        assert!(l.keep_recv(w).is_none());
        // Another endpoint does not get it; its own does, once.
        assert!(l.kept_recv(2).is_none());
        assert_eq!(l.kept_recv(1), Some(Id(1)));
        assert!(l.kept_recv(1).is_none());
        // A second kept reference hands back the first; any other wait is handed back whole.
        assert!(l.keep_recv(Wait::Recv { ep: Id(3) }).is_none());
        assert!(matches!(l.keep_recv(Wait::Recv { ep: Id(4) }), Some(Wait::Recv { ep: Id(3) })));
        assert!(matches!(l.keep_recv(Wait::Reply { ticket: 9 }), Some(Wait::Reply { ticket: 9 })));
        // It is no wait: the state is untouched.
        assert_eq!(l.view(), ThreadState::Running);
    }

    /// The fast path's order: a thread blocks and leaves its CPU first, and takes the wait back
    /// (`take_back`) when a later guard fails; a kill or a suspension in between makes the
    /// taking back refuse, and the thread is then the killer's or suspender's.
    #[test]
    fn fast_path_takes_a_wait_back_unless_it_ended() {
        let mut l = running();
        l.block(Wait::Reply { ticket: 7 }, u64::MAX).ok().unwrap();
        assert_eq!(l.leave_cpu(0), Leave::Gone);
        // Another wait, or the wrong ticket, is not this one.
        assert!(l.take_back(WaitOn::Reply(6), 0).is_err());
        assert!(matches!(l.take_back(WaitOn::Reply(7), 0), Ok(Wait::Reply { ticket: 7 })));
        assert_eq!(l.view(), ThreadState::Running);
        assert_eq!(l.place(), Place::Current(0));
        // Moved to CPU 1 in between (`ThreadSetAffinity` changes no state): it is taken back
        // all the same (`wake_here` would refuse and leave it waiting for nobody), and the next
        // decision of CPU 0 sends it on.
        l.block(Wait::Reply { ticket: 9 }, u64::MAX).ok().unwrap();
        assert_eq!(l.leave_cpu(0), Leave::Gone);
        l.cpu = 1;
        assert!(l.wake_here(WaitOn::Reply(9), 0).is_err());
        assert!(l.take_back(WaitOn::Reply(9), 0).is_ok());
        assert!(!l.keep(0));
        assert_eq!(l.leave_cpu(0), Leave::Forward(1));
        // Killed in between.
        let mut l = running();
        l.block(Wait::Reply { ticket: 8 }, u64::MAX).ok().unwrap();
        assert_eq!(l.leave_cpu(0), Leave::Gone);
        let s = l.kill().ok().unwrap();
        assert_eq!(s.kick, None);
        assert!(l.take_back(WaitOn::Reply(8), 0).is_err());
        // Suspended (and resumed: queued by the resumer) in between.
        let mut l = running();
        l.block(Wait::Recv { ep: Id(1) }, u64::MAX).ok().unwrap();
        assert_eq!(l.leave_cpu(0), Leave::Gone);
        assert!(l.suspend().ok().unwrap().cancelled.is_some());
        assert_eq!(l.resume(), Ok(true));
        assert_eq!(l.enqueue(), Some(0));
        assert!(l.take_back(WaitOn::Recv(1), 0).is_err());
        assert!(l.consistent());
        // A thread still current is not taken back (that is `unwait`).
        let mut l = running();
        l.block(Wait::Reply { ticket: 3 }, u64::MAX).ok().unwrap();
        assert!(l.take_back(WaitOn::Reply(3), 0).is_err());
    }

    #[test]
    fn block_refused_after_kill() {
        let mut l = running();
        let s = l.kill().ok().unwrap();
        assert_eq!(s.kick, Some(0));
        let r = l.block(Wait::Recv { ep: Id(1) }, u64::MAX);
        assert!(matches!(r, Err((Refused(ThreadState::Dead), Wait::Recv { .. }))));
        assert!(l.is_dead());
        assert_eq!(l.leave_cpu(0), Leave::Gone);
        assert!(l.kill().is_err());
        assert!(l.resume().is_err());
    }

    #[test]
    fn block_refused_after_suspend() {
        let mut l = running();
        assert!(l.suspend().is_ok());
        assert!(l.block(Wait::Reply { ticket: 1 }, 5).is_err());
        assert_eq!(l.view(), ThreadState::Suspended);
        assert_eq!(l.leave_cpu(0), Leave::Gone);
        assert_eq!(l.resume(), Ok(true));
        assert_eq!(l.enqueue(), Some(0));
    }

    #[test]
    fn wake_checks_the_wait() {
        let mut l = running();
        l.block(Wait::Recv { ep: Id(7) }, u64::MAX).ok().unwrap();
        assert!(l.wake(WaitOn::Recv(8)).is_err());
        assert!(l.wake(WaitOn::Send(7)).is_err());
        assert!(matches!(l.wake(WaitOn::Recv(7)), Ok(Wait::Recv { ep: Id(7) })));
        assert_eq!(l.view(), ThreadState::Runnable);
        // Still current on CPU 0 (woken before it left): it keeps running.
        assert!(l.keep(0));
        assert_eq!(l.view(), ThreadState::Running);
    }

    #[test]
    fn take_sender_call_keeps_deadline_and_ticket() {
        let mut l = running();
        l.block(Wait::Send { ep: Id(3), badge: 9, call: true, cap: Some(77) }, 1000).ok().unwrap();
        assert_eq!(l.leave_cpu(0), Leave::Gone);
        assert!(l.take_sender(4, 1).is_err());
        let t = l.take_sender(3, 42).ok().unwrap();
        assert_eq!((t.badge, t.call, t.cap, t.deadline), (9, true, Some(77), 1000));
        assert_eq!(l.deadline(), Some(1000));
        assert!(l.wake(WaitOn::Reply(41)).is_err(), "a stale ticket ends nothing");
        assert!(l.expire(999).is_err());
        assert!(l.expire(1000).is_ok());
        assert!(l.wake(WaitOn::Reply(42)).is_err(), "the wait already ended");
        assert_eq!(l.enqueue(), Some(0));
    }

    #[test]
    fn suspend_cancels_a_wait() {
        let mut l = running();
        l.block(Wait::Notify { n: Id(5) }, u64::MAX).ok().unwrap();
        assert_eq!(l.leave_cpu(0), Leave::Gone);
        let s = l.suspend().ok().unwrap();
        assert!(matches!(s.cancelled, Some(Wait::Notify { .. })));
        assert_eq!(s.kick, None);
        assert!(l.wake(WaitOn::Notify(5)).is_err());
        assert_eq!(l.resume(), Ok(true));
    }

    #[test]
    fn queue_entries_are_single_and_stale_ones_dropped() {
        let mut l = L::new(1, 2);
        l.resume().unwrap();
        assert_eq!(l.enqueue(), Some(2));
        assert_eq!(l.enqueue(), None, "queued once");
        l.suspend().ok().unwrap();
        assert_eq!(l.resume(), Ok(false), "still queued: no second entry");
        l.cpu = 1;
        assert_eq!(l.dequeue(2), Pick::Forward(1));
        assert_eq!(l.dequeue(2), Pick::Drop, "the old entry is stale now");
        assert_eq!(l.dequeue(1), Pick::Run);
        l.kill().ok().unwrap();
        assert_eq!(l.leave_cpu(1), Leave::Gone);
        assert_eq!(l.enqueue(), None);
    }

    #[test]
    fn leave_requeues_or_forwards() {
        let mut l = running();
        assert_eq!(l.leave_cpu(0), Leave::Requeue(0));
        assert_eq!(l.place(), Place::Queued(0));
        assert_eq!(l.dequeue(0), Pick::Run);
        l.cpu = 3;
        assert!(!l.keep(0));
        assert_eq!(l.leave_cpu(0), Leave::Forward(3));
        assert_eq!(l.place(), Place::Queued(3));
    }

    #[test]
    fn yield_cpu_only_for_the_running_thread_of_its_own_cpu() {
        let mut l = running();
        assert!(!l.yield_cpu(1), "not current on CPU 1");
        assert!(l.yield_cpu(0));
        assert_eq!((l.view(), l.place()), (ThreadState::Runnable, Place::Queued(0)));
        assert!(!l.yield_cpu(0), "queued, not current");
        assert_eq!(l.enqueue(), None, "queued once");
        assert_eq!(l.dequeue(0), Pick::Run);
        // Moved to another CPU: refused (leave_cpu forwards it).
        l.cpu = 2;
        assert!(!l.yield_cpu(0));
        assert_eq!((l.view(), l.place()), (ThreadState::Running, Place::Current(0)));
        assert_eq!(l.leave_cpu(0), Leave::Forward(2));
        // Blocked, suspended or killed while still current: refused, nothing changes.
        let mut l = running();
        l.block(Wait::Recv { ep: Id(1) }, u64::MAX).ok().unwrap();
        assert!(!l.yield_cpu(0));
        assert_eq!((l.view(), l.place()), (ThreadState::BlockedRecv, Place::Current(0)));
        let mut l = running();
        l.suspend().ok().unwrap();
        assert!(!l.yield_cpu(0));
        assert_eq!((l.view(), l.place()), (ThreadState::Suspended, Place::Current(0)));
        let mut l = running();
        l.kill().ok().unwrap();
        assert!(!l.yield_cpu(0));
        assert_eq!(l.leave_cpu(0), Leave::Gone);
        // Woken before it left (`Ready` while current): the full decision keeps it.
        let mut l = running();
        l.block(Wait::Notify { n: Id(3) }, u64::MAX).ok().unwrap();
        l.wake(WaitOn::Notify(3)).ok().unwrap();
        assert!(!l.yield_cpu(0));
        assert!(l.keep(0));
    }

    #[test]
    fn run_here_only_for_an_unheld_ready_thread() {
        let mut l = running();
        l.block(Wait::Recv { ep: Id(1) }, u64::MAX).ok().unwrap();
        assert_eq!(l.leave_cpu(0), Leave::Gone);
        assert!(l.run_here(0).is_err());
        l.wake(WaitOn::Recv(1)).ok().unwrap();
        assert!(l.run_here(1).is_err(), "not its CPU");
        assert!(l.run_here(0).is_ok());
        assert_eq!(l.place(), Place::Current(0));
    }

    /// `block_here` is `block` then `leave_cpu` for a thread current on the CPU, and changes
    /// nothing anywhere else: seven representative lives (one of each ABI state class, and a
    /// ready thread queued), on CPU 0 and CPU 1.
    #[test]
    fn block_here_is_block_then_leave() {
        let lives: [fn() -> L; 7] = [
            running,
            || L::new(10, 0),
            || {
                let mut l = running();
                l.suspend().ok().unwrap();
                l
            },
            || {
                let mut l = running();
                l.kill().ok().unwrap();
                l
            },
            || {
                let mut l = running();
                l.block(Wait::Recv { ep: Id(1) }, u64::MAX).ok().unwrap();
                l
            },
            || {
                let mut l = running();
                assert_eq!(l.leave_cpu(0), Leave::Requeue(0));
                l
            },
            || {
                let mut l = running();
                l.fault().ok().unwrap();
                l
            },
        ];
        for (i, make) in lives.iter().enumerate() {
            for me in [0, 1] {
                let mut a = make();
                let before = (a.view(), a.place());
                let fast = a.block_here(Wait::Reply { ticket: 9 }, 77, me).is_ok();
                let mut b = make();
                let want = b.view() == ThreadState::Running && b.place() == Place::Current(me);
                assert_eq!(fast, want, "life {i} on cpu {me}");
                if fast {
                    b.block(Wait::Reply { ticket: 9 }, 77).ok().unwrap();
                    assert_eq!(b.leave_cpu(me), Leave::Gone);
                    assert_eq!((a.view(), a.place(), a.deadline()), (b.view(), b.place(), b.deadline()), "life {i}");
                    assert!(a.waits(WaitOn::Reply(9)));
                } else {
                    assert_eq!((a.view(), a.place()), before, "life {i} on cpu {me}: refused, unchanged");
                }
            }
        }
    }

    #[test]
    fn wake_here_all_or_nothing() {
        let mut l = running();
        l.block(Wait::Recv { ep: Id(2) }, u64::MAX).ok().unwrap();
        assert!(l.wake_here(WaitOn::Recv(2), 0).is_err(), "still current: refused");
        assert_eq!(l.view(), ThreadState::BlockedRecv);
        assert_eq!(l.leave_cpu(0), Leave::Gone);
        assert!(l.wake_here(WaitOn::Recv(2), 1).is_err(), "another CPU's thread");
        assert!(l.wake_here(WaitOn::Recv(3), 0).is_err());
        assert!(l.waits(WaitOn::Recv(2)));
        assert!(l.wake_here(WaitOn::Recv(2), 0).is_ok());
        assert_eq!((l.view(), l.place()), (ThreadState::Running, Place::Current(0)));
    }

    #[test]
    fn unwait_only_the_own_unanswered_reply_wait() {
        let mut l = running();
        l.block(Wait::Reply { ticket: 4 }, 100).ok().unwrap();
        assert!(l.unwait(5, 0).is_err(), "another call's ticket");
        assert!(l.unwait(4, 1).is_err(), "current on CPU 0, not on CPU 1");
        assert!(l.waits(WaitOn::Reply(4)));
        assert!(l.unwait(4, 0).is_ok());
        assert_eq!(l.view(), ThreadState::Running);
        l.block(Wait::Reply { ticket: 6 }, 100).ok().unwrap();
        l.kill().ok().unwrap();
        assert!(l.unwait(6, 0).is_err(), "killed meanwhile");
        let mut l = running();
        l.block(Wait::Reply { ticket: 7 }, 100).ok().unwrap();
        assert_eq!(l.leave_cpu(0), Leave::Gone);
        assert!(l.unwait(7, 0).is_err(), "off its CPU: not the running thread");
    }

    #[test]
    fn fault_and_reply_rights() {
        let mut l = running();
        assert!(l.grant_reply(5, 1).is_none());
        assert_eq!(l.grant_reply(6, 2), Some((5, 1)));
        let s = l.fault().ok().unwrap();
        assert_eq!(s.reply, Some((6, 2)));
        assert_eq!(l.view(), ThreadState::Faulted);
        assert!(l.fault().is_err());
        assert!(l.resume().is_err());
        assert!(l.kill().is_ok());
        assert!(l.fault().is_err());
    }

    /// Regression (found by `tests/life_model.rs`): a receiver killed during its `Recv` takes a
    /// caller from the endpoint after `kill` took its reply rights; the right it is granted
    /// then must die at once, or the caller waits forever for a reply nobody can give.
    #[test]
    fn grant_to_a_dead_or_faulted_thread_fails_the_caller() {
        let mut l = running();
        assert!(l.grant_reply(5, 1).is_none());
        let s = l.kill().ok().unwrap();
        assert_eq!(s.reply, Some((5, 1)));
        assert_eq!(l.grant_reply(6, 2), Some((6, 2)), "the new right dies with the dead thread");
        assert!(l.reply_right().is_none());
        assert!(l.take_reply().is_none());

        let mut l = running();
        l.fault().ok().unwrap();
        assert_eq!(l.grant_reply(7, 3), Some((7, 3)));
        assert!(l.reply_right().is_none());

        // A suspended receiver keeps the right: it may be resumed and reply.
        let mut l = running();
        l.suspend().ok().unwrap();
        assert!(l.grant_reply(8, 4).is_none());
        assert_eq!(l.reply_right(), Some(&(8, 4)));
    }

    /// A thread in state `s` (placed as a thread in that state usually is: running and blocked
    /// ones still current on CPU 0 when `current`, every other one held by nobody).
    fn in_state(s: ThreadState, current: bool) -> L {
        let mut l = L::new(10, 0);
        let wait = |s| match s {
            ThreadState::BlockedSend => Wait::Send { ep: Id(1), badge: 0, call: true, cap: None },
            ThreadState::BlockedRecv => Wait::Recv { ep: Id(1) },
            ThreadState::BlockedReply => Wait::Reply { ticket: 1 },
            ThreadState::BlockedFault => Wait::FaultReply { ticket: 1 },
            _ => Wait::Notify { n: Id(1) },
        };
        match s {
            ThreadState::Inactive => {}
            ThreadState::Runnable => {
                l.resume().unwrap();
            }
            _ => {
                l = running();
                match s {
                    ThreadState::Running => {}
                    ThreadState::Suspended => drop(l.suspend().ok().unwrap()),
                    ThreadState::Faulted => drop(l.fault().ok().unwrap()),
                    ThreadState::Dead => drop(l.kill().ok().unwrap()),
                    b => l.block(wait(b), 5).ok().unwrap(),
                }
                let blocked = matches!(s, BS | BR | BP | BN | BF);
                if s != ThreadState::Running && !(blocked && current) {
                    l.leave_cpu(0);
                }
            }
        }
        assert_eq!(l.view(), s);
        l
    }

    /// Applies the transition `name` of the table to a thread in state `s`: `Some(view after)`
    /// if it was accepted, `None` if refused (then nothing may have changed).
    fn apply(name: &str, s: ThreadState) -> Option<ThreadState> {
        let on = |s| match s {
            ThreadState::BlockedSend => WaitOn::Send(1),
            ThreadState::BlockedRecv => WaitOn::Recv(1),
            ThreadState::BlockedReply => WaitOn::Reply(1),
            ThreadState::BlockedFault => WaitOn::Fault(1),
            _ => WaitOn::Notify(1),
        };
        let current = matches!(name, "unwait") || name.starts_with("block");
        let mut l = in_state(s, current);
        let ok = match name {
            "resume" => l.resume().is_ok(),
            "run_here" => l.run_here(0).is_ok(),
            "block(Send)" => l.block(Wait::Send { ep: Id(1), badge: 0, call: false, cap: None }, 5).is_ok(),
            "block(Recv)" => l.block(Wait::Recv { ep: Id(1) }, 5).is_ok(),
            "block(Reply)" => l.block(Wait::Reply { ticket: 1 }, 5).is_ok(),
            "block(Notify)" => l.block(Wait::Notify { n: Id(1) }, 5).is_ok(),
            "block(Fault)" => l.block(Wait::FaultReply { ticket: 1 }, u64::MAX).is_ok(),
            "block_here(Recv)" => l.block_here(Wait::Recv { ep: Id(1) }, 5, 0).is_ok(),
            "block_here(Reply)" => l.block_here(Wait::Reply { ticket: 1 }, 5, 0).is_ok(),
            "take_fault" => {
                if s == ThreadState::BlockedFault {
                    // The first half of a fault's wait: rebuild it as one.
                    l = running();
                    l.block(Wait::FaultSend { ep: Id(1), badge: 3, info: [0x1000, 14 << 32 | 6] }, u64::MAX).ok().unwrap();
                    l.leave_cpu(0);
                }
                l.take_fault(1, 9).is_ok()
            }
            "stop_fault" => l.stop_fault(WaitOn::Fault(1)).is_ok(),
            "stop_fault_later" => l.stop_fault_later(WaitOn::Fault(1)).is_ok(),
            "take_sender(Send)" | "take_sender(Call)" => {
                if s == ThreadState::BlockedSend && name == "take_sender(Send)" {
                    // A plain sender: rebuild it as one.
                    l = running();
                    l.block(Wait::Send { ep: Id(1), badge: 0, call: false, cap: None }, 5).ok().unwrap();
                    l.leave_cpu(0);
                }
                l.take_sender(1, 9).is_ok()
            }
            "wake" => l.wake(on(s)).is_ok(),
            "wake_here" => l.wake_here(on(s), 0).is_ok(),
            "expire" => l.expire(5).is_ok(),
            "unwait" => l.unwait(1, 0).is_ok(),
            "take_back" => l.take_back(on(s), 0).is_ok(),
            "suspend" => l.suspend().is_ok(),
            "fault" => l.fault().is_ok(),
            "kill" => l.kill().is_ok(),
            other => panic!("transition {other} has no test"),
        };
        if !ok {
            assert_eq!(l.view(), s, "{name} refused from {s:?} but changed the state");
        }
        ok.then(|| l.view())
    }

    #[test]
    fn fault_waits_end_only_by_their_own_transitions() {
        let mut l = running();
        assert!(l.grant_reply(5, 1).is_none());
        l.block(Wait::FaultReply { ticket: 3 }, u64::MAX).ok().unwrap();
        assert!(l.in_fault());
        assert!(l.unwait(3, 0).is_ok(), "no receiver: the fault takes its wait back");
        l.block(Wait::FaultSend { ep: Id(2), badge: 8, info: [0x5000, 14 << 32 | 6] }, u64::MAX).ok().unwrap();
        assert_eq!(l.leave_cpu(0), Leave::Gone);
        assert_eq!(l.view(), ThreadState::BlockedFault);
        assert!(l.wake(WaitOn::Send(2)).is_err(), "an endpoint's death does not resume a fault");
        assert!(l.take_sender(2, 4).is_err(), "a fault is no message of the thread's registers");
        assert!(l.expire(u64::MAX).is_err(), "a fault's wait never times out");
        assert!(l.take_fault(3, 4).is_err(), "another endpoint");
        assert_eq!(l.take_fault(2, 4).ok(), Some((8, [0x5000, 14 << 32 | 6])));
        assert!(l.wake(WaitOn::Reply(4)).is_err(), "a plain reply (the fast path's) is refused");
        assert!(l.stop_fault(WaitOn::Fault(5)).is_err(), "a stale ticket");
        assert!(l.wake(WaitOn::Fault(4)).is_ok());
        assert_eq!(l.reply_right(), Some(&(5, 1)), "a resumed thread keeps the right it held");
        assert!(l.run_here(0).is_ok());
        // Stopped: the right it held dies with it.
        l.block(Wait::FaultReply { ticket: 6 }, u64::MAX).ok().unwrap();
        let s = l.stop_fault(WaitOn::Fault(6)).ok().unwrap();
        assert_eq!(s.reply, Some((5, 1)));
        assert!(matches!(s.wait, Some(Wait::FaultReply { ticket: 6 })));
        assert_eq!(l.view(), ThreadState::Faulted);
        assert!(l.kill().is_ok());
        // Stopped to be dealt with later: the right stays until taken; a right granted
        // meanwhile fails at once; a kill meanwhile takes the kept one.
        let mut l = running();
        assert!(l.grant_reply(5, 2).is_none());
        l.block(Wait::FaultSend { ep: Id(2), badge: 8, info: [0, 0] }, u64::MAX).ok().unwrap();
        assert_eq!(l.leave_cpu(0), Leave::Gone);
        assert!(l.stop_fault_later(WaitOn::Fault(1)).is_err(), "not that half of the fault");
        assert!(matches!(l.stop_fault_later(WaitOn::FaultSend(2)), Ok(Wait::FaultSend { badge: 8, .. })));
        assert_eq!(l.view(), ThreadState::Faulted);
        assert_eq!(l.grant_reply(6, 3), Some((6, 3)), "a new right to a faulted thread fails at once");
        assert_eq!(l.take_reply(), Some((5, 2)));
        assert!(l.stop_fault_later(WaitOn::FaultSend(2)).is_err(), "once");
        let mut l = running();
        assert!(l.grant_reply(5, 4).is_none());
        l.block(Wait::FaultReply { ticket: 9 }, u64::MAX).ok().unwrap();
        assert!(l.stop_fault_later(WaitOn::Fault(9)).is_ok());
        assert_eq!(l.kill().ok().and_then(|s| s.reply), Some((5, 4)), "a kill takes the kept right");
        assert_eq!(l.take_reply(), None);
        // Killed during its fault: later ends of the fault find nothing.
        let mut l = running();
        l.block(Wait::FaultReply { ticket: 7 }, u64::MAX).ok().unwrap();
        assert!(l.kill().is_ok());
        assert!(l.wake(WaitOn::Fault(7)).is_err());
        assert!(l.stop_fault(WaitOn::Fault(7)).is_err());
        // Suspended during its fault: the wait is cancelled (on resumption the instruction runs
        // again and faults anew).
        let mut l = running();
        l.block(Wait::FaultReply { ticket: 8 }, u64::MAX).ok().unwrap();
        let s = l.suspend().ok().unwrap();
        assert!(matches!(s.cancelled, Some(Wait::FaultReply { ticket: 8 })));
        assert!(l.wake(WaitOn::Fault(8)).is_err());
        assert_eq!(l.resume(), Ok(false), "still current on its CPU");
    }

    /// A priority and a CPU are taken in every state but `Dead`, which keeps its own and
    /// changes nothing else (`ThreadSetPriority`, `ThreadSetAffinity`).
    #[test]
    fn scheduling_parameters_refused_only_when_dead() {
        const ALL: [ThreadState; 11] = [I, R, X, S, F, D, BS, BR, BP, BN, BF];
        for s in ALL {
            for current in [false, true] {
                let mut l = in_state(s, current);
                let place = l.place();
                let (p, c) = (l.set_prio(3), l.set_cpu(2));
                if s == D {
                    assert_eq!((p, c), (Err(Refused(D)), Err(Refused(D))));
                    assert_eq!((l.prio, l.cpu), (10, 0), "a dead thread keeps its priority and CPU");
                } else {
                    assert_eq!((p, c), (Ok(10), Ok(())), "from {s:?}");
                    assert_eq!((l.prio, l.cpu), (3, 2));
                }
                assert_eq!((l.view(), l.place()), (s, place), "no state or place changes, from {s:?}");
            }
        }
    }

    #[test]
    fn transition_table_matches_the_methods() {
        const ALL: [ThreadState; 11] = [I, R, X, S, F, D, BS, BR, BP, BN, BF];
        for t in TRANSITIONS {
            for s in ALL {
                let got = apply(t.name, s);
                let want = if t.from.contains(&s) {
                    Some(t.to)
                } else {
                    t.same.contains(&s).then_some(s)
                };
                assert_eq!(got, want, "{} from {s:?}", t.name);
            }
        }
    }
}
