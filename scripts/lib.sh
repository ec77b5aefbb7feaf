# Shared helpers for scripts/run, scripts/test and friends: installing what is missing, building
# the kernel image (and the GRUB ISO), and starting QEMU. Sourced, not run.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$ROOT/build"
TARGET=x86_64-unknown-none
KERNEL_ELF="$ROOT/target/$TARGET/release/rl4"
QEMU_MIN_MAJOR=8
QEMU_MIN_MINOR=1
# QEMU's isa-debug-exit turns the kernel's codes 0x10 / 0x11 into these exit statuses.
EXIT_SUCCESS=33
EXIT_FAILURE=35

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

APT_UPDATED=""
apt_update_once() {
    if [ -z "$APT_UPDATED" ]; then
        say "updating apt's package lists"
        $SUDO apt-get update -q >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
}

apt_install() {
    apt_update_once
    say "installing $* with apt"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 || die "apt-get install $* failed"
}

# The pinned nightly from rust-toolchain.toml, with rust-src, llvm-tools and the bare-metal target.
ensure_rust() {
    local channel
    channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$ROOT/rust-toolchain.toml")
    if ! command -v rustup >/dev/null 2>&1; then
        say "rustup not found: installing it from rustup's own server"
        command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain none >&2 \
            || die "installing rustup failed"
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    if ! rustup run "$channel" rustc -vV >/dev/null 2>&1 \
        || ! rustup +"$channel" target list --installed 2>/dev/null | grep -qx "$TARGET" \
        || ! rustup +"$channel" component list --installed 2>/dev/null | grep -q '^rust-src' \
        || ! rustup +"$channel" component list --installed 2>/dev/null | grep -q '^llvm-tools'; then
        say "installing Rust $channel with rust-src, llvm-tools and target $TARGET"
        rustup toolchain install "$channel" --profile minimal --component rust-src,llvm-tools --target "$TARGET" >&2 \
            || die "rustup could not install $channel"
    fi
}

qemu_version_ok() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
    local v major minor
    v=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -n1)
    read -r major minor <<<"$v"
    [ -n "$major" ] || return 1
    [ "$major" -gt "$QEMU_MIN_MAJOR" ] || { [ "$major" -eq "$QEMU_MIN_MAJOR" ] && [ "$minor" -ge "$QEMU_MIN_MINOR" ]; }
}

# QEMU 8.1 or newer (TCG has x2APIC from 8.1 on). Debian bookworm ships 7.2: take 10.x from
# bookworm-backports there.
ensure_qemu() {
    qemu_version_ok && return 0
    local codename=""
    if [ -r /etc/os-release ]; then codename=$(. /etc/os-release; echo "${VERSION_CODENAME:-}"); fi
    if command -v qemu-system-x86_64 >/dev/null 2>&1; then
        say "QEMU $(qemu-system-x86_64 --version | head -n1 | sed 's/.*version //') is older than $QEMU_MIN_MAJOR.$QEMU_MIN_MINOR"
    else
        say "QEMU (qemu-system-x86_64) is not installed"
    fi
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install QEMU >= $QEMU_MIN_MAJOR.$QEMU_MIN_MINOR by hand"
    if [ "$codename" = bookworm ]; then
        local list=/etc/apt/sources.list.d/rl4-bookworm-backports.list
        if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            say "adding Debian's bookworm-backports suite to apt's sources ($list)"
            echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee "$list" >/dev/null
            APT_UPDATED=""
        fi
        apt_install -t bookworm-backports qemu-system-x86
    else
        apt_install qemu-system-x86
    fi
    qemu_version_ok || die "QEMU is still older than $QEMU_MIN_MAJOR.$QEMU_MIN_MINOR after installing"
}

