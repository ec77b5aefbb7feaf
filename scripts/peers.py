#!/usr/bin/env python3
"""The Linux peer of scripts/bench --peers: reads what the ping-pong program (peers/pingpong)
printed, and draws rl4 and Linux side by side for docs/benchmarks.md.

  peers.py collect LOG OUT_DIR SMP   results of one guest boot -> OUT_DIR/results.jsonl (appended),
                                     its PEER-INFO -> OUT_DIR/linux-info.jsonl; exit 1 if the run
                                     did not finish (no PEER-DONE, or fewer results than it says)
  peers.py check LOG NAME...         exit 0 if LOG holds a finished run with a sane result for
                                     each NAME (scripts/test runs the program on the host)
  peers.py selftest                  the parser on a sample serial log (kernel lines mixed in)

bench-report.py imports it for the comparison table (`section`) and the chart (`chart`).

The lines: `PEER-INFO {json}`, `PEER {json}` (one per configuration, the keys of rl4's BENCH
lines plus "system": "linux"), `PEER-SKIP {json}`, `PEER-ERROR {json}`, `PEER-DONE N`. On a serial
console a kernel message may precede a line or be glued to it, and lines end in CR LF; the parser
looks for the markers anywhere in a line and ignores what it cannot read (counting it).
"""
import json
import math
import os
import re
import sys

LINE = re.compile(r"PEER(-INFO|-SKIP|-ERROR)? (\{.*\})")
DONE = re.compile(r"PEER-DONE (\d+)")
START = re.compile(r"PEER(-INFO|-SKIP|-ERROR)? \{")


def parse(text):
    """Returns {"info": dict|None, "results": [...], "skips": [...], "errors": [...],
    "done": int|None, "bad": [lines that looked like results but did not parse]}."""
    out = {"info": None, "results": [], "skips": [], "errors": [], "done": None, "bad": []}
    for raw in text.replace("\r", "").split("\n"):
        m = DONE.search(raw)
        if m and "PEER-DONE" in raw and not LINE.search(raw):
            out["done"] = int(m.group(1))
            continue
        m = LINE.search(raw)
        if not m:
            if START.search(raw):
                out["bad"].append(raw)
            continue
        try:
            obj = json.loads(m.group(2))
        except ValueError:
            out["bad"].append(raw)
            continue
        kind = m.group(1) or ""
        if kind == "-INFO":
            out["info"] = obj
        elif kind == "-SKIP":
            out["skips"].append(obj)
        elif kind == "-ERROR":
            out["errors"].append(obj)
        elif isinstance(obj.get("median_cycles"), int) and isinstance(obj.get("name"), str):
            out["results"].append(obj)
        else:
            out["bad"].append(raw)
    return out


def problems(p):
    """What is wrong with a parsed run (empty list: a finished run)."""
    bad = []
    if p["info"] is None:
        bad.append("no PEER-INFO line")
    if p["done"] is None:
        bad.append("no PEER-DONE line (the guest did not finish)")
    elif p["done"] != len(p["results"]):
        bad.append(f"PEER-DONE says {p['done']} results, {len(p['results'])} read")
    for e in p["errors"]:
        bad.append(f"{e.get('name')}: {e.get('error')}")
    for line in p["bad"]:
        bad.append(f"unreadable line: {line[:120]}")
    return bad


def collect(log, out_dir, smp):
    p = parse(open(log, encoding="utf-8", errors="replace").read())
    bad = problems(p)
    with open(os.path.join(out_dir, "results.jsonl"), "a") as f:
        for r in p["results"]:
            r["smp"] = smp
            # Each row is whole, but its run did not end cleanly: the report says so beside it.
            if bad:
                r["run_problems"] = bad[:3]
            f.write(json.dumps(r) + "\n")
    if p["info"] is not None:
        p["info"]["smp"] = smp
        with open(os.path.join(out_dir, "linux-info.jsonl"), "a") as f:
            f.write(json.dumps(p["info"]) + "\n")
    for s in p["skips"]:
        print(f"peers: {s.get('name')} skipped: {s.get('why')}", file=sys.stderr)
    for b in bad:
        print(f"peers: {log}: {b}", file=sys.stderr)
    names = ", ".join(f"{r['name']} {r['median_cycles']:,}" for r in p["results"])
    print(f"peers: {len(p['results'])} results ({names})", file=sys.stderr)
    return 0 if not bad else 1


