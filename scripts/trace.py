#!/usr/bin/env python3
"""The event timeline of a `timeline` kernel: its dump, as a Chrome/Perfetto trace and an SVG.

    trace.py convert DUMP OUT.json [--svg OUT.svg] [--summary OUT.txt] [--abi FILE] [--title T]
    trace.py check OUT.json [--require-flows]
    trace.py selftest

`convert` reads the binary dump the kernel writes to the debug console at shutdown
(`kernel/src/timeline.rs`: "RL4TL001", the TSC rate, whether the rings kept the latest events;
per CPU "CPU_RING", index, events in the dump, events not in it, then 32-byte events; "TL_END"), and writes a trace-event JSON file (the
format of chrome://tracing and ui.perfetto.dev): a process per CPU with tracks for the running
thread (and idle), system calls and IPC, idle states (poll, halt) and other events; a process
"threads" with a track per thread; flow arrows from each message (send, reply) to the receive it
caused, that is to the thread's next switch-in, or to the `Recv` that took a queued sender.
It prints a summary: events, messages, their receives, and for cross-core messages the time of
each step (send -> inbox push -> drain on the other CPU -> switch to the receiver), in TSC
cycles, with the round trips of a ping-pong split the same way.

`check` verifies a trace file's structure: valid JSON, the fields every event of its phase needs,
a named track per CPU, every flow start with its end; with `--require-flows` also (from the
converter's counts) every cross-core message with its receive and at least one cross-core flow.
A message whose receiving CPU's ring was full before the receive could be recorded is not
counted as missing. `selftest` converts and checks a small made-up dump.
"""
import bisect
import json
import os
import re
import struct
import sys
from collections import defaultdict

KINDS = {
    1: "sys_enter", 2: "sys_exit", 3: "send", 4: "recv", 5: "reply", 6: "switch", 7: "push",
    8: "drain", 9: "ipi_send", 10: "irq", 11: "idle", 12: "poll_start", 13: "halt", 14: "wake",
    15: "leave", 16: "fault",
}
K = {v: k for k, v in KINDS.items()}
IDLE_STATE = {0: "busy", 1: "polling", 2: "halting", 3: "waking"}
VECTORS = {0x30: "timer tick", 0x31: "IPI resched", 0x32: "IPI TLB", 0x33: "IPI ping", 0x34: "IPI pong",
           0x35: "IPI freeze", 0xfe: "APIC error"}
THREADS_PID = 1000
# Tracks of a CPU's process.
T_RUN, T_SYS, T_IDLE, T_EV = 1, 2, 3, 4
TRACK_NAMES = {T_RUN: "running", T_SYS: "system calls and IPC", T_IDLE: "idle", T_EV: "events"}


class Ev:
    __slots__ = ("tsc", "kind", "cpu", "tid", "a", "b", "i")

    def __init__(self, tsc, kind, cpu, tid, a, b):
        self.tsc, self.kind, self.cpu, self.tid, self.a, self.b = tsc, kind, cpu, tid, a, b
        self.i = 0

    def __repr__(self):
        return f"Ev({self.tsc}, {KINDS.get(self.kind, self.kind)}, cpu{self.cpu}, t{self.tid}, {self.a:#x}, {self.b:#x})"


def parse_dump(data):
    """(tsc_hz, {cpu: (events, in the dump, not in it)}, keep_last) from a dump; raises ValueError
    if malformed."""
    start = data.find(b"RL4TL001")
    if start < 0:
        raise ValueError("no RL4TL001 header in the dump (was the kernel built with --features timeline?)")
    p = start + 8
    if len(data) < p + 16:
        raise ValueError("dump cut off after its header")
    hz, keep_last = struct.unpack_from("<QQ", data, p)
    p += 16
    rings = {}
    while True:
        tag = data[p:p + 8]
        if tag == b"TL_END\0\0":
            break
        if tag != b"CPU_RING":
            raise ValueError(f"unexpected record {tag!r} at byte {p} (dump cut off?)")
        cpu, n, lost = struct.unpack_from("<QQQ", data, p + 8)
        p += 32
        if len(data) < p + 32 * n:
            raise ValueError(f"cpu {cpu}: {n} events announced, the dump ends after {(len(data) - p) // 32}")
        evs = []
        for tsc, w, a, b in struct.iter_unpack("<QQQQ", data[p:p + 32 * n]):
            evs.append(Ev(tsc, w & 0xff, (w >> 8) & 0xff, w >> 16, a, b))
        p += 32 * n
        for e in evs:
            if e.cpu != cpu:
                raise ValueError(f"ring of cpu {cpu} holds an event of cpu {e.cpu}")
        rings[cpu] = (evs, n, lost)
    return hz, rings, bool(keep_last)


def syscall_names(abi):
    """{number: name} from the ABI crate's `enum Sys` (no copy of the numbers here)."""
    names = {}
    try:
        src = open(abi).read()
    except OSError:
        return names
    m = re.search(r"pub enum Sys\b[^{]*\{(.*?)\n\s*\}", src, re.S)
    if m:
        for name, num in re.findall(r"\b([A-Z][A-Za-z0-9]*)\s*=\s*(\d+)", m.group(1)):
            names[int(num)] = name
    return names


def median(xs):
    xs = sorted(xs)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) // 2


