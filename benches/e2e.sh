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
#   7. HAProxy (Debian's haproxy, 2.6 on bookworm; generated config, nbthread 1, one process) with
#      the policy a HAProxy user would write: the Bearer JWT verified with jwt_verify (HS256, the
#      bench config's dev secret; alg, exp against date(), iss and aud checked; 401 otherwise),
#      request-rate stick tables per account (`sub`), per KvK (`kvk`) and per /24 (src,ipmask(24)),
#      each http_req_rate(1m) with a 429 above a limit the bench never reaches, an access log line
#      per request (option httplog to stdout, redirected to a file), keep-alive to the mock; the
#      script checks 401 without a token and with tampered or expired ones, 200 with a valid one,
#      and that every measured request wrote its log line,
# all over plain HTTP/1.1 with wrk; then nginx, HAProxy, cvgate and the floor at a fixed rate
# (RATE_PCT % of nginx's wrk req/s, examples/loadgen.rs: latency without coordinated omission);
# then cvgate, nginx and HAProxy over TLS 1.3 with HTTP/2
# (h2load; the floor speaks plain HTTP only), then a 1 GiB NDJSON export through a fresh cvgate
# with the proxy's peak RSS, once from the plain mock and once from the gzip mock (decoding on
# the way).
#
# The proxy under test is pinned to one core (taskset -c $PROXY_CPU), the load generator and the
# upstream(s) share the other ($LOAD_CPU). Besides req/s and latency the script reports the proxy
# process's CPU time per request (utime+stime from /proc/PID/stat, before/after, ÷ requests):
# the fair figure when the load generator, not the proxy, is the bottleneck.
#
# Usage: benches/e2e.sh            (installs nginx, haproxy, wrk, nghttp2-client if missing; builds --release)
# Knobs: DURATION=10 CONNS=32 ROUNDS=3 PROXY_CPU=1 LOAD_CPU=0 EXPORT_MIB=1024 RATE_PCT=70
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
RATE_PCT=${RATE_PCT:-70}
# A search page of 20 CVs (~7.5 KB of JSON): counted by the proxy record by record.
URL_PATH='/api/v1/cvs?query=bench&size=20'

log() { echo "e2e: $*" >&2; }
. scripts/lib.sh

# --- tools --------------------------------------------------------------------------------------
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
apt_install "${need[@]}"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

log "cargo build --release (cvgate and examples/bare_proxy)"
cargo build --release --quiet --bin cvgate --example bare_proxy --example loadgen
BIN="${CARGO_TARGET_DIR:-target}/release/cvgate"
LOADGEN="${CARGO_TARGET_DIR:-target}/release/examples/loadgen"
BARE="${CARGO_TARGET_DIR:-target}/release/examples/bare_proxy"

# --- scratch dir, processes, cleanup ------------------------------------------------------------
WORK=$(mktemp -d /tmp/cvgate-e2e.XXXXXX)
trap cleanup EXIT

# utime+stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

MOCK_PORT=$(free_port); NGINX_PORT=$(free_port); NGINX_TLS_PORT=$(free_port)
HAPROXY_PORT=$(free_port); HAPROXY_TLS_PORT=$(free_port)
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

# --- one certificate for every TLS proxy (ECDSA P-256) ------------------------------------------
bench_cert "$WORK"

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
    # nginx 1.22's default is TLSv1 to TLSv1.2 (1.3 joined the default in 1.23.4): without this
    # line its h2 row ran TLS 1.2 while cvgate's and HAProxy's ran 1.3 (h2_run checks it now).
    ssl_protocols TLSv1.2 TLSv1.3;
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
# gen_config NAME MOCK_PORT PLAIN_PORT TLS_PORT METRICS_PORT [MASK_ALWAYS]: $WORK/NAME.yaml from
# benches/e2e-config.yaml, audit to $WORK/audit-NAME.log; checked by cvgate itself.
gen_config() {
  bench_config "$WORK/$1.yaml" "$2" "$3" "$4" "$5" "$WORK/audit-$1.log" "${6:-false}"
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

# --- HAProxy: the policy a HAProxy user would write ----------------------------------------------
# The same HS256 secret, issuer and audience cvgate's config holds; the account and KvK claim
# names are those of `cvgate token` (sub, kvk), checked on the token the script minted.
HS256_SECRET=$(sed -n 's/.*dev_hs256:.*secret: *"\([^"]*\)".*/\1/p' benches/e2e-config.yaml)
case "$HS256_SECRET" in ''|*'"'*|*'\'*) log "no usable identity.dev_hs256.secret in benches/e2e-config.yaml"; exit 1 ;; esac
# jwt_claim TOKEN NAME: one claim of a JWT's payload (not verified: for the checks below).
jwt_claim() {
  python3 -c 'import sys, json, base64; p = sys.argv[1].split(".")[1]
print(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))).get(sys.argv[2], ""))' "$1" "$2"
}
JWT_ISS=$(jwt_claim "$TOKEN" iss); JWT_AUD=$(jwt_claim "$TOKEN" aud)
if [ "$(jwt_claim "$TOKEN" sub)" != bench-account ] || [ "$(jwt_claim "$TOKEN" kvk)" != 12345678 ] ||
  [ -z "$JWT_ISS" ] || [ -z "$JWT_AUD" ]; then
  log "cvgate's token does not carry sub/kvk/iss/aud as the HAProxy config expects"; exit 1
