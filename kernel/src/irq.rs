//! Device interrupts as notifications.
//!
//! Each legacy ISA interrupt (0..15) the MADT routes to an I/O APIC pin (honouring its
//! interrupt source overrides and their polarity and trigger flags, `rl4_core::device`) is a
//! *line*, entering on vector [`VEC_BASE`] + its ISA number. The root task makes one `Irq`
//! object per line from its `Devices` capability (`IrqGet`); the line is the object's until
//! its last capability goes.
//!
//! The path of an interrupt: the pin, masked by nobody, raises its vector on the CPU it was
//! bound to; [`interrupt`] masks the pin, acknowledges the local APIC, and signals the bound
//! notification with the bound bits, which wakes the driver thread waiting on it (an IPI if it
//! waits on another CPU). The pin stays masked until the driver calls `IrqAck`. So a line is
//! never enabled with nowhere to go:
//! * a line no `Irq` object holds, or that is not bound, is masked;
//! * `IrqUnbind` and the object's end (its last capability deleted, or the driver's task
//!   killed with the only one) mask it;
//! * the binding names its notification weakly: a line whose notification is gone masks
//!   itself at its next interrupt and stays masked (and a driver killed between an interrupt
//!   and its `IrqAck` never unmasks it);
//! * the binding acts while the binder holds the capabilities it was made with (the
//!   notification's and the line's): the `IrqAck` that finds either gone unbinds the line.
//!
//! Locks: each line's state ([`Level::IRQ`]), then the I/O APIC's registers
//! ([`Level::IRQ_CHIP`]); nothing else is taken under them: the signal goes after they are
//! released. `IrqBind` and `IrqAck` take a line's under the binder's capability table's
//! ([`Level::OBJECT`]), which comes before them in the order. The kernel runs with interrupts off, so an interrupt never finds its own CPU
//! holding a line's lock.
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use rl4_abi::Error;
use rl4_arch::ioapic::{IoApic, Redirection};
use rl4_core::device::{self, IsaRoute, Override};
use rl4_smp::acpi::Platform;
use spin::Once;

use crate::ipc::Notification;
use crate::lock::{Level, Mutex};

/// The vector of ISA interrupt 0; interrupt `n` enters on `VEC_BASE + n`.
pub const VEC_BASE: u8 = 0x40;
pub const LINES: usize = 16;

/// Where a line arrives: which I/O APIC, which pin, how it is sensed.
#[derive(Clone, Copy)]
struct Route {
    chip: usize,
    pin: u32,
    isa: IsaRoute,
}

struct Chips {
    chips: Vec<Mutex<IoApic, { Level::IRQ_CHIP }>>,
    routes: [Option<Route>; LINES],
}

static CHIPS: Once<Chips> = Once::new();

#[derive(Default)]
struct Line {
    /// An `Irq` object holds the line.
    taken: bool,
    /// The bound notification and bits.
    target: Option<(Weak<Notification>, u64)>,
    /// Who bound it and with which capabilities: the binder's task (weak), the slots of its
    /// table it named — the notification's, with that capability's badge, and the line's own
    /// (`IrqAck` checks that both still hold them).
    binder: Option<Binder>,
    /// The pin is unmasked now.
    enabled: bool,
    /// Counts the bindings made and ended (`IrqBind`, `IrqUnbind`, an acknowledgement that
    /// found the binding lapsed, an interrupt that found its notification gone, the object's
    /// end): [`ack`] acts only on the binding it checked, told apart by this count, not by its
    /// fields (a binding made again with the same task, slots and badge looked the same).
    generation: u64,
}

impl Line {
    /// Ends the binding (the pin masked): what it held, for the caller to let go of after the
    /// lock.
    fn clear(&mut self, irq: u8) -> Old {
        mask(irq as usize);
        self.enabled = false;
        self.generation += 1;
        (self.target.take(), self.binder.take())
    }
}

/// What a binding held (its notification, its binder's task, both weakly): let go of after
/// every lock, as the last weak reference frees the object's memory.
pub type Old = (Option<(Weak<Notification>, u64)>, Option<Binder>);

static STATE: [Mutex<Line, { Level::IRQ }>; LINES] =
    [const { Mutex::new(Line { taken: false, target: None, binder: None, enabled: false, generation: 0 }) }; LINES];

