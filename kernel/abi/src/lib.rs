//! The rl4 system-call ABI, the one definition the kernel and userland share.
//!
//! ## Calling convention
//!
//! `syscall` with the number ([`Sys`]) in `rax` and up to six arguments in `rdi`, `rsi`, `rdx`,
//! `r10`, `r8`, `r9` (`rcx` and `r11` are clobbered by the instruction). On return `rax` holds
//! 0 or an [`Error`] code, and `rdi`, `rsi`, `rdx` hold up to three result words; an IPC call
//! that receives a message also writes its words 1 to 3 into `r10`, `r8`, `r9` (`docs/syscalls.md`,
//! "IPC registers"). Every other register is preserved. Capabilities are named by slot index in the caller's capability table.
//!
//! See `docs/syscalls.md` for each call's arguments, required rights and errors.
#![no_std]
#![forbid(unsafe_code)]

use core::fmt;

macro_rules! numbered {
    ($(#[$m:meta])* pub enum $name:ident : $t:ty { $($(#[$vm:meta])* $v:ident = $n:expr,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr($t)]
        pub enum $name { $($(#[$vm])* $v = $n,)* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v,)*];
            pub const fn name(self) -> &'static str {
                match self { $($name::$v => stringify!($v),)* }
            }
            /// The value numbered `n`, if any (usable in constants).
            #[inline(always)]
            pub const fn from_number(n: $t) -> Option<Self> {
                match n { $($n => Some($name::$v),)* _ => None }
            }
        }
        impl TryFrom<$t> for $name {
            type Error = $t;
            // Inlined: the kernel's dispatcher decodes every system call number with it, and an
            // out-of-line call costs the null system call a call, a return and a spill.
            #[inline(always)]
            fn try_from(n: $t) -> Result<Self, $t> {
                match n { $($n => Ok($name::$v),)* other => Err(other) }
            }
        }
    };
}

numbered! {
    /// System-call numbers (`rax`).
    pub enum Sys: u64 {
        /// Does nothing; measures the entry and exit path.
        Null = 0,
        /// `(machine_slot, buf, len)`: write bytes to the kernel console.
        ConsoleWrite = 1,
        /// Give up the rest of the time slice.
        Yield = 2,
        /// `(src_slot, dst_task_slot, dst_slot, rights_mask)`: copy a capability, keeping only
        /// the rights in `rights_mask` (a copy never gains rights). `dst_task_slot` may name the
        /// caller's own task.
        CapCopy = 3,
        /// `(slot)`: delete a capability; the object dies with its last capability.
        CapDelete = 4,
        /// `(slot)` → `(type, rights, badge)`.
        CapIdentify = 5,
        /// `(memory_slot, dst_slot)`: a new task with an empty capability table and a new,
        /// empty address space; returns nothing, the task capability lands in `dst_slot`.
        TaskCreate = 6,
        /// `(task_slot, dst_slot)`: a capability to the task's address space.
        TaskAddressSpace = 7,
        /// `(memory_slot, dst_slot)`: allocate one zeroed 4 KiB frame.
        FrameAlloc = 8,
        /// `(space_slot, frame_slot, vaddr, rights)`: map a frame (rights ⊆ the frame cap's
        /// read/write/execute rights; the space cap needs `WRITE`).
        Map = 9,
        /// `(space_slot, vaddr)`: remove a mapping.
        Unmap = 10,
        /// `(memory_slot, task_slot, entry, stack, prio_cpu, dst_slot)`: a new thread of the task,
        /// inactive (not started: `ThreadResume` starts it). `prio_cpu` = priority (bits 0..31) | CPU index << 32.
        ThreadCreate = 11,
        /// `(thread_slot)`: make a new or suspended thread runnable.
        ThreadResume = 12,
        /// `(thread_slot)`: stop a thread until it is resumed.
        ThreadSuspend = 13,
        /// `(thread_slot, priority)`.
        ThreadSetPriority = 14,
        /// `(thread_slot, cpu)`: move the thread to another CPU.
        ThreadSetAffinity = 15,
        /// `(thread_slot, arg0, arg1)`: set the argument registers (`rdi`, `rsi`) a new thread
        /// starts with.
        ThreadSetArg = 16,
        /// `(thread_slot)` → `(state, cpu, priority)`; state per [`ThreadState`].
        ThreadInfo = 17,
        /// End the calling thread.
        ThreadExit = 18,
        /// End the calling task: all its threads stop, its capabilities are deleted.
        TaskExit = 19,
        /// → `(cpu index, number of CPUs online)`.
        CpuInfo = 20,
        /// `(machine_slot, code)`: stop the machine (code 0 = success). Needs `SHUTDOWN`.
        Shutdown = 21,
        /// `(memory_slot)` → `(bytes left, bytes in all, bytes the budget has not charged)`. The
        /// first is what can really be had: the budget's uncharged bytes, but no more than the
        /// free memory a user can still take (the kernel's own memory may hold some of what the
        /// budget would allow, docs/memory.md).
        MemoryInfo = 22,
        /// `(machine_slot, which)` → `(value)`: kernel counters for tests and benchmarks.
        Stat = 23,
        /// `(memory_slot, dst_slot)`: a new endpoint.
        EndpointCreate = 24,
        /// `(memory_slot, dst_slot)`: a new notification (a word of signal bits).
        NotificationCreate = 25,
        /// IPC (see [`ipc`]): send a message, blocking up to the timeout for a receiver.
        Send = 26,
        /// IPC: receive a message, blocking up to the timeout for a sender.
        Recv = 27,
        /// IPC: send, then wait for the reply through a one-shot reply right the receiver gets.
        Call = 28,
        /// IPC: reply to the caller this thread last received from (never blocks).
        Reply = 29,
        /// IPC: reply, then receive on the endpoint (the server loop).
        ReplyRecv = 30,
        /// IPC: send only if a receiver waits (`Timeout` otherwise).
        NbSend = 31,
        /// IPC: receive only if a sender waits (`Timeout` otherwise).
        NbRecv = 32,
        /// `(notification_slot, bits)`: OR into the word, waking a waiter, the capability's badge if
        /// it has one (`bits` is then ignored), else `bits`.
        Signal = 33,
        /// `(notification_slot)`, timeout in `r12` → `(bits)`: wait for a non-zero word, take it.
        Wait = 34,
        /// `(notification_slot)` → `(bits)`: take the word without waiting (0 if none).
        Poll = 35,
        /// `(thread_slot, vaddr)`: the thread's IPC buffer page (mapped writable in its space),
        /// which holds message words 4 and up.
        SetIpcBuffer = 36,
        /// `(src_slot, dst_task_slot, dst_slot, rights_mask, badge)`: like `CapCopy`, and sets
        /// the badge of an endpoint or notification capability that has none yet.
        CapMint = 37,
        /// `(machine_slot, which, arg)` → `(mean, min, max)` cycles: a hardware floor measured
        /// in the kernel ([`measure`]). Needs `SHUTDOWN`; at most 10,000 CR3 pairs or 1,000 IPI
        /// round trips per call.
        Measure = 38,
        /// `(task_slot)`: end a task as `TaskExit` would (needs `WRITE`): its threads stop and
        /// its capability table is emptied, which breaks the reference cycles a table holding
        /// capabilities to its own task or threads makes.
        TaskKill = 39,
        /// `(machine_slot)` → `(violations, objects checked, frames checked)`: the kernel's
        /// consistency check. It stops every other CPU, then checks every object's reference
        /// count against the references found, every thread's state against the queues it is
        /// in, every budget against what is charged to it, every address space's page tables
        /// against its mappings, and that every physical frame is either free or owned exactly
        /// once; each violation is printed. Needs `SHUTDOWN`; `InvalidState` while another
        /// check runs.
        KernelCheck = 40,
        /// `(slot)` → `(count)`: delete every capability derived from the one in `slot` — copied,
        /// minted or received through IPC from it, transitively — in every task, and return how
        /// many were deleted; the capability in `slot` stays. A capability in flight (carried by
        /// a blocked sender) that was read from one of those deleted is not delivered; one read
        /// from the capability in `slot` itself, which stays, still is, as a new child.
        /// Needs no right: what a task derived from its own capability is its to take back.
        CapRevoke = 41,
        /// `(thread_slot, endpoint_slot)`: the thread's fault handler (see [`fault`]). The
        /// thread capability needs `WRITE`, the endpoint capability `SEND` (as for `Call`); its
        /// badge is what the handler receives with each fault of this thread.
        /// `endpoint_slot` = [`ipc::NO_SLOT`] removes the handler. The kernel keeps a weak
        /// reference: the handler is gone once the endpoint dies. The binding names the two
        /// slots: it takes a fault only while the caller's task still holds that endpoint
        /// capability there (and, for a thread of another task, that thread capability).
        ThreadSetFaultHandler = 44,
        /// `(devices_slot, irq, dst_slot)`: an `Irq` capability for legacy ISA interrupt
        /// `irq` (0..15), routed through the I/O APIC the MADT describes. One live `Irq`
        /// object per line: `Busy` if the line is handed out already or the kernel uses it.
        IrqGet = 47,
        /// `(irq_slot, notification_slot, bits, cpu)`: deliver the line's interrupts as `bits`
        /// signalled on the notification (needs `SEND` on it), on CPU `cpu`
        /// ([`IRQ_CPU_CALLER`]: the caller's CPU). Unmasks the line; rebinding replaces the
        /// old binding.
        IrqBind = 48,
        /// `(irq_slot)`: the driver has served the interrupt: unmask the line the kernel masked
        /// when it delivered it. `InvalidState` if the line is not bound, if the slot the binder
        /// named no longer holds the notification capability it bound with or the slot it bound
        /// through no longer holds the line's (the line is then unbound), or if the line was
        /// bound again meanwhile (left as the new binding has it).
        IrqAck = 49,
        /// `(irq_slot)`: mask the line and forget its notification.
        IrqUnbind = 50,
        /// `(devices_slot, base, count, dst_slot)`: an `IoPort` capability for ports
        /// `base .. base + count` (`Busy` if that overlaps a port the kernel uses;
        /// `InvalidArgument` for a count of 0 or a range past port 0xffff).
        IoPortGet = 51,
        /// `(ioport_slot)`: open the capability's ports to the calling task (the I/O
        /// permission bitmap); at most [`IO_RANGES`] ranges per task, and at most
        /// [`PORT_OPENERS`] tasks with a range open through one object (`Busy` past either).
        IoPortOpen = 52,
        /// `(ioport_slot)`: close the capability's ports to the calling task again.
        IoPortClose = 53,
        /// `(devices_slot, phys_addr, dst_slot)`: a `Frame` capability (rights read, write,
        /// grant; never execute) for the 4 KiB device page at `phys_addr`, a page of a device
        /// range the firmware's tables describe (the HPET's registers) that is not RAM and not
        /// a device the kernel uses. `Misaligned` if not page-aligned, `InvalidArgument` for any
        /// other page, `Busy` while a frame object for the page lives. Charged
        /// [`cost::DEVICE_FRAME`] to the caller's own budget; mapped uncached, never executable;
        /// never an IPC buffer.
        DeviceMemGet = 54,
        /// `(endpoint_slot, badge)` → `(count)`: ends every send queued on the endpoint that
        /// carries `badge` (not 0) — sends and calls get `PartnerGone`, a queued fault stops
        /// its thread as if it had no handler — and returns how many. Needs `RECEIVE` (whoever
        /// may take those messages may refuse them). For a server retiring a client's badge:
        /// `CapRevoke` takes the capabilities back, this the messages already queued with it.
        EndpointCancelBadged = 55,
    }
}

numbered! {
    /// Error codes (`rax` after a failed call; 0 is success).
    pub enum Error: u64 {
        /// The system-call number is not one of [`Sys`].
        InvalidSyscall = 1,
        /// The slot index is beyond the capability table.
        SlotOutOfRange = 2,
        /// The slot holds no capability.
        EmptySlot = 3,
        /// The capability names an object of another type.
        WrongType = 4,
        /// The capability lacks a right the call needs.
        MissingRight = 5,
        /// A user address is in the kernel half, non-canonical or otherwise not allowed.
        InvalidAddress = 6,
        /// An address or size is not aligned as required.
        Misaligned = 7,
        /// The virtual page is already mapped.
        AlreadyMapped = 8,
        /// The virtual page is not mapped.
        NotMapped = 9,
        /// No such CPU (or it is not online).
        InvalidCpu = 10,
        /// Priority out of range.
        InvalidPriority = 11,
        /// The memory capability's budget or the kernel's memory is exhausted.
        OutOfMemory = 12,
        /// Any other argument out of range (length, rights bits, flags).
        InvalidArgument = 13,
        /// The destination slot is not empty.
        SlotOccupied = 14,
        /// The object is not in a state that allows the operation.
        InvalidState = 15,
        /// A user buffer could not be read or written (unmapped or not accessible).
        Fault = 16,
        /// No partner came within the timeout (0 = at once, for the non-blocking calls).
        Timeout = 17,
        /// `Reply` with no caller waiting for this thread's reply.
        NoCaller = 18,
        /// The partner died, the reply right was dropped, or the endpoint was deleted while
        /// this thread waited.
        PartnerGone = 19,
        /// The thread was suspended while it waited; the call did not complete.
        Interrupted = 20,
        /// A fault handler's reply asked for register values the kernel cannot resume with
        /// (a non-canonical or kernel address, unknown bits): the thread is stopped instead.
        BadFaultReply = 23,
        /// The interrupt line or port range is in use (by the kernel or another capability),
        /// or the task has no room for another open port range; a device page's frame object
        /// lives; the source of a copy, mint or `TaskAddressSpace` (or a capability it derives
        /// from) is being revoked.
        Busy = 25,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

numbered! {
    /// Kernel object types.
    pub enum ObjType: u64 {
        Task = 1,
        AddressSpace = 2,
        Thread = 3,
        Frame = 4,
        Memory = 5,
        Machine = 6,
        Endpoint = 7,
        Notification = 8,
        /// The right to make `Irq` and `IoPort` capabilities (the root task's slot 5).
        Devices = 9,
        /// One interrupt line.
        Irq = 10,
        /// A range of I/O ports.
        IoPort = 11,
    }
}

numbered! {
    /// Thread states reported by [`Sys::ThreadInfo`].
    pub enum ThreadState: u64 {
        /// Created, never resumed.
        Inactive = 0,
        Runnable = 1,
        Running = 2,
        Suspended = 3,
        /// Stopped by a fault it took.
        Faulted = 4,
        Dead = 5,
        /// Waiting in `Send`/`Call` for a receiver.
        BlockedSend = 6,
        /// Waiting in `Recv`/`ReplyRecv` for a sender.
        BlockedRecv = 7,
        /// Waiting in `Call` for the reply.
        BlockedReply = 8,
        /// Waiting in `Wait` for a signal.
        BlockedNotify = 9,
        /// Its fault is with its fault handler (queued on the handler's endpoint, or received
        /// and waiting for the reply).
        BlockedFault = 10,
    }
}

/// Capability rights (a bit set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Rights(pub u64);

impl Rights {
    pub const NONE: Rights = Rights(0);
    /// Frames: map readable. Address spaces, tasks, threads: inspect. Machine: read the
    /// counters (`Stat`).
    pub const READ: Rights = Rights(1 << 0);
    /// Frames: map writable. Address spaces: map/unmap. Tasks, threads: control.
    pub const WRITE: Rights = Rights(1 << 1);
    /// Frames: map executable.
    pub const EXECUTE: Rights = Rights(1 << 2);
    /// May be copied to another task.
    pub const GRANT: Rights = Rights(1 << 3);
    /// Machine: write to the console.
    pub const CONSOLE: Rights = Rights(1 << 4);
    /// Machine: stop the machine.
    pub const SHUTDOWN: Rights = Rights(1 << 5);
    /// Memory: allocate frames and objects from it.
    pub const ALLOCATE: Rights = Rights(1 << 6);
    /// Endpoint: send, call. Notification: signal.
    pub const SEND: Rights = Rights(1 << 7);
    /// Endpoint: receive. Notification: wait, poll.
    pub const RECEIVE: Rights = Rights(1 << 8);
    pub const ALL: Rights = Rights((1 << 9) - 1);

    pub const fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn intersect(self, other: Rights) -> Rights {
        Rights(self.0 & other.0)
    }
    pub const fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }
    pub const fn is_valid(bits: u64) -> bool {
        bits & !Rights::ALL.0 == 0
    }
}

/// Highest thread priority (lowest is 0).
pub const MAX_PRIORITY: u64 = 255;
/// Size of every capability table.
pub const CAP_SLOTS: u64 = 256;
/// The longest chain of derivation: a capability derives from at most this many others (copies
/// of copies, across tables). `CapCopy`, `CapMint` and `TaskAddressSpace` answer `InvalidState`
/// for a copy of one that has this many already; a message carrying one is delivered without
/// it (its tag's `caps` 0).
pub const MOST_CAP_DEPTH: u64 = 256;
/// What the kernel may use of its heap beyond the heap shares of the live objects' charges and
/// its own at boot (`stat::HEAP_BOUND` includes it; `KernelCheck` compares the heap in use with
/// that bound). The fuzzer holds the heap in use at its end to its start plus this.
pub const HEAP_ALLOWANCE: u64 = 2 << 20;
/// Most bytes one `ConsoleWrite` takes.
pub const CONSOLE_WRITE_MAX: u64 = 4096;
/// First address above user space (user addresses are `0 .. USER_END`).
pub const USER_END: u64 = 0x0000_8000_0000_0000;
pub const PAGE_SIZE: u64 = 4096;

/// The root task's id: the kernel makes it first. Its console lines read `[cpuN task 1] ...`,
/// which is how the test scripts tell them from every other task's.
pub const ROOT_TASK_ID: u64 = 1;

/// Slots of the root task's initial capabilities.
pub mod root_slots {
    pub const TASK: u64 = 0;
    pub const SPACE: u64 = 1;
    pub const THREAD: u64 = 2;
    /// All free physical memory, as an allocation budget.
    pub const MEMORY: u64 = 3;
    /// Console and shutdown.
    pub const MACHINE: u64 = 4;
    /// Devices: makes `Irq` and `IoPort` capabilities (`IrqGet`, `IoPortGet`).
    pub const DEVICES: u64 = 5;
    /// First slot the root task may use freely.
    pub const FIRST_FREE: u64 = 8;
}

/// Counters for [`Sys::Stat`].
pub mod stat {
    /// Context switches on the calling CPU: times it made a thread its running one. A thread
    /// that left in a decision (its slice over, a `Yield`, or a higher priority queued) and was
    /// taken on again in the same decision, nothing else able to run in its place (stale queue
    /// entries only), is counted too: it was saved and loaded as any other (not telling it
    /// apart costs the `Yield` path some 12 instructions, measured in the thirty-first session).
    pub const SWITCHES: u64 = 0;
    /// Timer ticks on the calling CPU.
    pub const TICKS: u64 = 1;
    /// Frames free in the kernel's allocator.
    pub const FREE_FRAMES: u64 = 2;
    /// Live threads in the kernel.
    pub const THREADS: u64 = 3;
    /// IPC hand-overs that switched straight to the partner (a direct switch, on either path),
    /// and the cross-CPU fast path's hand-overs into another CPU's inbox (also in
    /// [`IPC_CROSS`]), all CPUs.
    pub const IPC_FAST: u64 = 4;
    /// IPC deliveries on the general path without a direct switch (the partner made ready in a
    /// run queue or inbox, or a receiver that took a waiting sender's message), all CPUs.
    pub const IPC_SLOW: u64 = 5;
    /// IPC wake-ups of a thread on another CPU, all CPUs.
    pub const IPC_CROSS: u64 = 6;
    /// IPIs sent through the kernel's IPI path (reschedule, TLB shoot-down, the consistency
    /// check's freeze, the IPI measurement; not the panic path's NMIs), all CPUs.
    pub const IPIS_SENT: u64 = 7;
    /// Bytes the kernel heap spans (it grows on demand, never shrinks).
    pub const HEAP_BYTES: u64 = 8;
    /// Kernel heap allocations so far, all CPUs. Only a kernel built with the `countglobal`
    /// feature counts them (and the two below); others answer `InvalidArgument`.
    pub const HEAP_ALLOCS: u64 = 9;
    /// Kernel heap frees so far, all CPUs (`countglobal` kernels only).
    pub const HEAP_FREES: u64 = 10;
    /// Acquisitions of locks that every CPU may take (heap, frame allocator, object
    /// registries, PCIDs, shoot-down...) so far, all CPUs (`countglobal` kernels only).
    pub const GLOBAL_LOCKS: u64 = 11;
    /// Bytes allocated from the kernel heap now (what its users hold, not the span).
    pub const HEAP_IN_USE: u64 = 12;
    /// Bytes of kernel heap the live objects are charged for (each object's heap share, one
    /// per mapping) plus the kernel's fixed allowance: `KernelCheck` reports a violation when
    /// [`HEAP_IN_USE`] exceeds it.
    pub const HEAP_BOUND: u64 = 13;
    /// Bytes a thread costs its memory budget: 4 KiB and its FPU/SIMD save area, whose size
    /// depends on the CPU (not a counter: the same on every call).
    pub const THREAD_BYTES: u64 = 14;
    /// Device interrupts delivered to a notification, all CPUs.
    pub const IRQS_DELIVERED: u64 = 16;
    /// Interrupt lines unmasked in the I/O APIC now (bound and not waiting for `IrqAck`).
    pub const IRQ_LINES_ENABLED: u64 = 17;
    /// Kernel heap allocations failed on purpose by `failalloc=SEED/N` (docs/memory.md,
    /// "Allocation failure injection"); 0 without the option.
    pub const FAILED_ALLOCS: u64 = 18;
    /// Switches to a thread whose FPU/SIMD registers the CPU still held, so that nothing was
    /// loaded (it saved them last and loaded no other thread's since), all CPUs; a thread taken
    /// on again in the decision it left in counts as for [`SWITCHES`].
    pub const FPU_KEPT: u64 = 19;
    /// Wait deadlines the timer has looked at, all CPUs: one per due deadline taken out (its
    /// wait ended, or had ended already), one per entry a prune looked at (a CPU prunes its
    /// deadlines when they have doubled since the last prune) and one per entry a sweep for
    /// dead threads' entries looked at (at most 32 per tick, after a thread that waited there
    /// died). Other ticks with no deadline due look at none, however many threads wait with one
    /// (docs/ipc.md).
    pub const DEADLINES_VISITED: u64 = 20;
    /// Wait deadlines the CPUs hold now, all CPUs: live waits' and those of waits that ended
    /// early, which stay until their deadline, a prune, or (a dead thread's) a sweep
    /// (docs/ipc.md).
    pub const DEADLINES_HELD: u64 = 21;
    /// Run-queue entries the CPUs looked at again because another CPU (or they themselves)
    /// asked: one per request about a killed or re-prioritised queued thread (docs/scheduler.md),
    /// all CPUs.
    pub const SWEEP_VISITED: u64 = 22;
    /// Steps queued sends took to find their place in their endpoint's queue of senders, all
    /// CPUs: one per priority below the sender's that has senders waiting there (docs/ipc.md),
    /// however many senders wait at those priorities.
    pub const SENDQ_STEPS: u64 = 23;
    /// Fault reports the kernel did not print, all CPUs: the machine prints at most 16 at once
    /// (one per CPU on a machine of more than 16), then 10 a second, split among the CPUs
    /// (docs/syscalls.md, "Faults").
    pub const FAULT_REPORTS_LEFT_OUT: u64 = 24;
    /// Walks over every task made to end the descendants of a task that ended (`TaskKill`),
    /// all CPUs: one per task that ended with descendants (one more for each CPU that ended it
    /// too before that walk was done; one more if it was ended by another task's walk and is
    /// killed again), however often it is killed again (docs/syscalls.md).
    pub const TASK_WALKS: u64 = 25;
}

/// What each kind of object costs the memory budget it is made from, in bytes (docs/syscalls.md):
/// the frames it holds and its share of the kernel heap (docs/memory.md).
pub mod cost {
    pub const THREAD: u64 = 4096;
    /// Its record and its capability table (256 slots of 56 bytes).
    pub const TASK: u64 = 4 * 4096;
    /// The shadow of a task's capability table that the IPC fast path reads without a lock
    /// (256 slots of 32 bytes in four pieces, and its header), charged when the first endpoint capability
    /// enters the table.
    pub const CAP_SHADOW: u64 = 256 * 32 + 256;
    /// Its top-level page table and its record (lower page tables cost 4096 each as they are
    /// made).
    pub const SPACE: u64 = 2 * 4096;
    /// One mapping's entry in its space's B-tree.
    pub const MAP: u64 = 128;
    /// The frame, and its record.
    pub const FRAME: u64 = 4096 + 192;
    /// A device frame ([`super::Sys::DeviceMemGet`]): its record only (the page is the device's).
    pub const DEVICE_FRAME: u64 = 192;
    /// A port range's object ([`super::Sys::IoPortGet`]): its record, charged to the calling
    /// task's own budget.
    pub const IO_PORT: u64 = 256;
    pub const ENDPOINT: u64 = 384;
    /// A capability's node in its derivation tree (`CapRevoke`), charged to the task whose
    /// slot holds the capability once anything was derived from it or it from another (the
    /// original's root node too, to the task holding the original when it is first copied).
    pub const DERIV_NODE: u64 = 640;
    pub const NOTIFICATION: u64 = 384;
}

/// [`Sys::IrqBind`]'s `cpu` meaning "the calling thread's CPU".
pub const IRQ_CPU_CALLER: u64 = u64::MAX;
/// Most port ranges one task may have open at once ([`Sys::IoPortOpen`]).
pub const IO_RANGES: usize = 4;
/// Most tasks that may have a range open through one `IoPort` object at once
/// ([`Sys::IoPortOpen`]; `IoPortGet` makes another object for the same ports). Every capability
/// to the object that leaves a slot looks at this list, so its length bounds that work.
pub const PORT_OPENERS: usize = 16;

/// Selectors of [`Sys::Measure`].
pub mod measure {
    /// A CR3 write to another address space and back; `arg` = iterations.
    pub const CR3_FLOOR: u64 = 0;
    /// An IPI to CPU `arg & 0xffff` and its answer, both CPUs otherwise idle (halted);
    /// `arg >> 16` = iterations.
    pub const IPI_FLOOR: u64 = 1;
    /// Per-step IPC tracing on (`arg` non-zero, clearing the sums) or off (0).
    pub const IPC_TRACE: u64 = 2;
    /// `arg` = kind << 8 | step (kind 0 `Call`, 1 `ReplyRecv`; a step below the kernel's count of
    /// them, else `InvalidArgument`) → (cycles summed, calls traced).
    pub const IPC_TRACE_READ: u64 = 3;
    /// `countglobal` kernels: record each CPU's first counted events (allocations, frees,
    /// global locks) with their call chains (`arg` non-zero, clearing earlier records), or stop and
    /// print them on the console (`arg` = 0). Others answer `InvalidArgument`.
    pub const COUNT_EVENTS: u64 = 4;
    /// `arg` times (1..=10,000): save the calling thread's FPU/SIMD registers into its save
    /// area and load them back, as every thread switch does → (mean, min, max) cycles per pair.
    pub const FPU_FLOOR: u64 = 5;
    /// The raw exception floor: the calling thread's next `arg` (1..=100,000) invalid-opcode
    /// exceptions (`ud2`, vector 6) on this CPU are not reported: the kernel steps over the
    /// two-byte instruction and returns at once. Nothing else changes. → `(0, 0, 0)`.
    pub const FAULT_FLOOR: u64 = 6;
    /// With the kernel option `failalloc=SEED/N` (docs/memory.md, "Allocation failure
    /// injection"), whose failures hit every task's system calls but the root task's: `arg` = 1
    /// makes the root task's calls fail as well, 0 stops that → (N, allocations failed so far,
    /// 0). `InvalidArgument` without the option.
    pub const FAILALLOC: u64 = 7;
}

/// Faults delivered as messages ([`Sys::ThreadSetFaultHandler`]).
///
/// When a thread with a fault handler takes an exception, the kernel makes a `Call` to the
/// handler's endpoint on its behalf: the handler receives tag label [`fault::LABEL`], 4 words
/// ([`fault::W_KIND`]..[`fault::W_ERROR`]) and the badge of the capability the handler was set
/// with; it holds the reply right. Its reply with label [`fault::STOP`] leaves the thread
/// `Faulted`; any other label resumes it, with the registers named in word
/// [`fault::R_SET`] changed first.
pub mod fault {
    /// The label of a fault message.
    pub const LABEL: u64 = 0xfa17;
    /// Word 0: the exception vector (14 = page fault, 6 = invalid opcode, 13 = general
    /// protection, 1 = debug...; a user `int3` or `int n` is a general protection fault: no
    /// gate is open to user mode).
    pub const W_KIND: usize = 0;
    /// Word 1: the faulting address (page faults: CR2), 0 for other exceptions.
    pub const W_ADDR: usize = 1;
    /// Word 2: the instruction pointer the thread faulted at (for a trap — a debug exception
    /// after a single step or `icebp` — the one after).
    pub const W_IP: usize = 2;
    /// Word 3: the exception's error code (0 if it has none). Page faults: bit 0 protection
    /// (else not mapped), bit 1 write, bit 2 user, bit 4 instruction fetch (on a CPU without NX,
    /// which does not report fetches, the kernel sets it for a read of an unmapped page within
    /// 15 bytes of the instruction pointer: `rl4_arch::pte::fault_error`). At a kernel address
    /// bit 0 is always set, whether the kernel maps the page or not.
    pub const W_ERROR: usize = 3;
    /// Vector of a page fault.
    pub const PAGE_FAULT: u64 = 14;

    /// Reply label: leave the thread `Faulted` (as if it had no handler).
    pub const STOP: u64 = 0xdead;
    /// Reply label that resumes (any label but [`STOP`] does; this one is the convention).
    pub const RESUME: u64 = 0;
    /// Reply word 0: which registers to set (bits [`SET_IP`], [`SET_SP`], [`SET_RAX`]); the new
    /// values are words 1, 2, 3. Words the reply does not carry (its length) count as 0 bits.
    pub const R_SET: usize = 0;
    pub const R_IP: usize = 1;
    pub const R_SP: usize = 2;
    pub const R_RAX: usize = 3;
    /// Set the instruction pointer (must be a user address below `USER_END - PAGE_SIZE`).
    pub const SET_IP: u64 = 1;
    /// Set the stack pointer (same range).
    pub const SET_SP: u64 = 2;
    /// Set `rax` (any value).
    pub const SET_RAX: u64 = 4;
}

/// IPC registers and the message tag.
///
/// In: `rdi` = endpoint slot, `rsi` = tag, `rdx`, `r10`, `r8`, `r9` = message words 0..3,
/// `r12` = timeout ([`ipc::FOREVER`], 0 = poll, else TSC ticks), `r13` = slot of the
/// capability to send (tag `caps` = 1), `r14` = slot where a received capability goes
/// ([`ipc::NO_SLOT`]: none). Out: `rax` = status, `rsi` = tag, `rdi` = badge, `rdx`, `r10`,
/// `r8`, `r9` = words 0..3. Words 4 and up travel in the IPC buffer page, at their index.
pub mod ipc {
    /// Block without limit.
    pub const FOREVER: u64 = u64::MAX;
    /// "No receive slot".
    pub const NO_SLOT: u64 = u64::MAX;
    /// Message words passed in registers.
    pub const REG_WORDS: u64 = 4;
    /// Most words in one message.
    pub const MAX_WORDS: u64 = 128;
    /// One more than the largest label a tag holds (48 bits: [`Tag::new`] keeps only those).
    pub const LABEL_LIMIT: u64 = 1 << 48;

    /// `label` (bits 16..63) | `caps` (bit 9) | `len` in words (bits 0..8).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct Tag(pub u64);

    impl Tag {
        /// A tag; a `label` of [`LABEL_LIMIT`] or more loses its top 16 bits (the SDK's
        /// `Msg::new` refuses one).
        pub const fn new(label: u64, len: u64, caps: u64) -> Tag {
            Tag(label << 16 | (caps & 1) << 9 | (len & 0x1ff))
        }
        pub const fn len(self) -> u64 {
            self.0 & 0x1ff
        }
        pub const fn caps(self) -> u64 {
            (self.0 >> 9) & 1
        }
        pub const fn label(self) -> u64 {
            self.0 >> 16
        }
        /// Bits that must be zero.
        pub const fn reserved(self) -> u64 {
            self.0 & 0xfc00
        }
        /// A message of register words only: no capability, no reserved bit, at most
        /// [`REG_WORDS`] words (one compare: each of those bits lies above the length's).
        pub const fn fits_registers(self) -> bool {
            self.0 & 0xffff <= REG_WORDS
        }
    }
}

/// Where the kernel maps the root task's [`BootInfo`] page (read-only).
pub const BOOT_INFO_ADDR: u64 = 0x0000_7fff_ff00_0000;
/// Where the kernel maps the embedded user programs (read-only), one after another.
pub const PROGRAMS_ADDR: u64 = 0x0000_7ff0_0000_0000;
/// The root task's stack top (its stack grows down from here).
pub const ROOT_STACK_TOP: u64 = 0x0000_7fff_fe00_0000;
/// Pages of the root task's stack.
pub const ROOT_STACK_PAGES: u64 = 16;

/// A user program the kernel hands the root task: one of the programs embedded in the kernel
/// image, or a boot module the boot loader loaded (`scripts/run --program`). Either way its
/// bytes are mapped read-only in the root task at `addr`, in frames charged to the root task's
/// budget (deleting the mapping gives them back); the root task checks them before it loads
/// anything (a module is whatever file the user passed).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Program {
    /// Its name, at most [`PROGRAM_NAME_MAX`] bytes of UTF-8, zeros after it.
    pub name: [u8; PROGRAM_NAME_MAX + 1],
    /// Where the image is mapped in the root task.
    pub addr: u64,
    pub len: u64,
    /// [`Program::EMBEDDED`] or [`Program::MODULE`].
    pub kind: u64,
}

impl Program {
    /// Compiled into the kernel image (`root`, `worker`, `serial`).
    pub const EMBEDDED: u64 = 0;
    /// A boot module.
    pub const MODULE: u64 = 1;
    pub fn name(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(self.name.len());
        core::str::from_utf8(&self.name[..end]).unwrap_or("?")
    }
}

/// Most bytes of a [`Program`]'s name (a longer module name is cut, at a character's
/// boundary). Before the thirty-third session 15.
pub const PROGRAM_NAME_MAX: usize = 31;

/// Most programs in [`BootInfo`]: the embedded ones, then the boot modules.
pub const MAX_PROGRAMS: usize = 32;
/// Most bytes of one boot module the kernel hands on; a bigger module is refused (with a
/// console line) and the others go on.
pub const MAX_MODULE_BYTES: u64 = 16 << 20;
pub const BOOT_CMDLINE_MAX: usize = 1024;

/// What the root task finds at [`BOOT_INFO_ADDR`].
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BootInfo {
    pub magic: u64,
    pub cpus: u64,
    pub tsc_hz: u64,
    pub memory_bytes: u64,
    pub cmdline_len: u64,
    pub cmdline: [u8; BOOT_CMDLINE_MAX],
    pub nprograms: u64,
    pub programs: [Program; MAX_PROGRAMS],
    /// Physical address of the HPET's registers as the ACPI HPET table gives it (0: none);
    /// its page is what [`Sys::DeviceMemGet`] hands out.
    pub hpet: u64,
    /// Physical address of the first I/O APIC's registers (MADT; 0: none), which the kernel
    /// drives and never hands out.
    pub ioapic: u64,
    /// The firmware's SMI command port (FADT; 0: none, as on a hardware-reduced ACPI machine),
    /// which the kernel keeps: a write would enter the firmware's SMM code.
    pub smi_port: u64,
}

impl BootInfo {
    pub const MAGIC: u64 = 0x726c_345f_626f_6f74; // "rl4_boot"
    pub fn cmdline(&self) -> &str {
        let n = (self.cmdline_len as usize).min(BOOT_CMDLINE_MAX);
        core::str::from_utf8(&self.cmdline[..n]).unwrap_or("")
    }
    pub fn programs(&self) -> &[Program] {
        &self.programs[..(self.nprograms as usize).min(MAX_PROGRAMS)]
    }
}

#[cfg(test)]
mod tests {
    use super::ipc::{REG_WORDS, Tag};

    #[test]
    fn fits_registers_is_the_long_check() {
        for low in 0..0x1_0000u64 {
            for label in [0, 1, 0xffff_ffff_ffff] {
                let t = Tag(label << 16 | low);
                let long = t.len() <= REG_WORDS && t.caps() == 0 && t.reserved() == 0;
                assert_eq!(t.fits_registers(), long, "{low:#x}");
            }
        }
    }
    extern crate std;
    use super::*;

    #[test]
    fn numbers_round_trip_and_are_unique() {
        for s in Sys::ALL {
            assert_eq!(Sys::try_from(*s as u64), Ok(*s));
        }
        for e in Error::ALL {
            assert_eq!(Error::try_from(*e as u64), Ok(*e));
            assert_ne!(*e as u64, 0, "0 means success");
        }
        assert_eq!(Sys::try_from(9999), Err(9999));
    }

    #[test]
    fn rights_algebra() {
        let rw = Rights::READ.union(Rights::WRITE);
        assert!(rw.contains(Rights::READ));
        assert!(!rw.contains(Rights::EXECUTE));
        assert_eq!(rw.intersect(Rights::WRITE.union(Rights::GRANT)), Rights::WRITE);
        assert!(Rights::is_valid(Rights::ALL.0));
        assert!(!Rights::is_valid(1 << 40));
    }

    #[test]
    fn boot_info_fits_a_page() {
        assert!(core::mem::size_of::<BootInfo>() <= PAGE_SIZE as usize);
    }
}
