#!/usr/bin/env python3
"""Exact per-iteration instruction profiles of a benchmark configuration (used by scripts/insn-profile).

    insn-profile.py count OUT.json < QEMU-LOG
        reads QEMU's `-d exec,nochain,in_asm` log of a `one-insn-per-tb` run from standard input
        (a stream: gigabytes, never stored) and writes how often each guest instruction ran:
        [pc, bytes (hex), disassembly, executions] per instruction
    insn-profile.py dfilter KERNEL_ELF
        prints QEMU `-dfilter` ranges that leave out what only the boot runs and that dominates
        the stream (the firmware, the kernel's PIT calibration loop)
    insn-profile.py profile --small A.json --large B.json --rounds R [--median M] [--kernel ELF]
                            [--user NAME=ELF ...] [--root REPO] [--name NAME] [--args TEXT]
                            [--out P.json] [--verbose]
        the per-instruction difference of two counts (the same configuration with two iteration
        counts) divided by R, the difference in round trips: the exact number of times each
        instruction runs per round trip, whatever boot and set-up cost. Prints the profile and
        writes it as JSON: the total, the locked instructions (a `lock` prefix, or `xchg` with a
        memory operand), and where the instructions go: user code (per program, told apart by
        their bytes, since the programs share addresses), the entry and exit assembly, the
        fast path's steps (the kernel's `trace::stamp` points in kernel/src/fastpath.rs cut
        `call` and `reply_recv` into steps; inlined code counts in the step whose lines it was
        inlined at), every other kernel function, and by source file of the innermost inlined
        frame (spinlocks, reference counts, queues...). With --median M (the configuration's
        median, from the BENCH line of the larger run) the instructions of the benchmark loop
        outside the timed window (total - M, all in the client's user code) are split off, so
        the profile adds up to M.
    insn-profile.py events --log SERIAL_LOG --elf KERNEL [--root REPO]
        the `countglobal:` records of a counting kernel's serial log (see kernel/src/count.rs),
        per measured loop, with each event's call chain symbolized and identical ones merged, as
        JSON on standard output
    insn-profile.py selftest
        checks the parser and the arithmetic on a small made-up log (scripts/test runs it)
    insn-profile.py sample OUT_DIR
        writes a small made-up scripts/bench output directory (BENCH rows of every kind, two
        profiles, the counting kernel's records), on which scripts/test runs bench-report.py

Standard library only; symbols from llvm-nm (the Rust toolchain's llvm-tools) and addr2line.
"""
import argparse
import bisect
import collections
import glob
import json
import os
import re
import struct
import subprocess
import sys

USER_END = 0x8000_0000_0000
LOCK = 0xF0
PREFIXES = {0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67}
ASM_SYMBOLS = {
    "rl4_syscall_entry": "entry assembly (`rl4_syscall_entry`)",
    "rl4_return_to_user": "exit assembly (`rl4_return_to_user`, `rl4_return_with_message`)",
    "rl4_return_with_message": "exit assembly (`rl4_return_to_user`, `rl4_return_with_message`)",
}


# ---------------------------------------------------------------------------------------------
# count: the stream parser

def count(stream):
    """Per-instruction execution counts of a QEMU `-d exec,nochain,in_asm` log (one instruction
    per translation block). `Trace` lines name the block that runs (host address of its code and
    guest PC); the `IN:` block printed when it was translated gives its bytes and disassembly.
    Blocks are told apart by host address, so two programs' code at one guest address (user
    programs share their link address) stays apart. Returns ({(pc, bytes): count}, {(pc, bytes):
    asm}, lines, {(pc, bytes): {cpu: count}})."""
    cnt = collections.Counter()
    host_of = {}  # host address -> (pc, bytes, asm)
    pending = {}  # pc -> (bytes, asm): translated, not yet seen running
    lines = 0
    for line in stream:
        if line[:6] == b"Trace ":
            cnt[line] += 1
            if pending:
                lb = line.find(b"[")
                pc = int(line[lb + 1:].split(b"/", 2)[1], 16)
                p = pending.get(pc)
                if p is not None:
                    host_of[line.split()[2]] = (pc,) + p
                # A block runs right after its translation (one instruction per block); one
                # interrupted before it ran is matched by its address below.
                pending.clear()
        elif line[:2] == b"0x":
            a, _, rest = line.partition(b":")
            toks = rest.split()
            i = 0
            while i < len(toks) and re.fullmatch(rb"[0-9a-f]{2}", toks[i]):
                i += 1
            try:
                pending[int(a, 16)] = (bytes(int(t, 16) for t in toks[:i]).hex(), b" ".join(toks[i:]).decode(errors="replace"))
            except ValueError:
                pass
    variants = collections.defaultdict(set)
    for pc, code, a in host_of.values():
        variants[pc].add((code, a))
    out = collections.Counter()
    asm = {}
    by_cpu = collections.defaultdict(collections.Counter)
    for line, c in cnt.items():
        lines += c
        parts = line.split()
        lb = line.find(b"[")
        pc = int(line[lb + 1:].split(b"/", 2)[1], 16)
        t = host_of.get(parts[2])
        if t is None and len(variants.get(pc, ())) == 1:
            t = (pc,) + next(iter(variants[pc]))
        key = (pc, t[1] if t else "")
        out[key] += c
        by_cpu[key][int(parts[1].rstrip(b":"))] += c
        if t:
            asm[key] = t[2]
    return out, asm, lines, by_cpu


