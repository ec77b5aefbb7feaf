//! Kernel page tables, built with the `x86_64` crate's mapper over the direct map.
//!
//! [`build_kernel_space`] makes the final kernel address space (see [`crate::layout`]): the
//! direct map of every range the memory map mentions (1 GiB pages where the CPU has them and the
//! range allows, 2 MiB otherwise, 4 KiB in a unit partly memory; memory write-back, the rest
//! uncached), and the kernel image with 4 KiB pages and per-section rights
//! (text read+execute, rodata read-only, data and bss read+write, no execute). Every PML4 slot of
//! the kernel half that the kernel will ever use has its PDPT from the start, so later address
//! spaces can share the kernel half by copying PML4 entries. [`map_mmio`] and [`map_stack`] add
//! mappings at run time.
//!
//! Physical memory is typed here (`docs/memory.md`, "Typed physical memory"): frames come from
//! a [`FrameSource`] as [`OwnedFrame`]s, an address space's root table is a [`PageTableRoot`]
//! that only [`new_user_space`] (and, for the kernel's, [`build_kernel_space`]) makes, and the
//! public functions that read, write or load a table take those types. What must still take a
//! raw address is private to this module ([`mapper`]) or `unsafe` ([`map_mmio`], [`walk`],
//! [`free_user_space`]).
use crate::layout::{DIRECT_MAP, HEAP_BASE, HEAP_SIZE, KERNEL_BASE, MMIO_BASE, MMIO_SIZE, STACKS_BASE, STACKS_SIZE, phys_to_virt};
use core::sync::atomic::{AtomicU64, Ordering};
use rl4_core::memmap::{Range, RangeSet};
use rl4_core::{PAGE_SIZE, align_down, align_up};
use x86_64::registers::control::{Cr3, Cr3Flags, Cr4, Cr4Flags, Efer, EferFlags};
use x86_64::structures::paging::mapper::{MapToError, MapperFlush};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageSize, PageTable, PageTableFlags as F, PhysFrame, Size1GiB,
    Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

pub use rl4_core::frames::OwnedFrame;

/// Hands out 4 KiB frames for page tables and stacks.
pub trait FrameSource {
    /// A frame reachable through the direct map *now* (below 4 GiB until the final tables run).
    fn alloc_frame(&mut self) -> Option<OwnedFrame>;
}

/// The root table (PML4) of an address space: made only by [`new_user_space`] (a user space)
/// and [`build_kernel_space`] (the kernel's, reached through [`kernel_root`]), so a value of
/// this type is always a live PML4 whose kernel half is the kernel's, and [`load_cr3`] can be
/// safe. Neither `Copy` nor `Clone`: the address space that owns it (the kernel's `Space`)
/// frees it with [`free_user_space`]. `#[repr(transparent)]`: it costs what a `u64` costs.
/// Its field is private: no other module can make one from a number.
#[repr(transparent)]
#[derive(Debug, PartialEq, Eq)]
pub struct PageTableRoot(u64);

impl PageTableRoot {
    /// The PML4's physical address (reading it gives no access to the tables).
    #[inline(always)]
    pub fn addr(&self) -> u64 {
        self.0
    }
}

impl core::fmt::LowerHex for PageTableRoot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::LowerHex::fmt(&self.0, f)
    }
}

impl PageTableRoot {
    /// A borrow of it that [`load_cr3`] takes by value (so the address stays in a register).
    #[inline(always)]
    pub fn loadable(&self) -> RootRef<'_> {
        RootRef(self.0, core::marker::PhantomData)
    }
}

/// A `&PageTableRoot` as a plain value: made only by [`PageTableRoot::loadable`], `Copy`, and
/// valid as long as the borrow it came from (its lifetime).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootRef<'a>(u64, core::marker::PhantomData<&'a PageTableRoot>);

impl rl4_core::tlbsync::Root for RootRef<'_> {
    #[inline(always)]
    fn addr(&self) -> u64 {
        self.0
    }
}

/// What a user page maps: a frame of RAM its frame object owns, or a device page.
#[derive(Clone, Copy)]
pub enum UserFrame<'a> {
    Ram(&'a OwnedFrame),
    Device(&'a rl4_core::device::DeviceFrame),
}

struct Adapter<'a, S: FrameSource>(&'a mut S);

// SAFETY: `FrameSource::alloc_frame` returns frames that are unused and owned by the caller;
// they are zeroed here before the mapper links them into a table.
unsafe impl<S: FrameSource> FrameAllocator<Size4KiB> for Adapter<'_, S> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let f = self.0.alloc_frame()?;
        zero_frame(&f);
        // The table that links it in owns it from now on: `free_user_space` takes it back
        // (kernel tables live for good).
        Some(PhysFrame::containing_address(PhysAddr::new(f.into_raw())))
    }
}

fn zero_frame(f: &OwnedFrame) {
    // SAFETY: the caller owns the frame (just allocated: nobody else uses it) and it is mapped
    // writable in the direct map.
    unsafe { core::ptr::write_bytes(phys_to_virt(f.addr()) as *mut u8, 0, PAGE_SIZE as usize) };
}