static DELIVERED: AtomicU64 = AtomicU64::new(0);

/// Maps the I/O APICs the MADT lists, masks every pin, and works out each ISA line's route.
pub fn init(p: &Platform, frames: &mut impl rl4_arch::paging::FrameSource) {
    let overrides: Vec<Override> = p.overrides.iter().filter(|o| o.bus == 0).map(|o| Override { irq: o.irq, gsi: o.gsi, flags: o.flags }).collect();
    let mut chips = Vec::new();
    let mut spans = Vec::new();
    let mut addresses: Vec<u64> = Vec::new();
    // The other devices' register pages the kernel drives, which no I/O APIC entry may reach.
    let pages: Vec<u64> = core::iter::once(p.lapic_address).chain(p.hpet).collect();
    for a in &p.ioapics {
        // One value per chip (`ioapic::map`'s contract): two would interleave their index and
        // data writes under two locks. An entry whose registers are an earlier chip's, or
        // overlap them, or lie on the local APIC's or the HPET's page, is passed over before
        // anything is written there (before the thirty-second session only a second entry
        // for the very same address was: a chip 16 bytes after another had its version read
        // and its pins masked through the first one's data window, which left a pin of the
        // first unmasked with an exception's vector — a review found it).
        if let Some(why) = rl4_arch::ioapic::window_refusal(a.address as u64, &addresses, &pages) {
            rl4_arch::println!("ioapic: id {} at {:#x}: {why}; this entry is passed over", a.id, a.address);
            continue;
        }
        // SAFETY: the MADT names this block an I/O APIC's registers, and no earlier entry's
        // nor another device's registers the kernel drives overlap it (see above); firmware
        // tables are trusted at boot, and no task runs yet.
        #[allow(unsafe_code)]
        let mapped = unsafe { rl4_arch::ioapic::map(frames, a.address as u64) };
        let mut chip = match mapped {
            Ok(c) => c,
            Err(e) => {
                rl4_arch::println!("ioapic: id {} at {:#x} not mapped ({e:?}); its lines are unusable", a.id, a.address);
                continue;
            }
        };
        addresses.push(a.address as u64);
        // Nothing answers at the address (a chip the chipset disabled, still listed): every
        // bit reads set. Not a chip: no line is routed to pins that never interrupt (before
        // the thirty-second session it counted as 120 pins, and could take the ISA lines from
        // the real chip at the same GSIs; a review found it).
        let version = chip.version();
        if rl4_arch::ioapic::absent(version) {
            rl4_arch::println!("ioapic: id {} at {:#x}: its version register reads {version:#x}: no chip answers there; passed over", a.id, a.address);
            continue;
        }
        let pins = chip.pins();
        for pin in 0..pins {
            chip.set_masked(pin, true);
        }
        // GSIs two chips claim would be two pins for one line: the later chip is passed over,
        // its pins masked (the value that masked them goes, and no line is routed there).
        if spans.iter().any(|&(base, n): &(u32, u32)| a.gsi_base < base.saturating_add(n) && base < a.gsi_base.saturating_add(pins)) {
            rl4_arch::println!("ioapic: id {} at {:#x}: GSIs {}.. overlap another I/O APIC's; its pins masked, passed over", a.id, a.address, a.gsi_base);
            continue;
        }
        rl4_arch::println!("ioapic: id {} at {:#x}, GSIs {}..{}, all masked", a.id, a.address, a.gsi_base, a.gsi_base.saturating_add(pins));
        spans.push((a.gsi_base, pins));
        chips.push(Mutex::new(chip));
    }
    let mut routes = [None; LINES];
    for (irq, r) in routes.iter_mut().enumerate() {
        let Some(isa) = device::isa_route(irq as u8, &overrides) else { continue };
        let Some(chip) = spans.iter().position(|&(base, n)| isa.gsi >= base && isa.gsi - base < n) else { continue };
        *r = Some(Route { chip, pin: isa.gsi - spans[chip].0, isa });
        if isa.gsi != irq as u32 || isa.active_low || isa.level {
            rl4_arch::println!(
                "ioapic: ISA IRQ {irq} -> GSI {} ({}, {})",
                isa.gsi,
                if isa.active_low { "active low" } else { "active high" },
                if isa.level { "level" } else { "edge" }
            );
        }
    }
    CHIPS.call_once(|| Chips { chips, routes });
}

