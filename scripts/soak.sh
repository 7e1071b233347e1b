#!/usr/bin/env bash
# Soak: cvgate under mixed traffic for a bounded time (10 minutes by default), loopback only:
# legit, abusive and anonymous traffic, bad tokens, h2load bursts, 10,000 idle connections from a
# separate process, reloads every 30 s (one of them broken), a closure window mid-run. Samples RSS,
# fds and threads every 10 s; prints a Markdown report (paste into docs/soak.md); exits 1 when a
# check fails. Details: scripts/soak.py.
#
# Usage: scripts/soak.sh            (installs python3 and nghttp2-client if missing; builds --release)
# Knobs: DURATION=600 IDLE=10000
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "soak: $*" >&2; }
. scripts/lib.sh
need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
apt_install "${need[@]}"
echo "soak: cargo build --release" >&2
cargo build --release --quiet
# 10,000 idle sockets on each side need more than the usual 1024 fds (root may raise the hard limit).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 scripts/soak.py --bin "${CARGO_TARGET_DIR:-target}/release/cvgate" \
  --duration "${DURATION:-600}" --idle "${IDLE:-10000}"
