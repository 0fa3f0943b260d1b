"""Bind specs, ``Mounts`` entries and host paths, read as the daemon's Linux volume parser reads them.

Facts from moby v20.10 ``volume/mounts/linux_parser.go`` (``ParseMountRaw``, ``ParseMountSpec``,
``ParseVolumesFrom``): a ``Binds`` entry is ``[src:]dst[:mode]`` with at most two colons; a source
that starts with ``/`` is a host path, anything else a volume name; ``mode`` is a comma list with
at most one each of ``rw|ro``, ``z|Z``, a propagation mode, ``nocopy`` and a consistency mode.
Specs the daemon would refuse raise ``BodyError`` here too (refusing is the daemon's answer, so a
deny loses nothing). Host paths are cleaned like Go's ``path.Clean``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from authz.errors import BodyError
from authz.gojson import as_bool, as_int, as_object, as_str, as_str_map

__all__ = [
    "PROPAGATION_MODES",
    "BindSpec",
    "MountSpec",
    "VolumesFrom",
    "clean_container_path",
    "normalise_host_path",
    "parse_bind",
    "parse_mount",
    "parse_volumes_from",
]

PROPAGATION_MODES = frozenset({"private", "rprivate", "shared", "rshared", "slave", "rslave"})
_RW_MODES = frozenset({"rw", "ro"})
_LABEL_MODES = frozenset({"z", "Z"})
_COPY_MODES = frozenset({"nocopy"})
_CONSISTENCY_MODES = frozenset({"consistent", "cached", "delegated"})
_EMPTY: Mapping[str, str] = MappingProxyType({})


def normalise_host_path(path: str) -> str:
    """Clean an absolute host path the way Go's ``path.Clean`` does (``//``, ``.``, ``..``, ``/``$).

    A relative or empty path is not a host path: ``BodyError`` (the daemon refuses it as a bind
    source, or reads it relative to its own working directory).
    """
    if not path.startswith("/"):
        raise BodyError(f"host path {path!r} is not absolute")
    cleaned = posixpath.normpath(path)
    # POSIX lets normpath keep a leading "//"; Go's path.Clean collapses it.
    return "/" + cleaned.lstrip("/")


def clean_container_path(path: str) -> str:
    """``path.Clean`` for a path inside the container (relative paths stay relative)."""
    if path == "":
        return "."
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("/") else cleaned


@dataclass(frozen=True, slots=True)
class BindSpec:
    """One ``HostConfig.Binds`` entry.

    ``host_path`` is set for host binds (normalised); ``volume`` for named volumes; both are
    ``None`` for an anonymous volume (``"/data"``).
    """

    raw: str
    target: str  # cleaned container path
    host_path: str | None
    volume: str | None
    read_only: bool
    mode: str  # the option text as written ("" when none)
    propagation: str | None  # only when the mode names one (the daemon default is rprivate)
    relabel: str | None  # "z" (shared) or "Z" (private) SELinux relabel of the source
    nocopy: bool
    volume_driver: str | None  # HostConfig.VolumeDriver, for named volumes

    @property
    def is_host_bind(self) -> bool:
        return self.host_path is not None


def _mode_options(mode: str) -> list[str] | None:
    """The mode's options if the daemon accepts the mode (``linuxValidMountMode``), else ``None``."""
    if mode == "":
        return []
    options = mode.split(",")
    groups = (_RW_MODES, _LABEL_MODES, PROPAGATION_MODES, _COPY_MODES, _CONSISTENCY_MODES)
    counts = [0] * len(groups)
    for option in options:
        for i, group in enumerate(groups):
            if option in group:
                counts[i] += 1
                break
        else:
            return None
    return options if max(counts) <= 1 else None


