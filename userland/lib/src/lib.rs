//! `rl4-user`: the SDK of rl4 programs.
//!
//! A program is a `#![no_std]`, `#![no_main]` binary for `x86_64-unknown-none` that depends on
//! this crate and defines its entry:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use rl4_user::{env, println, Endpoint, Msg};
//!
//! #[unsafe(no_mangle)]
//! fn rl4_main(arg: u64, endpoints: u64) {
//!     println!("hello: arg {arg}, {endpoints} endpoint(s)");
//!     // Answer every call on our own endpoint with its first word plus one.
//!     Endpoint(env::SERVE).serve(|m| Msg::new(0, &[m.w[0].wrapping_add(1)]));
//! }
//! ```
//!
//! What the crate gives:
//! * the entry point `_start` (it calls `rl4_main` with the two argument registers the creator
//!   set, and ends the thread when it returns) and a panic handler (it prints the message, calls
//!   the program's hook if it set one with [`set_panic_hook`], and stops the thread with a fault,
//!   so that it reads as failed);
//! * [`env`](mod@env): the capabilities and memory layout the root task gives a program it starts;
//! * [`sys`]: one typed function per system call, and [`Msg`], a message in registers;
//! * typed capability handles ([`Endpoint`], [`Notification`], [`Thread`], [`Task`],
//!   [`Frame`]) with `call`,
//!   `send`, `recv`, `reply_recv`, a server loop ([`Endpoint::serve`]), `signal`/`wait`;
//! * long messages: words 4 and up through the calling thread's IPC buffer ([`IpcBuffer`],
//!   [`Msg::long`]);
//! * [`thread::spawn`]: threads with their own stack and IPC buffer, on any CPU;
//! * [`slots`]: free capability slots; `heap` (with the crate feature `heap`): `alloc` for the program;
//! * [`println!`] on the kernel console, [`rdtsc`].
//!
//! Nothing here defines a number the kernel defines: they all come from `rl4_abi` (re-exported
//! as [`abi`]). `docs/writing-programs.md` walks through a program from an empty folder.
#![no_std]

/// The FPU/SIMD isolation test's thread body (the root task's and the worker's; not part of the SDK).
#[doc(hidden)]
pub mod fpu;
pub mod cap;
pub mod com;
pub mod env;
#[doc(hidden)]
pub mod fuzz;
#[cfg(feature = "heap")]
pub mod heap;
pub mod serial;
pub mod slots;
#[doc(hidden)]
pub mod storm;
pub mod sys;
pub mod thread;
#[doc(hidden)]
pub mod worker;

pub use cap::{Endpoint, Frame, Notification, Task, Thread};
pub use sys::Msg;

use core::fmt::{self, Write};
pub use rl4_abi as abi;
use rl4_abi::root_slots;

/// Capability slot of the machine (console) capability, by convention in every task.
pub const MACHINE: u64 = root_slots::MACHINE;

/// Formats into a fixed buffer of 2 KiB and writes it with `ConsoleWrite` (the kernel prints at
/// most a kilobyte or so per call: `console_write_all` makes as many as it takes).
pub struct Line {
    buf: [u8; 2048],
    len: usize,
}

