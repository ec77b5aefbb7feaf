//! `loom` models of the cross-CPU races of `rl4_core::life`: every interleaving (up to a
//! preemption bound) of 2–3 simulated CPUs that follow the kernel's protocol with real `Life`
//! values, each under its own lock (`loom::sync::Mutex`, standing for the thread's spinlock),
//! the endpoint's queues and each CPU's inbox under theirs. The lock order is the kernel's:
//! endpoint or notification queue → one thread at a time → a CPU's inbox.
//!
//! - [`kill_against_receive_send`], [`kill_against_receive_call`] (a): a sender waits on E; two
//!   CPUs receive on E while a third kills the sender.
//! - [`kill_against_block_recv`], [`kill_against_block_send`], [`kill_against_call`] (b): the
//!   running thread blocks itself (`Recv`, `Call` without or with a waiting receiver) while
//!   another CPU kills it.
//! - [`suspend_against_call`] (c): a client calls a waiting server, the server's CPU runs the
//!   server and replies, a third CPU suspends the client; then it is resumed.
//! - [`expiry_against_reply`], [`expiry_against_send`] (d): a timeout against the wake-up.
//! - [`handoff_against_kill`], [`handoff_against_suspend_resume`] (e): a CPU wakes a thread
//!   into another CPU's inbox while that CPU schedules and a third kills it, or suspends and
//!   resumes it.
//! - [`kill_against_receive_by_the_receiver`]: the receiver is killed during its `Recv`, which
//!   takes a caller (the `grant_reply` regression).
//! - [`kill_receiver_against_call_general_path`], [`kill_receiver_against_call_fast_path`]:
//!   a call claims a receiver that another CPU kills.
//! - [`literal_call_order_loses_the_reply`], [`literal_fast_call_loses_the_caller_to_a_kill`]:
//!   the claim-then-block order of a call (the kernel's general path and fast path used it
//!   once) loses the caller; these assert that some interleaving does.
//!
//! The calls here use the order that the model test (`life_model.rs`) found must be used: the
//! caller blocks for the reply before it claims a receiver. Small models are explored
//! exhaustively, the larger ones (three CPUs with several steps each) with at most
//! [`BOUND`] preemptions; each takes at most a few seconds in a debug build.
use std::collections::VecDeque;

use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use loom::sync::{Arc, Mutex};
use loom::thread;
use rl4_abi::ThreadState;
use rl4_core::life::{Leave, Life, Pick, Place, Wait, WaitOn};

mod common;
use common::{Id, K};
type L = Life<K>;

/// The endpoint's and the notification's identities.
const E: usize = 1;
const N: usize = 2;
const FOREVER: u64 = u64::MAX;

/// The preemption bound of the larger models (every interleaving with at most this many
/// preemptions; `LOOM_MAX_PREEMPTIONS` overrides). The smaller ones are explored exhaustively.
const BOUND: Option<usize> = Some(3);

fn model(bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = bound;
    }
    b.check(f);
}

/// A thread running on `cpu` (its current thread).
fn running(cpu: u32) -> L {
    let mut l = L::new(10, cpu);
    assert_eq!(l.resume(), Ok(true));
    assert_eq!(l.enqueue(), Some(cpu));
    assert_eq!(l.dequeue(cpu), Pick::Run);
    l
}

/// A thread of `cpu` blocked in `wait`, let go of by its CPU.
fn blocked(cpu: u32, wait: Wait<K>, deadline: u64) -> L {
    let mut l = running(cpu);
    assert!(l.block(wait, deadline).is_ok());
    assert_eq!(l.leave_cpu(cpu), Leave::Gone);
    l
}

fn wait_on(w: &Wait<K>) -> WaitOn {
    match w {
        Wait::Send { ep, .. } => WaitOn::Send(ep.0),
        Wait::Recv { ep } => WaitOn::Recv(ep.0),
        Wait::Reply { ticket } => WaitOn::Reply(*ticket),
        Wait::Notify { n } => WaitOn::Notify(n.0),
        Wait::FaultSend { ep, .. } => WaitOn::FaultSend(ep.0),
        Wait::FaultReply { ticket } => WaitOn::Fault(*ticket),
    }
}

#[derive(Default)]
struct Queues {
    send: VecDeque<usize>,
    recv: VecDeque<usize>,
}

impl Queues {
    fn count(&self, t: usize) -> usize {
        self.send.iter().chain(&self.recv).filter(|&&x| x == t).count()
    }
}

