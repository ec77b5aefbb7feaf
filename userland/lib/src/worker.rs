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

/// The worker's slot for the endpoint it serves or calls.
pub const EP_SLOT: u64 = 5;
pub const ECHO_KEY: u64 = 0x5a5a_5a5a_5a5a_5a5a;
/// Issue random system calls forever (operand: the seed). Counters in the page at [`FUZZ_PAGE`]:
/// word 0 = calls made, word 1 + e = calls that returned error code `e` (e < 32).
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