impl Line {
    pub const fn new() -> Self {
        Line { buf: [0; 2048], len: 0 }
    }
    pub fn flush(&mut self) {
        if self.len > 0 {
            let _ = sys::console_write_all(MACHINE, &self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Flushed between characters, never inside one (the kernel prints whole UTF-8
        // sequences and drops a piece of one).
        for c in s.chars() {
            let mut b = [0u8; 4];
            let b = c.encode_utf8(&mut b).as_bytes();
            if self.len + b.len() > self.buf.len() {
                self.flush();
            }
            self.buf[self.len..self.len + b.len()].copy_from_slice(b);
            self.len += b.len();
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn print_fmt(args: fmt::Arguments<'_>) {
    let mut l = Line::new();
    let _ = l.write_fmt(args);
    l.flush();
}

/// Prints one line on the kernel console (`println!()`: an empty one, written as a line break:
/// the console prints nothing for an empty write, one empty line for line breaks alone).
#[macro_export]
macro_rules! println {
    () => { $crate::print_fmt(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::print_fmt(format_args!($($arg)*)) };
}

unsafe extern "Rust" {
    fn rl4_main(a0: u64, a1: u64);
}

/// Program entry: `rdi`/`rsi` hold the arguments the creator set (the root task gets its
/// `BootInfo` address). The kernel starts a thread with the stack pointer its creator gave,
/// which is not a function's entry state (the x86-64 ABI wants `rsp + 8` a multiple of 16
/// there, as a `call` leaves it): the entry aligns the stack and calls, so that the compiler's
/// 16-byte-aligned stack accesses (SSE spills, `align(16)` locals) hold whatever stack the
/// creator passed.
#[unsafe(naked)]
#[unsafe(no_mangle)]
extern "C" fn _start() -> ! {
    core::arch::naked_asm!("and rsp, -16", "call {main}", "ud2", main = sym program_start);
}

extern "C" fn program_start(a0: u64, a1: u64) -> ! {
    // SAFETY: every rl4 program defines `rl4_main` with this signature.
    unsafe { rl4_main(a0, a1) };
    sys::thread_exit()
}

/// Entry of threads made by [`spawn`] (aligned as [`_start`] is): calls `f(arg)`, then ends the
/// thread.
#[unsafe(naked)]
extern "C" fn thread_start() -> ! {
    core::arch::naked_asm!("and rsp, -16", "call {body}", "ud2", body = sym thread_body);
}

extern "C" fn thread_body(f: u64, arg: u64) -> ! {
    // SAFETY: `spawn` passes a `fn(u64)` as `f`.
    let f: fn(u64) = unsafe { core::mem::transmute::<usize, fn(u64)>(f as usize) };
    f(arg);
    sys::thread_exit()
}

/// The address new threads of this program start at (see [`thread::spawn`]); it takes the
/// function and its argument in `rdi` and `rsi` (`ThreadSetArgs`) and aligns the stack itself.
pub fn thread_entry() -> u64 {
    thread_start as *const () as u64
}

/// What [`set_panic_hook`] set (null: nothing).
static PANIC_HOOK: core::sync::atomic::AtomicPtr<()> = core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

/// Has the next panic of any thread of this program call `f` after its message is printed and
/// before the thread stops (for example to end a test run at once, rather than leave the
/// machine waiting for a thread that will never finish). `f` runs on the panicking thread and
/// is called once: the first panic takes it (a panic inside `f`, or a later panic of another
/// thread, only stops its thread), so `f` should end what it must end itself.
pub fn set_panic_hook(f: fn()) {
    PANIC_HOOK.store(f as *mut (), core::sync::atomic::Ordering::Release);
}

/// Prints the panic message, calls the program's hook if one is set ([`set_panic_hook`]), then
/// stops the thread with a fault (`ud2`, an invalid-opcode exception): the kernel reports it and
/// marks the thread faulted, so that whoever watches the thread (the root task waiting for a
/// program, a fault handler) sees that it failed rather than ended.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut l = Line::new();
    let _ = write!(l, "user panic: {}", info.message());
    if let Some(loc) = info.location() {
        let _ = write!(l, " at {}:{}", loc.file(), loc.line());
    }
    l.flush();
    // Taken, so that a panic inside the hook does not call it again.
    let hook = PANIC_HOOK.swap(core::ptr::null_mut(), core::sync::atomic::Ordering::AcqRel);
    if !hook.is_null() {
        // SAFETY: only `set_panic_hook` stores a non-null value, a `fn()` cast to a pointer.
        let f: fn() = unsafe { core::mem::transmute::<*mut (), fn()>(hook) };
        f();
    }
    loop {
        // SAFETY: `ud2` raises an invalid-opcode exception and nothing else; the kernel stops
        // this thread there.
        unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    }
}

impl Msg {
    /// A message of `label` and up to four words (more are cut: see [`Msg::long`]). A label
    /// has 48 bits (a tag's bits 16..63): a larger one panics, rather than arrive cut (before
    /// the thirty-fourth session its top 16 bits were dropped without a word: a review found
    /// it).
    pub fn new(label: u64, words: &[u64]) -> Msg {
        assert!(label < rl4_abi::ipc::LABEL_LIMIT, "a message label has 48 bits");
        let n = words.len().min(rl4_abi::ipc::REG_WORDS as usize);
        let mut w = [0; 4];
        w[..n].copy_from_slice(&words[..n]);
        Msg { tag: rl4_abi::ipc::Tag::new(label, n as u64, 0), badge: 0, w }
    }
    /// A message of `label` and up to [`rl4_abi::ipc::MAX_WORDS`] words: the first four go in
    /// registers, the others are written into the calling thread's IPC buffer at their index
    /// (send it before anything else writes there).
    pub fn long(label: u64, words: &[u64]) -> Msg {
        let n = words.len().min(rl4_abi::ipc::MAX_WORDS as usize);
        let mut m = Msg::new(label, &words[..n]);
        // The buffer only for words past the registers: a short message needs none (a thread
        // with a stack of its own has none to find, and `IpcBuffer::current` would panic).
        if n > rl4_abi::ipc::REG_WORDS as usize {
            let buf = IpcBuffer::current();
            for (i, &w) in words[..n].iter().enumerate().skip(rl4_abi::ipc::REG_WORDS as usize) {
                buf.set(i, w);
            }
        }
        m.tag = rl4_abi::ipc::Tag::new(label, n as u64, 0);
        m
    }
    /// The label.
    pub fn label(&self) -> u64 {
        self.tag.label()
    }
    /// The number of words.
    pub fn len(&self) -> usize {
        self.tag.len() as usize
    }
    /// Whether the message has no words.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Word `i` of a received message: from the registers, or (i >= 4) from the calling
    /// thread's IPC buffer. `None` past the message's length.
    pub fn word(&self, i: usize) -> Option<u64> {
        match i {
            _ if i >= self.len() => None,
            0..4 => Some(self.w[i]),
            _ => Some(IpcBuffer::current().get(i)),
        }
    }
}

/// A thread's IPC buffer page: message words 4 and up, at their index. Neither `Send` nor
/// `Sync`: it is the calling thread's, whose `join` unmaps it (kept by another thread past
/// that, it named an unmapped page, or the next spawned thread's: a review of the
/// thirty-seventh session).
#[derive(Clone, Copy, Debug)]
pub struct IpcBuffer(u64, core::marker::PhantomData<*const ()>);

impl IpcBuffer {
    /// The calling thread's buffer: [`env::IPC_BUFFER`] for a program's first thread, the
    /// one [`thread::spawn`] made for the others (found from the stack pointer). Only for
    /// programs laid out as [`env`](mod@env) says (the root task itself is not: it uses
    /// [`IpcBuffer::at`]). Panics on a thread whose stack is neither (one made with
    /// [`sys::thread_create`] and a stack of its own): such a thread names its buffer with
    /// [`IpcBuffer::at`].
    pub fn current() -> IpcBuffer {
        let sp: u64;
        // SAFETY: reads the stack pointer; no memory access, no side effect.
        unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
        match thread::buffer_for(sp) {
            Some(b) => IpcBuffer(b, core::marker::PhantomData),
            None => panic!("IpcBuffer::current: the stack at {sp:#x} is neither the first thread's nor a spawned one's (use IpcBuffer::at)"),
        }
    }
    /// The buffer page at `addr`.
    ///
    /// # Safety
    /// `addr`'s page must be mapped writable in this program and used as nothing but IPC
    /// buffer words (the thread's registered buffer, `SetIpcBuffer`) for as long as the value
    /// is used: [`IpcBuffer::set`] writes it, and the kernel writes received words there.
    pub unsafe fn at(addr: u64) -> IpcBuffer {
        IpcBuffer(addr & !(rl4_abi::PAGE_SIZE - 1), core::marker::PhantomData)
    }
    /// Word `i` (< [`rl4_abi::ipc::MAX_WORDS`]; others read as 0).
    pub fn get(self, i: usize) -> u64 {
        if i >= rl4_abi::ipc::MAX_WORDS as usize {
            return 0;
        }
        // SAFETY: the buffer page is mapped writable in this program for the thread's life
        // (the root task or `thread::spawn` mapped and registered it; `at`'s caller promised
        // as much), and `i` is inside it.
        unsafe { core::ptr::read_volatile((self.0 as *const u64).add(i)) }
    }
    /// Sets word `i` (< [`rl4_abi::ipc::MAX_WORDS`]; others are ignored).
    pub fn set(self, i: usize, w: u64) {
        if i < rl4_abi::ipc::MAX_WORDS as usize {
            // SAFETY: as in `get`.
            unsafe { core::ptr::write_volatile((self.0 as *mut u64).add(i), w) }
        }
    }
}

/// Reads the time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: RDTSC is allowed in user mode (CR4.TSD is clear) and has no side effects.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    ((hi as u64) << 32) | lo as u64
}
