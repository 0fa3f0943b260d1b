"""Build the managed (v2) plugin directory: ``plugin/build/authz-plugin/{config.json,rootfs/}``.

No registry and no base image: the rootfs is assembled from the Python running this script (run
it with the project's ``.venv/bin/python``):

- the interpreter, its shared library and its standard library (minus tests, IDLE, tkinter …),
  each at the same absolute path as on this machine, so the interpreter finds its prefix and its
  RUNPATH unchanged whatever the layout (pyenv, Debian's /usr, a CI tool cache);
- a virtualenv at ``/opt/authz`` holding only the runtime dependencies of ``docker-authz`` (with
  the ``postgres`` extra), copied file by file from their installed RECORDs, plus the ``authz``
  package from this checkout;
- every shared library ``ldd`` lists for those ELF files (glibc, libssl, libffi, libsqlite3 …);
- ``plugin/entrypoint.py``, the mount points, a minimal /etc/passwd.

Measured on the development machine: about 5 s and 110 MB (``debootstrap --variant=minbase
--include=python3 bookworm`` alone took 92 s from the mirror, before any project dependency).

Then: ``docker plugin create authz:latest plugin/build/authz-plugin``. Everything is written under
``--out`` (default ``plugin/build``, gitignored); nothing is cached elsewhere.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
PROJECT = "docker-authz"
EXTRAS = ("postgres",)  # psycopg2: the plugin must reach PostgreSQL when AUTHZ_DATABASE_URL says so
VENV = Path("/opt/authz")
PLUGIN_DIRS = ("/run/docker/plugins", "/var/lib/authz", "/etc/authz", "/tmp")  # noqa: S108 - rootfs paths
# Standard library parts the plugin never imports: 150+ MB of tests, GUIs and build leftovers.
STDLIB_SKIP = frozenset(
    {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages", "dist-packages",
     "pydoc_data", "__phello__", "unittest", "venv"}
)  # fmt: skip
# Extension modules that would drag X11, ncurses or readline into the rootfs (prefix match).
DYNLOAD_SKIP = ("_tkinter", "_curses", "readline", "_gdbm", "_dbm", "nis", "xxlimited", "_test", "_ctypes_test",
                "_xx", "xxsubtype")  # fmt: skip
PACKAGE_DATA = frozenset({".py", ".ini", ".mako", ".yaml"})  # pyproject's package-data, and the modules


class BuildError(Exception):
    """The rootfs cannot be assembled from this machine's Python."""


