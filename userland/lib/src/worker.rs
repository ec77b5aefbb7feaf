//! The commands of the `worker` test program (`userland/worker`), shared with the root task
//! that starts it: its first argument is one of these, the second the operand.

/// Read the word at the operand address and report it.
pub const READ: u64 = 1;
/// Write a word to the operand address.
pub const WRITE: u64 = 2;
/// Add one to the word at the operand address, forever.
pub const SPIN: u64 = 3;
/// Print a line and end the thread.
pub const HELLO: u64 = 4;
/// End the whole task.
pub const EXIT_TASK: u64 = 5;
/// Execute `hlt` (general protection fault in user mode).
pub const PRIVILEGED: u64 = 6;
/// Execute `ud2`.
pub const INVALID_OPCODE: u64 = 7;
/// Divide by zero.
pub const DIVIDE_ZERO: u64 = 8;
/// Serve the endpoint in [`EP_SLOT`]: each word `w[i]` comes back as `w[i] ^ ECHO_KEY ^ i`,
/// the label plus one; the operand is the thread's IPC buffer address.
pub const ECHO: u64 = 9;
/// Call the endpoint in [`EP_SLOT`] once and report the outcome.
pub const CALL: u64 = 10;
/// Serve the endpoint in [`EP_SLOT`], replying with two time stamps: right after the message
/// arrived and right before the reply leaves.
pub const STAMP: u64 = 11;
/// Serve the endpoint in [`EP_SLOT`], replying with the message received, unchanged: the
/// least a server's loop can do (sel4bench's server is this loop), for `same-core-pong`.
pub const PONG: u64 = 62;

/// The worker's slot for the endpoint it serves or calls.
pub const EP_SLOT: u64 = 5;
pub const ECHO_KEY: u64 = 0x5a5a_5a5a_5a5a_5a5a;
/// Fuzz (operand: the seed): the fuzzer's first thread (`userland/worker/src/fuzz.rs`). Its
/// configuration and counters are in the page at [`FUZZ_PAGE`], laid out as
/// [`crate::fuzz::word`] says (word 0 = calls made, word 1 + e = calls that returned error code
/// `e`, e < 32).
pub const FUZZ: u64 = 12;
pub const FUZZ_PAGE: u64 = 0x0000_6900_0000_0000;
/// Jump into the (non-executable) data page at the operand address.
pub const EXEC_DATA: u64 = 13;
/// Recurse until the stack runs into the unmapped page below it.
pub const STACK_OVERFLOW: u64 = 14;
/// Execute `cli`.
pub const CLI: u64 = 15;
/// Write CR3.
pub const WRITE_CR3: u64 = 16;
/// Write an MSR (`wrmsr`).
pub const WRMSR: u64 = 17;
/// Execute `int3`.
pub const INT3: u64 = 18;
/// Execute `int 0x80`.
pub const INT80: u64 = 19;
/// Execute `sysret` in user mode.
pub const SYSRET: u64 = 20;

/// Try, from a task of its own, to reach what it was given no capability for (see
/// [`ISOLATION_CASES`]); the operand is the number of CPUs online. Results go into the page at
/// [`FUZZ_PAGE`]: word 1 + i is case i's outcome (0 = success, else the error code), word 0 the
/// number of cases done, written last.
pub const ISOLATION: u64 = 21;

/// A victim thread of the storm tests: loop on one kind of system call forever, counting each
/// outcome in the shared page (see [`crate::storm`]; the operand says which record, kind and
/// timeout).
pub const STORM: u64 = 22;

/// Print, in one `ConsoleWrite`, lines that imitate the kernel's and the root task's (a test
/// line, the suite's summary), then end the thread: the kernel must mark each line as this
/// task's, and the test scripts must not count them (see [`FORGED`]).
pub const FORGE: u64 = 23;
/// What [`FORGE`] prints: every line but the first pretends to come from someone else.
pub const FORGED: &str = "forged lines follow\ntest forged-by-worker ... ok\n[cpu0] test forged-by-worker ... ok\nroot: 999 passed, 0 failed\n[cpu0 task 1] test forged-by-worker ... ok\ncr:\r[cpu0] test forged-by-worker ... ok\n";

/// A thread of the FPU/SIMD isolation test ([`crate::fpu::thread`]): the operand is its role and
/// number, the endpoint is in [`EP_SLOT`], the shared page at [`crate::fpu::PAGE`].
pub const FPU: u64 = 40;

