"""The image every test daemon gets: ``tiny:latest``, Debian's static busybox and nothing else.

No CMD and no ENV: always pass a command. ``/etc/passwd`` knows root and ``user`` (uid 1000), so
``--user 1000`` and ``whoami`` work; every directory is root-owned 0755 (``/tmp`` 1777).
"""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from hostutil import HarnessError

if TYPE_CHECKING:
    from harness import DockerDaemon

BUSYBOX = Path("/bin/busybox")  # from Debian's busybox-static
TINY_APPLETS = (
    "sh", "true", "false", "id", "echo", "sleep", "cat", "ls", "whoami", "env", "touch", "mkdir",
    "rm", "hostname", "ps", "mount", "grep", "wc", "head", "stat",
)  # fmt: skip


def _is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF without PT_INTERP (no dynamic loader needed)."""
    data = path.read_bytes()
    if data[:6] != b"\x7fELF\x02\x01":
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return 3 not in types  # PT_INTERP


def write_tiny_tar(path: Path) -> Path:
    """A root filesystem tar: static busybox, applet links, /etc/passwd with root and uid 1000."""
    if not BUSYBOX.exists() or not _is_static_elf(BUSYBOX):
        raise HarnessError(f"{BUSYBOX} missing or not static: install Debian's busybox-static")
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        "etc/group": "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n",
    }
    with tarfile.open(path, "w") as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data) if data else None)

        for directory in ("bin", "etc", "root", "proc", "sys", "dev"):
            add(directory, tarfile.DIRTYPE, 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes())
        for applet in TINY_APPLETS:
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        for name, text in files.items():
            add(name, tarfile.REGTYPE, 0o644, text.encode())
    return path


def import_tiny(daemon: DockerDaemon, config_dir: Path | None = None, tag: str = "tiny:latest") -> str:
    """``docker import`` the tiny rootfs as ``tag`` (as ``config_dir``'s identity); its image ID."""
    tar = write_tiny_tar(daemon.dir / "tiny.tar")
    try:
        result = daemon.docker("import", str(tar), tag, config_dir=config_dir, check=True)
    finally:
        tar.unlink(missing_ok=True)
    return result.stdout.strip()
