//! Starting the application processors: the real-mode trampoline and INIT-SIPI-SIPI.
//!
//! The trampoline is a page of code copied below 1 MiB (the STARTUP IPI's vector is the page
//! number). An AP starts there in real mode at `page:0`, loads the trampoline's own GDT and
//! enters protected mode; there, paging still off, it reads its APIC ID from its local APIC
//! and takes the offer addressed to it (below), and checks CPUID for what the rest needs (long
//! mode, NX where the BSP turned it on, 1 GiB pages where the BSP has them: [`Needs`]); then it
//! turns on PAE, loads the *boot* page tables (below 4 GiB, identity map of the first 4 GiB plus
//! the kernel image), sets EFER.LME/NXE, enables paging, far-returns to 64-bit code, reports
//! that it runs, and jumps to `ap_high` in the kernel image, which loads the kernel's own page
//! tables and stack and calls the entry point with its per-CPU block.
//!
//! Parameters sit at offset [`PARAMS`] of the page (see [`Params`]); the BSP starts one AP at a
//! time, so one page serves them all. Each start is an *offer* addressed to one APIC ID: the AP
//! reads its ID from its local APIC and takes the offer with one compare-and-swap if it is
//! addressed to itself, reads its parameters, then says it runs (or, lacking a CPUID feature it
//! needs, says which and parks); a CPU that finds no offer for itself parks (`cli; hlt`).
//! A BSP that gave up waiting withdraws its offer with a swap: either the CPU never took it
//! (and parks when it comes, however late), or it took it (and the BSP waits for it a while
//! more). Before, a CPU that answered after the BSP had given up on it read the parameters
//! written for the *next* CPU, and two CPUs ran on one stack and one per-CPU block.
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use rl4_arch::layout::phys_to_virt;
use rl4_arch::{boot_pml4_phys, paging, time};
use x86_64::registers::model_specific::Efer;

use crate::cpus::{self, Cpu};
use crate::lapic;

/// Offset of [`Params`] in the trampoline page.
pub const PARAMS: u64 = 0x800;

/// What the BSP hands one AP (layout shared with the assembly below).
#[repr(C)]
struct Params {
    _pad: u16,
    gdt_limit: u16,   // 0x02
    gdt_base: u32,    // 0x04
    pm32: u32,        // 0x08: far pointer offset (linear address of pm32)
    pm32_sel: u16,    // 0x0c
    _pad2: u16,
    boot_cr3: u32,    // 0x10
    efer_or: u32,     // 0x14
    entry: u64,       // 0x18: extern "C" fn(&'static Cpu) -> !
    stack_top: u64,   // 0x20
    arg: u64,         // 0x28
    kernel_cr3: u64,  // 0x30
    alive: AtomicU32, // 0x38: set by the AP once it has read its parameters
    lacks: AtomicU32, // 0x3c: a `Lack` code, set (before `alive`) by an AP that parks for want of it
    offer: AtomicU64, // 0x40: the APIC ID this start is for, plus 1; 0: none (taken or withdrawn)
    ext_need: u32,    // 0x48: the CPUID.80000001h:EDX bits the AP must have to go on
    ext_mask: u32,    // 0x4c: applied to the AP's CPUID.80000001h:EDX first (all ones, but in a test)
}

const _: () = {
    assert!(core::mem::offset_of!(Params, boot_cr3) == 0x10);
    assert!(core::mem::offset_of!(Params, entry) == 0x18);
    assert!(core::mem::offset_of!(Params, stack_top) == 0x20);
    assert!(core::mem::offset_of!(Params, arg) == 0x28);
    assert!(core::mem::offset_of!(Params, kernel_cr3) == 0x30);
    assert!(core::mem::offset_of!(Params, alive) == 0x38);
    assert!(core::mem::offset_of!(Params, lacks) == 0x3c);
    assert!(core::mem::offset_of!(Params, offer) == 0x40);
    assert!(core::mem::offset_of!(Params, ext_need) == 0x48);
    assert!(core::mem::offset_of!(Params, ext_mask) == 0x4c);
};

/// CPUID.80000001h:EDX: long mode, no-execute pages, 1 GiB pages.
const EXT_LM: u32 = 1 << 29;
const EXT_NX: u32 = 1 << 20;
const EXT_1G: u32 = 1 << 26;

/// What an AP must have before the trampoline goes on (checked in its 32-bit part, before it
/// touches EFER or the page tables: `Params::ext_need`).
#[derive(Clone, Copy, Debug)]
pub struct Needs {
    /// 1 GiB pages: the bootstrap CPU has them, so the kernel's page tables (and a boot
    /// loader's) may use them.
    pub page1g: bool,
    /// For a test (`inject=apext`): this AP reads CPUID.80000001h:EDX without NX and 1 GiB
    /// pages, as one CPU of a machine whose CPUs differ would.
    pub hide_nx_1g: bool,
    /// For a test (`inject=apsilent`): this AP is sent no INIT-SIPI-SIPI, as a CPU that the
    /// MADT lists but that never answers (absent, fused off, hung).
    pub silent: bool,
}

