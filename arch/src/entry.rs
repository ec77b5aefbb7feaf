//! Entering and leaving the kernel: `syscall`, interrupts and exceptions, and the way back to
//! user mode.
//!
//! rl4 is event-based (design.md §3): one kernel stack per CPU, interrupts off in the kernel.
//! Every entry from user mode stores the user registers straight into the running thread's
//! [`UserRegs`] (its end address is `gs:32`), resets the stack to the top of the CPU's kernel
//! stack (`gs:16`) and calls into the kernel:
//!
//! * `syscall` → `rl4_syscall(number)` (Rust's `rust-preserve-none` convention: the number in
//!   `r12`, no register preserved);
//! * an interrupt or exception from user mode → `rl4_user_trap(vector, error_code)`;
//! * an interrupt in kernel mode (with interrupts on only in the idle loop, the boot's waits
//!   and `Measure`'s IPI-floor wait: docs/percpu.md) →
//!   `rl4_kernel_interrupt(vector)`, then back where it was; an exception in kernel mode is a
//!   kernel bug and panics, except a page fault inside the user-copy routine, which makes it
//!   return an error instead.
//!
//! All three kernel functions are defined by the kernel crate. They return to
//! [`return_to_user`], which loads the (possibly different) current thread's registers and uses
//! `sysretq` when the thread entered by `syscall` (its block's resume word, right after the
//! registers, is 0) or `iretq` otherwise: after an
//! interrupt every register, `rcx` and `r11` included, must come back exactly. The IPC fast
//! path leaves by a second way out instead, [`return_with_message`]: the message in registers,
//! the rest from the block, by the same resume word.
//!
//! NMI, double fault and machine check keep their IST handlers in [`crate::idt`]. The debug
//! exception (#DB) enters through its own stub on its own IST stack ([`install_stubs`]): a
//! `mov ss` or `pop ss` holds its debug exceptions back until the next instruction has run, so
//! a user thread with the trap flag set that makes a system call (or takes an exception) right
//! after one can have the #DB delivered on the kernel's first instruction — at privilege level
//! 0, with the user's `GS` and, after `syscall`, the user's stack pointer, onto which the CPU
//! would push the exception frame (the `mov ss` hazard, CVE-2018-8897). On its own stack the
//! stub sees that case (kernel mode, on the first instruction of `syscall`'s entry or anywhere
//! among the trap stubs, where such a #DB lands on a stub's first instruction: the entry clears
//! the flag itself) and returns to it at once, the trap flag cleared in the frame; a #DB from user mode goes the way of every trap; any other #DB in kernel mode is a
//! kernel bug, reported as before.
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use x86_64::VirtAddr;
use x86_64::registers::model_specific::{Efer, EferFlags, LStar, SFMask, Star};
use x86_64::registers::rflags::RFlags;
use x86_64::structures::idt::InterruptDescriptorTable;

/// The user registers of a thread, as the entry code stores them. The last five words are an
/// `iretq` frame.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct UserRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const _: () = assert!(core::mem::size_of::<UserRegs>() == 160);
// The entry code addresses the block by these offsets from its end (-160 + offset).
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(UserRegs, rax) == 0 && offset_of!(UserRegs, rbx) == 8 && offset_of!(UserRegs, rcx) == 16);
    assert!(offset_of!(UserRegs, rdx) == 24 && offset_of!(UserRegs, rsi) == 32 && offset_of!(UserRegs, rdi) == 40);
    assert!(offset_of!(UserRegs, rbp) == 48 && offset_of!(UserRegs, r8) == 56 && offset_of!(UserRegs, r9) == 64);
    assert!(offset_of!(UserRegs, r10) == 72 && offset_of!(UserRegs, r11) == 80 && offset_of!(UserRegs, r12) == 88);
    assert!(offset_of!(UserRegs, r13) == 96 && offset_of!(UserRegs, r14) == 104 && offset_of!(UserRegs, r15) == 112);
    assert!(offset_of!(UserRegs, rip) == 120 && offset_of!(UserRegs, cs) == 128 && offset_of!(UserRegs, rflags) == 136);
    assert!(offset_of!(UserRegs, rsp) == 144 && offset_of!(UserRegs, ss) == 152);
};

/// User segment selectors (GDT entries 4 and 3, RPL 3).
pub const USER_CS: u64 = 0x23;
pub const USER_SS: u64 = 0x1b;
pub const RFLAGS_IF: u64 = 1 << 9;

/// The system-call register ABI (`docs/syscalls.md`), named: the kernel's generic code reads
/// and writes a thread's registers only through these accessors, never by register name.
///
/// | meaning | register |
/// |---|---|
/// | call number in, result (0 or an error code) out | `rax` |
/// | arguments 0..5 in; results 0..2 out (`rdi`, `rsi`, `rdx`) | `rdi`, `rsi`, `rdx`, `r10`, `r8`, `r9` |
/// | IPC: capability slot in, badge out | `rdi` |
/// | IPC: message tag | `rsi` |
/// | IPC: message words 0..3 | `rdx`, `r10`, `r8`, `r9` |
/// | IPC: timeout | `r12` |
/// | IPC: slot of the capability sent | `r13` |
/// | IPC: slot that receives a capability | `r14` |
impl UserRegs {
    /// Sets the result word a system call returns (0 or an error code).
    #[inline(always)]
    pub fn set_result(&mut self, v: u64) {
        self.rax = v;
    }

