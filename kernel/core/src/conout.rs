//! How much of a task's `ConsoleWrite` one call prints; and how text from outside the kernel is
//! shown on one line of its log ([`OneLine`]).
//!
//! The serial console is written byte by byte, waiting for the UART, with interrupts off: at
//! 115200 baud a kilobyte takes about 90 ms, during which the CPU answers no interrupt and no
//! TLB shoot-down. Each line a task prints also gets a prefix (`[cpuN task T] `), so 4,096
//! bytes of line breaks once made about 80 KB of output from one call — seconds with
//! interrupts off, on hardware (a review of the twelfth session's code). So one call prints at
//! most [`OUTPUT_MAX`] bytes, prefixes counted, and says how many of the task's bytes it took
//! (`ConsoleWrite` answers the bytes written: the caller writes the rest with the next call).
//! Whole lines when they fit; a line longer than the budget alone is cut at a character
//! boundary, the rest printed as a line of its own by the next call. A kilobyte is about 90 ms
//! at 115200 baud: that is the bound on one call, which a task can make again and again (its
//! own CPU's time; other CPUs wait for the console's lock at most that long when they print).

/// Text from outside the kernel (a boot loader's name, a module's name, the command line, a
/// firmware table's signature) shown on one line of the kernel's log: every control character
/// (a line break among them, which would let the text begin a line that looks like the
/// kernel's own: `[cpu0] boot ok`) and the Unicode line separators shown as `?`, as in a user
/// task's lines (the kernel's `print_user_line`). Bytes that are not UTF-8 are `?` too.
pub struct OneLine<'a>(pub &'a [u8]);

impl core::fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let breaks = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
        for chunk in self.0.utf8_chunks() {
            // Runs of clean text go out whole.
            let mut rest = chunk.valid();
            while let Some(i) = rest.find(breaks) {
                f.write_str(&rest[..i])?;
                f.write_str("?")?;
                rest = &rest[i + rest[i..].chars().next().map_or(1, char::len_utf8)..];
            }
            f.write_str(rest)?;
            if !chunk.invalid().is_empty() {
                f.write_str("?")?;
            }
        }
        Ok(())
    }
}

/// Most output bytes (prefixes and line ends counted) one `ConsoleWrite` prints.
pub const OUTPUT_MAX: usize = 1024;

