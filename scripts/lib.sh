# Helpers shared by scripts/*.sh and benches/e2e.sh (sourced, not run). Each caller defines
# `log` first; the process list PIDS, the scratch dir WORK and `cleanup` are for scripts that
# start servers.

# apt_install PKG...: install Debian packages (sudo when not root), without starting their
# services (policy-rc.d; Debian's nginx would otherwise take port 80). Nothing to do: no-op.
apt_install() {
  [ $# -gt 0 ] || return 0
  log "installing $*"
  local sudo="" made_policy=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  if [ -n "$made_policy" ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi
}

# A free loopback TCP port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: until something listens on 127.0.0.1:PORT, up to 10 s.
wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  log "nothing listens on port $1"; return 1
}

# Processes started by the script (append their PIDs), stopped on exit by `cleanup`.
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  log "logs and reports kept in $WORK"
}

# --- the benches' cvgate (benches/e2e.sh, callgrind.sh, idle_tls.sh) ------------------------------

# bench_cert DIR: a self-signed ECDSA P-256 certificate for localhost and 127.0.0.1, DIR/cert.pem
# and DIR/key.pem.
bench_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$1/key.pem" -out "$1/cert.pem" 2>/dev/null
}

# bench_config OUT MOCK_PORT PLAIN_PORT TLS_PORT METRICS_PORT AUDIT [MASK_ALWAYS]: benches/e2e-config.yaml
# rendered into OUT: loopback ports, the certificate of `bench_cert "$WORK"`, the audit file, and
# a closure window 6 h from now (Amsterdam) lasting an hour: checked on every request, never active.
bench_config() {
  local close_start close_end
  close_start=$(TZ=Europe/Amsterdam date -d '+6 hours' +%H:00)
  close_end=$(TZ=Europe/Amsterdam date -d '+7 hours' +%H:00)
  sed -e "s|@MOCK_PORT@|$2|; s|@PLAIN_PORT@|$3|; s|@TLS_PORT@|$4|" \
    -e "s|@METRICS_PORT@|$5|; s|@CERT@|$WORK/cert.pem|; s|@KEY@|$WORK/key.pem|" \
    -e "s|@AUDIT@|$6|; s|@CLOSE_START@|$close_start|; s|@CLOSE_END@|$close_end|" \
    -e "s|@MASK_ALWAYS@|${7:-false}|" \
    benches/e2e-config.yaml >"$1"
}
