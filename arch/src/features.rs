//! What CPUID says a CPU can do, as the kernel uses it (read by `cpu::Features::read`), and
//! what an application processor must have that the bootstrap CPU set up for every CPU: pure,
//! so that the host tests it.

/// What CPUID says this CPU can do (only what rl4 uses).
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    pub max_leaf: u32,
    pub max_ext_leaf: u32,
    /// A local APIC, present and enabled (CPUID.1:EDX[9]; a CPU whose firmware turned it off
    /// in IA32_APIC_BASE reads it clear).
    pub apic: bool,
    /// `FXSAVE`/`FXRSTOR` (CPUID.1:EDX[24]), SSE (EDX[25]) and SSE2 (EDX[26]: `lfence`,
    /// `mfence`): every x86_64 CPU has them, an emulator may be told otherwise (QEMU's TCG
    /// refuses `lfence` with an invalid-opcode fault when SSE alone is clear: `-cpu max,-sse`,
    /// a double fault at the first fence before the forty-third session).
    pub fxsr: bool,
    pub sse: bool,
    pub sse2: bool,
    pub x2apic: bool,
    pub tsc_deadline: bool,
    pub pcid: bool,
    pub invpcid: bool,
    pub smep: bool,
    pub smap: bool,
    pub nx: bool,
    pub page1g: bool,
    pub invariant_tsc: bool,
    pub hypervisor: bool,
    /// Initial APIC id (CPUID.1:EBX[31:24]); the x2APIC id (leaf 0xB) where that leaf exists.
    pub apic_id: u32,
}

impl Features {
    /// The first thing the kernel needs that this CPU's CPUID says it lacks, described.
    pub fn missing(&self) -> Option<&'static str> {
        if !self.apic {
            Some("local APIC (CPUID.1:EDX[9] clear: absent, or turned off by the firmware)")
        } else if !self.fxsr {
            Some("FXSAVE/FXRSTOR (CPUID.1:EDX[24] clear)")
        } else if !self.sse {
            Some("SSE (CPUID.1:EDX[25] clear: an emulator then refuses the kernel's fences)")
        } else if !self.sse2 {
            Some("SSE2 (CPUID.1:EDX[26] clear: the kernel's fences are SSE2 instructions)")
        } else {
            None
        }
    }

    /// The first thing the bootstrap CPU set up for every CPU that this CPU's CPUID says it
    /// lacks (an application processor of a machine whose CPUs differ; `bsp` is the bootstrap
    /// CPU's CPUID, `x2apic_mode` and `tsc_deadline_timer` what its local APIC set-up chose):
    /// its own needs first ([`Features::missing`]), then every feature the kernel turned on
    /// from the bootstrap CPU's CPUID and uses on each CPU alike. PCIDs are left out: a CPU
    /// without them runs without (`sched::prepare_cpu`). Such a CPU stays offline
    /// (`rl4_smp::cpus::refuse`): run as it is, it would take an invalid-opcode fault at the
    /// first `stac`, or a #GP at its local APIC's or timer's first register. (No-execute
    /// pages and 1 GiB pages are not here: a CPU without the ones the bootstrap CPU uses
    /// faults in the start trampoline, as it turns on `EFER.NXE` or reaches the kernel's
    /// tables, before it could look; no such machine is known.)
    pub fn lacks(&self, bsp: &Features, x2apic_mode: bool, tsc_deadline_timer: bool) -> Option<Lack> {
        let needs = [
            (!self.apic, Lack::Apic),
            (!self.fxsr, Lack::Fxsr),
            (!self.sse, Lack::Sse),
            (!self.sse2, Lack::Sse2),
            (x2apic_mode && !self.x2apic, Lack::X2Apic),
            (!x2apic_mode && self.x2apic, Lack::XApicMode),
            (tsc_deadline_timer && !self.tsc_deadline, Lack::TscDeadline),
            (bsp.smep && !self.smep, Lack::Smep),
            (bsp.smap && !self.smap, Lack::Smap),
        ];
        needs.iter().find(|(lacks, _)| *lacks).map(|&(_, what)| what)
    }

    /// These features with everything optional the kernel uses cleared (`inject=apcpuid`: an
    /// application processor that reads its CPUID so, for the test of [`Features::lacks`]).
    pub fn without_optional(mut self) -> Features {
        self.x2apic = false;
        self.tsc_deadline = false;
        self.smep = false;
        self.smap = false;
        self
    }
}

/// What an application processor lacks that the bootstrap CPU set up for every CPU
/// ([`Features::lacks`]), or an FPU set-up of its own that differs (`fpu::init_this_cpu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Lack {
    Apic = 1,
    Fxsr,
    Sse2,
    X2Apic,
    TscDeadline,
    Smep,
    Smap,
    Fpu,
    /// Found by the trampoline (`rl4_smp::boot`), before long mode.
    LongMode,
    Nx,
    Page1G,
    /// Has x2APIC where the local APICs run in xAPIC mode: the `x2apic` crate chooses the mode
    /// from each CPU's own CPUID, and would turn x2APIC on there, where the kernel reaches the
    /// APIC through the xAPIC page and addresses IPIs with xAPIC IDs.
    XApicMode,
    /// SSE (CPUID.1:EDX[25]); last, so that the codes before it keep their numbers.
    Sse,
}