#[derive(Clone, Copy, Debug)]
pub enum MapError {
    OutOfMemory,
    /// The virtual window (MMIO or stacks) is used up.
    WindowFull,
    /// The mapping overlaps one that exists.
    Overlap(u64),
    /// Device registers said to lie beyond the physical address space (or wrapping it).
    NotPhysical,
}

impl<S: PageSize> From<MapToError<S>> for MapError {
    fn from(e: MapToError<S>) -> Self {
        match e {
            MapToError::FrameAllocationFailed => MapError::OutOfMemory,
            MapToError::ParentEntryHugePage | MapToError::PageAlreadyMapped(_) => MapError::Overlap(0),
        }
    }
}

/// The kernel's PML4 (physical), once built.
static KERNEL_PML4: AtomicU64 = AtomicU64::new(0);
/// The same, typed, for loading it ([`kernel_root`]).
static KERNEL_ROOT: spin::Once<PageTableRoot> = spin::Once::new();
static NX: AtomicU64 = AtomicU64::new(0);

/// Whether the CPU enforces "not executable" on pages (NX, EFER.NXE set at boot): without it
/// every user page is executable whatever it was mapped as, and the page-fault error code says
/// nothing of fetches ([`crate::pte::fault_error`]).
pub fn no_execute() -> bool {
    NX.load(Ordering::Relaxed) != 0
}

fn nx() -> F {
    if NX.load(Ordering::Relaxed) != 0 { F::NO_EXECUTE } else { F::empty() }
}

/// # Safety
/// `pml4` must be the physical address of a valid PML4 that no other code mutates concurrently
/// (the caller holds the kernel page-table lock or is alone on the machine).
unsafe fn mapper(pml4: u64) -> OffsetPageTable<'static> {
    // SAFETY: per the contract, `pml4` is a live table reachable through the direct map, and
    // this mapper is its only user while it exists.
    unsafe { OffsetPageTable::new(&mut *(phys_to_virt(pml4) as *mut PageTable), VirtAddr::new(DIRECT_MAP)) }
}

