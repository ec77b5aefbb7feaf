//! Physical memory, the kernel address space and the kernel heap.
//!
//! Boot order: [`init`] turns the boot memory map into the frame allocator (usable RAM minus the
//! first megabyte, the kernel image, boot structures and modules, and every ACPI table), picks the
//! AP trampoline page below 1 MiB, builds the final kernel page tables and switches to them, and
//! starts the kernel heap, which grows page by page from the allocator.
//!
//! This is the kernel crate's one module with `unsafe` for memory: handing the allocator its
//! bitmap and the heap its memory, both carved out of physical memory that nothing else can
//! reach, and reading and writing frames the caller owns ([`OwnedFrame`], which only the
//! allocator hands out: see `docs/memory.md`, "Typed physical memory").
#![allow(unsafe_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU64, Ordering};
use rl4_arch::bootinfo::BootInfo;
use rl4_arch::layout::{BOOT_MAPPED_LIMIT, phys_to_virt};
use rl4_arch::paging::{self, DirectMapMem, FrameSource, Rights};
use rl4_arch::{cpu, println};
use rl4_core::PAGE_SIZE;
use rl4_core::btreenodes::{MOST_INSERT_NODES, NODE_ALIGN, NODE_BLOCK};
use rl4_core::frames::{FrameAllocator, OwnedFrame};
use rl4_core::memmap::{MAX_FREE_RANGES, MemKind, Range, RangeSet};
use talc::{ErrOnOom, Span, Talc};
use crate::count::{self, Global, GlobalSpin};

/// The kernel heap. Small allocations (those that fit in one page with `talc`'s tags) come
/// from `talc`, whose arenas are the boot window's first megabyte (permanent: `talc`'s own
/// bins live there) and single frames taken from the frame allocator and reached through the
/// direct map; an arena frame whose last allocation is freed leaves `talc` and goes back to the
/// frame allocator (a few are kept as spares, [`SPARE_MAX`]). Larger allocations take whole,
/// physically contiguous runs of frames of their own, also through the direct map, which go
/// back when freed. So the heap holds at most its allocations, the frames partly used by
/// them and the spares: after a burst of objects dies, its frames are the allocator's again
/// (docs/memory.md, docs/decisions.md). Nothing is ever unmapped, so freeing memory needs no
/// TLB shoot-down.
///
/// Why `talc` (not `linked_list_allocator`, which it replaced): its free chunks are kept in
/// size bins, so an allocation and a free take constant time whatever the number of free
/// chunks; a linked list of holes sorted by address makes each free walk the list, and freeing
/// a chain of 10,000 tasks (20,000 holes) took 17 s with interrupts off (issue 17).
struct KernelHeap {
    talc: Talc<ErrOnOom>,
    /// The boot arena (in the heap window), never given back.
    boot: Span,
    /// Empty arena frames kept for the next growth: physical addresses, each holding the next
    /// one's address in its first word (0 ends the list).
    spare: u64,
    spares: u64,
}

/// Empty arena frames the heap keeps rather than giving them back at once (so that one object
/// made and freed in a loop does not take and return a frame each time).
const SPARE_MAX: u64 = 8;
/// Heap bytes in use by large allocations (rounded up to whole pages).
static LARGE_IN_USE: AtomicU64 = AtomicU64::new(0);
/// Bytes of memory the heap holds: the boot arena, the arena frames (spares included) and the
/// large allocations' pages.
static HELD: AtomicU64 = AtomicU64::new(0);
/// Arena frames in use by `talc` (not spares).
static ARENAS: AtomicU64 = AtomicU64::new(0);

/// Which allocator frames the heap holds (arena frames, spares, large runs, this map's own):
/// one bit per frame index of the allocator (`FrameAllocator::index`), set and cleared under
/// the allocator's lock; read by the consistency check. Made in [`init`].
static HEAP_MAP: AtomicU64 = AtomicU64::new(0);
static HEAP_MAP_WORDS: AtomicU64 = AtomicU64::new(0);

fn heap_map() -> &'static [AtomicU64] {
    let (p, n) = (HEAP_MAP.load(Ordering::Acquire), HEAP_MAP_WORDS.load(Ordering::Acquire));
    if p == 0 {
        return &[];
    }
    // SAFETY: `init` carved `n` words out of frames no one else uses, zeroed them and published
    // them here before any other use; they live as long as the kernel; access is atomic.
    unsafe { core::slice::from_raw_parts(p as *const AtomicU64, n as usize) }
}

fn mark(a: &FrameAllocator<'static>, pa: u64, count: u64, on: bool) {
    let map = heap_map();
    for k in 0..count {
        if let Some(i) = a.index(pa + k * PAGE_SIZE) {
            let (w, b) = (i / 64, 1u64 << (i % 64));
            if let Some(word) = map.get(w) {
                if on {
                    word.fetch_or(b, Ordering::Relaxed);
                } else {
                    word.fetch_and(!b, Ordering::Relaxed);
                }
            }
        }
    }
}

/// `count` contiguous frames aligned to `align` bytes for the heap (marked as the heap's).
fn take_frames(count: u64, align: u64) -> Option<u64> {
    let mut f = FRAMES.lock();
    let a = f.as_mut()?;
    // The heap owns the frames from here on, by address (`give_frames` hands them back).
    let pa = if count == 1 { a.alloc()?.into_raw() } else { a.alloc_contiguous(count, align)? };
    mark(a, pa, count, true);
    HELD.fetch_add(count * PAGE_SIZE, Ordering::Relaxed);
    Some(pa)
}

/// Gives back `count` frames from `pa` that [`take_frames`] gave the heap.
#[allow(unsafe_code)]
fn give_frames(pa: u64, count: u64) {
    let mut f = FRAMES.lock();
    let Some(a) = f.as_mut() else { return };
    mark(a, pa, count, false);
    for k in 0..count {
        // SAFETY: `take_frames` took these frames from this allocator for the heap, which gives
        // each back once, when nothing in it lies there any more.
        if let Err(e) = a.free(unsafe { OwnedFrame::from_raw(pa + k * PAGE_SIZE) }) {
            panic!("freeing heap frame {:#x}: {e:?}", pa + k * PAGE_SIZE);
        }
    }
    HELD.fetch_sub(count * PAGE_SIZE, Ordering::Relaxed);
}

