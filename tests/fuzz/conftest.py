"""Fixtures and run modes of the fuzz suite (docs/fuzzing.md).

- ``stack``: one in-process plugin app per module (``harness.FuzzStack``); module scope because
  Hypothesis runs hundreds of examples per test and the app holds no per-case state that matters
  (ownership changes from fuzzed AuthZRes calls are part of what is fuzzed).
- Marker ``fuzz`` is put on every test here: ``pytest -m "not fuzz"`` skips the suite.
- ``AUTHZ_FUZZ_LONG=1`` multiplies every property's examples (``harness.LONG_FACTOR``), draws
  fresh random cases, and lifts the per-test timeout; the end-of-run summary prints the number of
  plugin calls made per property either way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.harness import CASES, LONG, LONG_FACTOR, FuzzStack

_HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: property-based fuzzing of the plugin endpoints (tests/fuzz)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.fuzz)
            if LONG:
                item.add_marker(pytest.mark.timeout(0))  # a long run takes as long as it takes


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not CASES:
        return
    mode = f"long (x{LONG_FACTOR})" if LONG else "default (derandomized)"
    terminalreporter.write_sep("-", f"fuzz: {sum(CASES.values())} cases, {mode} run")
    for name, count in sorted(CASES.items()):
        terminalreporter.write_line(f"  {count:>8}  {name}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> FuzzStack:
    return FuzzStack(tmp_path_factory.mktemp("fuzz-keys"))
