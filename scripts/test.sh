#!/usr/bin/env bash
# The whole test suite, as CI runs it: setup, ruff (lint and format), mypy --strict, the import contract, pytest.
# Every step runs even when an earlier one failed; the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! bash scripts/setup.sh; then
    echo "test.sh: setup failed; nothing was tested"
    exit 1
fi

bin=.venv/bin
failed=()
passed=()
step() {
    local name=$1
    shift
    echo
    echo "=== $name: $*"
    local started=$SECONDS
    "$@"
    local rc=$?
    if [[ $name == pytest && $rc -eq 5 ]]; then
        echo "test.sh: pytest collected no tests (exit 5): counted as a failure"
    fi
    echo "=== $name: exit $rc after $((SECONDS - started))s"
    if ((rc)); then failed+=("$name($rc)"); else passed+=("$name"); fi
}

step ruff "$bin/ruff" check .
step ruff-format "$bin/ruff" format --check .
step mypy "$bin/mypy"                # strict; packages authz and admin (pyproject [tool.mypy])
step lint-imports "$bin/lint-imports" # the core imports only the standard library
# unit, integration, e2e (private dockerd), bypass, browser …: everything under tests/
step pytest "$bin/pytest" tests -p no:cacheprovider --durations=15

echo
if ((${#failed[@]})); then
    echo "test.sh: FAILED: ${failed[*]}; passed: ${passed[*]:-none}"
    exit 1
fi
echo "test.sh: all passed: ${passed[*]}"