/// Calls `f` with the allocator index of every frame the heap holds outside its boot window
/// (the consistency check, with the allocator locked by the caller: nothing here locks).
pub fn for_each_heap_frame(mut f: impl FnMut(usize)) {
    for (w, word) in heap_map().iter().enumerate() {
        let mut bits = word.load(Ordering::Relaxed);
        while bits != 0 {
            f(w * 64 + bits.trailing_zeros() as usize);
            bits &= bits - 1;
        }
    }
}

/// Whether `talc` serves `layout` (from a one-page arena; the rest takes page runs).
fn small(layout: Layout) -> bool {
    layout.align() <= 64 && layout.size() + layout.align() + 64 <= PAGE_SIZE as usize
}

/// Pages a large allocation takes.
fn run_pages(layout: Layout) -> u64 {
    (layout.size() as u64).div_ceil(PAGE_SIZE).max(1)
}

/// Arena frames each CPU keeps for the system call it runs (its own, untouched by other CPUs),
/// taken by the heap only when the frame allocator is empty: filled by [`headroom`], so that the
/// one infallible allocation a call makes (`must_not_fail`: a mapping's entry in its space's map,
/// well under a frame of nodes; other CPUs may take part of an arena made from the reserve
/// meanwhile, which the second frame covers in practice) finds a frame even if other CPUs took
/// every free frame between the call's check and its allocation (the calls that grow the heap without that check — a capability sent, a wait
/// with a timeout — fail cleanly at zero, but they could take the floor `headroom` saw; a
/// review of the twenty-first session found that window, as long as a vCPU is descheduled).
const CPU_RESERVE: usize = 2;
static RESERVE: [crossbeam_utils::CachePadded<[AtomicU64; CPU_RESERVE]>; rl4_smp::MAX_CPUS] =
    [const { crossbeam_utils::CachePadded::new([const { AtomicU64::new(0) }; CPU_RESERVE]) }; rl4_smp::MAX_CPUS];

fn cpu_reserve() -> &'static [AtomicU64; CPU_RESERVE] {
    &RESERVE[rl4_arch::percpu::cpu_index() as usize % rl4_smp::MAX_CPUS]
}

/// Fills this CPU's reserve from the allocator (the heap owns those frames from then on); a
/// load per slot when it is full. Whether it is full.
pub fn fill_reserve() -> bool {
    for slot in cpu_reserve() {
        if slot.load(Ordering::Relaxed) == 0 {
            match take_frames(1, PAGE_SIZE) {
                Some(pa) => slot.store(pa, Ordering::Relaxed),
                None => return false,
            }
        }
    }
    true
}

/// A frame of this CPU's reserve, if one is left (only this CPU takes or fills its own, with
/// interrupts off).
fn take_reserve() -> Option<u64> {
    cpu_reserve().iter().find_map(|slot| {
        let pa = slot.load(Ordering::Relaxed);
        (pa != 0).then(|| {
            slot.store(0, Ordering::Relaxed);
            pa
        })
    })
}

impl KernelHeap {
    /// A frame for a new arena: a spare, else a fresh one, else one of this CPU's reserve.
    fn arena_frame(&mut self) -> Option<u64> {
        if self.spare != 0 {
            let pa = self.spare;
            // SAFETY: a spare is a heap-owned frame whose first word holds the next spare.
            self.spare = unsafe { (phys_to_virt(pa) as *const u64).read() };
            self.spares -= 1;
            return Some(pa);
        }
        take_frames(1, PAGE_SIZE).or_else(take_reserve)
    }

    /// An arena frame `talc` no longer uses: kept as a spare, or given back.
    fn release_frame(&mut self, pa: u64) {
        if self.spares < SPARE_MAX {
            // SAFETY: the frame is the heap's and no longer `talc`'s; its first word links it.
            unsafe { (phys_to_virt(pa) as *mut u64).write(self.spare) };
            self.spare = pa;
            self.spares += 1;
        } else {
            give_frames(pa, 1);
        }
    }
}

struct Heap {
    heap: GlobalSpin<KernelHeap>,
}

// SAFETY: small allocations go through the inner `Talc` under its lock, whose arenas are memory
// the heap owns (the boot window's mapped pages, frames from the allocator reached through the
// direct map); large ones are frame runs taken from and given back to the allocator.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if FAIL_ONE_IN.load(Ordering::Relaxed) != 0 && fail_now() {
            return core::ptr::null_mut();
        }
        count::alloc(layout.size());
        if !small(layout) {
            let pages = run_pages(layout);
            let align = (layout.align() as u64).max(PAGE_SIZE);
            if heap_map().is_empty() {
                return core::ptr::null_mut();
            }
            return match take_frames(pages, align) {
                Some(pa) => {
                    LARGE_IN_USE.fetch_add(pages * PAGE_SIZE, Ordering::Relaxed);
                    phys_to_virt(pa) as *mut u8
                }
                None => core::ptr::null_mut(),
            };
        }
        let mut h = self.heap.lock();
        if h.boot.is_empty() {
            return core::ptr::null_mut();
        }
        // SAFETY: `talc` manages only memory the heap owns (above).
        if let Ok(p) = unsafe { h.talc.malloc(layout) } {
            return p.as_ptr();
        }
        let Some(pa) = h.arena_frame() else { return core::ptr::null_mut() };
        let span = Span::from_base_size(phys_to_virt(pa) as *mut u8, PAGE_SIZE as usize);
        // SAFETY: the frame is the heap's alone (fresh from the allocator or a spare), writable
        // through the direct map.
        if unsafe { h.talc.claim(span) }.is_err() {
            h.release_frame(pa);
            return core::ptr::null_mut();
        }
        ARENAS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { h.talc.malloc(layout) }.map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }

    /// Shrinking never needs new memory but when a large allocation becomes small (then a
    /// small allocation: at most one frame), so a `shrink_to` (a notification's queue after a
    /// burst, a derivation tree's first piece) never needs contiguous frames: large runs give
    /// their tail back, `talc` chunks shrink where they are. Growth moves, as by default.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this heap with `layout` and `new_size` is not zero (the
        // `GlobalAlloc` contract); it is at most the old size here.
        if new_size <= layout.size() && unsafe { self.shrink_in_place(ptr, layout, new_size) } {
            count::free(layout.size());
            count::alloc(new_size);
            return ptr;
        }
        // SAFETY: the `GlobalAlloc` contract makes this a valid layout.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as `GlobalAlloc::realloc`'s default: a new allocation, the bytes copied,
        // the old one freed.
        unsafe {
            let p = self.alloc(new);
            if !p.is_null() {
                core::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            p
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count::free(layout.size());
        if !small(layout) {
            let pages = run_pages(layout);
            LARGE_IN_USE.fetch_sub(pages * PAGE_SIZE, Ordering::Relaxed);
            give_frames(ptr as u64 - rl4_arch::layout::DIRECT_MAP, pages);
            return;
        }
        let mut h = self.heap.lock();
        // SAFETY: `ptr` came from `alloc` with this layout (the `GlobalAlloc` contract).
        unsafe { h.talc.free(core::ptr::NonNull::new_unchecked(ptr), layout) };
        if h.boot.contains(ptr) {
            return;
        }
        let page = (ptr as u64) & !(PAGE_SIZE - 1);
        let span = Span::from_base_size(page as *mut u8, PAGE_SIZE as usize);
        // SAFETY: `span` is the arena `ptr` came from, exactly as claimed (a whole, aligned
        // frame; `claim` keeps word-aligned spans as they are).
        if unsafe { h.talc.get_allocated_span(span) }.is_empty() {
            // SAFETY: as above; nothing in it is allocated.
            let _ = unsafe { h.talc.truncate(span, Span::empty()) };
            ARENAS.fetch_sub(1, Ordering::Relaxed);
            h.release_frame(page - rl4_arch::layout::DIRECT_MAP);
        }
    }
}