impl Lack {
    const ALL: [Lack; 13] = [
        Lack::Apic,
        Lack::Fxsr,
        Lack::Sse2,
        Lack::X2Apic,
        Lack::TscDeadline,
        Lack::Smep,
        Lack::Smap,
        Lack::Fpu,
        Lack::LongMode,
        Lack::Nx,
        Lack::Page1G,
        Lack::XApicMode,
        Lack::Sse,
    ];

    /// The lack a non-zero code ([`Lack`] as `u8`) names.
    pub fn from_code(code: u8) -> Option<Lack> {
        Lack::ALL.iter().copied().find(|l| *l as u8 == code)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Lack::Apic => "a local APIC (CPUID.1:EDX[9])",
            Lack::Fxsr => "FXSAVE/FXRSTOR (CPUID.1:EDX[24])",
            Lack::Sse => "SSE (CPUID.1:EDX[25])",
            Lack::Sse2 => "SSE2 (CPUID.1:EDX[26])",
            Lack::X2Apic => "x2APIC (CPUID.1:ECX[21]), the local APICs' mode",
            Lack::TscDeadline => "the TSC-deadline timer (CPUID.1:ECX[24]), the local APIC timers' mode",
            Lack::Smep => "SMEP (CPUID.7.0:EBX[7])",
            Lack::Smap => "SMAP (CPUID.7.0:EBX[20])",
            Lack::Fpu => "the bootstrap CPU's FPU set-up (its save instruction, state components or save-area size differ)",
            Lack::LongMode => "long mode (CPUID.80000001h:EDX[29])",
            Lack::Nx => "no-execute pages (CPUID.80000001h:EDX[20]), EFER.NXE",
            Lack::Page1G => "1 GiB pages (CPUID.80000001h:EDX[26]), the page tables' largest",
            Lack::XApicMode => {
                "the local APICs' xAPIC mode (it says x2APIC, CPUID.1:ECX[21], which its APIC set-up would turn on)"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Features {
        Features {
            apic: true,
            fxsr: true,
            sse: true,
            sse2: true,
            x2apic: true,
            tsc_deadline: true,
            smep: true,
            smap: true,
            nx: true,
            page1g: true,
            pcid: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_cpu_like_the_bootstrap_cpu_lacks_nothing() {
        assert_eq!(full().lacks(&full(), true, true), None);
        // More than the bootstrap CPU has is no lack; nor are PCIDs.
        let bsp = Features { smap: false, pcid: false, ..full() };
        assert_eq!(Features { pcid: false, ..full() }.lacks(&bsp, true, true), None);
    }

    #[test]
    fn each_feature_the_bootstrap_cpu_set_up_is_needed() {
        let cases: [(fn(&mut Features), Lack); 8] = [
            (|f| f.apic = false, Lack::Apic),
            (|f| f.fxsr = false, Lack::Fxsr),
            (|f| f.sse = false, Lack::Sse),
            (|f| f.sse2 = false, Lack::Sse2),
            (|f| f.x2apic = false, Lack::X2Apic),
            (|f| f.tsc_deadline = false, Lack::TscDeadline),
            (|f| f.smep = false, Lack::Smep),
            (|f| f.smap = false, Lack::Smap),
        ];
        for (clear, lack) in cases {
            let mut ap = full();
            clear(&mut ap);
            assert_eq!(ap.lacks(&full(), true, true), Some(lack));
            // Not needed where the bootstrap CPU did not set it up (the base four always are).
            let mut bsp = full();
            clear(&mut bsp);
            let base = matches!(lack, Lack::Apic | Lack::Fxsr | Lack::Sse | Lack::Sse2);
            let modes = (lack != Lack::X2Apic, lack != Lack::TscDeadline);
            assert_eq!(ap.lacks(&bsp, modes.0, modes.1), if base { Some(lack) } else { None }, "{lack:?}");
        }
        // The local APIC's modes come from its set-up, not from the bootstrap CPU's CPUID.
        let ap = Features { x2apic: false, tsc_deadline: false, ..full() };
        assert_eq!(ap.lacks(&full(), false, false), None);
        assert_eq!(ap.lacks(&full(), false, true), Some(Lack::TscDeadline));
        // x2APIC on a CPU whose local APICs run in xAPIC mode: its set-up would turn it on.
        assert_eq!(full().lacks(&full(), false, true), Some(Lack::XApicMode));
    }

    #[test]
    fn the_injected_cpu_lacks_what_a_bootstrap_cpu_with_any_of_it_set_up() {
        assert_eq!(full().without_optional().lacks(&full(), true, true), Some(Lack::X2Apic));
        let only_smap = Features { x2apic: false, tsc_deadline: false, smep: false, ..full() };
        assert_eq!(full().without_optional().lacks(&only_smap, false, false), Some(Lack::Smap));
        let plain = Features { smap: false, ..only_smap };
        assert_eq!(full().without_optional().lacks(&plain, false, false), None);
    }

    #[test]
    fn codes_name_their_lack() {
        for l in Lack::ALL {
            assert_eq!(Lack::from_code(l as u8), Some(l));
            assert!(!l.describe().is_empty());
        }
        assert_eq!(Lack::from_code(0), None);
        assert_eq!(Lack::from_code(Lack::ALL.len() as u8 + 1), None);
    }
}
