//! The two 32-bit boot entries and the 32→64-bit trampoline they share (the third entry, Limine's,
//! starts in 64-bit mode: see [`crate::limine`]).
//!
//! Both loaders enter in 32-bit protected mode with paging off, at a physical address:
//! * PVH (`pvh_entry`, named by the `Xen` ELF note of type 18): `ebx` = `hvm_start_info`.
//! * Multiboot2 (`mb2_entry`, the ELF entry point GRUB jumps to): `eax` = magic, `ebx` = info.
//!
//! `boot32` then builds the boot page tables (first 4 GiB identity-mapped *and* at
//! [`DIRECT_MAP`](crate::layout::DIRECT_MAP), first 1 GiB at [`KERNEL_BASE`]), enables PAE,
//! long mode and NX (when CPUID has it), jumps to 64-bit code, zeroes `.bss`, switches to the
//! BSP's boot stack in the higher half and calls the kernel's `rl4_kernel_entry(protocol, magic,
//! info)`. The boot page tables stay alive: the AP trampoline goes through them too.
//!
//! [`KERNEL_BASE`]: crate::layout::KERNEL_BASE

use core::sync::atomic::{AtomicU64, Ordering};

/// Protocol numbers passed to `rl4_kernel_entry` in `edi`.
pub const ENTRY_PVH: u32 = 1;
pub const ENTRY_MULTIBOOT2: u32 = 2;
pub const ENTRY_LIMINE: u32 = 3;

/// CPUID.1:EDX's CMOV (bit 15) and CMPXCHG8B (bit 8): what both 64-bit entries test before any
/// compiled code runs (`rl4_baseline_stop`).
pub(crate) const BASELINE_EDX: u32 = 1 << 15 | 1 << 8;