def cmd_count(args):
    out, asm, lines, by_cpu = count(sys.stdin.buffer)
    json.dump({"executed": lines, "insns": [[pc, b, asm.get((pc, b), ""), c, {str(k): v for k, v in by_cpu[(pc, b)].items()}]
                                            for (pc, b), c in sorted(out.items())]}, open(args.out, "w"))
    print(f"insn-profile: {lines:,} instructions traced, {len(out):,} distinct", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# ELF and symbols

def llvm_tool(name):
    try:
        sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True).stdout.strip()
        p = os.path.join(sysroot, "lib/rustlib/x86_64-unknown-linux-gnu/bin", name)
        if os.path.exists(p):
            return p
    except (OSError, subprocess.CalledProcessError):
        pass
    for p in sorted(glob.glob(os.path.expanduser("~/.rustup/toolchains/*/lib/rustlib/*/bin/" + name))):
        return p
    return name


def symbols(elf):
    """Sorted [(address, demangled name)] of the functions in `elf`."""
    r = subprocess.run([llvm_tool("llvm-nm"), "-n", "-C", "--defined-only", elf], capture_output=True, text=True)
    syms = []
    for l in r.stdout.splitlines():
        p = l.split(" ", 2)
        if len(p) == 3 and p[1] in "tTwW":
            syms.append((int(p[0], 16), p[2]))
    return syms


class Symtab:
    def __init__(self, elf):
        self.syms = symbols(elf) if elf else []
        self.addrs = [a for a, _ in self.syms]

    def at(self, a):
        i = bisect.bisect_right(self.addrs, a) - 1
        return self.syms[i][1] if i >= 0 else "?"

    def range_of(self, name):
        for i, (a, n) in enumerate(self.syms):
            if n == name or n.endswith("::" + name):
                nxt = next((b for b, _ in self.syms[i + 1:] if b > a), a + 1)
                return a, nxt
        return None


class Image:
    """The loadable bytes of an ELF64 file, by virtual address."""

    def __init__(self, elf):
        data = open(elf, "rb").read()
        if data[:4] != b"\x7fELF":
            raise SystemExit(f"{elf}: not an ELF file")
        phoff, = struct.unpack_from("<Q", data, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
        self.segs = []
        for i in range(phnum):
            typ, _flags, off, vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
            if typ == 1:
                self.segs.append((vaddr, data[off:off + filesz]))

    def has(self, pc, code):
        for va, b in self.segs:
            if va <= pc and pc + len(code) <= va + len(b):
                return b[pc - va:pc - va + len(code)] == code
        return False


def inline_chains(elf, addrs, root):
    """{address: [(function, file relative to the repository or a library tag, line)], innermost
    first} from addr2line's inlining information."""
    if not addrs or not elf:
        return {}
    r = subprocess.run(["addr2line", "-a", "-f", "-i", "-C", "-e", elf], input="\n".join(f"{a:#x}" for a in addrs),
                       capture_output=True, text=True)
    out, cur = {}, None
    lines = r.stdout.splitlines()
    i = 0
    while i < len(lines):
        l = lines[i]
        if l.startswith("0x") and (i + 1 >= len(lines) or not lines[i + 1].startswith("0x")) and re.fullmatch(r"0x[0-9a-f]+", l):
            cur = int(l, 16)
            out[cur] = []
            i += 1
            continue
        if cur is not None and i + 1 < len(lines):
            fn, loc = l, lines[i + 1]
            f, _, ln = loc.rpartition(":")
            ln = re.match(r"\d+", ln)
            out[cur].append((fn, source_tag(f, root), int(ln.group()) if ln else 0))
            i += 2
            continue
        i += 1
    return out


def source_tag(path, root):
    """A short name for a source file: relative to the repository, or `crate: path` for
    libraries (the Rust library, crates from the registry)."""
    if root and path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1:]
    m = re.search(r"/library/([a-z_\-]+)/(?:[a-z_\-]+/)?src/(.*)$", path)
    if m:
        return f"{m.group(1)}: {m.group(2)}"
    m = re.search(r"/registry/src/[^/]+/([A-Za-z0-9_\-]+?)-[0-9][^/]*/src/(.*)$", path)
    if m:
        return f"{m.group(1)}: {m.group(2)}"
    if m := re.search(r"/(kernel|arch|smp|userland)/(.*)$", path):
        return f"{m.group(1)}/{m.group(2)}"
    if "/" not in path:
        return "(no line information)"
    return path