fn route(irq: usize) -> Option<(&'static Mutex<IoApic, { Level::IRQ_CHIP }>, Route)> {
    let c = CHIPS.get()?;
    let r = (*c.routes.get(irq)?)?;
    Some((&c.chips[r.chip], r))
}

fn mask(irq: usize) {
    if let Some((chip, r)) = route(irq) {
        chip.lock().set_masked(r.pin, true);
    }
}

/// An `Irq` object: the right to one line. Its end masks the line and frees it.
pub struct IrqLine {
    pub irq: u8,
}

impl Drop for IrqLine {
    fn drop(&mut self) {
        crate::reclaim::dropping("IrqLine");
        let old = {
            let mut l = STATE[self.irq as usize].lock();
            l.taken = false;
            l.clear(self.irq)
        };
        drop(old);
    }
}

/// `IrqGet`: the line of ISA interrupt `irq`.
pub fn get(irq: u64) -> Result<Arc<IrqLine>, Error> {
    if irq >= LINES as u64 {
        return Err(Error::InvalidArgument);
    }
    if device::KERNEL_IRQS.contains(&(irq as u8)) || route(irq as usize).is_none() {
        return Err(Error::Busy);
    }
    // Its room first: once the line is taken, nothing may fail.
    let room = crate::mem::ArcSlot::new()?;
    let mut l = STATE[irq as usize].lock();
    if l.taken {
        return Err(Error::Busy);
    }
    l.taken = true;
    Ok(room.fill(IrqLine { irq: irq as u8 }))
}

/// Where the capabilities an `IrqBind` named live: the binding acts while the binder's slots
/// still hold the notification capability (`SEND`, the same badge) and a capability to the line
/// (`WRITE`) — checked at each `IrqAck` ([`ack`]). The line's slot is checked as well since the
/// twenty-third session: a driver whose copy of the line was revoked kept the binding, and its
/// notification every interrupt, while the root task still held the line (a review found it;
/// `IoPort` had been given the same rule in the nineteenth session).
pub struct Binder {
    pub task: Weak<crate::obj::Task>,
    pub slot: u64,
    pub badge: u64,
    pub line_slot: u64,
}

/// `IrqBind`: deliver `line`'s interrupts to `n` as `bits`, on CPU `cpu`; unmasks the line.
/// Called under the binder's table lock, in the hold that read both capabilities (the line's
/// lock and the chip's come after it in the order), so that a revocation, which deletes under
/// that lock, comes wholly before or after the binding; what the line held before is returned,
/// to be let go of after that lock.
pub fn bind(line: &IrqLine, n: &Arc<Notification>, bits: u64, cpu: usize, binder: Binder) -> Result<Old, Error> {
    if bits == 0 {
        return Err(Error::InvalidArgument);
    }
    let apic = rl4_smp::cpus::get(cpu).filter(|c| c.online.load(Ordering::Acquire)).ok_or(Error::InvalidCpu)?.apic_id();
    // An I/O APIC entry's physical destination is 8 bits, and 0xff there means every CPU.
    let dest = u8::try_from(apic).ok().filter(|&d| d != 0xff).ok_or(Error::InvalidCpu)?;
    let (chip, r) = route(line.irq as usize).ok_or(Error::Busy)?;
    let old = {
        let mut l = STATE[line.irq as usize].lock();
        let old = (l.target.replace((Arc::downgrade(n), bits)), l.binder.replace(binder));
        chip.lock().set(
            r.pin,
            Redirection { vector: VEC_BASE + line.irq, dest, active_low: r.isa.active_low, level: r.isa.level, masked: false },
        );
        l.enabled = true;
        l.generation += 1;
        old
    };
    Ok(old)
}

