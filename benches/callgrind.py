#!/usr/bin/env python3
"""Helpers for benches/callgrind.sh.

load PORT PATH COUNT CONNS DEADLINE_S [BEARER_TOKEN]
    A bounded load loop: exactly COUNT GET requests to 127.0.0.1:PORT, spread over CONNS
    keep-alive HTTP/1.1 connections (one thread each, sequential on each), each answer read to
    its end. Stops at the deadline whatever happens; exits non-zero if any request failed,
    answered other than 200, or the deadline passed. Prints "<ok> <failed> <seconds>".

report FLOOR_DUMP CVGATE_DUMP REQUESTS TOKEN_BYTES SHANI_INSTRUCTIONS_PER_BLOCK
    The Markdown report from two callgrind dumps (run with --demangle=no): instructions per
    request of each, cvgate's split into the phases of proxy.rs (PHASES below), the heaviest
    functions of each phase.

explore DUMP REGEX
    For finding phase boundaries: callers and callees of the functions whose demangled name
    matches, with inclusive costs.
"""
import http.client
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict


def load(args: list) -> int:
    port, path, count, conns, deadline_s = args[0], args[1], int(args[2]), int(args[3]), float(args[4])
    token = args[5] if len(args) > 5 else ""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + deadline_s
    ok, failed, lock = [0], [0], threading.Lock()
    # COUNT split over the connections, the remainder on the first ones: exactly COUNT in all.
    shares = [count // conns + (1 if i < count % conns else 0) for i in range(conns)]

    def worker(n: int) -> None:
        conn = None
        good = bad = 0
        for _ in range(n):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                bad += 1
                continue
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=min(remaining, 60))
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    good += 1
                else:
                    bad += 1
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                bad += 1
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()
        with lock:
            ok[0] += good
            failed[0] += bad

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in shares if n > 0]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 5)
    late = any(t.is_alive() for t in threads)
    secs = time.monotonic() - t0
    print(f"{ok[0]} {count - ok[0]} {secs:.1f}")
    return 1 if failed[0] or late or ok[0] != count else 0


class Profile:
    """A callgrind dump (one part, event Ir) of a run with `--demangle=no`: functions are keyed
    by their mangled symbol, so every monomorphised closure and generic stays apart (demangled,
    many share one name, e.g. `FnOnce::call_once{{vtable.shim}}`); recursion levels are merged
    (`f'2` is `f`). `display` holds the demangled names, which `match` searches."""

    def __init__(self, path: str) -> None:
        self.total = 0
        self.self_cost = defaultdict(int)  # function -> Ir executed in it
        self.self_by_file = defaultdict(int)  # (function, source file) -> Ir (inlined code's file)
        self.arcs = defaultdict(int)  # (caller, callee) -> inclusive Ir of those calls
        names = {"fl": {}, "fn": {}, "ob": {}}
        kinds = {"fl": "fl", "fi": "fl", "fe": "fl", "cfl": "fl", "cfi": "fl", "fn": "fn", "cfn": "fn", "ob": "ob", "cob": "ob"}

        def name(kind: str, rest: str) -> str:
            # "(id) name" defines, "(id)" refers, a bare name is itself.
            table = names[kinds[kind]]
            m = re.match(r"\((\d+)\)(?: (.*))?$", rest)
            if not m:
                return rest
            if m.group(2) is not None:
                table[m.group(1)] = m.group(2)
            return table.get(m.group(1), "?")

        fn = callee = None
        fl = cost_file = ""
        in_call = False
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line or line[0] == "#":
                    continue
                c = line[0]
                if c.isdigit() or c in "+-*":
                    parts = line.split()
                    ir = int(parts[1]) if len(parts) > 1 else 0
                    if in_call:
                        self.arcs[(fn, callee)] += ir
                        in_call = False
                    else:
                        self.self_cost[fn] += ir
                        self.self_by_file[(fn, cost_file)] += ir
                    continue
                key, _, rest = line.partition("=")
                if key == "fn":
                    fn = base(name("fn", rest))
                    cost_file = fl
                elif key == "fl":
                    fl = cost_file = name("fl", rest)
                elif key in ("fi", "fe"):
                    cost_file = name(key, rest)
                elif key in ("cfl", "cfi", "ob", "cob"):
                    name(key, rest)
                elif key == "cfn":
                    callee = base(name("cfn", rest))
                elif key == "calls":
                    in_call = True
                elif line.startswith("totals:") or line.startswith("summary:"):
                    self.total = max(self.total, int(line.split()[1]))
        self.display = demangle(self.self_cost.keys() | {f for arc in self.arcs for f in arc})
        # What enters each function from another one (recursion merged: f -> f'2 is inside f).
        self.inc = defaultdict(int)
        self.out = defaultdict(list)
        for (a, b), ir in self.arcs.items():
            if a != b:
                self.inc[b] += ir
                self.out[a].append((b, ir))

    def inclusive(self, members: set) -> int:
        """Ir spent inside a set of functions: every call into the set from outside it."""
        return sum(ir for (a, b), ir in self.arcs.items() if b in members and a not in members)

    def match(self, pattern: str) -> set:
        r = re.compile(pattern)
        return {f for f, d in self.display.items() if r.search(d)}

    def share_under(self, members: set) -> dict:
        """For every function, the share of its Ir spent below the set (the set's own: 1). Exact
        for the set's direct callees; deeper, a callee's calls are split in proportion to how
        much of it ran below the set (gprof's assumption), so the per-function lists are close
        but not exact, while `inclusive` is."""
        r = {f: 1.0 for f in members}
        for _ in range(60):
            acc = defaultdict(float)
            for a, share in r.items():
                if share <= 0:
                    continue
                for b, ir in self.out.get(a, ()):
                    if b not in members and self.inc[b] > 0:
                        acc[b] += ir * share / self.inc[b]
            new = {f: 1.0 for f in members}
            for b, v in acc.items():
                new[b] = min(1.0, v)
            if all(abs(new.get(k, 0) - r.get(k, 0)) < 1e-9 for k in new.keys() | r.keys()):
                break
            r = new
        return r

    def top_self(self, members: set, exclude: set, n: int) -> list:
        """The n functions with the most self Ir below the set, leaving out what runs below the
        functions of `exclude` (nested phases, listed on their own)."""
        r = self.share_under(members)
        x = self.share_under(exclude) if exclude else {}
        rows = []
        for f, share in r.items():
            s = share - x.get(f, 0.0) if f not in exclude else 0.0
            if s > 0:
                rows.append((self.self_cost.get(f, 0) * s, f))
        rows.sort(reverse=True)
        return rows[:n]