/// Threads, one endpoint (or notification: its queue is `recv`), three CPU inboxes.
struct World {
    t: Vec<Mutex<L>>,
    ep: Mutex<Queues>,
    inbox: [Mutex<VecDeque<usize>>; 3],
    /// Messages delivered.
    delivered: AtomicUsize,
}

impl World {
    fn new(t: Vec<L>) -> Arc<Self> {
        Arc::new(World {
            t: t.into_iter().map(Mutex::new).collect(),
            ep: Mutex::new(Queues::default()),
            inbox: Default::default(),
            delivered: AtomicUsize::new(0),
        })
    }

    fn view(&self, t: usize) -> ThreadState {
        self.t[t].lock().unwrap().view()
    }

    fn place(&self, t: usize) -> Place {
        self.t[t].lock().unwrap().place()
    }

    /// Places a thread its waker holds: lock it, `enqueue`, push into that CPU's inbox.
    fn enqueue(&self, t: usize) {
        let mut l = self.t[t].lock().unwrap();
        if let Some(c) = l.enqueue() {
            self.inbox[c as usize].lock().unwrap().push_back(t);
        }
    }

    /// Kill, from any CPU: the thread, then the queue of its wait, then the caller whose reply
    /// right died (which gets `PartnerGone`). Returns the wait it was in.
    fn kill(&self, t: usize) -> Option<WaitOn> {
        let stopped = self.t[t].lock().unwrap().kill().ok().expect("killed once");
        let wait = stopped.wait.as_ref().map(wait_on);
        if let Some(WaitOn::Send(_) | WaitOn::Recv(_) | WaitOn::Notify(_)) = wait {
            let mut q = self.ep.lock().unwrap();
            q.send.retain(|&x| x != t);
            q.recv.retain(|&x| x != t);
        }
        if let Some((c, ticket)) = stopped.reply {
            let woken = self.t[c].lock().unwrap().wake(WaitOn::Reply(ticket)).is_ok();
            if woken {
                self.enqueue(c);
            }
        }
        wait
    }

    /// Receive on E by thread `r` (running): take the first sender that accepts; for a call
    /// `r` gets the reply right, else the sender is placed. No sender: `r` blocks. Returns
    /// the sender taken.
    fn recv(&self, r: usize, ticket: u64) -> Option<usize> {
        let mut q = self.ep.lock().unwrap();
        let mut got = None;
        while let Some(s) = q.send.pop_front() {
            if let Ok(taken) = self.t[s].lock().unwrap().take_sender(E, ticket) {
                got = Some((s, taken.call));
                break;
            }
        }
        let Some((s, call)) = got else {
            if self.t[r].lock().unwrap().block(Wait::Recv { ep: Id(E) }, FOREVER).is_ok() {
                q.recv.push_back(r);
            }
            return None;
        };
        self.delivered.fetch_add(1, SeqCst);
        drop(q);
        if call {
            let dies = self.t[r].lock().unwrap().grant_reply(s, ticket);
            if let Some((c, tk)) = dies {
                if self.t[c].lock().unwrap().wake(WaitOn::Reply(tk)).is_ok() {
                    self.enqueue(c);
                }
            }
        } else {
            self.enqueue(s);
        }
        Some(s)
    }

    /// Reply by `r`: returns whether the caller took it (else `PartnerGone`).
    fn reply(&self, r: usize) -> Option<bool> {
        let (c, ticket) = self.t[r].lock().unwrap().take_reply()?;
        let woken = self.t[c].lock().unwrap().wake(WaitOn::Reply(ticket)).is_ok();
        if woken {
            self.enqueue(c);
        }
        Some(woken)
    }

