"""Host paths a container may mount: ``HostConfig.Binds`` host sources and ``Mounts`` of type bind.

Policy keys: ``containers.bind_mounts`` (allowed host path prefixes, compared component-wise:
``/srv/shared`` allows ``/srv/shared/x``, not ``/srv/sharedfoo``),
``containers.bind_mounts_read_only`` and ``containers.bind_mounts_user_writable`` (swaps, below).
Named volumes, inline volume drivers and ``VolumesFrom`` belong to the volume rules.

Symlinks (moby#36020, bypass B17): the source is resolved on the plugin's host, component by
component, and both the normalised and the resolved path must be allowed. A path whose tail does
not exist yet is judged with its existing part resolved (the daemon creates Binds sources, and
``CreateMountpoint`` creates Mounts sources, through those symlinks). Any other resolution error
is a violation.

Swaps (``containers.bind_mounts_user_writable``, default false): the daemon resolves the source
again at every start and restart, and follows whatever symlink is there then. A user who can write
a directory the path runs through can replace an entry with a symlink to ``/`` between
``docker create`` and ``docker start``; no check at decision time can see that. So the walk also
refuses a path that runs through a directory a non-root user can change: not owned by root, or
writable by its group or by others (an ACL granting write shows in the group bits), unless it is
sticky and the entry is root's.

Where the host is seen (``EvalContext.host_root``, ``AUTHZ_HOST_ROOT``): the walk runs below that
directory, absolute symlinks included, as the daemon would walk from the host's ``/``. ``None``
(the managed plugin, in a rootfs of its own) sees nothing of the host: only roles whose prefixes
include ``/`` may then bind host paths. Residual risk: the plugin host may not be the daemon host
(run the plugin on the daemon host).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Iterator, Mapping, Sequence

from authz.classify.containers import ContainerCreate, normalise_host_path
from authz.errors import BodyError
from authz.policy.model import ContainerRules
from authz.policy.rules import Violation

__all__ = ["DOCKER_SOCKETS", "bind_prefix_warnings", "check_mounts", "is_under", "resolve_host_path", "walk_host_path"]

DOCKER_SOCKETS = frozenset({"/var/run/docker.sock", "/run/docker.sock"})
_MAX_SYMLINKS = 40  # Linux's MAXSYMLINKS: the kernel gives up (ELOOP) after as many
_SHARING = frozenset({"shared", "rshared"})  # mounts made in the container appear on the host
_PROPAGATIONS = frozenset({"private", "rprivate", "shared", "rshared", "slave", "rslave"})
_JUDGED_MOUNT_TYPES = frozenset({"bind", "volume", "tmpfs"})
_RULE = "containers.bind_mounts"
_RO_RULE = "containers.bind_mounts_read_only"
_USER_WRITABLE_RULE = "containers.bind_mounts_user_writable"


def is_under(path: str, prefix: str) -> bool:
    """Component-wise prefix test on normalised absolute paths."""
    return prefix in ("/", path) or path.startswith(prefix + "/")


def resolve_host_path(path: str, root: str = "/") -> str:
    """The physical path ``path`` names on this host, symlinks followed like the kernel does.

    A missing component ends the walk: the rest is appended as written (it does not exist yet).
    Raises ``OSError`` for every other failure: a loop, permission denied, a non-directory in the
    middle, or ``..`` after a missing component (whose meaning the plugin cannot know).
    ``root``: where the host's ``/`` is seen; the result is a path on the host, as is ``path``.
    """
    return walk_host_path(path, root)[0]


def walk_host_path(path: str, root: str = "/") -> tuple[str, str | None]:
    """``resolve_host_path``, and the first directory of the walk in which a non-root user could
    change the entry looked up (``_changeable_entry``), or None."""
    seen = root.rstrip("/")  # "" for the plugin's own /: a host path is then its own place
    pending = [part for part in path.split("/") if part not in ("", ".")]
    resolved = "/"
    links = 0
    changeable: str | None = None
    while pending:
        name = pending.pop(0)
        if name == "..":
            resolved = posixpath.dirname(resolved)
            continue
        candidate = posixpath.join(resolved, name)
        try:
            info: os.stat_result | None = os.lstat(seen + candidate)
        except FileNotFoundError:
            info = None
        if changeable is None:
            changeable = _changeable_entry(seen, resolved, info)
        if info is None:
            rest = [part for part in pending if part != "."]
            if ".." in rest:
                raise OSError(errno.ENOENT, "'..' below a missing directory", candidate)
            return posixpath.join(candidate, *rest), changeable
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > _MAX_SYMLINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            target = os.readlink(seen + candidate)
            if target.startswith("/"):
                resolved = "/"
            pending[:0] = [part for part in target.split("/") if part not in ("", ".")]
            continue
        resolved = candidate
    return resolved, changeable


def _changeable_entry(seen: str, directory: str, entry: os.stat_result | None) -> str | None:
    """Why a non-root user could replace (or first create) an entry of ``directory`` (a host path,
    seen at ``seen + directory``), or None.

    Root's directory with no group or other write bit is safe (an ACL granting write sets the
    group bits: they show its mask). So is an existing entry of root's in a sticky directory of
    root's (/tmp): only its owner may rename or remove it there.
    """
    info = os.stat(seen + directory)
    group_or_other = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if info.st_uid == 0 and not group_or_other:
        return None
    if info.st_uid == 0 and info.st_mode & stat.S_ISVTX and entry is not None and entry.st_uid == 0:
        return None
    if info.st_uid != 0:
        who = f"its owner, uid {info.st_uid}"
    elif info.st_mode & stat.S_IWOTH:
        who = "every user"
    else:
        who = f"group {info.st_gid}"
    return f"{directory} (writable by {who})"


def _is_socket(path: str, root: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(root.rstrip("/") + path).st_mode)
    except OSError:
        return False  # does not exist (yet): nothing to connect to


def _lexical_prefixes(rules: ContainerRules) -> tuple[str, ...]:
    """The allowed prefixes, normalised."""
    return tuple(normalise_host_path(p) for p in rules.bind_mounts or ())


def _physical_prefixes(lexical: Sequence[str], root: str) -> tuple[str, ...]:
    """The same prefixes resolved on this host, where they resolve."""
    physical: list[str] = []
    for prefix in lexical:
        try:
            physical.append(resolve_host_path(prefix, root))
        except OSError:
            continue  # an unresolvable prefix only allows its lexical form
    return tuple(physical)


def bind_prefix_warnings(roles: Mapping[str, ContainerRules], host_root: str = "/") -> list[str]:
    """What an admin applying a policy on this host should know: ``roles`` (role name -> its
    effective container rules) whose allowed prefixes run through a directory a non-root user can
    write, so that every bind below them is refused (``bind_mounts_user_writable: false``)."""
    warnings: list[str] = []
    for name, rules in sorted(roles.items()):
        if rules.bind_mounts_user_writable:
            continue
        for prefix in rules.bind_mounts or ():
            try:
                changeable = walk_host_path(normalise_host_path(prefix), host_root)[1]
            except (OSError, BodyError):
                continue  # refused per bind anyway, with the reason
            if changeable is not None:
                warnings.append(f"role {name}: bind prefix {prefix} runs through {changeable} on this host, so "
                                "every bind below it will be refused (containers.bind_mounts_user_writable is "
                                "false)")  # fmt: skip
    return warnings


def _describe(prefixes: Sequence[str]) -> str:
    return ", ".join(prefixes) if prefixes else "none"


def host_source_violations(
    rules: ContainerRules, path: str, field: str, host_root: str | None = "/"
) -> Iterator[Violation]:
    """Whether the host path ``path`` (already normalised) may be a bind source; ``host_root``:
    where the host's ``/`` is seen (``EvalContext.host_root``)."""
    lexical = _lexical_prefixes(rules)
    if host_root is None:
        if "/" not in lexical:
            # Fail closed: the host's symlinks, sockets and owners are out of sight.
            yield Violation(_RULE, field, f"bind mount of host path {path} cannot be judged: this plugin does "
                            "not see the host's files (AUTHZ_HOST_ROOT=none, as a managed plugin), so only roles "
                            "allowed / may bind host paths; run the plugin on the host (authzctl install)")  # fmt: skip
        return
    physical = _physical_prefixes(lexical, host_root)
    try:
        resolved, changeable = walk_host_path(path, host_root)
    except OSError as exc:
        # Fail closed: a path we cannot resolve could lead anywhere through a symlink.
        yield Violation(_RULE, field, f"host path {path} cannot be resolved on the plugin host ({exc.strerror}); "
                        "bind mounts of unresolvable paths are refused")  # fmt: skip
        return
    literal = set(lexical)
    if (path in DOCKER_SOCKETS or resolved in DOCKER_SOCKETS or _is_socket(resolved, host_root)) and not (
        "/" in literal or path in literal or resolved in literal
    ):
        # A daemon or service socket is root on the host; only an explicit entry allows it.
        yield Violation(_RULE, field, f"bind mount of the socket {path} is not allowed (it must be listed "
                        "literally in bind_mounts)")  # fmt: skip
        return
    if not any(is_under(path, prefix) for prefix in lexical):
        yield Violation(_RULE, field, f"bind mount of host path {path} is not allowed "
                        f"(allowed prefixes: {_describe(lexical)})")  # fmt: skip
    elif not any(is_under(resolved, prefix) for prefix in (*lexical, *physical)):
        yield Violation(_RULE, field, f"bind mount of host path {path} is not allowed: it resolves through a "
                        f"symlink to {resolved} (allowed prefixes: {_describe(lexical)})")  # fmt: skip
    elif changeable is not None and not rules.bind_mounts_user_writable:
        # The daemon resolves the source again at each start: a swapped-in symlink would be followed.
        yield Violation(_USER_WRITABLE_RULE, field, f"bind mount of host path {path} is not allowed: it runs "
                        f"through {changeable}, where a non-root user could swap an entry for a symlink "
                        "before the container starts, and the daemon would follow it; bind a path in "
                        "directories only root can change")  # fmt: skip


