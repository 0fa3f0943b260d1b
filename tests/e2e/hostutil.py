"""Host-level helpers for the e2e harness: processes, mounts and HTTP over unix sockets.

Everything here is scoped by a directory: a process "belongs" to a test run when its command line
names that run's private directory, a mount belongs to it when its mount point lies under it. That
is how several daemons (other test runs, the demo, a developer's own) coexist on one machine
without any cleanup touching the others.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MNT_DETACH = 2  # umount2 flag: lazy unmount, for mounts still busy after their users were killed

# sun_path is 108 bytes including the trailing NUL; keep a margin for the suffixes dockerd and
# containerd add under the exec-root (containerd/containerd-debug.sock).
UNIX_PATH_MAX = 107


class HarnessError(RuntimeError):
    """The harness could not start, reach or clean up something; the message says what and why."""


# --- processes --------------------------------------------------------------------------------


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # the process exited while we looked: nothing to match
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'
    return int(stat.rsplit(")", 1)[1].split()[1])


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def pids_referencing(text: str) -> list[int]:
    """PIDs (other than ours) of live, non-zombie processes whose command line contains ``text``."""
    me = os.getpid()
    return [pid for pid in _all_pids() if pid != me and text in command_line(pid)]


def descendants(pids: list[int]) -> list[int]:
    """Every process below ``pids`` in the process tree, deepest last (``pids`` not included)."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        parent = _ppid(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found: list[int] = []
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and child not in pids:
                found.append(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; return those still alive at ``timeout``."""
    deadline = time.monotonic() + timeout
    left = [pid for pid in pids if alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if alive(pid)]
    return left


def kill_referencing(text: str, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process whose command line contains ``text``, and everything below them.

    The descendants are the containers of a leftover containerd shim: their own command lines name
    nothing of ours, but they belong to the daemon that started the shim. Returns the PIDs killed.
    """
    roots = pids_referencing(text)
    if not roots:
        return []
    victims = list(reversed(descendants(roots))) + roots  # leaves first, so nothing respawns
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):  # exited meanwhile: fine
            os.kill(pid, signal.SIGKILL)
    stuck = wait_gone(victims, timeout)
    if stuck:
        raise HarnessError(f"processes survived SIGKILL for {timeout}s: {stuck}")
    return victims


def shim_sockets(text: str) -> list[Path]:
    """Sockets of the live containerd shims whose command line contains ``text``.

    A shim killed with SIGKILL leaves its socket in /run/containerd/s; containerd names it
    sha256(address/namespace/id), all three read from the shim's own arguments.
    """
    found = []
    for pid in pids_referencing(text):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")
        except OSError:  # exited meanwhile: it removed its socket itself
            continue
        opts = dict(itertools.pairwise(args))
        if "-id" in opts and "-address" in opts and "-namespace" in opts:
            key = os.path.join(opts["-address"], opts["-namespace"], opts["-id"])
            found.append(Path("/run/containerd/s") / hashlib.sha256(key.encode()).hexdigest())
    return found


# --- mounts -----------------------------------------------------------------------------------


def _unescape_mountinfo(field_text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal
    out, i = [], 0
    while i < len(field_text):
        if field_text[i] == "\\" and field_text[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def mounts_under(root: Path | str) -> list[str]:
    """Mount points at or below ``root`` in our mount namespace, deepest first."""
    base = os.path.realpath(root)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape_mountinfo(line.split()[4])
        if point == base or point.startswith(base + "/"):
            points.append(point)
    # deepest first; a path mounted twice appears twice and must be unmounted twice
    return sorted(points, key=lambda p: (p.count("/"), len(p)), reverse=True)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def unmount_all_under(root: Path | str) -> list[str]:
    """Unmount every mount at or below ``root``, deepest first, lazily when busy.

    Returns the mount points unmounted. Raises ``HarnessError`` if any is still there afterwards.
    """
    libc = _libc()
    done: list[str] = []
    for _ in range(10):  # stacked mounts reappear one layer at a time
        points = mounts_under(root)
        if not points:
            return done
        for point in points:
            target = point.encode()
            if libc.umount2(target, 0) != 0 and libc.umount2(target, MNT_DETACH) != 0:
                err = ctypes.get_errno()
                if err != 22:  # EINVAL: already gone (a parent's lazy unmount took it along)
                    raise HarnessError(f"cannot unmount {point}: {os.strerror(err)}")
            done.append(point)
    left = mounts_under(root)
    if left:
        raise HarnessError(f"mounts left under {root}: {left}")
    return done


def leftovers(root: Path | str) -> list[str]:
    """What a clean teardown must not leave behind: processes naming ``root``, mounts under it."""
    text = str(root)
    found = [f"process {pid}: {command_line(pid)}" for pid in pids_referencing(text)]
    found += [f"mount {point}" for point in mounts_under(root)]
    return found


# --- our child processes ---------------------------------------------------------------------


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment without anything that would point the docker CLI at another daemon."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(extra or {})
    return env


def stop_child(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM our child, wait, then SIGKILL its whole process group (it leads its own session)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    with contextlib.suppress(ProcessLookupError):  # workers whose master died keep the group alive
        os.killpg(proc.pid, signal.SIGKILL)


def http_headers_of(config_dir: Path) -> dict[str, str]:
    """The ``HttpHeaders`` a docker CLI using ``config_dir`` would send."""
    path = config_dir / "config.json"
    if not path.exists():
        return {}
    headers = json.loads(path.read_text()).get("HttpHeaders", {})
    return {str(k): str(v) for k, v in headers.items()}


# --- HTTP over a unix socket ------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` speaking to a unix socket instead of TCP."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class HttpReply:
    """One HTTP response: status, headers (as sent, last value wins), raw body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def unix_request(
    path: str | Path,
    method: str,
    target: str,
    body: bytes | None = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> HttpReply:
    """Send one HTTP/1.1 request over the unix socket ``path`` and read the whole reply."""
    conn = UnixHTTPConnection(str(path), timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return HttpReply(resp.status, dict(resp.getheaders()), data)
    finally:
        conn.close()


def unix_raw(path: str | Path, data: bytes, timeout: float = 60.0) -> bytes:
    """Send ``data`` byte for byte and return everything read until the peer closes.

    For requests ``http.client`` cannot express (odd framing, duplicate headers); the caller
    should send ``Connection: close`` so the daemon closes after its reply.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def check_unix_path(path: Path) -> None:
    """Raise ``HarnessError`` if ``path`` is too long to bind or connect as a unix socket."""
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise HarnessError(
            f"unix socket path is {len(os.fsencode(path))} bytes, over the {UNIX_PATH_MAX}-byte limit: "
            f"{path}; use a shorter directory (e.g. under /tmp)"
        )
