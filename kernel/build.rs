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
        out.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", path.display().to_string()));
    }
    out.push_str("];\n");
    let dst = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("programs.rs");
    std::fs::write(dst, out).unwrap();
}
