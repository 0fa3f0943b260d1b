"""The demo: the real plugin in front of a private dockerd, three users, examples to try.

Run through ``bash scripts/demo.sh`` (which runs setup.sh first). State lives in ``./demo-state``
(or ``$DEMO_STATE_DIR``); sockets go there too unless the path is too long for a unix socket, in
which case they go to a directory under /tmp (and the demo says so). Ctrl-C (SIGINT), SIGTERM or
SIGHUP stop everything it started; the database and logs stay in the state directory.
``DEMO_EXIT_AFTER_SETUP=1`` tears down right after printing the examples (for tests).

It uses the e2e harness (tests/e2e), so the demo runs exactly what the tests run.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from harness import SPEC_DIR, authzctl_bin, clean_env, sweep_stale_specs  # noqa: E402
from hostutil import UNIX_PATH_MAX, HarnessError, kill_referencing, leftovers, unmount_all_under  # noqa: E402
from stack import ANONYMOUS, Stack, start_stack  # noqa: E402

POLICY = ROOT / "examples" / "demo-policy.yaml"
USERS = ("admin", "dev", "viewer")
ADMIN_UI = ("127.0.0.1", 8765)


class Stop(Exception):
    """A stop signal arrived: unwind, cleaning up on the way."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # one signal starts the cleanup; more of them must not interrupt it half-way
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise Stop(signal.Signals(signum).name)


def say(text: str = "") -> None:
    print(text, flush=True)


def clean_stale(state: Path) -> None:
    """Remove what a previous demo run in ``state`` left (it may have been killed hard)."""
    dirs = [state]
    marker = state / "runtime-dir"
    if marker.exists():
        dirs.append(Path(marker.read_text().strip()))
    name_file = state / "plugin-name"
    for d in dirs:
        if not d.exists():
            continue
        killed = kill_referencing(f"{d}/")  # only processes naming this demo's own directories
        if killed:
            say(f"demo: stopped processes of a previous run: {killed}")
        unmount_all_under(d)
        if name_file.exists():  # its spec file, if it still points at this demo's socket
            spec = SPEC_DIR / f"{name_file.read_text().strip()}.spec"
            if spec.exists() and spec.read_text().strip() == f"unix://{d / 'authz.sock'}":
                spec.unlink()
    for d in reversed(dirs):
        shutil.rmtree(d, ignore_errors=True)


def pick_runtime_dir(state: Path) -> Path:
    """``state`` if every socket fits in sun_path there, else a fresh short dir under /tmp."""
    longest = state / "exec" / "containerd" / "containerd-debug.sock"
    if len(os.fsencode(longest)) <= UNIX_PATH_MAX:
        return state
    runtime = Path(tempfile.mkdtemp(prefix="authz-demo-", dir="/tmp"))
    say(f"demo: {state} is too long for unix sockets ({UNIX_PATH_MAX} bytes max);")
    say(f"      sockets and the daemon's data go to {runtime} instead")
    return runtime


def start_admin_ui(stack: Stack, cleanup: ExitStack) -> str:
    """Create a UI admin account and start ``authzctl admin serve`` on loopback; a line to print."""
    host, port = ADMIN_UI
    password = secrets.token_urlsafe(12)
    stack.authzctl("admin", "create-user", "demo", "--role", "ui-admin", "--password-stdin", input=password + "\n")
    args = ["--bind", f"{host}:{port}"]
    log = (stack.workdir / "admin-ui.log").open("ab")
    cleanup.callback(log.close)
    proc = subprocess.Popen(
        [authzctl_bin(), "admin", "serve", *args],
        env=clean_env(stack.env),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=stack.workdir,
        start_new_session=True,
    )

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait(10)

    cleanup.callback(stop)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(ADMIN_UI, timeout=1).close()
            return f"admin UI: http://{host}:{port}/  sign in as demo / {password}"
        except OSError:
            time.sleep(0.2)
    return f"admin UI: did not come up; see {stack.workdir / 'admin-ui.log'}"


