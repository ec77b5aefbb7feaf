//! What a thread's saved user registers may hold: the rule the consistency check applies to
//! every thread (host-tested; the register block itself is `entry::UserRegs`).

/// User segment selectors (GDT entries 4 and 3, RPL 3).
pub const USER_CS: u64 = 0x23;
pub const USER_SS: u64 = 0x1b;
/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;
/// RFLAGS.IOPL (bits 12-13) and RFLAGS.VM (bit 17): never set in user mode here.
const RFLAGS_IOPL_VM: u64 = 3 << 12 | 1 << 17;

/// What in a thread's saved `rip`, `cs`, `ss` and `rflags` would keep it from returning to
/// user mode as it is, or let it do there what user mode may not: `None` if nothing. A `rip`
/// at or above `USER_END` is not a canonical user address (`iretq` faults on it in kernel
/// mode, with the thread's own register block for a stack, and so does `sysretq` on Intel
/// CPUs); the selectors must be user mode's; user mode runs with interrupts on (it cannot
/// clear `IF`: `IOPL` is 0), with `IOPL` 0 and never in virtual-8086 mode. Every writer of
/// these keeps them so (`ThreadCreate`, a fault reply, the entries): the check holds them to it.
pub fn unreturnable(rip: u64, cs: u64, ss: u64, rflags: u64) -> Option<&'static str> {
    if rip >= crate::layout::USER_END {
        Some("its instruction pointer is not a user address")
    } else if cs != USER_CS || ss != USER_SS {
        Some("its code or stack selector is not user mode's")
    } else if rflags & RFLAGS_IF == 0 {
        Some("its interrupt flag is clear")
    } else if rflags & RFLAGS_IOPL_VM != 0 {
        Some("its I/O privilege level is not 0 or its virtual-8086 flag is set")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::USER_END;

    /// A new thread's registers, a `syscall`'s (RF, TF, AC, DF, NT and the arithmetic flags
    /// may be set by the user) and the highest user address pass; each broken part is named.
    #[test]
    fn unreturnable_names_what_cannot_go_back() {
        assert_eq!(unreturnable(0x20_0000, USER_CS, USER_SS, RFLAGS_IF), None);
        let user_flags = RFLAGS_IF | 1 << 16 | 1 << 8 | 1 << 18 | 1 << 10 | 1 << 14 | 0xd5 | 2;
        assert_eq!(unreturnable(USER_END - 1, USER_CS, USER_SS, user_flags), None);
        assert!(unreturnable(USER_END, USER_CS, USER_SS, RFLAGS_IF).unwrap().contains("instruction pointer"));
        assert!(unreturnable(0xffff_8000_0000_0000, USER_CS, USER_SS, RFLAGS_IF).unwrap().contains("instruction pointer"));
        assert!(unreturnable(0x1000, 0x08, USER_SS, RFLAGS_IF).unwrap().contains("selector"));
        assert!(unreturnable(0x1000, USER_CS, 0x10, RFLAGS_IF).unwrap().contains("selector"));
        assert!(unreturnable(0x1000, USER_CS, USER_SS, 0x202 & !RFLAGS_IF).unwrap().contains("interrupt flag"));
        assert!(unreturnable(0x1000, USER_CS, USER_SS, RFLAGS_IF | 3 << 12).unwrap().contains("privilege"));
        assert!(unreturnable(0x1000, USER_CS, USER_SS, RFLAGS_IF | 1 << 17).unwrap().contains("virtual-8086"));
    }
}