def base(fn: str) -> str:
    return re.sub(r"'\d+$", "", fn)


def demangle(symbols) -> dict:
    """Mangled symbol -> readable name (c++filt, one call), without the `::h<hash>` and `.llvm.N`
    suffixes."""
    symbols = sorted(s for s in symbols if s)
    out = subprocess.run(["c++filt"], input="\n".join(symbols) + "\n", capture_output=True, text=True, check=True).stdout
    names = out.split("\n")[: len(symbols)]
    clean = lambda d: re.sub(r"\[[0-9a-f]{16}\]", "", re.sub(r"(::h[0-9a-f]{16})?(\.llvm\.\d+)?$", "", d))  # noqa: E731
    return {s: clean(d) for s, d in zip(symbols, names)}


def explore(args: list) -> int:
    """explore DUMP PATTERN: callers and callees of the functions matching PATTERN."""
    p = Profile(args[0])
    print(f"total {p.total:,}")
    d = p.display
    for f in sorted(p.match(args[1]), key=lambda f: d[f]):
        print(f"== {d[f]} ({f[:60]}): self {p.self_cost.get(f, 0):,} inclusive {p.inc.get(f, 0):,}")
        for (a, b), ir in sorted(p.arcs.items(), key=lambda kv: -kv[1]):
            if b == f and a != f:
                print(f"   <- {ir:>13,} {d[a][:150]}")
        for b, ir in sorted(p.out.get(f, ()), key=lambda kv: -kv[1])[:25]:
            print(f"   -> {ir:>13,} {d[b][:150]}")
    return 0


