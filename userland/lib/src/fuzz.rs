//! What the fuzzer (the `worker` program's `FUZZ` command, `userland/worker/src/fuzz.rs`) and
//! the root task that runs it (`userland/root/src/fuzz.rs`) agree on: the counters page, the
//! slots a fuzzer task starts with, and where a fuzzer maps its memory.

/// The counters page, mapped writable in the fuzzer task (and in the root task, which reads it).
pub const PAGE: u64 = crate::worker::FUZZ_PAGE;

/// Words of the counters page. Every fuzzing thread of the task adds to them atomically.
pub mod word {
    /// System calls made by the fuzzing threads.
    pub const CALLS: usize = 0;
    /// `RESULTS + e`: calls that returned error code `e` (0: success; 31: any code above 30).
    pub const RESULTS: usize = 1;
    /// System calls made by helper threads (the short loops of `ThreadCreate`d helpers).
    pub const HELPER_CALLS: usize = 40;
    /// Helper threads started (`ThreadResume` of a helper this task made, in any task).
    pub const HELPERS_STARTED: usize = 41;
    /// IPC calls made with the timeout `FOREVER`.
    pub const FOREVER_CALLS: usize = 42;
    /// Messages longer than the registers (words in the IPC buffer) sent with success.
    pub const LONG_SENT: usize = 43;
    /// Messages longer than the registers received.
    pub const LONG_RECEIVED: usize = 44;
    /// Capabilities received through IPC.
    pub const CAPS_RECEIVED: usize = 45;
    /// Fuzzing threads started besides the first.
    pub const THREADS_STARTED: usize = 46;
    /// Faults taken on purpose.
    pub const FAULTS_TAKEN: usize = 47;
    /// Deep object graphs (`userland/worker/src/fuzz/deep.rs`). Chains of tasks, each holding
    /// the next one's capability: chains built, tasks linked in all, the deepest (a maximum).
    pub const DEEP_TASK_CHAINS: usize = 48;
    pub const DEEP_TASK_LINKS: usize = 49;
    pub const DEEP_TASK_MAX: usize = 50;
    /// Chains of endpoints, each held only by the capability in flight of a sender blocked on
    /// the one before: chains built, endpoints linked in all, the deepest (a maximum).
    pub const DEEP_EP_CHAINS: usize = 51;
    pub const DEEP_EP_LINKS: usize = 52;
    pub const DEEP_EP_MAX: usize = 53;
    /// Derivation chains (a badge minted from a new endpoint or notification, then a copy of
    /// the copy of the copy...): chains built, capabilities derived in all, the deepest.
    pub const DEEP_DERIV_CHAINS: usize = 54;
    pub const DEEP_DERIV_LINKS: usize = 55;
    pub const DEEP_DERIV_MAX: usize = 56;
    /// Heads of deep structures deleted (`CapDelete`, or `TaskKill` of a chain's first task)
    /// by their builder; roots revoked by it (`CapRevoke`), and the capabilities those
    /// revocations deleted.
    pub const DEEP_HEADS_DELETED: usize = 57;
    pub const DEEP_ROOTS_REVOKED: usize = 58;
    pub const DEEP_REVOKED_CAPS: usize = 59;
    /// Calls other fuzzing threads of the task made on the slots of a deep structure (its
    /// head, or the builder's own slots) while it stood or was being built, and those that
    /// succeeded.
    pub const DEEP_RACES: usize = 60;
    pub const DEEP_RACES_OK: usize = 61;
    /// The longest call that deleted, killed or revoked a deep structure's head, in TSC
    /// cycles (a maximum): the teardown runs before the call returns.
    pub const DEEP_LONGEST: usize = 62;
    /// Structures left standing by their builder (for the other threads, the next build of
    /// their kind or the end of the task to take down).
    pub const DEEP_LEFT: usize = 63;
    /// The words above that hold a maximum (the root task takes the largest, not the sum).
    pub const MAXIMA: [usize; 5] = [DEEP_TASK_MAX, DEEP_EP_MAX, DEEP_DERIV_MAX, DEEP_LONGEST, REGS_CHANGED_CALL];
    /// `PROGRESS + t`: calls made by fuzzing thread `t` (written by that thread only).
    pub const PROGRESS: usize = 64;
    /// `ACTIVE + t`: 1 while fuzzing thread `t` runs (it clears it before ending on purpose).
    pub const ACTIVE: usize = 80;
    /// `CURRENT + t`: the call fuzzing thread `t` is in or made last (its number, plus 256 if
    /// with the timeout `FOREVER`), for the watchdog's report.
    pub const CURRENT: usize = 96;
    /// Calls after which a register the ABI preserves had changed (`rbx`, `rbp`, `r12` to
    /// `r15`, `xmm5`; `r8` to `r10` after a call that is not IPC): a kernel bug.
    pub const REGS_CHANGED: usize = 103;
    /// One more than the largest number of such a call (0: none).
    pub const REGS_CHANGED_CALL: usize = 104;
    /// Copies and badged copies whose outcome was held to the ABI's rules (`CAPS_CHECKED`), and
    /// those that broke them (`CAPS_WRONG`: a kernel bug).
    pub const CAPS_CHECKED: usize = 105;
    pub const CAPS_WRONG: usize = 106;
    /// `CapDelete` and `CapRevoke` calls of the task's threads begun so far (raised before
    /// each) and ended (`REMOVALS_DONE`, raised after each).
    pub const CAP_REMOVALS: usize = 107;
    pub const REMOVALS_DONE: usize = 110;
    /// Copies and badged copies the check found made as they should be (each must be seen).
    pub const COPIES_OK: usize = 108;
    pub const MINTS_OK: usize = 109;
    /// `TIMEOUT + t`: the timeout of that call if it may block with a finite one (`Send`,
    /// `Call`, `Recv`, `ReplyRecv`, `Wait`), else `u64::MAX`: the watchdog's test for a lost
    /// wake-up.
    pub const TIMEOUT: usize = 112;
    /// `PER_CALL + n`: calls of system-call number `n` (63: any number above 62).
    pub const PER_CALL: usize = 128;
    /// `PER_CALL_OK + n`: those that succeeded.
    pub const PER_CALL_OK: usize = 192;
    /// `CROSS_CALLS + n`: calls of number `n` aimed at another fuzzer's task or thread.
    pub const CROSS_CALLS: usize = 256;
    /// `CROSS_OK + n`: those that succeeded.
    pub const CROSS_OK: usize = 320;
    /// `FIRST_CHECK + n`: calls of number `n` that stopped at the first slot check
    /// (`SlotOutOfRange` or `EmptySlot`).
    pub const FIRST_CHECK: usize = 384;
    /// Configuration, written by the root task before the fuzzer starts: flags (`FLAG_*`).
    pub const CFG_FLAGS: usize = 448;
    /// Fuzzing threads per task (1..=`MAX_THREADS`).
    pub const CFG_THREADS: usize = 449;
    /// CPUs online.
    pub const CFG_CPUS: usize = 450;
    /// The fuzzer's index (0..16).
    pub const CFG_INDEX: usize = 451;
    /// Bit `s - slot::PEERS` set: the root task put a capability to another fuzzer's task
    /// (`PEER_TASKS`) or first thread (`PEER_THREADS`) into slot `s` (the fuzzer takes the bits
    /// as it notices them).
    pub const PEER_TASKS: usize = 452;
    pub const PEER_THREADS: usize = 453;
    /// Set by the root task before it ends a fuzzer without `FLAG_CROSS`: every fuzzing thread
    /// parks (sets `ACTIVE + t` to 2 and suspends itself) and every helper ends, so that the
    /// task is ended with none of its threads in the middle of a call.
    pub const STOP: usize = 454;
    /// `CYCLES + n` (n < [`CYCLE_CALLS`]): TSC cycles fuzzing threads spent in calls of number
    /// `n`, waits included.
    pub const CYCLES: usize = 456;
    /// System-call numbers whose time is kept (`CYCLES ..` up to the end of the page).
    pub const CYCLE_CALLS: usize = WORDS - CYCLES;
    /// Words in the page.
    pub const WORDS: usize = 512;
}