    /// The result word (a fault handler may set it).
    #[inline(always)]
    pub fn result(&self) -> u64 {
        self.rax
    }

    /// A system call's six argument words.
    #[inline(always)]
    pub fn syscall_args(&self) -> [u64; 6] {
        [self.rdi, self.rsi, self.rdx, self.r10, self.r8, self.r9]
    }

    /// A successful system call's three result words (the result word itself is 0).
    #[inline(always)]
    pub fn set_results(&mut self, r: [u64; 3]) {
        self.rax = 0;
        self.rdi = r[0];
        self.rsi = r[1];
        self.rdx = r[2];
    }

    /// Sets argument word `i` (0 or 1) of a thread not yet started.
    #[inline(always)]
    pub fn set_arg(&mut self, i: usize, v: u64) {
        match i {
            0 => self.rdi = v,
            _ => self.rsi = v,
        }
    }

    /// The IPC slot (endpoint or notification) a call names.
    #[inline(always)]
    pub fn ipc_slot(&self) -> u64 {
        self.rdi
    }

    /// The message tag.
    #[inline(always)]
    pub fn ipc_tag(&self) -> u64 {
        self.rsi
    }

    /// The message words carried in registers.
    #[inline(always)]
    pub fn ipc_words(&self) -> [u64; 4] {
        [self.rdx, self.r10, self.r8, self.r9]
    }

    /// The timeout of an IPC call.
    #[inline(always)]
    pub fn ipc_timeout(&self) -> u64 {
        self.r12
    }

    /// The slot of the capability a send carries.
    #[inline(always)]
    pub fn ipc_send_slot(&self) -> u64 {
        self.r13
    }

    /// The slot that receives a capability.
    #[inline(always)]
    pub fn ipc_receive_slot(&self) -> u64 {
        self.r14
    }

    /// What an IPC call reads: its slot, tag and timeout (the fast path's guards).
    #[inline(always)]
    pub fn ipc_in(&self) -> (u64, u64, u64) {
        (self.rdi, self.rsi, self.r12)
    }

    /// A delivered message: the result word 0, badge, tag and the words in registers.
    #[inline(always)]
    pub fn set_ipc_out(&mut self, badge: u64, tag: u64, words: [u64; 4]) {
        self.rax = 0;
        self.rdi = badge;
        self.rsi = tag;
        self.rdx = words[0];
        self.r10 = words[1];
        self.r8 = words[2];
        self.r9 = words[3];
    }

    /// A delivered message's tag alone (where [`UserRegs::set_ipc_out`] put it).
    #[inline(always)]
    pub fn set_ipc_tag(&mut self, tag: u64) {
        self.rsi = tag;
    }

    /// The user instruction pointer.
    #[inline(always)]
    pub fn ip(&self) -> u64 {
        self.rip
    }

    #[inline(always)]
    pub fn set_ip(&mut self, v: u64) {
        self.rip = v;
    }

    /// The user stack pointer.
    #[inline(always)]
    pub fn sp(&self) -> u64 {
        self.rsp
    }

    #[inline(always)]
    pub fn set_sp(&mut self, v: u64) {
        self.rsp = v;
    }

    /// Registers for a new thread: entry point, stack, first argument.
    pub fn new_thread(entry: u64, stack: u64, arg: u64) -> Self {
        UserRegs { rip: entry, rsp: stack, rdi: arg, cs: USER_CS, ss: USER_SS, rflags: RFLAGS_IF, ..Default::default() }
    }
}

