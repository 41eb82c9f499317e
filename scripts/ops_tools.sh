#!/usr/bin/env bash
# Install the tools the tests run from Debian's packages: promtool (package prometheus) checks and
# unit-tests docker/prometheus/*.yml (tests/integration/test_monitoring.py); pgbouncer pools the
# PostgreSQL shards of tests/integration/test_shards.py in transaction mode (each run starts its own).
# (docker/compose.yaml is checked by scripts/composecheck, Compose's own loader, built with Go.)
# Only the tools are wanted: the packages' own daemons must not start, so service starts
# are refused while it installs (policy-rc.d, as in Docker images). Idempotent; `make test` runs it.
set -euo pipefail

missing=()
command -v promtool >/dev/null || missing+=(prometheus)
[[ -x /usr/sbin/pgbouncer ]] || missing+=(pgbouncer)
((${#missing[@]})) || exit 0
[[ $(id -u) == 0 ]] || { echo "ops_tools.sh: run as root to install ${missing[*]}" >&2; exit 1; }

policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
fi
echo "ops_tools.sh: installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
command -v promtool >/dev/null
