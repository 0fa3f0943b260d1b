#!/usr/bin/env bash
# Prepare this machine for the demo and the tests. Idempotent: run it as often as you like.
# Needs root on Debian 12 when a package is missing. Never starts the system docker service:
# the demo and the tests run private daemons of their own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "setup: $*"; }

# docker-compose (v1, on docker-py): a second Engine API client for the e2e workflows
PACKAGES=(docker.io docker-compose busybox-static chromium chromium-driver postgresql python3-venv iproute2 curl)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        say "missing Debian packages: ${missing[*]}; run this script as root to install them" >&2
        exit 1
    fi
    say "installing ${missing[*]}"
    # keep package scripts from starting docker.service or postgresql: we run private instances
    policy_rc=/usr/sbin/policy-rc.d
    made_policy_rc=""
    if [[ ! -e $policy_rc ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy_rc"
        chmod 755 "$policy_rc"
        made_policy_rc=1
    fi
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l
    status=0
    apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}" || status=$?
    [[ -n $made_policy_rc ]] && rm -f "$policy_rc"
    if ((status)); then
        say "apt-get failed ($status)" >&2
        exit "$status"
    fi
else
    say "Debian packages present: ${PACKAGES[*]}"
fi

# Plugin discovery directories (shared by every daemon on the host; specs are per test run).
for dir in /etc/docker/plugins /run/docker/plugins; do
    if [[ ! -d $dir ]]; then
        if [[ $(id -u) -eq 0 ]]; then
            mkdir -p "$dir"
            [[ $dir == /run/* ]] && chmod 700 "$dir"
            say "created $dir"
        else
            say "note: $dir missing (needs root); the e2e tests will be skipped"
        fi
    fi
done

# Python environment: .venv with the project installed editable, re-installed when
# pyproject.toml changed or the install looks broken.
if [[ ! -x .venv/bin/python ]]; then
    say "creating .venv"
    python3 -m venv .venv
fi
stamp=.venv/.authz-setup-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)
if [[ $want != "$have" ]] || [[ ! -x .venv/bin/authzctl ]] \
    || ! .venv/bin/python -c 'import authz, admin, pytest, flask, sqlalchemy; admin.create_app' 2>/dev/null; then
    say "installing the project into .venv (pip install -e '.[test]')"
    .venv/bin/python -m pip install -q -e '.[test]'
    echo "$want" >"$stamp"
else
    say ".venv up to date with pyproject.toml"
fi
say "done"