/// The registers saved by a trap in kernel mode (on the kernel stack).
#[derive(Debug)]
#[repr(C)]
pub struct KernelFrame {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

static SMAP: AtomicBool = AtomicBool::new(false);

macro_rules! trap_stubs {
    ($($v:literal $kind:ident),* $(,)?) => {
        core::arch::global_asm!(
            "    .text\n",
            ".Lrl4_trap_stubs:\n",
            $(concat!(
                "rl4_trap_", stringify!($v), ":\n",
                trap_stubs!(@push $kind),
                "    push ", stringify!($v), "\n",
                "    jmp rl4_trap_common\n"
            ),)*
            // The target of `check_debug_trap`'s single step: among the stubs, where a #DB in
            // kernel mode is passed over.
            ".Lrl4_debug_check_target:\n",
            "    pushfq\n",
            "    pop rax\n",
            "    ret\n",
            ".Lrl4_trap_stubs_end:\n",
            ".pushsection .rodata\n",
            ".balign 8\n",
            "rl4_trap_table:\n",
            $(concat!("    .quad ", stringify!($v), ", rl4_trap_", stringify!($v), "\n"),)*
            "rl4_trap_table_end:\n",
            ".popsection\n",
        );
    };
    (@push noerr) => { "    push 0\n" };
    (@push err) => { "" };
}

// Every vector from 32 up has a stub, not only those rl4 uses (0x30..0x35, 0x40..0x4f, 0xfe,
// 0xff): an interrupt nothing of rl4's sends — an I/O APIC pin or a device's MSI the firmware
// left enabled, an LVT entry rl4 does not program — is acknowledged and reported by the kernel
// (`trap.rs`). Before the twenty-sixth session it met a not-present gate: a #NP panic in kernel
// mode, or a #NP fault blamed on the running thread in user mode, and with no EOI its CPU took
// no interrupt of its priority class or below again (a review found it).
trap_stubs!(
    0 noerr, 1 noerr, 3 noerr, 4 noerr, 5 noerr, 6 noerr, 7 noerr, 10 err, 11 err, 12 err, 13 err,
    14 err, 16 noerr, 17 err, 19 noerr, 20 noerr, 21 err, 30 err,
    32 noerr, 33 noerr, 34 noerr, 35 noerr, 36 noerr, 37 noerr, 38 noerr, 39 noerr, 40 noerr, 41 noerr, 42 noerr, 43 noerr,
    44 noerr, 45 noerr, 46 noerr, 47 noerr, 48 noerr, 49 noerr, 50 noerr, 51 noerr, 52 noerr, 53 noerr, 54 noerr, 55 noerr,
    56 noerr, 57 noerr, 58 noerr, 59 noerr, 60 noerr, 61 noerr, 62 noerr, 63 noerr, 64 noerr, 65 noerr, 66 noerr, 67 noerr,
    68 noerr, 69 noerr, 70 noerr, 71 noerr, 72 noerr, 73 noerr, 74 noerr, 75 noerr, 76 noerr, 77 noerr, 78 noerr, 79 noerr,
    80 noerr, 81 noerr, 82 noerr, 83 noerr, 84 noerr, 85 noerr, 86 noerr, 87 noerr, 88 noerr, 89 noerr, 90 noerr, 91 noerr,
    92 noerr, 93 noerr, 94 noerr, 95 noerr, 96 noerr, 97 noerr, 98 noerr, 99 noerr, 100 noerr, 101 noerr, 102 noerr, 103 noerr,
    104 noerr, 105 noerr, 106 noerr, 107 noerr, 108 noerr, 109 noerr, 110 noerr, 111 noerr, 112 noerr, 113 noerr, 114 noerr, 115 noerr,
    116 noerr, 117 noerr, 118 noerr, 119 noerr, 120 noerr, 121 noerr, 122 noerr, 123 noerr, 124 noerr, 125 noerr, 126 noerr, 127 noerr,
    128 noerr, 129 noerr, 130 noerr, 131 noerr, 132 noerr, 133 noerr, 134 noerr, 135 noerr, 136 noerr, 137 noerr, 138 noerr, 139 noerr,
    140 noerr, 141 noerr, 142 noerr, 143 noerr, 144 noerr, 145 noerr, 146 noerr, 147 noerr, 148 noerr, 149 noerr, 150 noerr, 151 noerr,
    152 noerr, 153 noerr, 154 noerr, 155 noerr, 156 noerr, 157 noerr, 158 noerr, 159 noerr, 160 noerr, 161 noerr, 162 noerr, 163 noerr,
    164 noerr, 165 noerr, 166 noerr, 167 noerr, 168 noerr, 169 noerr, 170 noerr, 171 noerr, 172 noerr, 173 noerr, 174 noerr, 175 noerr,
    176 noerr, 177 noerr, 178 noerr, 179 noerr, 180 noerr, 181 noerr, 182 noerr, 183 noerr, 184 noerr, 185 noerr, 186 noerr, 187 noerr,
    188 noerr, 189 noerr, 190 noerr, 191 noerr, 192 noerr, 193 noerr, 194 noerr, 195 noerr, 196 noerr, 197 noerr, 198 noerr, 199 noerr,
    200 noerr, 201 noerr, 202 noerr, 203 noerr, 204 noerr, 205 noerr, 206 noerr, 207 noerr, 208 noerr, 209 noerr, 210 noerr, 211 noerr,
    212 noerr, 213 noerr, 214 noerr, 215 noerr, 216 noerr, 217 noerr, 218 noerr, 219 noerr, 220 noerr, 221 noerr, 222 noerr, 223 noerr,
    224 noerr, 225 noerr, 226 noerr, 227 noerr, 228 noerr, 229 noerr, 230 noerr, 231 noerr, 232 noerr, 233 noerr, 234 noerr, 235 noerr,
    236 noerr, 237 noerr, 238 noerr, 239 noerr, 240 noerr, 241 noerr, 242 noerr, 243 noerr, 244 noerr, 245 noerr, 246 noerr, 247 noerr,
    248 noerr, 249 noerr, 250 noerr, 251 noerr, 252 noerr, 253 noerr, 254 noerr, 255 noerr,
);

core::arch::global_asm!(
    r#"
    .text
    .global rl4_syscall_entry
rl4_syscall_entry:
    swapgs
    mov gs:[24], rsp
    mov rsp, gs:[32]
    /* Straight into the thread's register block (rsp = its end). `rcx` and `r11` are not
       stored in their own slots: `syscall` put the user's rip and rflags there, which go to
       the iret-frame slots, and the ABI lets a system call clobber both. The constant CS and
       SS slots were written when the thread was made. */
    mov [rsp - 160], rax
    mov [rsp - 152], rbx
    mov [rsp - 136], rdx
    mov [rsp - 128], rsi
    mov [rsp - 120], rdi
    mov [rsp - 112], rbp
    mov [rsp - 104], r8
    mov [rsp - 96], r9
    mov [rsp - 88], r10
    mov [rsp - 72], r12
    mov [rsp - 64], r13
    mov [rsp - 56], r14
    mov [rsp - 48], r15
    mov [rsp - 40], rcx
    mov [rsp - 24], r11
    mov rcx, gs:[24]
    mov [rsp - 16], rcx
    /* Resumed by `sysretq` (the resume word: `RegsCell::iret`, right after the block). */
    mov qword ptr [rsp], 0
    mov rsp, gs:[16]
    xor ebp, ebp
    /* `rl4_syscall` takes the number in r12 and preserves no register (Rust's
       "rust-preserve-none" convention): every user register is in the block already, and
       the way back reloads them from the block of whichever thread runs now. */
    mov r12, rax
    call rl4_syscall
    /* Falls through to the way back. */

    /* The end of both ways back by `sysretq`: the callee-saved registers, the return address
       and flags, the user stack, from the block at rsp. An assembler macro, so that the two
       ways share the text and neither pays a jump. */
    .macro RL4_SYSRET_TAIL
    mov r12, [rsp - 72]
    mov r13, [rsp - 64]
    mov r14, [rsp - 56]
    mov r15, [rsp - 48]
    mov rcx, [rsp - 40]
    mov r11, [rsp - 24]
    mov rsp, [rsp - 16]
    swapgs
    sysretq
    .endm

    .global rl4_return_to_user
rl4_return_to_user:
    /* The kernel is done with this entry: one more exit (gs:56, see `CpuHeader::exits`). */
    inc qword ptr gs:[56]
    mov rsp, gs:[32]
    cmp qword ptr [rsp], 0
    jne .Lrl4_iret_exit
    mov rax, [rsp - 160]
    mov rbx, [rsp - 152]
    mov rdx, [rsp - 136]
    mov rsi, [rsp - 128]
    mov rdi, [rsp - 120]
    mov rbp, [rsp - 112]
    mov r8, [rsp - 104]
    mov r9, [rsp - 96]
    mov r10, [rsp - 88]
    RL4_SYSRET_TAIL

    /* The way back with a message for the thread that runs now (`return_with_message`): the
       result word 0, and the badge, tag and words in the IPC result registers (rdi, rsi, rdx,
       r10, r8, r9), which its block does not hold; every other register from its block. A
       thread to be resumed by `iretq` gets the message written into its block first. (Its
       last nine instructions are the ordinary way back's, `RL4_SYSRET_TAIL`, expanded again
       rather than jumped to: a shared tail would cost one of the two ways an instruction at
       every system call.) */
    .global rl4_return_with_message
rl4_return_with_message:
    inc qword ptr gs:[56]
    mov rsp, gs:[32]
    cmp qword ptr [rsp], 0
    jne 3f
    xor eax, eax
    mov rbx, [rsp - 152]
    mov rbp, [rsp - 112]
    RL4_SYSRET_TAIL
3:  mov qword ptr [rsp - 160], 0
    mov [rsp - 136], rdx
    mov [rsp - 128], rsi
    mov [rsp - 120], rdi
    mov [rsp - 104], r8
    mov [rsp - 96], r9
    mov [rsp - 88], r10
.Lrl4_iret_exit:
    sub rsp, 160
    pop rax
    pop rbx
    pop rcx
    pop rdx
    pop rsi
    pop rdi
    pop rbp
    pop r8
    pop r9
    pop r10
    pop r11
    pop r12
    pop r13
    pop r14
    pop r15
    swapgs
    iretq

    /* #DB, on its own IST stack (see the module's documentation). No error code. */
    .global rl4_debug_entry
rl4_debug_entry:
    test qword ptr [rsp + 8], 3
    jnz 8f
    /* Kernel mode: on the first instruction of `syscall`'s entry or among the trap stubs (a
       stub's first instruction, or the self-check's target), a #DB held back by `mov ss`/`pop
       ss`; `GS` may be the user's, so nothing here goes through it. */
    push rax
    lea rax, [rip + rl4_syscall_entry]
    cmp [rsp + 8], rax
    je 9f
    lea rax, [rip + .Lrl4_trap_stubs]
    cmp [rsp + 8], rax
    jb 10f
    lea rax, [rip + .Lrl4_trap_stubs_end]
    cmp [rsp + 8], rax
    jae 10f
9:  and qword ptr [rsp + 24], ~0x100
    lock inc qword ptr [rip + {passed}]
    pop rax
    iretq
10: pop rax
    /* Any other #DB in kernel mode: the kernel-bug report, through the common path. */
8:  push 0
    push 1
    jmp rl4_trap_common

rl4_trap_common:
    /* An interrupt or exception gate clears neither the direction flag nor the alignment-check
       flag (`syscall` masks both, see `init_syscall`): a user thread may have set them, and the
       kernel's code (its `rep movs` copies, SMAP) assumes them clear. The frame keeps the
       thread's own flags for the way back. */
    cld
    test qword ptr [rsp + 24], 3
    jz 3f
    swapgs
    /* No load through `gs` before the branch above is resolved, on either side of it (a
       mispredicted one would otherwise read through the user's `GS` base, or the kernel's
       where the user's was meant). */
    lfence
    cmp byte ptr [rip + {smap}], 0
    je 7f
    clac
7:
    push rax
    mov rax, gs:[32]
    sub rax, 160
    mov [rax + 8], rbx
    mov [rax + 16], rcx
    mov [rax + 24], rdx
    mov [rax + 32], rsi
    mov [rax + 40], rdi
    mov [rax + 48], rbp
    mov [rax + 56], r8
    mov [rax + 64], r9
    mov [rax + 72], r10
    mov [rax + 80], r11
    mov [rax + 88], r12
    mov [rax + 96], r13
    mov [rax + 104], r14
    mov [rax + 112], r15
    pop rbx
    mov [rax], rbx
    mov rbx, [rsp + 16]
    mov [rax + 120], rbx
    mov rbx, [rsp + 24]
    mov [rax + 128], rbx
    mov rbx, [rsp + 32]
    mov [rax + 136], rbx
    mov rbx, [rsp + 40]
    mov [rax + 144], rbx
    mov rbx, [rsp + 48]
    mov [rax + 152], rbx
    mov rdi, [rsp]
    mov rsi, [rsp + 8]
    mov qword ptr [rax + 160], 1
    mov rsp, gs:[16]
    xor ebp, ebp
    call rl4_user_trap
    jmp rl4_return_to_user

3:  lfence
    push r15
    push r14
    push r13
    push r12
    push r11
    push r10
    push r9
    push r8
    push rbp
    push rdi
    push rsi
    push rdx
    push rcx
    push rbx
    push rax
    mov rdi, rsp
    call rl4_kernel_trap
    pop rax
    pop rbx
    pop rcx
    pop rdx
    pop rsi
    pop rdi
    pop rbp
    pop r8
    pop r9
    pop r10
    pop r11
    pop r12
    pop r13
    pop r14
    pop r15
    add rsp, 16
    iretq

    /* rax = 0 on success, 1 if a page fault stopped the copy. rdi = dst, rsi = src, rdx = len. */
    .global rl4_copy_user
rl4_copy_user:
    cmp byte ptr [rip + {smap}], 0
    je 4f
    stac
4:  mov rcx, rdx
    .global rl4_copy_user_insn
rl4_copy_user_insn:
    rep movsb
    xor eax, eax
    jmp 5f
    .global rl4_copy_user_fixup
rl4_copy_user_fixup:
    mov eax, 1
5:  cmp byte ptr [rip + {smap}], 0
    je 6f
    clac
6:  ret

    /* `check_debug_trap`: the trap flag set, a jump, and the single-step trap on its target. */
    .global rl4_debug_check
rl4_debug_check:
    pushfq
    or qword ptr [rsp], 0x100
    popfq
    jmp .Lrl4_debug_check_target
    "#,
    smap = sym SMAP,
    passed = sym DEBUG_PASSED,
);

/// The debug exceptions taken in kernel mode on an entry's first instruction and passed over
/// (all CPUs).
pub static DEBUG_PASSED: AtomicU64 = AtomicU64::new(0);

/// Checks on this CPU that a #DB in kernel mode on a trap stub's first instruction is passed
/// over as one on the entry's would be ([`rl4_debug_entry`]): a single step with the trap flag
/// set in kernel mode lands there, and comes back with the flag clear. Panics otherwise (a
/// kernel whose #DB stub does not do this would panic in the check anyway).
pub fn check_debug_trap() {
    let before = DEBUG_PASSED.load(Ordering::SeqCst);
    // SAFETY: the routine sets the trap flag, jumps to a target among the stubs that reads the
    // flags into `rax` and returns; the single-step trap in between goes to this CPU's #DB stub
    // (its IDT and IST stack are loaded), which clears the flag in its frame and returns. It
    // touches nothing else (interrupts stay off: `popfq` keeps IF as it was, clear).
    let flags: u64;
    unsafe { core::arch::asm!("call rl4_debug_check", out("rax") flags, clobber_abi("C")) };
    let after = DEBUG_PASSED.load(Ordering::SeqCst);
    assert!(flags & 0x100 == 0 && after > before, "the #DB stub did not pass over a trap on an entry's first instruction (flags {flags:#x}, passed {before} -> {after})");
}

unsafe extern "C" {
    fn rl4_syscall_entry();
    fn rl4_debug_entry();
    fn rl4_return_to_user() -> !;
    fn rl4_return_with_message() -> !;
    fn rl4_copy_user(dst: *mut u8, src: *const u8, len: usize) -> u64;
    static rl4_copy_user_insn: u8;
    static rl4_copy_user_fixup: u8;
    static rl4_trap_table: [u64; 2];
    static rl4_trap_table_end: u8;
}

/// (vector, stub address) for every vector with an entry stub.
fn stubs() -> &'static [[u64; 2]] {
    let start = (&raw const rl4_trap_table) as *const [u64; 2];
    let n = ((&raw const rl4_trap_table_end) as usize - start as usize) / 16;
    // SAFETY: the table is emitted by `trap_stubs!` as `n` pairs of quads in .rodata.
    unsafe { core::slice::from_raw_parts(start, n) }
}