core::arch::global_asm!(
    r#"
    .set P, {params}
    .section .text.ap_trampoline, "ax"
    .code16
    .global ap_tramp_start
ap_tramp_start:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    xor %ebx, %ebx
    mov %ax, %bx
    shl $4, %ebx                    /* ebx = linear address of the page */
    lgdtl P + 2
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl *(P + 8)

    .code32
    .global ap_tramp_pm32
ap_tramp_pm32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    lea 0x1000(%ebx), %esp          /* a small stack at the top of the page, for the far return */
    mov %ebx, %ebp                  /* the page (CPUID writes ebx) */
    /* This CPU's APIC ID, from its local APIC — the ID the MADT lists and IPIs address: in
       x2APIC mode (IA32_APIC_BASE.EXTD) its ID register (MSR 0x802); in xAPIC mode the ID
       register of its page (bits 31:24), read at its physical address (paging is off); a page
       above 4 GiB cannot be reached from here: then CPUID (leaf 0xB's x2APIC ID where that
       leaf is there, else leaf 1's 8 bits), as `cpu::Features` reads the BSP's. */
    mov $0x1b, %ecx
    rdmsr
    test $0x400, %eax
    jz 4f
    mov $0x802, %ecx
    rdmsr
    mov %eax, %edi
    jmp 1f
4:
    test %edx, %edx
    jnz 5f
    and $0xfffff000, %eax
    mov 0x20(%eax), %edi
    shr $24, %edi
    jmp 1f
5:
    xor %eax, %eax
    cpuid
    mov %eax, %esi
    mov $1, %eax
    cpuid
    shr $24, %ebx
    mov %ebx, %edi
    cmp $0xb, %esi
    jb 1f
    mov $0xb, %eax
    xor %ecx, %ecx
    cpuid
    test %ebx, %ebx
    jz 1f
    mov %edx, %edi
1:
    /* Take the offer if it is this CPU's (ID + 1, 64 bits), in one step; else park. */
    mov %edi, %eax
    xor %edx, %edx
    add $1, %eax
    adc $0, %edx
    xor %ebx, %ebx
    xor %ecx, %ecx
    lock cmpxchg8b P + 0x40(%ebp)
    jne 3f
    /* What the way on needs of CPUID.80000001h:EDX (`Params::ext_need`: long mode; NX where
       the bootstrap CPU turned EFER.NXE on; 1 GiB pages where it has them), before any of it
       is used: without, the EFER write or the first access through the page tables would be
       a fault with no handler (a triple fault: most machines reset). A CPU that lacks one
       says which (`Params::lacks`, then `alive`) and parks. */
    mov $0x80000000, %eax
    cpuid
    mov %eax, %esi
    xor %edx, %edx
    cmp $0x80000001, %esi
    jb 6f
    mov $0x80000001, %eax
    cpuid
6:
    and P + 0x4c(%ebp), %edx
    mov P + 0x48(%ebp), %eax
    and %eax, %edx
    xor %edx, %eax
    jz 8f
    mov ${lack_lm}, %ecx
    test $(1 << 29), %eax
    jnz 7f
    mov ${lack_nx}, %ecx
    test $(1 << 20), %eax
    jnz 7f
    mov ${lack_1g}, %ecx
7:
    mov %ecx, P + 0x3c(%ebp)
    movl $1, P + 0x38(%ebp)
3:
    cli
    hlt
    jmp 3b
8:
    mov %ebp, %ebx
    mov %cr4, %eax
    or $0x20, %eax                  /* PAE */
    mov %eax, %cr4
    mov P + 0x10(%ebx), %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or P + 0x14(%ebx), %eax          /* LME (+ NXE) */
    wrmsr
    mov %cr0, %eax
    or $0x80010000, %eax            /* PG | WP */
    mov %eax, %cr0
    lea (ap_tramp_lm64 - ap_tramp_start)(%ebx), %eax
    push $0x18
    push %eax
    lret

    .code64
ap_tramp_lm64:
    /* The page, zero-extended (a register's upper half is undefined on the way into 64-bit
       mode). The offer is this CPU's (taken above). */
    mov %ebx, %r8d
    mov P + 0x20(%r8), %rsp
    mov P + 0x28(%r8), %rdi
    mov P + 0x18(%r8), %rax
    mov P + 0x30(%r8), %rcx
    /* The parameters are in registers: the BSP may write the page again. */
    movl $1, P + 0x38(%r8)
    movabs $ap_high, %rdx
    jmp *%rdx

    .balign 8
    .global ap_tramp_gdt
ap_tramp_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff        /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: data */
    .quad 0x00af9a000000ffff        /* 0x18: 64-bit code */
    .global ap_tramp_end
ap_tramp_end:

    /* In the kernel image: switch to the kernel's page tables and stack, call the entry. */
    .text
ap_high:
    mov %rcx, %cr3
    xor %ebp, %ebp
    call *%rax
    ud2
    "#,
    params = const PARAMS,
    lack_lm = const rl4_arch::cpu::Lack::LongMode as u8,
    lack_nx = const rl4_arch::cpu::Lack::Nx as u8,
    lack_1g = const rl4_arch::cpu::Lack::Page1G as u8,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_tramp_start: u8;
    static ap_tramp_pm32: u8;
    static ap_tramp_gdt: u8;
    static ap_tramp_end: u8;
}

