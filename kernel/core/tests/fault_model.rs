//! Model-based property test of a fault's life in `rl4_core::life`: random sequences of what the
//! kernel does to a thread with a fault handler (`kernel/src/fault.rs`, `ipc::fault_call`,
//! `ipc::recv`, `ipc::fault_reply`, `thread::fail_caller`, the endpoint's destructor, kill,
//! suspend, resume), through the real transitions in the order the kernel makes them, against a
//! plain reference model of the thread's state and the handler's reply right.
//!
//! Checked after every step: the thread's `view` equals the model's; every transition the model
//! says must succeed does, every one it says must be refused is (and changes nothing); a reply
//! right the handler holds ends the fault only if its ticket is the fault's current one (a
//! suspended and resumed thread faults anew with a new ticket); a `Faulted` or `Dead` thread
//! holds no reply right; and a fault's wait never ends by `expire`, nor by a plain `wake` of the
//! kinds the IPC paths use (`Reply`, `Send`).
use proptest::prelude::*;
use rl4_abi::ThreadState;
use rl4_core::life::{Life, Pick, Wait, WaitOn};

mod common;
use common::{Id, K};

const EP: usize = 1;
/// The caller whose reply right the faulting thread holds when it faults (it was a server).
const ITS_CALLER: usize = 77;