/// `IrqAck`: unmask the line the kernel masked when it delivered an interrupt — if the binding
/// still stands: the binder's task lives, the slot it named still holds a capability to the
/// notification with `SEND` and the same badge, and the slot it bound through still holds a
/// capability to this line with `WRITE`. If not (either capability was deleted or revoked),
/// the line is unbound as by `IrqUnbind` and the answer is `InvalidState`: after a revocation
/// the notification gets at most one more interrupt, the next (the line is masked from each
/// interrupt to its acknowledgement, and unmasked from then to the next). The check and the
/// unmasking are made in one hold of the binder's table lock (the line's taken under it, as
/// the lock order allows), so that a revocation, which deletes under that lock, comes wholly
/// before or after an acknowledgement (before the thirty-fourth session the line was unmasked
/// after the lock, and acknowledgements racing a revocation on k CPUs let k interrupts more
/// through: a review found it). Before the eighteenth session the binding outlived the
/// capability (a review found it).
pub fn ack(line: &IrqLine) -> Result<(), Error> {
    let (n, binder, generation) = {
        let l = STATE[line.irq as usize].lock();
        match (&l.target, &l.binder) {
            (Some((n, _)), Some(b)) => {
                (n.clone(), Binder { task: b.task.clone(), slot: b.slot, badge: b.badge, line_slot: b.line_slot }, l.generation)
            }
            _ => return Err(Error::InvalidState),
        }
    };
    // `Some(unmasked)`: held, and the line unmasked unless it was unbound meanwhile; `None`:
    // the binding lapsed.
    let acked = binder.task.upgrade().and_then(|t| {
        let r = if t.dead.load(Ordering::Acquire) {
            None
        } else {
            let caps = t.caps.lock();
            let held = crate::obj::holds(&caps, binder.slot, rl4_abi::ObjType::Notification, rl4_abi::Rights::SEND, Some(binder.badge), n.as_ptr() as usize)
                && crate::obj::holds(&caps, binder.line_slot, rl4_abi::ObjType::Irq, rl4_abi::Rights::WRITE, None, line as *const IrqLine as usize);
            if held { Some(unmask_bound(line, generation)) } else { None }
        };
        // No lock is held: a last reference may go here.
        drop(t);
        r
    });
    match acked {
        Some(r) => {
            drop(n);
            r
        }
        None => {
            if crate::inject() & rl4_core::cmdline::inject::SLOW_ACK != 0 {
                crate::syscall::injected_window();
            }
            // Unless it was bound again meanwhile (a new binding stands on its own capability,
            // checked by its own `IrqBind`: even one with the same task, slots and badge, made
            // after the capability came back — which the generation tells apart, the fields
            // did not before the thirty-sixth session: a review found it).
            let old = {
                let mut l = STATE[line.irq as usize].lock();
                if l.generation == generation { l.clear(line.irq) } else { (None, None) }
            };
            drop(old);
            drop(n);
            Err(Error::InvalidState)
        }
    }
}

/// [`ack`]'s unmasking, under the binder's table lock: the line is unmasked if the binding
/// [`ack`] checked (its `generation`) still stands. One made again meanwhile (an `IrqBind` by
/// another holder of the line, on another CPU, between [`ack`]'s copy of the binding and this)
/// is not this acknowledgement's: `InvalidState`, and the line stays as it is (before the
/// thirty-fifth session it was unmasked for a binding nobody had checked or acknowledged, and
/// the new binder got an interrupt it had not acknowledged: a review found it).
fn unmask_bound(line: &IrqLine, generation: u64) -> Result<(), Error> {
    let mut l = STATE[line.irq as usize].lock();
    if l.generation != generation {
        return Err(Error::InvalidState);
    }
    if !l.enabled {
        let (chip, r) = route(line.irq as usize).ok_or(Error::Busy)?;
        chip.lock().set_masked(r.pin, false);
        l.enabled = true;
    }
    Ok(())
}

/// `IrqUnbind`: mask the line and forget its notification.
pub fn unbind(line: &IrqLine) {
    let old = STATE[line.irq as usize].lock().clear(line.irq);
    drop(old);
}