core::arch::global_asm!(
    r#"
    .set KERNEL_BASE, 0xffffffff80000000

    /* ---- Multiboot2 header: must sit in the first 32 KiB of the file, 8-byte aligned ---- */
    .section .multiboot2, "a"
    .balign 8
mb2_header:
    .long 0xe85250d6
    .long 0
    .long mb2_header_end - mb2_header
    .long 0x100000000 - (0xe85250d6 + (mb2_header_end - mb2_header))
    .balign 8
    .short 0, 0
    .long 8
mb2_header_end:

    /* ---- PVH: XEN_ELFNOTE_PHYS32_ENTRY (QEMU reads an 8-byte descriptor on ELF64) ---- */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad pvh_entry - KERNEL_BASE

    .section .text.boot, "ax"
    .code32
    .global pvh_entry
pvh_entry:
    cli
    cld
    mov ${pvh}, %edi
    mov %ebx, %esi
    xor %edx, %edx
    jmp boot32

    .global mb2_entry
mb2_entry:
    cli
    cld
    mov %eax, %edx
    mov ${mb2}, %edi
    mov %ebx, %esi

boot32:
    /* edi = protocol, esi = info address, edx = loader magic. Keep them in ebp/esi/edi. */
    mov %edx, %ebp
    lgdt (boot_gdtr - KERNEL_BASE)
    ljmp $0x08, $(1f - KERNEL_BASE)
1:  mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs

    /* Long mode available? */
    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb no_long_mode
    mov $0x80000001, %eax
    cpuid
    bt $29, %edx
    jnc no_long_mode
    /* Remember NX support (edx bit 20) in bit 0 of boot_nx. */
    shr $20, %edx
    and $1, %edx
    mov %edx, (boot_nx - KERNEL_BASE)

    /* Zero the boot page tables (7 pages: PML4, PDPT low, PDPT high, 4 PDs). The protocol waits
       in ebx meanwhile, not on a stack: neither Multiboot2 nor PVH defines esp at entry (a
       loader's esp of 0 pushed onto flash, one into RAM over its boot information). */
    mov %edi, %ebx
    mov $(boot_pml4 - KERNEL_BASE), %edi
    mov $(7 * 1024), %ecx
    xor %eax, %eax
    rep stosl
    mov %ebx, %edi

    /* 4 PDs of 2 MiB pages: 0..4 GiB. */
    mov $(boot_pd - KERNEL_BASE), %ebx
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax              /* present | writable | page size */
    mov %eax, (%ebx, %ecx, 8)
    mov %ecx, %eax
    shr $11, %eax               /* high half of (index << 21) */
    mov %eax, 4(%ebx, %ecx, 8)
    inc %ecx
    cmp $2048, %ecx
    jne 2b

    /* PDPT low: 4 entries -> the 4 PDs. */
    mov $(boot_pdpt_lo - KERNEL_BASE), %ebx
    xor %ecx, %ecx
3:  mov %ecx, %eax
    shl $12, %eax
    add $(boot_pd - KERNEL_BASE), %eax
    or $0x03, %eax
    mov %eax, (%ebx, %ecx, 8)
    inc %ecx
    cmp $4, %ecx
    jne 3b

    /* PDPT high: slot 510 (0xffffffff80000000) -> first PD (0..1 GiB). */
    mov $(boot_pd - KERNEL_BASE + 0x03), %eax
    mov %eax, (boot_pdpt_hi - KERNEL_BASE + 510 * 8)

    /* PML4: 0 (identity), 256 (direct map), 511 (kernel image). */
    mov $(boot_pdpt_lo - KERNEL_BASE + 0x03), %eax
    mov %eax, (boot_pml4 - KERNEL_BASE)
    mov %eax, (boot_pml4 - KERNEL_BASE + 256 * 8)
    mov $(boot_pdpt_hi - KERNEL_BASE + 0x03), %eax
    mov %eax, (boot_pml4 - KERNEL_BASE + 511 * 8)

    /* PAE, then CR3, then EFER.LME (+NXE), then paging. */
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $(boot_pml4 - KERNEL_BASE), %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    testl $1, (boot_nx - KERNEL_BASE)
    jz 4f
    or $0x800, %eax
4:  wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax        /* PG | WP | PE */
    mov %eax, %cr0
    ljmp $0x18, $(boot64 - KERNEL_BASE)

no_long_mode:
    /* Say so on COM1 and stop: this CPU cannot run rl4. */
    mov $(no_lm_msg - KERNEL_BASE), %esi
    /* say_and_stop: prints the NUL-terminated line at esi (rsi) on COM1, writes the failure exit
       where QEMU's debug-exit device listens, and halts. Assembled as 32-bit code and run in
       64-bit mode too (`rl4_baseline_stop`): every instruction here (no operand wider than
       32 bits, `lodsb` through esi/rsi) encodes the same in both modes. */
say_and_stop:
5:  lodsb
    test %al, %al
    jz 7f
    mov %al, %bl
    mov $0x3fd, %dx
6:  in %dx, %al
    test $0x20, %al
    jz 6b
    mov $0x3f8, %dx
    mov %bl, %al
    out %al, %dx
    jmp 5b
    /* The failure exit where QEMU's debug-exit device listens (`cpu::exit`; elsewhere nothing
       decodes port 0xf4), as the 64-bit stops do; then halt. */
7:  mov $0xf4, %dx
    mov $0x11, %eax
    out %eax, %dx
    cli
8:  hlt
    jmp 8b

    .code64
boot64:
    /* The rest of x86-64's baseline the compiled kernel takes for granted before it can look
       (`baseline_stop`). */
    mov $1, %eax
    cpuid
    and ${baseline}, %edx
    cmp ${baseline}, %edx
    jne rl4_baseline_stop
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov %edi, %r12d             /* protocol */
    mov %esi, %r13d             /* info address (zero-extended) */
    mov %ebp, %r14d             /* loader magic */
    /* Zero .bss (its boot stack included) before anything uses it. */
    movabs $__bss_start, %rdi
    movabs $__bss_end, %rcx
    sub %rdi, %rcx
    shr $3, %rcx
    xor %eax, %eax
    rep stosq
    movabs $boot_stack_top, %rsp
    xor %ebp, %ebp
    mov %r12d, %edi
    mov %r14d, %esi
    mov %r13, %rdx
    movabs $rl4_kernel_entry, %rax
    call *%rax
8:  cli
    hlt
    jmp 8b

    /* A CPU whose CPUID.1:EDX denies CMOV (bit 15) or CMPXCHG8B (bit 8), which every x86_64
       CPU has but an emulator may be told to hide (`-cpu max,-cmov`): the compiler's code uses
       `cmov` from the first Rust function on, and the AP trampoline takes its offer with
       `cmpxchg8b`, so the check is here, in the assembly of both entries that reach 64-bit
       mode (this one, `boot64`, and Limine's), before either. It says so on COM1 and stops
       (before the forty-third session a triple fault: a reset, or QEMU's exit 0 with
       `-no-reboot`; for CMPXCHG8B the first AP's). */
    .global rl4_baseline_stop
rl4_baseline_stop:
    lea baseline_msg(%rip), %rsi
    jmp say_and_stop

    .section .rodata.boot, "a"
baseline_msg:
    .asciz "rl4: this CPU has no CMOV or no CMPXCHG8B (CPUID.1:EDX[15], EDX[8]: x86-64's baseline, which the compiled kernel uses); stopping.\r\n"
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff    /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
    .quad 0x00af9a000000ffff    /* 0x18: 64-bit code */
boot_gdtr:
    .short 4 * 8 - 1
    .long boot_gdt - KERNEL_BASE
no_lm_msg:
    .asciz "rl4: this CPU has no long mode (x86_64); stopping.\r\n"

    .section .bss.boot, "aw", @nobits
    .balign 4096
    .global boot_pml4
boot_pml4:    .skip 4096
boot_pdpt_lo: .skip 4096
boot_pdpt_hi: .skip 4096
boot_pd:      .skip 4 * 4096
boot_nx:      .skip 4

    /* The BSP's stack until its per-CPU stack exists. */
    .section .bss.stack, "aw", @nobits
    .balign 16
boot_stack:
    .skip 64 * 1024
    .global boot_stack_top
boot_stack_top:
    .text
    "#,
    pvh = const ENTRY_PVH,
    mb2 = const ENTRY_MULTIBOOT2,
    baseline = const BASELINE_EDX,
    options(att_syntax)
);