fi
# Far above anything one run sends in a minute (~40,000 req/s at most): checked, never reached.
HAPROXY_RATE_LIMIT=100000000
mkdir -p "$WORK/haproxy"
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/haproxy/cert-key.pem"   # haproxy wants both in one PEM
cat >"$WORK/haproxy.cfg" <<EOF
# One thread, one process (-db, no master-worker): /proc/PID/stat holds all of HAProxy's CPU time.
global
  nbthread 1
  maxconn 8192
  # One log line per request, written by HAProxy itself with one writev() each (fd 1 is a file).
  log stdout format raw local0 info
  stats socket $WORK/haproxy/admin.sock mode 600 level admin
  # as nginx's default certificate setup: TLS 1.2 and 1.3 offered, clients here pick 1.3
  ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
  mode http
  log global
  option httplog
  option http-keep-alive
  option forwardfor
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-request 10s
  timeout http-keep-alive 60s

# One request-rate table per scope, as cvgate charges per account, organisation and /24.
backend st_account
  stick-table type string len 64 size 100k expire 10m store http_req_rate(1m)
backend st_org
  stick-table type string len 32 size 100k expire 10m store http_req_rate(1m)
backend st_net
  stick-table type ip size 100k expire 10m store http_req_rate(1m)

frontend cv
  bind 127.0.0.1:$HAPROXY_PORT
  bind 127.0.0.1:$HAPROXY_TLS_PORT ssl crt $WORK/haproxy/cert-key.pem alpn h2,http/1.1
  # The JWT: HS256 only, signature, expiry, issuer and audience; 401 otherwise.
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request deny deny_status 401 unless { var(txn.alg) -m str HS256 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$HS256_SECRET") -m int 1 }
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 unless { var(txn.exp),sub(txn.now) -m int gt 0 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('\$.iss') -m str $JWT_ISS }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('\$.aud') -m str $JWT_AUD }
  # The identity: account (sub) required, KvK (kvk) required on the CV routes (403, as cvgate).
  http-request set-var(txn.account) var(txn.bearer),jwt_payload_query('\$.sub')
  http-request set-var(txn.kvk) var(txn.bearer),jwt_payload_query('\$.kvk')
  http-request deny deny_status 401 unless { var(txn.account) -m found }
  http-request deny deny_status 403 unless { var(txn.kvk) -m found }
  # Request rate per account, per KvK and per /24; 429 above the limit.
  http-request track-sc0 var(txn.account) table st_account
  http-request track-sc1 var(txn.kvk) table st_org
  http-request track-sc2 src,ipmask(24) table st_net
  http-request deny deny_status 429 if { sc_http_req_rate(0) gt $HAPROXY_RATE_LIMIT }
  http-request deny deny_status 429 if { sc_http_req_rate(1) gt $HAPROXY_RATE_LIMIT }
  http-request deny deny_status 429 if { sc_http_req_rate(2) gt $HAPROXY_RATE_LIMIT }
  default_backend cv_api

backend cv_api
  # Idle upstream connections kept and shared between client connections (nginx: keepalive 256).
  http-reuse always
  server mock 127.0.0.1:$MOCK_PORT