/// Builds the kernel address space and returns its PML4 (not yet loaded: [`activate`]).
///
/// `direct` lists the physical ranges of memory to map at [`DIRECT_MAP`] write-back, `uncached`
/// the other ranges to map there, uncached (as are the holes of the 2 MiB units either touches);
/// `image` lists the kernel image's (virtual start, virtual end, rights) sections.
pub fn build_kernel_space(
    src: &mut impl FrameSource,
    direct: &[Range],
    uncached: &[Range],
    image: &[(u64, u64, Rights)],
    page1g: bool,
    nx_on: bool,
) -> Result<PageTableRoot, MapError> {
    NX.store(nx_on as u64, Ordering::Relaxed);
    let pml4 = src.alloc_frame().ok_or(MapError::OutOfMemory)?;
    zero_frame(&pml4);
    // The kernel's tables live for good.
    let pml4 = pml4.into_raw();
    // SAFETY: the frame was just allocated and zeroed; nobody else knows it.
    let mut m = unsafe { mapper(pml4) };
    let mut a = Adapter(src);

    // Kernel-half slots that must exist from the start (shared by every address space later).
    let mut slots: RangeSet<8> = RangeSet::new();
    let top = direct.iter().chain(uncached).map(|r| r.end).max().unwrap_or(0);
    let ds = (DIRECT_MAP >> 39) & 511;
    let _ = slots.insert(Range::new(ds, ds + align_up(top.max(1), 1 << 39) / (1 << 39)));
    for base in [HEAP_BASE, MMIO_BASE, STACKS_BASE, KERNEL_BASE] {
        let s = (base >> 39) & 511;
        let _ = slots.insert(Range::new(s, s + 1));
    }
    {
        let table = m.level_4_table_mut();
        for r in slots.iter() {
            for s in r.start..r.end {
                let f = a.allocate_frame().ok_or(MapError::OutOfMemory)?;
                table[s as usize].set_frame(f, F::PRESENT | F::WRITABLE);
            }
        }
    }

    // The direct map, in 2 MiB units (as many ranges as the kernel's set of them holds: none
    // is left out, or the frames in it would be handed out unmapped). Memory (`direct`) is
    // mapped write-back, everything else uncached — the `uncached` ranges (firmware-reserved,
    // where device registers may lie that a driver or the kernel maps uncached elsewhere: one
    // physical page of two memory types is what the manuals forbid) and the holes of a unit
    // they or memory touch: a unit wholly memory as one write-back page, a unit without
    // memory as one uncached page (1 GiB pages for whole GiBs of either), and a unit of both,
    // or of memory and a hole, page by page (4 KiB). The first unit always page by page: the
    // fixed-range MTRRs type the first megabyte (video memory, ROMs) in 4 to 64 KiB pieces,
    // and a large page over pieces of different types is undefined (a review of the
    // thirty-seventh session; Linux maps it so too).
    let mut memory_set: RangeSet<256> = RangeSet::new();
    let mut units: RangeSet<256> = RangeSet::new();
    for (r, is_memory) in direct.iter().map(|r| (r, true)).chain(uncached.iter().map(|r| (r, false))) {
        if r.end <= r.start {
            continue;
        }
        if is_memory {
            memory_set.insert(*r).expect("the direct map's ranges fit the set they come from");
        }
        units.insert(Range::new(align_down(r.start, 1 << 21), align_up(r.end, 1 << 21))).expect("the direct map's ranges fit the set they come from");
    }
    let wb = F::PRESENT | F::WRITABLE | F::GLOBAL | nx();
    let uc = wb | F::NO_CACHE | F::WRITE_THROUGH;
    // The memory range that `a` lies in or is below (the set is sorted, disjoint and merges
    // adjacent ranges): `a..b` holds memory if it starts before `b`, and is all memory if it
    // holds `a..b` whole.
    let at = |a: u64| {
        let m = memory_set.as_slice();
        m.get(m.partition_point(|r| r.end <= a)).copied()
    };
    let some_memory = |a: u64, b: u64| at(a).is_some_and(|r| r.start < b);
    let all_memory = |a: u64, b: u64| at(a).is_some_and(|r| r.start <= a && b <= r.end);
    for r in units.iter() {
        let mut pa = r.start;
        while pa < r.end {
            if page1g && pa != 0 && pa % Size1GiB::SIZE == 0 && pa + Size1GiB::SIZE <= r.end {
                let end = pa + Size1GiB::SIZE;
                let flags = if all_memory(pa, end) {
                    Some(wb)
                } else if !some_memory(pa, end) {
                    Some(uc)
                } else {
                    None
                };
                if let Some(flags) = flags {
                    let page = Page::<Size1GiB>::containing_address(VirtAddr::new(phys_to_virt(pa)));
                    let frame = PhysFrame::<Size1GiB>::containing_address(PhysAddr::new(pa));
                    // SAFETY: maps physical memory at its direct-map address, which nothing else uses.
                    unsafe { m.map_to(page, frame, flags, &mut a) }?.ignore();
                    pa = end;
                    continue;
                }
            }
            let end = pa + Size2MiB::SIZE;
            if pa != 0 && (all_memory(pa, end) || !some_memory(pa, end)) {
                let flags = if some_memory(pa, end) { wb } else { uc };
                let page = Page::<Size2MiB>::containing_address(VirtAddr::new(phys_to_virt(pa)));
                let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(pa));
                // SAFETY: as above.
                unsafe { m.map_to(page, frame, flags, &mut a) }?.ignore();
            } else {
                for p in (pa..end).step_by(PAGE_SIZE as usize) {
                    let flags = if some_memory(p, p + PAGE_SIZE) { wb } else { uc };
                    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(phys_to_virt(p)));
                    let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(p));
                    // SAFETY: as above.
                    unsafe { m.map_to(page, frame, flags, &mut a) }?.ignore();
                }
            }
            pa = end;
        }
    }

    // The kernel image, page by page with its rights.
    for &(start, end, rights) in image {
        let mut va = align_down(start, PAGE_SIZE);
        while va < end {
            let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va));
            let frame = PhysFrame::containing_address(PhysAddr::new(crate::boot::image_phys(va)));
            // SAFETY: maps the kernel image at the addresses it was linked for.
            unsafe { m.map_to(page, frame, rights.flags() | F::GLOBAL, &mut a) }?.ignore();
            va += PAGE_SIZE;
        }
    }
    Ok(PageTableRoot(pml4))
}

/// Access rights of a kernel mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rights {
    ReadExecute,
    Read,
    ReadWrite,
}

impl Rights {
    fn flags(self) -> F {
        match self {
            Rights::ReadExecute => F::PRESENT,
            Rights::Read => F::PRESENT | nx(),
            Rights::ReadWrite => F::PRESENT | F::WRITABLE | nx(),
        }
    }
}

/// Turns on the paging features rl4 relies on (NX, global pages, write protection in ring 0)
/// and loads `root`, the kernel's tables from now on. Called once, on the boot CPU (the others
/// start on them: `rl4_smp::boot`).
pub fn activate(root: PageTableRoot, nx_on: bool) {
    // The first root given stays the kernel's (a second call loads it again).
    let pml4 = KERNEL_ROOT.call_once(|| root).0;
    KERNEL_PML4.store(pml4, Ordering::Release);
    BOOT_MAP_ONLY.store(false, Ordering::Relaxed);
    // SAFETY: `pml4` maps the kernel image (this code), its stacks and the direct map, built by
    // `build_kernel_space`; NXE is set before a table with NX bits is loaded; PGE only changes
    // TLB retention.
    unsafe {
        if nx_on {
            Efer::update(|e| e.insert(EferFlags::NO_EXECUTE_ENABLE));
        }
        Cr4::update(|c| c.insert(Cr4Flags::PAGE_GLOBAL));
        Cr3::write(PhysFrame::containing_address(PhysAddr::new(pml4)), Cr3Flags::empty());
    }
}

