//! Links the kernel at its higher-half address and embeds the user programs.
//!
//! The user programs are built first (by `scripts/lib.sh`, `build_kernel`) for
//! `x86_64-unknown-none`; `RL4_USER_DIR` names the directory that holds them. Each becomes a
//! `(name, bytes)` entry of `PROGRAMS` in `$OUT_DIR/programs.rs`.
use std::path::PathBuf;

const PROGRAMS: &[(&str, &str)] = &[("root", "rl4-root"), ("worker", "rl4-worker"), ("serial", "rl4-serial")];

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let script = dir.join("../arch/linker.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    println!("cargo:rustc-link-arg-bins=--no-pie");
    println!("cargo:rustc-link-arg-bins=-znoexecstack");
    println!("cargo:rustc-link-arg-bins=-zmax-page-size=0x1000");

    println!("cargo:rerun-if-env-changed=RL4_USER_DIR");
    let user = std::env::var("RL4_USER_DIR").unwrap_or_else(|_| {
        panic!("RL4_USER_DIR is not set: build the kernel with scripts/run or scripts/test (they build the user programs first)")
    });
    let mut out = String::from("/// The embedded user programs: (name, ELF image).\npub static PROGRAMS: &[(&str, &[u8])] = &[\n");
    for (name, file) in PROGRAMS {
        let path = PathBuf::from(&user).join(file);
        if !path.exists() {
            panic!("user program {} not found (RL4_USER_DIR={user})", path.display());
        }
        println!("cargo:rerun-if-changed={}", path.display());
        // Embedded without what loading does not read (debug information, the section table):
        // the kernel image stays resident, and the root task's debug information alone was
        // 4.2 MiB of it. A debugger reads the unstripped file in RL4_USER_DIR.
        let elf = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let stripped = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join(format!("{file}.loadable"));
        std::fs::write(&stripped, loadable(&elf).unwrap_or_else(|e| panic!("user program {}: {e}", path.display()))).unwrap();
        out.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", stripped.display().to_string()));
    }
    out.push_str("];\n");
    let dst = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("programs.rs");
    std::fs::write(dst, out).unwrap();
}

/// `elf` (a 64-bit little-endian ELF executable) cut after the last byte a program header
/// names, with no section table: the bytes `rl4_elf` reads to load it (the ELF header, the
/// program headers and the segments' contents), which come first in a linked executable.
fn loadable(elf: &[u8]) -> Result<Vec<u8>, &'static str> {
    let word = |at: usize, n: usize| -> Result<u64, &'static str> {
        let b = at.checked_add(n).and_then(|e| elf.get(at..e)).ok_or("truncated")?;
        Ok(b.iter().rev().fold(0, |v, &x| v << 8 | x as u64))
    };
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err("not a 64-bit little-endian ELF file");
    }
    const BAD: &str = "a program header or segment lies past the file";
    let (phoff, phentsize, phnum) = (word(0x20, 8)?, word(0x36, 2)?, word(0x38, 2)?);
    if phentsize < 0x38 {
        return Err("program headers too small");
    }
    // Every sum checked: a wrapped one would cut the file short (no less than its header).
    let mut end = phentsize.checked_mul(phnum).and_then(|n| n.checked_add(phoff)).ok_or(BAD)?.max(0x40);
    for i in 0..phnum {
        let h = usize::try_from(phoff + i * phentsize).map_err(|_| BAD)?;
        end = end.max(word(h + 8, 8)?.checked_add(word(h + 0x20, 8)?).ok_or(BAD)?);
    }
    let end = usize::try_from(end).map_err(|_| BAD)?;
    if end > elf.len() {
        return Err(BAD);
    }
    let mut v = elf[..end].to_vec();
    // No section table (e_shoff, e_shentsize, e_shnum, e_shstrndx).
    v[0x28..0x30].fill(0);
    v[0x3a..0x40].fill(0);
    Ok(v)
}