    /// A call by `s`, running on CPU `me`, on E with `ticket`, in the order the kernel must
    /// use: with receivers waiting, the caller blocks for the reply *before* a receiver is
    /// claimed; then the receiver gets the message and the right and is placed (`fast`: made
    /// current here with `wake_here`, for the caller's CPU to switch to; the fast path's caller
    /// leaves its CPU in the hold that blocks it, `fastpath::block_caller`). If every receiver
    /// entry is stale, or there is none, `s` waits as a sender (the fast path takes its reply
    /// wait back, `Life::take_back`, and the general path then makes it
    /// wait as a sender). Returns the receiver, or `None` (no receiver, or `s` was stopped
    /// first).
    fn call(&self, s: usize, me: u32, ticket: u64, fast: bool) -> Option<usize> {
        let mut q = self.ep.lock().unwrap();
        if !q.recv.is_empty() {
            {
                let mut l = self.t[s].lock().unwrap();
                if l.block(Wait::Reply { ticket }, FOREVER).is_err() {
                    return None; // killed or suspended: no message goes out
                }
                if fast {
                    self.leave_locked(me, s, &mut l);
                }
            }
            while let Some(r) = q.recv.pop_front() {
                let mut l = self.t[r].lock().unwrap();
                let claimed = if fast { l.wake_here(WaitOn::Recv(E), me).is_ok() } else { l.wake(WaitOn::Recv(E)).is_ok() };
                if claimed {
                    self.delivered.fetch_add(1, SeqCst);
                    let dies = l.grant_reply(s, ticket);
                    drop(l);
                    drop(q);
                    if let Some((c, tk)) = dies {
                        // The receiver was killed after the claim: its caller fails.
                        assert_eq!((c, tk), (s, ticket));
                        if self.t[c].lock().unwrap().wake(WaitOn::Reply(tk)).is_ok() {
                            self.enqueue(c);
                        }
                    }
                    if !fast {
                        self.enqueue(r);
                    }
                    return Some(r);
                }
            }
            // Every entry was stale: stop waiting for the reply, wait as a sender.
            let mut l = self.t[s].lock().unwrap();
            let back = if fast { l.take_back(WaitOn::Reply(ticket), me).is_ok() } else { l.wake(WaitOn::Reply(ticket)).is_ok() && l.keep(me) };
            if !back {
                return None; // stopped or moved meanwhile
            }
        }
        let wait = Wait::Send { ep: Id(E), badge: 0, call: true, cap: None };
        if self.t[s].lock().unwrap().block(wait, FOREVER).is_ok() {
            q.send.push_back(s);
        }
        None
    }

    /// The end of a system call on `cpu` whose current thread is `t`: keep it if it may run
    /// on, else let go of it. Returns whether it is still current.
    fn decide(&self, cpu: u32, t: usize) -> bool {
        let mut l = self.t[t].lock().unwrap();
        if l.keep(cpu) {
            return true;
        }
        self.leave_locked(cpu, t, &mut l);
        false
    }

    /// `cpu` lets go of its current thread `t`.
    fn leave(&self, cpu: u32, t: usize) {
        self.leave_locked(cpu, t, &mut self.t[t].lock().unwrap());
    }

    fn leave_locked(&self, cpu: u32, t: usize, l: &mut L) {
        match l.leave_cpu(cpu) {
            Leave::Requeue(c) | Leave::Forward(c) => self.inbox[c as usize].lock().unwrap().push_back(t),
            Leave::Gone => {}
        }
    }

    /// `cpu` takes the next entry of its inbox; returns the thread it runs, if any.
    fn pick(&self, cpu: u32) -> Option<usize> {
        let t = self.inbox[cpu as usize].lock().unwrap().pop_front()?;
        match self.t[t].lock().unwrap().dequeue(cpu) {
            Pick::Run => Some(t),
            Pick::Forward(c) => {
                self.inbox[c as usize].lock().unwrap().push_back(t);
                None
            }
            Pick::Drop => None,
        }
    }

    /// Entries of `t` in `cpu`'s inbox.
    fn entries(&self, cpu: usize, t: usize) -> usize {
        self.inbox[cpu].lock().unwrap().iter().filter(|&&x| x == t).count()
    }

    /// After the race: `cpu` drains its inbox; returns the threads it would run.
    fn drain(&self, cpu: u32) -> Vec<usize> {
        let mut ran = vec![];
        while !self.inbox[cpu as usize].lock().unwrap().is_empty() {
            if let Some(t) = self.pick(cpu) {
                ran.push(t);
                assert_eq!(self.decide(cpu, t), true);
                // Preempt it, so that a second entry would show.
                let mut l = self.t[t].lock().unwrap();
                assert_eq!(l.leave_cpu(cpu), Leave::Requeue(cpu));
                assert_eq!(l.dequeue(cpu), Pick::Run);
            }
        }
        ran
    }
}

// ---- (a) kill against receive ----------------------------------------------------------------

