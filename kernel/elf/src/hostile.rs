//! `Elf::parse` against hostile images: a valid program with random bytes overwritten, random
//! header fields, truncations and random garbage. Whatever the input, `parse` returns (no panic,
//! no overflow: the test profile checks arithmetic), and an image it accepts keeps every promise
//! the loaders rely on: each loadable segment's file bytes lie inside the image, its pages inside
//! the range given, no two segments share a page, and the entry point lies in an executable
//! segment.
use proptest::prelude::*;

use crate::tests::image;
use crate::{Elf, PF_R, PF_W, PF_X};

const LO: u64 = 0x1000;
const HI: u64 = 0x8000_0000_0000;

fn valid() -> Vec<u8> {
    image(0x40_0010, &[(0x40_0000, 0x2000, 0x180, PF_R | PF_X), (0x40_2000, 0x3000, 0x10, PF_R | PF_W), (0x40_8000, 0x1000, 0, PF_R)])
}

/// What an accepted image must keep (see the module's documentation).
fn check_accepted(d: &[u8]) {
    let Ok(e) = Elf::parse(d, LO, HI) else { return };
    let segs: Vec<_> = e.segments().map(|s| s.expect("an accepted image's segments read again")).collect();
    assert!(!segs.is_empty());
    let mut entry_in_x = false;
    for (i, s) in segs.iter().enumerate() {
        assert!(s.filesz <= s.memsz);
        assert!(s.offset.checked_add(s.filesz).is_some_and(|end| end <= d.len() as u64));
        assert_eq!(e.file_bytes(s).len() as u64, s.filesz);
        let (p0, p1) = s.pages();
        assert!(LO <= p0 && p0 <= p1 && p1 <= HI, "segment {s:?} outside the range");
        for t in &segs[..i] {
            let (q0, q1) = t.pages();
            assert!(p1 <= q0 || q1 <= p0, "segments {s:?} and {t:?} share a page");
        }
        entry_in_x |= s.flags & PF_X != 0 && e.entry >= s.vaddr && e.entry < s.vaddr + s.memsz;
    }
    assert!(entry_in_x);
}

#[test]
fn the_valid_image_is_accepted() {
    assert!(Elf::parse(&valid(), LO, HI).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    /// Up to 16 bytes of the valid image overwritten anywhere (headers mostly: they are most of
    /// the image's first bytes), then maybe truncated.
    #[test]
    fn mutated_images(edits in proptest::collection::vec((0usize..0x300, any::<u8>()), 1..16), cut in proptest::option::of(0usize..0x400)) {
        let mut d = valid();
        for (at, b) in edits {
            if let Some(x) = d.get_mut(at) {
                *x = b;
            }
        }
        if let Some(n) = cut {
            d.truncate(n);
        }
        check_accepted(&d);
    }

    /// Program header fields chosen at random (extreme values likely), with the file header
    /// valid.
    #[test]
    fn random_segments(
        entry in prop_oneof![any::<u64>(), 0x40_0000u64..0x41_0000],
        segs in proptest::collection::vec(
            (prop_oneof![any::<u64>(), 0x40_0000u64..0x41_0000, Just(u64::MAX - 0xfff)],
             prop_oneof![any::<u64>(), 0u64..0x3000],
             0u64..0x200,
             0u32..8),
            0..6),
    ) {
        check_accepted(&image(entry, &segs));
    }

    /// Any bytes at all, with the magic and class right half of the time.
    #[test]
    fn garbage(mut d in proptest::collection::vec(any::<u8>(), 0..600), magic in any::<bool>()) {
        if magic && d.len() >= 7 {
            d[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        }
        check_accepted(&d);
    }
}