def check(log, names):
    p = parse(open(log, encoding="utf-8", errors="replace").read())
    bad = problems(p)
    got = {r["name"]: r for r in p["results"]}
    for n in names:
        r = got.get(n)
        if r is None:
            bad.append(f"no result for {n}")
            continue
        c = r.get("cdf", [])
        if not (r["iterations"] > 0 and 0 < r["median_cycles"] and r["min_cycles"] <= r["median_cycles"] <= r["max_cycles"]
                and len(c) == 11 and c == sorted(c) and r["cycles_per_iteration"] > 0):
            bad.append(f"{n}: implausible figures {json.dumps(r)[:200]}")
    print("; ".join(bad) if bad else f"{len(names)} results read: " + ", ".join(f"{n} {got[n]['median_cycles']:,}" for n in names))
    return 0 if not bad else 1


SAMPLE = """\
[    0.000000] Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org)\r
PEER-INFO {"system":"linux","accel":"icount","pid1":true,"kernel":"Linux version 6.1.0 \\"x\\"","cpus":[0,1],"tsc_hz":1000000000}\r
PEER {"system":"linux","name":"linux-null-syscall","accel":"icount","iterations":3,"tsc_hz":1000000000,"min_cycles":328,"median_cycles":328,"mean_cycles":328,"p99_cycles":328,"p999_cycles":328,"max_cycles":330,"cdf":[328,328,328,328,328,328,328,328,328,328,330],"cycles_per_iteration":346,"total_cycles":1038}\r
[    1.234567] random: crng init done\r
[    1.300000] clocksource: Switched to clocksource tsc\rPEER {"system":"linux","name":"linux-futex-same-cpu","accel":"icount","iterations":3,"tsc_hz":1000000000,"min_cycles":6775,"median_cycles":9679,"mean_cycles":9628,"p99_cycles":9901,"p999_cycles":9901,"max_cycles":9901,"cdf":[6775,9679,9679,9679,9679,9693,9707,9707,9901,9901,9901],"cycles_per_iteration":9700,"total_cycles":29100}\r
PEER-SKIP {"name":"linux-futex-cross-cpu-0-1","why":"needs two CPUs"}\r
PEER {"system":"linux","name":"linux-pipe-same-cpu","accel":"icount","iterations":3,"median_cycles":
PEER-DONE 2\r
[    2.389289] reboot: Power down\r
"""


def selftest():
    p = parse(SAMPLE)
    assert p["info"] and p["info"]["kernel"] == 'Linux version 6.1.0 "x"', p["info"]
    assert [r["name"] for r in p["results"]] == ["linux-null-syscall", "linux-futex-same-cpu"], p["results"]
    assert p["results"][1]["median_cycles"] == 9679
    assert p["skips"] == [{"name": "linux-futex-cross-cpu-0-1", "why": "needs two CPUs"}]
    assert p["done"] == 2 and len(p["bad"]) == 1, p
    assert problems(p) == [f"unreadable line: {p['bad'][0][:120]}"], problems(p)
    unfinished = parse(SAMPLE.split("PEER-DONE")[0])
    assert any("did not finish" in b for b in problems(unfinished))
    rows = [dict(r, accel="icount") for r in p["results"]] + [
        {"name": "same-core", "accel": "icount", "median_cycles": 697},
        {"name": "null-syscall", "accel": "icount", "median_cycles": 244}]
    svg = chart(rows, {"pair": (0, 1)})
    assert svg.startswith("<svg") and "9,679" in svg and "13.9×" in svg, svg[:400]
    md = "\n".join(section(rows, [], {"pair": (0, 1)}))
    assert "| **same core** (instructions) | icount | **697** | 9,679 | **13.9×** |" in md, md
    print("peers.py selftest: ok")
    return 0


# ---- the comparison (bench-report.py) ----------------------------------------------------------

def fmt(v):
    return "—" if v is None else f"{v:,}"


def ratio(a, b):
    """Linux's figure b over rl4's a: 13.9×, or 0.016× when Linux is the faster."""
    if not (a and b):
        return "—"
    return f"{b / a:.1f}×" if b >= a else f"{b / a:.2g}×"


def pick(rows, name, accel):
    """The result `name` of `accel` (Linux rows carry "system": "linux")."""
    return next((r for r in rows if r["name"] == name and r["accel"] == accel), None)


def comparisons(rows, pair):
    """(label, accel, rl4 row, futex row, pipe row) for every accel with any Linux figure."""
    a, b = pair
    out = []
    accels = [x for x in ("icount", "tcg", "kvm") if any(r.get("system") == "linux" and r["accel"] == x for r in rows)]
    for acc in accels:
        out.append(("same core", acc, pick(rows, "same-core", acc), pick(rows, "linux-futex-same-cpu", acc),
                    pick(rows, "linux-pipe-same-cpu", acc)))
        out.append(("cross core", acc, pick(rows, f"cross-core-{a}-{b}", acc), pick(rows, f"linux-futex-cross-cpu-{a}-{b}", acc),
                    pick(rows, f"linux-pipe-cross-cpu-{a}-{b}", acc)))
        out.append(("null system call", acc, pick(rows, "null-syscall", acc), pick(rows, "linux-null-syscall", acc), None))
    return out