/// Sender 0 (CPU 0) waits on E with a message (`call` or not); receivers 1 and 2 run on CPUs 1
/// and 2 and receive on E while CPU 0 kills the sender.
fn kill_against_receive(call: bool) {
    model(BOUND, move || {
        let wait = Wait::Send { ep: Id(E), badge: 42, call, cap: None };
        let w = World::new(vec![blocked(0, wait, FOREVER), running(1), running(2)]);
        w.ep.lock().unwrap().send.push_back(0);
        let rx: Vec<_> = [1usize, 2]
            .map(|r| {
                let w = w.clone();
                thread::spawn(move || w.recv(r, 10 + r as u64))
            })
            .into();
        let killed = {
            let w = w.clone();
            thread::spawn(move || w.kill(0))
        };
        let got: Vec<Option<usize>> = rx.into_iter().map(|h| h.join().unwrap()).collect();
        let wait = killed.join().unwrap();

        assert_eq!(w.view(0), ThreadState::Dead);
        let takes = got.iter().filter(|g| g.is_some()).count();
        let delivered = w.delivered.load(SeqCst);
        assert!(takes <= 1 && delivered == takes, "delivered {delivered} times");
        // Delivered exactly when a receiver took the sender before the kill (the kill found
        // it no longer waiting to send).
        assert_eq!(delivered == 1, wait != Some(WaitOn::Send(E)), "kill found {wait:?}");
        if call {
            assert_eq!(wait.is_some(), true, "a taken caller waits for the reply");
        }
        // No live entry anywhere: none in E's send queue, none its inbox would run.
        assert_eq!(w.ep.lock().unwrap().send.iter().filter(|&&x| x == 0).count(), 0);
        assert!(w.drain(0).is_empty(), "a dead thread was run");
        // The receiver that took it: its reply finds the caller gone.
        for (i, g) in got.iter().enumerate() {
            let r = i + 1;
            match g {
                Some(_) if call => assert_eq!(w.reply(r), Some(false)),
                Some(_) => assert_eq!(w.reply(r), None),
                None => {
                    assert_eq!(w.view(r), ThreadState::BlockedRecv);
                    assert_eq!(w.ep.lock().unwrap().recv.iter().filter(|&&x| x == r).count(), 1);
                }
            }
        }
    });
}

#[test]
fn kill_against_receive_send() {
    kill_against_receive(false);
}

#[test]
fn kill_against_receive_call() {
    kill_against_receive(true);
}

/// Receiver 1 runs on CPU 1 and receives on E, where caller 0 waits; CPU 0 kills the
/// receiver. Whether the kill comes before the grant of the reply right (it then dies at
/// once: `grant_reply` to a dead thread hands it back) or after (the kill takes it), the
/// caller is failed and placed: it never waits for a reply nobody can give.
#[test]
fn kill_against_receive_by_the_receiver() {
    model(None, || {
        let wait = Wait::Send { ep: Id(E), badge: 42, call: true, cap: None };
        let w = World::new(vec![blocked(0, wait, FOREVER), running(1)]);
        w.ep.lock().unwrap().send.push_back(0);
        let cpu1 = {
            let w = w.clone();
            thread::spawn(move || w.recv(1, 7))
        };
        let killer = {
            let w = w.clone();
            thread::spawn(move || w.kill(1))
        };
        assert_eq!(cpu1.join().unwrap(), Some(0));
        killer.join().unwrap();
        assert_eq!(w.view(1), ThreadState::Dead);
        assert!(w.t[1].lock().unwrap().reply_right().is_none(), "a dead thread holds a reply right");
        assert_eq!(w.view(0), ThreadState::Runnable, "the caller was not failed");
        assert_eq!(w.entries(0, 0), 1);
        assert_eq!(w.drain(0), [0]);
    });
}

// ---- (b) kill against block ------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Blocks {
    Recv,
    /// `Call` with no receiver: waits as a sender.
    CallSend,
    /// `Call` with receiver 1 waiting: waits for the reply.
    CallReply,
}

