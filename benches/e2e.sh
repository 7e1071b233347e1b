#!/usr/bin/env bash
# End-to-end benchmark, one run on one machine, loopback only:
#   1. the mock CV API directly (the ceiling),
#   2. nginx as a plain reverse proxy (Debian's nginx, generated config, one process),
#   3. cvgate with the full policy (JWT + every quota scope + closure + blocks + metrics + audit),
#   4. the floor: examples/bare_proxy.rs, the same engine as cvgate (tokio, hyper server,
#      hyper-util pooled client) with no policy at all,
#   5. cvgate with the same policy and contact-data masking active (`masking.always: true`: every
#      CV of every page rewritten in the stream), beside row 3 where masking is checked on every
#      request but never triggers: the cost of masking itself,
#   6. cvgate with the same policy in front of a second mock that gzips every answer whatever it
#      is asked (`mock-cv-api --force-encoding gzip`): cvgate asks for identity, gets gzip, decodes
#      it to count the records and forwards the plain bytes (its own process, ports and audit file),
# all over plain HTTP/1.1 with wrk, then cvgate (and nginx) over TLS with HTTP/2 (h2load), then a
# 1 GiB NDJSON export through a fresh cvgate with the proxy's peak RSS, once from the plain mock
# and once from the gzip mock (decoding on the way).
#
# The proxy under test is pinned to one core (taskset -c $PROXY_CPU), the load generator and the
# upstream(s) share the other ($LOAD_CPU). Besides req/s and latency the script reports the proxy
# process's CPU time per request (utime+stime from /proc/PID/stat, before/after, ÷ requests):
# the fair figure when the load generator, not the proxy, is the bottleneck.
#
# Usage: benches/e2e.sh            (installs nginx, wrk, nghttp2-client if missing; builds --release)
# Knobs: DURATION=10 CONNS=32 ROUNDS=3 PROXY_CPU=1 LOAD_CPU=0 EXPORT_MIB=1024
# Each path is measured ROUNDS times, the paths interleaved round by round so that they all see
# the same machine noise; a row is the round with the median CPU µs/request, with the range.
# Output: a Markdown report on stdout (paste into docs/BENCHMARKS.md); logs in a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-3}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
EXPORT_MIB=${EXPORT_MIB:-1024}
# A search page of 20 CVs (~7.5 KB of JSON): counted by the proxy record by record.
URL_PATH='/api/v1/cvs?query=bench&size=20'

log() { echo "e2e: $*" >&2; }
. scripts/lib.sh

# --- tools --------------------------------------------------------------------------------------
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
apt_install "${need[@]}"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

log "cargo build --release (cvgate and examples/bare_proxy)"
cargo build --release --quiet --bin cvgate --example bare_proxy
BIN="${CARGO_TARGET_DIR:-target}/release/cvgate"
BARE="${CARGO_TARGET_DIR:-target}/release/examples/bare_proxy"

# --- scratch dir, processes, cleanup ------------------------------------------------------------
WORK=$(mktemp -d /tmp/cvgate-e2e.XXXXXX)
trap cleanup EXIT

# utime+stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

MOCK_PORT=$(free_port); NGINX_PORT=$(free_port); NGINX_TLS_PORT=$(free_port)
PLAIN_PORT=$(free_port); TLS_PORT=$(free_port); METRICS_PORT=$(free_port); BARE_PORT=$(free_port)
# The gzip upstream and the cvgate in front of it.
GZ_MOCK_PORT=$(free_port); GZ_PLAIN_PORT=$(free_port); GZ_TLS_PORT=$(free_port); GZ_METRICS_PORT=$(free_port)
# The cvgate that masks every CV (same upstream as the plain cvgate).
MK_PLAIN_PORT=$(free_port); MK_TLS_PORT=$(free_port); MK_METRICS_PORT=$(free_port)

# --- upstream -----------------------------------------------------------------------------------
taskset -c "$LOAD_CPU" "$BIN" mock-cv-api --listen "127.0.0.1:$MOCK_PORT" 2>"$WORK/mock.log" &
PIDS+=($!)
wait_port "$MOCK_PORT"
# The same corpus, gzipped (level 6) on every CV answer: its compression runs on $LOAD_CPU too.
taskset -c "$LOAD_CPU" "$BIN" mock-cv-api --listen "127.0.0.1:$GZ_MOCK_PORT" --force-encoding gzip 2>"$WORK/mock-gz.log" &
PIDS+=($!)
wait_port "$GZ_MOCK_PORT"