def _check_target(target: str, raw: str) -> str:
    # The daemon validates with backslashes read as slashes, then keeps the path as written.
    slashed = target.replace("\\", "/")
    if target == "":
        raise BodyError(f"invalid bind {raw!r}: no container path")
    if not slashed.startswith("/"):
        raise BodyError(f"invalid bind {raw!r}: container path must be absolute")
    if posixpath.normpath(slashed) in ("/", "//"):
        raise BodyError(f"invalid bind {raw!r}: container path must not be /")
    return clean_container_path(target)


def parse_bind(raw: str, volume_driver: str = "") -> BindSpec:
    """Parse a ``Binds`` entry like ``ParseMountRaw``; invalid specs raise ``BodyError``."""
    if raw.count(":") > 2:
        raise BodyError(f"invalid bind {raw!r}: too many colons")
    parts = raw.split(":", 2)
    if parts[0] == "":
        raise BodyError(f"invalid bind {raw!r}: empty source")
    if len(parts) == 1:
        source, target, mode = "", parts[0], ""
    elif len(parts) == 2:
        if _mode_options(parts[1]) is not None:
            # "dst:ro" is a destination plus mode: the daemon refuses it as a volume spec.
            raise BodyError(f"invalid bind {raw!r}: a mode needs a source and a destination")
        source, target, mode = parts[0], parts[1], ""
    else:
        source, target, mode = parts
    options = _mode_options(mode)
    if options is None:
        raise BodyError(f"invalid bind {raw!r}: invalid mode {mode!r}")
    is_bind = source.startswith("/")
    propagation = next((o for o in options if o in PROPAGATION_MODES), None)
    nocopy = "nocopy" in options
    if is_bind and nocopy:
        raise BodyError(f"invalid bind {raw!r}: nocopy applies to volumes only")
    if not is_bind and propagation is not None:
        raise BodyError(f"invalid bind {raw!r}: propagation applies to host paths only")
    read_only = "ro" in options
    if source == "" and read_only:
        raise BodyError(f"invalid bind {raw!r}: an anonymous volume cannot be read-only")
    return BindSpec(
        raw=raw,
        target=_check_target(target, raw),
        host_path=normalise_host_path(source) if is_bind else None,
        volume=None if is_bind or source == "" else source,
        read_only=read_only,
        mode=mode,
        propagation=propagation,
        relabel=next((o for o in options if o in _LABEL_MODES), None),
        nocopy=nocopy,
        volume_driver=(volume_driver or None) if not is_bind else None,
    )


@dataclass(frozen=True, slots=True)
class VolumesFrom:
    """One ``HostConfig.VolumesFrom`` entry: every mount of ``container``, optionally read-only."""

    raw: str
    container: str
    read_only: bool
    mode: str


def parse_volumes_from(raw: str) -> VolumesFrom:
    """Parse ``container[:mode]`` like ``ParseVolumesFrom``; invalid entries raise ``BodyError``."""
    if raw == "":
        raise BodyError("VolumesFrom entry must not be empty")
    container, _, mode = raw.partition(":")
    options = _mode_options(mode)
    if options is None or any(o in PROPAGATION_MODES or o in _COPY_MODES for o in options):
        raise BodyError(f"invalid VolumesFrom {raw!r}: invalid mode {mode!r}")
    return VolumesFrom(raw=raw, container=container, read_only="ro" in options, mode=mode or "rw")


@dataclass(frozen=True, slots=True)
class MountSpec:
    """One ``HostConfig.Mounts`` (or swarm ``ContainerSpec.Mounts``) entry.

    ``type`` is kept as sent (``bind``, ``volume``, ``tmpfs``, ``npipe``, ``cluster``, ``image`` or
    anything else, which the daemon refuses). ``host_path`` is the normalised source of a bind.
    """

    type: str
    source: str
    target: str
    read_only: bool
    host_path: str | None = None
    propagation: str | None = None
    non_recursive: bool = False
    create_mountpoint: bool = False
    read_only_non_recursive: bool = False
    read_only_force_recursive: bool = False
    has_bind_options: bool = False
    has_volume_options: bool = False
    volume_nocopy: bool = False
    volume_subpath: str = ""
    volume_labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    volume_driver: str | None = None  # VolumeOptions.DriverConfig.Name ("" and absent → None)
    volume_driver_options: Mapping[str, str] = field(
        default_factory=lambda: _EMPTY
    )  # DriverConfig.Options: inline volume creation
    has_driver_config: bool = False
    tmpfs_size: int = 0
    tmpfs_mode: int = 0
    image_subpath: str = ""


