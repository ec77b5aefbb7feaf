# Shared helpers for scripts/run, scripts/test and friends: installing what is missing, building
# the kernel image (and the GRUB and Limine ISOs), and starting QEMU. Sourced, not run.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$ROOT/build"
TARGET=x86_64-unknown-none
KERNEL_ELF="$ROOT/target/$TARGET/release/rl4"
QEMU_MIN_MAJOR=8
QEMU_MIN_MINOR=1
# The start of a console line (extended regular expressions): the kernel's lines read
# `[cpuN] ...`, a task's `[cpuN task T] ...` (the kernel adds the prefix to every line a task
# writes). The root task is task 1 (rl4_abi::ROOT_TASK_ID): the scripts read test results,
# summaries and benchmark figures only from its lines and the kernel's, so that no other task
# can forge them.
KLINE='^\[cpu[0-9]+\] '
RLINE='^\[cpu[0-9]+ task 1\] '

# kernel_bug LOG: the first line in which the kernel itself says it found a kernel bug (a thread
# put into a second queue, a lost deadline, ...), or that a CPU's local APIC pins or unused LVT
# entries read back otherwise than it set them; such a line fails the boot whatever else it
# printed (the kernel refuses the damage, or reports the pins, and goes on, so nothing else
# would show it). Every boot, suite and late-CPU run of scripts/test checks it, and so do
# scripts/fuzz, scripts/storm and scripts/stress (since the thirty-ninth session).
kernel_bug() {
    tr -d '\r' <"$1" | grep -aE -m1 '^\[cpu[0-9]+\] (.*a kernel bug|cpu [0-9]+: timer .*(LINT0/LINT1 NOT AS SET|unused LVT entries .* NOT MASKED))' || true
}
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
    # The build scripts (`kernel/build.rs`, the host tests) link with the host's C linker.
    command -v cc >/dev/null 2>&1 || apt_install gcc libc6-dev
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
        || ! rustup +"$channel" target list --installed 2>/dev/null | grep -x "$TARGET" >/dev/null \
        || ! rustup +"$channel" component list --installed 2>/dev/null | grep '^rust-src' >/dev/null \
        || ! rustup +"$channel" component list --installed 2>/dev/null | grep '^llvm-tools' >/dev/null; then
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
    (cd "$ROOT" && cargo build -q -p rl4-root -p rl4-worker -p rl4-serial --target "$TARGET" --release) || die "user program build failed"
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

