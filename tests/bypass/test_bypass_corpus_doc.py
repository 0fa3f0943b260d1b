"""docs/bypass-corpus.md lists exactly the techniques of this directory, with the right outcome.

No daemon needed: the tests are collected (``pytest --collect-only`` in a subprocess, so
parametrised cases appear with their ids) and read (AST: the ``[B…]``/``[§…]`` catalogue id
that starts each docstring, the ``@daemon_rejects`` decorator). The document's table must have
one row per collected technique, the same catalogue id, the same outcome, and totals that add
up. Tests whose docstring starts with ``[control]`` are controls, not techniques.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DOC = ROOT / "docs" / "bypass-corpus.md"
DENIED, DAEMON = "denied by authz", "rejected by the daemon"
_ROW = re.compile(r"^\|(?P<technique>[^|]+)\|(?P<id>[^|]+)\|\s*`(?P<test>[^`]+)`\s*\|(?P<outcome>[^|]+)\|\s*$")
_TOTALS = re.compile(r"(\d+) techniques: (\d+) denied by authz, (\d+) rejected by the daemon")


@dataclass(frozen=True)
class Function:
    catalogue_id: str
    outcome: str


def _functions() -> dict[str, Function]:
    """Test function name → its catalogue id and outcome, read from the source."""
    found: dict[str, Function] = {}
    for path in sorted(HERE.glob("test_bypass_*.py")):
        if path.name == Path(__file__).name:
            continue  # this module checks the document; it is not part of the corpus
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
                continue
            doc = ast.get_docstring(node) or ""
            match = re.match(r"\[([^\]]+)\]", doc)
            assert match, f"{path.name}::{node.name}: the docstring must start with [B…], [§…] or [control]"
            rejects = any(isinstance(d, ast.Name) and d.id == "daemon_rejects" for d in node.decorator_list)
            found[node.name] = Function(match.group(1), DAEMON if rejects else DENIED)
    return found


def _collected() -> list[str]:
    """Node names (``test_x[param]``) of every bypass technique test, as pytest collects them."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(HERE)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "::" in line]
    own = f"tests/bypass/{Path(__file__).name}"
    return [line.split("::", 1)[1] for line in lines if not line.startswith(f"{own}::")]


def _rows() -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for line in DOC.read_text().splitlines():
        match = _ROW.match(line)
        if match is None or match["test"] == "test":
            continue
        name = match["test"].strip()
        assert name not in rows, f"{DOC.name}: {name} is listed twice"
        rows[name] = (match["id"].strip(), match["outcome"].strip())
    return rows


def test_doc_lists_every_technique_with_its_id_and_outcome() -> None:
    functions = _functions()
    techniques = [name for name in _collected() if functions[name.split("[", 1)[0]].catalogue_id != "control"]
    rows = _rows()
    assert sorted(rows) == sorted(techniques), (
        f"missing from {DOC.name}: {sorted(set(techniques) - set(rows))}; "
        f"listed but not a test: {sorted(set(rows) - set(techniques))}"
    )
    for name, (catalogue_id, outcome) in rows.items():
        function = functions[name.split("[", 1)[0]]
        assert (catalogue_id, outcome) == (function.catalogue_id, function.outcome), name


def test_doc_totals_add_up() -> None:
    rows = _rows()
    totals = _TOTALS.search(DOC.read_text())
    assert totals is not None, f"{DOC.name} must state 'N techniques: D denied by authz, R rejected by the daemon'"
    outcomes = [outcome for _, outcome in rows.values()]
    expected = (len(rows), outcomes.count(DENIED), outcomes.count(DAEMON))
    assert tuple(int(group) for group in totals.groups()) == expected