/// The interrupt of line `irq` (vector `VEC_BASE + irq`) arrived on this CPU.
pub fn interrupt(irq: usize) {
    let (target, stale) = {
        let mut l = STATE[irq].lock();
        mask(irq);
        l.enabled = false;
        let live = l.target.as_ref().and_then(|(n, bits)| n.upgrade().map(|n| (n, *bits)));
        // Nowhere to go: the line stays masked until it is bound again, and the binding goes
        // whole, its binder's task with it (before the thirty-eighth session the binder stayed
        // until the next bind: a dead driver's task record kept; a review). (Let go of after
        // the lock, as `unbind` does: either may be its object's last weak reference, which
        // frees its memory.)
        let stale: Option<Old> = if live.is_none() && l.target.is_some() {
            l.generation += 1;
            Some((l.target.take(), l.binder.take()))
        } else {
            None
        };
        (live, stale)
    };
    drop(stale);
    rl4_smp::cpus::eoi();
    if let Some((n, bits)) = target {
        DELIVERED.fetch_add(1, Ordering::Relaxed);
        crate::ipc::signal(&n, bits);
        // Maybe the last reference (the notification deleted meanwhile): in an interrupt inside
        // a system call whose destructions are put off (`reclaim::deferred`:
        // `Measure(IPI_FLOOR)`'s halt) it goes on the destruction list, not dropped there (a
        // review of the thirty-eighth session); else dropped (no lock is held here).
        if crate::reclaim::put_off() {
            crate::reclaim::later_queue(Some(crate::thread::QueueRef::Ntf(n)));
        } else {
            drop(n);
        }
    }
    crate::reclaim::drain();
}

/// The consistency check's look at every line and every pin (`check.rs`: every other CPU
/// stopped, holding no lock): `bad(line or pin, what)` for each rule broken —
/// * a line no `Irq` object holds is unbound and masked; a binding has both its notification and
///   its binder; an unmasked line is bound (never enabled with nowhere to go: the module's
///   comment);
/// * the pin of a line a task may hold, read back in the same hold of the line's lock, is
///   masked exactly when the line says so, and, unmasked, holds an entry this module writes,
///   with the line's vector, its route's polarity and trigger, and an online CPU's APIC id;
/// * every other pin of every chip the kernel drives (no line's, or the kernel's own lines') is
///   masked. (What a masked pin holds besides is not judged: `init` sets only the mask bit of
///   what the firmware left.)
pub fn check(mut bad: impl FnMut(&'static str, usize, &'static str)) {
    for (i, s) in STATE.iter().enumerate() {
        let l = s.lock();
        if !l.taken && (l.target.is_some() || l.binder.is_some() || l.enabled) {
            bad("interrupt line", i, "held by no Irq object, yet bound or unmasked");
        }
        if l.target.is_some() != l.binder.is_some() {
            bad("interrupt line", i, "bound without its binder, or the reverse");
        }
        if l.enabled && l.target.is_none() {
            bad("interrupt line", i, "unmasked with nowhere to go");
        }
        if device::KERNEL_IRQS.contains(&(i as u8)) {
            continue;
        }
        let Some((chip, r)) = route(i) else { continue };
        let entry = chip.lock().get(r.pin);
        let masked = entry.map_or_else(|m| m, |p| p.masked);
        if masked != !l.enabled {
            bad("interrupt line", i, "its I/O APIC pin's mask disagrees with the line's state");
        } else if !masked
            && !entry.is_ok_and(|p| {
                p.vector == VEC_BASE + i as u8 && p.active_low == r.isa.active_low && p.level == r.isa.level && online_apic(p.dest)
            })
        {
            bad("interrupt line", i, "its I/O APIC pin is unmasked with another entry than a binding's");
        }
    }
    let Some(c) = CHIPS.get() else { return };
    let mut pin_base = 0;
    for (k, chip) in c.chips.iter().enumerate() {
        let mut chip = chip.lock();
        let pins = chip.pins();
        for pin in 0..pins {
            // The pin of a line a task may hold is judged above.
            let owned = (0..LINES).any(|i| !device::KERNEL_IRQS.contains(&(i as u8)) && c.routes[i].is_some_and(|r| r.chip == k && r.pin == pin));
            if !owned && !chip.get(pin).map_or_else(|m| m, |p| p.masked) {
                bad("I/O APIC pin (counted across chips)", pin_base + pin as usize, "unmasked, though no line a task may hold is routed to it");
            }
        }
        pin_base += pins as usize;
    }
}

/// Whether `dest` is the APIC id of an online CPU.
fn online_apic(dest: u8) -> bool {
    (0..rl4_smp::MAX_CPUS).filter_map(rl4_smp::cpus::get).any(|c| c.online.load(Ordering::Acquire) && c.apic_id() == dest as u32)
}

/// Interrupts delivered to notifications so far.
pub fn delivered() -> u64 {
    DELIVERED.load(Ordering::Relaxed)
}

/// Lines unmasked now.
pub fn enabled_lines() -> u64 {
    STATE.iter().filter(|l| l.lock().enabled).count() as u64
}