# ---------------------------------------------------------------------------------------------
# locked instructions

def is_locked(code, asm):
    """A `lock` prefix among the instruction's prefixes, or an `xchg` with a memory operand
    (implicitly locked)."""
    for b in code:
        if b == LOCK:
            return True
        if b in PREFIXES:
            continue
        break
    if not code and re.match(r"\s*lock\b", asm):
        return True
    m = re.match(r"\s*(?:lock\s+)?xchg[bwlq]?\s+(.*)", asm)
    return bool(m and "(" in m.group(1))


# ---------------------------------------------------------------------------------------------
# fast-path steps from the trace stamps

ENTRY_STEP = "entry and guards"
STEP_NAMES = {ENTRY_STEP: "set-up and guards (`try_fast`; with code both calls share)",
              "SETUP": "set-up and guards (`try_fast`; with code both calls share)",
              "LOOKUP": "capability look-up", "PARTNER": "partner found", "DELIVERED": "message delivered",
              "SWITCHED": "direct switch", "DONE": "back to the exit path", "after": "back to the exit path"}
STEP_ORDER = [ENTRY_STEP, "LOOKUP", "PARTNER", "DELIVERED", "SWITCHED", "after"]
FAST_NAMES = list(dict.fromkeys(STEP_NAMES[s] for s in STEP_ORDER))


REPO_DIRS = ("kernel/", "arch/", "smp/", "userland/")
PLUMBING = ("kernel/src/lock.rs", "kernel/src/count.rs", "kernel/src/mem.rs", "arch/src/percpu.rs")


def repo_frames(chain, skip=()):
    """The frames of a chain in the repository's own source, innermost first."""
    return [(fn, f, ln) for fn, f, ln in chain if f.startswith(REPO_DIRS) and f not in skip]


def locked_kind(chain, asm=""):
    """What a locked instruction does: a spinlock acquisition, a reference count, or another
    atomic read-modify-write."""
    files = [f for _, f, _ in chain]
    if any(f.startswith("spin: mutex") for f in files):
        return "spinlock acquisitions"
    if any(f == "alloc: sync.rs" for f in files) or re.match(r"\s*lock\s+(inc|dec|xadd|add|sub)", asm):
        return "reference counts (`Arc`, `Weak`)"
    if re.match(r"\s*xchg", asm):
        return "`xchg` with memory (a `SeqCst` store or a swap)"
    return "other atomic read-modify-writes"


def site(chain, symbol="?"):
    """Where in the kernel's own code an instruction was inlined: function and line of the first
    frame outside the lock and counting plumbing (or the function's symbol)."""
    fr = repo_frames(chain, PLUMBING) or repo_frames(chain)
    if not fr:
        return symbol
    fn, f, ln = fr[0]
    return f"{fn.rsplit('::', 1)[-1]} ({f.rsplit('/', 1)[-1]}:{ln})"


def stamped_functions(path):
    """{function: [(line, STEP)]} of the functions of a source file that call trace::stamp."""
    if not path or not os.path.exists(path):
        return {}
    fns, cur = {}, None
    for i, l in enumerate(open(path), 1):
        m = re.match(r"\s*(?:pub(?:\([a-z]+\))?\s+)?fn\s+([a-z_0-9]+)", l)
        if m:
            cur = m.group(1)
        m = re.search(r"trace::stamp\((?:crate::)?trace::([A-Z]+)\)", l)
        if m and cur:
            fns.setdefault(cur, []).append((i, m.group(1)))
    return fns


def fast_step(chain, stamps, file="kernel/src/fastpath.rs"):
    """(system call, step) of an instruction inlined into the fast path, or None."""
    frames = [(fn, ln) for fn, f, ln in chain if f == file]
    if not frames:
        return None
    for fn, ln in frames:  # innermost first
        short = fn.rsplit("::", 1)[-1]
        if short in stamps:
            for sl, step in stamps[short]:
                if ln <= sl:
                    return short, ENTRY_STEP if step == "SETUP" else step
            return short, "after"
    return "either", ENTRY_STEP


# ---------------------------------------------------------------------------------------------
# profile: the difference of two counts