impl Heap {
    /// Shrinks the allocation at `ptr` in place, if it can: within its `talc` chunk, or by
    /// giving back the tail of a large run (which then stays large). `false`: it cannot (a
    /// large allocation becoming small moves into an arena).
    ///
    /// # Safety
    /// `ptr` was allocated by this heap with `layout`; `new_size` is not zero and at most
    /// `layout.size()`.
    unsafe fn shrink_in_place(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> bool {
        if small(layout) {
            let mut h = self.heap.lock();
            // SAFETY: `ptr` is a `talc` allocation of `layout` (small), `new_size` is smaller
            // and not zero (the caller's contract).
            unsafe { h.talc.shrink(core::ptr::NonNull::new_unchecked(ptr), layout, new_size) };
            return true;
        }
        // SAFETY: the same alignment as a valid layout and a smaller size.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if small(new) {
            return false;
        }
        let (old_pages, new_pages) = (run_pages(layout), run_pages(new));
        if new_pages < old_pages {
            LARGE_IN_USE.fetch_sub((old_pages - new_pages) * PAGE_SIZE, Ordering::Relaxed);
            give_frames(ptr as u64 - rl4_arch::layout::DIRECT_MAP + new_pages * PAGE_SIZE, old_pages - new_pages);
        }
        true
    }
}

#[global_allocator]
static HEAP: Heap = Heap {
    heap: GlobalSpin::new(
        Global::Heap,
        KernelHeap { talc: Talc::new(ErrOnOom), boot: Span::empty(), spare: 0, spares: 0 },
    ),
};

// Allocation failure injection (`failalloc=SEED/N`, docs/memory.md "Allocation failure
// injection"): once [`start_failing`] has run (when the root task starts), a pseudo-random one
// in N of the heap allocations made on a CPU inside [`in_call`] (a system call's work) and
// outside [`must_not_fail`] (the few allocations that are bounded instead of fallible) fails:
// the allocator answers null, as it does when memory runs out. Boot, interrupts and the
// destruction loop never see it, nor the root task's calls unless it asks (`measure::FAILALLOC`).

/// N of `failalloc=SEED/N` (0: off).
static FAIL_ONE_IN: AtomicU64 = AtomicU64::new(0);
/// The root task's own calls fail too (`measure::FAILALLOC`; off at first, so that the test
/// harness sets up before it asks).
static ROOT_FAILS: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// Allocations failed on purpose (`stat::FAILED_ALLOCS`).
static FAILED: AtomicU64 = AtomicU64::new(0);

struct FailCpu {
    /// This CPU runs a system call's work ([`in_call`]) and not a path that must not fail.
    armed: core::sync::atomic::AtomicBool,
    /// This CPU's generator state (xorshift64; only this CPU touches it, interrupts off).
    rng: AtomicU64,
}

static FAIL_CPUS: [crossbeam_utils::CachePadded<FailCpu>; rl4_smp::MAX_CPUS] = [const {
    crossbeam_utils::CachePadded::new(FailCpu { armed: core::sync::atomic::AtomicBool::new(false), rng: AtomicU64::new(0) })
}; rl4_smp::MAX_CPUS];

fn fail_cpu() -> &'static FailCpu {
    &FAIL_CPUS[rl4_arch::percpu::cpu_index() as usize % rl4_smp::MAX_CPUS]
}

/// Whether this allocation is one to fail (injection is on).
#[cold]
fn fail_now() -> bool {
    let c = fail_cpu();
    if !c.armed.load(Ordering::Relaxed) {
        return false;
    }
    let mut x = c.rng.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c.rng.store(x, Ordering::Relaxed);
    if x % FAIL_ONE_IN.load(Ordering::Relaxed) != 0 {
        return false;
    }
    FAILED.fetch_add(1, Ordering::Relaxed);
    true
}

/// Turns failure injection on: one in `n` allocations of the system calls fails, the choice
/// drawn from a generator per CPU seeded from `seed` and the CPU's index.
pub fn start_failing(seed: u64, n: u32) {
    for (i, c) in FAIL_CPUS.iter().enumerate() {
        // splitmix64 of the seed and the index: never 0 (xorshift's fixed point).
        let mut z = seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        c.rng.store((z ^ (z >> 31)) | 1, Ordering::Relaxed);
    }
    FAIL_ONE_IN.store(n as u64, Ordering::Release);
}

/// Allocations failed on purpose so far.
pub fn failed_allocs() -> u64 {
    FAILED.load(Ordering::Relaxed)
}

