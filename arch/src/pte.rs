//! The choice of a user page's page-table entry flags (pure, host-tested; `paging::map_user`
//! applies it).
use x86_64::structures::paging::PageTableFlags as F;

/// The flags of a user page's entry: present, user, writable if asked, not executable unless
/// asked (when the CPU has NX: `nx_on`). Device memory (`device`) is never executable and is
/// uncached: PCD and PWT select PAT entry 3, uncacheable (UC) both in the power-on setting
/// and in the one Limine programs (rl4 does not program the PAT itself), so that every read
/// and write reaches the device in order and nothing is prefetched or combined.
pub fn user_pte_flags(write: bool, exec: bool, device: bool, nx_on: bool) -> F {
    let mut flags = F::PRESENT | F::USER_ACCESSIBLE;
    if write {
        flags |= F::WRITABLE;
    }
    if (!exec || device) && nx_on {
        flags |= F::NO_EXECUTE;
    }
    if device {
        flags |= F::NO_CACHE | F::WRITE_THROUGH;
    }
    flags
}

/// The page-fault error code's bit that says the access was an instruction fetch.
pub const PF_FETCH: u64 = 1 << 4;
/// ... that it was a write.
pub const PF_WRITE: u64 = 1 << 1;

/// The error code of a user page fault at `addr` (CR2) taken by the instruction at `rip`, with
/// the fetch bit made reliable. The CPU reports that bit only with NX or SMEP enabled
/// (`hw_reports`; the kernel passes NX alone: with SMEP on and NX off the CPU's bit and this
/// rule agree on a fetch); without them it is 0 even for a fetch, and a pager could not tell a fetch
/// from a read. Then the kernel decides: a read of a page that is not mapped (no other bit of
/// the code set: not a write, not a protection, reserved-bit or protection-key fault), at an
/// address among the 15 bytes an instruction at `rip` may span, is the fetch of that
/// instruction. Only one case is told wrong: an instruction that ends less than 15 bytes
/// before a page boundary and reads the next page, which is not mapped, is reported as a fetch
/// (its length would tell; the kernel does not decode instructions).
///
/// At a kernel address (the upper half) the code is a protection fault whether or not the
/// kernel maps the page (as Linux reports it): the CPU's present bit there would tell a task
/// with a fault handler which kernel pages are mapped — the physical memory map, the device
/// window, the kernel stacks — page by page. The fetch bit is decided as for a page that is
/// not mapped.
pub fn fault_error(error: u64, addr: u64, rip: u64, hw_reports: bool) -> u64 {
    const PRESENT: u64 = 1 << 0;
    const RSVD: u64 = 1 << 3;
    const PK: u64 = 1 << 5;
    if addr >= crate::layout::USER_END {
        let e = error & !(PRESENT | RSVD | PK);
        let fetch = !hw_reports && e & PF_WRITE == 0 && addr.wrapping_sub(rip) < 15;
        return e | PRESENT | if fetch { PF_FETCH } else { 0 };
    }
    if hw_reports || error & (PRESENT | PF_WRITE | RSVD | PK) != 0 {
        return error;
    }
    if addr.wrapping_sub(rip) < 15 { error | PF_FETCH } else { error }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At a kernel address the code is the same whether the page is mapped (the CPU's present
    /// bit set) or not: a protection fault, with the fetch bit as for a page not mapped.
    #[test]
    fn fault_error_hides_kernel_mappings() {
        const K: u64 = 0xffff_8000_0000_0000;
        for hw in [false, true] {
            // A read, a write, a fetch (with NX the CPU's bit), present or not.
            assert_eq!(fault_error(0x4, K, 0x1000, hw), fault_error(0x5, K, 0x1000, hw));
            assert_eq!(fault_error(0x5, K, 0x1000, hw), 0x5);
            assert_eq!(fault_error(0x6, K + 8, 0x1000, hw), 0x7);
            assert_eq!(fault_error(0x7, K + 8, 0x1000, hw), 0x7);
            assert_eq!(fault_error(0x14, K, K, hw), fault_error(0x15, K, K, hw));
            assert_eq!(fault_error(0x15, K, K, true), 0x15);
            // A reserved-bit fault is never told either.
            assert_eq!(fault_error(0xd, K, 0x1000, hw), 0x5);
        }
        // Without NX a fetch is told by the address, as for a user page that is not mapped.
        assert_eq!(fault_error(0x5, K + 3, K, false), 0x15);
        assert_eq!(fault_error(0x5, K + 15, K, false), 0x5);
    }

    #[test]
    fn fault_error_fetch_bit_without_nx() {
        // With NX or SMEP the CPU's bit stands as it is.
        assert_eq!(fault_error(0x4, 0x1000, 0x1000, true), 0x4);
        assert_eq!(fault_error(0x14, 0x1000, 0x1000, true), 0x14);
        // Without: a fault at rip, or in the next page for an instruction that spans it.
        assert_eq!(fault_error(0x4, 0x1000, 0x1000, false), 0x14);
        assert_eq!(fault_error(0x4, 0x2000, 0x1ffa, false), 0x14);
        assert_eq!(fault_error(0x4, 0x1ffa + 14, 0x1ffa, false), 0x14);
        // A read elsewhere, or before rip, or 15 bytes on, is a read; a write never a fetch.
        assert_eq!(fault_error(0x4, 0x1ffa + 15, 0x1ffa, false), 0x4);
        assert_eq!(fault_error(0x4, 0x0fff, 0x1000, false), 0x4);
        assert_eq!(fault_error(0x4, 0x8000, 0x1000, false), 0x4);
        assert_eq!(fault_error(0x6, 0x1000, 0x1000, false), 0x6);
        assert_eq!(fault_error(0x5, 0x1000, 0x1000, false), 0x5);
        assert_eq!(fault_error(0xc, 0x1000, 0x1000, false), 0xc);
        assert_eq!(fault_error(0x24, 0x1000, 0x1000, false), 0x24);
        // No wrap-around at the top of the address space.
        assert_eq!(fault_error(0x4, 3, u64::MAX - 2, false), 0x14);
        // (The top page is a kernel address: a protection fault, whatever maps it.)
        assert_eq!(fault_error(0x4, u64::MAX, 3, false), 0x5);
    }

    #[test]
    fn user_pte_flags_device_pages_are_uncached_and_never_executable() {
        let base = F::PRESENT | F::USER_ACCESSIBLE;
        assert_eq!(user_pte_flags(false, false, false, true), base | F::NO_EXECUTE);
        assert_eq!(user_pte_flags(true, true, false, true), base | F::WRITABLE);
        assert_eq!(user_pte_flags(true, false, false, false), base | F::WRITABLE);
        let uc = F::NO_CACHE | F::WRITE_THROUGH;
        assert_eq!(user_pte_flags(true, false, true, true), base | F::WRITABLE | F::NO_EXECUTE | uc);
        assert_eq!(user_pte_flags(true, true, true, true), base | F::WRITABLE | F::NO_EXECUTE | uc, "never executable");
        assert_eq!(user_pte_flags(false, false, true, true), base | F::NO_EXECUTE | uc);
        // RAM is never mapped uncached.
        for (w, x) in [(false, false), (true, false), (true, true)] {
            assert!(!user_pte_flags(w, x, false, true).intersects(uc));
        }
    }
}