/// Thread 0 runs on CPU 0 and blocks itself, then its CPU decides; CPU 1 kills it.
fn kill_against_block(how: Blocks) {
    model(None, move || {
        let w = World::new(vec![running(0), blocked(1, Wait::Recv { ep: Id(E) }, FOREVER)]);
        if how == Blocks::CallReply {
            w.ep.lock().unwrap().recv.push_back(1);
        }
        let cpu0 = {
            let w = w.clone();
            thread::spawn(move || {
                let r = match how {
                    Blocks::Recv => w.recv(0, 7),
                    Blocks::CallSend | Blocks::CallReply => w.call(0, 0, 7, false),
                };
                (r, w.decide(0, 0))
            })
        };
        let killer = {
            let w = w.clone();
            thread::spawn(move || w.kill(0))
        };
        let (r, current) = cpu0.join().unwrap();
        let wait = killer.join().unwrap();

        assert_eq!(w.view(0), ThreadState::Dead);
        assert!(!current, "a dead thread kept running");
        assert_eq!(w.place(0), Place::Off);
        assert_eq!(w.ep.lock().unwrap().count(0), 0, "a dead thread left in E's queues");
        match how {
            Blocks::Recv => assert!(matches!(wait, None | Some(WaitOn::Recv(E)))),
            Blocks::CallSend => assert!(matches!(wait, None | Some(WaitOn::Send(E)))),
            Blocks::CallReply => {
                // Either the kill came first (no message: the server still waits), or the call
                // went out and the server's reply finds the caller gone.
                assert_eq!(r.is_some(), wait == Some(WaitOn::Reply(7)));
                assert_eq!(w.delivered.load(SeqCst), r.is_some() as usize);
                if r.is_some() {
                    assert_eq!(w.drain(1), [1]);
                    assert_eq!(w.reply(1), Some(false));
                } else {
                    assert_eq!(w.view(1), ThreadState::BlockedRecv);
                    assert_eq!(w.ep.lock().unwrap().count(1), 1);
                }
            }
        }
        assert!(w.drain(0).is_empty());
    });
}

#[test]
fn kill_against_block_recv() {
    kill_against_block(Blocks::Recv);
}

#[test]
fn kill_against_block_send() {
    kill_against_block(Blocks::CallSend);
}

#[test]
fn kill_against_call() {
    kill_against_block(Blocks::CallReply);
}

/// Caller 0 (CPU 0) calls receiver 1, which waits on E (CPU 1, let go of), on the general
/// path (`fast`: on the fast path, receiver 1 of CPU 0, then CPU 0 switches to it); CPU 1
/// kills the receiver. The caller never waits for a reply nobody can give: it was failed
/// (`PartnerGone`, runnable) or, the receiver dead before the claim, waits as a sender.
fn kill_receiver_against_call(fast: bool) {
    model(None, move || {
        let rcpu = if fast { 0 } else { 1 };
        let w = World::new(vec![running(0), blocked(rcpu, Wait::Recv { ep: Id(E) }, FOREVER)]);
        w.ep.lock().unwrap().recv.push_back(1);
        let cpu0 = {
            let w = w.clone();
            thread::spawn(move || {
                let r = w.call(0, 0, 7, fast);
                let cur = match r {
                    // The switch: the caller let go of the CPU when it blocked, the receiver has it.
                    Some(r) if fast => r,
                    _ => 0,
                };
                (r, w.decide(0, cur).then_some(cur))
            })
        };
        let killer = {
            let w = w.clone();
            thread::spawn(move || w.kill(1))
        };
        let (r, current) = cpu0.join().unwrap();
        killer.join().unwrap();

        assert_eq!(w.view(1), ThreadState::Dead);
        let v = w.view(0);
        assert!(v != ThreadState::BlockedReply, "the caller waits for a dead receiver");
        match r {
            Some(_) => {
                // Claimed, then failed by the kill (or by the grant to the dead receiver).
                if current == Some(0) {
                    assert_eq!(v, ThreadState::Running);
                } else {
                    assert_eq!(v, ThreadState::Runnable);
                    assert_eq!(w.drain(0), [0]);
                }
            }
            None => {
                assert_eq!(v, ThreadState::BlockedSend);
                assert_eq!(w.ep.lock().unwrap().send, [0]);
            }
        }
        assert_eq!(w.ep.lock().unwrap().count(1), 0);
    });
}

#[test]
fn kill_receiver_against_call_general_path() {
    kill_receiver_against_call(false);
}

#[test]
fn kill_receiver_against_call_fast_path() {
    kill_receiver_against_call(true);
}

// ---- (c) suspend against call ----------------------------------------------------------------