/// The capabilities the root task gives the [`ISOLATION`] worker, by slot.
pub mod iso {
    /// Its own task (all rights), address space (all rights) and thread (all rights).
    pub const TASK: u64 = 0;
    pub const SPACE: u64 = 1;
    pub const THREAD: u64 = 2;
    /// The memory budget.
    pub const MEMORY: u64 = 3;
    /// The machine, with the console right only.
    pub const MACHINE: u64 = 4;
    /// An endpoint, send right only (a server of the root task's listens on it).
    pub const EP: u64 = super::EP_SLOT;
    /// A frame, read right only (no write, no grant).
    pub const FRAME_RO: u64 = 6;
    /// Another task, write right only (no read, no grant).
    pub const VICTIM: u64 = 7;
    /// The thread's priority, which is also its maximum controlled priority.
    pub const PRIO: u64 = 40;
    /// Where it may map the frame.
    pub const SCRATCH_VA: u64 = 0x0000_6b00_0000_0000;
    /// What a widened copy must not gain: outcome code when it did.
    pub const RIGHTS_GREW: u64 = 99;
}

/// The [`ISOLATION`] cases in the order they run: name, and the error each must return
/// (`None`: it must succeed, and change nothing it should not).
pub const ISOLATION_CASES: &[(&str, Option<crate::abi::Error>)] = {
    use crate::abi::Error::*;
    &[
        ("use-empty-slot", Some(EmptySlot)),
        ("use-slot-past-table", Some(SlotOutOfRange)),
        ("forge-slot-number", Some(SlotOutOfRange)),
        ("use-frame-as-task", Some(WrongType)),
        ("shutdown-without-right", Some(MissingRight)),
        ("kernel-check-without-right", Some(MissingRight)),
        ("measure-without-right", Some(MissingRight)),
        ("copy-to-other-task-without-grant", Some(MissingRight)),
        ("read-other-task-space-without-right", Some(MissingRight)),
        ("widen-rights-by-copy", None),
        ("map-widened-copy-writable", Some(MissingRight)),
        ("map-into-kernel-half", Some(InvalidAddress)),
        ("receive-on-send-only-endpoint", Some(MissingRight)),
        ("reply-to-another-threads-caller", Some(NoCaller)),
        ("reply-recv-on-send-only-endpoint", Some(MissingRight)),
        ("delete-endpoint-cap", None),
        ("send-through-deleted-endpoint-cap", Some(EmptySlot)),
        ("thread-on-cpu-that-does-not-exist", Some(InvalidCpu)),
        ("thread-on-cpu-just-past-the-last", Some(InvalidCpu)),
        ("move-to-cpu-that-does-not-exist", Some(InvalidCpu)),
        ("raise-own-priority-past-limit", Some(InvalidPriority)),
        ("create-thread-above-limit", Some(InvalidPriority)),
        ("raise-own-priority-to-255", Some(InvalidPriority)),
        ("kill-task-without-cap", Some(EmptySlot)),
    ]
};

