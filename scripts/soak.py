#!/usr/bin/env python3
"""Soak test: cvgate under mixed traffic for a bounded time (default 10 minutes), loopback only.

Started by scripts/soak.sh (which builds the release binary). Runs the mock CV API and
`cvgate serve` with the repo's config.yaml (ports moved to free ones, audit to a rotating file,
blocks persisted in a temp dir, a closure window placed in the middle of the run) and drives:

  legit      employers within their budgets, each from its own /24 (127.0.N.x), TLS and plain
  agency     the staffing-agency tier: searches and NDJSON exports
  anonymous  the vacancies route (not charged), as fast as it goes
  abusive    one account hammering size=200 searches (429s), one blocked by the admin API (403),
             one organisation spread over 10 accounts and 10 /24s (org budget), bad tokens (401)
  h2         h2load bursts over TLS/HTTP/2 every 60 s (when h2load is installed)
  idle       a separate process holding 10,000 idle connections (reopened when closed)
  reloads    every 30 s, alternately SIGHUP and POST /v1/reload, between two budgets; once a
             broken file, which must be refused (422) with traffic untouched
  closed     a closure window over the CV routes from 40 % to 60 % of the run (503 `closed`)

Every 10 s it samples the proxy's RSS, open fds and threads, and /metrics. At the end it prints a
Markdown report (paste into docs/soak.md) and exits 1 when a check fails: an unexpected 5xx
(anything but 503 `closed` while the window is open), a legit request refused, a bad reload
accepted, RSS growth over the last 80 % of the run above 25 %, or fds not back near the baseline.

Usage: scripts/soak.py --bin target/release/cvgate [--duration 600] [--idle 10000]
"""

import argparse
import collections
import datetime
import http.client
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zoneinfo

ADMIN_TOKEN = "soak-admin-token-0123456789abcdef"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"soak: nothing listens on port {port}")


def raise_fd_limit(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(n, hard)) if hard != resource.RLIM_INFINITY else max(soft, n)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- the idle-connection holder (a separate process: `soak.py idle`) -----------------------------

def idle_main(args):
    """Hold `count` idle connections to the plain port: each sends one request (keep-alive) and
    then says nothing. Closed ones are reopened (paced). Prints `open reopened` every 10 s."""
    limit = raise_fd_limit(args.count + 256)
    count = min(args.count, limit - 128)
    sel = selectors.DefaultSelector()
    req = b"GET /api/v1/vacancies/idle HTTP/1.1\r\nHost: soak\r\nConnection: keep-alive\r\n\r\n"
    socks = {}
    reopened = 0
    stop_at = time.monotonic() + args.seconds

    def open_one(i):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect_ex(("127.0.0.1", args.port))
        except OSError:
            s.close()
            return
        sel.register(s, selectors.EVENT_WRITE, i)
        socks[i] = (s, "connecting")

    # Opened (and reopened) at most 250 per 50 ms: each sends a request, and 10,000 at once would
    # be 10,000 requests in flight, over `max_inflight_requests` (shed with 503 by design).
    closed = set(range(count))
    last_report, last_reopen = 0.0, 0.0
    while time.monotonic() < stop_at:
        for key, ev in sel.select(timeout=0.05):
            s, i = key.fileobj, key.data
            state = socks[i][1]
            try:
                if state == "connecting" and ev & selectors.EVENT_WRITE:
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                        raise OSError("connect failed")
                    s.send(req)
                    sel.modify(s, selectors.EVENT_READ, i)
                    socks[i] = (s, "idle")
                elif ev & selectors.EVENT_READ:
                    if not s.recv(65536):  # the server closed it
                        raise OSError("closed")
            except OSError:
                sel.unregister(s)
                s.close()
                del socks[i]
                closed.add(i)
        now = time.monotonic()
        if closed and now - last_reopen > 0.05:
            for i in sorted(closed)[:250]:
                open_one(i)
                closed.discard(i)
                reopened += 1
            last_reopen = now
        if now - last_report > 10:
            print(f"{len(socks)} {max(0, reopened - count)}", flush=True)
            last_report = now
    for s, _ in socks.values():
        s.close()


# --- traffic -------------------------------------------------------------------------------------