/// Client 0 (CPU 0) calls server 1, which waits on E (CPU 1); CPU 1 takes the server from its
/// inbox, runs it, and it replies; CPU 2 suspends the client. Then the client is resumed.
#[test]
fn suspend_against_call() {
    model(BOUND, || {
        let w = World::new(vec![running(0), blocked(1, Wait::Recv { ep: Id(E) }, FOREVER)]);
        w.ep.lock().unwrap().recv.push_back(1);
        let cpu0 = {
            let w = w.clone();
            thread::spawn(move || {
                let r = w.call(0, 0, 7, false);
                (r, w.decide(0, 0))
            })
        };
        let cpu1 = {
            let w = w.clone();
            thread::spawn(move || {
                let ran = w.pick(1);
                let replied = ran.and_then(|r| w.reply(r));
                (ran, replied)
            })
        };
        let cpu2 = {
            let w = w.clone();
            thread::spawn(move || {
                let sus = w.t[0].lock().unwrap().suspend().ok().expect("suspended");
                // Its wait could only be the reply wait, which has no queue.
                assert!(matches!(sus.cancelled.as_ref().map(wait_on), None | Some(WaitOn::Reply(7))));
                sus.kick
            })
        };
        let (r, mut current) = cpu0.join().unwrap();
        let (ran, replied) = cpu1.join().unwrap();
        let kick = cpu2.join().unwrap();

        assert_eq!(w.view(0), ThreadState::Suspended);
        assert_eq!(w.delivered.load(SeqCst), r.is_some() as usize);
        if r.is_none() {
            // Suspended before it blocked: no message went out; the server still waits.
            assert_eq!(w.view(1), ThreadState::BlockedRecv);
            assert_eq!(w.ep.lock().unwrap().count(1), 1);
        }
        if ran.is_some() {
            assert!(r.is_some());
        }
        if replied == Some(true) {
            assert!(w.t[1].lock().unwrap().reply_right().is_none());
        }
        if current {
            // Kept running (it got the reply before the suspension): the kick makes its CPU
            // let go of it.
            assert_eq!(kick, Some(0));
            current = w.decide(0, 0);
            assert!(!current);
        }
        // Resumed: runnable on CPU 0, held exactly once.
        let place = w.t[0].lock().unwrap().resume().unwrap();
        if place {
            w.enqueue(0);
        }
        assert_eq!(w.view(0), ThreadState::Runnable);
        assert_eq!(w.place(0), Place::Queued(0));
        assert_eq!(w.entries(0, 0), 1);
        assert_eq!(w.drain(0), [0]);
        // A server still holding the right finds the caller not waiting for it any more.
        if r.is_some() && replied.is_none() {
            assert_eq!(w.reply(1), Some(false));
        }
    });
}

// ---- (d) timeout expiry against wake-up ------------------------------------------------------

/// Caller 0 waits for server 1's reply with a deadline (5) that has passed (now 10): CPU 0's
/// timer expires it while server 1 (CPU 1) replies. Exactly one ends the wait.
#[test]
fn expiry_against_reply() {
    model(None, || {
        let mut caller = blocked(0, Wait::Send { ep: Id(E), badge: 1, call: true, cap: None }, 5);
        assert!(caller.take_sender(E, 7).is_ok());
        let mut server = running(1);
        assert!(server.grant_reply(0, 7).is_none());
        let w = World::new(vec![caller, server]);
        let timer = {
            let w = w.clone();
            thread::spawn(move || {
                let expired = {
                    let mut l = w.t[0].lock().unwrap();
                    l.deadline().is_some_and(|d| d <= 10) && l.expire(10).is_ok()
                };
                if expired {
                    w.enqueue(0);
                }
                expired
            })
        };
        let replier = {
            let w = w.clone();
            thread::spawn(move || w.reply(1).unwrap())
        };
        let expired = timer.join().unwrap();
        let replied = replier.join().unwrap();
        assert!(expired != replied, "expired {expired}, replied {replied}");
        assert_eq!(w.view(0), ThreadState::Runnable);
        assert_eq!(w.entries(0, 0), 1);
        assert_eq!(w.drain(0), [0]);
    });
}

/// Receiver 0 waits on E with a deadline (5) that has passed (now 10). CPU 0's timer reads its
/// wait under its lock, lets go, locks E and the thread, checks the wait is still that one and
/// expires it; CPU 1's thread 1 sends on E. Exactly one ends the wait; a sender that found no
/// receiver waits in E's send queue.
#[test]
fn expiry_against_send() {
    model(None, || {
        let w = World::new(vec![blocked(0, Wait::Recv { ep: Id(E) }, 5), running(1)]);
        w.ep.lock().unwrap().recv.push_back(0);
        let timer = {
            let w = w.clone();
            thread::spawn(move || {
                let on = match w.t[0].lock().unwrap().state() {
                    rl4_core::life::State::Blocked { wait, deadline } if *deadline <= 10 => wait_on(wait),
                    _ => return false,
                };
                let expired = {
                    let mut q = w.ep.lock().unwrap();
                    let mut l = w.t[0].lock().unwrap();
                    let still = l.waits(on);
                    let expired = still && l.expire(10).is_ok();
                    if expired {
                        let i = q.recv.iter().rposition(|&x| x == 0).expect("queued");
                        q.recv.remove(i);
                    }
                    expired
                };
                if expired {
                    w.enqueue(0);
                }
                expired
            })
        };
        let sender = {
            let w = w.clone();
            thread::spawn(move || {
                let mut q = w.ep.lock().unwrap();
                while let Some(r) = q.recv.pop_front() {
                    if w.t[r].lock().unwrap().wake(WaitOn::Recv(E)).is_ok() {
                        w.delivered.fetch_add(1, SeqCst);
                        drop(q);
                        w.enqueue(r);
                        return Some(r);
                    }
                }
                let wait = Wait::Send { ep: Id(E), badge: 2, call: false, cap: None };
                assert!(w.t[1].lock().unwrap().block(wait, FOREVER).is_ok());
                q.send.push_back(1);
                None
            })
        };
        let expired = timer.join().unwrap();
        let sent = sender.join().unwrap();
        assert!(expired != sent.is_some(), "expired {expired}, message to {sent:?}");
        assert_eq!(w.view(0), ThreadState::Runnable);
        assert_eq!(w.ep.lock().unwrap().count(0), 0);
        if expired {
            assert_eq!(w.view(1), ThreadState::BlockedSend);
            assert_eq!(w.ep.lock().unwrap().send, [1]);
        }
        assert_eq!(w.entries(0, 0), 1);
        assert_eq!(w.drain(0), [0]);
    });
}