/// Takes lines from the start of `text` for one call: `line` is called with each line to print
/// (without its `\n`), at most `budget` bytes in all with `prefix` bytes and a line end added
/// to each; returns how many bytes of `text` they used (their `\n`s included, and every `\n`
/// that ends `text` after them: no empty lines at the end, but a `text` of line breaks alone
/// is one empty line, as `println!()` writes). At least one byte of a non-empty `text` is
/// taken: a first line is cut to fit (at a character boundary; at least one character,
/// whatever the budget).
pub fn take_lines(text: &str, budget: usize, prefix: usize, mut line: impl FnMut(&str)) -> usize {
    let mut used = 0;
    let mut left = budget;
    while used < text.len() {
        let rest = &text[used..];
        if rest.bytes().all(|b| b == b'\n') {
            if used == 0 {
                line("");
            }
            return text.len();
        }
        let (body, nl) = match rest.find('\n') {
            Some(i) => (&rest[..i], 1),
            None => (rest, 0),
        };
        let cost = prefix + body.len() + 1;
        if cost <= left {
            line(body);
            used += body.len() + nl;
            left -= cost;
            continue;
        }
        if used > 0 {
            break;
        }
        // A first line longer than the whole budget: its head, at a character boundary.
        let room = left.saturating_sub(prefix + 1);
        let mut cut = room.min(body.len());
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut == 0 {
            cut = body.chars().next().map_or(body.len(), char::len_utf8);
        }
        line(&body[..cut]);
        // All of it (an empty line): its line break too.
        used += cut + if cut == body.len() { nl } else { 0 };
        break;
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_shows_outside_text_on_one_line() {
        let shown = |b: &[u8]| OneLine(b).to_string();
        assert_eq!(shown(b"FACP APIC HPET"), "FACP APIC HPET");
        assert_eq!(shown(b"\n[cpu0] boot ok"), "?[cpu0] boot ok");
        assert_eq!(shown(b"a\rb\x1bc\x00"), "a?b?c?");
        assert_eq!(shown("x\u{2028}y\u{2029}\u{e9}".as_bytes()), "x?y?\u{e9}");
        assert_eq!(shown(b"ok\xff\xfe!"), "ok??!");
    }
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    fn run(text: &str, budget: usize, prefix: usize) -> (usize, Vec<String>) {
        let mut v = Vec::new();
        let n = take_lines(text, budget, prefix, |l| v.push(l.to_string()));
        (n, v)
    }

    #[test]
    fn whole_lines_that_fit() {
        assert_eq!(run("a\nbc\n", 100, 10), (5, vec!["a".into(), "bc".into()]));
        assert_eq!(run("a\nbc", 100, 10), (4, vec!["a".into(), "bc".into()]));
        // Trailing line ends make no empty lines; inner empty lines are printed.
        assert_eq!(run("a\n\n\n", 100, 10), (4, vec!["a".into()]));
        assert_eq!(run("a\n\nb", 100, 10), (4, vec!["a".into(), "".into(), "b".into()]));
        assert_eq!(run("", 100, 10), (0, vec![]));
        assert_eq!(run("\n\n", 100, 10), (2, vec!["".into()]));
        assert_eq!(run("\n", 100, 10), (1, vec!["".into()]));
    }

    #[test]
    fn stops_at_the_budget() {
        // Each line costs 10 + 1 + 1: four fit in 48.
        let (n, v) = run("a\nb\nc\nd\ne\nf\n", 48, 10);
        assert_eq!((n, v.len()), (8, 4));
        // 4,095 line breaks between two characters: a bounded number of lines per call, and
        // every byte is taken over the calls.
        let text = alloc::format!("a{}a", "\n".repeat(4094));
        let (mut at, mut calls, mut lines) = (0, 0, 0);
        while at < text.len() {
            let (n, v) = run(&text[at..], OUTPUT_MAX, 24);
            assert!(n > 0);
            assert!(v.iter().map(|l| 24 + l.len() + 1).sum::<usize>() <= OUTPUT_MAX);
            at += n;
            calls += 1;
            lines += v.len();
        }
        assert_eq!(lines, 4095);
        assert_eq!(calls, 4095usize.div_ceil(OUTPUT_MAX / 25));
    }

    #[test]
    fn a_long_line_is_cut_at_a_character_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let (n, v) = run(&long, 50, 10);
        assert_eq!(v.len(), 1);
        assert!(v[0].len() <= 39 && long.is_char_boundary(n) && n == v[0].len() && n == 38);
        // Not even one character fits: one is taken anyway (progress).
        assert_eq!(run("éa", 5, 10), (2, vec!["é".into()]));
        // A long line after one that fitted waits for the next call.
        assert_eq!(run("ab\nccccccccccccccccccccc", 20, 5), (3, vec!["ab".into()]));
    }

    proptest::proptest! {
        #[test]
        fn calls_print_every_line_within_the_budget(text in "[a-zé\n]{0,300}", budget in 1usize..200, prefix in 0usize..40) {
            let (mut at, mut out) = (0, String::new());
            while at < text.len() {
                let (n, v) = run(&text[at..], budget, prefix);
                proptest::prop_assert!(n > 0);
                let cost: usize = v.iter().map(|l| prefix + l.len() + 1).sum();
                // Over the budget only for a single line of one character at most.
                proptest::prop_assert!(cost <= budget || (v.len() == 1 && v[0].chars().count() <= 1));
                for l in &v {
                    out.push_str(l);
                }
                at += n;
            }
            // Every character printed, in order (the line breaks are where the lines end).
            let want: String = text.chars().filter(|&c| c != '\n').collect();
            proptest::prop_assert_eq!(out, want);
        }
    }
}
