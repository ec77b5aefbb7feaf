//! What a program started by the root task (`start=NAME` on its command line) finds when
//! `rl4_main(arg, endpoints)` runs: its capabilities, by slot, and its memory layout.
//!
//! The root task gives every program it starts:
//!
//! | slot | capability | rights |
//! |------|------------|--------|
//! | [`TASK`] | the program's own task | all |
//! | [`SPACE`] | its address space | all |
//! | [`THREAD`] | its first thread | all |
//! | [`MEMORY`] | the system's memory budget (shared with the root task) | all |
//! | [`MACHINE`] | the console | console only |
//! | [`SERVE`] | an endpoint of its own, to serve | all |
//! | [`FIRST_EP`] + i | the endpoint `SERVE` of the i-th program named by `ep=` | send, grant; badge = that caller's start index + 1 |
//!
//! `rl4_main`'s first argument is the `arg=` value of the `start=` item (0 by default), the
//! second the number of `ep=` endpoints. The first thread's IPC buffer (message words 4 and
//! up) is registered at [`IPC_BUFFER`]; its stack ends at [`STACK_TOP`]. Slots from
//! [`FIRST_FREE`] on are the program's ([`crate::slots`] hands them out), and so is the
//! address range from [`HEAP_BASE`] up to [`THREADS_BASE`] (the `heap` module grows the heap
//! from its bottom). Above it the library's: from [`THREADS_BASE`] [`crate::thread::spawn`]'s
//! regions (stack and IPC buffer of each new thread), the first thread's IPC buffer at
//! [`IPC_BUFFER`] and its stack below [`STACK_TOP`]. (Before the twenty-seventh session this
//! said the program's range went up to `STACK_TOP` - 64 GiB, across the threads' regions.)
use rl4_abi::root_slots;

/// The program's own task.
pub const TASK: u64 = root_slots::TASK;
/// Its address space.
pub const SPACE: u64 = root_slots::SPACE;
/// Its first thread.
pub const THREAD: u64 = root_slots::THREAD;
/// The memory budget frames, threads and endpoints are charged to.
pub const MEMORY: u64 = root_slots::MEMORY;
/// The console (the `CONSOLE` right only).
pub const MACHINE: u64 = root_slots::MACHINE;
/// The program's own endpoint: it receives on it; the programs started with `ep=` this
/// program's name get send copies of it.
pub const SERVE: u64 = 5;
/// The endpoints of the programs named by `ep=`, in the order given.
pub const FIRST_EP: u64 = 6;
/// Most `ep=` endpoints one program gets.
pub const MAX_EPS: u64 = 8;
/// The first slot the program may use freely.
pub const FIRST_FREE: u64 = FIRST_EP + MAX_EPS;
/// The first thread's IPC buffer page.
pub const IPC_BUFFER: u64 = 0x0000_6400_0000_0000;
/// Top of the first thread's stack.
pub const STACK_TOP: u64 = 0x0000_7000_0000_0000;
/// Pages of the first thread's stack.
pub const STACK_PAGES: u64 = 16;
/// Where the heap starts.
pub const HEAP_BASE: u64 = 0x0000_1000_0000_0000;
/// Where the stacks and IPC buffers of threads made with [`crate::thread::spawn`] go.
pub const THREADS_BASE: u64 = 0x0000_5000_0000_0000;
/// The priority a program's first thread runs at unless `prio=` says otherwise.
pub const DEFAULT_PRIORITY: u64 = 50;