# --- one certificate for both TLS proxies (ECDSA P-256) -----------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

# --- nginx --------------------------------------------------------------------------------------
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx.conf" <<EOF
# One process (no master/worker split) so that /proc/PID/stat holds all of nginx's CPU time.
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log $WORK/nginx/access.log combined buffer=64k;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  # nginx closes a client connection after 1000 requests by default (h2load does not reconnect,
  # so an h2 run would stop after 1000 requests per connection); cvgate has no such limit.
  keepalive_requests 1000000;
  upstream cv { server 127.0.0.1:$MOCK_PORT; keepalive 256; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    listen 127.0.0.1:$NGINX_TLS_PORT ssl http2;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    location / {
      proxy_pass http://cv;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
EOF
taskset -c "$PROXY_CPU" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_port "$NGINX_PORT"

# --- cvgate -------------------------------------------------------------------------------------
# The closure window starts 6 h from now (Amsterdam) and lasts an hour: checked, never active.
CLOSE_START=$(TZ=Europe/Amsterdam date -d '+6 hours' +%H:00)
CLOSE_END=$(TZ=Europe/Amsterdam date -d '+7 hours' +%H:00)
# gen_config NAME MOCK_PORT PLAIN_PORT TLS_PORT METRICS_PORT [MASK_ALWAYS]: $WORK/NAME.yaml from
# benches/e2e-config.yaml, audit to $WORK/audit-NAME.log; checked by cvgate itself.
gen_config() {
  sed -e "s|@MOCK_PORT@|$2|; s|@PLAIN_PORT@|$3|; s|@TLS_PORT@|$4|" \
    -e "s|@METRICS_PORT@|$5|; s|@CERT@|$WORK/cert.pem|; s|@KEY@|$WORK/key.pem|" \
    -e "s|@AUDIT@|$WORK/audit-$1.log|; s|@CLOSE_START@|$CLOSE_START|; s|@CLOSE_END@|$CLOSE_END|" \
    -e "s|@MASK_ALWAYS@|${6:-false}|" \
    benches/e2e-config.yaml >"$WORK/$1.yaml"
  "$BIN" check-config --config "$WORK/$1.yaml" >/dev/null
}
gen_config cvgate "$MOCK_PORT" "$PLAIN_PORT" "$TLS_PORT" "$METRICS_PORT"
gen_config cvgate-gz "$GZ_MOCK_PORT" "$GZ_PLAIN_PORT" "$GZ_TLS_PORT" "$GZ_METRICS_PORT"
gen_config cvgate-mask "$MOCK_PORT" "$MK_PLAIN_PORT" "$MK_TLS_PORT" "$MK_METRICS_PORT" true
# Both configs share the dev HS256 key: one token for both proxies.
TOKEN=$("$BIN" token --config "$WORK/cvgate.yaml" --account bench-account --org 12345678 --ttl 2h 2>/dev/null)
AUTH="Authorization: Bearer $TOKEN"

# serve_cvgate NAME PORT: cvgate with $WORK/NAME.yaml on $PROXY_CPU, until PORT listens; its PID
# in SERVED_PID.
serve_cvgate() {
  CVGATE_LOG=warn taskset -c "$PROXY_CPU" "$BIN" serve --config "$WORK/$1.yaml" 2>>"$WORK/$1.log" &
  SERVED_PID=$!
  PIDS+=("$SERVED_PID")
  wait_port "$2"
}
stop_pid() { kill "$1"; wait "$1" 2>/dev/null || true; }
start_cvgate() { serve_cvgate cvgate "$PLAIN_PORT"; CVGATE_PID=$SERVED_PID; }
stop_cvgate() { stop_pid "$CVGATE_PID"; }
start_cvgate_gz() { serve_cvgate cvgate-gz "$GZ_PLAIN_PORT"; GZ_PID=$SERVED_PID; }
stop_cvgate_gz() { stop_pid "$GZ_PID"; }
start_cvgate_mask() { serve_cvgate cvgate-mask "$MK_PLAIN_PORT"; MK_PID=$SERVED_PID; }
stop_cvgate_mask() { stop_pid "$MK_PID"; }
start_cvgate
start_cvgate_gz
start_cvgate_mask

# --- the floor: same engine, no policy -----------------------------------------------------------
taskset -c "$PROXY_CPU" "$BARE" "127.0.0.1:$BARE_PORT" "127.0.0.1:$MOCK_PORT" 2>"$WORK/bare.log" &
BARE_PID=$!
PIDS+=("$BARE_PID")
wait_port "$BARE_PORT"

# Every path must answer 200 before anything is measured (a bench of 401s or 429s is worthless).
for url in "http://127.0.0.1:$MOCK_PORT$URL_PATH" "http://127.0.0.1:$NGINX_PORT$URL_PATH" "http://127.0.0.1:$PLAIN_PORT$URL_PATH" \
  "http://127.0.0.1:$BARE_PORT$URL_PATH" "http://127.0.0.1:$GZ_MOCK_PORT$URL_PATH" "http://127.0.0.1:$GZ_PLAIN_PORT$URL_PATH" \
  "http://127.0.0.1:$MK_PLAIN_PORT$URL_PATH"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" "$url")
  [ "$code" = 200 ] || { log "$url answered $code"; exit 1; }
done
# ... and the gzip row must measure what it claims: the mock gzips although asked for identity (as
# cvgate asks), and cvgate hands on plain JSON holding the page's 20 records.
enc=$(curl -s -o /dev/null -D - -H 'Accept-Encoding: identity' "http://127.0.0.1:$GZ_MOCK_PORT$URL_PATH" |
  awk -F': *' 'tolower($1) == "content-encoding" {gsub("\r", "", $2); print $2}')
[ "$enc" = gzip ] || { log "the gzip mock answered Content-Encoding '$enc'"; exit 1; }
curl -s -D "$WORK/gz-check.headers" -o "$WORK/gz-check.json" -H "$AUTH" "http://127.0.0.1:$GZ_PLAIN_PORT$URL_PATH"
if grep -qi '^content-encoding:' "$WORK/gz-check.headers" ||
  [ "$(grep -o '"id"' "$WORK/gz-check.json" | wc -l)" -lt 20 ]; then
  log "cvgate in front of the gzip mock did not answer plain JSON (see $WORK/gz-check.*)"; exit 1
fi

# ... and the masking row must mask: every record without its name, the plain row with it.
curl -s -D "$WORK/mask-check.headers" -o "$WORK/mask-check.json" -H "$AUTH" "http://127.0.0.1:$MK_PLAIN_PORT$URL_PATH"
curl -s -D "$WORK/nomask-check.headers" -o "$WORK/nomask-check.json" -H "$AUTH" "http://127.0.0.1:$PLAIN_PORT$URL_PATH"
if ! grep -qi '^cvgate-masked: contact' "$WORK/mask-check.headers" || grep -q '"naam"' "$WORK/mask-check.json" ||
  [ "$(grep -o '"id"' "$WORK/mask-check.json" | wc -l)" -lt 20 ] ||
  grep -qi '^cvgate-masked:' "$WORK/nomask-check.headers" || ! grep -q '"naam"' "$WORK/nomask-check.json"; then
  log "the masking row does not mask, or the plain row does (see $WORK/*mask-check.*)"; exit 1
fi

# --- plain HTTP/1.1 runs ------------------------------------------------------------------------
# wrk_run NAME URL PID: one bounded wrk run; prints one tab-separated result line
# (name, req/s, p50, p99, CPU µs/request or -, non-2xx).
wrk_run() {
  local name=$1 url=$2 pid=$3 before after out reqs rps p50 p99 non2xx cpu
  # A short warm-up fills connection pools and caches.
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s -H "$AUTH" "$url" >/dev/null
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "$AUTH" "$url")
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  echo "$out" >"$WORK/wrk-$name.txt"
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  cpu="-"
  if [ -n "$pid" ]; then
    cpu=$(awk -v a="$before" -v b="$after" -v t="$TICK" -v n="$reqs" 'BEGIN {printf "%.1f", (b - a) * 1e6 / t / n}')
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rps" "$p50" "$p99" "$cpu" "${non2xx:-0}"
}

# h2_run NAME URL PID: one bounded h2load run over TLS (ALPN h2), 10 streams per connection;
# prints one result line as wrk_run does (status instead of non-2xx).
h2_run() {
  local name=$1 url=$2 pid=$3 before after out reqs rps lat cpu
  taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m10 -D2 -H "$AUTH" "$url" >/dev/null
  before=$(cpu_ticks "$pid")
  rm -f "$WORK/h2-$name.log"
  out=$(taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m10 -D"$DURATION" -H "$AUTH" --log-file="$WORK/h2-$name.log" "$url")
  after=$(cpu_ticks "$pid")
  echo "$out" >"$WORK/h2load-$name.txt"
  reqs=$(echo "$out" | awk '/^requests:/ {print $8}')   # "N succeeded"
  rps=$(echo "$out" | awk '/^finished in/ {gsub(",", "", $4); printf "%.0f", $4}')
  # --log-file: start (µs since epoch), status, duration (µs) per request.
  lat=$(awk '{print $3}' "$WORK/h2-$name.log" | sort -n | awk '{a[NR]=$1} END {printf "%.2fms\t%.2fms", a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000}')
  cpu=$(awk -v a="$before" -v b="$after" -v t="$TICK" -v n="$reqs" 'BEGIN {printf "%.1f", (b - a) * 1e6 / t / n}')
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rps" "$lat" "$cpu" "$(echo "$out" | awk '/^status codes:/ {print $3 " 2xx"}')"
}

# median_rows: result lines on stdin → one Markdown row per name (in first-seen order), from the
# round with the median CPU µs/request (median req/s where there is no CPU figure), the CPU
# column showing the median and the range over the rounds.
median_rows() {
  awk -F'\t' '
    !($1 in n) { order[++names] = $1 }
    { k = $1; i = ++n[k]; line[k, i] = $0; key[k, i] = ($5 == "-" ? $2 : $5) + 0; cpu[k, i] = $5 }
    END {
      for (o = 1; o <= names; o++) {
        k = order[o]; m = n[k]
        for (i = 1; i <= m; i++) idx[i] = i
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (key[k, idx[j]] < key[k, idx[i]]) { t = idx[i]; idx[i] = idx[j]; idx[j] = t }
        split(line[k, idx[int((m + 1) / 2)]], f, "\t")
        c = f[5]
        if (c != "-" && m > 1) c = sprintf("%s (%s–%s)", f[5], cpu[k, idx[1]], cpu[k, idx[m]])
        printf "| %s | %s | %s | %s | %s | %s |\n", f[1], f[2], f[3], f[4], c, f[6]
      }
    }'
}

log "plain HTTP runs (${ROUNDS} rounds of ${DURATION}s each)"
NGINX_NAME="nginx $("$NGINX" -v 2>&1 | sed 's|.*/||'), plain proxy_pass"
PLAIN_ROWS=$(
  for r in $(seq "$ROUNDS"); do
    wrk_run "mock upstream, direct" "http://127.0.0.1:$MOCK_PORT$URL_PATH" ""
    wrk_run "$NGINX_NAME" "http://127.0.0.1:$NGINX_PORT$URL_PATH" "$NGINX_PID"
    wrk_run "cvgate, full policy" "http://127.0.0.1:$PLAIN_PORT$URL_PATH" "$CVGATE_PID"
    wrk_run "cvgate, full policy, masking active" "http://127.0.0.1:$MK_PLAIN_PORT$URL_PATH" "$MK_PID"
    wrk_run "cvgate, full policy, gzip upstream" "http://127.0.0.1:$GZ_PLAIN_PORT$URL_PATH" "$GZ_PID"
    wrk_run "floor: bare hyper proxy, no policy" "http://127.0.0.1:$BARE_PORT$URL_PATH" "$BARE_PID"
  done | tee "$WORK/plain-rounds.tsv" | median_rows
)
kill "$BARE_PID" 2>/dev/null || true
# median_cpu NAME: the median CPU µs/request of one plain-HTTP path over the rounds.
median_cpu() {
  awk -F'\t' -v k="$1" '$1 == k {print $5}' "$WORK/plain-rounds.tsv" | sort -n |
    awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'
}
CPU_PLAIN=$(median_cpu "cvgate, full policy")
CPU_GZ=$(median_cpu "cvgate, full policy, gzip upstream")
CPU_MASK=$(median_cpu "cvgate, full policy, masking active")
MK_RSS_LOAD=$(awk '/VmHWM/ {print $2 " " $3}' "/proc/$MK_PID/status")
stop_cvgate_mask   # flushes its audit lines
MK_AUDIT_MASKED=$(grep -c '"mask_reason":"always"' "$WORK/audit-cvgate-mask.log" 2>/dev/null || true)
MK_AUDIT_LINES=$(wc -l <"$WORK/audit-cvgate-mask.log" 2>/dev/null || echo 0)
GZ_RSS_LOAD=$(awk '/VmHWM/ {print $2 " " $3}' "/proc/$GZ_PID/status")
stop_cvgate_gz   # its audit writer flushes on the way out
GZ_AUDIT_LINES=$(wc -l <"$WORK/audit-cvgate-gz.log" 2>/dev/null || echo 0)
GZ_AUDIT_EXACT=$(grep -c '"count":"exact"' "$WORK/audit-cvgate-gz.log" 2>/dev/null || true)
log "TLS h2 runs (${ROUNDS} rounds of ${DURATION}s each)"
H2_ROWS=$(
  for r in $(seq "$ROUNDS"); do
    h2_run "nginx, TLS h2" "https://127.0.0.1:$NGINX_TLS_PORT$URL_PATH" "$NGINX_PID"
    h2_run "cvgate, TLS h2, full policy" "https://127.0.0.1:$TLS_PORT$URL_PATH" "$CVGATE_PID"
  done | tee "$WORK/h2-rounds.tsv" | median_rows
)
AUDIT_LINES=$(wc -l <"$WORK/audit-cvgate.log" 2>/dev/null || echo 0)
CVGATE_RSS_LOAD=$(awk '/VmHWM/ {print $2 " " $3}' "/proc/$CVGATE_PID/status")

# --- 1 GiB export through a fresh cvgate, from the plain mock and from the gzip mock -------------
# The mock serves at most 1,000,000 CVs per export (~360 MiB), so EXPORT_MIB is reached with
# several exports of the whole corpus running at the same time through one fresh cvgate: the
# proxy holds all of them at once, a harder test of its memory than one long stream. Through the
# gzip mock cvgate also holds one decoder per stream (gzip's 32 KiB window and its buffers); it
# sends the client plain NDJSON either way (no `compress` on the route), so the byte counts agree.
stop_cvgate
start_cvgate
one=$(curl -s -H "$AUTH" "http://127.0.0.1:$PLAIN_PORT/api/v1/cvs/export?limit=10000&query=bench" | wc -c)
per_export=$(( one * 100 ))   # bytes of one 1,000,000-CV export
streams=$(( (EXPORT_MIB * 1048576 + per_export - 1) / per_export ))

# export_run NAME PORT PID: $streams concurrent exports through the cvgate PID listening on PORT
# (freshly started); each curl is bounded by --max-time. Sets EXPORT_LINE, the report's paragraph.
export_run() {
  local name=$1 port=$2 pid=$3 hwm_before hwm_after t0 secs codes bytes i curls=()
  hwm_before=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  t0=$(date +%s.%N)
  for i in $(seq "$streams"); do
    taskset -c "$LOAD_CPU" curl -s -o /dev/null --max-time 300 -H "$AUTH" -w '%{http_code} %{size_download}\n' \
      "http://127.0.0.1:$port/api/v1/cvs/export?limit=1000000&query=bench$i" >"$WORK/export-$name-$i.txt" &
    curls+=($!)
    PIDS+=($!)
  done
  for i in "${curls[@]}"; do wait "$i" || true; done
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  hwm_after=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  codes=$(cat "$WORK"/export-"$name"-*.txt | awk '{print $1}' | sort -u | tr '\n' ' ')
  bytes=$(cat "$WORK"/export-"$name"-*.txt | awk '{s += $2} END {print s + 0}')
  EXPORT_LINE="$streams concurrent exports of 1,000,000 CVs, status $codes: $(awk -v b="$bytes" 'BEGIN {printf "%.0f MiB", b/1048576}') in ${secs}s
($(awk -v b="$bytes" -v s="$secs" 'BEGIN {printf "%.0f MiB/s", (s > 0 ? b/1048576/s : 0)}')); cvgate peak RSS (VmHWM) $((hwm_before / 1024)) MiB before,
**$((hwm_after / 1024)) MiB** after (target < 64 MiB)."
}
log "export of ${EXPORT_MIB} MiB through a fresh cvgate, plain upstream"
export_run plain "$PLAIN_PORT" "$CVGATE_PID"
EXPORT_PLAIN=$EXPORT_LINE
stop_cvgate
log "export of ${EXPORT_MIB} MiB through a fresh cvgate, gzip upstream"
start_cvgate_gz
export_run gzip "$GZ_PLAIN_PORT" "$GZ_PID"
EXPORT_GZ=$EXPORT_LINE
stop_cvgate_gz   # flushes its audit lines
GZ_EXPORT_UNCERTAIN=$(grep '"route":"cv_export"' "$WORK/audit-cvgate-gz.log" 2>/dev/null | grep -vc '"count":"exact"' || true)

# --- report -------------------------------------------------------------------------------------
cat <<EOF
## End-to-end run, $(date -u +%Y-%m-%dT%H:%MZ)

Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), Linux $(uname -r),
$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo); load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg).
Proxy pinned to CPU $PROXY_CPU; wrk/h2load and the mock upstreams on CPU $LOAD_CPU. wrk -t1 -c$CONNS -d${DURATION}s,
h2load -t1 -c$CONNS -m10 -D$DURATION; request \`GET $URL_PATH\` (20 CVs, ~7.5 KB of JSON).
$ROUNDS rounds, paths interleaved; each row is the round with the median CPU µs/request (range in brackets).

### Plain HTTP/1.1

| path | req/s | p50 | p99 | proxy CPU µs/req | non-2xx |
|---|---:|---:|---:|---:|---:|
$PLAIN_ROWS

The gzip row: a second mock gzips every answer (\`--force-encoding gzip\`, on CPU $LOAD_CPU, whose compression
likely bounds that row's req/s) and a second cvgate, same config, decodes it to count
and forwards plain JSON. Its proxy CPU is **${CPU_GZ} µs/req vs ${CPU_PLAIN}** for the plain cvgate row
($(awk -v g="$CPU_GZ" -v p="$CPU_PLAIN" 'BEGIN {if (p > 0) printf "%.2f×, %+.1f µs", g / p, g - p; else print "no ratio"}'); medians over the rounds):
the gzip decoding, plus whatever the row's lower request rate costs per request.
It wrote $GZ_AUDIT_LINES audit lines, $GZ_AUDIT_EXACT with \`"count":"exact"\`; its peak RSS under load: $GZ_RSS_LOAD.

The masking row: a third cvgate, same config but \`masking.always: true\`, removes the board's contact
fields from every one of the page's 20 CVs in the stream (the phone kept where shown; JSON
re-validated, \`Content-Length\` dropped). Its proxy CPU is **${CPU_MASK} µs/req vs ${CPU_PLAIN}** for the
full-policy row, where the same masking policy is checked on every request and never triggers
($(awk -v g="$CPU_MASK" -v p="$CPU_PLAIN" 'BEGIN {if (p > 0) printf "%.2f×, %+.1f µs", g / p, g - p; else print "no ratio"}'); medians over the rounds).
It wrote $MK_AUDIT_LINES audit lines, $MK_AUDIT_MASKED with \`"mask_reason":"always"\`; its peak RSS under load: $MK_RSS_LOAD.

### TLS 1.3, HTTP/2 (h2load)

| path | req/s | p50 | p99 | proxy CPU µs/req | status |
|---|---:|---:|---:|---:|---|
$H2_ROWS

cvgate wrote $AUDIT_LINES audit lines; its peak RSS under load: $CVGATE_RSS_LOAD.

### ${EXPORT_MIB} MiB NDJSON export through cvgate

Plain upstream: $EXPORT_PLAIN

gzip upstream (a fresh cvgate in front of the gzip mock, decoding every stream to count it):
$EXPORT_GZ Export audit lines not counted exactly: $GZ_EXPORT_UNCERTAIN.

Reproduce: \`DURATION=$DURATION CONNS=$CONNS ROUNDS=$ROUNDS benches/e2e.sh\`
EOF
