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
use rl4_core::frames::{FrameAllocator, OwnedFrame};
use rl4_core::memmap::{MemKind, Range, RangeSet};
use talc::{ErrOnOom, Span, Talc};
use crate::count::{self, Global, GlobalSpin};

/// The kernel heap: `talc` over a virtual window that grows by mapping fresh frames at its
/// end whenever an allocation does not fit. Every object a user task can make is charged to
/// its memory budget at least as much as it takes from this heap, and the budget never
/// exceeds the frames the allocator has, so growth cannot fail because of a user.
///
/// Why `talc` (not `linked_list_allocator`, which it replaced): its free chunks are kept in
/// size bins, so an allocation and a free take constant time whatever the number of free
/// chunks; a linked list of holes sorted by address makes each free walk the list, and freeing
/// a chain of 10,000 tasks (20,000 holes) took 17 s with interrupts off (issue 17).
struct GrowingHeap {
    heap: GlobalSpin<KernelHeap>,
    top: AtomicU64,
}

struct KernelHeap {
    talc: Talc<ErrOnOom>,
    /// The heap's extent as `talc` knows it (from the window's base to `top`).
    span: Span,
}

/// Smallest growth step (pages).
const HEAP_GROW_PAGES: u64 = 64;

// SAFETY: allocation and deallocation go through the inner `Talc` under its lock; growth maps
// fresh frames right after the heap's current end before handing them to `Talc::extend`.
unsafe impl GlobalAlloc for GrowingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count::alloc(layout.size());
        let mut h = self.heap.lock();
        // SAFETY: `talc` manages only the heap window's mapped part (claimed in `init`,
        // extended below).
        if let Ok(p) = unsafe { h.talc.malloc(layout) } {
            return p.as_ptr();
        }
        let need = (layout.size() + layout.align()) as u64 + 64;
        let pages = need.div_ceil(PAGE_SIZE).max(HEAP_GROW_PAGES);
        let top = self.top.load(Ordering::Relaxed);
        if paging::map_heap(&mut Frames, top, pages).is_err() {
            return core::ptr::null_mut();
        }
        let new_top = top + pages * PAGE_SIZE;
        self.top.store(new_top, Ordering::Relaxed);
        let base = h.span.get_base_acme().map_or(core::ptr::null_mut(), |(b, _)| b);
        let old = h.span;
        // SAFETY: the pages just mapped start exactly at the heap's end (`top`), are writable
        // and used by nothing else; the new span contains the old one.
        h.span = unsafe { h.talc.extend(old, Span::new(base, new_top as *mut u8)) };
        // SAFETY: as above.
        unsafe { h.talc.malloc(layout) }.map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count::free(layout.size());
        // SAFETY: `ptr` came from `alloc` with this layout (the `GlobalAlloc` contract).
        unsafe { self.heap.lock().talc.free(core::ptr::NonNull::new_unchecked(ptr), layout) }
    }
}

#[global_allocator]
static HEAP: GrowingHeap = GrowingHeap {
    heap: GlobalSpin::new(Global::Heap, KernelHeap { talc: Talc::new(ErrOnOom), span: Span::empty() }),
    top: AtomicU64::new(0),
};

/// Bytes allocated from the heap now (what its users hold, not counting `talc`'s own
/// bookkeeping).
pub fn heap_in_use() -> u64 {
    HEAP.heap.lock().talc.get_counters().allocated_bytes as u64
}

/// [`heap_in_use`], unless the heap's lock is held (the consistency check, which must not wait
/// for a lock another CPU may hold).
pub fn try_heap_in_use() -> Option<u64> {
    HEAP.heap.try_lock().map(|h| h.talc.get_counters().allocated_bytes as u64)
}

