#!/usr/bin/env bash
# User-space instructions per request (issue 21), deterministic where wall-clock CPU time on a
# shared VM is not: valgrind --tool=callgrind counts every instruction the proxy process executes
# (all its threads), nothing of the kernel's.
#
#   1. the floor: examples/bare_proxy.rs (the same engine as cvgate, no policy),
#   2. cvgate with the full policy: benches/e2e-config.yaml rendered as benches/e2e.sh renders it
#      (HS256 JWT, 12 quota buckets over five scopes, closure window checked, blocks checked,
#      masking checked and never triggered, metrics, audit line to a file), memory store,
# each under callgrind on its own core in front of the mock CV API (natively, on the other
# core), loaded with the 20-CV search page `GET /api/v1/cvs?query=bench&size=20` by
# benches/callgrind.py: WARMUP requests, then `callgrind_control --zero`, then exactly REQUESTS
# requests over CONNS keep-alive connections, then `callgrind_control --dump` — the dump holds the
# measured requests only (and whatever timers ran meanwhile: housekeeping, reported apart).
# Instructions per request = the dump's total Ir ÷ REQUESTS. For cvgate the dump is also split
# into the phases of proxy.rs's story by `benches/callgrind.py report`: a phase is bounded by the
# functions in src/ that run it, its cost is every call into them (inclusive), and a phase nested
# in another is subtracted from its parent so that the rows add up to the total; each phase comes
# with its heaviest functions by self cost. (The dump is read directly, with mangled names, rather
# than through callgrind_annotate, whose inclusive view splits a function by the source files
# inlined into it and whose demangled names merge distinct closures.)
#
# valgrind's virtual CPU has no SHA extensions: the token cache's SHA-256 runs in software there
# (sha2's soft backend), so its cost is shown on its own line; on a CPU with SHA-NI it is ~20×
# smaller.
#
# Usage: benches/callgrind.sh      (installs valgrind, curl, openssl, binutils if missing; builds --release)
# Takes about a minute besides the build (callgrind runs the proxies ~50× slower).
# Knobs: REQUESTS=3000 WARMUP=200 CONNS=4 PROXY_CPU=1 LOAD_CPU=0 DEADLINE=600 (seconds per load run)
# Output: a Markdown report on stdout; the callgrind dumps and annotations in a temp dir (kept).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-3000}
WARMUP=${WARMUP:-200}
CONNS=${CONNS:-4}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
DEADLINE=${DEADLINE:-600}
URL_PATH='/api/v1/cvs?query=bench&size=20'

log() { echo "callgrind: $*" >&2; }
. scripts/lib.sh

# --- tools --------------------------------------------------------------------------------------
need=()
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v c++filt >/dev/null 2>&1 && command -v objdump >/dev/null 2>&1 || need+=(binutils)
apt_install "${need[@]}"
for t in callgrind_control callgrind_annotate vgdb; do
  command -v "$t" >/dev/null 2>&1 || { log "$t missing (it comes with valgrind)"; exit 1; }
done

log "cargo build --release (cvgate and examples/bare_proxy)"
cargo build --release --quiet --bin cvgate --example bare_proxy
BIN="${CARGO_TARGET_DIR:-target}/release/cvgate"
BARE="${CARGO_TARGET_DIR:-target}/release/examples/bare_proxy"
# valgrind runs copies: another build replacing the binaries mid-run cannot change what is measured.
WORK=$(mktemp -d /tmp/cvgate-callgrind.XXXXXX)
trap cleanup EXIT
cp "$BIN" "$WORK/cvgate"; cp "$BARE" "$WORK/bare_proxy"
BIN="$WORK/cvgate"; BARE="$WORK/bare_proxy"
REV="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock examples || echo ' + uncommitted changes')"

MOCK_PORT=$(free_port); BARE_PORT=$(free_port)
PLAIN_PORT=$(free_port); TLS_PORT=$(free_port); METRICS_PORT=$(free_port)

# --- upstream (native, on the load core) --------------------------------------------------------
taskset -c "$LOAD_CPU" "$BIN" mock-cv-api --listen "127.0.0.1:$MOCK_PORT" 2>"$WORK/mock.log" &
PIDS+=($!)
wait_port "$MOCK_PORT"
PAGE_BYTES=$(curl -s --max-time 30 "http://127.0.0.1:$MOCK_PORT$URL_PATH" | wc -c)

# --- cvgate's config, as benches/e2e.sh renders it ----------------------------------------------
bench_cert "$WORK"
bench_config "$WORK/cvgate.yaml" "$MOCK_PORT" "$PLAIN_PORT" "$TLS_PORT" "$METRICS_PORT" "$WORK/audit.log"
"$BIN" check-config --config "$WORK/cvgate.yaml" >/dev/null
TOKEN=$("$BIN" token --config "$WORK/cvgate.yaml" --account bench-account --org 12345678 --ttl 2h 2>/dev/null)

# wait_long PORT SECONDS: until something listens on 127.0.0.1:PORT (valgrind starts slowly).
wait_long() {
  local end=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$end" ]; do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.2
  done
  log "nothing listens on port $1 after $2 s"; return 1
}