unsafe extern "C" {
    /// The first page of the boot page tables (in the boot segment, below 4 GiB physically).
    static boot_pml4: u8;
    static __kernel_virt_start: u8;
    static __kernel_virt_end: u8;
    static __kernel_phys_start: u8;
    static __kernel_phys_end: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __bss_end: u8;
}

/// Where the image is when Limine loaded it: virtual − physical (0: not loaded by Limine, the
/// image is at its link address minus `KERNEL_BASE`).
static LIMINE_SHIFT: AtomicU64 = AtomicU64::new(0);
/// Physical address of the Limine path's boot PML4.
static LIMINE_PML4: AtomicU64 = AtomicU64::new(0);

/// Records where Limine put the image and the boot PML4 built for it.
pub(crate) fn set_limine_image(shift: u64, pml4: u64) {
    LIMINE_SHIFT.store(shift, Ordering::Relaxed);
    LIMINE_PML4.store(pml4, Ordering::Relaxed);
}

/// The physical address of the kernel image's byte at virtual address `va`.
pub fn image_phys(va: u64) -> u64 {
    match LIMINE_SHIFT.load(Ordering::Relaxed) {
        0 => va - crate::layout::KERNEL_BASE,
        shift => va.wrapping_sub(shift),
    }
}

/// Physical address of the boot PML4 (used by the AP trampoline, which starts with paging off):
/// the low boot segment's, or the Limine path's.
pub fn boot_pml4_phys() -> u64 {
    match LIMINE_PML4.load(Ordering::Relaxed) {
        0 => image_phys((&raw const boot_pml4) as u64),
        pml4 => pml4,
    }
}

/// Physical extent of the whole kernel image (boot segment, text, data, bss), wherever the boot
/// loader put it.
pub fn kernel_phys_range() -> rl4_core::memmap::Range {
    if LIMINE_SHIFT.load(Ordering::Relaxed) != 0 {
        let s = image_phys((&raw const __kernel_virt_start) as u64);
        let e = image_phys((&raw const __kernel_virt_end) as u64);
        return rl4_core::memmap::Range::new(s, e);
    }
    let s = (&raw const __kernel_phys_start) as u64;
    let e = (&raw const __kernel_phys_end) as u64;
    rl4_core::memmap::Range::new(s, e)
}

/// Virtual ranges of the kernel image's parts: (text, rodata, data+bss).
pub fn kernel_sections() -> [(u64, u64); 3] {
    [
        ((&raw const __text_start) as u64, (&raw const __text_end) as u64),
        ((&raw const __rodata_start) as u64, (&raw const __rodata_end) as u64),
        ((&raw const __data_start) as u64, (&raw const __bss_end) as u64),
    ]
}