/// Bytes the heap spans now.
pub fn heap_size() -> u64 {
    HEAP.top.load(Ordering::Relaxed).saturating_sub(rl4_arch::layout::HEAP_BASE)
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

/// What memory set-up found.
pub struct MemInfo {
    pub trampoline: u64,
    pub usable: u64,
    pub free_frames: u64,
    pub heap: Range,
}

fn reserve(set: &mut RangeSet<256>, r: Range, what: &str) {
    if set.remove_pages_covering(r).is_err() {
        // The set is full only with an absurdly fragmented map; failing to reserve would risk
        // handing out something in use, so this is fatal.
        panic!("memory map too fragmented while reserving {what} {:#x}..{:#x}", r.start, r.end);
    }
}

pub fn init(bi: &BootInfo) -> MemInfo {
    let mut free: RangeSet<256> = RangeSet::new();
    let mut usable = 0;
    for e in bi.memory_map() {
        if e.kind == MemKind::Usable {
            usable += e.range.len();
            if free.insert_pages_within(e.range).is_err() {
                println!("memory: too many usable ranges, ignoring {:#x}..{:#x}", e.range.start, e.range.end);
            }
        }
    }
    // Everything in use before the allocator exists.
    reserve(&mut free, rl4_arch::kernel_phys_range(), "the kernel image");
    for r in bi.info_ranges() {
        reserve(&mut free, *r, "boot information");
    }
    if let Some(rsdp) = bi.rsdp {
        let mut out = [Range::default(); rl4_smp::acpi::MAX_TABLE_RANGES];
        let (n, skipped) = rl4_smp::acpi::table_ranges(&DirectMapMem, rsdp, &mut out);
        for r in &out[..n] {
            reserve(&mut free, *r, "an ACPI table");
        }
        if skipped > 0 {
            println!("memory: {skipped} ACPI table(s) not readable at boot; they must lie in reserved memory");
        }
    }
    // The trampoline: the highest usable page below 1 MiB that nothing above claimed. Then the
    // whole first megabyte stays out of the allocator (BIOS data, EBDA, option ROMs).
    let mut low = free.clone();
    let _ = low.remove(Range::new(0, 0x1000));
    let _ = low.remove(Range::new(0x10_0000, u64::MAX));
    let Some(trampoline) = low.iter().last().map(|r| r.end - PAGE_SIZE) else {
        panic!("no usable page below 1 MiB for the AP trampoline")
    };
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
    *FRAMES.lock() = Some(allocator);

    // Final kernel page tables: the direct map covers every range the memory map names.
    let f = cpu::Features::read();
    let mut direct: RangeSet<256> = RangeSet::new();
    for e in bi.memory_map() {
        let _ = direct.insert(e.range);
    }
    let _ = direct.insert(Range::new(0, 0x10_0000));
    let [text, rodata, data] = rl4_arch::kernel_sections();
    let image = [
        (text.0, text.1, Rights::ReadExecute),
        (rodata.0, rodata.1, Rights::Read),
        (data.0, data.1, Rights::ReadWrite),
    ];
    let pml4 = paging::build_kernel_space(&mut Frames, direct.as_slice(), &image, f.page1g, f.nx)
        .unwrap_or_else(|e| panic!("building the kernel page tables failed: {e:?}"));
    paging::activate(pml4, f.nx);

    // Kernel heap: starts with 1 MiB in its window and grows on demand.
    let base = rl4_arch::layout::HEAP_BASE;
    let heap_pages = 256;
    if let Err(e) = paging::map_heap(&mut Frames, base, heap_pages) {
        panic!("mapping the kernel heap: {e:?}");
    }
    HEAP.top.store(base + heap_pages * PAGE_SIZE, Ordering::Relaxed);
    {
        let mut h = HEAP.heap.lock();
        let span = Span::from_base_size(base as *mut u8, (heap_pages * PAGE_SIZE) as usize);
        // SAFETY: the window's first pages were just mapped writable for the heap alone, and
        // are never unmapped.
        h.span = unsafe { h.talc.claim(span) }.unwrap_or_else(|()| panic!("the kernel heap's first megabyte is too small"));
    }

    MemInfo {
        trampoline,
        usable,
        free_frames: FRAMES.lock().as_ref().map_or(0, |a| a.free_frames()),
        heap: Range::new(base, base + heap_pages * PAGE_SIZE),
    }
}

/// One frame from the allocator (any address; the direct map covers all of RAM), the
/// caller's until it gives it back with [`free_frame`].
pub fn alloc_frame() -> Option<OwnedFrame> {
    Frames.alloc_frame()
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

/// Copies `count` 8-byte words starting at word `first` from `src` to `dst` (IPC buffers).
#[inline]
pub fn copy_frame_words(src: &OwnedFrame, dst: &OwnedFrame, first: usize, count: usize) {
    assert!(first.checked_add(count).is_some_and(|end| end <= (PAGE_SIZE / 8) as usize));
    // SAFETY: both are whole frames of RAM in the direct map, kept allocated by their owners
    // while these references live; the range stays inside them (asserted). A frame shared by
    // sender and receiver makes the copy overlap, which `copy` allows.
    unsafe {
        core::ptr::copy(
            (phys_to_virt(src.addr()) as *const u64).add(first),
            (phys_to_virt(dst.addr()) as *mut u64).add(first),
            count,
        )
    };
}