class Tally:
    """Statuses per traffic class (and problem slug for 4xx/5xx), thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by = collections.Counter()
        self.unexpected = []

    def add(self, cls, status, slug, ok):
        with self.lock:
            self.by[(cls, status, slug)] += 1
            if not ok and len(self.unexpected) < 50:
                self.unexpected.append((time.strftime("%H:%M:%S"), cls, status, slug))


def slug_of(body):
    try:
        t = json.loads(body).get("type", "")
        return t.rsplit(":", 1)[-1]
    except (ValueError, AttributeError):
        return ""


class Client:
    """One keep-alive HTTP/1.1 connection (TLS or plain) from a chosen source address."""

    def __init__(self, port, tls, source, ctx):
        self.port, self.tls, self.source, self.ctx = port, tls, source, ctx
        self.conn = None

    def get(self, path, token=None, stream=False):
        for attempt in (0, 1):
            if self.conn is None:
                if self.tls:
                    self.conn = http.client.HTTPSConnection(
                        "127.0.0.1", self.port, timeout=30, context=self.ctx, source_address=(self.source, 0))
                else:
                    self.conn = http.client.HTTPConnection(
                        "127.0.0.1", self.port, timeout=30, source_address=(self.source, 0))
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            try:
                self.conn.request("GET", path, headers=headers)
                r = self.conn.getresponse()
                body = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status, body
            except (http.client.HTTPException, OSError):
                # A kept-alive connection the server closed between requests: retry once, fresh.
                if self.conn:
                    self.conn.close()
                self.conn = None
                if attempt:
                    return 0, b""
        return 0, b""


def in_window(state):
    lo, hi = state["closed_from"], state["closed_until"]
    now = time.time()
    # A few seconds of slack at both edges: the proxy and this script read the clock apart.
    return lo - 3 <= now <= hi + 3


def actor(state, cls, port, tls, source, token, paths, pause, expect):
    """Loop until the deadline: GET each path in turn, classify the answer, sleep `pause`."""
    c = Client(port, tls, source, state["ssl"])
    i = 0
    while time.time() < state["deadline"] and not state["stop"].is_set():
        path = paths[i % len(paths)]
        i += 1
        status, body = c.get(path, token)
        slug = slug_of(body) if status >= 400 else ""
        if status == 503 and slug == "closed":
            ok = in_window(state) and "/cvs" in path
        elif status >= 500 or status == 0:
            ok = False
        else:
            ok = expect(status, slug)
        state["tally"].add(cls, status, slug, ok)
        if pause:
            time.sleep(pause)


def mint(bin_path, cfg, account, org, ttl="2h", acr=None):
    cmd = [bin_path, "token", "--config", cfg, "--account", account, "--ttl", ttl]
    if org:
        cmd += ["--org", org]
    if acr:
        cmd += ["--acr", acr]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def admin(state, method, path, body=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{state['admin_port']}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metrics(state):
    with urllib.request.urlopen(f"http://127.0.0.1:{state['metrics_port']}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^(\w+)(\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def metric_sum(ms, name, **labels):
    total = 0.0
    for k, v in ms.items():
        if k == name or k.startswith(name + "{"):
            if all(f'{lk}="{lv}"' in k for lk, lv in labels.items()):
                total += v
    return total


def socket_kinds(pid, ports):
    """The process's sockets by what they are: client connections (to the proxy's ports),
    upstream connections (to the mock), listeners, other."""
    inodes = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = open(f"/proc/net/{name}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, remote, st, inode = int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16), f[3], f[9]
            if st == "0A":
                inodes[inode] = "listening"
            elif remote == ports["mock"]:
                inodes[inode] = "upstream"
            elif local in (ports["plain"], ports["tls"]):
                inodes[inode] = "client"
            else:
                inodes[inode] = "other tcp"
    kinds = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            kinds[inodes.get(target[8:-1], "other socket")] += 1
        elif target.startswith("/"):
            kinds["file"] += 1
        else:
            kinds[target.split(":")[0]] += 1
    return kinds


def proc_sample(pid):
    with open(f"/proc/{pid}/status") as f:
        st = dict(line.split(":", 1) for line in f if ":" in line)
    kb = lambda k: int(st[k].split()[0])  # noqa: E731
    return {"rss_kb": kb("VmRSS"), "hwm_kb": kb("VmHWM"), "threads": int(st["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def fmt_kinds(k):
    return ", ".join(f"{v} {n}" for n, v in sorted(k.items()))


# --- config --------------------------------------------------------------------------------------

def soak_config(src, ports, work, closed_from, closed_until, account_hour):
    ams = zoneinfo.ZoneInfo("Europe/Amsterdam")
    start = datetime.datetime.fromtimestamp(closed_from, ams).strftime("%H:%M")
    end = datetime.datetime.fromtimestamp(closed_until, ams).strftime("%H:%M")
    text = open(src).read()
    subs = [
        (r'addr: "127\.0\.0\.1:8443"', f'addr: "127.0.0.1:{ports["tls"]}"'),
        (r'(?m)^  plain: .*$', f'  plain: "127.0.0.1:{ports["plain"]}"'),
        (r'(?m)^  metrics: .*$', f'  metrics: "127.0.0.1:{ports["metrics"]}"'),
        (r'(?m)^  admin: .*$', f'  admin: "127.0.0.1:{ports["admin"]}"'),
        (r'url: "http://127\.0\.0\.1:8081"', f'url: "http://127.0.0.1:{ports["mock"]}"'),
        (r'(?m)^  max_connections: \d+', "  max_connections: 20000"),
        (r'start: "23:00"', f'start: "{start}"'),
        (r'end: "07:00"', f'end: "{end}"'),
        (r'(?m)^  sink: stdout ', "  sink: file   "),
        (r'(?m)^  path: null ', f'  path: "{work}/audit.log" '),
        (r'max_bytes: 268435456', "max_bytes: 8388608"),
        (r'max_files: 30 ', "max_files: 3  "),
        (r'hour:  \{ budget: 1000, window: 1h \}', f"hour:  {{ budget: {account_hour}, window: 1h }}"),
        (r'(?m)^  file: state/blocks\.json ', f'  file: "{work}/blocks.json" '),
    ]
    for pat, rep in subs:
        text, n = re.subn(pat, rep, text, count=1)
        if n != 1:
            raise SystemExit(f"soak: config.yaml no longer has {pat!r}")
    return text


# --- main ----------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd")
    idle = sub.add_parser("idle")
    idle.add_argument("--port", type=int, required=True)
    idle.add_argument("--count", type=int, default=10000)
    idle.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--bin", default=os.path.join(REPO, "target/release/cvgate"))
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--idle", type=int, default=10000)
    args = ap.parse_args()
    if args.cmd == "idle":
        return idle_main(args)

    raise_fd_limit(args.idle + 4096)
    work = tempfile.mkdtemp(prefix="cvgate-soak.")
    ports = {k: free_port() for k in ("tls", "plain", "metrics", "admin", "mock")}
    t0 = time.time()
    dur = args.duration
    closed_from, closed_until = t0 + 0.4 * dur, t0 + 0.6 * dur
    # Closure windows are whole minutes: round the edges to them (the report shows the real ones).
    closed_from = (closed_from // 60 + 1) * 60
    closed_until = max(closed_from + 60, (closed_until // 60) * 60)
    cfg_path = os.path.join(work, "cvgate.yaml")
    variants = [soak_config(os.path.join(REPO, "config.yaml"), ports, work, closed_from, closed_until, h)
                for h in (1000, 1200)]
    open(cfg_path, "w").write(variants[0])
    subprocess.run([args.bin, "check-config", "--config", cfg_path], check=True, capture_output=True)

    procs = []
    env = dict(os.environ, CVGATE_LOG="warn", CVGATE_ADMIN_TOKEN=ADMIN_TOKEN)
    mock = subprocess.Popen([args.bin, "mock-cv-api", "--listen", f"127.0.0.1:{ports['mock']}"],
                            stderr=open(f"{work}/mock.log", "w"))
    procs.append(mock)
    wait_port(ports["mock"])
    proxy = subprocess.Popen([args.bin, "serve", "--config", cfg_path], env=env,
                             stderr=open(f"{work}/cvgate.log", "w"))
    procs.append(proxy)
    wait_port(ports["plain"])
    wait_port(ports["tls"])

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the self-signed localhost certificate of config.yaml
    state = {"deadline": t0 + dur, "stop": threading.Event(), "tally": Tally(), "ssl": ctx,
             "closed_from": closed_from, "closed_until": closed_until,
             "admin_port": ports["admin"], "metrics_port": ports["metrics"]}

    def ok_2xx(status, slug):
        return 200 <= status < 300

    def ok_abuse(status, slug):
        return status == 200 or status in (403, 429)

    def ok_401(status, slug):
        return status == 401

    threads = []

    def spawn(*a):
        t = threading.Thread(target=actor, args=(state,) + a, daemon=True)
        t.start()
        threads.append(t)

    # legit: 12 employers, one /24 each, alternately TLS and plain, ~2 CVs/s each (well inside
    # account hour 1000 + refill over 10 minutes; org and ip budgets are per employer).
    for n in range(12):
        tok = mint(args.bin, cfg_path, f"legit-{n}", f"{10000000 + n}")
        port, tls = (ports["tls"], True) if n % 2 else (ports["plain"], False)
        spawn("legit", port, tls, f"127.0.{10 + n}.1", tok,
              [f"/api/v1/cvs?query=legit{n}&size=2", "/api/v1/cvs/cv-0000042", "/api/v1/vacancies/x"],
              1.0, ok_2xx)
    # agency: the staffing-agency tier (org 87654321), searches of 20 and exports of 50: ~12 CVs/s
    # per recruiter, inside the tier's account hour (10,000 + refill) over 10 minutes.
    for n in range(2):
        tok = mint(args.bin, cfg_path, f"agency-{n}", "87654321")
        spawn("agency", ports["plain"], False, f"127.0.{30 + n}.1", tok,
              [f"/api/v1/cvs?query=agency{n}&size=20", f"/api/v1/cvs/export?limit=50&query=agency{n}"],
              3.0, ok_2xx)
    # anonymous: vacancies as fast as they go (not charged, never closed).
    for n in range(3):
        spawn("anonymous", ports["plain"] if n else ports["tls"], n == 0, "127.0.40.1", None,
              [f"/api/v1/vacancies/{n}"], 0, ok_2xx)
    # abusive: a scraper at full speed, and one organisation over 10 accounts and 10 /24s.
    spawn("abusive", ports["plain"], False, "127.0.50.1", mint(args.bin, cfg_path, "scraper", "66666666"),
          ["/api/v1/cvs?query=all&size=200"], 0, ok_abuse)
    for n in range(10):
        spawn("abusive", ports["plain"], False, f"127.0.{60 + n}.1",
              mint(args.bin, cfg_path, f"spread-{n}", "77777777"),
              ["/api/v1/cvs?query=spread&size=200"], 0.05, ok_abuse)
    blocked_tok = mint(args.bin, cfg_path, "to-be-blocked", "88888888")
    spawn("abusive", ports["tls"], True, "127.0.80.1", blocked_tok, ["/api/v1/cvs?query=x&size=5"], 0.2, ok_abuse)
    # bad tokens: garbage, expired, wrong assurance level → 401/403, never a 5xx.
    expired = mint(args.bin, cfg_path, "old", "12121212", ttl="1s")
    loa2 = mint(args.bin, cfg_path, "weak", "13131313", acr="urn:etoegang:core:assurance-class:loa2")
    spawn("bad-token", ports["plain"], False, "127.0.90.1", "not.a.token", ["/api/v1/cvs?size=1"], 0.05, ok_401)
    # (expired once its minute and the 30 s leeway have passed)
    spawn("bad-token", ports["tls"], True, "127.0.90.2", expired, ["/api/v1/cvs?size=1"], 0.05,
          lambda s, slug: s == 401 or (s == 200 and time.time() - t0 < 45))
    spawn("bad-token", ports["plain"], False, "127.0.90.3", loa2, ["/api/v1/cvs?size=1"], 0.05,
          lambda s, slug: s in (401, 403))

    # idle connections from a separate process
    holder = subprocess.Popen([sys.executable, os.path.abspath(__file__), "idle", "--port", str(ports["plain"]),
                               "--count", str(args.idle), "--seconds", str(dur - 20)],
                              stdout=subprocess.PIPE, text=True)
    procs.append(holder)
    holder_last = {"line": "0 0"}

    def read_holder():
        for line in holder.stdout:
            holder_last["line"] = line.strip()
    threading.Thread(target=read_holder, daemon=True).start()

    # h2 bursts
    h2load = shutil.which("h2load")
    h2_results = []
    agency_tok = mint(args.bin, cfg_path, "agency-h2", "87654321")

    def h2_bursts():
        while time.time() < state["deadline"] - 30 and not state["stop"].is_set():
            time.sleep(60)
            if not h2load:
                return
            out = subprocess.run([h2load, "-n", "3000", "-c", "8", "-m", "8", "-H", f"Authorization: Bearer {agency_tok}",
                                  f"https://127.0.0.1:{ports['tls']}/api/v1/vacancies/h2"],
                                 capture_output=True, text=True, timeout=120).stdout
            m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
            if m:
                h2_results.append(tuple(int(x) for x in m.groups()))
                state["tally"].add("h2", 200, "", True)
                if int(m.group(4)):
                    state["tally"].add("h2", 500, "h2load 5xx", False)
    threading.Thread(target=h2_bursts, daemon=True).start()

    # reloads every 30 s; the manual block at 20 %; one broken file at 50 %
    reloads = collections.Counter()
    events = []

    def reloader():
        k = 0
        blocked = broken = False
        while time.time() < state["deadline"] - 15 and not state["stop"].is_set():
            time.sleep(30 if k else 30 - (time.time() - t0) % 30)
            k += 1
            now = time.time() - t0
            if not blocked and now > 0.2 * dur:
                st, _ = admin(state, "POST", "/v1/blocks",
                              {"scope": "account", "key": "to-be-blocked", "reason": "soak", "duration": "1h"})
                events.append(f"{now:.0f}s: admin block of `to-be-blocked` → {st}")
                blocked = True
            if not broken and now > 0.5 * dur:
                open(cfg_path, "w").write(variants[0] + "\nquota: [broken\n")
                st, _ = admin(state, "POST", "/v1/reload")
                reloads[f"broken file → {st}"] += 1
                events.append(f"{now:.0f}s: reload of a broken file → {st}")
                broken = True
            open(cfg_path, "w").write(variants[k % 2])
            if k % 2:
                proxy.send_signal(signal.SIGHUP)
                reloads["SIGHUP"] += 1
            else:
                st, _ = admin(state, "POST", "/v1/reload")
                reloads[f"POST /v1/reload → {st}"] += 1
    threading.Thread(target=reloader, daemon=True).start()

    # samples every 10 s
    samples = []
    base = proc_sample(proxy.pid)
    base_kinds = socket_kinds(proxy.pid, ports)
    print(f"soak: {dur:.0f} s, work dir {work}; closure window "
          f"{time.strftime('%H:%M:%S', time.localtime(closed_from))}–"
          f"{time.strftime('%H:%M:%S', time.localtime(closed_until))}", file=sys.stderr)
    while time.time() < state["deadline"]:
        time.sleep(min(10, max(0, state["deadline"] - time.time())))
        s = proc_sample(proxy.pid)
        ms = metrics(state)
        s["t"] = time.time() - t0
        s["conns"] = metric_sum(ms, "cvgate_connections_active")
        s["requests"] = metric_sum(ms, "cvgate_requests_total")
        s["holder"] = holder_last["line"]
        samples.append(s)
        print(f"soak: t={s['t']:.0f}s rss={s['rss_kb'] // 1024} MiB fds={s['fds']} conns={s['conns']:.0f} "
              f"requests={s['requests']:.0f} idle(open reopened)={s['holder']}", file=sys.stderr)

    state["stop"].set()
    for t in threads:
        t.join(timeout=40)
    holder.wait(timeout=60)
    # Keep-alive connections of the finished actors time out (header_read_timeout, 10 s), and so
    # do the idle upstream connections the load opened (pool_idle_timeout, 60 s).
    time.sleep(70)
    after = proc_sample(proxy.pid)
    after_kinds = socket_kinds(proxy.pid, ports)
    ms = metrics(state)
    proxy.send_signal(signal.SIGTERM)
    try:
        exit_code = proxy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proxy.kill()
        exit_code = "killed after 60 s"
    for p in procs:
        if p.poll() is None:
            p.kill()

    # --- report ---
    tally = state["tally"]
    total = sum(tally.by.values())
    unexpected = [u for u in tally.unexpected]
    legit_refused = sum(n for (c, st, _), n in tally.by.items() if c in ("legit", "agency", "anonymous")
                        and st in (401, 403, 429))
    early = [s for s in samples if s["t"] >= 0.2 * dur]
    rss_lo, rss_hi = early[0]["rss_kb"], max(s["rss_kb"] for s in early)
    rss_end = samples[-1]["rss_kb"]
    growth = (rss_end - rss_lo) / rss_lo
    # Idle upstream connections are pooled (up to pool_max_idle_per_host) and live until
    # pool_idle_timeout; everything else must be back to where it started.
    fd_ok = after["fds"] - after_kinds["upstream"] <= base["fds"] - base_kinds["upstream"] + 8 \
        and after_kinds["client"] <= 2
    bad_reload_refused = any(k.startswith("broken file → 422") for k in reloads)
    checks = [
        ("no unexpected 5xx (or transport error)", not unexpected),
        ("legit traffic never refused (401/403/429)", legit_refused == 0),
        ("the broken reload was refused with 422", bad_reload_refused),
        (f"RSS from 20 % to the end: {rss_lo // 1024} → {rss_end // 1024} MiB ({growth:+.0%}), max "
         f"{rss_hi // 1024} MiB; growth ≤ 25 %", growth <= 0.25),
        (f"fds: {base['fds']} at start ({fmt_kinds(base_kinds)}), {after['fds']} after the run "
         f"({fmt_kinds(after_kinds)}); besides pooled upstream connections ≤ start + 8, no client left",
         fd_ok),
        (f"SIGTERM: exit code {exit_code}", exit_code == 0),
    ]
    print(f"## Soak run, {time.strftime('%Y-%m-%d %H:%M', time.gmtime(t0))} UTC, {dur:.0f} s\n")
    print(f"Machine: {os.cpu_count()} CPUs, load average before the run "
          f"{' '.join(open('/proc/loadavg').read().split()[:3])}. {total} requests from the script's "
          f"actors, {metric_sum(ms, 'cvgate_requests_total'):.0f} counted by cvgate (with h2load bursts and "
          f"the idle holder's requests). Closure window "
          f"{time.strftime('%H:%M', time.localtime(closed_from))}–{time.strftime('%H:%M', time.localtime(closed_until))} "
          f"(local) over the CV routes.\n")
    print("| check | result |\n|---|---|")
    for name, ok in checks:
        print(f"| {name} | {'pass' if ok else '**FAIL**'} |")
    print("\n### Answers by traffic class\n\n| class | status | problem | count |\n|---|---:|---|---:|")
    for (c, st, slug), n in sorted(tally.by.items()):
        print(f"| {c} | {st} | {slug or '-'} | {n} |")
    if h2_results:
        ok2 = sum(r[0] for r in h2_results)
        print(f"\nh2load bursts over TLS/HTTP/2: {len(h2_results)} × 3000 requests, {ok2} 2xx, "
              f"{sum(r[3] for r in h2_results)} 5xx.")
    print("\nReloads: " + ", ".join(f"{k}: {v}" for k, v in sorted(reloads.items())) + ".")
    print(f"cvgate counted {metric_sum(ms, 'cvgate_config_reloads_total', result='ok'):.0f} good and "
          f"{metric_sum(ms, 'cvgate_config_reloads_total', result='failed'):.0f} failed reloads.")
    for e in events:
        print(f"- {e}")
    print("\n### Samples (every minute)\n\n| t | RSS MiB | fds | threads | connections | requests | "
          "idle holder: open, reopened |\n|---:|---:|---:|---:|---:|---:|---|")
    for s in samples:
        if int(s["t"]) % 60 < 10 or s is samples[-1]:
            print(f"| {s['t']:.0f} s | {s['rss_kb'] // 1024} | {s['fds']} | {s['threads']} | {s['conns']:.0f} | "
                  f"{s['requests']:.0f} | {s['holder']} |")
    print(f"\nAfter the run (actors and idle holder gone, 70 s later): fds {after['fds']}, RSS "
          f"{after['rss_kb'] // 1024} MiB, peak RSS (VmHWM) {after['hwm_kb'] // 1024} MiB.")
    if unexpected:
        print("\nUnexpected answers (first 50):\n")
        for u in unexpected:
            print(f"- {u}")
    print(f"\nLogs and the audit files: `{work}`. Reproduce: `scripts/soak.sh` (`DURATION=600 IDLE=10000`).")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main() or 0)