# build_timeline_kernel: the same kernel recording the event timeline (feature `timeline`), as
# build/rl4-timeline.elf, for scripts/trace (its own target directory).
build_timeline_kernel() {
    say "building the kernel with the event timeline (--features timeline)"
    (cd "$ROOT" && RL4_USER_DIR="$ROOT/target/$TARGET/release" cargo build -q -p rl4-kernel --features timeline \
        --target "$TARGET" --release --target-dir "$ROOT/target/timeline") || die "timeline kernel build failed"
    mkdir -p "$BUILD"
    cp "$ROOT/target/timeline/$TARGET/release/rl4" "$BUILD/rl4-timeline.elf"
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

# module_file SPEC / module_name SPEC: a boot module given as FILE[:NAME] (NAME: the file's
# name without .elf when not given); the kernel names each module by NAME.
module_file() { if [[ "$1" == *:* && "${1##*:}" != */* ]]; then printf '%s' "${1%:*}"; else printf '%s' "$1"; fi; }
module_name() {
    if [[ "$1" == *:* && "${1##*:}" != */* ]]; then printf '%s' "${1##*:}"; else local b; b=$(basename "$1"); printf '%s' "${b%.elf}"; fi
}

# build_module_archive OUT SPEC...: a newc cpio archive of the modules (FILE[:NAME]), each
# member named NAME: how PVH, which carries one module, passes several (the kernel splits it).
build_module_archive() {
    local out="$1" s args=()
    shift
    for s in "$@"; do args+=("$(module_name "$s")" "$(module_file "$s")"); done
    python3 - "$out" "${args[@]}" <<'PY' || die "building the module archive failed"
import sys
out, rest = sys.argv[1], sys.argv[2:]
def entry(name, mode, data):
    n = name.encode() + b"\0"
    h = b"070701" + b"".join(b"%08x" % v for v in (0, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(n), 0))
    b = h + n
    b += b"\0" * (-len(b) % 4)
    b += data
    return b + b"\0" * (-len(b) % 4)
ar = b""
for name, path in zip(rest[::2], rest[1::2]):
    ar += entry(name, 0o100644, open(path, "rb").read())
ar += entry("TRAILER!!!", 0, b"")
open(out, "wb").write(ar)
PY
}

# build_iso "kernel args" [MODULE...]: a GRUB (BIOS) ISO that boots rl4 through Multiboot2, with
# the given files (FILE[:NAME]) as boot modules, each named by its module string.
build_iso() {
    local args="$1" dir="$BUILD/iso" m f mods="" i=0
    shift
    rm -rf "$dir"
    mkdir -p "$dir/boot/grub" "$dir/boot/modules"
    cp "$KERNEL_ELF" "$dir/boot/rl4.elf"
    # Each module under its index: two files of one name (a/echo.elf, b/echo.elf), or one named
    # rl4.elf, went to one path before (a review).
    for m in "$@"; do
        f=$(module_file "$m")
        cp "$f" "$dir/boot/modules/$i"
        mods+="    module2 /boot/modules/$i $(module_name "$m")"$'\n'
        i=$((i + 1))
    done
    cat >"$dir/boot/grub/grub.cfg" <<CFG
set timeout=0
set default=0
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
menuentry "rl4" {
    multiboot2 /boot/rl4.elf $args
$mods    boot
}
CFG
    say "building the GRUB ISO (Multiboot2 entry)"
    grub-mkrescue -o "$BUILD/rl4.iso" "$dir" >/dev/null 2>&1 || die "grub-mkrescue failed"
}

# ---- Limine and UEFI -----------------------------------------------------------------------------

# find_limine: the directory of a Limine 8.x binary release (limine-bios.sys, limine-bios-cd.bin,
# limine-uefi-cd.bin, BOOTX64.EFI): $LIMINE_DIR, a distribution's /usr/share/limine, or
# shared/limine next to this repository or beside one of its ancestor directories, else the
# copy vendored in third_party/limine. Sets LIMINE_DIR.
LIMINE_FILES="limine-bios.sys limine-bios-cd.bin limine-uefi-cd.bin BOOTX64.EFI"
limine_dir_ok() {
    local f
    for f in $LIMINE_FILES; do [ -f "$1/$f" ] || return 1; done
}
find_limine() {
    if [ -n "${LIMINE_DIR:-}" ]; then
        limine_dir_ok "$LIMINE_DIR" || die "LIMINE_DIR=$LIMINE_DIR lacks one of: $LIMINE_FILES"
        LIMINE_DIR=$(cd "$LIMINE_DIR" && pwd)
        return 0
    fi
    local d
    for d in /usr/share/limine "$ROOT/../shared/limine"; do
        if limine_dir_ok "$d"; then
            LIMINE_DIR=$(cd "$d" && pwd)
            return 0
        fi
    done
    # A clone placed deeper (a CI work directory): shared/limine beside any ancestor.
    d=$(cd "$ROOT/.." && pwd)
    while [ "$d" != / ]; do
        d=$(dirname "$d")
        if limine_dir_ok "$d/shared/limine"; then
            LIMINE_DIR=$(cd "$d/shared/limine" && pwd)
            return 0
        fi
    done
    # Last, the copy in this repository (third_party/limine, the same 8.2.0 release).
    if limine_dir_ok "$ROOT/third_party/limine"; then
        LIMINE_DIR="$ROOT/third_party/limine"
        return 0
    fi
    return 1
}

# ensure_limine: Limine's files, its host tool (for `limine bios-install`) and xorriso. Sets
# LIMINE_DIR and LIMINE_TOOL. The tool is the release's own `limine`, else built from its
# limine.c into build/ (with cc), else a `limine` on the PATH (a distribution's package).
ensure_limine() {
    command -v xorriso >/dev/null 2>&1 || apt_install xorriso
    if ! find_limine; then
        die "Limine 8.x not found. Either set LIMINE_DIR to a directory holding $LIMINE_FILES
       (the binary release: git clone --branch=v8.x-binary --depth=1 https://github.com/limine-bootloader/limine),
       install a distribution's limine package (files in /usr/share/limine),
       or put the release in $(cd "$ROOT/.." && pwd)/shared/limine next to this repository."
    fi
    if [ -x "$LIMINE_DIR/limine" ]; then
        LIMINE_TOOL="$LIMINE_DIR/limine"
    elif [ -f "$LIMINE_DIR/limine.c" ]; then
        LIMINE_TOOL="$BUILD/limine-tool/limine"
        if [ ! -x "$LIMINE_TOOL" ] || [ "$LIMINE_DIR/limine.c" -nt "$LIMINE_TOOL" ]; then
            command -v cc >/dev/null 2>&1 || apt_install gcc libc6-dev
            say "building Limine's host tool from $LIMINE_DIR/limine.c"
            mkdir -p "$BUILD/limine-tool"
            cc -O2 -pipe -std=c99 "$LIMINE_DIR/limine.c" -o "$LIMINE_TOOL" || die "building the limine tool failed"
        fi
    elif command -v limine >/dev/null 2>&1; then
        LIMINE_TOOL=$(command -v limine)
    else
        die "no Limine host tool: $LIMINE_DIR has neither limine nor limine.c, and there is no limine on the PATH"
    fi
}

# build_limine_iso NAME "kernel args" [MODULE...]: build/NAME.iso, bootable from BIOS (CD) and
# UEFI (its EFI system partition), that boots rl4 through the Limine protocol, with the given
# files as boot modules.
build_limine_iso() {
    local name="$1" args="$2" dir="$BUILD/$1.d" m
    shift 2
    rm -rf "$dir"
    mkdir -p "$dir/boot/limine" "$dir/EFI/BOOT"
    # Without its debug information (symbolize with target/.../rl4): a third of the bytes for
    # the firmware to read, two seconds less to boot from the BIOS under TCG.
    local objcopy
    objcopy="$(cd "$ROOT" && rustc --print sysroot)/lib/rustlib/$(cd "$ROOT" && rustc -vV | sed -n 's/^host: //p')/bin/llvm-objcopy"
    if [ -x "$objcopy" ]; then
        "$objcopy" --strip-debug "$KERNEL_ELF" "$dir/boot/rl4.elf" || die "llvm-objcopy --strip-debug failed"
    else
        cp "$KERNEL_ELF" "$dir/boot/rl4.elf"
    fi
    cp "$LIMINE_DIR/limine-bios.sys" "$LIMINE_DIR/limine-bios-cd.bin" "$LIMINE_DIR/limine-uefi-cd.bin" "$dir/boot/limine/"
    cp "$LIMINE_DIR/BOOTX64.EFI" "$dir/EFI/BOOT/"
    {
        echo "timeout: 0"
        echo
        echo "/rl4"
        echo "    protocol: limine"
        echo "# Limine 8 reads kernel_path and kernel_cmdline; later versions call them path and cmdline."
        echo "    kernel_path: boot():/boot/rl4.elf"
        echo "    path: boot():/boot/rl4.elf"
        echo "    kernel_cmdline: $args"
        echo "    cmdline: $args"
        local i=0
        mkdir -p "$dir/boot/modules"
        for m in "$@"; do
            # Under its index, as in build_iso.
            cp "$(module_file "$m")" "$dir/boot/modules/$i"
            echo "    module_path: boot():/boot/modules/$i"
            echo "    module_cmdline: $(module_name "$m")"
            i=$((i + 1))
        done
    } >"$dir/boot/limine/limine.conf"
    say "building the Limine ISO build/$name.iso (BIOS and UEFI)"
    xorriso -as mkisofs -R -r -J -b boot/limine/limine-bios-cd.bin -no-emul-boot -boot-load-size 4 \
        -boot-info-table -hfsplus -apm-block-size 2048 --efi-boot boot/limine/limine-uefi-cd.bin \
        -efi-boot-part --efi-boot-image --protective-msdos-label "$dir" -o "$BUILD/$name.iso" >"$BUILD/$name.xorriso.log" 2>&1 \
        || die "xorriso failed (see build/$name.xorriso.log)"
    "$LIMINE_TOOL" bios-install "$BUILD/$name.iso" >>"$BUILD/$name.xorriso.log" 2>&1 \
        || die "limine bios-install failed (see build/$name.xorriso.log)"
}

# ensure_ovmf: UEFI firmware for QEMU from Debian's ovmf package (a code image and a variable
# store of the same size). Sets OVMF_CODE and OVMF_VARS_TEMPLATE.
find_ovmf() {
    local pair
    for pair in /usr/share/OVMF/OVMF_CODE_4M.fd:/usr/share/OVMF/OVMF_VARS_4M.fd \
        /usr/share/OVMF/OVMF_CODE.fd:/usr/share/OVMF/OVMF_VARS.fd; do
        if [ -f "${pair%%:*}" ] && [ -f "${pair##*:}" ]; then
            OVMF_CODE="${pair%%:*}" OVMF_VARS_TEMPLATE="${pair##*:}"
            return 0
        fi
    done
    return 1
}
ensure_ovmf() {
    find_ovmf && return 0
    say "UEFI firmware for QEMU (OVMF) is not installed"
    apt_install ovmf
    find_ovmf || die "the ovmf package installed no OVMF_CODE/OVMF_VARS pair under /usr/share/OVMF"
}

# uefi_args: the QEMU arguments that boot through OVMF, one per line (a fresh copy of the
# variable store each time, in build/).
uefi_args() {
    cp "$OVMF_VARS_TEMPLATE" "$BUILD/ovmf-vars.fd"
    printf '%s\n' -drive "if=pflash,format=raw,unit=0,readonly=on,file=$OVMF_CODE" \
        -drive "if=pflash,format=raw,unit=1,file=$BUILD/ovmf-vars.fd"
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
    printf '%s\n' -smp "$smp" -m "${RL4_MEM:-288M}" -display none -no-reboot \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04
}

# ---- the Linux peer (scripts/bench --peers) -----------------------------------------------------
PEERS="$BUILD/peers"
MUSL_TARGET=x86_64-unknown-linux-musl
PINGPONG="$ROOT/target/$MUSL_TARGET/release/pingpong"

# The ping-pong program is built statically for musl: its Rust target, added to the pinned nightly.
ensure_musl_target() {
    local channel
    channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$ROOT/rust-toolchain.toml")
    if ! rustup +"$channel" target list --installed 2>/dev/null | grep -x "$MUSL_TARGET" >/dev/null; then
        say "adding the Rust target $MUSL_TARGET to $channel (rustup target add), for the Linux ping-pong program"
        rustup +"$channel" target add "$MUSL_TARGET" >&2 || die "rustup could not add $MUSL_TARGET"
    fi
}

# build_pingpong: peers/pingpong as a static musl binary (no debug information), at $PINGPONG.
build_pingpong() {
    ensure_musl_target
    say "building the Linux ping-pong program (peers/pingpong, static, target $MUSL_TARGET)"
    (cd "$ROOT" && CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
        cargo build -q -p rl4-peer-pingpong --target "$MUSL_TARGET" --release) || die "ping-pong build failed"
}

# fetch_linux_kernel: Debian's amd64 kernel (the package linux-image-amd64 depends on, downloaded
# once with `apt-get download` into build/peers/debs and unpacked there with dpkg-deb; nothing is
# installed). Sets LINUX_VMLINUZ and LINUX_PACKAGE.
fetch_linux_kernel() {
    command -v dpkg-deb >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
        || die "the Linux peer needs Debian's apt-get and dpkg-deb (to fetch linux-image-amd64)"
    local pkg
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ <>]*\)$/\1/p' | head -n1)
    if [ -z "$pkg" ]; then
        apt_update_once
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ <>]*\)$/\1/p' | head -n1)
    fi
    [ -n "$pkg" ] || die "apt-cache finds no kernel package behind linux-image-amd64"
    local dir="$PEERS/debs" deb
    mkdir -p "$dir"
    deb=$(ls "$dir/${pkg}_"*_amd64.deb 2>/dev/null | head -n1 || true)
    if [ -z "$deb" ]; then
        local ver
        ver=$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')
        say "downloading Debian's kernel package $pkg $ver (apt-get download, about 70 MB, into build/peers/debs; not installed)"
        (cd "$dir" && apt-get download -q "$pkg" >&2 2>"$dir/download.log") || die "apt-get download $pkg failed (see $dir/download.log)"
        deb=$(ls "$dir/${pkg}_"*_amd64.deb | head -n1)
    fi
    LINUX_PACKAGE=$(basename "$deb" .deb)
    local kdir="$PEERS/kernel/$LINUX_PACKAGE"
    if [ ! -s "$kdir/vmlinuz" ]; then
        say "unpacking the kernel image from $LINUX_PACKAGE.deb (dpkg-deb)"
        rm -rf "$kdir" && mkdir -p "$kdir/x"
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$kdir/x" --wildcards './boot/vmlinuz-*' './boot/config-*' \
            || die "unpacking $deb failed"
        mv "$kdir"/x/boot/vmlinuz-* "$kdir/vmlinuz" && mv "$kdir"/x/boot/config-* "$kdir/config" && rm -rf "$kdir/x"
    fi
    # The guest prints on the serial console and starts from an initramfs: both must be built in.
    local opt
    for opt in CONFIG_SERIAL_8250=y CONFIG_SERIAL_8250_CONSOLE=y CONFIG_BLK_DEV_INITRD=y CONFIG_RD_GZIP=y CONFIG_DEVTMPFS=y; do
        grep -qx "$opt" "$kdir/config" || die "$LINUX_PACKAGE lacks $opt (needed by the peers run)"
    done
    LINUX_VMLINUZ="$kdir/vmlinuz"
}

# build_initramfs: a gzipped cpio (newc) archive holding the ping-pong program as /init and an
# empty /dev (init mounts /proc, /sys and devtmpfs itself), at $PEERS/initramfs.gz.
build_initramfs() {
    command -v cpio >/dev/null 2>&1 || apt_install cpio
    local dir="$PEERS/initramfs"
    rm -rf "$dir" && mkdir -p "$dir/dev" "$dir/proc" "$dir/sys"
    cp "$PINGPONG" "$dir/init"
    (cd "$dir" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -9 >"$PEERS/initramfs.gz") \
        || die "building the initramfs failed"
}