// ---- (e) the cross-CPU inbox hand-off --------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Kill,
    SuspendResume,
}

/// Thread 0 (affinity CPU 1) waits on notification N. CPU 0 signals: wakes it and pushes it
/// into CPU 1's inbox. CPU 1 schedules twice (takes an entry and runs it; keeps it or lets go).
/// CPU 2 kills it, or suspends it (removing its wait from N's queue under N's lock) and
/// resumes it.
fn handoff(stop: Stop) {
    model(BOUND, move || {
        let w = World::new(vec![blocked(1, Wait::Notify { n: Id(N) }, FOREVER)]);
        w.ep.lock().unwrap().recv.push_back(0);
        let running = Arc::new(AtomicUsize::new(0));
        let cpu0 = {
            let w = w.clone();
            thread::spawn(move || {
                let mut q = w.ep.lock().unwrap();
                let woken = match q.recv.pop_front() {
                    Some(t) => w.t[t].lock().unwrap().wake(WaitOn::Notify(N)).is_ok(),
                    None => false,
                };
                drop(q);
                if woken {
                    w.enqueue(0);
                }
                woken
            })
        };
        let cpu1 = {
            let (w, running) = (w.clone(), running.clone());
            thread::spawn(move || {
                let mut current = None;
                for _ in 0..2 {
                    match current {
                        None => {
                            current = w.pick(1);
                            if current.is_some() {
                                assert_eq!(running.fetch_add(1, SeqCst), 0, "runs twice at once");
                            }
                        }
                        Some(t) => {
                            if !w.decide(1, t) {
                                running.fetch_sub(1, SeqCst);
                                current = None;
                            }
                        }
                    }
                }
                current
            })
        };
        let cpu2 = {
            let w = w.clone();
            thread::spawn(move || match stop {
                Stop::Kill => {
                    w.kill(0);
                }
                Stop::SuspendResume => {
                    {
                        let mut q = w.ep.lock().unwrap();
                        let sus = w.t[0].lock().unwrap().suspend().ok().expect("suspended");
                        if sus.cancelled.is_some() {
                            q.recv.retain(|&x| x != 0);
                        }
                    }
                    let place = w.t[0].lock().unwrap().resume().expect("resumed");
                    if place {
                        w.enqueue(0);
                    }
                }
            })
        };
        let woken = cpu0.join().unwrap();
        let mut current = cpu1.join().unwrap();
        cpu2.join().unwrap();

        assert_eq!(w.ep.lock().unwrap().count(0), 0, "left in N's queue");
        match stop {
            Stop::Kill => {
                assert_eq!(w.view(0), ThreadState::Dead);
                if let Some(t) = current {
                    // The kick: CPU 1 lets go of it.
                    assert!(!w.decide(1, t));
                    current = None;
                }
                assert_eq!(current, None);
                assert!(w.drain(1).is_empty(), "a dead thread was run");
                assert_eq!(w.place(0), Place::Off);
            }
            Stop::SuspendResume => {
                // Not lost: current on CPU 1, or queued there exactly once.
                let _ = woken;
                match current {
                    Some(t) => {
                        assert_eq!(w.place(t), Place::Current(1));
                        assert_eq!(w.entries(1, 0), 0);
                        // A resume while it was still current: it runs on.
                        assert!(w.decide(1, t));
                        assert_eq!(w.view(0), ThreadState::Running);
                    }
                    None => {
                        assert_eq!(w.view(0), ThreadState::Runnable);
                        assert_eq!(w.place(0), Place::Queued(1));
                        assert_eq!(w.entries(1, 0), 1);
                        assert_eq!(w.drain(1), [0]);
                    }
                }
            }
        }
        assert!(w.drain(0).is_empty() && w.drain(2).is_empty());
    });
}

