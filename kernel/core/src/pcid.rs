//! Process-context identifiers: one PCID per address space, and the per-CPU record that says
//! when a CR3 switch may keep the TLB.
//!
//! A PCID is handed out with a *generation* that is unique for the life of the kernel. Each CPU
//! remembers, per PCID, the generation whose translations it may still hold. Switching to an
//! address space may set CR3's no-flush bit only if this CPU's record matches the space's
//! current generation; a space whose mappings were removed gets a new generation (so every CPU
//! flushes its old entries on its next switch), and a PCID reused by a new space carries a new
//! generation too. CPUs without PCID never use this.
use alloc::vec::Vec;

/// PCIDs 1..4095 are handed out; 0 is the kernel's own (no user space).
pub const PCIDS: usize = 4096;

pub struct PcidAllocator {
    free: Vec<u16>,
    next_generation: u64,
}

impl Default for PcidAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl PcidAllocator {
    pub fn new() -> Self {
        PcidAllocator { free: (1..PCIDS as u16).rev().collect(), next_generation: 1 }
    }

    /// [`PcidAllocator::new`], or `None` if the heap has no room for it.
    pub fn try_new() -> Option<Self> {
        let mut free = Vec::new();
        free.try_reserve_exact(PCIDS - 1).ok()?;
        free.extend((1..PCIDS as u16).rev());
        Some(PcidAllocator { free, next_generation: 1 })
    }

    /// A fresh generation number (never returned twice).
    pub fn generation(&mut self) -> u64 {
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }

    /// A PCID and its first generation, or `None` when all are in use (the space then runs
    /// with PCID 0 and flushes on every switch).
    pub fn alloc(&mut self) -> Option<(u16, u64)> {
        let p = self.free.pop()?;
        Some((p, self.generation()))
    }

    pub fn free(&mut self, pcid: u16) {
        debug_assert!(pcid != 0 && !self.free.contains(&pcid));
        self.free.push(pcid);
    }
}

/// One CPU's record of which generation each PCID's TLB entries belong to.
pub struct PcidCache {
    generation: Vec<u64>,
}

impl Default for PcidCache {
    fn default() -> Self {
        Self::new()
    }
}

impl PcidCache {
    pub fn new() -> Self {
        PcidCache { generation: alloc::vec![0; PCIDS] }
    }

    /// [`PcidCache::new`], or `None` if the heap has no room for it.
    pub fn try_new() -> Option<Self> {
        let mut generation = Vec::new();
        generation.try_reserve_exact(PCIDS).ok()?;
        generation.resize(PCIDS, 0);
        Some(PcidCache { generation })
    }

    /// Bytes of heap it takes.
    pub const BYTES: usize = PCIDS * 8;

    /// Called on a switch to (`pcid`, `generation`): returns whether the TLB entries tagged
    /// `pcid` must be flushed, and records that after this switch they belong to `generation`.
    pub fn switch_needs_flush(&mut self, pcid: u16, generation: u64) -> bool {
        if pcid == 0 {
            return true;
        }
        let slot = &mut self.generation[pcid as usize];
        let flush = *slot != generation;
        *slot = generation;
        flush
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcids_are_unique_until_freed_and_generations_never_repeat() {
        let mut a = PcidAllocator::new();
        let (p1, g1) = a.alloc().unwrap();
        let (p2, g2) = a.alloc().unwrap();
        assert_ne!(p1, p2);
        assert!(p1 != 0 && p2 != 0);
        a.free(p1);
        let (p3, g3) = a.alloc().unwrap();
        assert_eq!(p3, p1, "freed PCID is reused");
        assert!(g3 > g2 && g2 > g1, "but with a new generation");
    }

    #[test]
    fn runs_out_after_4095() {
        let mut a = PcidAllocator::new();
        for _ in 1..PCIDS {
            assert!(a.alloc().is_some());
        }
        assert!(a.alloc().is_none());
    }

    #[test]
    fn flush_only_when_the_generation_changed() {
        let mut a = PcidAllocator::new();
        let mut cpu = PcidCache::new();
        let (p, g) = a.alloc().unwrap();
        assert!(cpu.switch_needs_flush(p, g), "first use on this CPU");
        assert!(!cpu.switch_needs_flush(p, g), "same space again: keep the TLB");
        let g2 = a.generation(); // the space unmapped something
        assert!(cpu.switch_needs_flush(p, g2));
        assert!(!cpu.switch_needs_flush(p, g2));
        a.free(p);
        let (p2, g3) = a.alloc().unwrap();
        assert_eq!(p2, p);
        assert!(cpu.switch_needs_flush(p2, g3), "a reused PCID never inherits old entries");
        assert!(cpu.switch_needs_flush(0, 0), "PCID 0 always flushes");
    }
}