/// Runs `f`, the work of a system call of task `task` (its id), with failure injection armed
/// on this CPU: for every task but the root task, and for the root task too while it asks
/// ([`root_fails`]). Nothing when injection is off.
#[inline(always)]
pub fn in_call<R>(task: u64, f: impl FnOnce() -> R) -> R {
    let g = Armed::set(|| task != rl4_abi::ROOT_TASK_ID || ROOT_FAILS.load(Ordering::Relaxed));
    let r = f();
    drop(g);
    r
}

/// `measure::FAILALLOC`: the root task's own calls fail as the others' do (`on`), or not;
/// `InvalidArgument` without `failalloc=`.
pub fn root_fails(on: bool) -> Result<[u64; 3], rl4_abi::Error> {
    if FAIL_ONE_IN.load(Ordering::Relaxed) == 0 {
        return Err(rl4_abi::Error::InvalidArgument);
    }
    ROOT_FAILS.store(on, Ordering::Relaxed);
    Ok([FAIL_ONE_IN.load(Ordering::Relaxed), FAILED.load(Ordering::Relaxed), 0])
}

/// Runs `f` with failure injection disarmed on this CPU: for the allocations that are bounded
/// rather than fallible (docs/memory.md lists them, and why).
#[inline(always)]
pub fn must_not_fail<R>(f: impl FnOnce() -> R) -> R {
    let g = Armed::set(|| false);
    let r = f();
    drop(g);
    r
}

/// The allocator of the spaces' mapping B-trees (`obj::Maps`). `BTreeMap` has no fallible
/// insertion, so `Map` stocks this CPU with every node its insertion may allocate first
/// ([`stock_map_nodes`]: fallible, an `OutOfMemory` answer before anything changed), and the
/// insertion takes its nodes from that stock. Every node fits one block of
/// `rl4_core::btreenodes::NODE_BLOCK` bytes (a leaf takes a whole block too); a node the stock
/// did not hold (the bound would be wrong) is counted ([`map_nodes_missed`]: `KernelCheck` reports
/// it) and taken from the heap as before the twenty-fourth session, when the insertion ran
/// under [`must_not_fail`] and, with no frame left for the heap, stopped the kernel.
#[derive(Clone, Copy)]
pub struct MapNodes;

/// One CPU's stock of blocks (only this CPU takes or adds blocks, with interrupts off and
/// inside one system call: its atomics are plain per-CPU words).
struct NodeStock {
    n: core::sync::atomic::AtomicUsize,
    blocks: [core::sync::atomic::AtomicPtr<u8>; MOST_INSERT_NODES],
}

static NODE_STOCK: [crossbeam_utils::CachePadded<NodeStock>; rl4_smp::MAX_CPUS] = [const {
    crossbeam_utils::CachePadded::new(NodeStock {
        n: core::sync::atomic::AtomicUsize::new(0),
        blocks: [const { core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()) }; MOST_INSERT_NODES],
    })
}; rl4_smp::MAX_CPUS];

/// Blocks a CPU keeps between two `Map`s: enough for a map of up to 12,959 entries (the rest
/// of a stock goes back to the heap after each insertion: [`trim_map_nodes`]).
const NODES_KEPT: usize = rl4_core::btreenodes::insert_nodes(12_959);
/// Nodes an insertion took from the heap because the stock was empty (or a node did not fit).
static NODES_MISSED: AtomicU64 = AtomicU64::new(0);

const NODE_LAYOUT: Layout = match Layout::from_size_align(NODE_BLOCK, NODE_ALIGN) {
    Ok(l) => l,
    Err(_) => panic!("the node block's layout"),
};

fn node_stock() -> &'static NodeStock {
    &NODE_STOCK[rl4_arch::percpu::cpu_index() as usize % rl4_smp::MAX_CPUS]
}

/// Whether a node of `layout` takes a block (else it comes from the heap with its own layout).
fn in_block(layout: Layout) -> bool {
    layout.size() <= NODE_BLOCK && layout.align() <= NODE_ALIGN
}

/// Stocks this CPU with the blocks one insertion into a map of `len` entries may allocate
/// (`rl4_core::btreenodes::insert_nodes`); `OutOfMemory` if the heap has not enough (the blocks
/// already taken stay in the stock). Called under the space's map lock, right before the
/// insertion: nothing on this CPU takes from the stock in between.
pub fn stock_map_nodes(len: usize) -> Result<(), rl4_abi::Error> {
    let s = node_stock();
    let need = rl4_core::btreenodes::insert_nodes(len);
    let mut n = s.n.load(Ordering::Relaxed);
    while n < need {
        // SAFETY: `NODE_LAYOUT` has a non-zero size.
        let p = unsafe { alloc::alloc::alloc(NODE_LAYOUT) };
        if p.is_null() {
            return Err(rl4_abi::Error::OutOfMemory);
        }
        s.blocks[n].store(p, Ordering::Relaxed);
        n += 1;
        s.n.store(n, Ordering::Relaxed);
    }
    Ok(())
}

/// After an insertion: this CPU's stock beyond [`NODES_KEPT`] blocks goes back to the heap.
pub fn trim_map_nodes() {
    let s = node_stock();
    let mut n = s.n.load(Ordering::Relaxed);
    while n > NODES_KEPT {
        n -= 1;
        let p = s.blocks[n].load(Ordering::Relaxed);
        s.blocks[n].store(core::ptr::null_mut(), Ordering::Relaxed);
        s.n.store(n, Ordering::Relaxed);
        // SAFETY: `p` is a block `stock_map_nodes` allocated with `NODE_LAYOUT` and nothing
        // else holds (it left the stock above).
        unsafe { alloc::alloc::dealloc(p, NODE_LAYOUT) };
    }
}

/// Nodes of mapping B-trees that no stock held (0 unless `rl4_core::btreenodes`' bound is
/// wrong for this toolchain's `BTreeMap`).
pub fn map_nodes_missed() -> u64 {
    NODES_MISSED.load(Ordering::Relaxed)
}