def _bind_violations(rules: ContainerRules, view: ContainerCreate, host_root: str | None) -> Iterator[Violation]:
    for index, bind in enumerate(view.binds):
        if bind.host_path is None:
            continue  # named or anonymous volume: the volume rules judge it
        field = f"HostConfig.Binds[{index}]"
        yield from host_source_violations(rules, bind.host_path, field, host_root)
        if rules.bind_mounts_read_only and not bind.read_only:
            yield Violation(_RO_RULE, field, f"bind mount of {bind.host_path} must be read-only: add :ro")
        if bind.propagation in _SHARING and not rules.unconfined:
            yield Violation("containers.unconfined", field, f"{bind.propagation} propagation makes mounts made "
                            "in the container appear on the host; use the default (rprivate) or rslave")  # fmt: skip
        if bind.relabel is not None and "/" not in (rules.bind_mounts or ()):
            # :z/:Z relabel the host files (relabelling /usr or /home breaks the host).
            yield Violation(_RULE, field, f"SELinux relabel :{bind.relabel} of host path {bind.host_path} is "
                            "allowed only to roles whose bind_mounts include /; drop :z/:Z")  # fmt: skip


def _mount_violations(rules: ContainerRules, view: ContainerCreate, host_root: str | None) -> Iterator[Violation]:
    for index, mount in enumerate(view.mounts):
        field = f"HostConfig.Mounts[{index}]"
        if mount.type not in _JUDGED_MOUNT_TYPES:
            if not rules.unconfined:
                # npipe, cluster, image and types newer than us: the plugin cannot judge them.
                yield Violation("containers.unconfined", f"{field}.Type", f"mount type {mount.type!r} cannot be "
                                "judged by the plugin (allowed: bind, volume, tmpfs)")  # fmt: skip
            continue
        if mount.type != "bind" or mount.host_path is None:
            continue  # tmpfs is memory; volumes are judged by the volume rules
        # CreateMountpoint creates the source: the prefix check below bounds where.
        yield from host_source_violations(rules, mount.host_path, f"{field}.Source", host_root)
        if rules.bind_mounts_read_only and (not mount.read_only or mount.read_only_non_recursive):
            how = "set ReadOnly (readonly in --mount)" if not mount.read_only else "drop ReadOnlyNonRecursive"
            yield Violation(_RO_RULE, f"{field}.ReadOnly", f"bind mount of {mount.host_path} must be read-only, "
                            f"submounts included: {how}")  # fmt: skip
        propagation = mount.propagation
        if propagation is not None and not rules.unconfined:
            if propagation in _SHARING:
                yield Violation("containers.unconfined", f"{field}.BindOptions.Propagation", f"{propagation} "
                                "propagation makes mounts made in the container appear on the host; use the "
                                "default (rprivate) or rslave")  # fmt: skip
            elif propagation not in _PROPAGATIONS:
                yield Violation("containers.unconfined", f"{field}.BindOptions.Propagation",
                                f"unknown propagation {propagation!r}")  # fmt: skip


def check_mounts(rules: ContainerRules, view: ContainerCreate, host_root: str | None = "/") -> Iterator[Violation]:
    """Every host-path bind of a create: prefixes, symlinks, sockets, read-only, propagation."""
    try:
        yield from _bind_violations(rules, view, host_root)
        yield from _mount_violations(rules, view, host_root)
    except BodyError as exc:
        # A policy prefix the view cannot normalise (the schema should have refused it).
        yield Violation(_RULE, "HostConfig", f"bind mounts cannot be judged: {exc}")