/// Physical address of the kernel PML4 (0 before `activate`).
pub fn kernel_pml4() -> u64 {
    KERNEL_PML4.load(Ordering::Acquire)
}

/// The kernel's root table, for loading it. Panics before [`activate`] (a kernel bug: nothing
/// loads page tables before the kernel's own exist).
pub fn kernel_root() -> &'static PageTableRoot {
    KERNEL_ROOT.get().expect("the kernel page tables are active")
}

static PT_LOCK: spin::Mutex<()> = spin::Mutex::new(());
static MMIO_NEXT: AtomicU64 = AtomicU64::new(MMIO_BASE);
static STACK_NEXT: AtomicU64 = AtomicU64::new(STACKS_BASE);

/// Maps `len` bytes of device registers at physical `pa`, uncached, and returns the virtual
/// address of `pa`.
///
/// # Safety
/// `pa..pa + len` holds a device's registers (from the firmware's tables), not RAM: an
/// uncached alias of RAM the kernel uses, or of a frame it hands out, would break the
/// ownership of frames ([`OwnedFrame`]) and the caches' coherence.
pub unsafe fn map_mmio(src: &mut impl FrameSource, pa: u64, len: u64) -> Result<u64, MapError> {
    // Beyond this CPU's physical addresses, or a block that wraps: nothing to map (an entry
    // with a bit at or above MAXPHYADDR makes every access through it fault, one at or above
    // bit 52 panics in the `x86_64` crate, and a wrapped size would map nothing).
    let end = pa.checked_add(len).filter(|&e| len != 0 && e <= 1 << crate::cpu::phys_bits()).ok_or(MapError::NotPhysical)?;
    let start = align_down(pa, PAGE_SIZE);
    let size = align_up(end, PAGE_SIZE) - start;
    let _g = PT_LOCK.lock();
    let va = MMIO_NEXT.fetch_add(size, Ordering::Relaxed);
    if va + size > MMIO_BASE + MMIO_SIZE {
        return Err(MapError::WindowFull);
    }
    // SAFETY: the kernel PML4 is live; `PT_LOCK` serialises all run-time edits.
    let mut m = unsafe { mapper(kernel_pml4()) };
    let mut a = Adapter(src);
    let flags = F::PRESENT | F::WRITABLE | F::NO_CACHE | F::WRITE_THROUGH | F::GLOBAL | nx();
    for off in (0..size).step_by(PAGE_SIZE as usize) {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va + off));
        let frame = PhysFrame::containing_address(PhysAddr::new(start + off));
        // SAFETY: fresh virtual addresses in the MMIO window; the frame is device memory.
        let f: MapperFlush<Size4KiB> = unsafe { m.map_to(page, frame, flags, &mut a) }?;
        f.flush();
    }
    Ok(va + (pa - start))
}

/// Allocates and maps a kernel stack of `pages` pages above an unmapped guard page, and returns
/// its top (16-byte aligned).
pub fn map_stack(src: &mut impl FrameSource, pages: u64) -> Result<u64, MapError> {
    let size = (pages + 1) * PAGE_SIZE;
    let _g = PT_LOCK.lock();
    let base = STACK_NEXT.fetch_add(size, Ordering::Relaxed);
    if base + size > STACKS_BASE + STACKS_SIZE {
        return Err(MapError::WindowFull);
    }
    // SAFETY: the kernel PML4 is live; `PT_LOCK` serialises all run-time edits.
    let mut m = unsafe { mapper(kernel_pml4()) };
    let flags = F::PRESENT | F::WRITABLE | F::GLOBAL | nx();
    // The first page stays unmapped: the guard.
    for i in 1..=pages {
        let f = src.alloc_frame().ok_or(MapError::OutOfMemory)?;
        zero_frame(&f);
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(base + i * PAGE_SIZE));
        let mut a = Adapter(&mut *src);
        // Kernel stacks live for good: the mapping owns the frame.
        let pa = f.into_raw();
        // SAFETY: fresh virtual addresses in the stack window, backed by a fresh frame.
        unsafe { m.map_to(page, PhysFrame::containing_address(PhysAddr::new(pa)), flags, &mut a) }?.flush();
    }
    Ok(base + size)
}

/// Maps `pages` fresh zeroed frames at `va` in the heap window (the caller owns that range).
pub fn map_heap(src: &mut impl FrameSource, va: u64, pages: u64) -> Result<(), MapError> {
    if va < HEAP_BASE || va + pages * PAGE_SIZE > HEAP_BASE + HEAP_SIZE {
        return Err(MapError::WindowFull);
    }
    let _g = PT_LOCK.lock();
    // SAFETY: the kernel PML4 is live; `PT_LOCK` serialises all run-time edits.
    let mut m = unsafe { mapper(kernel_pml4()) };
    let flags = F::PRESENT | F::WRITABLE | F::GLOBAL | nx();
    for i in 0..pages {
        let f = src.alloc_frame().ok_or(MapError::OutOfMemory)?;
        zero_frame(&f);
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va + i * PAGE_SIZE));
        let mut a = Adapter(&mut *src);
        // The heap never shrinks: the mapping owns the frame.
        let pa = f.into_raw();
        // SAFETY: fresh virtual addresses of the heap window, backed by a fresh frame.
        unsafe { m.map_to(page, PhysFrame::containing_address(PhysAddr::new(pa)), flags, &mut a) }?.flush();
    }
    Ok(())
}