// SAFETY: a block handed out is `NODE_BLOCK` bytes aligned to `NODE_ALIGN`, which covers any
// layout `in_block` accepts, and no stock holds it any more; every other allocation is the
// heap's, with its own layout. `deallocate` gives each back the way it came, a decision made
// from the layout alone, the same at both ends.
unsafe impl core::alloc::Allocator for MapNodes {
    fn allocate(&self, layout: Layout) -> Result<core::ptr::NonNull<[u8]>, core::alloc::AllocError> {
        let l = if in_block(layout) {
            let s = node_stock();
            let n = s.n.load(Ordering::Relaxed);
            if n > 0 {
                let p = s.blocks[n - 1].load(Ordering::Relaxed);
                s.blocks[n - 1].store(core::ptr::null_mut(), Ordering::Relaxed);
                s.n.store(n - 1, Ordering::Relaxed);
                if let Some(p) = core::ptr::NonNull::new(p) {
                    return Ok(core::ptr::NonNull::slice_from_raw_parts(p, NODE_BLOCK));
                }
            }
            NODE_LAYOUT
        } else {
            layout
        };
        NODES_MISSED.fetch_add(1, Ordering::Relaxed);
        must_not_fail(|| alloc::alloc::Global.allocate(l))
    }

    unsafe fn deallocate(&self, ptr: core::ptr::NonNull<u8>, layout: Layout) {
        let l = if in_block(layout) { NODE_LAYOUT } else { layout };
        // SAFETY: `ptr` came from `allocate` with `layout`, that is from the heap with `l`
        // (a stocked block was allocated from it with `NODE_LAYOUT`).
        unsafe { alloc::alloc::Global.deallocate(ptr, l) }
    }
}

/// This CPU's armed flag set for a while, and put back as it was when dropped. When injection
/// is off it is one load and a branch each way (`f` is called once, so the work it wraps is
/// inlined as before).
struct Armed(Option<bool>);

impl Armed {
    #[inline(always)]
    fn set(on: impl FnOnce() -> bool) -> Armed {
        if FAIL_ONE_IN.load(Ordering::Relaxed) == 0 { Armed(None) } else { Armed(Some(swap_armed(on()))) }
    }
}

impl Drop for Armed {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(before) = self.0 {
            // The kernel is event-based (one kernel stack per CPU, interrupts off in the
            // kernel): a system call's work runs to its end on the CPU that started it, which
            // puts the flag back.
            swap_armed(before);
        }
    }
}

#[cold]
#[inline(never)]
fn swap_armed(on: bool) -> bool {
    fail_cpu().armed.swap(on, Ordering::Relaxed)
}

/// `Arc::new_cyclic` that answers `OutOfMemory` instead of reaching the allocation error
/// handler (the standard library has no fallible form). `make` builds the value from its
/// address (with any weak reference to it, say `Weak::new()`, in the field `me` names);
/// `me` then gets the real one.
pub fn try_new_cyclic<T>(make: impl FnOnce(usize) -> T, me: impl FnOnce(&mut T) -> &mut alloc::sync::Weak<T>) -> Result<alloc::sync::Arc<T>, rl4_abi::Error> {
    use alloc::sync::Arc;
    let mut a = Arc::<T>::try_new_uninit().map_err(|_| rl4_abi::Error::OutOfMemory)?;
    let addr = Arc::as_ptr(&a) as usize;
    let Some(slot) = Arc::get_mut(&mut a) else { return Err(rl4_abi::Error::OutOfMemory) };
    slot.write(make(addr));
    // SAFETY: written just above.
    let mut a = unsafe { a.assume_init() };
    let w = Arc::downgrade(&a);
    // SAFETY: `a` is the only strong reference and `w` the only weak one, both held here:
    // nothing else reads or writes the value while `me` is set.
    *me(unsafe { Arc::get_mut_unchecked(&mut a) }) = w;
    Ok(a)
}

/// Room for one `Arc<T>`, allocated (fallibly) before the value exists: a call takes it
/// before it changes anything, then [`ArcSlot::fill`] cannot fail.
pub struct ArcSlot<T>(alloc::sync::Arc<core::mem::MaybeUninit<T>>);

impl<T> ArcSlot<T> {
    pub fn new() -> Result<Self, rl4_abi::Error> {
        alloc::sync::Arc::try_new_uninit().map(ArcSlot).map_err(|_| rl4_abi::Error::OutOfMemory)
    }

    /// The `Arc` holding `v` (no allocation).
    pub fn fill(mut self, v: T) -> alloc::sync::Arc<T> {
        match alloc::sync::Arc::get_mut(&mut self.0) {
            Some(slot) => {
                slot.write(v);
            }
            None => unreachable!("an ArcSlot's Arc is never shared"),
        }
        // SAFETY: written just above (the slot's `Arc` is never cloned, so `get_mut` succeeds).
        unsafe { self.0.assume_init() }
    }
}

/// Bytes allocated from the heap now (what its users hold, large allocations rounded up to
/// pages, not counting `talc`'s own bookkeeping).
pub fn heap_in_use() -> u64 {
    HEAP.heap.lock().talc.get_counters().allocated_bytes as u64 + LARGE_IN_USE.load(Ordering::Relaxed)
}

/// [`heap_in_use`], unless the heap's lock is held (the consistency check, which must not wait
/// for a lock another CPU may hold).
pub fn try_heap_in_use() -> Option<u64> {
    HEAP.heap.try_lock().map(|h| h.talc.get_counters().allocated_bytes as u64 + LARGE_IN_USE.load(Ordering::Relaxed))
}

/// Bytes of memory the heap holds now: its boot arena, its arena frames (spares included) and
/// its large allocations' pages.
pub fn heap_size() -> u64 {
    HELD.load(Ordering::Relaxed)
}

/// Arena frames `talc` uses now (for the consistency check: each is a frame the allocator
/// counts as used).
pub fn heap_arenas() -> u64 {
    ARENAS.load(Ordering::Relaxed)
}

static FRAMES: GlobalSpin<Option<FrameAllocator<'static>>> = GlobalSpin::new(Global::Frames, None);

/// The kernel's frame source: the global allocator, limited to the first 4 GiB while the boot
/// page tables are the only ones.
pub struct Frames;

impl FrameSource for Frames {
    fn alloc_frame(&mut self) -> Option<OwnedFrame> {
        let mut f = FRAMES.lock();
        let a = f.as_mut()?;
        if paging::boot_map_only() { a.alloc_below(BOOT_MAPPED_LIMIT) } else { a.alloc() }
    }
}