class Rootfs:
    """A directory that receives host files at their host paths, symlinks kept as symlinks."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, inside: Path | str) -> Path:
        return self.root / Path(inside).relative_to("/")

    def mirror(self, host_path: Path) -> None:
        """Copy ``host_path`` to the same path in the rootfs; every symlink on the way is recreated.

        Writes only through real directories of the rootfs: a link is created, never followed,
        so an absolute link (``/lib64/ld-linux…`` → ``/lib/…``) can never make us write on the host.
        """
        path = Path(os.path.abspath(host_path))
        prefix = Path("/")
        for index, part in enumerate(path.parts[1:], start=1):
            prefix = prefix / part
            if prefix.is_symlink():
                dest = self.path(prefix)
                if not os.path.lexists(dest):
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(os.readlink(prefix), dest)
                target = Path(os.path.normpath(prefix.parent / os.readlink(prefix)))
                self.mirror(target.joinpath(*path.parts[index + 1 :]))
                return
        dest = self.path(path)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        elif not os.path.lexists(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)

    def copy_tree(self, source: Path, skip: frozenset[str] = frozenset()) -> None:
        """Copy a host directory tree to its own path (symlinks kept), leaving out what ``_unused`` names."""
        self.mirror(source)  # recreates links on the way, creates the real directory
        real = source.resolve()
        shutil.copytree(
            real,
            self.path(real),
            symlinks=True,
            ignore=lambda d, names: [n for n in names if _unused(Path(d), n, Path(d) == real and n in skip)],
            dirs_exist_ok=True,
        )


def _unused(directory: Path, name: str, skipped: bool) -> bool:
    if skipped or (name.startswith("config-") and directory.name.startswith("python")):  # libpython*.a, Makefile
        return True
    if ".opt-1." in name or ".opt-2." in name:  # bytecode for `python -O`, never used
        return True
    return directory.name == "lib-dynload" and name.startswith(DYNLOAD_SKIP)


def runtime_distributions(project: str = PROJECT, extras: Iterable[str] = EXTRAS) -> list[metadata.Distribution]:
    """``project`` and the closure of its requirements (with ``extras``), as installed here."""
    found: dict[str, metadata.Distribution] = {}
    pending: list[tuple[str, tuple[str, ...]]] = [(project, tuple(extras))]
    while pending:
        name, wanted = pending.pop()
        key = name.lower().replace("_", "-")
        if key in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise BuildError(f"{name} is not installed in {sys.prefix}: run scripts/setup.sh first") from None
        found[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (wanted or ("",))):
                pending.append((req.name, tuple(req.extras)))
    return list(found.values())


def copy_distribution(dist: metadata.Distribution, site: Path) -> int:
    """Copy the files of an installed distribution that live in site-packages; returns how many."""
    count = 0
    for entry in dist.files or []:
        if entry.parts[0] == "..":  # console scripts in bin/: we write our own launcher
            continue
        source = Path(str(dist.locate_file(entry)))
        if source.is_file():
            dest = site / entry
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
            count += 1
    return count


def copy_project(site: Path) -> None:
    """The ``authz`` package of this checkout (the venv holds it editable, i.e. as a path only)."""
    source = REPO / "authz"
    for path in sorted(source.rglob("*")):
        if path.is_file() and path.suffix in PACKAGE_DATA and "__pycache__" not in path.parts:
            dest = site / "authz" / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)


def elf_files(paths: Iterable[Path]) -> Iterator[Path]:
    for base in paths:
        candidates = [base] if base.is_file() else base.rglob("*.so*")
        for path in candidates:
            if path.is_file() and not path.is_symlink():
                with path.open("rb") as handle:
                    if handle.read(4) == b"\x7fELF":
                        yield path


def shared_libraries(files: Iterable[Path]) -> set[Path]:
    """Every library (and the loader) ``ldd`` resolves for ``files``; a missing one is an error."""
    libraries: set[Path] = set()
    batch = [str(f) for f in files]
    for start in range(0, len(batch), 200):
        result = subprocess.run(["ldd", *batch[start : start + 200]], capture_output=True, text=True, check=False)
        for line in result.stdout.splitlines():
            text = line.strip()
            if "=> not found" in text:
                raise BuildError(f"ldd: {text} (needed by a file of the plugin)")
            if "=>" in text:
                target = text.split("=>", 1)[1].strip().split(" (", 1)[0]
                if target.startswith("/"):
                    libraries.add(Path(target))
            elif text.startswith("/") and " (0x" in text:
                libraries.add(Path(text.split(" (", 1)[0]))
    return libraries


def write_text(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def build(out: Path, network: str = "") -> Path:
    """Assemble ``out/authz-plugin`` (removed first) and return it."""
    plugin_dir = out / "authz-plugin"
    if plugin_dir.exists():
        shutil.rmtree(plugin_dir)
    fs = Rootfs(plugin_dir / "rootfs")
    fs.root.mkdir(parents=True)

    executable = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    dynload = Path(sysconfig.get_config_var("DESTSHARED") or stdlib / "lib-dynload")
    fs.mirror(executable)
    fs.copy_tree(stdlib, STDLIB_SKIP)
    if not dynload.is_relative_to(stdlib):
        fs.copy_tree(dynload)

    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = fs.path(VENV / "lib" / version / "site-packages")
    site.mkdir(parents=True)
    for dist in runtime_distributions():
        if dist.metadata["Name"].lower() != PROJECT:
            copy_distribution(dist, site)
    copy_project(site)
    (fs.path(VENV / "bin")).mkdir(parents=True)
    os.symlink(executable, fs.path(VENV / "bin" / "python"))
    home = executable.parent
    write_text(fs.path(VENV / "pyvenv.cfg"), f"home = {home}\ninclude-system-site-packages = false\n"
               f"version = {'.'.join(map(str, sys.version_info[:3]))}\n")  # fmt: skip
    launcher = f"#!{VENV}/bin/python -I\nimport sys\nfrom authz.cli import main\nsys.exit(main())\n"
    write_text(fs.path(VENV / "bin" / "authzctl"), launcher, 0o755)
    shutil.copy2(REPO / "plugin" / "entrypoint.py", fs.path(VENV / "entrypoint.py"))

    for library in sorted(shared_libraries(elf_files([executable, fs.path(dynload), site]))):
        # the copies' $ORIGIN RPATHs resolve inside the rootfs: those libraries are there already
        if not library.is_relative_to(fs.root):
            fs.mirror(library)

    for directory in PLUGIN_DIRS:
        fs.path(directory).mkdir(parents=True, exist_ok=True)
    fs.path("/tmp").chmod(0o1777)  # noqa: S108 - the rootfs's own /tmp (gunicorn's worker heartbeat files)
    write_text(fs.path("/etc/passwd"), "root:x:0:0:root:/root:/sbin/nologin\n")
    write_text(fs.path("/etc/group"), "root:x:0:\n")
    # Byte-compile what has no .pyc yet (the checkout's package): the first start must not pay for it.
    if not compileall.compile_dir(str(site), quiet=1, workers=0, stripdir=str(fs.root), prependdir="/"):
        raise BuildError("byte-compiling the plugin's site-packages failed")

    manifest = json.loads((REPO / "config.json").read_text(encoding="utf-8"))
    if network:
        manifest["network"] = {"type": network}
    write_text(plugin_dir / "config.json", json.dumps(manifest, indent=2) + "\n")
    return plugin_dir


def _size(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=REPO / "plugin" / "build", help="default plugin/build")
    parser.add_argument(
        "--network",
        choices=("", "host"),
        default="",
        help="'host' only for a PostgreSQL reached over TCP (a privilege shown at install); "
        "default: own network namespace, unix sockets only",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        plugin_dir = build(args.out.resolve(), args.network)
    except (BuildError, OSError) as exc:
        print(f"plugin/build.py: {exc}", file=sys.stderr)
        return 1
    size = _size(plugin_dir / "rootfs") / 1e6
    print(f"built {plugin_dir} ({size:.0f} MB) in {time.monotonic() - started:.1f}s")
    print(f"next: docker plugin create authz:latest {plugin_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
