#!/usr/bin/env bash
# The test command (README "Quick start"): installs the system packages the tests use when they
# are missing (redis-server: each Redis test starts its own on a free loopback port; promtool
# and prometheus: the monitoring tests; nginx: a real gzipping web server as the upstream in
# tests/nginx_upstream.rs; systemd: `systemd-analyze verify` of deploy/systemd; kubernetes-client:
# Debian's kubectl, whose embedded kustomize renders deploy/k8s), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "test.sh: $*" >&2; }
. scripts/lib.sh
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
apt_install "${need[@]}"
cargo test "$@"
