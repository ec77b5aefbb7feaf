//! Tests of issue 17's promises (docs/security.md): a system call reads each capability slot
//! once, giving a capability away through IPC needs `GRANT` on it, and a task's console lines
//! carry its task's prefix.
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use rl4_abi::{BootInfo, Error, ObjType, Rights, ThreadState};
use rl4_user::sys;

use crate::space::*;
use crate::tests::{report, state};

fn far_cpu() -> u64 {
    cpus() - 1
}

// ---- one read of a slot ----------------------------------------------------------------------

/// The slot the reader turns into address-space capabilities, and where it puts them.
static RACE_SRC: AtomicU64 = AtomicU64::new(0);
static RACE_DST: AtomicU64 = AtomicU64::new(0);
static RACE_STOP: AtomicBool = AtomicBool::new(false);
/// TaskAddressSpace calls made, succeeded, and succeeded with rights beyond `READ` (or not an
/// address space); the union of such rights; calls or identifications that failed otherwise
/// than the slot's changes explain.
static RACE_CALLS: AtomicU64 = AtomicU64::new(0);
static RACE_GOT: AtomicU64 = AtomicU64::new(0);
static RACE_WIDER: AtomicU64 = AtomicU64::new(0);
static RACE_WIDER_RIGHTS: AtomicU64 = AtomicU64::new(0);
static RACE_ODD: AtomicU64 = AtomicU64::new(0);

fn race_reader(_: u64) {
    let (src, dst) = (RACE_SRC.load(SeqCst), RACE_DST.load(SeqCst));
    while !RACE_STOP.load(SeqCst) {
        RACE_CALLS.fetch_add(1, SeqCst);
        match sys::task_space(src, dst) {
            Ok(()) => {
                RACE_GOT.fetch_add(1, SeqCst);
                match sys::cap_identify(dst) {
                    Ok([ty, rights, _]) if ty == ObjType::AddressSpace as u64 && rights & !Rights::READ.0 == 0 => {}
                    Ok([_, rights, _]) => {
                        RACE_WIDER.fetch_add(1, SeqCst);
                        RACE_WIDER_RIGHTS.fetch_or(rights, SeqCst);
                    }
                    Err(_) => {
                        RACE_ODD.fetch_add(1, SeqCst);
                    }
                }
                let _ = sys::cap_delete(dst);
            }
            // The slot held nothing, or a frame, at that moment.
            Err(Error::EmptySlot) | Err(Error::WrongType) => {}
            Err(_) => {
                RACE_ODD.fetch_add(1, SeqCst);
            }
        }
    }
}

/// Spins for 0 to 255 rounds (from the time-stamp counter's low bits).
fn dwell() {
    for _ in 0..(rl4_user::rdtsc() >> 4) & 0xff {
        core::hint::spin_loop();
    }
}

/// Issue 17: `TaskAddressSpace` looked its slot up twice, and gave the new capability the
/// rights of whatever the slot held at the second look. A reader turns a read-only capability
/// to a victim task into address-space capabilities on one CPU while this thread, on another,
/// keeps swapping the slot's content (delete, allocate a frame into it, delete, put the
/// read-only task capability back): no address-space capability may ever have more than
/// `READ`.
fn test_task_space_race() {
    const NAME: &str = "snapshot-task-address-space-race";
    if cpus() < 2 {
        return crate::tests::skip(NAME, "one CPU");
    }
    let (victim, src, dst) = (slot(), slot(), slot());
    let made = sys::task_create(MEMORY, victim).and_then(|_| sys::cap_copy(victim, TASK, src, Rights::READ));
    if let Err(e) = made {
        for s in [victim, src, dst] {
            release(s);
        }
        return report(NAME, false, format_args!("set-up: {e}"));
    }
    RACE_SRC.store(src, SeqCst);
    RACE_DST.store(dst, SeqCst);
    RACE_STOP.store(false, SeqCst);
    let reader = spawn(race_reader, 0, ROOT_PRIO, 1);
    // At most 40,000 rounds or 3 seconds, whichever ends first (on the kernel before the fix,
    // 200,000 rounds in about 20 s gave 37 capabilities with every right).
    let end = rl4_user::rdtsc() + tsc_hz() * 3;
    let (mut rounds, mut swap_errors) = (0u64, 0u64);
    while rounds < 40_000 && rl4_user::rdtsc() < end {
        rounds += 1;
        // The slot holds the task capability, then a frame, each for a short while of varying
        // length (so that a reader held up between two looks at the slot finds either).
        dwell();
        let r = sys::cap_delete(src).and_then(|_| sys::frame_alloc(MEMORY, src));
        dwell();
        let r = r.and_then(|_| sys::cap_delete(src)).and_then(|_| sys::cap_copy(victim, TASK, src, Rights::READ));
        if r.is_err() {
            swap_errors += 1;
            let _ = sys::cap_delete(src);
            let _ = sys::cap_copy(victim, TASK, src, Rights::READ);
        }
    }
    RACE_STOP.store(true, SeqCst);
    let stopped = wait_ms(2000, || matches!(state(reader), Some(ThreadState::Dead)));
    release(reader);
    let _ = sys::task_kill(victim);
    for s in [victim, src, dst] {
        release(s);
    }
    let (calls, got, wider, odd) =
        (RACE_CALLS.load(SeqCst), RACE_GOT.load(SeqCst), RACE_WIDER.load(SeqCst), RACE_ODD.load(SeqCst));
    report(
        NAME,
        stopped && wider == 0 && odd == 0 && swap_errors == 0 && got > 0,
        format_args!(
            "{rounds} swaps on cpu 0 ({swap_errors} failed), {calls} TaskAddressSpace calls on cpu 1 from a READ-only task \
             capability, {got} succeeded, {wider} with more than READ (rights {:#x}), {odd} other failures",
            RACE_WIDER_RIGHTS.load(SeqCst)
        ),
    );
}

pub fn run(_bi: &BootInfo) {
    test_task_space_race();
}