/// The source of a new address space's root table: [`Frames`], but, as for every other user page
/// table, never one of the last [`user_floor`] frames once the kernel's own page tables are up
/// (a review of the sixteenth session found `TaskCreate` taking its root table from the band kept
/// for the calls under way on every CPU).
pub struct UserFrames;

impl FrameSource for UserFrames {
    fn alloc_frame(&mut self) -> Option<OwnedFrame> {
        if paging::boot_map_only() { Frames.alloc_frame() } else { alloc_user_frame() }
    }
}

/// What memory set-up found.
pub struct MemInfo {
    /// The AP trampoline's page below 640 KiB (`None`: there was none free).
    pub trampoline: Option<u64>,
    pub usable: u64,
    pub free_frames: u64,
    pub heap: Range,
}

fn reserve(set: &mut RangeSet<MAX_FREE_RANGES>, r: Range, what: &str) {
    if set.remove_pages_covering(r).is_err() {
        // The set is full only with an absurdly fragmented map; failing to reserve would risk
        // handing out something in use, so this is fatal.
        panic!("memory map too fragmented while reserving {what} {:#x}..{:#x}", r.start, r.end);
    }
}

/// The bytes the memory map calls usable, each counted once: entries that overlap (buggy
/// firmware) are merged first (before the thirty-fourth session the overlap was counted twice in
/// the boot line's figure, which a review found; the allocator was right).
fn usable_bytes(map: &[rl4_arch::bootinfo::MemEntry]) -> u64 {
    let mut r = [Range::new(0, 0); rl4_arch::bootinfo::MAX_MEMMAP];
    let mut n = 0;
    for e in map.iter().filter(|e| e.kind == MemKind::Usable && e.range.len() > 0) {
        r[n] = e.range;
        n += 1;
    }
    rl4_core::memmap::union_len(&mut r[..n])
}

/// `reserved`: ranges the command line keeps out (`reserve=`), as if the map reserved them.
pub fn init(bi: &BootInfo, reserved: &[Range]) -> MemInfo {
    // A range the map calls anything but usable is never handed out, even where (buggy
    // firmware) a usable entry overlaps it: firmware data, ACPI NVS, defective RAM.
    let map = bi.memory_map().iter().map(|e| (e.range, e.kind));
    let usable = usable_bytes(bi.memory_map());
    let dropped = |r: Range| println!("memory: too many usable ranges, ignoring {:#x}..{:#x}", r.start, r.end);
    let mut free: RangeSet<MAX_FREE_RANGES> = match rl4_core::memmap::free_pages(map, dropped) {
        Ok(f) => f,
        Err(r) => panic!("memory map too fragmented while reserving {:#x}..{:#x}", r.start, r.end),
    };
    for r in reserved {
        reserve(&mut free, *r, "a range reserve= names");
    }
    // Everything in use before the allocator exists.
    reserve(&mut free, rl4_arch::kernel_phys_range(), "the kernel image");
    for r in bi.info_ranges() {
        reserve(&mut free, *r, "boot information");
    }
    if let Some(rsdp) = bi.rsdp {
        let mut out = [Range::default(); rl4_smp::acpi::MAX_TABLE_RANGES];
        let (n, skipped) = rl4_smp::acpi::table_ranges(&DirectMapMem, rsdp, &mut out);
        for r in &out[..n.min(out.len())] {
            reserve(&mut free, *r, "an ACPI table");
        }
        if n > out.len() {
            println!("memory: {} ACPI table(s) beyond the first {} not kept out of the frame allocator; they must lie in reserved memory", n - out.len(), out.len());
        }
        if skipped > 0 {
            println!("memory: {skipped} ACPI table(s) not readable at boot; they must lie in reserved memory");
        }
    }
    // On a PC BIOS (and PVH, which runs on one), the BIOS's own low memory, whatever the map
    // says of it (`memmap::bios_low_reserved`), read from its data area; on a boot whose
    // firmware is not known (a Limine that does not say), whose data area may hold anything,
    // only the last page below 640 KiB; on UEFI, which promises no such area, nothing.
    {
        use rl4_arch::bootinfo::{Firmware, PhysMem, Protocol};
        let bda = match (bi.firmware, bi.protocol) {
            (Firmware::Bios, _) | (Firmware::Unstated, Protocol::Pvh) => Some(true),
            (Firmware::Unstated, _) => Some(false),
            (Firmware::Uefi, _) => None,
        };
        if let Some(read_bda) = bda {
            let (mut seg, mut kib) = ([0u8; 2], [0u8; 2]);
            let m = rl4_arch::paging::DirectMapMem;
            let read = read_bda && m.read(0x40e, &mut seg).is_some() && m.read(0x413, &mut kib).is_some();
            let (seg, kib) = if read { (u16::from_le_bytes(seg), u16::from_le_bytes(kib)) } else { (0, 0) };
            reserve(&mut free, rl4_core::memmap::bios_low_reserved(seg, kib), "the BIOS's low memory");
        }
    }
    // The trampoline: the highest usable page below 640 KiB that nothing above claimed (none:
    // only the bootstrap CPU runs, `main`). Then the whole first megabyte stays out of the
    // allocator (BIOS data, EBDA, option ROMs).
    let trampoline = rl4_core::memmap::trampoline_page(&free);
    reserve(&mut free, Range::new(0, 0x10_0000), "the first megabyte");

    // The allocator's bitmap comes out of free memory below 4 GiB (reachable now).
    let words = FrameAllocator::bitmap_words(free.as_slice());
    let bytes = (words as u64 * 8).next_multiple_of(PAGE_SIZE);
    let Some(at) = free.take(bytes, PAGE_SIZE, BOOT_MAPPED_LIMIT) else {
        panic!("no room for the frame bitmap ({bytes} bytes) below 4 GiB")
    };
    // SAFETY: `at..at+bytes` was just removed from the free set (so the allocator never hands
    // it out and nothing else uses it), lies below 4 GiB and so is mapped by the boot page
    // tables and later by the direct map; it lives as long as the kernel.
    let bitmap = unsafe { core::slice::from_raw_parts_mut(phys_to_virt(at) as *mut u64, words) };
    // SAFETY: `free` is usable RAM (the memory map's) less everything in use (the kernel
    // image, boot information, ACPI tables, the first megabyte, the bitmap itself); the direct
    // map will cover all of it, and until it does `Frames` asks only for frames below 4 GiB,
    // which the boot tables map. This is the only frame allocator.
    let allocator = unsafe { FrameAllocator::new(free.as_slice(), bitmap) };
    // Free memory the allocator could not take is said, never dropped in silence.
    let offered = free.iter().map(|r| r.len() / PAGE_SIZE).sum::<u64>();
    if allocator.total_frames() < offered {
        println!("memory: {} KiB of free memory beyond the frame allocator's limits ignored", (offered - allocator.total_frames()) * 4);
    }
    *FRAMES.lock() = Some(allocator);

    // Final kernel page tables: the direct map covers every range the memory map names.
    let f = cpu::Features::read();
    let (direct, uncached) = direct_ranges(bi);
    let direct = DIRECT_MEMORY.call_once(|| direct);
    let [text, rodata, data] = rl4_arch::kernel_sections();
    let image = [
        (text.0, text.1, Rights::ReadExecute),
        (rodata.0, rodata.1, Rights::Read),
        (data.0, data.1, Rights::ReadWrite),
    ];
    let pml4 = paging::build_kernel_space(&mut Frames, direct.as_slice(), uncached.as_slice(), &image, f.page1g, f.nx)
        .unwrap_or_else(|e| panic!("building the kernel page tables failed: {e:?}"));
    paging::activate(pml4, f.nx);

    // Kernel heap: its boot arena is the window's first megabyte; it grows by arena frames.
    let base = rl4_arch::layout::HEAP_BASE;
    let heap_pages = 256;
    if let Err(e) = paging::map_heap(&mut Frames, base, heap_pages) {
        panic!("mapping the kernel heap: {e:?}");
    }
    HELD.store(heap_pages * PAGE_SIZE, Ordering::Relaxed);
    // The map of the heap's frames, itself in frames it marks as the heap's.
    {
        let mut f = FRAMES.lock();
        let Some(a) = f.as_mut() else { panic!("no frame allocator") };
        let words = a.index_limit().div_ceil(64) as u64;
        let pages = (words * 8).div_ceil(PAGE_SIZE);
        let Some(pa) = a.alloc_contiguous(pages, PAGE_SIZE) else { panic!("no room for the kernel heap's frame map") };
        // SAFETY: the run was just taken from the allocator for this map alone; the direct map
        // covers it (the final page tables are active).
        unsafe { core::ptr::write_bytes(phys_to_virt(pa) as *mut u8, 0, (pages * PAGE_SIZE) as usize) };
        HEAP_MAP_WORDS.store(words, Ordering::Release);
        HEAP_MAP.store(phys_to_virt(pa), Ordering::Release);
        mark(a, pa, pages, true);
        HELD.fetch_add(pages * PAGE_SIZE, Ordering::Relaxed);
    }
    {
        let mut h = HEAP.heap.lock();
        let span = Span::from_base_size(base as *mut u8, (heap_pages * PAGE_SIZE) as usize);
        // SAFETY: the window's first pages were just mapped writable for the heap alone, and
        // are never unmapped.
        h.boot = unsafe { h.talc.claim(span) }.unwrap_or_else(|()| panic!("the kernel heap's first megabyte is too small"));
    }

    MemInfo {
        trampoline,
        usable,
        free_frames: FRAMES.lock().as_ref().map_or(0, |a| a.free_frames()),
        heap: Range::new(base, base + heap_pages * PAGE_SIZE),
    }
}