EOF
"$HAPROXY" -c -q -f "$WORK/haproxy.cfg" || { log "haproxy refused $WORK/haproxy.cfg"; exit 1; }
# -db: foreground, no master process. stdout is the access log.
taskset -c "$PROXY_CPU" "$HAPROXY" -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy/access.log" 2>"$WORK/haproxy/error.log" &
HAPROXY_PID=$!
PIDS+=("$HAPROXY_PID")
wait_port "$HAPROXY_PORT"
wait_port "$HAPROXY_TLS_PORT"

# HAProxy must enforce before it is measured: 401 without a token, with a forged payload (the
# original signature), with a broken signature, with an expired token (correctly signed) and
# with another algorithm; 403 without a KvK; 200 with the bench's token, over both listeners.
# forge_token EXP_OFFSET ALG: a token signed with the bench secret, exp = now + EXP_OFFSET.
forge_token() {
  python3 -c 'import sys, json, base64, hmac, hashlib, time
b = lambda d: base64.urlsafe_b64encode(json.dumps(d, separators=(",", ":")).encode()).rstrip(b"=").decode()
secret, iss, aud, off, alg = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
now = int(time.time())
h = b({"alg": alg, "typ": "JWT", "kid": "dev"})
p = b({"iss": iss, "aud": aud, "iat": now - 7200, "nbf": now - 7200, "exp": now + off,
       "sub": "bench-account", "kvk": "12345678", "acr": "urn:etoegang:core:assurance-class:loa3"})
digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
s = base64.urlsafe_b64encode(hmac.new(secret.encode(), (h + "." + p).encode(), digest).digest()).rstrip(b"=").decode()
print(h + "." + p + "." + s)' "$HS256_SECRET" "$JWT_ISS" "$JWT_AUD" "$1" "$2"
}
IFS=. read -r tok_h tok_p tok_s <<<"$TOKEN"
forged_p=$(python3 -c 'import sys, json, base64; p = sys.argv[1]
c = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))); c["sub"] = "someone-else"
print(base64.urlsafe_b64encode(json.dumps(c).encode()).rstrip(b"=").decode())' "$tok_p")
# A character in the middle of the signature changed (never only the last one's padding bits).
bad_s=$(printf '%s' "$tok_s" | awk '{c = substr($0, 10, 1); printf "%s%s%s", substr($0, 1, 9), (c == "A" ? "B" : "A"), substr($0, 11)}')
NOORG_TOKEN=$("$BIN" token --config "$WORK/cvgate.yaml" --account bench-account --ttl 2h 2>/dev/null)
haproxy_expect() {   # haproxy_expect CODE WHAT [curl args...]: over plain HTTP/1.1 and TLS h2
  local want=$1 what=$2 code; shift 2
  code=$(curl -s --http1.1 -o /dev/null -w '%{http_code}' "$@" "http://127.0.0.1:$HAPROXY_PORT$URL_PATH")
  [ "$code" = "$want" ] || { log "HAProxy answered $code, not $want, to $what (HTTP/1.1)"; exit 1; }
  code=$(curl -sk --http2 -o /dev/null -w '%{http_code} %{http_version}' "$@" "https://127.0.0.1:$HAPROXY_TLS_PORT$URL_PATH")
  [ "$code" = "$want 2" ] || { log "HAProxy answered '$code', not '$want 2', to $what (TLS h2)"; exit 1; }
}
haproxy_expect 401 "no token"
haproxy_expect 401 "a forged payload" -H "Authorization: Bearer $tok_h.$forged_p.$tok_s"
haproxy_expect 401 "a broken signature" -H "Authorization: Bearer $tok_h.$tok_p.$bad_s"
haproxy_expect 401 "an expired token" -H "Authorization: Bearer $(forge_token -60 HS256)"
haproxy_expect 401 "an HS512 token" -H "Authorization: Bearer $(forge_token 3600 HS512)"
haproxy_expect 200 "a token signed by the script itself (the check's own control)" -H "Authorization: Bearer $(forge_token 3600 HS256)"
haproxy_expect 403 "a token without kvk" -H "Authorization: Bearer $NOORG_TOKEN"
haproxy_expect 200 "the bench token" -H "$AUTH"
# ... and its three tables track: one entry each, holding the requests just made.
haproxy_cli() { python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall((sys.argv[2] + "\n").encode())
out = b""
while True:
    d = s.recv(65536)
    if not d: break
    out += d
print(out.decode(), end="")' "$WORK/haproxy/admin.sock" "$1"; }
for t in st_account st_org st_net; do
  haproxy_cli "show table $t" >"$WORK/haproxy/table-$t.txt"
  grep -q 'http_req_rate(60000)=[1-9]' "$WORK/haproxy/table-$t.txt" ||
    { log "HAProxy's table $t tracks nothing (see $WORK/haproxy/table-$t.txt)"; exit 1; }
done

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
# access_log_check NAME LOG LINES_BEFORE REQUESTS: the proxy wrote at least one access-log line per
# request of the measured run (lines appended to LOG since LINES_BEFORE), or the script fails;
# appends "name, requests, lines" to $WORK/access-log-check.tsv.
access_log_check() {
  local lines
  sleep 0.5   # the last responses' lines
  lines=$(( $(wc -l <"$2") - $3 ))
  printf '%s\t%s\t%s\n' "$1" "$4" "$lines" >>"$WORK/access-log-check.tsv"
  [ "$lines" -ge "$4" ] || { log "$1 wrote $lines access-log lines for $4 requests ($2)"; exit 1; }
}

# wrk_run NAME URL PID [ACCESS_LOG]: one bounded wrk run; prints one tab-separated result line
# (name, req/s, p50, p99, CPU µs/request or -, non-2xx). With ACCESS_LOG, checks that it got a
# line per request.
wrk_run() {
  local name=$1 url=$2 pid=$3 alog=${4:-} before after out reqs rps p50 p99 non2xx cpu lines0
  # A short warm-up fills connection pools and caches.
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s -H "$AUTH" "$url" >/dev/null
  [ -n "$alog" ] && lines0=$(wc -l <"$alog")
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "$AUTH" "$url")
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  echo "$out" >"$WORK/wrk-$name.txt"
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  [ -n "$alog" ] && access_log_check "$name" "$alog" "$lines0" "$reqs"
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

# h2_run NAME URL PID [ACCESS_LOG]: one bounded h2load run over TLS (ALPN h2), 10 streams per
# connection; prints one result line as wrk_run does (status instead of non-2xx).
h2_run() {
  local name=$1 url=$2 pid=$3 alog=${4:-} before after out reqs rps lat cpu lines0
  taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m10 -D2 -H "$AUTH" "$url" >/dev/null
  [ -n "$alog" ] && lines0=$(wc -l <"$alog")
  before=$(cpu_ticks "$pid")
  rm -f "$WORK/h2-$name.log"
  out=$(taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m10 -D"$DURATION" -H "$AUTH" --log-file="$WORK/h2-$name.log" "$url")
  after=$(cpu_ticks "$pid")
  echo "$out" >"$WORK/h2load-$name.txt"
  reqs=$(echo "$out" | awk '/^requests:/ {print $8}')   # "N succeeded"
  if ! echo "$out" | grep -q '^TLS Protocol: TLSv1.3' || ! echo "$out" | grep -q '^Application protocol: h2'; then
    log "$name: not TLS 1.3 with h2 (see $WORK/h2load-$name.txt)"; exit 1
  fi
  [ -n "$alog" ] && access_log_check "$name" "$alog" "$lines0" "$reqs"
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
HAPROXY_VERSION=$("$HAPROXY" -v | awk 'NR == 1 {sub("-.*", "", $3); print $3}')
HAPROXY_NAME="HAProxy $HAPROXY_VERSION, JWT + 3 rate tables + log"
PLAIN_ROWS=$(
  for r in $(seq "$ROUNDS"); do
    wrk_run "mock upstream, direct" "http://127.0.0.1:$MOCK_PORT$URL_PATH" ""
    wrk_run "$NGINX_NAME" "http://127.0.0.1:$NGINX_PORT$URL_PATH" "$NGINX_PID"
    wrk_run "$HAPROXY_NAME" "http://127.0.0.1:$HAPROXY_PORT$URL_PATH" "$HAPROXY_PID" "$WORK/haproxy/access.log"
    wrk_run "cvgate, full policy" "http://127.0.0.1:$PLAIN_PORT$URL_PATH" "$CVGATE_PID"
    wrk_run "cvgate, full policy, masking active" "http://127.0.0.1:$MK_PLAIN_PORT$URL_PATH" "$MK_PID"
    wrk_run "cvgate, full policy, gzip upstream" "http://127.0.0.1:$GZ_PLAIN_PORT$URL_PATH" "$GZ_PID"
    wrk_run "floor: bare hyper proxy, no policy" "http://127.0.0.1:$BARE_PORT$URL_PATH" "$BARE_PID"
  done | tee "$WORK/plain-rounds.tsv" | median_rows
)

# --- fixed rate: latency at 70 % of nginx's saturation rate --------------------------------------
# wrk saturates: its p99 is a queue's. Here every path gets the same open-model load at
# RATE_PCT % of nginx's median req/s above (examples/loadgen.rs: request i is due at t0 + i/rate,
# its latency counted from then, as wrk2 does), CONNS keep-alive connections, same token.
NGINX_MAX_RPS=$(awk -F'\t' -v k="$NGINX_NAME" '$1 == k {print $2}' "$WORK/plain-rounds.tsv" | sort -n |
  awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
# nginx's saturation rate *with this generator* (which costs more per request than wrk, and shares
# CPU $LOAD_CPU with the mock): a ramp of 2 s runs in steps of 10 % of nginx's wrk rate, up to
# the last that keeps up: every request answered and p99 under 50 ms (past saturation the queue
# grows for the whole run and p99 goes to hundreds of ms; below it, this VM's p99 is a few ms even
# at 10 % load: an idle vCPU wakes slowly). The fixed rate is RATE_PCT % of that.
ramp_out() { awk -F'\t' -v k="$1" '{ for (i = 1; i < NF; i += 2) if ($i == k) print $(i + 1) }'; }
NGINX_SAT=0
for pct in 10 20 30 40 50 60 70 80 90 100; do
  r=$(( NGINX_MAX_RPS * pct / 100 ))
  out=$(taskset -c "$LOAD_CPU" "$LOADGEN" rate --url "http://127.0.0.1:$NGINX_PORT$URL_PATH" --rate "$r" \
    --duration 2 --warmup 0.5 --workers "$CONNS" -H "$AUTH")
  echo "$r	$out" >>"$WORK/rate-ramp.tsv"
  sent=$(echo "$out" | ramp_out sent); ok=$(echo "$out" | ramp_out ok); p99=$(echo "$out" | ramp_out p99_us)
  if [ "$ok" -eq "$sent" ] && [ "$p99" -lt 50000 ]; then NGINX_SAT=$r; else break; fi
done
[ "$NGINX_SAT" -gt 0 ] || { log "nginx does not keep up even at 10 % of its wrk rate (see $WORK/rate-ramp.tsv)"; exit 1; }
FIXED_RATE=$(( NGINX_SAT * RATE_PCT / 100 ))
# rate_run NAME URL PID: one bounded fixed-rate run; prints name, achieved req/s, p50, p99, p99.9
# (µs), CPU µs/request, requests that waited > 1 ms for a free connection, non-2xx + errors.
rate_run() {
  local name=$1 url=$2 pid=$3 before after out
  taskset -c "$LOAD_CPU" "$LOADGEN" rate --url "$url" --rate "$FIXED_RATE" --duration 2 --warmup 0 \
    --workers "$CONNS" -H "$AUTH" >/dev/null
  before=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CPU" "$LOADGEN" rate --url "$url" --rate "$FIXED_RATE" --duration "$DURATION" \
    --warmup 1 --workers "$CONNS" -H "$AUTH")
  after=$(cpu_ticks "$pid")
  echo "$out" >"$WORK/rate-$name.txt"
  echo "$out" | awk -F'\t' -v name="$name" -v a="$before" -v b="$after" -v t="$TICK" '
    { for (i = 1; i < NF; i += 2) v[$i] = $(i + 1) }
    END { printf "%s\t%s\t%s\t%s\t%s\t%.1f\t%s\t%s\n", name, v["rate"], v["p50_us"], v["p99_us"], v["p999_us"],
          (b - a) * 1e6 / t / v["total"], v["late_1ms"], v["other"] + v["errors"] }'
}
# median_p99 [NAME]: rows on stdin → one Markdown row per name from the round with the median
# p99, the p99 column with its range; with NAME, only that path's median p99 (µs).
median_p99() {
  awk -F'\t' -v only="${1:-}" '
    !($1 in n) { order[++names] = $1 }
    { k = $1; i = ++n[k]; line[k, i] = $0; key[k, i] = $4 + 0 }
    END {
      for (o = 1; o <= names; o++) {
        k = order[o]; m = n[k]
        for (i = 1; i <= m; i++) idx[i] = i
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (key[k, idx[j]] < key[k, idx[i]]) { t = idx[i]; idx[i] = idx[j]; idx[j] = t }
        split(line[k, idx[int((m + 1) / 2)]], f, "\t")
        if (only != "") { if (k == only) print f[4]; continue }
        p = f[4]; if (m > 1) p = sprintf("%s (%s–%s)", f[4], key[k, idx[1]], key[k, idx[m]])
        printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", f[1], f[2], f[3], p, f[5], f[6], f[7], f[8]
      }
    }'
}
log "fixed-rate runs at $FIXED_RATE req/s ($RATE_PCT % of nginx's $NGINX_SAT with loadgen; ${ROUNDS} rounds of ${DURATION}s)"
for r in $(seq "$ROUNDS"); do
  rate_run "$NGINX_NAME" "http://127.0.0.1:$NGINX_PORT$URL_PATH" "$NGINX_PID"
  rate_run "$HAPROXY_NAME" "http://127.0.0.1:$HAPROXY_PORT$URL_PATH" "$HAPROXY_PID"
  rate_run "cvgate, full policy" "http://127.0.0.1:$PLAIN_PORT$URL_PATH" "$CVGATE_PID"
  rate_run "floor: bare hyper proxy, no policy" "http://127.0.0.1:$BARE_PORT$URL_PATH" "$BARE_PID"
done >"$WORK/rate-rounds.tsv"
RATE_ROWS=$(median_p99 <"$WORK/rate-rounds.tsv")
P99_NGINX=$(median_p99 "$NGINX_NAME" <"$WORK/rate-rounds.tsv")
P99_CVGATE=$(median_p99 "cvgate, full policy" <"$WORK/rate-rounds.tsv")
P99_HAPROXY=$(median_p99 "$HAPROXY_NAME" <"$WORK/rate-rounds.tsv")

kill "$BARE_PID" 2>/dev/null || true
# median_cpu NAME [ROUNDS_FILE]: the median CPU µs/request of one path over the rounds (plain
# HTTP/1.1 unless ROUNDS_FILE says otherwise).
median_cpu() {
  awk -F'\t' -v k="$1" '$1 == k {print $5}' "${2:-$WORK/plain-rounds.tsv}" | sort -n |
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
    h2_run "HAProxy, TLS h2, JWT + 3 rate tables + log" "https://127.0.0.1:$HAPROXY_TLS_PORT$URL_PATH" "$HAPROXY_PID" "$WORK/haproxy/access.log"
    h2_run "cvgate, TLS h2, full policy" "https://127.0.0.1:$TLS_PORT$URL_PATH" "$CVGATE_PID"
  done | tee "$WORK/h2-rounds.tsv" | median_rows
)
AUDIT_LINES=$(wc -l <"$WORK/audit-cvgate.log" 2>/dev/null || echo 0)
CVGATE_RSS_LOAD=$(awk '/VmHWM/ {print $2 " " $3}' "/proc/$CVGATE_PID/status")
HAPROXY_RSS_LOAD=$(awk '/VmHWM/ {print $2 " " $3}' "/proc/$HAPROXY_PID/status")

# --- cvgate against its peers: ratios of the medians, and issue 21's targets ---------------------
H1_CVGATE=$CPU_PLAIN
H1_NGINX=$(median_cpu "$NGINX_NAME")
H1_HAPROXY=$(median_cpu "$HAPROXY_NAME")
H1_FLOOR=$(median_cpu "floor: bare hyper proxy, no policy")
H2_CVGATE=$(median_cpu "cvgate, TLS h2, full policy" "$WORK/h2-rounds.tsv")
H2_NGINX=$(median_cpu "nginx, TLS h2" "$WORK/h2-rounds.tsv")
H2_HAPROXY=$(median_cpu "HAProxy, TLS h2, JWT + 3 rate tables + log" "$WORK/h2-rounds.tsv")
# ratio A B [TARGET]: "A/B×", followed by " (≤ T×: met)" or "missed" when a TARGET is given.
ratio() {
  awk -v a="$1" -v b="$2" -v t="${3:-}" 'BEGIN {
    if (b <= 0) { printf "-"; exit }
    r = a / b; printf "%.2f×", r
    if (t != "") printf " (≤ %s×: **%s**)", t, (r <= t ? "met" : "missed") }'
}
HAPROXY_LOGGED=$(awk -F'\t' '{r += $2; l += $3} END {printf "%d access-log lines for the %d requests of its %d measured runs", l, r, NR}' "$WORK/access-log-check.tsv")
HAPROXY_LOG_TOTAL=$(wc -l <"$WORK/haproxy/access.log")

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

### Fixed rate, plain HTTP/1.1: $FIXED_RATE req/s ($RATE_PCT % of nginx's saturation rate with this generator)

examples/loadgen.rs on CPU $LOAD_CPU with the mock, open model (request i due at t0 + i/rate, latency from that
due time), $CONNS keep-alive connections, 1 s warm-up, ${DURATION}s measured; the row of the round with the
median p99. nginx's saturation rate with this generator: **$NGINX_SAT req/s**, the last step of a ramp in
10 % steps of its wrk rate ($NGINX_MAX_RPS) that kept up (every request answered, p99 < 50 ms; the ramp:
\`$WORK/rate-ramp.tsv\`). wrk's rate is the load CPU's limit (wrk and
the mock share it), not nginx's; this generator costs more per request than wrk, so its ceiling is lower.

| path | req/s | p50 µs | p99 µs | p99.9 µs | proxy CPU µs/req | waited > 1 ms | non-2xx |
|---|---:|---:|---:|---:|---:|---:|---:|
$RATE_ROWS

p99 (medians over the rounds): cvgate $P99_CVGATE µs, nginx $P99_NGINX µs, HAProxy $P99_HAPROXY µs: cvgate ÷ nginx
$(ratio "$P99_CVGATE" "$P99_NGINX" 1.0).

### TLS 1.3, HTTP/2 (h2load)

| path | req/s | p50 | p99 | proxy CPU µs/req | status |
|---|---:|---:|---:|---:|---|
$H2_ROWS

cvgate wrote $AUDIT_LINES audit lines; its peak RSS under load: $CVGATE_RSS_LOAD.

### cvgate against nginx and HAProxy (CPU µs/request, medians over the rounds)

| ratio | HTTP/1.1 | TLS h2 |
|---|---:|---:|
| cvgate ÷ HAProxy | $(ratio "$H1_CVGATE" "$H1_HAPROXY" 0.8) | $(ratio "$H2_CVGATE" "$H2_HAPROXY") |
| cvgate ÷ nginx | $(ratio "$H1_CVGATE" "$H1_NGINX" 1.2) | $(ratio "$H2_CVGATE" "$H2_NGINX" 1.2) |
| HAProxy ÷ nginx | $(ratio "$H1_HAPROXY" "$H1_NGINX") | $(ratio "$H2_HAPROXY" "$H2_NGINX") |
| floor ÷ nginx | $(ratio "$H1_FLOOR" "$H1_NGINX") | (the floor has no TLS) |

cvgate $H1_CVGATE, HAProxy $H1_HAPROXY, nginx $H1_NGINX, floor $H1_FLOOR µs over HTTP/1.1; cvgate $H2_CVGATE,
HAProxy $H2_HAPROXY, nginx $H2_NGINX µs over TLS h2. Targets from issue 21 in brackets.

HAProxy ($("$HAPROXY" -v | awk 'NR == 1 {print $3}'), nbthread 1): the Bearer JWT verified with \`jwt_verify\` (HS256
only, the bench's dev secret; \`exp\` against \`date()\`, \`iss\`, \`aud\`; 401 otherwise, 403 without \`kvk\`),
\`track-sc0/1/2\` on the account (\`sub\`), the KvK (\`kvk\`) and the client's /24, each table
\`http_req_rate(1m)\` with a 429 above $HAPROXY_RATE_LIMIT requests a minute (never reached), \`option httplog\`
to a file, \`http-reuse always\` to the mock. Checked before the runs: 401 without a token, with a forged
payload, a broken signature, an expired and an HS512 token; 403 without \`kvk\`; 200 with the bench's
token; each table tracking. It wrote $HAPROXY_LOGGED (checked per run),
$HAPROXY_LOG_TOTAL lines in all with the warm-ups; its peak RSS under load: $HAPROXY_RSS_LOAD.

### ${EXPORT_MIB} MiB NDJSON export through cvgate

Plain upstream: $EXPORT_PLAIN

gzip upstream (a fresh cvgate in front of the gzip mock, decoding every stream to count it):
$EXPORT_GZ Export audit lines not counted exactly: $GZ_EXPORT_UNCERTAIN.

Reproduce: \`DURATION=$DURATION CONNS=$CONNS ROUNDS=$ROUNDS benches/e2e.sh\`
EOF