/// Whether the kernel address `va` is mapped in the current address space (for the backtrace
/// walker and the direct-map reader). A walk of the kernel half that only reads, one entry
/// at a time: another CPU may be editing the same root's user half meanwhile (`map_user`,
/// `detach_user_half`) or the kernel half's heap window (`map_heap`, under `PT_LOCK`), so no
/// reference to a whole table is made (before the thirty-fourth session this made the
/// `x86_64` crate's mapper, a `&mut` over the root that such an edit aliased: a review found
/// it).
pub fn is_mapped(va: u64) -> bool {
    leaf(va).is_some()
}

/// Whether the kernel address `va` is mapped uncached (`Some(true)`), write-back
/// (`Some(false)`) or not at all, in the current address space (a walk as [`is_mapped`]'s).
pub fn mapped_uncached(va: u64) -> Option<bool> {
    let uc = (F::NO_CACHE | F::WRITE_THROUGH).bits();
    leaf(va).map(|e| e & uc == uc)
}

/// The entry that maps the kernel address `va` in the current address space, if one does
/// ([`is_mapped`]).
fn leaf(va: u64) -> Option<u64> {
    let pml4 = Cr3::read().0.start_address().as_u64();
    if va < 0xffff_8000_0000_0000 || pml4 == 0 {
        return None;
    }
    let mut table = pml4;
    for shift in [39u32, 30, 21, 12] {
        let at = phys_to_virt(table) + ((va >> shift) & 511) * 8;
        // SAFETY: `table` is a page-table frame of the kernel half (the root CR3 holds, or one
        // a present entry of the kernel half names: those are never freed), reached through
        // the direct map; the entry is read once, whole (an aligned 8-byte load), and an edit
        // meanwhile can only add a mapping (the kernel half's are never removed), which makes
        // the answer stale at worst.
        let e = unsafe { core::ptr::read_volatile(at as *const u64) };
        if e & 1 == 0 {
            return None;
        }
        // A huge page (bit 7 in a PDPT or PD entry) maps `va`.
        if shift == 12 || (shift != 39 && e & (1 << 7) != 0) {
            return Some(e);
        }
        table = e & 0x000f_ffff_ffff_f000;
    }
    None
}

static BOOT_MAP_ONLY: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(true);

/// Reads physical memory through the direct map; before [`activate`] only the first 4 GiB
/// (what the boot page tables map) are readable.
pub struct DirectMapMem;

impl crate::bootinfo::PhysMem for DirectMapMem {
    fn read(&self, pa: u64, buf: &mut [u8]) -> Option<()> {
        let end = pa.checked_add(buf.len() as u64)?;
        let limit = if BOOT_MAP_ONLY.load(Ordering::Relaxed) {
            crate::layout::BOOT_MAPPED_LIMIT
        } else {
            crate::layout::DIRECT_MAP_SIZE
        };
        if end > limit || !(pa & !(PAGE_SIZE - 1)..end).step_by(PAGE_SIZE as usize).all(|a| BOOT_MAP_ONLY.load(Ordering::Relaxed) || is_mapped(phys_to_virt(a))) {
            return None;
        }
        // SAFETY: every page of the range is mapped in the direct map (checked above, from the
        // page that holds `pa`, which need not be aligned); reading
        // RAM or firmware tables has no side effects.
        unsafe { core::ptr::copy_nonoverlapping(phys_to_virt(pa) as *const u8, buf.as_mut_ptr(), buf.len()) };
        Some(())
    }
}

/// Whether only the boot page tables (first 4 GiB) are usable yet.
pub fn boot_map_only() -> bool {
    BOOT_MAP_ONLY.load(Ordering::Relaxed)
}

/// Calls `f` with each return address of the frame-pointer chain that starts at `fp`, up to
/// `max` frames. Every frame pointer is checked to be mapped, aligned and growing first.
pub fn backtrace(mut fp: u64, max: usize, mut f: impl FnMut(usize, u64)) {
    for i in 0..max {
        if fp % 8 != 0 || !is_mapped(fp) || !is_mapped(fp + 8) {
            return;
        }
        // SAFETY: `fp` and `fp + 8` are mapped, aligned kernel addresses (checked above), so
        // the reads cannot fault; the values are only printed, never trusted.
        let (next, ret) = unsafe { (*(fp as *const u64), *((fp + 8) as *const u64)) };
        if ret == 0 {
            return;
        }
        f(i, ret);
        if next <= fp {
            return;
        }
        fp = next;
    }
}