def parse_mount(value: Any, where: str, *, ignore_non_recursive: bool = False) -> MountSpec:
    """Read one ``mount.Mount`` object. ``ignore_non_recursive``: API < 1.40 drops that field."""
    obj = as_object(value, where)
    if obj is None:
        # Go decodes null into a zero Mount, which the daemon refuses ("mount type unknown").
        raise BodyError(f"{where}: null mount")
    mount_type = as_str(obj.field("Type"), f"{where}.Type")
    source = as_str(obj.field("Source"), f"{where}.Source")
    bind = as_object(obj.field("BindOptions"), f"{where}.BindOptions")
    volume = as_object(obj.field("VolumeOptions"), f"{where}.VolumeOptions")
    tmpfs = as_object(obj.field("TmpfsOptions"), f"{where}.TmpfsOptions")
    image = as_object(obj.field("ImageOptions"), f"{where}.ImageOptions")
    driver = None if volume is None else as_object(volume.field("DriverConfig"), f"{where}.VolumeOptions.DriverConfig")
    spec: dict[str, Any] = {
        "type": mount_type,
        "source": source,
        "target": clean_container_path(as_str(obj.field("Target"), f"{where}.Target")),
        "read_only": as_bool(obj.field("ReadOnly"), f"{where}.ReadOnly"),
        "has_bind_options": bind is not None,
        "has_volume_options": volume is not None,
        "has_driver_config": driver is not None,
    }
    if mount_type == "bind":
        # A relative source is refused by the daemon, or read relative to its working directory.
        spec["host_path"] = normalise_host_path(source)
    if bind is not None:
        b = f"{where}.BindOptions"
        spec["propagation"] = as_str(bind.field("Propagation"), f"{b}.Propagation") or None
        spec["non_recursive"] = not ignore_non_recursive and as_bool(bind.field("NonRecursive"), f"{b}.NonRecursive")
        spec["create_mountpoint"] = as_bool(bind.field("CreateMountpoint"), f"{b}.CreateMountpoint")
        spec["read_only_non_recursive"] = as_bool(bind.field("ReadOnlyNonRecursive"), f"{b}.ReadOnlyNonRecursive")
        spec["read_only_force_recursive"] = as_bool(bind.field("ReadOnlyForceRecursive"), f"{b}.ReadOnlyForceRecursive")
    if volume is not None:
        v = f"{where}.VolumeOptions"
        spec["volume_nocopy"] = as_bool(volume.field("NoCopy"), f"{v}.NoCopy")
        spec["volume_subpath"] = as_str(volume.field("Subpath"), f"{v}.Subpath")
        spec["volume_labels"] = MappingProxyType(as_str_map(volume.field("Labels"), f"{v}.Labels"))
    if driver is not None:
        d = f"{where}.VolumeOptions.DriverConfig"
        spec["volume_driver"] = as_str(driver.field("Name"), f"{d}.Name") or None
        spec["volume_driver_options"] = MappingProxyType(as_str_map(driver.field("Options"), f"{d}.Options"))
    if tmpfs is not None:
        t = f"{where}.TmpfsOptions"
        spec["tmpfs_size"] = as_int(tmpfs.field("SizeBytes"), f"{t}.SizeBytes")
        spec["tmpfs_mode"] = as_int(tmpfs.field("Mode"), f"{t}.Mode", minimum=0, maximum=2**32 - 1)
    if image is not None:
        spec["image_subpath"] = as_str(image.field("Subpath"), f"{where}.ImageOptions.Subpath")
    return MountSpec(**spec)
