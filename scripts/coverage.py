#!/usr/bin/env python3
"""Kernel coverage of a QEMU run: which of the kernel's basic blocks were executed.

    coverage.py range ELF
        prints the kernel's .text as START+SIZE (for QEMU's -dfilter)
    coverage.py report --elf ELF --log INASM_LOG [--log ...] --root REPO --out PREFIX
                       [--objdump LLVM_OBJDUMP] [--title TEXT] [--min PERCENT]
        writes PREFIX.txt and PREFIX.json and prints the text report

How it works (standard library only):

* Static side: `llvm-objdump -d --line-numbers` of the kernel's .text (the higher-half
  kernel; the low .boot section is the 32-bit entry and is left out). Basic-block leaders are
  function starts (symbols), the targets of direct jumps and calls, and the instruction after
  every jump, call, return, ud2, hlt, int3, iretq and sysretq. Blocks made only of padding
  (int3, nop) are dropped. Each instruction belongs to the source file and line of its DWARF
  line-table row, which for inlined code is the file the code was written in; instructions of
  global_asm! (no line info) belong to the source file that defines their symbol.
* Dynamic side: QEMU's `-d in_asm` log (TCG prints every translation block once, when it is
  first translated, i.e. first executed), restricted to the kernel's text with -dfilter. A
  block counts as executed if any of its instructions was translated. (Limits: a jump-table
  target that follows no branch is not a leader of its own; a block cut short by an
  exception counts as executed whole.)
* Report: blocks executed / total overall and per source file (a block with code of several
  files counts once in each), lines with code executed / total, and for kernel/src/syscall.rs
  the `Sys::` arms of each `match` (dispatch, ipc_call) that were never entered, with the lines
  not reached in each arm; for kernel/src/ipc.rs and kernel/src/fastpath.rs the same per
  function.
"""
import argparse
import glob
import json
import os
import re
import struct
import subprocess
import sys


# ---------------------------------------------------------------------------------------------
# ELF sections (only what -dfilter needs)

