//! A heap for `alloc` (`Box`, `Vec`, `String`...), with the crate's `heap` feature: the global
//! allocator starts empty at [`crate::env::HEAP_BASE`] and grows by mapping fresh frames from
//! [`crate::env::MEMORY`] when an allocation does not fit. A spin lock guards it: allocate
//! outside hot paths (rl4's IPC itself never allocates). The lock is held across the system
//! calls that grow the heap, and rl4 schedules by strict priority: a thread that allocates while
//! a thread of lower priority of the same program holds the lock on the same CPU spins there for
//! ever (the holder never runs again). Threads of different priorities that share a CPU must not
//! allocate at the same time (allocate before starting them, or from one of them only).
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use linked_list_allocator::Heap;
use rl4_abi::PAGE_SIZE;
use spin::Mutex;

use crate::env;

/// The allocator (see the module documentation).
pub struct GrowingHeap {
    heap: Mutex<(Heap, u64)>,
}

impl GrowingHeap {
    pub const fn new() -> Self {
        GrowingHeap { heap: Mutex::new((Heap::empty(), 0)) }
    }
    /// Bytes the heap spans now.
    pub fn size(&self) -> u64 {
        self.heap.lock().1
    }
}

impl Default for GrowingHeap {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every block comes from `linked_list_allocator::Heap`, which hands out disjoint
// blocks of the asked layout inside memory mapped for the heap alone (mapped here, never
// unmapped), and all access to it is under the lock.
unsafe impl GlobalAlloc for GrowingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut g = self.heap.lock();
        if let Ok(p) = g.0.allocate_first_fit(layout) {
            return p.as_ptr();
        }
        // Grow by at least what was asked (plus room for alignment), 64 KiB at a time; not at
        // all if the budget cannot pay for it (each page costs its frame's record and its
        // mapping besides: `rl4_abi::cost`), so that an allocation too large for it fails at
        // once rather than after mapping what the budget had. `map_fresh` maps all or nothing.
        let Some(want) = (layout.size() as u64).checked_add(layout.align() as u64).map(|w| w.next_multiple_of(64 << 10)) else {
            return core::ptr::null_mut();
        };
        let pages = want / PAGE_SIZE;
        if let Ok((left, _)) = crate::sys::memory_info(env::MEMORY) {
            if pages.saturating_mul(rl4_abi::cost::FRAME + rl4_abi::cost::MAP) > left {
                return core::ptr::null_mut();
            }
        }
        let top = env::HEAP_BASE + g.1;
        if crate::thread::map_fresh(top, pages).is_err() {
            return core::ptr::null_mut();
        }
        if g.1 == 0 {
            // SAFETY: `HEAP_BASE..HEAP_BASE+want` was just mapped writable, for the heap alone.
            unsafe { g.0.init(top as *mut u8, want as usize) };
        } else {
            // SAFETY: the pages right above the heap's top were just mapped for it.
            unsafe { g.0.extend(want as usize) };
        }
        g.1 += want;
        g.0.allocate_first_fit(layout).map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout (GlobalAlloc's contract).
        unsafe { self.heap.lock().0.deallocate(NonNull::new_unchecked(ptr), layout) }
    }
}

#[global_allocator]
static HEAP: GrowingHeap = GrowingHeap::new();

/// Bytes the program's heap spans now.
pub fn size() -> u64 {
    HEAP.size()
}