# load PORT COUNT: COUNT requests over CONNS connections, bounded by DEADLINE; "ok failed secs".
load() {
  taskset -c "$LOAD_CPU" python3 benches/callgrind.py load "$1" "$URL_PATH" "$2" "$CONNS" "$DEADLINE" "$TOKEN"
}

# measure NAME PORT CMD...: CMD under callgrind on PROXY_CPU; WARMUP requests, zero, REQUESTS
# requests, dump to $WORK/NAME.out, stop. Sets MEASURED_SECS.
measure() {
  local name=$1 port=$2 pid res dumps
  shift 2
  log "$name: starting under callgrind"
  CVGATE_LOG=warn taskset -c "$PROXY_CPU" valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.%p" \
    --vgdb=yes --demangle=no "$@" 2>"$WORK/$name.valgrind.log" &
  pid=$!
  PIDS+=("$pid")
  wait_long "$port" 120
  if [ "$name" = cvgate ]; then
    # The policy is on: no token, no CVs; with it, 200 and the quota's RateLimit headers.
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 60 "http://127.0.0.1:$port$URL_PATH")" = 401 ] ||
      { log "cvgate answered a request without a token with something else than 401"; exit 1; }
    curl -s -D - -o /dev/null --max-time 60 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port$URL_PATH" |
      grep -qi '^ratelimit' || { log "cvgate's answer has no RateLimit header"; exit 1; }
  fi
  log "$name: $WARMUP warm-up requests"
  res=$(load "$port" "$WARMUP") || { log "$name: warm-up failed: $res"; exit 1; }
  sleep 1   # the audit writer drains the warm-up's lines
  callgrind_control --zero "$pid" >"$WORK/$name.control.log" 2>&1
  log "$name: $REQUESTS measured requests over $CONNS connections"
  res=$(load "$port" "$REQUESTS") || { log "$name: measured run failed: $res"; exit 1; }
  MEASURED_SECS=${res##* }
  sleep 1   # the audit writer drains its queue (it flushes after 2 ms idle)
  callgrind_control --dump=measured "$pid" >>"$WORK/$name.control.log" 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  dumps=("$WORK/$name.$pid".*)   # NAME.PID.1: the dump asked for (NAME.PID: the rest, at exit)
  [ -e "${dumps[0]}" ] || { log "$name: no callgrind dump"; exit 1; }
  mv "${dumps[0]}" "$WORK/$name.out"
  log "$name: measured in ${MEASURED_SECS}s, dump $WORK/$name.out"
}


LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
measure floor "$BARE_PORT" "$BARE" "127.0.0.1:$BARE_PORT" "127.0.0.1:$MOCK_PORT"
FLOOR_SECS=$MEASURED_SECS
measure cvgate "$PLAIN_PORT" "$BIN" serve --config "$WORK/cvgate.yaml"
CVGATE_SECS=$MEASURED_SECS
AUDIT_LINES=$(wc -l <"$WORK/audit.log")
[ "$AUDIT_LINES" -eq $((WARMUP + REQUESTS + 2)) ] ||
  log "cvgate wrote $AUDIT_LINES audit lines for $((WARMUP + REQUESTS + 2)) requests (2 checks, warm-up, measured)"

# For the humans: callgrind's own view of the dumps (names demangled).
for n in floor cvgate; do
  callgrind_annotate --inclusive=yes --threshold=100 "$WORK/$n.out" 2>/dev/null | c++filt >"$WORK/$n.inclusive.txt"
  callgrind_annotate --inclusive=no --threshold=100 "$WORK/$n.out" 2>/dev/null | c++filt >"$WORK/$n.self.txt"
done

# SHA-NI's cost per 64-byte block: the instructions of sha2's SHA-NI routine (one block unrolled,
# its loop and set-up), which valgrind cannot run.
read -r SHA_ADDR SHA_SIZE < <(nm -S "$BIN" | awk '/sha256.*x86.*digest_blocks/ {print $1, $2; exit}')
SHANI=$(objdump -d --no-show-raw-insn --start-address=$((16#$SHA_ADDR)) --stop-address=$((16#$SHA_ADDR + 16#$SHA_SIZE)) "$BIN" |
  grep -cE '^ *[0-9a-f]+:')

REPORT=$(python3 benches/callgrind.py report "$WORK/floor.out" "$WORK/cvgate.out" "$REQUESTS" "${#TOKEN}" "$SHANI")

cat <<EOF
## Instructions per request, per phase (callgrind), $(date -u '+%Y-%m-%d %H:%M') UTC

\`REQUESTS=$REQUESTS WARMUP=$WARMUP CONNS=$CONNS benches/callgrind.sh\` on $REV; $(valgrind --version), the proxy under
callgrind on CPU $PROXY_CPU, the mock CV API and the load loop on CPU $LOAD_CPU ($(nproc) CPUs,
$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), load average $LOAD_BEFORE before). Per proxy:
$WARMUP warm-up requests, counters zeroed, then $REQUESTS requests \`GET $URL_PATH\` (20 CVs, $PAGE_BYTES bytes of JSON)
over $CONNS keep-alive connections (${FLOOR_SECS} s for the floor, ${CVGATE_SECS} s for cvgate under callgrind), dumped; every
answer 200; cvgate wrote $AUDIT_LINES audit lines. User-space instructions of the whole process (all threads) ÷ $REQUESTS.

$REPORT
EOF
