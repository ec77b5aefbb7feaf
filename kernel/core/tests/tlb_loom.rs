//! `loom` models of `rl4_core::tlbsync`, the address-space switch against a TLB shoot-down:
//! every interleaving of two simulated CPUs and every value the memory model lets each atomic
//! load return. This file compiles only with `RUSTFLAGS="--cfg loom"` (set by `scripts/test`
//! for it, in a target directory of its own), which makes `tlbsync` use loom's atomics.
//!
//! CPU A loads space S (root `S`, PCID `P`) while CPU B removes S's only mapping: B clears the
//! page-table entry, gives S a new generation (with PCIDs), fences, and interrupts A only if
//! A's published root is S, waiting for A's answer; after that B may free the frame. A's
//! simulated MMU ([`Model`]) keeps the translation of S's page it cached while it ran S before
//! (with PCIDs, entries tagged `P` survive a switch to another space; without, a CR3 write
//! drops everything), and fills the TLB from the page-table entry as soon as S is loaded (a
//! speculative walk may happen any time after the CR3 write). The property: once both are done,
//! if A has S loaded, its TLB holds no translation to the old frame.
//!
//! - [`pcid_switch_against_unmap`], [`no_pcid_switch_against_unmap`]: the protocol holds.
//! - [`switch_away_against_destroy`]: A switches from S to another space while B destroys S.
//! - [`old_order_keeps_a_stale_translation_with_pcids`],
//!   [`old_order_keeps_a_stale_translation_without_pcids`]: the controls: the kernel's earlier
//!   order (CR3 written first, `loaded` published after it, the generation read once, before)
//!   lets some execution end with the stale translation, so the models above would see one.
#![allow(unexpected_cfgs)] // `cfg(loom)`: set by RUSTFLAGS for these models only.
#![cfg(loom)]
use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, Ordering, fence};
use loom::thread;
use rl4_core::pcid::PcidCache;
use rl4_core::tlbsync::{CpuTlbShared, Mmu, shooter_fence};
use std::sync::atomic::AtomicBool as StdBool;

const KERNEL: u64 = 0x1000;
const S: u64 = 0x2000;
const P: u16 = 7;
const OLD_FRAME: u64 = 1;
const FIRST_GEN: u64 = 5;

struct World {
    /// S's only page-table entry: `OLD_FRAME` until B clears it (0).
    pte: AtomicU64,
    /// S's generation (PCID mode).
    generation: AtomicU64,
    a: CpuTlbShared,
    /// A's CR3, as the hardware has it (ground truth for the models' checks, not part of the
    /// protocol).
    cr3: AtomicU64,
}

/// CPU A's MMU: the root it translates with and its TLB entry for S's page.
struct Model<'w> {
    w: &'w World,
    pcid: bool,
    root: u64,
    /// The cached translation of S's page (tagged `P` with PCIDs), if any.
    tlb: Option<u64>,
}

impl Model<'_> {
    /// A page walk of S's page, if S is loaded and nothing is cached.
    fn fill(&mut self) {
        if self.root == S && self.tlb.is_none() {
            self.tlb = Some(self.w.pte.load(Ordering::Relaxed));
        }
    }
}

impl Mmu<u64> for Model<'_> {
    fn write_root(&mut self, root: u64, pcid: u16, keep: bool) {
        fence(Ordering::SeqCst); // a CR3 write is serialising
        self.w.cr3.store(root, Ordering::SeqCst);
        // Without PCIDs every entry goes; with them, those of `pcid` unless kept (S's entries
        // are tagged P; the kernel's root runs with PCID 0).
        if !self.pcid || (pcid == P && !keep) {
            self.tlb = None;
        }
        self.root = root;
        self.fill();
    }
    fn flush_user(&mut self) {
        self.tlb = None;
        self.fill();
    }
}

fn world() -> Arc<World> {
    Arc::new(World {
        pte: AtomicU64::new(OLD_FRAME),
        generation: AtomicU64::new(FIRST_GEN),
        a: CpuTlbShared::new(KERNEL),
        cr3: AtomicU64::new(KERNEL),
    })
}

/// CPU B: unmap S's page (or destroy S), then post the shoot-down as the kernel does. Returns
/// the answer count to wait past if A was asked (the wait itself happens after the join: a
/// spin would only make loom explore its repetitions).
fn shooter(w: &World, pcid: bool, destroy: bool) -> Option<u64> {
    w.pte.store(0, Ordering::Relaxed);
    if pcid {
        w.generation.store(FIRST_GEN + 1, Ordering::Release);
    }
    shooter_fence();
    w.a.post(S, destroy)
}