/// The ranges the direct map maps write-back ([`direct_ranges`]), kept for the consistency
/// check.
static DIRECT_MEMORY: spin::Once<RangeSet<256>> = spin::Once::new();

/// The ranges of memory the direct map maps write-back (empty before it is built).
pub fn direct_memory() -> &'static [Range] {
    DIRECT_MEMORY.get().map_or(&[][..], |s| s.as_slice())
}

/// What the direct map covers: memory write-back (the memory map's memory, `MemKind::is_memory`,
/// the first megabyte, and the boot information and modules where a memory map too long for
/// `BootInfo` lost the entry that held them), and the rest of the ranges the memory map names
/// uncached — reserved, framebuffer, defective, unknown — and so the holes of the 2 MiB units
/// either touches (`paging::build_kernel_space`: a unit partly memory is mapped page by page).
/// A device's registers there, which its driver or the kernel maps uncached, are never also
/// mapped write-back, which the manuals forbid (two memory types for one page), and no
/// speculative read reaches defective RAM. The consistency check holds the direct map to this
/// (`check.rs`).
pub fn direct_ranges(bi: &rl4_arch::bootinfo::BootInfo) -> (RangeSet<256>, RangeSet<256>) {
    let mut direct: RangeSet<256> = RangeSet::new();
    let mut uncached: RangeSet<256> = RangeSet::new();
    for e in bi.memory_map() {
        let _ = if e.kind.is_memory() { direct.insert(e.range) } else { uncached.insert(e.range) };
    }
    // Where the map names a range twice, the other kind wins, page by page, as in the frame
    // allocator (`memmap::free_pages`): reserved or defective memory that a usable entry
    // overlaps is not mapped write-back (a review of the thirty-seventh session). (Were the
    // set too full to split a range, that part stays write-back.)
    for r in uncached.iter() {
        let _ = direct.remove_pages_covering(r);
    }
    // But what the kernel itself reads stays write-back wherever a memory entry names it: its
    // image (also mapped write-back at its own address) and the boot information and modules,
    // should a loader have put them in a page the map gives to a reserved range too (the
    // third diff review).
    let kernel = rl4_arch::kernel_phys_range();
    for r in core::iter::once(&kernel).chain(bi.info_ranges()) {
        for e in bi.memory_map().iter().filter(|e| e.kind.is_memory()) {
            let (s, t) = (r.start.max(e.range.start), r.end.min(e.range.end));
            if s < t {
                let _ = direct.insert(Range::new(rl4_core::align_down(s, PAGE_SIZE), rl4_core::align_up(t, PAGE_SIZE)));
            }
        }
    }
    let _ = direct.insert(Range::new(0, 0x10_0000));
    // The boot information and the modules are read after the switch (the root task's image,
    // the RSDP copy inside the Multiboot2 information): mapped even where a memory map too long
    // for `BootInfo` lost the entry that held them. Only then: a range in a hole of a complete
    // map is no RAM the loader used, and would be mapped write-back over whatever is there.
    for r in bi.info_ranges().iter().filter(|_| bi.memmap_dropped > 0) {
        let _ = direct.insert(Range::new(rl4_core::align_down(r.start, PAGE_SIZE), rl4_core::align_up(r.end, PAGE_SIZE).min(rl4_arch::layout::DIRECT_MAP_SIZE)));
    }
    (direct, uncached)
}

