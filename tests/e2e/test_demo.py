"""The README's first command: ``bash scripts/demo.sh`` does what it prints, and cleans up.

The demo prints example commands, each followed by the outcome to expect. These tests run the
demo as a user would, copy those commands out of its output, run them, and compare.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import SPEC_DIR, clean_env
from hostutil import kill_referencing, leftovers, unmount_all_under

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
READY = "demo: ready"
STOPPED = "demo: stopped"


@dataclass
class Example:
    command: str
    expect: str


class Demo:
    """``bash scripts/demo.sh`` as a subprocess, its output read line by line."""

    def __init__(self, state: Path, exit_after_setup: bool = False) -> None:
        env = clean_env({"DEMO_STATE_DIR": str(state)})
        if exit_after_setup:
            env["DEMO_EXIT_AFTER_SETUP"] = "1"
        self.proc = subprocess.Popen(
            ["bash", "scripts/demo.sh"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, marker: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if line.startswith(marker):
                return
        pytest.fail(f"demo never printed {marker!r}; output:\n" + "\n".join(self.lines))

    def finish(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        while not self._queue.empty():
            line = self._queue.get_nowait()
            if line is not None:
                self.lines.append(line)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return rc

    def stop(self) -> None:
        """After a failure: let the demo clean up (SIGTERM), SIGKILL only if it hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.finish(timeout=30)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def examples(self) -> list[Example]:
        found = []
        for i, line in enumerate(self.lines[:-1]):
            nxt = self.lines[i + 1].strip()
            if line.startswith("  $ ") and nxt.startswith("→ "):
                found.append(Example(line[4:], nxt[2:]))
        return found

    def plugin_name(self) -> str:
        match = re.search(r"^demo: plugin (\S+) ", self.output, re.MULTILINE)
        assert match, self.output
        return match.group(1)


def run_printed(command: str) -> subprocess.CompletedProcess[str]:
    """Run a printed ``VAR=value … program args`` line without a shell."""
    words = shlex.split(command)
    env = clean_env()
    while "=" in words[0] and not words[0].startswith(("/", "-")):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return subprocess.run(words, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def state() -> Iterator[Path]:
    """A short state dir for the demo; whatever a failed test left in it is removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="authz-demo-", dir="/tmp"))
    yield base / "s"
    runtimes = [Path(marker.read_text().strip()) for marker in base.rglob("runtime-dir")]
    for d in [base, *runtimes]:
        kill_referencing(f"{d}/")
        unmount_all_under(d)
        for spec in SPEC_DIR.glob("authz-demo-*.spec"):  # only those pointing into our dirs
            if spec.read_text().startswith(f"unix://{d}/"):
                spec.unlink()
        shutil.rmtree(d, ignore_errors=True)


def assert_cleaned_up(demo: Demo, state: Path) -> None:
    assert leftovers(state) == [], demo.output
    assert not (state / "docker.sock").exists()
    assert not (state / "authz.sock").exists()
    assert not (state / "data").exists()
    assert not (SPEC_DIR / f"{demo.plugin_name()}.spec").exists()
    assert (state / "authz.db").exists(), "the audit database is kept for reading after the demo"


def test_demo_examples_behave_as_printed_and_ctrl_c_cleans_up(state: Path) -> None:
    demo = Demo(state)
    try:
        demo.wait_for(READY, timeout=240)
        examples = demo.examples()
        assert len(examples) >= 5, demo.output
        assert {e.expect.split(":")[0].split(",")[0] for e in examples} == {"allowed", "denied"}
        denied_prefix = f"authorization denied by plugin {demo.plugin_name()}: authz: denied"
        for example in examples:
            result = run_printed(example.command)
            seen = f"{example.command}\n→ rc {result.returncode}\n{result.stdout}{result.stderr}"
            if example.expect.startswith("denied"):
                assert result.returncode != 0, seen
                assert denied_prefix in result.stderr, seen
            else:
                assert example.expect.startswith("allowed"), seen
                assert result.returncode == 0, seen
                if "prints: " in example.expect:
                    assert result.stdout.strip() == example.expect.split("prints: ", 1)[1], seen

        audit = [line[4:] for line in demo.lines if line.startswith("  $ ") and line.endswith("audit tail")]
        assert len(audit) == 1, demo.output
        tail = run_printed(audit[0])
        assert tail.returncode == 0, tail.stderr
        assert "dev" in tail.stdout, "the denied developer requests are in the audit log"

        demo.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        assert demo.finish(timeout=60) == 0, demo.output
    finally:
        demo.stop()
    assert STOPPED in demo.output
    assert_cleaned_up(demo, state)


def test_demo_exit_after_setup_leaves_nothing_running(state: Path) -> None:
    demo = Demo(state, exit_after_setup=True)
    try:
        demo.wait_for(READY, timeout=240)
        assert demo.finish(timeout=120) == 0, demo.output
    finally:
        demo.stop()
    assert STOPPED in demo.output
    assert_cleaned_up(demo, state)


def test_demo_moves_sockets_to_tmp_when_the_state_path_is_too_long(state: Path) -> None:
    deep = state / ("d" * 60)
    demo = Demo(deep, exit_after_setup=True)
    try:
        demo.wait_for(READY, timeout=240)
        assert demo.finish(timeout=120) == 0, demo.output
    finally:
        demo.stop()
    match = re.search(r"sockets and the daemon's data go to (/tmp/authz-demo-\S+) instead", demo.output)
    assert match, demo.output
    runtime = Path(match.group(1))
    assert f"DOCKER_HOST=unix://{runtime}/docker.sock" in demo.output
    assert not runtime.exists()
    assert leftovers(runtime) == []
    assert_cleaned_up(demo, deep)
    assert os.path.exists(deep / "users" / "dev" / "config.json")