def med(r):
    return r["median_cycles"] if r else None


def section(rows, infos, ctx):
    """Markdown lines: rl4 beside Linux, with the ratios, then every Linux figure."""
    a, b = ctx["pair"]
    L = []
    L.append("| round trip | accel | rl4 | Linux futex (two threads) | Linux / rl4 | Linux pipe (two processes) | Linux / rl4 |")
    L.append("|---|---|---|---|---|---|---|")
    for label, acc, r, fx, px in comparisons(rows, ctx["pair"]):
        if not (r or fx or px):
            continue
        unit = "instructions" if acc == "icount" else "cycles"
        smp = next((x.get("smp") for x in (fx, px) if x and x.get("smp")), None)
        rsmp = r.get("smp") if r else None
        if smp and rsmp and rsmp != smp:
            acc_l = f"{acc} (rl4 `-smp {rsmp}`, Linux `-smp {smp}`)"
        else:
            acc_l = f"{acc} (`-smp {smp or rsmp}`)" if (smp or rsmp) else acc
        if label == "null system call":
            L.append(f"| {label} (rl4 `Null`, Linux `getppid`) | {acc_l} | {fmt(med(r))} | {fmt(med(fx))} | {ratio(med(r), med(fx))} | | |")
        else:
            L.append(f"| **{label}** ({unit}) | {acc_l} | **{fmt(med(r))}** | {fmt(med(fx))} | **{ratio(med(r), med(fx))}** | "
                     f"{fmt(med(px))} | **{ratio(med(r), med(px))}** |")
    L.append("")
    for r in rows:
        if r.get("system") == "linux" and r.get("run_problems"):
            L.append(f"`{r['name']}` ({r['accel']}, `-smp {r.get('smp')}`) comes from a Linux run that did not end "
                     f"cleanly: {'; '.join(r['run_problems'])}.\n")
    L.append(f"Medians per round trip. rl4: `same-core` (`Call` + `ReplyRecv`, echo server in another task, one CPU) "
             f"and `cross-core-{a}-{b}` (client on CPU {a}, server on CPU {b}) from the tables below, same run. Linux: "
             "`FUTEX_WAKE` + `FUTEX_WAIT` (private futex) between two threads of one process (four system calls and two "
             "wake-ups per round trip), and a one-byte `write` + `read` over two pipes between two processes (two address "
             f"spaces, as rl4's `same-core`), pinned with `sched_setaffinity` to CPU {a} (same CPU) or to CPUs {a} and {b}. "
             "Each sample is one round trip between two `rdtsc`, the cost of an empty pair subtracted, as in rl4's "
             "benchmark. rl4's two threads talk through one endpoint with a reply right; Linux's through two system calls "
             "each way.\n")
    L.append("Under icount with two CPUs (the cross-core rows) QEMU runs the vCPUs one after another on one clock, so a "
             "round trip counts the instructions of both CPUs, including what the waiting side executes (rl4's idle CPU "
             "polls its inbox; an idle Linux CPU halts). Under TCG the "
             "figures are host cycles of the emulator on a 2-core host shared with other work: compare within one run. "
             "Under icount Linux's same-CPU round trips have two modes: the first one or two thousand timed ones are "
             "shorter than the rest (the distribution's first percentiles in the JSON), so a run of a few thousand round "
             "trips or fewer reports the lower mode as its median.\n")
    # the guest
    if infos:
        i0 = infos[0]
        vul = i0.get("vulnerabilities", {})
        mit = "; ".join(f"{k}: {v}" for k, v in sorted(vul.items()) if not v.startswith("Not affected")) or "none reported"
        cmd = i0.get("cmdline", "").split(" -- ")[0]
        boots = "; ".join(f"{i.get('accel')} `-smp {i.get('smp')}`: {i.get('clocksource') or '?'}" for i in infos)
        L.append(f"The Linux guest: {i0.get('kernel', '?')}; kernel command line `{cmd} -- iters=N seconds=S cpus=A,B "
                 f"accel=ACCEL only=CONFIGS` (what follows `--` goes to `/init`); CPU model {i0.get('cpu_model') or '?'}; "
                 f"idle driver {i0.get('cpuidle') or '?'}; clock source per boot: {boots}; the kernel's default mitigations "
                 f"on this CPU model: {mit}.\n")
    lin = [r for r in rows if r.get("system") == "linux"]
    if lin:
        L.append("| Linux configuration | accel | `-smp` | round trips | min | median | mean | p99 | p99.9 | max | total/iterations |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in lin:
            n = f"{r['iterations']:,}" + (" (time limit)" if r.get("stopped_by_time_limit") else "")
            L.append(f"| {r['name']} | {r['accel']} | {r.get('smp', '?')} | {n} | {fmt(r.get('min_cycles'))} | {fmt(r['median_cycles'])} | "
                     f"{fmt(r.get('mean_cycles'))} | {fmt(r.get('p99_cycles'))} | {fmt(r.get('p999_cycles'))} | {fmt(r.get('max_cycles'))} | "
                     f"{fmt(r.get('cycles_per_iteration'))} |")
        L.append("")
        if any(r.get("stopped_by_time_limit") for r in lin):
            L.append(f"\"time limit\": the configuration stopped when its timed loop had run {ctx.get('seconds', '?')} s of guest "
                     "time (`--peers-seconds`), before the requested round trips.\n")
    return L


def chart(rows, ctx):
    """An SVG: per accel, one panel; per comparison, rl4 and Linux bars on a log scale."""
    groups = [c for c in comparisons(rows, ctx["pair"]) if c[2] or c[3] or c[4]]
    panels = []
    for acc in ("icount", "tcg", "kvm"):
        g = [c for c in groups if c[1] == acc]
        if g:
            panels.append((acc, g))
    series = [("rl4: IPC Call + ReplyRecv (system call: Null)", "#1f5fa8"), ("Linux: futex, two threads (system call: getppid)", "#e08a1e"),
              ("Linux: pipe, two processes", "#b8402a")]
    W, ML, MR, BAR, GAP, HEAD = 980, 190, 150, 15, 14, 46
    height = 64 + sum(HEAD + sum(GAP + BAR * sum(1 for x in c[2:] if x) for c in g) + 34 for _, g in panels)
    S = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{height}" fill="white"/>',
         '<text x="12" y="22" font-size="15" font-weight="bold">One round trip: rl4 beside Linux, same QEMU, same CPU model '
         '(shorter is faster; log scale)</text>']
    lx = 36
    for i, (name, col) in enumerate(series):
        S.append(f'<rect x="{lx}" y="34" width="12" height="12" fill="{col}"/>')
        S.append(f'<text x="{lx + 17}" y="44">{name}</text>')
        lx += 30 + 6.4 * len(name)
    y = 64
    for acc, g in panels:
        vals = [med(x) for c in g for x in c[2:] if x]
        lo = 10 ** math.floor(math.log10(max(1, min(vals))))
        hi = 10 ** math.ceil(math.log10(max(vals) * 1.01))
        def X(v):
            return ML + (math.log10(max(v, 1)) - math.log10(lo)) / max(1e-9, math.log10(hi) - math.log10(lo)) * (W - ML - MR)
        title = ("icount: guest instructions per round trip (exact counts)" if acc == "icount"
                 else f"{acc.upper()}: emulator (host TSC) cycles per round trip, median")
        S.append(f'<text x="12" y="{y + 16}" font-size="13" font-weight="bold">{title}</text>')
        top = y + HEAD - 18
        bottom = top + sum(GAP + BAR * sum(1 for x in c[2:] if x) for c in g) + 4
        e = round(math.log10(lo))
        while 10 ** e <= hi:
            x = X(10 ** e)
            S.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd"/>')
            S.append(f'<text x="{x:.1f}" y="{bottom + 13}" text-anchor="middle" fill="#555">{10 ** e:,}</text>')
            e += 1
        yy = top
        for label, _, r, fx, px in g:
            yy += GAP
            bars = [(x, series[i][1]) for i, x in enumerate((r, fx, px)) if x]
            S.append(f'<text x="{ML - 8}" y="{yy + BAR * len(bars) / 2 + 4:.1f}" text-anchor="end" font-weight="bold">{label}</text>')
            for x, col in bars:
                v = med(x)
                w = max(1.0, X(v) - ML)
                S.append(f'<rect x="{ML}" y="{yy}" width="{w:.1f}" height="{BAR - 3}" fill="{col}"/>')
                note = f"{v:,}"
                if x is not r and r:
                    note += f"  ({ratio(med(r), v)} rl4)"
                S.append(f'<text x="{ML + w + 5:.1f}" y="{yy + BAR - 5}">{note}</text>')
                yy += BAR
        y = bottom + 34
    S.append("</svg>")
    return "\n".join(S)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "collect" and len(sys.argv) == 5:
        sys.exit(collect(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    if cmd == "check" and len(sys.argv) >= 4:
        sys.exit(check(sys.argv[2], sys.argv[3:]))
    if cmd == "selftest":
        sys.exit(selftest())
    print(__doc__, file=sys.stderr)
    sys.exit(2)