def load_counts(path):
    """({(pc, bytes): executions}, {(pc, bytes): disassembly}, {(pc, bytes, cpu): executions})."""
    d = json.load(open(path))
    cnt, asm, cpus = collections.Counter(), {}, collections.Counter()
    for e in d["insns"]:
        pc, b, a, c = e[:4]
        cnt[(pc, b)] += c
        for cpu, x in (e[4] if len(e) > 4 else {"0": c}).items():
            cpus[(pc, b, int(cpu))] += x
        if a:
            asm[(pc, b)] = a
    return cnt, asm, cpus


def per_cpu(small, large, rounds):
    """{cpu: {"user": .., "kernel": ..}} instructions per round trip on each CPU."""
    out = {}
    for k in set(small[2]) | set(large[2]):
        d = (large[2].get(k, 0) - small[2].get(k, 0)) / rounds
        e = out.setdefault(k[2], {"user": 0.0, "kernel": 0.0})
        e["user" if k[0] < USER_END else "kernel"] += d
    return {c: {x: round(v, 3) for x, v in e.items()} for c, e in sorted(out.items())}


def per_round(small, large, rounds):
    a, asm_a = small[:2]
    b, asm_b = large[:2]
    asm = dict(asm_a)
    asm.update(asm_b)
    per = {}
    for k in set(a) | set(b):
        d = (b.get(k, 0) - a.get(k, 0)) / rounds
        if abs(d) > 1e-9:
            per[k] = d
    return per, asm


def analyse(per, asm, rounds, median=None, kernel=None, users=(), root=None, name="", args_text=""):
    ksym = Symtab(kernel)
    uimgs = [(n, Image(e), Symtab(e)) for n, e in users]
    kaddrs = sorted({pc for pc, _ in per if pc >= USER_END})
    chains = inline_chains(kernel, kaddrs, os.path.realpath(root) if root else None)
    stamps = stamped_functions(os.path.join(root, "kernel/src/fastpath.rs") if root else None)

    rows = []  # one per instruction
    for (pc, code), n in per.items():
        b = bytes.fromhex(code) if code else b""
        a = asm.get((pc, code), "")
        r = {"pc": pc, "per_round_trip": n, "asm": a, "locked": is_locked(b, a)}
        if pc < USER_END:
            progs = [(pn, st) for pn, img, st in uimgs if b and img.has(pc, b)]
            pn, st = progs[0] if len(progs) == 1 else ("?", None)
            r.update(kind="user", program=pn, symbol=st.at(pc) if st else "?", file="user")
        else:
            s = ksym.at(pc)
            chain = chains.get(pc, [])
            r.update(symbol=s, chain=chain, file=chain[0][1] if chain else "?")
            if s in ASM_SYMBOLS:
                r.update(kind="asm", step=ASM_SYMBOLS[s], file="arch/src/entry.rs (assembly)")
            else:
                fs = fast_step(chain, stamps)
                if fs:
                    r.update(kind="fast", call=fs[0], step=fs[1])
                else:
                    r.update(kind="kernel")
        rows.append(r)

    total = sum(r["per_round_trip"] for r in rows)
    locked = sum(r["per_round_trip"] for r in rows if r["locked"])
    outside = (total - median) if median is not None else None

    def add(d, k, r):
        e = d.setdefault(k, {"instructions": 0.0, "locked": 0.0})
        e["instructions"] += r["per_round_trip"]
        if r["locked"]:
            e["locked"] += r["per_round_trip"]

    steps = collections.OrderedDict()
    by_symbol, by_file, fast = {}, {}, {}
    for r in rows:
        if r["kind"] == "user":
            k = f"user: {r['program']}"
        elif r["kind"] == "asm":
            k = r["step"]
        elif r["kind"] == "fast":
            k = "fast path: " + STEP_NAMES.get(r["step"], r["step"])
            add(fast, (STEP_NAMES.get(r["step"], r["step"]), r["call"]), r)
        else:
            k = f"kernel: {r['symbol']}"
        add(steps, k, r)
        add(by_symbol, ("user: " + r["program"] + ": " + r["symbol"]) if r["kind"] == "user" else r["symbol"], r)
        if r["kind"] != "user":
            add(by_file, r["file"], r)

    def table(d, order=None):
        items = list(d.items())
        items.sort(key=order or (lambda kv: -kv[1]["instructions"]))
        return [{"what": k if isinstance(k, str) else " / ".join(k), "instructions": round(v["instructions"], 3),
                 "locked": round(v["locked"], 3)} for k, v in items]

    def step_order(kv):
        k = kv[0]
        if k.startswith("user"):
            return (0, k)
        if k.startswith("entry"):
            return (1, k)
        if k.startswith("fast path"):
            n = k[len("fast path: "):]
            return (3, FAST_NAMES.index(n) if n in FAST_NAMES else 99)
        if k.startswith("exit"):
            return (5, k)
        return (4, -kv[1]["instructions"])

    # Kernel functions that run less than once every two round trips are not part of the round
    # trip: timer interrupts, console output (counted outside the timed window with --median).
    small = [k for k, v in steps.items() if abs(v["instructions"]) < 0.5 and k.startswith("kernel: ")]
    rest = {"instructions": 0.0, "locked": 0.0}
    for k in small:
        rest["instructions"] += steps[k]["instructions"]
        rest["locked"] += steps[k]["locked"]
        del steps[k]
    if small and outside is None:
        steps["kernel: other (under 0.5 each: timer interrupts, console output)"] = rest
    groups = table(steps, step_order)
    if outside is not None:
        # The rest of the instructions outside the timed window are the benchmark loop's own
        # (time stamps, storing the sample, the summary's sort): the client's user code.
        for g in groups:
            if g["what"] == "user: root":
                g["instructions"] = round(g["instructions"] - (outside - rest["instructions"]), 3)
                g["what"] = "user: root (client, between the time stamps)"
        groups.append({"what": "outside the timed window (the benchmark loop's own instructions; timer interrupts)",
                       "instructions": round(outside, 3), "locked": round(rest["locked"], 3), "outside": True})
    fast_steps = []
    for s in FAST_NAMES:
        row = {"step": s}
        for call in ("call", "reply_recv"):
            v = fast.get((s, call), {"instructions": 0.0, "locked": 0.0})
            row[call] = round(v["instructions"], 3)
            row[call + "_locked"] = round(v["locked"], 3)
        v = fast.get((s, "either"))
        if v:
            row["either"] = round(v["instructions"], 3)
            row["either_locked"] = round(v["locked"], 3)
        if any(row.get(k) for k in ("call", "reply_recv", "either")):
            fast_steps.append(row)
    nonint = sum(abs(r["per_round_trip"] - round(r["per_round_trip"])) for r in rows)
    return {
        "name": name,
        "kernel_args": args_text,
        "rounds": rounds,
        "instructions_per_round_trip": round(total, 3),
        "median_cycles": median,
        "outside_window": round(outside, 3) if outside is not None else None,
        "round_trip": round(total - outside, 3) if outside is not None else round(total, 3),
        "locked_per_round_trip": round(locked, 3),
        "non_integer_remainder": round(nonint, 3),
        "steps": groups,
        "fast_path_steps": fast_steps,
        "by_symbol": table(by_symbol),
        "by_file": table(by_file),
        "locked_instructions": sorted(
            [{"pc": f"{r['pc']:#x}", "symbol": r["symbol"], "file": r.get("file"), "asm": r["asm"],
              "per_round_trip": round(r["per_round_trip"], 3),
              "kind": locked_kind(r.get("chain", []), r["asm"]), "site": site(r.get("chain", []), r["symbol"]),
              "where": [f"{fn} ({f}:{ln})" for fn, f, ln in (repo_frames(r.get("chain", []), PLUMBING) or r.get("chain", []))][:4]}
             for r in rows if r["locked"]], key=lambda x: x["pc"]),
        "locked_by_kind": locked_summary(rows),
        "instructions": sorted(
            [{"pc": f"{r['pc']:#x}", "n": round(r["per_round_trip"], 3), "symbol": r["symbol"], "file": r.get("file"),
              "asm": r["asm"], "locked": r["locked"]} for r in rows], key=lambda x: x["pc"]),
    }