/// Points this CPU's `syscall` at the entry above: STAR (kernel CS 0x08, user base 0x10 so that
/// `sysret` loads CS 0x23 and SS 0x1b), LSTAR, and SFMASK (IF, TF, DF, AC and NT cleared on
/// entry), then sets EFER.SCE and clears EFER.FFXSR.
pub fn init_syscall() {
    // SAFETY: the selectors match this CPU's GDT layout (gdt.rs); the entry point is the stub
    // above; masking IF keeps interrupts off in the kernel.
    unsafe {
        Star::write_raw(0x13, 0x08);
        LStar::write(VirtAddr::new(rl4_syscall_entry as *const () as u64));
        SFMask::write(
            RFlags::INTERRUPT_FLAG
                | RFlags::TRAP_FLAG
                | RFlags::DIRECTION_FLAG
                | RFlags::ALIGNMENT_CHECK
                | RFlags::NESTED_TASK,
        );
        // FFXSR (AMD's fast FXSAVE/FXRSTOR, which firmware may leave set) makes both skip the
        // XMM registers at CPL 0: the FXSAVE switch (`fpu.rs`) would leave one thread's
        // registers to the next. Cleared on every CPU (reserved, and zero, on Intel).
        Efer::update(|e| {
            e.insert(EferFlags::SYSTEM_CALL_EXTENSIONS);
            e.remove(EferFlags::FAST_FXSAVE_FXRSTOR);
        });
    }
    reset_user_state();
}