#[derive(Clone, Copy, Debug)]
enum Op {
    /// The running thread faults; `receiver`: its handler waits on the endpoint.
    Fault { receiver: bool },
    /// The handler receives from the endpoint (takes a queued fault).
    Recv,
    /// The handler replies: resume, or stop.
    Reply { stop: bool },
    /// The handler dies (or is stopped) holding the right.
    HandlerDies,
    /// The endpoint's last capability goes.
    EpDeleted,
    Kill,
    Suspend,
    Resume,
    /// A timer tick far in the future.
    Expire,
    /// The IPC paths try their plain wake-ups on it.
    StrayWake,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum M {
    Running,
    /// Queued on the endpoint.
    Queued,
    /// With the handler, which holds the right with this ticket.
    Held(u64),
    Suspended,
    Faulted,
    Dead,
}

impl M {
    fn view(self) -> ThreadState {
        match self {
            M::Running => ThreadState::Running,
            M::Queued | M::Held(_) => ThreadState::BlockedFault,
            M::Suspended => ThreadState::Suspended,
            M::Faulted => ThreadState::Faulted,
            M::Dead => ThreadState::Dead,
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<bool>().prop_map(|receiver| Op::Fault { receiver }),
        2 => Just(Op::Recv),
        2 => any::<bool>().prop_map(|stop| Op::Reply { stop }),
        1 => Just(Op::HandlerDies),
        1 => Just(Op::EpDeleted),
        1 => Just(Op::Kill),
        1 => Just(Op::Suspend),
        2 => Just(Op::Resume),
        1 => Just(Op::Expire),
        1 => Just(Op::StrayWake),
    ]
}

/// A running thread on CPU 0 that holds a reply right (`ITS_CALLER`, ticket 1).
fn running() -> Life<K> {
    let mut l = Life::new(10, 0);
    l.resume().unwrap();
    assert_eq!(l.enqueue(), Some(0));
    assert_eq!(l.dequeue(0), Pick::Run);
    assert!(l.grant_reply(ITS_CALLER, 1).is_none());
    l
}

fn run(ops: &[Op]) {
    let mut l = running();
    let mut m = M::Running;
    // The reply right the handler holds (a stale one stays until used or dropped).
    let mut right: Option<u64> = None;
    // Whether the thread still holds its own caller's right (lost when stopped or killed).
    let mut holds_own = true;
    let mut next_ticket = 10;
    // The ticket of the fault queued on the endpoint (the entry the queue holds).
    let mut queued = false;
    for (i, &op) in ops.iter().enumerate() {
        let at = format!("step {i} {op:?} from {m:?}");
        match op {
            Op::Fault { receiver } => {
                // `fault_current` runs only for the running thread.
                if m != M::Running {
                    continue;
                }
                next_ticket += 1;
                let t = next_ticket;
                l.block(Wait::FaultReply { ticket: t }, u64::MAX).ok().expect(&at);
                if receiver && right.is_none() {
                    // A waiting handler: claimed, given the right.
                    right = Some(t);
                    m = M::Held(t);
                } else {
                    l.unwait(t, 0).expect(&at);
                    l.block(Wait::FaultSend { ep: Id(EP), badge: 5, info: [0x1000, 14 << 32 | 4] }, u64::MAX).ok().expect(&at);
                    queued = true;
                    m = M::Queued;
                }
                assert_eq!(l.leave_cpu(0), rl4_core::life::Leave::Gone, "{at}");
            }
            Op::Recv => {
                if right.is_some() || !queued {
                    continue;
                }
                queued = false;
                next_ticket += 1;
                let t = next_ticket;
                let r = l.take_fault(EP, t);
                // The queue entry may be stale (killed or suspended meanwhile): refused then.
                if m == M::Queued {
                    assert_eq!(r.ok(), Some((5, [0x1000, 14 << 32 | 4])), "{at}");
                    right = Some(t);
                    m = M::Held(t);
                } else {
                    assert!(r.is_err(), "{at}");
                }
            }
            Op::Reply { stop } => {
                let Some(t) = right.take() else { continue };
                // The general path: a plain reply wake first, which must refuse a fault.
                assert!(l.wake(WaitOn::Reply(t)).is_err(), "{at}");
                let current = m == M::Held(t);
                if stop {
                    let s = l.stop_fault(WaitOn::Fault(t));
                    assert_eq!(s.is_ok(), current, "{at}");
                    if let Ok(s) = s {
                        assert_eq!(s.reply.is_some(), holds_own, "{at}");
                        holds_own = false;
                        m = M::Faulted;
                    }
                } else {
                    let w = l.wake(WaitOn::Fault(t));
                    assert_eq!(w.is_ok(), current, "{at}");
                    if w.is_ok() {
                        // Placed and run again on its CPU.
                        assert_eq!(l.enqueue(), Some(0), "{at}");
                        assert_eq!(l.dequeue(0), Pick::Run, "{at}");
                        m = M::Running;
                    }
                }
            }
            Op::HandlerDies => {
                let Some(t) = right.take() else { continue };
                // `fail_caller`: a plain wake first, then the fault's stop.
                assert!(l.wake(WaitOn::Reply(t)).is_err(), "{at}");
                let s = l.stop_fault(WaitOn::Fault(t));
                assert_eq!(s.is_ok(), m == M::Held(t), "{at}");
                if s.is_ok() {
                    holds_own = false;
                    m = M::Faulted;
                }
            }
            Op::EpDeleted => {
                if !queued {
                    continue;
                }
                queued = false;
                assert!(l.wake(WaitOn::Send(EP)).is_err(), "{at}");
                let s = l.stop_fault(WaitOn::FaultSend(EP));
                assert_eq!(s.is_ok(), m == M::Queued, "{at}");
                if s.is_ok() {
                    holds_own = false;
                    m = M::Faulted;
                }
            }
            Op::Kill => {
                let s = l.kill();
                assert_eq!(s.is_ok(), m != M::Dead, "{at}");
                if let Ok(s) = s {
                    assert_eq!(s.reply.is_some(), holds_own, "{at}");
                    holds_own = false;
                    m = M::Dead;
                    let _ = l.leave_cpu(0);
                }
            }
            Op::Suspend => {
                let s = l.suspend();
                match m {
                    M::Faulted | M::Dead => assert!(s.is_err(), "{at}"),
                    M::Queued | M::Held(_) => {
                        let s = s.ok().expect(&at);
                        assert!(matches!(s.cancelled, Some(Wait::FaultSend { .. } | Wait::FaultReply { .. })), "{at}");
                        m = M::Suspended;
                    }
                    M::Running => {
                        assert!(s.is_ok(), "{at}");
                        let _ = l.leave_cpu(0);
                        m = M::Suspended;
                    }
                    M::Suspended => assert!(s.is_ok(), "{at}"),
                }
            }
            Op::Resume => {
                let r = l.resume();
                match m {
                    M::Suspended => {
                        assert!(r.is_ok(), "{at}");
                        let _ = l.enqueue();
                        assert_eq!(l.dequeue(0), Pick::Run, "{at}");
                        m = M::Running;
                    }
                    M::Running => assert!(r.is_ok(), "{at}"),
                    _ => assert!(r.is_err(), "{at}"),
                }
            }
            Op::Expire => assert!(
                l.expire(u64::MAX).is_err() || !matches!(m, M::Queued | M::Held(_)),
                "{at}: a fault's wait expired"
            ),
            Op::StrayWake => {
                if let M::Held(t) = m {
                    assert!(l.wake(WaitOn::Reply(t)).is_err(), "{at}");
                    assert!(l.wake_here(WaitOn::Reply(t), 0).is_err(), "{at}");
                }
                assert!(l.wake(WaitOn::Send(EP)).is_err() || !matches!(m, M::Queued), "{at}");
                assert!(l.take_sender(EP, 99).is_err() || !matches!(m, M::Queued), "{at}");
            }
        }
        assert_eq!(l.view(), m.view(), "{at}");
        assert!(l.consistent(), "{at}");
        if matches!(m, M::Faulted | M::Dead) {
            assert!(l.reply_right().is_none(), "{at}: a stopped thread holds a reply right");
        }
        assert_eq!(l.reply_right().is_some(), holds_own, "{at}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1500),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random sequences of up to 40 operations on a thread with a fault handler.
    #[test]
    fn fault_life_matches_the_model(ops in prop::collection::vec(op(), 1..=40)) {
        run(&ops);
    }
}

/// The fixed story: fault queued, taken, resumed; fault again, stopped.
#[test]
fn queued_taken_resumed_then_stopped() {
    run(&[
        Op::Fault { receiver: false },
        Op::Recv,
        Op::Reply { stop: false },
        Op::Fault { receiver: true },
        Op::Reply { stop: true },
        Op::Kill,
    ]);
}
