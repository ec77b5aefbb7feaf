//! Physical memory, the kernel address space and the kernel heap.
//!
//! Boot order: [`init`] turns the boot memory map into the frame allocator (usable RAM minus the
//! first megabyte, the kernel image, boot structures and modules, and every ACPI table), picks the
//! AP trampoline page below 1 MiB, builds the final kernel page tables and switches to them, and
//! carves the kernel heap out of the allocator.
//!
//! This is the kernel crate's one module with `unsafe`: handing the allocator its bitmap and the
//! heap its memory, both carved out of physical memory that nothing else can reach.
#![allow(unsafe_code)]

use linked_list_allocator::LockedHeap;
use rl4_arch::bootinfo::BootInfo;
use rl4_arch::layout::{BOOT_MAPPED_LIMIT, phys_to_virt};
use rl4_arch::paging::{self, DirectMapMem, FrameSource, Rights};
use rl4_arch::{cpu, println};
use rl4_core::PAGE_SIZE;
use rl4_core::frames::FrameAllocator;
use rl4_core::memmap::{MemKind, Range, RangeSet};
use spin::Mutex;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);

/// The kernel's frame source: the global allocator, limited to the first 4 GiB while the boot
/// page tables are the only ones.
pub struct Frames;

impl FrameSource for Frames {
    fn alloc_frame(&mut self) -> Option<u64> {
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
    *FRAMES.lock() = Some(FrameAllocator::new(free.as_slice(), bitmap));

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

    // Kernel heap: 1/16 of free memory, between 1 and 64 MiB, physically contiguous.
    let free_frames = FRAMES.lock().as_ref().map_or(0, |a| a.free_frames());
    let heap_pages = (free_frames / 16).clamp(256, 16384);
    let heap_at = FRAMES
        .lock()
        .as_mut()
        .and_then(|a| a.alloc_contiguous(heap_pages, PAGE_SIZE))
        .expect("no contiguous memory for the kernel heap");
    // SAFETY: the frames were just allocated for the heap alone, are mapped writable in the
    // direct map, and are never freed.
    unsafe { HEAP.lock().init(phys_to_virt(heap_at) as *mut u8, (heap_pages * PAGE_SIZE) as usize) };

    MemInfo {
        trampoline,
        usable,
        free_frames: FRAMES.lock().as_ref().map_or(0, |a| a.free_frames()),
        heap: Range::new(heap_at, heap_at + heap_pages * PAGE_SIZE),
    }
}

/// One frame from the allocator (any address; the direct map covers all of RAM).
pub fn alloc_frame() -> Option<u64> {
    Frames.alloc_frame()
}

/// Returns a frame to the allocator. A frame that is not the allocator's is a kernel bug.
pub fn free_frame(pa: u64) {
    if let Some(a) = FRAMES.lock().as_mut() {
        if let Err(e) = a.free(pa) {
            panic!("freeing frame {pa:#x}: {e:?}");
        }
    }
}

/// Free frames in the allocator.
pub fn free_frames() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |a| a.free_frames())
}

/// Fills the frame at `pa` with zeros.
pub fn zero_frame(pa: u64) {
    // SAFETY: `pa` is a frame the caller owns (just allocated), mapped writable in the direct map.
    unsafe { core::ptr::write_bytes(phys_to_virt(pa) as *mut u8, 0, PAGE_SIZE as usize) };
}

/// Copies `bytes` into the frame at `pa`, at `offset`.
pub fn write_frame(pa: u64, offset: usize, bytes: &[u8]) {
    assert!(offset + bytes.len() <= PAGE_SIZE as usize);
    // SAFETY: `pa` is a frame the caller owns, mapped writable in the direct map; the range
    // stays inside it (asserted).
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), (phys_to_virt(pa) as *mut u8).add(offset), bytes.len()) };
}

/// Copies `count` 8-byte words starting at word `first` from the frame at `src` to the frame at
/// `dst` (IPC buffers).
pub fn copy_frame_words(src: u64, dst: u64, first: usize, count: usize) {
    assert!(first + count <= (PAGE_SIZE / 8) as usize);
    // SAFETY: both are whole frames held by IPC-buffer references, mapped in the direct map;
    // the range stays inside them (asserted). A frame shared by sender and receiver makes the
    // copy overlap, which `copy` allows.
    unsafe {
        core::ptr::copy((phys_to_virt(src) as *const u64).add(first), (phys_to_virt(dst) as *mut u64).add(first), count)
    };
}