def examples(stack: Stack) -> list[tuple[str, str, list[str], str]]:
    """(comment, user, docker args, expected outcome) — printed, and checked by tests/e2e/test_demo.py."""
    run = ["run", "--rm", "--network", "none"]
    return [
        ("dev may not start privileged containers", "dev", [*run, "--privileged", "tiny", "true"], "denied"),
        (
            "dev may not bind-mount the host's root",
            "dev",
            [*run, "--user", "1000", "-v", "/:/host", "tiny", "ls", "/host"],
            "denied",
        ),
        (
            "dev runs unprivileged, non-root containers",
            "dev",
            [*run, "--user", "1000", "tiny", "echo", "hello"],
            "allowed, prints: hello",
        ),
        ("viewer may list containers", "viewer", ["ps"], "allowed"),
        ("viewer may not run anything", "viewer", [*run, "--user", "1000", "tiny", "echo", "hello"], "denied"),
        ("no token: only /_ping is answered", ANONYMOUS, ["ps"], "denied"),
        (
            "admin may do everything, host binds included",
            "admin",
            [*run, "-v", "/etc:/host-etc:ro", "tiny", "ls", "/host-etc/hostname"],
            "allowed, prints: /host-etc/hostname",
        ),
    ]


def show(stack: Stack, admin_line: str) -> None:
    host = f"unix://{stack.daemon.socket}"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(stack.env.items()))
    say()
    say(f"demo: plugin {stack.plugin_name} (socket {stack.plugin.socket}) guards the dockerd at {host}")
    say(f"      users: {', '.join(USERS)} — policy {POLICY.relative_to(ROOT)}, tokens in {stack.workdir / 'users'}")
    say(f"      {admin_line}")
    say()
    say("Try these (each shows what to expect; deny messages come from the plugin):")
    for comment, user, args, expect in examples(stack):
        say()
        say(f"  # {comment}")
        say(f"  $ DOCKER_HOST={host} DOCKER_CONFIG={stack.configs[user]} docker {shlex.join(args)}")
        denied = f"denied: authorization denied by plugin {stack.plugin_name}: authz: denied …"
        say(f"  → {denied if expect == 'denied' else expect}")
    say()
    say("Read the audit log (every decision, with the reason):")
    say(f"  $ {env} {authzctl_bin()} audit tail")
    say()
    say("demo: ready — Ctrl-C stops everything it started")


def main() -> int:
    state = Path(os.environ.get("DEMO_STATE_DIR") or ROOT / "demo-state").resolve()
    exit_after_setup = os.environ.get("DEMO_EXIT_AFTER_SETUP") == "1"
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        say("demo: needs root and dockerd (bash scripts/setup.sh installs docker.io)")
        return 1
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    runtime = state
    try:
        clean_stale(state)
        sweep_stale_specs()
        state.mkdir(parents=True)
        runtime = pick_runtime_dir(state)
        (state / "runtime-dir").write_text(f"{runtime}\n")
        say(f"demo: starting in {state} (plugin, private dockerd, users, tiny image) …")
        with (
            start_stack(
                state, POLICY, USERS, runtime_dir=runtime, spec_prefix="authz-demo", remove_workdir=False
            ) as stack,
            ExitStack() as cleanup,
        ):
            (state / "plugin-name").write_text(f"{stack.plugin_name}\n")
            show(stack, start_admin_ui(stack, cleanup))
            if not exit_after_setup:
                while True:
                    signal.pause()
    except Stop as stop:
        say(f"demo: {stop} received")
    except HarnessError as exc:
        say(f"demo: failed: {exc}")
        for note in getattr(exc, "__notes__", []):
            say(f"      {note}")
        return 1
    left = leftovers(state) + (leftovers(runtime) if runtime != state else [])
    name_file = state / "plugin-name"
    if name_file.exists() and (spec := SPEC_DIR / f"{name_file.read_text().strip()}.spec").exists():
        left.append(f"spec file {spec}")
    if left:
        say(f"demo: stopped, but these are still there: {left}")
        return 1
    if runtime != state:
        shutil.rmtree(runtime, ignore_errors=True)
    say(f"demo: stopped; processes, mounts and the plugin spec are gone (database and logs kept in {state})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