class Timeline:
    def __init__(self, hz, rings, sysnames=None, keep_last=False):
        self.hz = hz or 1
        self.keep_last = keep_last
        self.rings = rings
        self.sysnames = sysnames or {}
        self.cpus = sorted(rings)
        self.all = sorted((e for c in self.cpus for e in rings[c][0]), key=lambda e: (e.tsc, e.cpu))
        for i, e in enumerate(self.all):
            e.i = i
        self.t0 = self.all[0].tsc if self.all else 0
        self.t_end = self.all[-1].tsc if self.all else 0
        # Per thread: its switch-ins, pushes and drains, in time order (for the matching).
        self.by = defaultdict(list)
        for e in self.all:
            if e.kind in (K["switch"], K["push"], K["drain"]):
                self.by[(e.kind, e.a)].append(e)
        self.recv_by_sender = defaultdict(list)
        for e in self.all:
            if e.kind == K["recv"]:
                self.recv_by_sender[e.a & 0xffffffff].append(e)
        self.messages = self._match()

    def us(self, tsc):
        return (tsc - self.t0) * 1e6 / self.hz

    def sysname(self, n):
        return self.sysnames.get(n, f"syscall {n}")

    def _next(self, key, after, pred=lambda e: True):
        lst = self.by.get(key, [])
        j = bisect.bisect_left([x.i for x in lst], after.i)
        for e in lst[j:]:
            if pred(e):
                return e
        return None

    def _match(self):
        """Every message (send, reply) with the event that received it, and the steps between."""
        out = []
        for e in self.all:
            if e.kind in (K["send"], K["reply"]):
                if e.kind == K["send"]:
                    to, ep = e.a & 0xffffffff, e.a >> 32
                else:
                    to, ep = e.a, None
                m = {"ev": e, "kind": KINDS[e.kind], "from": e.tid, "to": to, "ep": ep, "recv": None,
                     "push": None, "drain": None, "queued": e.kind == K["send"] and to == 0}
                if m["queued"]:
                    # Queued sender: received by the `Recv` that takes it.
                    lst = self.recv_by_sender.get(e.tid, [])
                    for r in lst:
                        if r.i > e.i and r.a >> 32 == ep:
                            m["recv"] = r
                            m["to"] = r.tid
                            break
                else:
                    m["recv"] = self._next((K["switch"], to), e)
                    push = self._next((K["push"], to), e, lambda p: p.cpu == e.cpu)
                    if push is not None and (m["recv"] is None or push.i < m["recv"].i):
                        m["push"] = push
                        # Looked for after the message, not after the push: the kernel records a
                        # push after its compare-and-swap, under the thread's lock, so a polling
                        # CPU can take the thread from its inbox (and record the drain) before the
                        # push's own event is recorded.
                        m["drain"] = self._next((K["drain"], to), e,
                                                lambda d: d.cpu == (push.b & 0xff))
                        # A drain after the receive is a later push's (this one's fell outside
                        # a ring that overwrote its oldest events, or the thread moved).
                        if m["drain"] is not None and m["recv"] is not None and m["drain"].i > m["recv"].i:
                            m["drain"] = None
                m["cross"] = (m["recv"] is not None and m["recv"].cpu != e.cpu) or \
                    (m["push"] is not None and (m["push"].b & 0xff) != e.cpu)
                out.append(m)
        return out

    # ---- the Chrome trace-event JSON ------------------------------------------------------------

    def chrome(self, title="rl4"):
        ev = []

        def meta(pid, tid, name, sort=None):
            if tid is None:
                ev.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": name}})
                if sort is not None:
                    ev.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": sort}})
            else:
                ev.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}})
                if sort is not None:
                    ev.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": sort}})

        def slice_(pid, tid, name, t0, t1, cat, args=None):
            d = {"ph": "X", "name": name, "cat": cat, "pid": pid, "tid": tid, "ts": self.us(t0),
                 "dur": max(self.us(t1) - self.us(t0), 0.0)}
            if args:
                d["args"] = args
            ev.append(d)

        def instant(pid, tid, name, t, cat, args=None):
            d = {"ph": "i", "s": "t", "name": name, "cat": cat, "pid": pid, "tid": tid, "ts": self.us(t)}
            if args:
                d["args"] = args
            ev.append(d)

        threads = set()
        for c in self.cpus:
            pid = c + 1
            meta(pid, None, f"CPU {c}", c)
            for t, n in TRACK_NAMES.items():
                meta(pid, t, n, t)
            evs = self.rings[c][0]
            end = evs[-1].tsc if evs else self.t0
            run = None  # (label, tid or None, start)
            sysc = None  # (number, start, tid)
            idle = None  # (state, start)

            def close_run(t):
                nonlocal run
                if run:
                    label, tid, s = run
                    slice_(pid, T_RUN, label, s, t, "sched", {"thread": tid} if tid else None)
                    if tid:
                        threads.add(tid)
                        slice_(THREADS_PID, tid, f"on CPU {c}", s, t, "sched", {"cpu": c})
                run = None

            def close_sys(t, how):
                nonlocal sysc
                if sysc:
                    n, s, tid = sysc
                    slice_(pid, T_SYS, self.sysname(n), s, t, "syscall",
                           {"number": n, "thread": tid, "ends": how, "cycles": t - s})
                sysc = None

            def close_idle(t):
                nonlocal idle
                if idle:
                    slice_(pid, T_IDLE, idle[0], idle[1], t, "idle", {"cycles": t - idle[1]})
                idle = None

            for e in evs:
                k = KINDS.get(e.kind, str(e.kind))
                if idle and (idle[0] == "poll" or (idle[0] == "halt" and k == "wake")):
                    close_idle(e.tsc)
                if k == "switch":
                    close_run(e.tsc)
                    run = (f"thread {e.a}", e.a, e.tsc)
                    instant(pid, T_EV, "switch" + (" (direct)" if e.b & 1 else ""), e.tsc, "sched",
                            {"thread": e.a, "priority": e.b >> 8})
                elif k == "idle":
                    if run is None or run[1] is not None:
                        close_run(e.tsc)
                        run = ("idle", None, e.tsc)
                    close_sys(e.tsc, "idle")
                elif k == "sys_enter":
                    close_sys(e.tsc, "re-entered")
                    sysc = (e.a, e.tsc, e.tid)
                elif k == "sys_exit":
                    if sysc:
                        close_sys(e.tsc, "fast path" if e.b else "exit")
                elif k == "poll_start":
                    idle = ("poll", e.tsc)
                elif k == "halt":
                    idle = ("halt", e.tsc)
                elif k == "wake":
                    instant(pid, T_IDLE, "wake", e.tsc, "idle")
                elif k == "send":
                    to = e.a & 0xffffffff
                    instant(pid, T_SYS, "send" if to else "send (queued)", e.tsc, "ipc",
                            {"from": e.tid, "to": to, "endpoint": hex(e.a >> 32), "badge": e.b})
                elif k == "recv":
                    instant(pid, T_SYS, "recv (queued sender)", e.tsc, "ipc",
                            {"by": e.tid, "from": e.a & 0xffffffff, "endpoint": hex(e.a >> 32), "badge": e.b})
                elif k == "reply":
                    instant(pid, T_SYS, "reply", e.tsc, "ipc", {"from": e.tid, "to": e.a, "ticket": e.b})
                elif k == "push":
                    instant(pid, T_EV, f"push to CPU {e.b & 0xff} inbox", e.tsc, "sched",
                            {"thread": e.a, "target": e.b & 0xff, "target was": IDLE_STATE.get(e.b >> 8, e.b >> 8)})
                elif k == "drain":
                    instant(pid, T_EV, "drain inbox", e.tsc, "sched", {"thread": e.a, "priority": e.b})
                elif k == "ipi_send":
                    instant(pid, T_EV, f"IPI to CPU {e.a}", e.tsc, "irq", {"target": e.a, "vector": hex(e.b)})
                elif k == "irq":
                    instant(pid, T_EV, VECTORS.get(e.a, f"interrupt {e.a:#x}"), e.tsc, "irq", {"vector": hex(e.a)})
                elif k == "leave":
                    why = "preempted" if e.b & 1 else ("slice over" if e.b & 2 else "leaves")
                    instant(pid, T_EV, f"thread {e.a} {why}", e.tsc, "sched", {"thread": e.a})
                elif k == "fault":
                    instant(pid, T_EV, "page fault" if e.a == 14 else f"fault {e.a}", e.tsc, "fault",
                            {"vector": e.a, "error": hex(e.b), "thread": e.tid})
            close_idle(end)
            close_sys(end, "end of trace")
            close_run(end)
        meta(THREADS_PID, None, "threads", 10_000)
        for t in sorted(threads):
            meta(THREADS_PID, t, f"thread {t}", t)

        # Flow arrows: message -> its receive (a switch-in, or the Recv that took a queued sender).
        fid = 0
        for m in self.messages:
            r = m["recv"]
            if r is None:
                continue
            fid += 1
            e = m["ev"]
            cat = "ipc-cross" if m["cross"] else "ipc"
            name = f"{m['kind']} {m['from']}->{m['to']}"
            ev.append({"ph": "s", "id": fid, "name": name, "cat": cat, "pid": e.cpu + 1, "tid": T_SYS, "ts": self.us(e.tsc)})
            rtid = T_SYS if r.kind == K["recv"] else T_RUN
            ev.append({"ph": "f", "bp": "e", "id": fid, "name": name, "cat": cat, "pid": r.cpu + 1, "tid": rtid,
                       "ts": self.us(r.tsc)})
            if r.kind == K["switch"]:
                instant(r.cpu + 1, T_SYS, f"receive ({m['kind']} from thread {m['from']})", r.tsc, "ipc",
                        {"thread": m["to"], "from": m["from"], "latency_cycles": r.tsc - e.tsc})
        stats = self.stats()
        return {"traceEvents": ev, "displayTimeUnit": "ns",
                "otherData": {"title": title, "tsc_hz": self.hz, "rl4": stats}}

    # ---- what the messages did ------------------------------------------------------------------

    def stats(self):
        cross = [m for m in self.messages if m["cross"]]
        s = {
            "cpus": len(self.cpus),
            "events": {str(c): self.rings[c][1] for c in self.cpus},
            "events_not_recorded": {str(c): self.rings[c][2] for c in self.cpus},
            "messages": len(self.messages),
            "messages_received": sum(1 for m in self.messages if m["recv"] is not None),
            "cross_core_messages": len(cross),
            "cross_core_received": sum(1 for m in cross if m["recv"] is not None),
            # A message sent after the other CPU's ring filled up (or after it stopped
            # recording) cannot show its receive: not counted as missing.
            "cross_core_unreceived": [],
            "cross_core_cut": 0,
        }
        last = {c: (self.rings[c][0][-1].tsc if self.rings[c][0] else 0) for c in self.cpus}
        first = {c: (self.rings[c][0][0].tsc if self.rings[c][0] else 0) for c in self.cpus}
        full = {c: self.rings[c][2] > 0 for c in self.cpus}
        s["cross_core_cut"] = 0
        for m in cross:
            if m["recv"] is None:
                tgt = m["push"].b & 0xff if m["push"] else None
                cut = tgt is not None and full.get(tgt) and not first[tgt] <= m["ev"].tsc < last[tgt]
                s["cross_core_cut"] += bool(cut)
                if not cut:
                    s["cross_core_unreceived"].append({"cpu": m["ev"].cpu, "kind": m["kind"], "from": m["from"],
                                                       "to": m["to"], "ts_us": self.us(m["ev"].tsc)})
        # Steps of the cross-core messages that went through an inbox.
        steps = defaultdict(list)
        by_state = defaultdict(list)
        for m in cross:
            e, p, d, r = m["ev"], m["push"], m["drain"], m["recv"]
            if None in (p, d, r) or r.kind != K["switch"]:
                continue
            steps["send_to_push"].append(p.tsc - e.tsc)
            # (0 when the drain was recorded before the push's own event: see `_match`.)
            steps["push_to_drain"].append(max(0, d.tsc - p.tsc))
            steps["drain_to_switch"].append(r.tsc - d.tsc)
            steps["message_to_receive"].append(r.tsc - e.tsc)
            by_state[IDLE_STATE.get(p.b >> 8, "?")].append(r.tsc - e.tsc)
        s["cross_core_steps_median_cycles"] = {k: median(v) for k, v in steps.items()}
        s["cross_core_latency_by_target_state"] = {k: {"count": len(v), "median_cycles": median(v)}
                                                   for k, v in sorted(by_state.items())}
        s["round_trips"] = self.round_trips()
        return s

    def round_trips(self):
        """A call across CPUs answered by a reply back across: each step's median (cycles)."""
        rts = []
        replies = [m for m in self.messages if m["kind"] == "reply" and m["cross"]]
        rep_i = [m["ev"].i for m in replies]
        queued = 0
        for m in self.messages:
            if m["kind"] != "send" or not m["cross"] or m["recv"] is None:
                continue
            r = m["recv"]
            j = bisect.bisect_left(rep_i, r.i)
            rep = None
            for x in replies[j:j + 8]:
                if x["ev"].tid == m["to"] and x["to"] == m["from"]:
                    rep = x
                    break
            if rep is None or rep["recv"] is None:
                continue
            if m["queued"]:
                # The call found no receiver and queued; the server's receive took it: a round
                # trip without the inbox steps on the way there.
                queued += 1
                continue
            if None in (m["push"], m["drain"], rep["push"], rep["drain"]):
                continue
            rts.append({
                "send_to_push": m["push"].tsc - m["ev"].tsc,
                "push_to_drain": max(0, m["drain"].tsc - m["push"].tsc),
                "drain_to_switch": r.tsc - m["drain"].tsc,
                "server": rep["ev"].tsc - r.tsc,
                "reply_to_push": rep["push"].tsc - rep["ev"].tsc,
                "reply_push_to_drain": max(0, rep["drain"].tsc - rep["push"].tsc),
                "reply_drain_to_switch": rep["recv"].tsc - rep["drain"].tsc,
                "total": rep["recv"].tsc - m["ev"].tsc,
                "target_state": IDLE_STATE.get(m["push"].b >> 8, "?"),
                "reply_target_state": IDLE_STATE.get(rep["push"].b >> 8, "?"),
                "start": m["ev"], "end": rep["recv"],
            })
        self._rts = rts
        if not rts:
            return {"count": 0, "queued": queued}
        keys = ["send_to_push", "push_to_drain", "drain_to_switch", "server", "reply_to_push",
                "reply_push_to_drain", "reply_drain_to_switch", "total"]
        out = {"count": len(rts), "queued": queued, "median_cycles": {k: median([x[k] for x in rts]) for k in keys}}
        polled = [x for x in rts if x["target_state"] in ("polling", "busy") and x["reply_target_state"] in ("polling", "busy")]
        out["no_halt"] = {"count": len(polled),
                                   "median_cycles": {k: median([x[k] for x in polled]) for k in keys} if polled else None}
        out["with_a_halt"] = len(rts) - len(polled)
        return out

    # ---- a static picture of a short window -----------------------------------------------------

    def windows(self):
        """The windows the SVG shows: three consecutive round trips that polled both ways (the
        common case, near the median), and one with a halted CPU on the way (near the median of
        those); without round trips, the first millisecond."""
        rts = getattr(self, "_rts", None)
        if rts is None:
            self.round_trips()
            rts = self._rts
        polled = lambda r: r["target_state"] in ("polling", "busy") and r["reply_target_state"] in ("polling", "busy")
        out = []
        pt = median([r["total"] for r in rts if polled(r)])
        best = None
        for i in range(len(rts) - 2):
            w = rts[i:i + 3]
            if not all(polled(r) for r in w):
                continue
            if any(w[j + 1]["start"].tsc - w[j]["end"].tsc > pt for j in range(2)):
                continue
            score = sum(abs(r["total"] - pt) for r in w) + abs(i - len(rts) // 2)
            if best is None or score < best[0]:
                best = (score, w[0]["start"].tsc, w[2]["end"].tsc)
        if best:
            out.append((best[1], best[2], f"three round trips, the receiving CPU polling its inbox each way "
                                          f"(a round trip's median here: {pt:,} cycles)"))
        halted = [r for r in rts if not polled(r)]
        if halted:
            ht = median([r["total"] for r in halted])
            r = min(halted[len(halted) // 4:] or halted, key=lambda r: abs(r["total"] - ht))
            out.append((r["start"].tsc, r["end"].tsc, f"one round trip with a halted CPU on the way "
                                                      f"(the median of {len(halted)} such: {ht:,} cycles)"))
        if not out:
            out.append((self.t0, min(self.t_end, self.t0 + self.hz // 1000), "the first millisecond"))
        return out

    def svg(self, title):
        W = 1100
        lane_h, gap = 22, 10
        cpu_h = 3 * lane_h + gap
        panel_h = 40 + cpu_h * len(self.cpus) + 44
        wins = self.windows()
        H = 34 + panel_h * len(wins) + 24
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
               'font-family="sans-serif" font-size="11">',
               '<defs><marker id="ar" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
               'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#c0392b"/></marker>'
               '<pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
               '<rect width="6" height="6" fill="#7f8c8d"/><line x1="0" y1="0" x2="0" y2="6" stroke="#555" stroke-width="3"/>'
               '</pattern></defs>',
               f'<rect width="{W}" height="{H}" fill="white"/>',
               f'<text x="120" y="20" font-size="14" font-weight="bold">{esc(title)}</text>']
        y = 34
        for t0, t1, note in wins:
            self._panel(out, t0, t1, y, note, W, lane_h, cpu_h)
            y += panel_h
        out.append(f'<text x="120" y="{H - 8}" fill="#555">red arrows: a message (send, reply) to the receive it caused '
                   f'on the other CPU; hatched: halted; grey: idle, polling the inbox; orange: in a system call; '
                   f'TSC {self.hz / 1e6:.0f} MHz</text>')
        out.append("</svg>")
        return "\n".join(out) + "\n"

    def _panel(self, out, t0, t1, top, note, W, lane_h, cpu_h):
        span = max(t1 - t0, 1)
        pad = span // 25
        t0 -= pad
        t1 += pad
        span = t1 - t0
        left, right = 120, 20
        out.append(f'<text x="{left}" y="{top + 14}" fill="#333">{esc(note)}: a window of {span:,} cycles '
                   f'({span * 1e6 / self.hz:.1f} µs), {self.us(t0) / 1e3:.1f} ms into the trace</text>')
        top += 24

        def x(t):
            return left + (t - t0) * (W - left - right) / span
        palette = ["#2e86c1", "#28b463", "#af7ac5", "#e67e22", "#16a085", "#d4ac0d", "#cb4335", "#5d6d7e"]
        colors = {}

        def color(tid):
            if tid not in colors:
                colors[tid] = palette[len(colors) % len(palette)]
            return colors[tid]

        ypos = {}
        for n, c in enumerate(self.cpus):
            y = top + n * cpu_h
            ypos[c] = y
            out.append(f'<text x="8" y="{y + lane_h * 1.5 + 4}" font-weight="bold">CPU {c}</text>')
            for j, lab in enumerate(("thread", "kernel", "events")):
                out.append(f'<text x="62" y="{y + j * lane_h + 15}" fill="#777">{lab}</text>')
                out.append(f'<line x1="{left}" x2="{W - right}" y1="{y + (j + 1) * lane_h}" y2="{y + (j + 1) * lane_h}" stroke="#eee"/>')
            evs = self.rings[c][0]
            end = min(evs[-1].tsc, t1) if evs else t1
            # Lane 0: running thread / idle state; lane 1: system calls and IPC; lane 2: events.
            state = None  # (label, color, start)
            sysc = None
            labels = []
            last_mark = {}

            def flush(t):
                nonlocal state
                if state and t > t0:
                    a, b = max(state[2], t0), min(t, t1)
                    if b > a and x(b) - x(a) >= 0.3:
                        out.append(f'<rect x="{x(a):.1f}" y="{y + 3}" width="{max(x(b) - x(a), 0.5):.1f}" height="{lane_h - 6}" '
                                   f'fill="{state[1]}"><title>{esc(state[0])}: {b - a} cycles</title></rect>')
                        if x(b) - x(a) > 60:
                            out.append(f'<text x="{x(a) + 3:.1f}" y="{y + 15}" fill="white">{esc(state[0])}</text>')
                state = None

            for e in evs:
                k = KINDS.get(e.kind)
                if e.tsc > t1:
                    break
                if k == "switch":
                    flush(e.tsc)
                    state = (f"thread {e.a}", color(e.a), e.tsc)
                elif k == "idle":
                    if not state or not state[0].startswith("idle"):
                        flush(e.tsc)
                        state = ("idle", "#d5d8dc", e.tsc)
                    if sysc:
                        sysc = (sysc[0], sysc[1], e.tsc)
                        self._svg_sys(out, sysc, y + lane_h, lane_h, x, t0, t1)
                        sysc = None
                elif k == "poll_start":
                    flush(e.tsc)
                    state = ("idle: polling the inbox", "#d5d8dc", e.tsc)
                elif k == "halt":
                    flush(e.tsc)
                    state = ("idle: halted", "url(#hatch)", e.tsc)
                elif k == "wake":
                    flush(e.tsc)
                    state = ("idle", "#d5d8dc", e.tsc)
                elif k == "sys_enter":
                    sysc = (e.a, e.tsc, None)
                elif k == "sys_exit" and sysc:
                    self._svg_sys(out, (sysc[0], sysc[1], e.tsc), y + lane_h, lane_h, x, t0, t1)
                    sysc = None
                if e.tsc < t0:
                    continue
                mark = {"push": ("push", "#c0392b"), "drain": ("drain", "#1e8449"), "ipi_send": ("IPI", "#8e44ad"),
                        "irq": (VECTORS.get(e.a, "irq"), "#8e44ad"), "send": ("send", "#c0392b"),
                        "reply": ("reply", "#c0392b"), "recv": ("recv", "#1e8449"),
                        "leave": ("preempt" if e.b & 1 else "leave", "#555"), "fault": ("fault", "#000")}.get(k)
                if mark:
                    lane = 1 if k in ("send", "reply", "recv") else 2
                    yy = y + lane * lane_h
                    if x(e.tsc) - last_mark.get(lane, -1e9) < 0.5:
                        continue  # a crowded window: one mark per half pixel
                    last_mark[lane] = x(e.tsc)
                    out.append(f'<line x1="{x(e.tsc):.1f}" x2="{x(e.tsc):.1f}" y1="{yy + 2}" y2="{yy + lane_h - 2}" '
                               f'stroke="{mark[1]}" stroke-width="1.5"><title>{esc(mark[0])} at {e.tsc - t0} cycles</title></line>')
                    labels.append((x(e.tsc), yy, mark))
            flush(end)
            if sysc:
                self._svg_sys(out, (sysc[0], sysc[1], end), y + lane_h, lane_h, x, t0, t1)
            last_x = {}
            for lx, yy, (lab, col) in labels:
                if lx - last_x.get(yy, -1e9) > 34:
                    out.append(f'<text x="{lx + 2:.1f}" y="{yy + lane_h - 5}" font-size="9" fill="{col}">{esc(lab)}</text>')
                    last_x[yy] = lx
        # Arrows: messages to their receives, inside the window.
        for m in self.messages:
            r, e = m["recv"], m["ev"]
            if r is None or e.tsc < t0 or r.tsc > t1 or e.cpu == r.cpu:
                continue
            y1 = ypos[e.cpu] + lane_h * 1.5
            y2 = ypos[r.cpu] + (lane_h * 1.5 if r.kind == K["recv"] else lane_h * 0.5)
            out.append(f'<line x1="{x(e.tsc):.1f}" y1="{y1:.1f}" x2="{x(r.tsc):.1f}" y2="{y2:.1f}" stroke="#c0392b" '
                       f'stroke-width="1.2" marker-end="url(#ar)"><title>{esc(m["kind"])} from thread {m["from"]} to '
                       f'thread {m["to"]}: {r.tsc - e.tsc} cycles</title></line>')
        # Time axis.
        ya = top + cpu_h * len(self.cpus) + 10
        out.append(f'<line x1="{left}" x2="{W - right}" y1="{ya}" y2="{ya}" stroke="#333"/>')
        step = nice_step(span / 8)
        t = step
        while t < span:
            out.append(f'<line x1="{x(t0 + t):.1f}" x2="{x(t0 + t):.1f}" y1="{ya}" y2="{ya + 5}" stroke="#333"/>')
            out.append(f'<text x="{x(t0 + t):.1f}" y="{ya + 17}" text-anchor="middle" fill="#333">{t:,}</text>')
            t += step
        out.append(f'<text x="{left - 8}" y="{ya + 17}" text-anchor="end" fill="#333">cycles</text>')

    stats_median = None

    def window_note(self, t0, t1):
        return (f"{len(self.cpus)} CPUs, a window of {t1 - t0:,} TSC cycles ({(t1 - t0) * 1e6 / self.hz:.1f} µs) "
                f"from {self.us(t0) / 1e3:.1f} ms into the trace")

    def _svg_sys(self, out, sysc, y, lane_h, x, t0, t1):
        n, a, b = sysc
        if b < t0 or a > t1:
            return
        a, b = max(a, t0), min(b, t1)
        name = self.sysname(n)
        out.append(f'<rect x="{x(a):.1f}" y="{y + 4}" width="{max(x(b) - x(a), 0.5):.1f}" height="{lane_h - 8}" '
                   f'fill="#f5cba7" stroke="#e59866"><title>{esc(name)}: {b - a} cycles</title></rect>')
        if x(b) - x(a) > 50:
            out.append(f'<text x="{x(a) + 2:.1f}" y="{y + 8}" font-size="8" fill="#6e2c00">{esc(name)}</text>')

    def summary(self):
        s = self.stats()
        lines = [f"timeline: {s['cpus']} CPUs, TSC {self.hz / 1e6:.1f} MHz, "
                 f"{self.us(self.t_end) / 1e6:.3f} s of trace"]
        for c in self.cpus:
            what = "overwritten (the oldest)" if self.keep_last else "not recorded (ring full)"
            lines.append(f"  cpu {c}: {self.rings[c][1]} events in the dump, {self.rings[c][2]} {what}")
        lines.append(f"  messages (send, reply): {s['messages']}, received: {s['messages_received']}; "
                     f"cross-core: {s['cross_core_messages']}, received: {s['cross_core_received']}, "
                     f"receive outside a full ring: {s['cross_core_cut']}, "
                     f"missing their receive: {len(s['cross_core_unreceived'])}")
        st = s["cross_core_steps_median_cycles"]
        if st:
            lines.append("  cross-core message, median cycles: send->push {send_to_push}, push->drain {push_to_drain}, "
                         "drain->switch {drain_to_switch}; message->receive {message_to_receive}".format(**st))
        for k, v in s["cross_core_latency_by_target_state"].items():
            lines.append(f"    target CPU {k} at the push: {v['count']} messages, median {v['median_cycles']} cycles to the receive")
        rt = s["round_trips"]
        if rt.get("count"):
            def fmt(d):
                return ("send->push {send_to_push}, push->drain {push_to_drain}, drain->switch {drain_to_switch}, "
                        "server {server}, reply->push {reply_to_push}, push->drain {reply_push_to_drain}, "
                        "drain->switch {reply_drain_to_switch}; total {total}").format(**d)
            lines.append(f"  cross-core round trips: {rt['count']} through both inboxes ({rt['with_a_halt']} with a halted CPU "
                         f"on the way), {rt['queued']} whose call waited in the endpoint's queue")
            lines.append("    all, median cycles: " + fmt(rt["median_cycles"]))
            if rt["no_halt"]["count"]:
                lines.append(f"    no halt on the way ({rt['no_halt']['count']}), median cycles: "
                             + fmt(rt["no_halt"]["median_cycles"]))
        return "\n".join(lines)


def nice_step(x):
    import math
    if x <= 0:
        return 1
    e = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * e >= x:
            return int(m * e) or 1
    return int(10 * e)


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---- the structure check ------------------------------------------------------------------------

REQUIRED = {"X": ("name", "ph", "ts", "dur", "pid", "tid"), "i": ("name", "ph", "ts", "pid", "tid", "s"),
            "s": ("name", "ph", "ts", "pid", "tid", "id", "cat"), "f": ("name", "ph", "ts", "pid", "tid", "id", "cat"),
            "M": ("name", "ph", "pid", "args")}


def check(doc, require_flows=False):
    """A list of problems (empty: the trace is well formed)."""
    bad = []
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        return ["not an object with a traceEvents list"]
    evs = doc["traceEvents"]
    procs, starts, ends = {}, defaultdict(list), defaultdict(list)
    for n, e in enumerate(evs):
        ph = e.get("ph")
        if ph not in REQUIRED:
            bad.append(f"event {n}: unknown phase {ph!r}")
            continue
        missing = [f for f in REQUIRED[ph] if f not in e]
        if missing:
            bad.append(f"event {n} ({ph}): missing {', '.join(missing)}")
            continue
        if not isinstance(e["pid"], int) or not isinstance(e.get("tid", 0), int):
            bad.append(f"event {n}: pid/tid not integers")
        if ph != "M" and not isinstance(e["ts"], (int, float)):
            bad.append(f"event {n}: ts not a number")
        if ph == "X" and (not isinstance(e["dur"], (int, float)) or e["dur"] < 0):
            bad.append(f"event {n}: bad duration")
        if ph == "M" and e["name"] == "process_name":
            procs[e["pid"]] = e["args"].get("name", "")
        if ph == "s":
            starts[(e["cat"], e["id"])].append(e)
        if ph == "f":
            ends[(e["cat"], e["id"])].append(e)
        if len(bad) > 20:
            break
    # Slices of one track must nest (Perfetto drops those that overlap partially).
    tracks = defaultdict(list)
    for e in evs:
        if e.get("ph") == "X" and isinstance(e.get("ts"), (int, float)) and isinstance(e.get("dur"), (int, float)):
            tracks[(e.get("pid"), e.get("tid"))].append((e["ts"], -e["dur"]))
    overlaps = 0
    for key, sl in tracks.items():
        sl.sort()
        stack = []
        for ts, nd in sl:
            end = ts - nd
            while stack and stack[-1] <= ts + 1e-6:
                stack.pop()
            if stack and end > stack[-1] + 1e-6:
                overlaps += 1
            stack.append(end)
    if overlaps:
        bad.append(f"{overlaps} slices overlap another slice of their track without nesting in it")
    rl4 = doc.get("otherData", {}).get("rl4", {})
    ncpu = rl4.get("cpus")
    cpu_tracks = sorted(n for n in procs.values() if re.fullmatch(r"CPU \d+", n))
    if ncpu is None:
        bad.append("otherData.rl4.cpus missing")
    elif len(cpu_tracks) != ncpu or len(set(cpu_tracks)) != ncpu:
        bad.append(f"{len(cpu_tracks)} CPU tracks for {ncpu} CPUs")
    for key, s in starts.items():
        if len(s) != 1 or len(ends.get(key, [])) != 1:
            bad.append(f"flow {key}: {len(s)} starts, {len(ends.get(key, []))} ends")
        elif ends[key][0]["ts"] < s[0]["ts"]:
            bad.append(f"flow {key} ends before it starts")
    for key in ends:
        if key not in starts:
            bad.append(f"flow {key}: an end without a start")
    unrec = rl4.get("cross_core_unreceived")
    if unrec is None:
        bad.append("otherData.rl4.cross_core_unreceived missing")
    elif unrec and require_flows:
        bad.append(f"{len(unrec)} cross-core messages without their receive, e.g. {unrec[0]}")
    if require_flows:
        cross = [k for k in starts if k[0] == "ipc-cross"]
        if not cross:
            bad.append("no cross-core flow at all")
        if rl4.get("cross_core_received", 0) != len(cross):
            bad.append(f"{len(cross)} cross-core flows for {rl4.get('cross_core_received')} received cross-core messages")
    return bad


# ---- the self-test on a made-up dump ---------------------------------------------------------------

def make_dump(hz, rings):
    """A dump in the kernel's format: rings {cpu: ([(tsc, kind, tid, a, b)], lost)}."""
    out = b"RL4TL001" + struct.pack("<QQ", hz, 0)
    for c, (evs, lost) in sorted(rings.items()):
        out += b"CPU_RING" + struct.pack("<QQQ", c, len(evs), lost)
        for tsc, kind, tid, a, b in evs:
            out += struct.pack("<QQQQ", tsc, K[kind] | c << 8 | tid << 16, a, b)
    return out + b"TL_END\0\0"


def selftest():
    ep = 0x1234 << 32
    # Client thread 7 on CPU 0 calls server thread 9 on CPU 1 (polling), which replies; then a
    # second call that finds CPU 1 halted (an IPI), and a queued send taken by a Recv.
    c0 = [(100, "switch", 0, 7, 0), (110, "sys_enter", 7, 28, 0), (120, "send", 7, ep | 9, 5),
          (130, "push", 7, 9, 1 | 1 << 8), (150, "idle", 0, 0, 0), (155, "poll_start", 0, 0, 0),
          (400, "drain", 0, 7, 0), (410, "switch", 0, 7, 0), (500, "sys_enter", 7, 28, 0),
          (510, "send", 7, ep | 9, 5), (520, "push", 7, 9, 1 | 2 << 8), (525, "ipi_send", 7, 1, 0x31),
          (530, "idle", 0, 0, 0), (540, "halt", 0, 0, 0), (900, "irq", 0, 0x31, 0), (905, "wake", 0, 0, 0),
          (906, "idle", 0, 0, 0), (910, "drain", 0, 7, 0), (920, "switch", 0, 7, 0), (930, "sys_exit", 7, 28, 0),
          (940, "sys_enter", 7, 26, 0), (950, "send", 7, ep, 5), (960, "idle", 0, 0, 0)]
    c1 = [(90, "idle", 0, 0, 0), (95, "poll_start", 0, 0, 0), (200, "drain", 0, 9, 0), (210, "switch", 0, 9, 0),
          (300, "sys_enter", 9, 30, 0), (310, "reply", 9, 7, 77), (320, "push", 9, 7, 0 | 1 << 8),
          (330, "idle", 0, 0, 0), (340, "halt", 0, 0, 0), (600, "irq", 0, 0x31, 0), (601, "wake", 0, 0, 0),
          (602, "idle", 0, 0, 0), (610, "drain", 0, 9, 0), (620, "switch", 0, 9, 0), (700, "sys_enter", 9, 30, 0),
          (710, "reply", 9, 7, 78), (720, "push", 9, 7, 0 | 2 << 8), (725, "ipi_send", 9, 0, 0x31),
          (730, "sys_enter", 9, 27, 0), (980, "recv", 9, ep | 7, 5), (990, "sys_exit", 9, 27, 0)]
    data = b"serial noise" + make_dump(1_000_000, {0: (c0, 0), 1: (c1, 3)})
    hz, rings, keep = parse_dump(data)
    assert hz == 1_000_000 and not keep and sorted(rings) == [0, 1], (hz, rings.keys())
    assert rings[1][1] == len(c1) and rings[1][2] == 3
    e = rings[0][0][2]
    assert (e.tsc, KINDS[e.kind], e.cpu, e.tid, e.a, e.b) == (120, "send", 0, 7, ep | 9, 5), e
    tl = Timeline(hz, rings, {28: "Call", 30: "ReplyRecv", 26: "Send", 27: "Recv"})
    msgs = tl.messages
    assert len(msgs) == 5, msgs
    assert [m["recv"].tsc for m in msgs] == [210, 410, 620, 920, 980], [m["recv"] for m in msgs]
    assert all(m["cross"] for m in msgs)
    doc = json.loads(json.dumps(tl.chrome("selftest")))
    problems = check(doc, require_flows=True)
    assert not problems, problems
    st = doc["otherData"]["rl4"]
    assert st["cross_core_messages"] == 5 and st["cross_core_received"] == 5, st
    rt = st["round_trips"]
    assert rt["count"] == 2 and rt["median_cycles"]["server"] == 95 and rt["median_cycles"]["push_to_drain"] == 80, rt
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    assert {"CPU 0", "CPU 1", "threads"} <= names, names
    assert any(e["ph"] == "X" and e["name"] == "Call" for e in doc["traceEvents"])
    assert any(e["ph"] == "X" and e["name"] == "halt" for e in doc["traceEvents"])
    svg = tl.svg("selftest")
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>") and "marker-end" in svg
    # A broken trace is refused: a flow end removed, a CPU track missing.
    broken = dict(doc, traceEvents=[e for e in doc["traceEvents"] if not (e["ph"] == "f" and e["id"] == 1)])
    assert any("flow" in p for p in check(broken)), check(broken)
    broken = dict(doc, traceEvents=[e for e in doc["traceEvents"] if not (e["ph"] == "M" and e["pid"] == 2)])
    assert any("CPU tracks" in p for p in check(broken)), check(broken)
    overlap = dict(doc, traceEvents=doc["traceEvents"] + [
        {"ph": "X", "name": "a", "pid": 1, "tid": 9, "ts": 0.0, "dur": 2.0},
        {"ph": "X", "name": "b", "pid": 1, "tid": 9, "ts": 1.0, "dur": 2.0}])
    assert any("overlap" in p for p in check(overlap)), check(overlap)
    # A cut dump is refused.
    try:
        parse_dump(data[:-40])
        raise AssertionError("a cut dump was accepted")
    except ValueError:
        pass
    print("trace.py selftest: ok (parse, match, 5 cross-core messages, 2 round trips, JSON check, SVG)")


def main(argv):
    if len(argv) >= 2 and argv[1] == "selftest":
        selftest()
        return 0
    if len(argv) >= 3 and argv[1] == "check":
        doc = json.load(open(argv[2]))
        problems = check(doc, require_flows="--require-flows" in argv)
        for p in problems:
            print(f"trace check: {p}")
        if problems:
            return 1
        st = doc["otherData"]["rl4"]
        n = sum(1 for e in doc["traceEvents"] if e["ph"] != "M")
        print(f"trace check: ok ({n} events, {st['cpus']} CPU tracks, {st['cross_core_received']} of "
              f"{st['cross_core_messages']} cross-core messages with their receive, "
              f"{st.get('cross_core_cut', 0)} whose receive fell outside a full ring)")
        if st["cross_core_unreceived"]:
            print(f"trace check: note: {len(st['cross_core_unreceived'])} cross-core messages whose receiver never ran "
                  "again while its CPU recorded (killed, suspended or moved: fine in a fuzzer run; --require-flows "
                  "refuses them)")
        return 0
    if len(argv) >= 4 and argv[1] == "convert":
        dump, out = argv[2], argv[3]
        opts = dict(zip(argv[4::2], argv[5::2]))
        here = os.path.dirname(os.path.abspath(__file__))
        abi = opts.get("--abi", os.path.join(here, "..", "kernel", "abi", "src", "lib.rs"))
        hz, rings, keep_last = parse_dump(open(dump, "rb").read())
        tl = Timeline(hz, rings, syscall_names(abi), keep_last)
        title = opts.get("--title", "rl4 timeline")
        doc = tl.chrome(title)
        with open(out, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
        text = tl.summary()
        print(text)
        if "--summary" in opts:
            with open(opts["--summary"], "w") as f:
                f.write(text + "\n")
        if "--svg" in opts:
            pol = doc["otherData"]["rl4"]["round_trips"].get("no_halt", {})
            if pol and pol.get("median_cycles"):
                tl.stats_median = pol["median_cycles"]["total"]
            with open(opts["--svg"], "w") as f:
                f.write(tl.svg(title))
        return 0
    print(__doc__.strip().split("\n\n")[0])
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
