//! The unit tests' allocator: the system's, but one that a test can make fail for its own
//! thread ([`no_memory`]), so that the paths taken when the kernel heap has nothing left run on
//! the host too (other tests, on other threads, allocate as usual).
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Failing;

std::thread_local! {
    static FAIL: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every call goes to the system allocator, or (while this thread's switch is on) an
// allocation answers null, which `GlobalAlloc` allows; a deallocation always goes through.
unsafe impl GlobalAlloc for Failing {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if FAIL.with(Cell::get) {
            return core::ptr::null_mut();
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System` (a failed allocation returns no pointer to give back).
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if FAIL.with(Cell::get) {
            return core::ptr::null_mut();
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Failing = Failing;

/// Runs `f` with every allocation of this thread failing (a growth that is fallible answers its
/// error; one that is not aborts the test binary, a failure too). The panic machinery allocates:
/// `f` should return what it found and let the caller assert.
pub fn no_memory<R>(f: impl FnOnce() -> R) -> R {
    FAIL.with(|c| c.set(true));
    let r = f();
    FAIL.with(|c| c.set(false));
    r
}