def locked_summary(rows):
    """{kind: {"count": per round trip, "sites": {site: per round trip}}} of the locked instructions."""
    out = {}
    for r in rows:
        if not r["locked"] or abs(r["per_round_trip"]) < 0.5:
            continue
        k = locked_kind(r.get("chain", []), r["asm"])
        e = out.setdefault(k, {"count": 0.0, "sites": {}})
        e["count"] = round(e["count"] + r["per_round_trip"], 3)
        st = site(r.get("chain", []), r["symbol"])
        e["sites"][st] = round(e["sites"].get(st, 0) + r["per_round_trip"], 3)
    return out


def render(p, verbose=False):
    L = []
    L.append(f"{p['name']} {p['kernel_args']}".strip() + f": {p['instructions_per_round_trip']:.1f} instructions per round trip "
             f"(difference of {p['rounds']:g} round trips)")
    if p["median_cycles"] is not None:
        L.append(f"  median of the benchmark: {p['median_cycles']}; outside the timed window: {p['outside_window']:.1f}")
    L.append(f"  round trip: {p['round_trip']:.1f} instructions, {p['locked_per_round_trip']:.1f} locked"
             f" (non-integer remainder {p['non_integer_remainder']:.2f})")
    if len(p.get("per_cpu", {})) > 1:
        L.append("  per CPU: " + "; ".join(f"cpu {c}: {e['user']:.1f} user + {e['kernel']:.1f} kernel"
                                          for c, e in p["per_cpu"].items()))
    L.append("  where they go:")
    for g in p["steps"]:
        L.append(f"    {g['instructions']:8.1f} {g['locked']:5.1f}L  {g['what'][:110]}")
    if p["fast_path_steps"]:
        L.append("  fast path steps (call / reply_recv):")
        for s in p["fast_path_steps"]:
            extra = f" + {s['either']:.1f} either" if "either" in s else ""
            L.append(f"    {s['step']:<28} {s['call']:7.1f} {s['reply_recv']:7.1f}{extra}")
    L.append("  by source file (kernel, innermost inlined frame):")
    for g in p["by_file"][:25]:
        L.append(f"    {g['instructions']:8.1f} {g['locked']:5.1f}L  {g['what']}")
    L.append("  locked instructions:")
    for k, e in p["locked_by_kind"].items():
        L.append(f"    {e['count']:5.1f} {k}: " + ", ".join(f"{st} {n:g}" for st, n in e["sites"].items()))
    for r in p["locked_instructions"]:
        L.append(f"    {r['per_round_trip']:5.1f} {r['pc']} {r['asm'][:36]:<36} {' <- '.join(r['where'][:3])[:150]}")
    if verbose:
        L.append("  every instruction:")
        for r in p["instructions"]:
            L.append(f"    {r['n']:7.2f} {r['pc']} {r['symbol'][:50]:<50} {r['asm']}")
    return "\n".join(L)