# cvgate's request in proxy.rs's phases, as rows that add up to the whole: (key, label, the
# functions that bound it (regex on demangled names), parent). A phase's Ir is every call into
# its functions (inclusive); a parent's row is what is left of it after its children's, so
# nothing counts twice. "SHA" is sha2's and digest's functions plus their code inlined elsewhere.
PHASES = [
    ("sha", "admit › identity: SHA-256 of the token, the cache key (in software: valgrind's CPU has no SHA-NI)", "SHA", "identity"),
    ("identity", "admit › identity: the rest (`Identifier::identify`: header, cache lookup, claims)", r"^cvgate::policy::identity::Identifier::identify$", "admit"),
    ("check", "admit › checks: blocks, pause, closure window, paging (`decide::check`)", r"^cvgate::decide::check$", "admit"),
    ("admit", "admit › the rest: client IP, country, header and path checks, route (`proxy::admit`)", r"^cvgate::proxy::admit$", "handler"),
    ("resolve", "reserve › bucket keys (`quota::resolve`)", r"^cvgate::quota::resolve$", "reserve"),
    ("store", "reserve › the memory store: 12 buckets, all or nothing (`MemoryStore::reserve`)", r"^<cvgate::quota::memory::MemoryStore as cvgate::quota::store::QuotaStore>::reserve", "reserve"),
    ("reserve", "reserve › the rest: guard, probation, tier, cost (`decide::reserve`)", r"^cvgate::decide::reserve::\{\{closure\}\}$", "handler"),
    ("rewrite", "forward › request id, URI and hop-by-hop rewrite (`cvgate::forward::*`, `integrity::prepare_request`)", r"^cvgate::forward::|^cvgate::count::integrity::prepare_request$", "handler"),
    ("send", "forward › pooled client send (hyper-util's `Client::request`, as in the floor)", r"^hyper_util::client::legacy::client::Client<C,B>::(send_request|request)", "handler"),
    ("ratelimit", "respond › RateLimit headers (`quota::headers::ratelimit_headers`)", r"^cvgate::quota::headers::ratelimit_headers$", "respond"),
    ("respond", "respond › the rest of `Respond::wrap`: header rewrite, body layers", r"^cvgate::proxy::Respond::wrap$", "handler"),
    ("handler", "handler › the rest: judge, mask step, soft budget, context, timeout, latency metric (`proxy::handle`)", r"^cvgate::proxy::handle::\{\{closure\}\}$", None),
    ("count", "body › counting the page's records (`RecordCounter::feed`)", r"^cvgate::count::RecordCounter::feed$", "body"),
    ("finish", "body › settle + finish: metrics, guard, audit record queued (`Progress::end`)", r"^cvgate::count::Progress::end$", "body"),
    ("body", "body › the rest of `CountingBody::poll_frame`", r"^<cvgate::count::CountingBody<B> as http_body::Body>::poll_frame$", None),
    ("audit_ts", "audit thread › two timestamps formatted (jiff `strtime`)", r"^<jiff::fmt::strtime::Display as core::fmt::Display>::fmt$", "audit"),
    ("audit", "audit thread › the rest: the JSON line (serde_json), batched writes (`audit::write_loop`)", r"^cvgate::observe::audit::write_loop$", None),
    ("housekeeping", "housekeeping ticks (once a second)", r"^cvgate::ops::housekeeping::", None),
]
# Reported across the phases (already inside the rows above).
ACROSS = [
    ("Prometheus metrics (`prometheus::*`)", r"^<?prometheus::"),
    ("allocator (mimalloc: `mi_*`)", r"^_?mi_"),
    ("string formatting (`core::fmt::write`, `format!`)", r"^(core::fmt::write|alloc::fmt::format::format_inner)$"),
    ("`memcpy`", r"^__memcpy"),
]
SHA_FILE = re.compile(r"/(sha2|digest)-[0-9.]+/")


def short(fn: str, width: int = 90) -> str:
    fn = fn.replace("|", "\\|")
    return fn if len(fn) <= width else fn[: width - 1] + "…"