/// Turns on, for this CPU, the protections the CPU offers: SMEP (no kernel execution of user
/// pages), SMAP (no kernel access to user pages outside the user-copy routine) and PCIDs.
pub fn enable_protection(smep: bool, smap: bool, pcid: bool) {
    // SAFETY: SMEP and SMAP only restrict the kernel (which never runs user code and touches
    // user memory only through `entry::copy_*_user`, which opens access with `stac`); PCIDE is
    // set while CR3's PCID field is 0 (the kernel tables), as the architecture requires.
    unsafe {
        Cr4::update(|c| {
            c.set(Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION, smep);
            c.set(Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION, smap);
            c.set(Cr4Flags::PCID, pcid);
        });
    }
    crate::entry::set_smap(smap);
}

/// A new user address space: a zeroed PML4 whose kernel half (entries 256..511) is the kernel's.
/// The space owns the PML4 until [`free_user_space`].
pub fn new_user_space(src: &mut impl FrameSource) -> Result<PageTableRoot, MapError> {
    let pml4 = src.alloc_frame().ok_or(MapError::OutOfMemory)?;
    zero_frame(&pml4);
    let pml4 = pml4.into_raw();
    let k = kernel_pml4();
    // SAFETY: both are live page-table frames in the direct map; the new one is ours alone, and
    // the kernel's upper entries never change after boot (every slot was created then).
    unsafe {
        let dst = &mut *(phys_to_virt(pml4) as *mut PageTable);
        let kt = &*(phys_to_virt(k) as *const PageTable);
        for i in 256..512 {
            dst[i] = kt[i].clone();
        }
    }
    Ok(PageTableRoot(pml4))
}

/// Maps `frame` at user address `va` of the space `root`, readable, and writable / executable
/// as asked; a device page uncached and never executable ([`crate::pte::user_pte_flags`]).
/// The caller keeps the frame's owner alive (the space's record of its mappings holds it) until
/// [`unmap_user`] and the TLB shoot-down after it.
///
/// # Safety
/// `root` is a user space's root (made by [`new_user_space`], not [`kernel_root`]), not yet
/// freed, and the caller holds the lock that serialises every change to its tables (the
/// kernel's `Space::maps`): two changes at once would make two `&mut` to one table and could
/// both link a new table into one entry, losing one.
#[allow(unsafe_code)]
pub unsafe fn map_user(src: &mut impl FrameSource, root: &PageTableRoot, va: u64, frame: UserFrame<'_>, write: bool, exec: bool) -> Result<(), MapError> {
    let (pa, device) = match frame {
        UserFrame::Ram(f) => (f.addr(), false),
        UserFrame::Device(d) => (d.addr(), true),
    };
    debug_assert!(va < crate::layout::USER_END && va % PAGE_SIZE == 0 && pa % PAGE_SIZE == 0);
    if va >= crate::layout::USER_END {
        return Err(MapError::Overlap(va));
    }
    // SAFETY: `root` is a live user space whose lock the caller holds (this function's
    // contract).
    let mut m = unsafe { mapper(root.0) };
    let flags = crate::pte::user_pte_flags(write, exec, device, NX.load(Ordering::Relaxed) != 0);
    let parent = F::PRESENT | F::WRITABLE | F::USER_ACCESSIBLE;
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va));
    let frame = PhysFrame::containing_address(PhysAddr::new(pa));
    let mut a = Adapter(src);
    // SAFETY: a user page of this space mapped to a frame the caller owns a reference to; the
    // kernel half is never touched (va < USER_END).
    match unsafe { m.map_to_with_table_flags(page, frame, flags, parent, &mut a) } {
        Ok(f) => {
            f.ignore();
            Ok(())
        }
        Err(MapToError::PageAlreadyMapped(_)) | Err(MapToError::ParentEntryHugePage) => Err(MapError::Overlap(va)),
        Err(MapToError::FrameAllocationFailed) => Err(MapError::OutOfMemory),
    }
}

/// How many page tables [`map_user`] would add to `root` to map user address `va`: 3 if the
/// PML4 entry is empty, 2 if the PDPT's is, 1 if the page directory's is, else 0 (also when an
/// entry on the way maps a huge page: the mapping is then refused without a table).
///
/// # Safety
/// As for [`map_user`]: the caller holds the lock of `root`'s tables (and keeps it until the
/// mapping is made, so that the count still holds then).
#[allow(unsafe_code)]
pub unsafe fn tables_missing(root: &PageTableRoot, va: u64) -> usize {
    let mut table = root.0;
    for (missing, shift) in [(3usize, 39u32), (2, 30), (1, 21)] {
        // SAFETY: `table` is a page-table frame of this live user space (its root, or one its
        // present entries name), read under the caller's lock; reached through the direct map.
        let t = unsafe { &*(phys_to_virt(table) as *const PageTable) };
        let e = &t[((va >> shift) & 511) as usize];
        if !e.flags().contains(F::PRESENT) {
            return missing;
        }
        if e.flags().contains(F::HUGE_PAGE) {
            return 0;
        }
        table = e.addr().as_u64();
    }
    0
}