def cmd_profile(args):
    small, large = load_counts(args.small), load_counts(args.large)
    per, asm = per_round(small, large, args.rounds)
    users = [tuple(u.split("=", 1)) for u in args.user]
    p = analyse(per, asm, args.rounds, args.median, args.kernel, users, args.root, args.name, args.args)
    p["per_cpu"] = per_cpu(small, large, args.rounds)
    if args.out:
        json.dump(p, open(args.out, "w"), indent=1)
    print(render(p, args.verbose))


def cmd_dfilter(args):
    """Everything but the firmware and the boot's PIT calibration (which spins for millions of
    instructions under icount)."""
    skip = [(0, 0x100000), (0xF000_0000, 0x1_0000_0000)]
    r = Symtab(args.elf).range_of("rl4_arch::time::init_tsc")
    if r:
        skip.append(r)
    skip.sort()
    out, at = [], 0
    for a, b in skip:
        if a > at:
            out.append(f"{at:#x}..{a - 1:#x}")
        at = max(at, b)
    out.append(f"{at:#x}..0xffffffffffffffff")
    print(",".join(out))


# ---------------------------------------------------------------------------------------------
# events: the counting kernel's records (feature `countglobal`)

EVENT = re.compile(r"countglobal: event cpu (\d+) #(\d+) (\w+) (\d+):((?: 0x[0-9a-f]+)*)")
ARMED = re.compile(r"countglobal: while armed, cpu (\d+): (.*)")
BENCH = re.compile(r'BENCH \{"name":"([^"]+)"')


def parse_events(lines):
    """The `countglobal:` lines of a serial log, per measured loop: they are printed when
    counting stops, right before the loop's BENCH line."""
    sessions, cur = [], {"events": [], "armed": {}}
    for l in lines:
        if m := EVENT.search(l):
            cur["events"].append({"cpu": int(m.group(1)), "kind": m.group(3), "size": int(m.group(4)),
                                  "returns": [int(a, 16) for a in m.group(5).split()]})
        elif m := ARMED.search(l):
            toks = m.group(2).split()
            cur["armed"][int(m.group(1))] = {toks[i]: int(toks[i + 1]) for i in range(0, len(toks) - 1, 2)}
        elif m := BENCH.search(l):
            cur["config"] = m.group(1)
            sessions.append(cur)
            cur = {"events": [], "armed": {}}
    return sessions


def cmd_events(args):
    lines = open(args.log, errors="replace").read().replace("\r", "").splitlines()
    sessions = parse_events(lines)
    root = os.path.realpath(args.root) if args.root else None
    addrs = sorted({a - 1 for s in sessions for e in s["events"] for a in e["returns"]})
    chains = inline_chains(args.elf, addrs, root)
    for s in sessions:
        groups = collections.OrderedDict()
        for e in s["events"]:
            chain = [fr for a in e["returns"] for fr in chains.get(a - 1, [])]
            outside = repo_frames(chain, PLUMBING)
            st = f"{outside[0][0]} ({outside[0][1]}:{outside[0][2]})" if outside else "?"
            i = chain.index(outside[0]) if outside else len(chain)
            via = [fn for fn, f, _ in chain[:i] if not f.startswith(REPO_DIRS)]
            key = (e["kind"], st, tuple(a for a in e["returns"]))
            g = groups.setdefault(key, {"kind": e["kind"], "size": e["size"], "site": st, "via": via[-1] if via else "",
                                        "cpus": [], "count": 0,
                                        "chain": [f"{fn} ({f}:{ln})" for fn, f, ln in repo_frames(chain)][:8]})
            g["count"] += 1
            if e["cpu"] not in g["cpus"]:
                g["cpus"].append(e["cpu"])
        s["distinct"] = list(groups.values())
        del s["events"]
    json.dump({"sessions": sessions}, sys.stdout, indent=1)
    print()