/// Flag: the fuzzer holds capabilities to other fuzzers' tasks and threads and uses them, ends
/// its own task now and then, and is ended by the root task whatever its threads are doing.
/// Without it (`cross=0`) no task is ended while one of its threads may be in a call: the
/// kernel's races between ending a task and a call of one of its threads (issue 15) stay out
/// of the run.
pub const FLAG_CROSS: u64 = 1;

/// The port range of the fuzzers' `IoPort` object (`slot::PORTS_AT_START`): base and count —
/// COM4's ports, which no device rl4's boots give QEMU answers (the fuzzers never touch them:
/// they open and close the range, and the kernel's consistency check holds every open range
/// against its task's table).
pub const PORTS: (u64, u64) = (0x2e8, 8);

/// The badge of the capability in [`slot::BADGED`].
pub const BADGE_AT_START: u64 = 0x5eed;

/// Most fuzzing threads in one fuzzer task.
pub const MAX_THREADS: usize = 7;

/// The slots a fuzzer task starts with.
pub mod slot {
    /// Its own task, address space and first thread (all rights).
    pub const TASK: u64 = 0;
    pub const SPACE: u64 = 1;
    pub const THREAD: u64 = 2;
    /// The memory budget (`ALLOCATE`).
    pub const MEMORY: u64 = 3;
    /// A machine capability without rights.
    pub const MACHINE: u64 = 4;
    /// Endpoints and notifications shared by every fuzzer (all rights).
    pub const SHARED: [u64; 5] = [5, 6, 7, 8, 9];
    pub const SHARED_EPS: [u64; 3] = [5, 7, 9];
    pub const SHARED_NOTES: [u64; 2] = [6, 8];
    /// Fuzzing thread `t` (≥ 1) lives in slot `THREADS + t - 1`.
    pub const THREADS: u64 = 10;
    /// The objects a fuzzer makes go to slots `OWN .. PEERS`.
    pub const OWN: u64 = 16;
    /// The root task puts an `IoPort` capability into slot `OWN` before the fuzzer starts (all
    /// rights; one object for every fuzzer, ports [`super::PORTS`]), which then moves about
    /// like any capability: opened, closed, copied, deleted, revoked.
    pub const PORTS_AT_START: u64 = OWN;
    /// On a machine with an I/O APIC and COM2, the root task puts a capability to COM2's
    /// interrupt line (`Irq`, all rights; one object for every fuzzer) into slot `OWN + 1`:
    /// the fuzzers bind it to their notifications, acknowledge and unbind it, copy, delete and
    /// revoke it, while the root task makes COM2 (in loopback mode) raise the interrupt about
    /// every 10 ms (at each timer tick).
    pub const IRQ_AT_START: u64 = OWN + 1;
    /// The root task puts capabilities to other fuzzers' tasks and first threads (rights
    /// `READ | WRITE`, no `GRANT`) into free slots of `PEERS .. PEERS_END`.
    pub const PEERS: u64 = 64;
    pub const PEERS_END: u64 = 120;
    /// Fuzzing thread `t`'s private slot is `PRIVATE + t`: only that thread's own forced calls
    /// write it (no other call's destination may be it: `guard_destinations`; a deletion or a
    /// revocation may empty it, which the task's counts of such calls, `word::CAP_REMOVALS`
    /// and `word::REMOVALS_DONE`,
    /// shows), so that what it finds there after a copy is what the copy made.
    pub const PRIVATE: u64 = 120;
    /// The root task puts a badged copy of the first shared endpoint here (all rights, badge
    /// [`super::BADGE_AT_START`]); a call may empty it, none fills it again.
    pub const BADGED: u64 = 127;
    /// Slots `INBOX ..` (to the table's end) take most of the capabilities other fuzzers copy
    /// in (the rest land in `OWN .. PEERS`); the deep builders' own slots end below it.
    pub const INBOX: u64 = 224;
}

/// Where a fuzzer maps its memory.
pub mod va {
    /// The first thread's stack top (4 pages below it, mapped by the root task).
    pub const STACK_TOP: u64 = 0x0000_7000_0000_0000;
    /// Fuzzing thread `t`'s stack: 4 pages below `STACKS + (t + 1) * 0x10000`.
    pub const STACKS: u64 = 0x0000_6b00_0000_0000;
    /// Fuzzing thread `t`'s IPC buffer: `IPC_BUFFERS + t * 4096`.
    pub const IPC_BUFFERS: u64 = 0x0000_6c00_0000_0000;
    /// Pages the fuzzer maps and unmaps at random: `WINDOW .. WINDOW + WINDOW_PAGES * 4096`.
    pub const WINDOW: u64 = 0x0000_6d00_0000_0000;
    pub const WINDOW_PAGES: u64 = 64;
}