/// Puts the state a user thread could use against the kernel's entry code where that code
/// assumes it is, whatever the firmware or boot loader left (an application processor starts
/// clean from INIT, the bootstrap one may not): the user's `GS` base (the inactive one,
/// `IA32_KERNEL_GS_BASE`) 0, as the NMI, #DF and #MC handlers' `GS` test assumes; no user
/// `wrgsbase`/`wrfsbase` (`CR4.FSGSBASE`), protection keys (`CR4.PKE`, whose `PKRU` the kernel
/// does not switch) or `rdpmc` (`CR4.PCE`); `sysenter` faults (`IA32_SYSENTER_CS` 0); no
/// hardware breakpoints (`DR7`); and, where the CPU has it, `sgdt`/`sidt`/`sldt`/`smsw`/`str`
/// fault in user mode (`CR4.UMIP`: they would show kernel addresses).
fn reset_user_state() {
    let umip = core::arch::x86_64::__cpuid(0).eax >= 7 && core::arch::x86_64::__cpuid_count(7, 0).ecx & (1 << 2) != 0;
    // SAFETY: run by each CPU while it starts, with interrupts off and in kernel mode, after
    // its `GS` base was set (the active one); none of these registers is relied on by the
    // kernel except as set here.
    unsafe {
        x86_64::registers::model_specific::KernelGsBase::write(VirtAddr::zero());
        x86_64::registers::model_specific::Msr::new(0x174).write(0);
        core::arch::asm!("mov dr7, {}", in(reg) 0x400u64, options(nostack, preserves_flags));
        x86_64::registers::control::Cr4::update(|c| {
            use x86_64::registers::control::Cr4Flags as F;
            c.remove(F::FSGSBASE | F::PROTECTION_KEY_USER | F::PERFORMANCE_MONITOR_COUNTER);
            c.set(F::USER_MODE_INSTRUCTION_PREVENTION, umip);
        });
    }
}