/// Runs A's `switch` to S (`old`: the earlier order) against B; then A takes B's interrupt if
/// B sent one (A's answer is what B waits for before it frees the frame) and uses its TLB.
/// Returns whether A ended with the stale translation while S was loaded.
fn run(pcid: bool, old: bool) -> bool {
    let w = world();
    let b = {
        let w = w.clone();
        thread::spawn(move || shooter(&w, pcid, false))
    };
    // A ran S before (its TLB and, with PCIDs, its record of S's generation say so), then
    // switched to the kernel's root.
    let mut cache = PcidCache::new();
    if pcid {
        cache.switch_needs_flush(P, FIRST_GEN);
    }
    let mut m = Model { w: &w, pcid, root: KERNEL, tlb: if pcid { Some(OLD_FRAME) } else { None } };
    if old {
        old_switch(&w, &mut m, pcid.then_some(&mut cache));
    } else {
        w.a.switch(&mut m, pcid.then_some(&mut cache), S, if pcid { P } else { 0 }, &w.generation);
    }
    let asked = b.join().unwrap();
    w.a.service(&mut m, KERNEL);
    if let Some(since) = asked {
        assert!(w.a.answered(since), "A's answer is not visible to B");
    }
    m.fill();
    m.root == S && m.tlb == Some(OLD_FRAME)
}

/// The order `kernel/src/tlb.rs` had before `tlbsync`: the generation read once, CR3 written,
/// then `loaded` published (a copy of that logic over the model's atomics: `CpuTlbShared`
/// keeps `loaded` private).
fn old_switch(w: &World, m: &mut Model<'_>, pcids: Option<&mut PcidCache>) {
    let published = &w.a;
    match pcids {
        None => {
            m.write_root(S, 0, false);
            publish_for_old(published);
        }
        Some(cache) => {
            let g = w.generation.load(Ordering::Acquire);
            let flush = cache.switch_needs_flush(P, g);
            m.write_root(S, P, !flush);
            publish_for_old(published);
        }
    }
}

/// `loaded := S` for the old order, through the only public way to make a CPU's published root
/// S after its CR3 write: a `switch` whose MMU does nothing (the model's MMU has already
/// loaded S).
fn publish_for_old(a: &CpuTlbShared) {
    let g = AtomicU64::new(0);
    a.switch(&mut Nothing, None, S, 0, &g);
}

/// An MMU that does nothing (for switches whose effect on the TLB a model does not follow).
struct Nothing;
impl Mmu<u64> for Nothing {
    fn write_root(&mut self, _: u64, _: u16, _: bool) {}
    fn flush_user(&mut self) {}
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

#[test]
fn pcid_switch_against_unmap() {
    model(|| assert!(!run(true, false), "A kept a stale translation"));
}

#[test]
fn no_pcid_switch_against_unmap() {
    model(|| assert!(!run(false, false), "A kept a stale translation"));
}

/// A space is destroyed only when nothing refers to it, so no CPU switches *to* it then (a
/// switch holds a reference to the space it loads); a CPU may still have it loaded, idle, or be
/// switching away from it. A, with S loaded, switches to another space T while B destroys S:
/// if B does not ask A, A's CR3 must not hold S at that moment (B frees S's page tables next);
/// and A must not end on S, whichever of B's read and A's switch comes first.
#[test]
fn switch_away_against_destroy() {
    const T: u64 = 0x3000;
    model(|| {
        let w = world();
        let mut m = Model { w: &w, pcid: true, root: S, tlb: Some(OLD_FRAME) };
        let mut cache = PcidCache::new();
        cache.switch_needs_flush(P, FIRST_GEN);
        w.a.switch(&mut Nothing, Some(&mut cache), S, P, &w.generation); // A had S loaded
        w.cr3.store(S, Ordering::SeqCst);
        let b = {
            let w = w.clone();
            thread::spawn(move || {
                let asked = shooter(&w, true, true);
                if asked.is_none() {
                    assert_ne!(w.cr3.load(Ordering::SeqCst), S, "B frees S's page tables while A's CR3 holds them");
                }
                asked
            })
        };
        let g = AtomicU64::new(1);
        w.a.switch(&mut m, Some(&mut cache), T, P + 1, &g);
        let asked = b.join().unwrap();
        w.a.service(&mut m, KERNEL);
        if let Some(since) = asked {
            assert!(w.a.answered(since));
        }
        assert_ne!(m.root, S, "A runs on a destroyed space");
        assert_ne!(w.a.loaded(), S, "A still says it has the destroyed space loaded");
    });
}

fn control(pcid: bool) {
    static FOUND: [StdBool; 2] = [StdBool::new(false), StdBool::new(false)];
    model(move || {
        if run(pcid, true) {
            FOUND[pcid as usize].store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    assert!(
        FOUND[pcid as usize].load(std::sync::atomic::Ordering::Relaxed),
        "the old order should let some execution keep a stale translation (the model misses the race)"
    );
}

#[test]
fn old_order_keeps_a_stale_translation_with_pcids() {
    control(true);
}

#[test]
fn old_order_keeps_a_stale_translation_without_pcids() {
    control(false);
}