# ---------------------------------------------------------------------------------------------
# selftest: the parser and the arithmetic on a made-up log

def fake_log(iters):
    """A log in QEMU's format: a boot (two instructions), `iters` round trips of four
    instructions (one locked, one implicitly locked xchg), with user code of two programs at one
    address."""
    L = []

    def tb(host, pc, code, asm, times):
        L.append(b"----------------\nIN: \n")
        L.append(f"{pc:#010x}:  {' '.join(f'{x:02x}' for x in code):<24}  {asm}\n\n".encode())
        for _ in range(times):
            L.append(f"Trace 0: {host:#x} [00000000/{pc:016x}/000100b0/ff020000] \n".encode())
    tb(0x7f0000001000, 0xfffffff0, b"\xea\x5b\xe0\x00\xf0", "ljmpw $0xf000:$0xe05b", 1)
    tb(0x7f0000001100, 0xffffffff80001000, b"\x90", "nop", 5)
    tb(0x7f0000001200, 0x200000, b"\x48\x89\xc7", "movq %rax, %rdi", iters)          # program a
    tb(0x7f0000001300, 0x200000, b"\x0f\x05", "syscall", iters)                       # program b, same pc
    tb(0x7f0000001400, 0xffffffff80002000, b"\xf0\x48\x0f\xb1\x11", "lock cmpxchgq %rdx, (%rcx)", iters)
    tb(0x7f0000001500, 0xffffffff80002005, b"\x48\x87\x07", "xchgq %rax, (%rdi)", iters)
    tb(0x7f0000001600, 0xffffffff80002008, b"\x48\x87\xc3", "xchgq %rax, %rbx", 2 * iters)
    return b"".join(L)


def cmd_selftest(_args):
    import io
    a = count(io.BytesIO(fake_log(10)))
    b = count(io.BytesIO(fake_log(30)))
    assert a[2] == 6 + 6 * 10, a[2]
    assert a[0][(0x200000, "4889c7")] == 10 and a[0][(0x200000, "0f05")] == 10, a[0]
    per, asm = per_round(a[:2], b[:2], 20)
    p = analyse(per, asm, 20, median=5)
    assert p["instructions_per_round_trip"] == 6, p
    assert p["locked_per_round_trip"] == 2, p
    assert p["outside_window"] == 1 and p["round_trip"] == 5, p
    assert is_locked(b"\x66\xf0\x0f\xb1\x11", "") and not is_locked(b"\x48\x87\xc3", "xchgq %rax, %rbx")
    assert source_tag("/x/.cargo/registry/src/index.crates.io-1/spin-0.10.0/src/mutex/spin.rs", "/r") == "spin: mutex/spin.rs"
    assert source_tag("/r/kernel/src/ipc.rs", "/r") == "kernel/src/ipc.rs"
    st = {"call": [(10, "SETUP"), (20, "LOOKUP")]}
    assert fast_step([("spin::lock", "spin: x.rs", 3), ("rl4::fastpath::call", "kernel/src/fastpath.rs", 15)], st) == ("call", "LOOKUP")
    assert fast_step([("rl4::fastpath::call", "kernel/src/fastpath.rs", 25)], st) == ("call", "after")
    assert fast_step([("rl4::fastpath::call", "kernel/src/fastpath.rs", 5)], st) == ("call", ENTRY_STEP)
    assert fast_step([("rl4::fastpath::try_fast", "kernel/src/fastpath.rs", 5)], st) == ("either", ENTRY_STEP)
    assert fast_step([("rl4::sched::x", "kernel/src/sched.rs", 25)], st) is None
    log = ["[cpu0] countglobal: cpu 0: 2 events while armed (the first 2 follow)",
           "[cpu0] countglobal: event cpu 0 #0 alloc 64: 0xffffffff801301df 0xffffffff80114222",
           "[cpu0] countglobal: event cpu 1 #1 heap 0: 0xffffffff8013023f",
           "[cpu0] countglobal: while armed, cpu 0: alloc 1 free 0 heap 1 frames 0",
           '[cpu0] BENCH {"name":"cross-core-0-1","accel":"tcg"}']
    ss = parse_events(log)
    assert len(ss) == 1 and ss[0]["config"] == "cross-core-0-1" and len(ss[0]["events"]) == 2, ss
    assert ss[0]["armed"][0] == {"alloc": 1, "free": 0, "heap": 1, "frames": 0}, ss
    assert ss[0]["events"][0]["returns"] == [0xffffffff801301df, 0xffffffff80114222], ss
    print("insn-profile selftest: ok")