/// One frame from the allocator (any address; the direct map covers all of RAM), the
/// caller's until it gives it back with [`free_frame`].
pub fn alloc_frame() -> Option<OwnedFrame> {
    Frames.alloc_frame()
}

/// Frames kept for the allocations of the system calls under way, per CPU that may run one:
/// every allocation a call makes is fallible but for a few bounded ones (`must_not_fail`,
/// docs/memory.md), which take a few pages at most and which these frames serve.
const CALL_FRAMES_PER_CPU: u64 = 16;

/// Free frames a system call that allocates kernel memory needs when it starts; below that it
/// answers `OutOfMemory` at once ([`headroom`]): 256, or 16 per CPU the machine has if more.
pub fn call_floor() -> u64 {
    call_floor_for(rl4_smp::cpus::count())
}

/// [`call_floor`] on a machine of `cpus` CPUs.
pub fn call_floor_for(cpus: usize) -> u64 {
    (CALL_FRAMES_PER_CPU * cpus as u64).max(256)
}

/// Free frames that user frames and user page tables never take: they are the kernel heap's
/// (docs/memory.md, "Running out of memory"). Between [`call_floor`] and this lie as many
/// frames again, which only the heap can take, for the calls under way on every CPU.
pub fn user_floor() -> u64 {
    2 * call_floor()
}

/// A frame for a user frame object or a user page table: none if that would leave fewer than
/// [`user_floor`] frames free.
pub fn alloc_user_frame() -> Option<OwnedFrame> {
    let floor = user_floor();
    let mut f = FRAMES.lock();
    let a = f.as_mut()?;
    if a.free_frames() <= floor { None } else { a.alloc() }
}

/// Frames a user can still take now (above [`user_floor`]).
pub fn user_frames_left() -> u64 {
    free_frames().saturating_sub(user_floor())
}

/// `OutOfMemory` unless at least [`call_floor`] frames are free: checked first by every
/// system call that allocates kernel memory, which then has this CPU's reserve of arena frames
/// full ([`CPU_RESERVE`]).
pub fn headroom() -> Result<(), rl4_abi::Error> {
    // The floor first, then the reserve: other CPUs may empty the allocator in between, and a
    // call must not go on without its reserve (a review found `Ok` answered with it empty).
    if free_frames() >= call_floor() && fill_reserve() { Ok(()) } else { Err(rl4_abi::Error::OutOfMemory) }
}

/// Returns a frame to the allocator. Only `unsafe` code can make a frame that is not the
/// allocator's or is free (`OwnedFrame::from_raw`): that would be a kernel bug.
pub fn free_frame(f: OwnedFrame) {
    let pa = f.addr();
    if let Some(a) = FRAMES.lock().as_mut() {
        if let Err(e) = a.free(f) {
            panic!("freeing frame {pa:#x}: {e:?}");
        }
    }
}

/// Runs `f` on the frame allocator, unless its lock is held (the consistency check, which
/// must not wait for a lock another CPU may hold).
pub fn with_allocator<R>(f: impl FnOnce(&FrameAllocator<'static>) -> R) -> Option<R> {
    let g = FRAMES.try_lock()?;
    g.as_ref().map(f)
}

/// Free frames in the allocator.
pub fn free_frames() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |a| a.free_frames())
}

// A frame's bytes are never lent out as a Rust reference: the functions below copy into and
// out of them through raw pointers only, because a frame of a frame object may be mapped into
// user space at the same time (its tasks write it whenever they like). Holding an
// `OwnedFrame`, or a reference to one, is what makes the frame RAM of the direct map that the
// allocator will not hand to anyone else meanwhile.

/// Fills `frame` with zeros.
pub fn zero_frame(frame: &mut OwnedFrame) {
    // SAFETY: the caller owns the frame (`&mut`: nobody else reaches it), a whole 4 KiB page of
    // RAM mapped writable in the direct map.
    unsafe { core::ptr::write_bytes(phys_to_virt(frame.addr()) as *mut u8, 0, PAGE_SIZE as usize) };
}

/// Copies `bytes` into `frame`, at `offset`.
pub fn write_frame(frame: &OwnedFrame, offset: usize, bytes: &[u8]) {
    assert!(offset.checked_add(bytes.len()).is_some_and(|end| end <= PAGE_SIZE as usize));
    // SAFETY: the frame is RAM in the direct map that its owner keeps allocated while this
    // reference lives; the range stays inside it (asserted); no Rust reference to its bytes
    // exists (see above), so a raw write cannot invalidate one.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), (phys_to_virt(frame.addr()) as *mut u8).add(offset), bytes.len()) };
}

/// Reads `out.len()` 8-byte words starting at word `first` of `frame` (an IPC buffer).
#[inline]
pub fn read_frame_words(frame: &OwnedFrame, first: usize, out: &mut [u64]) {
    assert!(first.checked_add(out.len()).is_some_and(|end| end <= (PAGE_SIZE / 8) as usize));
    // SAFETY: a whole frame of RAM in the direct map, kept allocated by its owner while the
    // reference lives; the range stays inside it (asserted); `out` is kernel memory, not the
    // frame. (Its owner's task may write the words meanwhile: what is read is some value of
    // each, as with any user memory.)
    unsafe { core::ptr::copy_nonoverlapping((phys_to_virt(frame.addr()) as *const u64).add(first), out.as_mut_ptr(), out.len()) };
}

/// Writes `words` into `frame` from word `first` on (an IPC buffer).
#[inline]
pub fn write_frame_words(frame: &OwnedFrame, first: usize, words: &[u64]) {
    assert!(first.checked_add(words.len()).is_some_and(|end| end <= (PAGE_SIZE / 8) as usize));
    // SAFETY: as in `read_frame_words`.
    unsafe { core::ptr::copy_nonoverlapping(words.as_ptr(), (phys_to_virt(frame.addr()) as *mut u64).add(first), words.len()) };
}