/// The AP entry point the kernel supplies: runs on the AP's own stack with its block.
pub type ApEntry = extern "C" fn(&'static Cpu) -> !;

/// Copies the trampoline to physical page `page` (below 1 MiB, reserved from the allocator).
pub fn install_trampoline(page: u64) {
    assert!(page % 4096 == 0 && page < 0x10_0000);
    let start = (&raw const ap_tramp_start) as u64;
    let len = (&raw const ap_tramp_end) as u64 - start;
    assert!(len <= PARAMS, "trampoline code overlaps its parameters");
    // SAFETY: `page` is reserved for the trampoline (never handed out by the frame allocator)
    // and mapped in the direct map; the source is the trampoline's bytes in the kernel image.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, phys_to_virt(page) as *mut u8, len as usize);
    }
}

/// Outcome of starting one AP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Started {
    Online,
    /// The AP never took its start (the offer was withdrawn: if it comes later, it parks).
    NoResponse,
    /// It took its start but did not finish its set-up in time.
    Stuck,
    /// It took its start and stays offline: its CPUID lacks what the bootstrap CPU set up for
    /// every CPU (`cpus::refuse`).
    Refused(rl4_arch::cpu::Lack),
    /// It took its start at the moment the BSP gave up, and did not say it had read its
    /// parameters even after a second wait: the trampoline page may still be read, so no
    /// other CPU may be started from it.
    Lost,
}

/// Starts `cpu` through the trampoline at `page` and waits up to `timeout_us` for it to come
/// online.
pub fn start_ap(cpu: &'static Cpu, page: u64, entry: ApEntry, timeout_us: u64, needs: Needs) -> Started {
    let start = (&raw const ap_tramp_start) as u64;
    let p = phys_to_virt(page + PARAMS) as *mut Params;
    let efer_or = 0x100 | (Efer::read_raw() & 0x800) as u32;
    let ext_need = EXT_LM | if efer_or & 0x800 != 0 { EXT_NX } else { 0 } | if needs.page1g { EXT_1G } else { 0 };
    let ext_mask = if needs.hide_nx_1g { !(EXT_NX | EXT_1G) } else { u32::MAX };
    // SAFETY: the parameter block lies in the reserved trampoline page, beyond the code; no AP
    // reads it now: the previous one said it had read its parameters (`alive`), or its offer
    // was withdrawn before it took it (it parks when it comes), and no offer is out (the one
    // below is published after the write).
    unsafe {
        p.write(Params {
            _pad: 0,
            gdt_limit: 4 * 8 - 1,
            gdt_base: (page + ((&raw const ap_tramp_gdt) as u64 - start)) as u32,
            pm32: (page + ((&raw const ap_tramp_pm32) as u64 - start)) as u32,
            pm32_sel: 0x08,
            _pad2: 0,
            boot_cr3: boot_pml4_phys() as u32,
            efer_or,
            entry: entry as usize as u64,
            stack_top: cpu.stack_top,
            arg: cpu as *const Cpu as u64,
            kernel_cr3: paging::kernel_pml4(),
            alive: AtomicU32::new(0),
            lacks: AtomicU32::new(0),
            offer: AtomicU64::new(0),
            ext_need,
            ext_mask,
        });
    }
    // SAFETY: `p` stays valid (reserved page); `alive`, `lacks` and `offer` are only accessed
    // atomically from here on (the AP: stores, a compare-and-swap).
    let (alive, lacks, offer) = unsafe { (&(*p).alive, &(*p).lacks, &(*p).offer) };
    offer.store(cpu.apic_id() as u64 + 1, Ordering::Release);
    if !needs.silent {
        cpus::with_lapic(|l| {
            let l = l.expect("BSP local APIC is up before APs are started");
            lapic::init_sipi_sipi(l, cpu.apic_id(), page, || alive.load(Ordering::Acquire) != 0);
        });
    }
    if !time::wait_until(timeout_us, || alive.load(Ordering::Acquire) != 0) {
        if offer.swap(0, Ordering::AcqRel) != 0 {
            return Started::NoResponse;
        }
        // Taken just now: it is reading its parameters (a few instructions, unless its host
        // holds it back).
        if !time::wait_until(timeout_us.max(100_000), || alive.load(Ordering::Acquire) != 0) {
            return Started::Lost;
        }
    }
    // Parked in the trampoline for want of a CPUID feature (its `lacks`, stored before `alive`).
    if let Some(why) = rl4_arch::cpu::Lack::from_code(lacks.load(Ordering::Acquire) as u8) {
        return Started::Refused(why);
    }
    let up = time::wait_until(timeout_us, || cpu.online.load(Ordering::Acquire) || cpus::refused(cpu).is_some());
    match cpus::refused(cpu) {
        Some(why) => Started::Refused(why),
        None if up => Started::Online,
        None => Started::Stuck,
    }
}