/// Whether kernel code runs with the flags it assumes: the direction flag clear, and with SMAP
/// the alignment-check flag too (it would turn SMAP off; without SMAP it has no effect in kernel
/// mode). The trap entry makes it so (`cld`, `clac`); this reads `RFLAGS` to check it.
#[inline(always)]
pub fn kernel_flags_clean() -> bool {
    let f = x86_64::registers::rflags::read_raw();
    let bad = RFlags::DIRECTION_FLAG.bits() | if SMAP.load(Ordering::Relaxed) { RFlags::ALIGNMENT_CHECK.bits() } else { 0 };
    f & bad == 0
}

/// Closes user access (`clac`) where this CPU has SMAP on: for the handlers that do not enter
/// through `rl4_trap_common` (NMI, #DF, #MC, on their own stacks), which a user thread's `AC`
/// flag, or the user-copy routine's, would otherwise reach with SMAP off. (`cld` they get from
/// the compiler: an `x86-interrupt` function clears the direction flag at its start.) Their
/// `iretq` gives the interrupted code its own flags back. This CPU's CR4 is read, not the
/// machine-wide switch ([`set_smap`]): an application processor refused for want of SMAP
/// (`cpus::refuse`) has its IDT loaded and gets a panic's or a shutdown's NMI, and `clac` on a
/// CPU without SMAP is an invalid opcode.
#[inline(always)]
pub fn close_user_access() {
    if x86_64::registers::control::Cr4::read().contains(x86_64::registers::control::Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION) {
        // SAFETY: `clac` only clears RFLAGS.AC, and this CPU has SMAP (CR4.SMAP can be set on
        // no other); no memory or stack is touched.
        #[allow(unsafe_code)]
        unsafe {
            core::arch::asm!("clac", options(nomem, nostack))
        };
    }
}

