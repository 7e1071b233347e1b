#!/usr/bin/env bash
# TLS audit of cvgate's listener with testssl.sh (Debian package `testssl.sh`), loopback only.
#
# Starts the mock CV API and `cvgate serve` with the repo's config.yaml (ports moved to free
# ones), behind a certificate signed by a throw-away local CA that testssl is told to trust
# (`--add-ca`), so that the findings are about cvgate's TLS, not about a test certificate: it is
# valid for 398 days and names CRL and OCSP locations, as a public CA's certificate would (testssl
# rates a short validity or no revocation info HIGH, which says nothing about the listener). Runs the audit once per key type (ECDSA P-256 and RSA 2048), writes testssl's
# JSON and log to a temp dir, prints a Markdown summary (paste into docs/tls-audit.md) and exits
# non-zero when any finding is HIGH or CRITICAL.
#
# Usage: scripts/tls-audit.sh   (installs testssl.sh and openssl if missing; builds --release)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "tls-audit: $*" >&2; }
. scripts/lib.sh

need=()
command -v testssl >/dev/null 2>&1 || command -v testssl.sh >/dev/null 2>&1 || need+=(testssl.sh)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
apt_install "${need[@]}"
TESTSSL=$(command -v testssl || command -v testssl.sh)

log "cargo build --release"
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/cvgate"

WORK=$(mktemp -d /tmp/cvgate-tls-audit.XXXXXX)
trap cleanup EXIT

# --- a local CA and one server certificate per key type ------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 -subj "/CN=cvgate audit CA" \
  -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
server_cert() { # name, openssl -newkey argument(s)
  local name=$1; shift
  openssl req -new -nodes "$@" -subj /CN=localhost -keyout "$WORK/$name.key" -out "$WORK/$name.csr" 2>/dev/null
  printf '%s\n' 'subjectAltName=DNS:localhost,IP:127.0.0.1' 'extendedKeyUsage=serverAuth' \
    'keyUsage=digitalSignature,keyEncipherment' 'crlDistributionPoints=URI:http://ca.invalid/audit.crl' \
    'authorityInfoAccess=OCSP;URI:http://ocsp.ca.invalid' >"$WORK/$name.ext"
  openssl x509 -req -in "$WORK/$name.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial -days 398 \
    -extfile "$WORK/$name.ext" -out "$WORK/$name.crt" 2>/dev/null
  cat "$WORK/$name.crt" "$WORK/ca.pem" >"$WORK/$name.chain.pem"
}
server_cert ecdsa -newkey ec -pkeyopt ec_paramgen_curve:prime256v1
server_cert rsa -newkey rsa:2048

MOCK_PORT=$(free_port)
"$BIN" mock-cv-api --listen "127.0.0.1:$MOCK_PORT" 2>"$WORK/mock.log" &
PIDS+=($!)
wait_port "$MOCK_PORT"

summary() { # json file → Markdown rows; exit status 1 when HIGH/CRITICAL present
  python3 - "$1" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))
if isinstance(rows, dict):  # --jsonfile-pretty shape
    rows = [f for s in rows.get("scanResult", []) for v in s.values() if isinstance(v, list) for f in v]
order = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "INFO", "OK"]
counts = {k: 0 for k in order}
for r in rows:
    counts[r.get("severity", "INFO")] = counts.get(r.get("severity", "INFO"), 0) + 1
print("| severity | findings |\n|---|---:|")
for k in order:
    print(f"| {k} | {counts.get(k, 0)} |")
print()
pick = {"SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3", "cipherlist_NULL", "cipherlist_aNULL",
        "cipherlist_EXPORT", "cipherlist_LOW", "cipherlist_3DES_IDEA", "cipherlist_AVERAGE",
        "cipherlist_STRONG", "PFS", "PFS_ECDHE_curves", "cipherorder_TLSv1_2", "cipherorder_TLSv1_3", "ALPN_HTTP2", "ALPN", "cert_keySize", "cert_chain_of_trust",
        "overall_grade", "secure_renego", "secure_client_renego", "heartbleed", "ROBOT", "CRIME_TLS",
        "BREACH", "POODLE_SSL", "fallback_SCSV", "SWEET32", "FREAK", "LOGJAM", "BEAST", "LUCKY13", "RC4",
        "DROWN", "HSTS", "TLS_session_ticket", "cipher_order", "protocol_negotiated", "cipher_negotiated"}
