#!/usr/bin/env bash
# The demo (README's first command): the plugin in front of a private dockerd, example users and
# roles, the admin UI when available. Ctrl-C stops and cleans up everything it started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
