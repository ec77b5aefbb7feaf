//! Which CPUs to start: the MADT's processor entries turned into a start plan.
//!
//! Rules (ACPI 6.5 §5.2.12.2 and §5.2.12.12):
//! * flag bit 0 (*Enabled*) set: the processor is present and usable: start it;
//! * bit 0 clear and bit 1 (*Online Capable*) set: it may be hot-added later: not started now;
//! * both clear: disabled: never started;
//! * APIC id 0xff (xAPIC entry) or 0xffff_ffff (x2APIC entry) is not a processor;
//! * an APIC id listed twice (an xAPIC and an x2APIC entry for one CPU) is started once;
//! * an id above 254 needs the local APIC in x2APIC mode;
//! * the bootstrap CPU (the one running this) becomes CPU 0 whatever its place in the table;
//! * `maxcpus` and [`MAX_CPUS`](crate::MAX_CPUS) cut the list, in table order.
use alloc::vec::Vec;

/// One processor entry of the MADT (type 0 *Processor Local APIC* or type 9 *Local x2APIC*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuEntry {
    pub apic_id: u32,
    pub uid: u32,
    pub flags: u32,
    /// Came from a Local x2APIC entry.
    pub x2: bool,
}

pub const FLAG_ENABLED: u32 = 1;
pub const FLAG_ONLINE_CAPABLE: u32 = 2;

/// Why a processor entry is not started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    Disabled,
    HotPluggable,
    InvalidId,
    Duplicate,
    NeedsX2Apic,
    OverMaxCpus,
    OverLimit,
    /// No page below 640 KiB was free to start application processors from.
    NoTrampoline,
    /// The memory had no room for its per-CPU blocks with the root task's start (or for one
    /// before it).
    NoMemory,
    /// Its CPUID (or that of one before it) lacks what the bootstrap CPU set up for every CPU.
    Unlike,
    /// It (or one before it) never answered its start (`run=root`).
    NoAnswer,
}

impl Skip {
    pub fn describe(self) -> &'static str {
        match self {
            Skip::Disabled => "disabled by firmware",
            Skip::HotPluggable => "not present (online-capable, may be hot-added)",
            Skip::InvalidId => "invalid APIC id",
            Skip::Duplicate => "listed twice",
            Skip::NeedsX2Apic => "APIC id > 254 needs x2APIC mode",
            Skip::OverMaxCpus => "beyond maxcpus=",
            Skip::OverLimit => "beyond rl4's CPU limit",
            Skip::NoTrampoline => "no free page below 640 KiB to start it from",
            Skip::NoMemory => "no memory for it (or for one before it) and the root task",
            Skip::Unlike => "it (or one before it) lacks what the bootstrap CPU set up for every CPU",
            Skip::NoAnswer => "it (or one before it) never answered its start",
        }
    }
}

/// The CPUs to run, BSP first; and the entries left out, with the reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `cpus[i]` is CPU index `i`; `cpus[0]` is the bootstrap CPU.
    pub cpus: Vec<CpuEntry>,
    pub skipped: Vec<(CpuEntry, Skip)>,
    /// The BSP was missing from the MADT and was added (firmware bug, reported).
    pub bsp_missing: bool,
}

impl Plan {
    /// Leaves every CPU but the bootstrap one out, for `why` (they are listed as skipped).
    pub fn bsp_only(&mut self, why: Skip) {
        self.keep_first(1, why);
    }

    /// Keeps the first `n` CPUs (at least the bootstrap one) and leaves the others out, for
    /// `why` (listed as skipped, in order).
    pub fn keep_first(&mut self, n: usize, why: Skip) {
        let n = n.clamp(1, self.cpus.len().max(1));
        let rest: Vec<_> = self.cpus.drain(n.min(self.cpus.len())..).map(|e| (e, why)).collect();
        self.skipped.extend(rest);
    }
}