def cmd_sample(args):
    """A small scripts/bench output directory for testing bench-report.py: BENCH rows (plain,
    -smp 2, fastpath=off, countglobal), two profiles from made-up logs, the counting kernel's
    records."""
    import io
    out = args.out
    os.makedirs(os.path.join(out, "profiles"), exist_ok=True)
    for name, n1, n2, med, kargs in (("same-core", 10, 30, 5, ""), ("same-core-fastpath-off", 10, 20, 5, "fastpath=off")):
        a, b = count(io.BytesIO(fake_log(n1))), count(io.BytesIO(fake_log(n2)))
        per, asm = per_round(a[:2], b[:2], n2 - n1)
        p = analyse(per, asm, n2 - n1, median=med, name="same-core", args_text=kargs)
        json.dump(p, open(os.path.join(out, "profiles", name + ".json"), "w"))
    base = {"accel": "tcg", "iterations": 1000, "tsc_hz": 2_400_000_000, "min_cycles": 90, "mean_cycles": 110,
            "p99_cycles": 200, "p999_cycles": 300, "max_cycles": 400, "cdf": [90] * 11, "cycles_per_iteration": 110,
            "ipis_per_round_trip": 0.0, "fast_path_per_round_trip": 2.0, "overhead_cycles": 3, "total_cycles": 110_000}
    rows = []

    def row(name, accel, smp, med, variant=None, **kw):
        r = dict(base, name=name, accel=accel, smp=smp, median_cycles=med, **kw)
        if variant:
            r.update(config=name, name=f"{name}/{variant}", variant=variant)
        rows.append(r)
    row("same-core", "icount", 1, 5)
    row("null-syscall", "icount", 1, 244)
    # Within its target, but two of its yields switched to nobody: the target must say missed.
    row("thread-switch", "icount", 1, 400, failed=2)
    row("same-core", "icount", 1, 9, "fastpath-off")
    row("same-core-ref", "tcg", 4, 30_000)
    row("cross-core-0-1", "tcg", 4, 12_000)
    row("same-core-ref", "tcg", 2, 28_000, "smp2")
    row("cross-core-0-1", "tcg", 2, 9_000, "smp2")
    row("same-core", "tcg", 2, 40_000, "fastpath-off")
    row("cross-core-0-1", "tcg", 2, 9_500, "fastpath-off")
    row("cross-core-0-1", "tcg", 2, 9_000, "countglobal", heap_allocs_per_round_trip=0.001, heap_frees_per_round_trip=0.0,
        global_locks_per_round_trip=0.001, heap_allocs=1, heap_frees=0, global_locks=1)
    with open(os.path.join(out, "results.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    log = ["[cpu0] countglobal: event cpu 0 #0 alloc 64: 0xffffffff801301df",
           "[cpu0] countglobal: while armed, cpu 0: alloc 1 free 0 heap 1", '[cpu0] BENCH {"name":"cross-core-0-1"}']
    ss = parse_events(log)
    for s_ in ss:
        s_["distinct"] = [{"kind": e["kind"], "size": e["size"], "site": "push (kernel/src/ipc.rs:1)", "via": "VecDeque::grow",
                           "cpus": [e["cpu"]], "count": 1, "chain": []} for e in s_.pop("events")]
    json.dump({"sessions": ss}, open(os.path.join(out, "countglobal-tcg.json"), "w"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("count")
    c.add_argument("out")
    d = sub.add_parser("dfilter")
    d.add_argument("elf")
    p = sub.add_parser("profile")
    p.add_argument("--small", required=True)
    p.add_argument("--large", required=True)
    p.add_argument("--rounds", type=float, required=True)
    p.add_argument("--median", type=int)
    p.add_argument("--kernel")
    p.add_argument("--user", action="append", default=[])
    p.add_argument("--root")
    p.add_argument("--name", default="")
    p.add_argument("--args", default="")
    p.add_argument("--out")
    p.add_argument("--verbose", action="store_true")
    e = sub.add_parser("events")
    e.add_argument("--log", required=True)
    e.add_argument("--elf", required=True)
    e.add_argument("--root")
    sub.add_parser("selftest")
    sm = sub.add_parser("sample")
    sm.add_argument("out")
    a = ap.parse_args()
    {"count": cmd_count, "dfilter": cmd_dfilter, "profile": cmd_profile, "events": cmd_events, "selftest": cmd_selftest,
     "sample": cmd_sample}[a.cmd](a)


if __name__ == "__main__":
    main()