/// Records whether SMAP is on (the user-copy routine then opens user access with `stac`).
pub fn set_smap(on: bool) {
    SMAP.store(on, Ordering::Relaxed);
}

/// Installs the entry stubs in `idt` (exceptions, except NMI/#DF/#MC which keep IST handlers,
/// and every interrupt vector: `trap_stubs!`). `debug_ist`: #DB on its own stack (a CPU whose
/// TSS is loaded); else through its plain stub (the boot's first IDT, `idt::load_early`).
pub fn install_stubs(idt: &mut InterruptDescriptorTable, debug_ist: bool) {
    for &[v, addr] in stubs() {
        let a = VirtAddr::new(addr);
        // SAFETY: each address is a stub that saves state and ends in `iretq` or `sysretq`
        // (directly, or through a kernel function that returns to user mode); a trap from user
        // mode runs on the CPU's kernel stack (TSS.RSP0), one taken in kernel mode (the idle
        // loop's interrupt window, a fault in the user copy) on the kernel stack in use; #DB on
        // its IST stack, filled in every CPU's TSS before its IDT is loaded
        // (`gdt::CpuTables::set_ist`), which the common path leaves for the kernel stack as it
        // does the RSP0 one.
        // Exception vectors are typed fields of the IDT.
        unsafe {
            match v {
                0 => idt.divide_error.set_handler_addr(a),
                // On its own stack ([`rl4_debug_entry`]), not through its plain stub.
                1 if debug_ist => idt.debug.set_handler_addr(VirtAddr::new(rl4_debug_entry as *const () as u64)).set_stack_index(crate::gdt::IST_DEBUG),
                1 => idt.debug.set_handler_addr(a),
                3 => idt.breakpoint.set_handler_addr(a),
                4 => idt.overflow.set_handler_addr(a),
                5 => idt.bound_range_exceeded.set_handler_addr(a),
                6 => idt.invalid_opcode.set_handler_addr(a),
                7 => idt.device_not_available.set_handler_addr(a),
                10 => idt.invalid_tss.set_handler_addr(a),
                11 => idt.segment_not_present.set_handler_addr(a),
                12 => idt.stack_segment_fault.set_handler_addr(a),
                13 => idt.general_protection_fault.set_handler_addr(a),
                14 => idt.page_fault.set_handler_addr(a),
                16 => idt.x87_floating_point.set_handler_addr(a),
                17 => idt.alignment_check.set_handler_addr(a),
                19 => idt.simd_floating_point.set_handler_addr(a),
                20 => idt.virtualization.set_handler_addr(a),
                21 => idt.cp_protection_exception.set_handler_addr(a),
                30 => idt.security_exception.set_handler_addr(a),
                v => idt[v as u8].set_handler_addr(a),
            };
        }
    }
}

/// Switches to the current thread (whose registers end at `gs:32`) in user mode.
pub fn return_to_user() -> ! {
    // SAFETY: the kernel set `gs:32` to a live thread's register block, whose resume word says
    // how it entered; the stub restores them and leaves the kernel.
    unsafe { rl4_return_to_user() }
}

/// Switches to the current thread in user mode, as [`return_to_user`] does, with a message
/// delivered to it: the system call it waits in answers 0, with `badge`, `tag` and `words` in
/// the IPC result registers ([`UserRegs::set_ipc_out`]'s), which go there from the CPU's
/// registers, not through its block (the IPC fast path: seven stores and seven loads fewer a
/// message, one `xor` more). The block's copies of those registers are left stale, as after any system call
/// that returns results (nothing reads a running thread's block; its next entry overwrites
/// them); a thread resumed by `iretq` gets the message written into its block first.
#[inline(always)]
pub fn return_with_message(badge: u64, tag: u64, words: [u64; 4]) -> ! {
    // SAFETY: as in `return_to_user`; the stub reads the six registers named here and none of
    // the kernel's stack, which it leaves.
    unsafe {
        core::arch::asm!(
            "jmp {exit}",
            exit = sym rl4_return_with_message,
            in("rdi") badge,
            in("rsi") tag,
            in("rdx") words[0],
            in("r10") words[1],
            in("r8") words[2],
            in("r9") words[3],
            options(noreturn)
        )
    }
}

/// Copies `dst.len()` bytes from user address `src` of the current address space. Fails if the
/// range is not wholly user space or touches a page that cannot be read.
pub fn copy_from_user(dst: &mut [u8], src: u64) -> Result<(), ()> {
    let end = src.checked_add(dst.len() as u64).ok_or(())?;
    if end > crate::layout::USER_END {
        return Err(());
    }
    // SAFETY: `src..end` is user space (checked, so canonical: only a page fault can happen
    // inside the copy); a page fault at `rl4_copy_user_insn` is caught by `rl4_kernel_trap`,
    // which resumes at `rl4_copy_user_fixup`, and reported as an error; `dst` is a valid
    // kernel buffer.
    match unsafe { rl4_copy_user(dst.as_mut_ptr(), src as *const u8, dst.len()) } {
        0 => Ok(()),
        _ => Err(()),
    }
}