#[test]
fn handoff_against_kill() {
    handoff(Stop::Kill);
}

#[test]
fn handoff_against_suspend_resume() {
    handoff(Stop::SuspendResume);
}

// ---- the literal call order, for the record --------------------------------------------------

/// The call order "claim the receiver (wake), deliver, grant; let go; then block the caller"
/// (`kernel/src/ipc.rs`, `send`) loses the reply when the receiver was woken while still
/// current on its CPU: its CPU keeps it, it replies before the caller blocks (refused:
/// `PartnerGone`), and the caller then waits for a reply nobody can give. This model asserts
/// that some interleaving does so (the order in [`World::call`] is the fix).
#[test]
fn literal_call_order_loses_the_reply() {
    static LOST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    model(None, || {
        // Receiver 1 blocked in Recv on E, its CPU (1) not yet let go of it.
        let mut r = running(1);
        assert!(r.block(Wait::Recv { ep: Id(E) }, FOREVER).is_ok());
        let w = World::new(vec![running(0), r]);
        w.ep.lock().unwrap().recv.push_back(1);
        let cpu0 = {
            let w = w.clone();
            thread::spawn(move || {
                let mut q = w.ep.lock().unwrap();
                let r = q.recv.pop_front().unwrap();
                {
                    let mut l = w.t[r].lock().unwrap();
                    assert!(l.wake(WaitOn::Recv(E)).is_ok());
                    assert!(l.grant_reply(0, 7).is_none());
                }
                drop(q);
                w.t[0].lock().unwrap().block(Wait::Reply { ticket: 7 }, FOREVER).is_ok()
            })
        };
        let cpu1 = {
            let w = w.clone();
            thread::spawn(move || if w.decide(1, 1) { w.reply(1) } else { None })
        };
        let blocked = cpu0.join().unwrap();
        let replied = cpu1.join().unwrap();
        if blocked && replied == Some(false) {
            // The caller waits for ticket 7 and nobody holds it.
            assert_eq!(w.view(0), ThreadState::BlockedReply);
            assert!(w.t[1].lock().unwrap().reply_right().is_none());
            LOST.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    assert!(LOST.load(std::sync::atomic::Ordering::Relaxed), "no interleaving lost the reply");
}

/// The same order on the fast path (`kernel/src/fastpath.rs`, `call` before 2026-12-02:
/// `wake_here` and grant, let go, then block the caller): CPU 1 kills the receiver before the caller blocks; the kill
/// takes the reply right and fails the caller — refused, it is still `Running` — and the
/// caller then waits forever. This model asserts that some interleaving does so
/// (`kill_receiver_against_call_fast_path` runs the fixed order).
#[test]
fn literal_fast_call_loses_the_caller_to_a_kill() {
    static LOST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    model(None, || {
        let w = World::new(vec![running(0), blocked(0, Wait::Recv { ep: Id(E) }, FOREVER)]);
        w.ep.lock().unwrap().recv.push_back(1);
        let cpu0 = {
            let w = w.clone();
            thread::spawn(move || {
                let mut q = w.ep.lock().unwrap();
                let Some(r) = q.recv.pop_front() else { return false };
                {
                    let mut l = w.t[r].lock().unwrap();
                    if l.wake_here(WaitOn::Recv(E), 0).is_err() {
                        return false; // killed first
                    }
                    assert!(l.grant_reply(0, 7).is_none());
                }
                drop(q);
                w.t[0].lock().unwrap().block(Wait::Reply { ticket: 7 }, FOREVER).is_ok()
            })
        };
        let killer = {
            let w = w.clone();
            thread::spawn(move || w.kill(1))
        };
        let blocked = cpu0.join().unwrap();
        killer.join().unwrap();
        if blocked && w.view(0) == ThreadState::BlockedReply {
            assert_eq!(w.view(1), ThreadState::Dead);
            assert!(w.t[1].lock().unwrap().reply_right().is_none());
            LOST.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    assert!(LOST.load(std::sync::atomic::Ordering::Relaxed), "no interleaving lost the caller");
}
