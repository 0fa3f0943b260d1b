#!/usr/bin/env bash
# The long fuzz run (docs/fuzzing.md): every property of tests/fuzz with AUTHZ_FUZZ_FACTOR (25)
# times its default examples and fresh random seeds, > 100,000 cases in total. Takes 10-30 min.
#   bash bench/fuzz_long.sh                      # everything
#   bash bench/fuzz_long.sh -k differential      # one file or property (any pytest arguments)
#   AUTHZ_FUZZ_FACTOR=100 bash bench/fuzz_long.sh
# A failure prints the falsifying example and a @reproduce_failure blob to paste onto the test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export AUTHZ_FUZZ_LONG=1
export AUTHZ_FUZZ_FACTOR="${AUTHZ_FUZZ_FACTOR:-25}"
started=$SECONDS
status=0
.venv/bin/pytest tests/fuzz -p no:cacheprovider -q -rf "$@" || status=$?
echo "fuzz_long.sh: pytest exit $status after $((SECONDS - started))s (factor $AUTHZ_FUZZ_FACTOR)"
exit "$status"