def report(args: list) -> int:
    """report FLOOR_DUMP CVGATE_DUMP REQUESTS TOKEN_BYTES SHANI_PER_BLOCK: the Markdown tables."""
    floor, cv = Profile(args[0]), Profile(args[1])
    n, token_bytes, shani = int(args[2]), int(args[3]), int(args[4])
    k = lambda ir: f"{ir / n / 1000:.1f} k"  # noqa: E731
    pct = lambda ir: f"{100 * ir / cv.total:.1f} %"  # noqa: E731
    labels = {key: label for key, label, _, _ in PHASES}

    members = {}
    for key, _, pattern, _ in PHASES:
        members[key] = cv.match(r"^(sha2|digest)::") if pattern == "SHA" else cv.match(pattern)
        if not members[key]:
            print(f"callgrind: no function matches {pattern} (phase {key}): renamed or inlined?", file=sys.stderr)
    inc = {key: cv.inclusive(m) if m else 0 for key, m in members.items()}
    # SHA-256 code inlined into its callers (callgrind files it under sha2's/digest's sources).
    inc["sha"] += sum(ir for (f, fl), ir in cv.self_by_file.items() if SHA_FILE.search(fl) and f not in members["sha"])
    children = defaultdict(list)
    for key, _, _, parent in PHASES:
        if parent:
            children[parent].append(key)
    own = {key: inc[key] - sum(inc[c] for c in children[key]) for key in inc}
    for key, ir in own.items():
        if ir < 0:
            print(f"callgrind: phase {key} is smaller than its nested phases: not nested as assumed", file=sys.stderr)
    roots = [key for key, _, _, parent in PHASES if parent is None]
    engine = cv.total - sum(inc[r] for r in roots)
    blocks = (token_bytes + 8) // 64 + 1
    sha_ni = blocks * shani * n

    print("| configuration | instructions / request |")
    print("|---|---:|")
    print(f"| floor: `examples/bare_proxy.rs` (same engine, no policy) | {k(floor.total)} |")
    print(f"| cvgate, full policy | **{k(cv.total)}** |")
    # Only while SHA-256 is on the request path (the token cache is keyed by SipHash since 7ebb34b).
    if inc["sha"] > n * 1000:
        print(f"| cvgate, full policy, SHA-256 as with SHA-NI (estimate, see below) | {k(cv.total - inc['sha'] + sha_ni)} |")
    print(f"| cvgate above the floor | {k(cv.total - floor.total)} |")
    print()
    print("| phase of cvgate's request (rows add up to the total) | instructions / request | share |")
    print("|---|---:|---:|")
    for key, label, _, _ in PHASES:
        print(f"| {label} | {k(own[key])} | {pct(own[key])} |")
    print(f"| engine: hyper server and client, tokio, outside the phases above | {k(engine)} | {pct(engine)} |")
    print(f"| **total** | **{k(cv.total)}** | 100 % |")
    print()
    print(f"Inclusive: the request handler {k(inc['handler'])} (admit {k(inc['admit'])}, identity {k(inc['identity'])}, "
          f"reserve {k(inc['reserve'])}, respond {k(inc['respond'])}), the body {k(inc['body'])}, "
          f"the audit thread {k(inc['audit'])}. SHA-256: the bench's token is {token_bytes} bytes, {blocks} blocks of 64, "
          f"{k(inc['sha'])} in software here; with SHA-NI ~{blocks * shani} instructions "
          f"(`sha2::sha256::x86::digest_blocks`, one block unrolled with its loop, is {shani} instructions).")
    print()
    print("Across the phases (inside the rows above), cvgate against the floor:")
    print()
    for label, pattern in ACROSS:
        print(f"- {label}: {k(cv.inclusive(cv.match(pattern)))} against {k(floor.inclusive(floor.match(pattern)))}")
    print()
    print("Heaviest functions by self cost in each phase, largest phase first (instructions / request;")
    print("deeper than a phase's own callees, a shared function's cost is split in proportion, as")
    print("gprof does: close, not exact):")
    print()
    for ir, key in sorted(((own[key], key) for key in own if key != "sha"), reverse=True):
        if ir / n < 1000:
            continue
        sub = set().union(*(members[c] for c in children[key])) if children[key] else set()
        rows = cv.top_self(members[key], sub, 6)
        listed = ", ".join(f"`{short(cv.display[f])}` {c / n / 1000:.1f} k" for c, f in rows if c / n >= 50)
        print(f"- {labels[key]}, {k(ir)}: {listed}")
    r = cv.share_under(set().union(*(members[key] for key in roots)))
    rows = sorted(((c * (1 - r.get(f, 0.0)), f) for f, c in cv.self_cost.items()), reverse=True)[:8]
    print(f"- engine, {k(engine)}: " + ", ".join(f"`{short(cv.display[f])}` {c / n / 1000:.1f} k" for c, f in rows))
    rows = sorted(((c, f) for f, c in floor.self_cost.items()), reverse=True)[:8]
    print(f"- the floor, whole, {k(floor.total)}: " + ", ".join(f"`{short(floor.display[f])}` {c / n / 1000:.1f} k" for c, f in rows))
    return 0


def main() -> int:
    commands = {"load": load, "explore": explore, "report": report}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