/// Builds the start plan. `bsp_apic_id` is the running CPU's own APIC id; `x2apic_mode` says
/// whether the local APICs run in x2APIC mode; `limit` is the most CPUs the kernel supports.
pub fn plan(entries: &[CpuEntry], bsp_apic_id: u32, x2apic_mode: bool, maxcpus: Option<u32>, limit: usize) -> Plan {
    let mut p = Plan::default();
    let want = maxcpus.map_or(limit, |m| (m as usize).min(limit)).max(1);
    let bsp = entries.iter().find(|e| e.apic_id == bsp_apic_id).copied();
    p.bsp_missing = bsp.is_none();
    p.cpus.push(bsp.unwrap_or(CpuEntry { apic_id: bsp_apic_id, uid: 0, flags: FLAG_ENABLED, x2: false }));
    let mut bsp_seen = false;
    for &e in entries {
        let invalid = if e.x2 { e.apic_id == u32::MAX } else { e.apic_id == 0xff };
        let reason = if e.apic_id == bsp_apic_id {
            if !bsp_seen {
                bsp_seen = true;
                continue;
            }
            Some(Skip::Duplicate)
        } else if invalid {
            Some(Skip::InvalidId)
        } else if e.flags & FLAG_ENABLED == 0 {
            Some(if e.flags & FLAG_ONLINE_CAPABLE != 0 { Skip::HotPluggable } else { Skip::Disabled })
        } else if p.cpus.iter().any(|c| c.apic_id == e.apic_id) {
            Some(Skip::Duplicate)
        } else if e.apic_id > 254 && !x2apic_mode {
            Some(Skip::NeedsX2Apic)
        } else if p.cpus.len() >= want {
            Some(if maxcpus.is_some_and(|m| (m as usize) < limit) { Skip::OverMaxCpus } else { Skip::OverLimit })
        } else {
            None
        };
        match reason {
            Some(r) => p.skipped.push((e, r)),
            None => p.cpus.push(e),
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lapic(id: u32, flags: u32) -> CpuEntry {
        CpuEntry { apic_id: id, uid: id, flags, x2: false }
    }
    fn x2(id: u32, flags: u32) -> CpuEntry {
        CpuEntry { apic_id: id, uid: id, flags, x2: true }
    }
    fn ids(p: &Plan) -> Vec<u32> {
        p.cpus.iter().map(|c| c.apic_id).collect()
    }

    #[test]
    fn bsp_only_keeps_the_bsp_and_lists_the_rest() {
        let e: Vec<_> = (0..4).map(|i| lapic(i, 1)).collect();
        let mut p = plan(&e, 2, true, None, 256);
        p.bsp_only(Skip::NoTrampoline);
        assert_eq!(ids(&p), vec![2]);
        let rest: Vec<_> = p.skipped.iter().map(|(e, r)| (e.apic_id, *r)).collect();
        assert_eq!(rest, vec![(0, Skip::NoTrampoline), (1, Skip::NoTrampoline), (3, Skip::NoTrampoline)]);
    }

    #[test]
    fn keep_first_leaves_the_rest_out_in_order() {
        let e: Vec<_> = (0..6).map(|i| lapic(i, 1)).collect();
        let mut p = plan(&e, 0, true, Some(5), 256);
        assert_eq!(p.skipped.len(), 1, "beyond maxcpus=");
        p.keep_first(3, Skip::NoMemory);
        assert_eq!(ids(&p), vec![0, 1, 2]);
        let rest: Vec<_> = p.skipped.iter().map(|(e, r)| (e.apic_id, *r)).collect();
        assert_eq!(rest, vec![(5, Skip::OverMaxCpus), (3, Skip::NoMemory), (4, Skip::NoMemory)]);
        // Never below the bootstrap CPU; past the end, nothing changes.
        p.keep_first(0, Skip::NoMemory);
        assert_eq!(ids(&p), vec![0]);
        p.keep_first(9, Skip::NoMemory);
        assert_eq!(ids(&p), vec![0]);
        assert_eq!(p.skipped.len(), 5);
    }

    #[test]
    fn qemu_four_cpus() {
        let e: Vec<_> = (0..4).map(|i| lapic(i, 1)).collect();
        let p = plan(&e, 0, true, None, 256);
        assert_eq!(ids(&p), vec![0, 1, 2, 3]);
        assert!(p.skipped.is_empty() && !p.bsp_missing);
    }

    #[test]
    fn bsp_first_even_when_listed_later() {
        let e = [lapic(4, 1), lapic(6, 1), lapic(2, 1)];
        let p = plan(&e, 6, false, None, 256);
        assert_eq!(ids(&p), vec![6, 4, 2]);
    }

    #[test]
    fn disabled_hotpluggable_invalid_and_duplicates_are_skipped() {
        let e = [lapic(0, 1), lapic(1, 0), lapic(2, 2), lapic(0xff, 1), x2(3, 1), lapic(3, 1), lapic(0, 1), x2(u32::MAX, 1)];
        let p = plan(&e, 0, true, None, 256);
        assert_eq!(ids(&p), vec![0, 3]);
        let reasons: Vec<_> = p.skipped.iter().map(|(e, r)| (e.apic_id, *r)).collect();
        assert_eq!(
            reasons,
            vec![
                (1, Skip::Disabled),
                (2, Skip::HotPluggable),
                (0xff, Skip::InvalidId),
                (3, Skip::Duplicate),
                (0, Skip::Duplicate),
                (u32::MAX, Skip::InvalidId),
            ]
        );
    }

    #[test]
    fn large_ids_need_x2apic_mode() {
        let e = [lapic(0, 1), x2(300, 1), x2(5, 1)];
        assert_eq!(ids(&plan(&e, 0, false, None, 256)), vec![0, 5]);
        assert_eq!(ids(&plan(&e, 0, true, None, 256)), vec![0, 300, 5]);
    }

    #[test]
    fn maxcpus_and_limit() {
        let e: Vec<_> = (0..8).map(|i| lapic(i, 1)).collect();
        let p = plan(&e, 3, true, Some(3), 256);
        assert_eq!(ids(&p), vec![3, 0, 1]);
        assert_eq!(p.skipped.len(), 5);
        assert!(p.skipped.iter().all(|(_, r)| *r == Skip::OverMaxCpus));
        let p = plan(&e, 0, true, None, 2);
        assert_eq!(ids(&p), vec![0, 1]);
        assert!(p.skipped.iter().all(|(_, r)| *r == Skip::OverLimit));
        assert_eq!(ids(&plan(&e, 0, true, Some(1), 256)), vec![0]);
    }

    #[test]
    fn missing_bsp_is_added() {
        let p = plan(&[lapic(1, 1)], 0, false, None, 256);
        assert!(p.bsp_missing);
        assert_eq!(ids(&p), vec![0, 1]);
        let p = plan(&[], 7, false, None, 256);
        assert_eq!(ids(&p), vec![7]);
    }
}