/// `out` the byte `operand >> 16` to port `operand & 0xffff` (faults unless the task opened
/// it), then print `worker: out done`.
pub const PORT_OUT: u64 = 60;
/// A driver of COM2's loopback (slots [`IRQ_SLOT`], [`PORTS_SLOT`], [`NTF_SLOT`]): open the
/// ports, bind the interrupt to the notification on this CPU, send a byte, wait for the
/// interrupt, write 1 to word 0 of the page at the operand address, then spin forever without
/// `IrqAck` (a driver killed mid-interrupt).
pub const IRQ_DRIVER: u64 = 61;
/// Open the range of [`PORTS_SLOT`], print `worker: ports open`, then `out` the bytes
/// `operand >> 16`, one more, one more, … (wrapping) to port `operand & 0xffff` for ever (it
/// faults once the range closes).
pub const PORT_LOOP: u64 = 63;
/// Open and close the range of [`PORTS_SLOT`] as many times as word 0 of the page at the
/// operand address says, then write the number of pairs that succeeded into word 1.
pub const PORT_FLIP: u64 = 64;
/// Make a task that outlives every capability to it (slots [`ORPHAN_MEM_SLOT`],
/// [`ORPHAN_FRAME_SLOT`]: a memory budget and a frame holding `jmp $`): `TaskCreate`, map the
/// frame at 0x40_0000 in the new task, start a thread there (priority 1, on CPU `operand >>
/// 48`), delete every capability to the task and the thread, then write 1 to word 0 of the
/// page at the operand's low 48 bits (2 if a step failed) and end this thread. Only the end of
/// this task can end the spinning thread.
pub const ORPHAN: u64 = 65;
/// Make a task with the budget in [`ORPHAN_MEM_SLOT`] (`TaskCreate`) and send the capability to
/// it, with every right, over [`EP_SLOT`] (a `Send` carrying it, label 1), then end this thread:
/// the receiver then holds a task this task made. A refused `TaskCreate` sends label 2 with the
/// error code in word 0 instead.
pub const CHILD_GIVE: u64 = 66;
pub const ORPHAN_MEM_SLOT: u64 = 9;
/// Check the SDK's all-or-nothing mapping ([`crate::thread::map_fresh`]) when a call arrives on
/// [`EP_SLOT`] (the task holds the budget and its own space in the program slots
/// [`crate::env::MEMORY`] and [`crate::env::SPACE`]): a page is mapped at [`SDK_VA`] + 3 pages,
/// then five pages at [`SDK_VA`], which must fail at the fourth with `AlreadyMapped` and leave
/// the first three unmapped and the budget as it was. The reply: word 0 the error code
/// `map_fresh` returned (0: none), word 1 whether the budget was back, word 2 whether the first
/// three pages were unmapped.
pub const SDK_MAP_FRESH: u64 = 67;
/// Check the SDK heap's lock across priorities when a call arrives on [`EP_SLOT`] (the task holds
/// its own task, space and the budget in the program slots): a thread of priority `operand`
/// (below this one's) on this CPU allocates and frees without a pause while this thread, 40
/// times, sleeps until the next tick and then allocates. With a spin lock this thread spun for
/// ever as soon as it woke while the other held the lock. The reply: word 0 the rounds done,
/// word 1 the other thread's allocations, word 2 the waits in the kernel for the lock
/// (`heap::waits`); all `u64::MAX` if the set-up failed.
pub const SDK_HEAP_PRIO: u64 = 68;
/// Check [`crate::thread::Spawned::join`] when a call arrives on [`EP_SLOT`] (the task holds its
/// own task, space and the budget in the program slots): spawn a thread of priority `operand`
/// on this CPU and join it, once (the budget left then is the reference: page tables and
/// `nap`'s notification stay), then 20 times more. The reply: word 0 the threads that ran,
/// word 1 the joins that succeeded, word 2 the budget left after the first join, word 3 after
/// the last (all `u64::MAX` if a step failed).
pub const SDK_JOIN: u64 = 69;
/// Spin until word 0 of the page at `operand` is not 0, then `TaskExit` (several threads of one
/// task ending it at once, and with another task's `TaskKill`).
pub const EXIT_TASK_WHEN: u64 = 70;
/// Copy the capability in slot `operand` (the task's own capability in slot 0,
/// [`iso::TASK`]) to the next slot, that copy to the next, and so on until a copy is refused or
/// the table ends; then `Send` over [`EP_SLOT`] (label 1): word 0 the copies made, word 1 the
/// refused copy's error code (0: none), word 2 the slot of the last copy.
pub const CAP_CHAIN: u64 = 71;
/// Open the range of [`PORTS_SLOT`] and `Send` the outcome over [`EP_SLOT`] (label 1, word 0
/// the error code, 0 if it opened), then end this thread: the range stays open while the task
/// lives and its table holds the capability.
pub const PORT_HOLD: u64 = 72;
/// Check the rest of [`crate::thread::Spawned::join`]'s rules and `Msg::new`'s label bound
/// when a call arrives on [`EP_SLOT`] (set up as for [`SDK_JOIN`]; threads of priority
/// `operand` on this CPU). The reply, each word 1 if the step held: word 0, two batches of 70
/// threads (more than the 64 regions the SDK kept for reuse before the thirty-fourth session),
/// each spawned whole and then joined, all ran and were joined, and the second ran on the
/// first's regions (none above the first's highest); word 1, a thread that faults is not joined
/// but answered `InvalidState` at once (its capability then deleted); word 2, a thread that
/// makes `Msg::new` with label 2^48 panics (its join: `InvalidState`), and one with label
/// 2^48 - 1 ends and is joined; word 3, a join with a `FOREVER` poll of a thread that ends
/// after a short nap returns (before, it napped for ever).
pub const SDK_JOIN_MORE: u64 = 73;
/// Fuzz (operand: `t` ≥ 1): fuzzing thread `t` of a fuzzer task, made by the root task (which
/// keeps a capability to it, for its watchdog) once the first thread's start has begun; it
/// waits until the first thread has set the task's shadow up.
pub const FUZZ_THREAD: u64 = 74;
pub const SDK_VA: u64 = 0x0000_3000_0000_0000;
pub const ORPHAN_FRAME_SLOT: u64 = 10;
pub const IRQ_SLOT: u64 = 6;
pub const PORTS_SLOT: u64 = 7;
pub const NTF_SLOT: u64 = 8;