/// Copies `src` to user address `dst` of the current address space (see [`copy_from_user`]).
pub fn copy_to_user(dst: u64, src: &[u8]) -> Result<(), ()> {
    let end = dst.checked_add(src.len() as u64).ok_or(())?;
    if end > crate::layout::USER_END {
        return Err(());
    }
    // SAFETY: as in `copy_from_user`; a write to a read-only or unmapped user page faults and
    // is caught.
    match unsafe { rl4_copy_user(dst as *mut u8, src.as_ptr(), src.len()) } {
        0 => Ok(()),
        _ => Err(()),
    }
}

/// Called for every trap taken in kernel mode.
#[unsafe(no_mangle)]
extern "C" fn rl4_kernel_trap(f: &mut KernelFrame) {
    let v = f.vector as u8;
    if v >= 32 {
        unsafe extern "Rust" {
            fn rl4_kernel_interrupt(vector: u8);
        }
        // SAFETY: defined by the kernel crate with this signature.
        unsafe { rl4_kernel_interrupt(v) };
        return;
    }
    if v == 14 && f.rip == (&raw const rl4_copy_user_insn) as u64 {
        f.rip = (&raw const rl4_copy_user_fixup) as u64;
        return;
    }
    crate::idt::kernel_exception(f);
}

/// A thread's saved user registers, and how they must be resumed.
///
/// Access protocol (what makes the `Sync` below sound): the entry code and the CPU that is
/// running the thread are the only writers while it runs; while it does not run, only code that
/// holds the thread's scheduling lock touches it. The kernel never runs one thread on two CPUs,
/// so at most one party accesses the registers at a time. Accessors copy in and out and never
/// hand out references that outlive the call.
#[repr(C)]
pub struct RegsCell {
    regs: core::cell::UnsafeCell<UserRegs>,
    /// The resume word: non-zero if the registers must be restored with `iretq` (a new thread,
    /// or one that entered by a trap). Right after the block, where the entry code writes it
    /// (`[rsp]` once `rsp` is the block's end, `gs:32`) and the way back tests it: a switch
    /// between threads moves nothing for it (before the twenty-eighth session it was a per-CPU
    /// word, `gs:40`, saved into the leaving thread and loaded from the next one: four
    /// instructions per direct switch).
    iret: AtomicU64,
}
const _: () = assert!(core::mem::offset_of!(RegsCell, iret) == core::mem::size_of::<UserRegs>());

// SAFETY: see the access protocol above.
unsafe impl Sync for RegsCell {}

impl RegsCell {
    /// Registers of a new thread (first resumed with `iretq`).
    pub fn new(r: UserRegs) -> Self {
        RegsCell { regs: core::cell::UnsafeCell::new(r), iret: AtomicU64::new(1) }
    }

    /// One past the end of the block: what `gs:32` holds while this thread runs.
    pub fn end_addr(&self) -> u64 {
        self.regs.get() as u64 + core::mem::size_of::<UserRegs>() as u64
    }

    /// A copy of the registers.
    pub fn get(&self) -> UserRegs {
        // SAFETY: per the access protocol no one else writes them now.
        unsafe { *self.regs.get() }
    }

    /// Runs `f` on the registers.
    pub fn with<R>(&self, f: impl FnOnce(&mut UserRegs) -> R) -> R {
        // SAFETY: per the access protocol this is the only access now; the reference does not
        // escape `f`.
        f(unsafe { &mut *self.regs.get() })
    }
}

/// Makes `regs` the running thread's registers on this CPU, resumed as they were saved (by
/// their resume word).
#[inline]
pub fn set_current(regs: &RegsCell) {
    crate::percpu::set_regs_end(regs.end_addr());
}

/// `f` on the running thread's saved registers, reached through `gs:32` (the end of its block),
/// for handlers that write its results straight there: one `gs:` load, no look-up of the thread.
#[inline(always)]
#[allow(unsafe_code)]
fn with_current_block<R>(f: impl FnOnce(&mut UserRegs) -> R) -> R {
    let end = crate::percpu::regs_end();
    // SAFETY: gs:32 is the end of the running thread's `UserRegs` block (set by `set_current`
    // before the thread entered, or by a switch since); only this CPU touches the running
    // thread's registers while it is in the kernel, and the reference does not escape `f`.
    f(unsafe { &mut *((end - core::mem::size_of::<UserRegs>() as u64) as *mut UserRegs) })
}

/// Writes the result word of the running thread's system call straight into its saved
/// registers, for handlers that need nothing else of it.
#[inline(always)]
pub fn set_current_result(v: u64) {
    with_current_block(|r| r.set_result(v));
}

/// Writes a delivered message ([`UserRegs::set_ipc_out`]) straight into the running thread's
/// saved registers, for a fast path whose partner, now current, returns to user mode by the
/// ordinary way back.
#[inline(always)]
pub fn set_current_ipc_out(badge: u64, tag: u64, words: [u64; 4]) {
    with_current_block(|r| r.set_ipc_out(badge, tag, words));
}