print("| check | severity | finding |\n|---|---|---|")
for r in rows:
    sev = r.get("severity", "")
    if r.get("id") in pick or sev in ("CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN"):
        finding = str(r.get("finding", "")).replace("|", "\\|").replace("\n", " ")
        print(f"| `{r.get('id')}` | {sev} | {finding} |")
print()
bad = counts.get("CRITICAL", 0) + counts.get("HIGH", 0)
sys.exit(1 if bad else 0)
EOF
}

status=0
echo "# TLS audit (testssl.sh), $(date -u '+%Y-%m-%d %H:%M') UTC"
echo
echo "testssl.sh $(dpkg-query -W -f '${Version}' testssl.sh 2>/dev/null || echo '(version unknown)') with $(openssl version | cut -d' ' -f1-2), against \`cvgate serve\` ($("$BIN" --version)) and the repo's config.yaml (TLS 1.2 + 1.3, rustls defaults), on 127.0.0.1. Reproduce: \`scripts/tls-audit.sh\`."
echo
for kind in ecdsa rsa; do
  TLS_PORT=$(free_port); METRICS_PORT=$(free_port)
  # config.yaml as shipped, but: free ports, no plain/admin listener, the audit certificate,
  # no persisted state, audit lines off.
  sed -e "s|addr: \"127.0.0.1:8443\"|addr: \"127.0.0.1:$TLS_PORT\"|" \
      -e "s|^    cert: null|    cert: \"$WORK/$kind.chain.pem\"|" -e "s|^    key: null|    key: \"$WORK/$kind.key\"|" \
      -e "s|^  plain: .*|  plain: null|" -e "s|^  metrics: .*|  metrics: \"127.0.0.1:$METRICS_PORT\"|" \
      -e "s|^  admin: .*|  admin: null|" -e "s|url: \"http://127.0.0.1:8081\"|url: \"http://127.0.0.1:$MOCK_PORT\"|" \
      -e "s|^  sink: stdout |  sink: \"off\" |" -e "s|^  file: state/blocks.json |  file: null |" \
      config.yaml >"$WORK/cvgate-$kind.yaml"
  grep -q '^  file: null ' "$WORK/cvgate-$kind.yaml" || { log "config.yaml no longer has blocks.file"; exit 1; }
  "$BIN" check-config --config "$WORK/cvgate-$kind.yaml" >/dev/null
  CVGATE_LOG=warn "$BIN" serve --config "$WORK/cvgate-$kind.yaml" 2>"$WORK/cvgate-$kind.log" &
  pid=$!
  PIDS+=("$pid")
  wait_port "$TLS_PORT"
  log "testssl against the $kind certificate on port $TLS_PORT (takes a few minutes)"
  # -p protocols, -s cipher categories, -f forward secrecy, -S server defaults/cert, -h HTTP
  # headers, -U vulnerabilities, -P server preference, -E ciphers per protocol.
  "$TESTSSL" --quiet --color 0 --warnings off --nodns min --ip 127.0.0.1 --add-ca "$WORK/ca.pem" \
    --openssl-timeout 10 --jsonfile "$WORK/$kind.json" --logfile "$WORK/$kind.log" \
    -p -s -f -S -h -U -P -E "localhost:$TLS_PORT" >/dev/null 2>&1 || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "## $kind certificate"
  echo
  if [ ! -s "$WORK/$kind.json" ]; then
    echo "testssl produced no report (see $WORK/$kind.log)"; status=1; continue
  fi
  summary "$WORK/$kind.json" || status=1
done
[ "$status" = 0 ] && log "no HIGH or CRITICAL findings" || log "HIGH/CRITICAL findings or a failed run: see above"
exit "$status"