def text_section(elf):
    with open(elf, 'rb') as f:
        data = f.read()
    if data[:4] != b'\x7fELF' or data[4] != 2:
        sys.exit(f'{elf}: not an ELF64 file')
    shoff, = struct.unpack_from('<Q', data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', data, 0x3a)
    secs = []
    for i in range(shnum):
        name, typ, flags, addr, off, size = struct.unpack_from('<IIQQQQ', data, shoff + i * shentsize)
        secs.append((name, addr, size, off))
    stroff = secs[shstrndx][3]
    for name, addr, size, _ in secs:
        end = data.index(b'\0', stroff + name)
        if data[stroff + name:end] == b'.text':
            return addr, size
    sys.exit(f'{elf}: no .text section')


# ---------------------------------------------------------------------------------------------
# Disassembly

CTI_PREFIXES = ('j', 'call', 'ret', 'lret', 'iret', 'sysret', 'sysexit', 'loop')
CTI_EXACT = {'ud2', 'ud1', 'hlt', 'int3', 'int', 'into', 'syscall'}
PREFIXES = {'lock', 'rep', 'repe', 'repz', 'repne', 'repnz', 'rex64', 'data16', 'notrack', 'bnd',
            'cs', 'ds', 'es', 'ss', 'fs', 'gs', 'addr32', 'xacquire', 'xrelease'}

INSN_RE = re.compile(r'^\s*([0-9a-f]+):\s+(.*)$')
SYM_RE = re.compile(r'^([0-9a-f]+) <(.+)>:$')
LOC_RE = re.compile(r'^; (.+):(\d+)$')
TARGET_RE = re.compile(r'^(?:0x)?([0-9a-f]+)(?:\s+<|$)')


def find_objdump():
    try:
        sysroot = subprocess.run(['rustc', '--print', 'sysroot'], capture_output=True, text=True, check=True).stdout.strip()
        cands = glob.glob(os.path.join(sysroot, 'lib/rustlib/*/bin/llvm-objdump'))
        if cands:
            return cands[0]
    except (OSError, subprocess.CalledProcessError):
        pass
    for c in ('llvm-objdump',):
        if subprocess.run(['which', c], capture_output=True).returncode == 0:
            return c
    sys.exit('llvm-objdump not found: install the llvm-tools component (rustup component add llvm-tools)')


def disassemble(objdump, elf):
    """→ list of instructions [addr, mnemonic, target, file, line], symbol starts {addr: name}."""
    out = subprocess.run([objdump, '-d', '--no-show-raw-insn', '--line-numbers', '-j', '.text', elf],
                         capture_output=True, text=True, check=True).stdout
    insns, syms = [], {}
    loc = (None, 0)
    for raw in out.splitlines():
        if not raw:
            continue
        if raw.startswith(';'):
            m = LOC_RE.match(raw)
            if m:
                loc = (m.group(1), int(m.group(2)))
            continue
        m = SYM_RE.match(raw)
        if m:
            syms[int(m.group(1), 16)] = m.group(2)
            loc = (None, 0)
            continue
        m = INSN_RE.match(raw)
        if not m:
            continue
        addr = int(m.group(1), 16)
        toks = m.group(2).replace('\t', ' ').split()
        while toks and toks[0] in PREFIXES:
            toks = toks[1:]
        mnem = toks[0] if toks else '?'
        ops = ' '.join(toks[1:])
        target = None
        if mnem.startswith(('j', 'call', 'loop')):
            t = TARGET_RE.match(ops)
            if t and not ops.startswith('*'):
                target = int(t.group(1), 16)
        insns.append([addr, mnem, target, loc[0], loc[1]])
    insns.sort(key=lambda i: i[0])
    return insns, syms


def is_cti(mnem):
    return mnem in CTI_EXACT or mnem.startswith(CTI_PREFIXES)


def is_padding(mnem):
    return mnem == 'int3' or mnem.startswith('nop') or mnem == 'xchg'


def basic_blocks(insns, syms, lo, hi):
    leaders = set(a for a in syms if lo <= a < hi)
    for i, (addr, mnem, target, _, _) in enumerate(insns):
        if target is not None and lo <= target < hi:
            leaders.add(target)
        if is_cti(mnem) and i + 1 < len(insns):
            leaders.add(insns[i + 1][0])
    blocks, cur = [], []
    for i, ins in enumerate(insns):
        if ins[0] in leaders and cur:
            blocks.append(cur)
            cur = []
        cur.append(i)
    if cur:
        blocks.append(cur)
    return [b for b in blocks if not all(is_padding(insns[i][1]) for i in b)]


# ---------------------------------------------------------------------------------------------
# Source files

REPO_MARKERS = ('kernel/src/', 'kernel/core/src/', 'kernel/abi/src/', 'kernel/elf/src/', 'arch/src/', 'smp/src/',
                'userland/')


def normalize(path, root):
    if path is None:
        return None
    if root and path.startswith(root.rstrip('/') + '/'):
        return path[len(root.rstrip('/')) + 1:]
    m = re.search(r'/(?:rustlib/src/rust|rustc/[0-9a-f]+)/library/(.*)$', path)
    if m:
        return 'rust/' + m.group(1)
    m = re.search(r'/registry/src/[^/]+/(.*)$', path)
    if m:
        return 'crates/' + m.group(1)
    for mark in REPO_MARKERS:
        k = path.find('/' + mark)
        if k >= 0:
            return path[k + 1:]
    return path


def group_of(f):
    if f is None:
        return '(no line information)'
    if f.startswith('rust/'):
        return 'Rust library code (core, alloc)'
    if f.startswith('crates/'):
        return 'dependency crates'
    if f.startswith(REPO_MARKERS):
        return None  # a repository file: reported on its own
    return 'other files'


def asm_symbol_files(root, names):
    """global_asm! labels have no line info: the repository file that defines each label."""
    found = {}
    if not root:
        return found
    files = []
    for d in ('arch/src', 'smp/src', 'kernel/src'):
        files += glob.glob(os.path.join(root, d, '**/*.rs'), recursive=True)
    texts = {}
    for f in files:
        try:
            texts[f] = open(f, encoding='utf-8').read()
        except OSError:
            pass
    for name in names:
        base = re.sub(r'_\d+$', '_', name)  # rl4_trap_14 comes from a macro: "rl4_trap_", ...
        for f, t in texts.items():
            if re.search(r'(^|[\s"])' + re.escape(name) + r':', t) or (base != name and f'"{base}"' in t and 'global_asm' in t):
                found[name] = os.path.relpath(f, root)
                break
    return found


def clean_rust(text):
    """The source with comments and the contents of string and char literals blanked (newlines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith('//', i):
            j = text.find('\n', i)
            j = n if j < 0 else j
            out.append(' ' * (j - i))
            i = j
        elif text.startswith('/*', i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith('/*', j):
                    depth, j = depth + 1, j + 2
                elif text.startswith('*/', j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r'[^\n]', ' ', text[i:j]))
            i = j
        elif c == 'r' and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == '_')):
            m = re.match(r'r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + len(m.group(0)))
            end = n if end < 0 else end + 1 + len(m.group(1))
            out.append('"' + re.sub(r'[^\n]', ' ', text[i + 1:end - 1]) + '"')
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == '\\' else 1
            out.append('"' + re.sub(r'[^\n]', ' ', text[i + 1:j]) + '"')
            i = j + 1
        elif c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            if m:
                out.append("'" + ' ' * (len(m.group(0)) - 2) + "'")
                i += len(m.group(0))
            else:
                out.append(c)  # a lifetime
                i += 1
        else:
            out.append(c)
            i += 1
    return ''.join(out)


def line_of(text, pos):
    return text.count('\n', 0, pos) + 1


def functions(clean):
    """[(name, first line, last line)] of every fn with a body."""
    res = []
    for m in re.finditer(r'\bfn\s+(\w+)', clean):
        j, nest = m.end(), 0
        while j < len(clean) and not (nest == 0 and clean[j] in '{;'):
            nest += clean[j] in '([' 
            nest -= clean[j] in ')]'
            j += 1
        if j >= len(clean) or clean[j] == ';':
            continue
        depth, k = 0, j
        while k < len(clean):
            if clean[k] == '{':
                depth += 1
            elif clean[k] == '}':
                depth -= 1
                if depth == 0:
                    break
            k += 1
        res.append((m.group(1), line_of(clean, m.start()), line_of(clean, k)))
    return res


ARM_RE = re.compile(r'^(\s*)(Sys::\w+(?:\s*\|\s*Sys::\w+)*)\s*(?:if\b[^=]*)?=>')


def sys_arms(clean):
    """The `Sys::` arms of every match: [(function, arm, first line, last line)]."""
    lines = clean.split('\n')
    funcs = functions(clean)
    arms = []
    for idx, l in enumerate(lines):
        m = ARM_RE.match(l)
        if not m:
            continue
        indent = len(m.group(1))
        end = idx
        for k in range(idx + 1, len(lines)):
            s = lines[k]
            if not s.strip():
                continue
            if len(s) - len(s.lstrip()) <= indent:
                break
            end = k
        first, last = idx + 1, end + 1
        fn = [f for f in funcs if f[1] <= first <= f[2]]
        fname = min(fn, key=lambda f: f[2] - f[1])[0] if fn else '?'
        arms.append((fname, re.sub(r'\s+', ' ', m.group(2)), first, last))
    return arms


def ranges(nums):
    out = []
    for x in sorted(nums):
        if out and x == out[-1][1] + 1:
            out[-1][1] = x
        else:
            out.append([x, x])
    return out


def fmt_ranges(rs):
    return ', '.join(str(a) if a == b else f'{a}-{b}' for a, b in rs)


# ---------------------------------------------------------------------------------------------
# Report

def executed_addresses(logs, lo, hi):
    seen = set()
    rx = re.compile(r'^0x([0-9a-f]+):')
    for log in logs:
        with open(log, 'r', errors='replace') as f:
            for l in f:
                if l.startswith('0x'):
                    m = rx.match(l)
                    if m:
                        a = int(m.group(1), 16)
                        if lo <= a < hi:
                            seen.add(a)
    return seen


def pct(a, b):
    return 100.0 * a / b if b else 0.0


def report(args):
    lo, size = text_section(args.elf)
    hi = lo + size
    objdump = args.objdump or find_objdump()
    insns, syms = disassemble(objdump, args.elf)
    insns = [i for i in insns if lo <= i[0] < hi]
    root = os.path.abspath(args.root) if args.root else None
    # Instructions without line info inside global_asm! symbols: the file defining the symbol.
    sym_addrs = sorted(syms)
    nolines = set()
    import bisect
    def sym_at(a):
        k = bisect.bisect_right(sym_addrs, a) - 1
        return syms[sym_addrs[k]] if k >= 0 else None
    for ins in insns:
        if ins[3] is None:
            s = sym_at(ins[0])
            if s:
                nolines.add(s)
    asm_files = asm_symbol_files(root, nolines)
    cache = {}
    for ins in insns:
        if ins[3] is None:
            s = sym_at(ins[0])
            if s in asm_files:
                ins[3] = os.path.join(root, asm_files[s])
                ins[4] = 0
        p = ins[3]
        if p not in cache:
            cache[p] = normalize(p, root)
        ins[3] = cache[p]

    blocks = basic_blocks(insns, syms, lo, hi)
    seen = executed_addresses(args.log, lo, hi)
    covered = [any(insns[i][0] in seen for i in b) for b in blocks]

    # Per file: blocks and lines.
    fblocks = {}
    flines = {}
    groups = {}
    for b, cov in zip(blocks, covered):
        files = set()
        for i in b:
            f, line = insns[i][3], insns[i][4]
            files.add(f)
            if f is not None and line > 0:
                d = flines.setdefault(f, {})
                d[line] = d.get(line, False) or (insns[i][0] in seen)
        for f in files:
            t = fblocks.setdefault(f, [0, 0])
            t[0] += 1
            t[1] += cov
        for g in set(group_of(f) for f in files) - {None}:
            t = groups.setdefault(g, [0, 0, set()])
            t[0] += 1
            t[1] += cov
        for f in files:
            if group_of(f) is not None:
                groups[group_of(f)][2].add(f)
    total, hit = len(blocks), sum(covered)
    repo_files = sorted(f for f in fblocks if f is not None and group_of(f) is None)

    sources = {}
    def source(f):
        if f not in sources:
            try:
                sources[f] = open(os.path.join(root, f), encoding='utf-8').read() if root else None
            except OSError:
                sources[f] = None
        return sources[f]

    files_json = []
    for f in repo_files:
        n, c = fblocks[f]
        lines = flines.get(f, {})
        entry = {'file': f, 'blocks': n, 'covered': c, 'percent': round(pct(c, n), 1),
                 'lines': len(lines), 'lines_covered': sum(lines.values()),
                 'uncovered_lines': ranges(l for l, v in lines.items() if not v), 'functions': []}
        text = source(f)
        if text is not None:
            for name, a, z in functions(clean_rust(text)):
                fl = {l: v for l, v in lines.items() if a <= l <= z}
                if fl:
                    entry['functions'].append({'name': name, 'first': a, 'last': z, 'lines': len(fl),
                                               'covered': sum(fl.values()),
                                               'uncovered': ranges(l for l, v in fl.items() if not v)})
        files_json.append(entry)

    arms_json = []
    sysrs = 'kernel/src/syscall.rs'
    text = source(sysrs)
    if text is not None:
        src_lines = text.split('\n')
        lines = flines.get(sysrs, {})
        for fname, arm, a, z in sys_arms(clean_rust(text)):
            body = range(a + 1, z + 1) if z > a else range(a, a + 1)
            fl = {l: lines[l] for l in body if l in lines}
            first_code = next((src_lines[l - 1].strip() for l in body if src_lines[l - 1].strip()), '')
            by_design = first_code.startswith('unreachable!') or re.search(r'=>\s*unreachable!', src_lines[a - 1]) is not None
            arms_json.append({'function': fname, 'arm': arm, 'first': a, 'last': z, 'lines': len(fl),
                              'covered': sum(fl.values()),
                              # an arm without code of its own (its instructions were merged
                              # with another arm's) cannot be told entered or not
                              'entered': any(fl.values()) if fl else None,
                              'unreachable_by_design': by_design,
                              'uncovered': ranges(l for l, v in fl.items() if not v)})

    result = {
        'title': args.title, 'elf': args.elf, 'logs': args.log,
        'text': {'start': hex(lo), 'size': size},
        'method': 'QEMU -d in_asm (first translation of each TB), basic blocks from llvm-objdump',
        'blocks': {'total': total, 'covered': hit, 'percent': round(pct(hit, total), 1)},
        'instructions': {'total': len(insns), 'executed': len(seen)},
        'files': files_json,
        'groups': [{'group': g, 'files': len(v[2]), 'blocks': v[0], 'covered': v[1], 'percent': round(pct(v[1], v[0]), 1)}
                   for g, v in sorted(groups.items())],
        'syscall_arms': arms_json,
        'unreached_syscall_arms': [f"{a['function']}: {a['arm']} (lines {a['first']}-{a['last']})"
                                   for a in arms_json if a['entered'] is False and not a['unreachable_by_design']],
    }

    # Text.
    out = []
    w = out.append
    w(f"coverage: kernel basic blocks executed: {hit} / {total} ({pct(hit, total):.1f}%)" + (f" -- {args.title}" if args.title else ''))
    w(f"  kernel .text {lo:#x}+{size:#x}, {len(insns)} instructions, {len(seen)} executed; "
      "blocks from llvm-objdump, executed = translated by QEMU TCG (-d in_asm)")
    w('')
    w('per source file (blocks with code from the file, executed / total; lines with code, executed / total):')
    width = max([len(f) for f in repo_files] + [40])
    for e in files_json:
        w(f"  {e['file']:<{width}} {e['covered']:>6} / {e['blocks']:<6} {e['percent']:5.1f}%   lines {e['lines_covered']:>5} / {e['lines']:<5} {pct(e['lines_covered'], e['lines']):5.1f}%")
    for g in result['groups']:
        w(f"  {g['group']:<{width}} {g['covered']:>6} / {g['blocks']:<6} {g['percent']:5.1f}%   ({g['files']} files)")
    w('')
    if arms_json:
        src_lines = source(sysrs).split('\n')
        w(f'{sysrs}: system-call arms never entered:')
        never = [a for a in arms_json if a['entered'] is False]
        for a in never:
            note = ' (unreachable by design)' if a['unreachable_by_design'] else ''
            w(f"  {a['function']}: {a['arm']}  lines {a['first']}-{a['last']}{note}")
        if not never:
            w('  (none)')
        for a in arms_json:
            if a['entered'] is None:
                w(f"  ({a['function']}: {a['arm']}, line {a['first']}: no code of its own: merged with other code or compiled away)")
        w(f'{sysrs}: arms entered, with the lines they never reached:')
        for a in arms_json:
            if a['entered'] and a['uncovered']:
                w(f"  {a['function']}: {a['arm']}  ({a['covered']}/{a['lines']} lines)")
                for x, y in a['uncovered']:
                    for l in range(x, y + 1):
                        w(f"      {l}: {src_lines[l - 1].strip()[:90]}")
        w('')
    for f in ('kernel/src/ipc.rs', 'kernel/src/fastpath.rs'):
        e = next((e for e in files_json if e['file'] == f), None)
        text = source(f)
        if e is None or text is None:
            continue
        src_lines = text.split('\n')
        w(f"{f}: functions (lines with code executed / total), lines never reached:")
        for fn in e['functions']:
            w(f"  {fn['name']} ({fn['first']}-{fn['last']}): {fn['covered']}/{fn['lines']}" + ('' if fn['uncovered'] else '  all reached'))
            for x, y in fn['uncovered']:
                for l in range(x, y + 1):
                    w(f"      {l}: {src_lines[l - 1].strip()[:90]}")
        w('')
    text_out = '\n'.join(out) + '\n'
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + '.txt', 'w') as f:
            f.write(text_out)
        with open(args.out + '.json', 'w') as f:
            json.dump(result, f, indent=1)
    sys.stdout.write(text_out)
    if args.min is not None and pct(hit, total) < args.min:
        print(f'coverage: FAILED: {pct(hit, total):.1f}% of the kernel blocks is below the floor of {args.min}%')
        return 1
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)
    r = sub.add_parser('range')
    r.add_argument('elf')
    p = sub.add_parser('report')
    p.add_argument('--elf', required=True)
    p.add_argument('--log', action='append', required=True)
    p.add_argument('--root')
    p.add_argument('--out')
    p.add_argument('--objdump')
    p.add_argument('--title', default='')
    p.add_argument('--min', type=float)
    args = ap.parse_args()
    if args.cmd == 'range':
        lo, size = text_section(args.elf)
        print(f'{lo:#x}+{size:#x}')
        return 0
    return report(args)


if __name__ == '__main__':
    sys.exit(main())
