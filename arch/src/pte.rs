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

#[cfg(test)]
mod tests {
    use super::*;

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