ensure_grub() {
    local missing=()
    command -v grub-mkrescue >/dev/null 2>&1 || missing+=(grub-common)
    [ -d /usr/lib/grub/i386-pc ] || missing+=(grub-pc-bin)
    command -v xorriso >/dev/null 2>&1 || missing+=(xorriso)
    command -v mformat >/dev/null 2>&1 || missing+=(mtools)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

build_kernel() {
    say "building the user programs and the kernel (cargo build --release, target $TARGET)"
    (cd "$ROOT" && cargo build -q -p rl4-root -p rl4-worker --target "$TARGET" --release) || die "user program build failed"
    (cd "$ROOT" && RL4_USER_DIR="$ROOT/target/$TARGET/release" cargo build -q -p rl4-kernel --target "$TARGET" --release) \
        || die "kernel build failed"
    mkdir -p "$BUILD"
    cp "$KERNEL_ELF" "$BUILD/rl4.elf"
}

# build_lockcheck_kernel: the same kernel checking the lock order at every acquisition (feature
# `lockcheck`), as build/rl4-lockcheck.elf (its own target directory).
build_lockcheck_kernel() {
    say "building the kernel with lock-order checks (--features lockcheck)"
    (cd "$ROOT" && RL4_USER_DIR="$ROOT/target/$TARGET/release" cargo build -q -p rl4-kernel --features lockcheck \
        --target "$TARGET" --release --target-dir "$ROOT/target/lockcheck") || die "lockcheck kernel build failed"
    cp "$ROOT/target/lockcheck/$TARGET/release/rl4" "$BUILD/rl4-lockcheck.elf"
}

# build_trace_kernel: the same kernel with the per-step IPC stamps (feature `trace`), as
# build/rl4-trace.elf, for scripts/bench's breakdown (its own target directory, so that the
# two builds do not undo each other).
build_trace_kernel() {
    say "building the kernel with IPC stamps (--features trace) for the per-step breakdown"
    (cd "$ROOT" && RL4_USER_DIR="$ROOT/target/$TARGET/release" cargo build -q -p rl4-kernel --features trace \
        --target "$TARGET" --release --target-dir "$ROOT/target/trace") || die "trace kernel build failed"
    cp "$ROOT/target/trace/$TARGET/release/rl4" "$BUILD/rl4-trace.elf"
}

# build_countglobal_kernel: the same kernel counting heap allocations and global-lock
# acquisitions per CPU (feature `countglobal`), as build/rl4-countglobal.elf (its own target
# directory), for scripts/bench's cross-core figures.
build_countglobal_kernel() {
    say "building the kernel that counts heap allocations and global locks (--features countglobal)"
    (cd "$ROOT" && RL4_USER_DIR="$ROOT/target/$TARGET/release" cargo build -q -p rl4-kernel --features countglobal \
        --target "$TARGET" --release --target-dir "$ROOT/target/countglobal") || die "countglobal kernel build failed"
    cp "$ROOT/target/countglobal/$TARGET/release/rl4" "$BUILD/rl4-countglobal.elf"
}

# build_iso "kernel args": a GRUB (BIOS) ISO that boots rl4 through Multiboot2.
build_iso() {
    local args="$1" dir="$BUILD/iso"
    rm -rf "$dir"
    mkdir -p "$dir/boot/grub"
    cp "$KERNEL_ELF" "$dir/boot/rl4.elf"
    cat >"$dir/boot/grub/grub.cfg" <<CFG
set timeout=0
set default=0
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
menuentry "rl4" {
    multiboot2 /boot/rl4.elf $args
    boot
}
CFG
    say "building the GRUB ISO (Multiboot2 entry)"
    grub-mkrescue -o "$BUILD/rl4.iso" "$dir" >/dev/null 2>&1 || die "grub-mkrescue failed"
}

# qemu_args ACCEL SMP [CPU]: prints the common QEMU arguments, one per line.
# ACCEL is tcg, icount or kvm.
qemu_args() {
    local accel="$1" smp="$2" cpu="${3:-}"
    case "$accel" in
        tcg) printf '%s\n' -accel tcg -cpu "${cpu:-max}" ;;
        icount) printf '%s\n' -accel tcg,thread=single -icount shift=0,sleep=off -cpu "${cpu:-max}" ;;
        kvm) printf '%s\n' -enable-kvm -cpu "${cpu:-host,-arch-capabilities}" ;;
        *) die "unknown accelerator $accel" ;;
    esac
    printf '%s\n' -smp "$smp" -m "${RL4_MEM:-256M}" -display none -no-reboot \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04
}