/// Removes the mapping at user address `va`; returns the frame it mapped. The caller flushes
/// the TLBs that may hold it.
///
/// # Safety
/// As for [`map_user`]: the caller holds the lock of `root`'s tables.
#[allow(unsafe_code)]
pub unsafe fn unmap_user(root: &PageTableRoot, va: u64) -> Option<u64> {
    if va >= crate::layout::USER_END {
        return None;
    }
    // SAFETY: as in `map_user`.
    let mut m = unsafe { mapper(root.0) };
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va));
    m.unmap(page).ok().map(|(f, flush)| {
        flush.ignore();
        f.start_address().as_u64()
    })
}

/// The page tables of a user space's lower half, unlinked from its PML4 by [`detach_user_half`]
/// and not yet freed ([`free_detached`]): the PML4 entries they hung from, kept until no CPU
/// can still walk them.
#[must_use = "the detached tables are freed with `free_detached` (dropped, they leak)"]
pub struct DetachedTables([u64; 256]);

/// Unlinks every page table of the lower (user) half of `root` from its PML4, which stays
/// valid with an empty user half: the tables' mappings are gone for every walk that starts
/// after this, and the caller makes every CPU drop what it cached of them (the kernel's TLB
/// shoot-down) before it frees them with [`free_detached`].
///
/// # Safety
/// As for [`map_user`]: `root` is a live user space's root and the caller holds the lock of its
/// tables.
#[allow(unsafe_code)]
pub unsafe fn detach_user_half(root: &PageTableRoot) -> DetachedTables {
    // SAFETY: `root` is a live user space whose lock the caller holds (this function's
    // contract): no other CPU changes its tables meanwhile; a CPU's page walk reads the entries, and an
    // aligned 8-byte store is atomic for it.
    let l4 = unsafe { &mut *(phys_to_virt(root.0) as *mut PageTable) };
    let mut kept = [0u64; 256];
    for (i, e) in l4.iter_mut().take(256).enumerate() {
        if e.flags().contains(F::PRESENT) {
            kept[i] = e.addr().as_u64();
            e.set_unused();
        }
    }
    DetachedTables(kept)
}

impl DetachedTables {
    /// Visits every table frame below the PML4 entries kept (PDPTs, page directories, page
    /// tables), each after the tables below it.
    fn each(&self, mut f: impl FnMut(u64)) {
        let table = |pa: u64| {
            // SAFETY: `pa` is a page-table frame of this space's user half, unlinked but not
            // yet freed (the type's owner frees it, once, after this).
            unsafe { &*(phys_to_virt(pa) as *const PageTable) }
        };
        for &pdpt in self.0.iter().filter(|&&pa| pa != 0) {
            for l3 in table(pdpt).iter() {
                if !l3.flags().contains(F::PRESENT) || l3.flags().contains(F::HUGE_PAGE) {
                    continue;
                }
                let pd = l3.addr().as_u64();
                for l2 in table(pd).iter() {
                    if l2.flags().contains(F::PRESENT) && !l2.flags().contains(F::HUGE_PAGE) {
                        f(l2.addr().as_u64());
                    }
                }
                f(pd);
            }
            f(pdpt);
        }
    }
}

/// Frees tables [`detach_user_half`] unlinked, handing each frame to `free`.
///
/// # Safety
/// Since the tables were detached, every CPU that may have cached anything of them (had the
/// space loaded, or holds translations of its PCID) has dropped it: the kernel's TLB shoot-down
/// of that space ran to completion after the detaching.
pub unsafe fn free_detached(d: DetachedTables, mut free: impl FnMut(OwnedFrame)) {
    d.each(|pa| {
        // SAFETY: `pa` is a table frame of this space: `Adapter` gave up its `OwnedFrame` when
        // linking it in, it was unlinked once (`detach_user_half`), and no walker can reach it
        // any more (the caller's contract), so this is its only owner.
        free(unsafe { OwnedFrame::from_raw(pa) })
    });
}

/// Frees the page-table frames of a user space's lower half and its PML4 (not the frames it
/// maps: those belong to their frame objects), handing each to `free`.
///
/// # Safety
/// No CPU has `root` loaded or can load it again (the kernel's shoot-down with `destroy` has
/// run), and nothing uses `root` after this call (the caller is its owner's destructor): its
/// tables go back to the allocator.
pub unsafe fn free_user_space(root: &PageTableRoot, mut free: impl FnMut(OwnedFrame)) {
    // Unlinked and freed at once: no CPU can walk them (the caller's contract).
    // SAFETY: nothing else uses `root` any more (the caller's contract): no change to its
    // tables can run at the same time.
    let tables = unsafe { detach_user_half(root) };
    // SAFETY: nothing caches this space's tables (the caller's contract covers the detaching).
    unsafe { free_detached(tables, &mut free) };
    // SAFETY: the PML4 was given up by `new_user_space` and is freed once, here.
    free(unsafe { OwnedFrame::from_raw(root.0) });
}

/// What [`walk`] meets.
#[derive(Clone, Copy, Debug)]
pub enum Visit {
    /// A page-table frame below the PML4 (`level` 3 = PDPT, 2 = PD, 1 = PT).
    Table { pa: u64, level: u8 },
    /// A present mapping of `size` bytes at `va`.
    Leaf { va: u64, pa: u64, size: u64, write: bool, exec: bool, user: bool, uncached: bool },
}

/// Visits every page table below PML4 slots `slots` of the PML4 at `pml4` (`0..256`: the user
/// half, `256..512`: the kernel's) and every present mapping there, for the kernel's
/// consistency check.
///
/// # Safety
/// No CPU may change these tables during the walk (the caller has stopped the others and
/// changes none itself).
pub unsafe fn walk(root: &PageTableRoot, slots: core::ops::Range<usize>, mut f: impl FnMut(Visit)) {
    let table = |pa: u64| {
        // SAFETY: `pa` is a live page-table frame of this tree, in the direct map, and nobody
        // writes it during the walk (the caller's contract).
        unsafe { &*(phys_to_virt(pa) as *const PageTable) }
    };
    let sign = |va: u64| if va & (1 << 47) != 0 { va | 0xffff_0000_0000_0000 } else { va };
    let leaf = |va: u64, e: &x86_64::structures::paging::page_table::PageTableEntry, size: u64| Visit::Leaf {
        va: sign(va),
        pa: e.addr().as_u64(),
        size,
        write: e.flags().contains(F::WRITABLE),
        exec: !e.flags().contains(F::NO_EXECUTE),
        user: e.flags().contains(F::USER_ACCESSIBLE),
        uncached: e.flags().contains(F::NO_CACHE | F::WRITE_THROUGH),
    };
    let l4t = table(root.0);
    for i4 in slots.start.min(512)..slots.end.min(512) {
        let e4 = &l4t[i4];
        if !e4.flags().contains(F::PRESENT) {
            continue;
        }
        let pdpt = e4.addr().as_u64();
        f(Visit::Table { pa: pdpt, level: 3 });
        for (i3, e3) in table(pdpt).iter().enumerate() {
            if !e3.flags().contains(F::PRESENT) {
                continue;
            }
            let va3 = (i4 as u64) << 39 | (i3 as u64) << 30;
            if e3.flags().contains(F::HUGE_PAGE) {
                f(leaf(va3, e3, 1 << 30));
                continue;
            }
            let pd = e3.addr().as_u64();
            f(Visit::Table { pa: pd, level: 2 });
            for (i2, e2) in table(pd).iter().enumerate() {
                if !e2.flags().contains(F::PRESENT) {
                    continue;
                }
                let va2 = va3 | (i2 as u64) << 21;
                if e2.flags().contains(F::HUGE_PAGE) {
                    f(leaf(va2, e2, 1 << 21));
                    continue;
                }
                let pt = e2.addr().as_u64();
                f(Visit::Table { pa: pt, level: 1 });
                for (i1, e1) in table(pt).iter().enumerate() {
                    if e1.flags().contains(F::PRESENT) {
                        f(leaf(va2 | (i1 as u64) << 12, e1, 4096));
                    }
                }
            }
        }
    }
}

/// Whether the kernel half of the user space `root` is the kernel's (slots 256..512 equal).
pub fn shares_kernel_half(root: &PageTableRoot) -> bool {
    let pml4 = root.0;
    // SAFETY: both are live PML4 frames in the direct map; only their entries are read.
    let (u, k) = unsafe { (&*(phys_to_virt(pml4) as *const PageTable), &*(phys_to_virt(kernel_pml4()) as *const PageTable)) };
    (256..512).all(|i| u[i].addr() == k[i].addr() && u[i].flags() == k[i].flags())
}

/// Loads an address space: `root` with PCID `pcid` (0 without PCIDs); `keep_tlb` sets CR3's
/// no-flush bit (only meaningful with PCIDs).
#[inline(always)]
pub fn load_cr3(root: RootRef<'_>, pcid: u16, keep_tlb: bool) {
    let v = root.0 | pcid as u64 | if keep_tlb { 1 << 63 } else { 0 };
    // SAFETY: `root` is the kernel's tables or a user space built by `new_user_space`, which
    // maps the whole kernel half exactly as the kernel tables do (the type guarantees one of
    // the two), so the running kernel code, stack and data stay mapped.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// The PML4 currently loaded on this CPU (PCID bits stripped).
#[inline]
pub fn current_pml4() -> u64 {
    Cr3::read_raw().0.start_address().as_u64()
}

/// Drops this CPU's TLB entries for user mappings, of every PCID: with PCIDs on, every entry,
/// global ones included (the CR4.PGE toggle); without, every non-global one (a CR3 reload).
pub fn flush_tlb_all_user() {
    // Toggling CR4.PGE flushes everything, all PCIDs included; reloading CR3 is enough without
    // PCIDs.
    // SAFETY: only flushes TLB entries.
    unsafe {
        let c = Cr4::read();
        if c.contains(Cr4Flags::PCID) {
            Cr4::write(c - Cr4Flags::PAGE_GLOBAL);
            Cr4::write(c);
        } else {
            let v: u64;
            core::arch::asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) v, options(nostack, preserves_flags));
            let _ = v;
        }
    }
}

