"""Canonical ``POST /containers/create`` bodies and meaning-preserving variants of them.

``canonical_bodies()`` draws bodies as the docker CLI writes them: ASCII keys in their canonical
case, one ``HostConfig``, no duplicates, over the security fields (Privileged, CapAdd, Binds,
Mounts, NetworkMode, PidMode, IpcMode, User, SecurityOpt, Devices, PortBindings, Sysctls …).

``variants(body)`` rewrites one into a document that Go's ``encoding/json`` decodes into the same
``ContainerConfigWrapper`` (moby 20.10), by any combination of (``TRANSFORMS``):

* ``recase``: struct field names in another case (map keys such as ``PortBindings`` ports,
  ``Sysctls`` names or network names keep theirs: those are data, not field names);
* ``fold``: ``s``/``k`` in struct field names written as U+017F ``ſ`` / U+212A ``K`` (Go folds them);
* ``hoist``: every HostConfig field moved to the top level, ``HostConfig`` removed (B5);
* ``split``: ``HostConfig`` split into two ``HostConfig`` members, which Go merges;
* ``duplicate``: a decoy value for a scalar or array field placed *before* the real one;
* ``shuffle``: members in another order;
* ``whitespace``: any JSON whitespace between tokens;
* ``uri``: ``/v1.41``, no version, ``/v1.41.0``, percent-encoded path characters, absolute form;
* ``ctype``: ``application/json`` in another case or with a charset parameter.

Documents are trees of ``Obj`` (ordered members, duplicates allowed) so that they can hold what
a dict cannot, and ``emit`` writes them with the drawn whitespace.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.strategies import Draw

__all__ = ["TRANSFORMS", "Obj", "Variant", "canonical_bodies", "emit", "to_tree", "variants"]


@dataclass
class Obj:
    """A JSON object as an ordered list of members; keys may repeat."""

    members: list[tuple[str, Any]]


# Which members hold a struct (their keys are field names) and which hold a map (keys are data).
# Field names are unique enough across the structs these bodies use to key this by name.
_STRUCT = "struct"
_MAP = "map"
_KIND = {
    "hostconfig": _STRUCT, "logconfig": _STRUCT, "restartpolicy": _STRUCT, "bindoptions": _STRUCT,
    "volumeoptions": _STRUCT, "driverconfig": _STRUCT, "tmpfsoptions": _STRUCT,
    "networkingconfig": _STRUCT, "ipamconfig": _STRUCT,
    "portbindings": _MAP, "sysctls": _MAP, "labels": _MAP, "exposedports": _MAP, "config": _MAP,
    "endpointsconfig": _MAP, "options": _MAP, "tmpfs": _MAP, "storageopt": _MAP, "volumes": _MAP,
}  # fmt: skip
# Elements of these arrays are structs (Mounts entries, Devices, PortBindings values).
_STRUCT_ITEMS = frozenset({"mounts", "devices", "ulimits", "devicerequests"})

# ------------------------------------------------------------------ canonical bodies

_CAPS = ("NET_BIND_SERVICE", "CAP_NET_BIND_SERVICE", "SYS_ADMIN", "NET_ADMIN", "ALL", "CHOWN", "cap_sys_ptrace")
_BINDS = ("/:/host", "/srv/data:/data:ro", "/var/run/docker.sock:/var/run/docker.sock", "vol1:/data",
          "/home/u:/x:rw", "/etc//passwd:/p:ro", "named:/n:nocopy", "/tmp/../etc:/e:ro,z")  # fmt: skip
_MODES = ("", "host", "none", "bridge", "default", "container:devbox", "container:rootbox", "mynet", "private",
          "shareable")  # fmt: skip
_USERS = ("", "1000", "1000:1000", "nobody", "root", "0", "0:0", "app:app", "65534")
_IMAGES = ("busybox", "alpine:3.19", "docker.io/library/nginx:1", "evil/miner", "quay.io/x/y:1",
           "busybox@sha256:" + "a" * 64)  # fmt: skip
_SECOPTS = ("no-new-privileges", "no-new-privileges:true", "no-new-privileges=false", "seccomp=unconfined",
            "apparmor=unconfined", "label=disable", "label=type:svirt_apache_t", "seccomp:unconfined")  # fmt: skip


@st.composite
def _mount(draw: Draw) -> dict[str, Any]:
    kind = draw(st.sampled_from(("bind", "volume", "tmpfs")))
    mount: dict[str, Any] = {"Type": kind, "Target": draw(st.sampled_from(("/data", "/host", "/x/y")))}
    if kind == "bind":
        mount["Source"] = draw(st.sampled_from(("/", "/srv/data", "/var/run/docker.sock", "/home/u")))
    elif kind == "volume":
        mount["Source"] = draw(st.sampled_from(("vol1", "named", "")))
        if draw(st.booleans()):
            opts = {"type": "none", "o": "bind", "device": "/"}
            mount["VolumeOptions"] = {"DriverConfig": {"Name": "local", "Options": opts}}
    if draw(st.booleans()):
        mount["ReadOnly"] = draw(st.booleans())
    return mount


_HOST_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "Privileged": st.booleans(),
    "CapAdd": st.lists(st.sampled_from(_CAPS), max_size=2),
    "CapDrop": st.lists(st.sampled_from(("ALL", "NET_RAW")), max_size=1),
    "Binds": st.lists(st.sampled_from(_BINDS), max_size=2),
    "Mounts": st.lists(_mount(), max_size=2),
    "NetworkMode": st.sampled_from(_MODES),
    "PidMode": st.sampled_from(_MODES[:6]),
    "IpcMode": st.sampled_from(_MODES),
    "UTSMode": st.sampled_from(("", "host")),
    "UsernsMode": st.sampled_from(("", "host")),
    "CgroupnsMode": st.sampled_from(("", "host", "private")),
    "SecurityOpt": st.lists(st.sampled_from(_SECOPTS), max_size=2),
    "Devices": st.lists(
        st.fixed_dictionaries(
            {
                "PathOnHost": st.sampled_from(("/dev/sda", "/dev/fuse")),
                "PathInContainer": st.just("/dev/x"),
                "CgroupPermissions": st.sampled_from(("rwm", "r")),
            }
        ),
        max_size=1,
    ),
    "PortBindings": st.dictionaries(
        st.sampled_from(("80/tcp", "443/tcp", "53/udp", "8080")),
        st.lists(
            st.fixed_dictionaries(
                {"HostIp": st.sampled_from(("", "127.0.0.1")), "HostPort": st.sampled_from(("", "80", "8080", "22"))}
            ),
            min_size=1,
            max_size=2,
        ),
        max_size=2,
    ),
    "PublishAllPorts": st.booleans(),
    "Sysctls": st.dictionaries(st.sampled_from(("net.ipv4.ip_forward", "kernel.shmmax")), st.just("1"), max_size=1),
    "Runtime": st.sampled_from(("", "runc", "sysbox-runc")),
    "Memory": st.sampled_from((0, 64 * 1024**2, 8 * 1024**3)),
    "NanoCpus": st.sampled_from((0, 10**9, 4 * 10**9)),
    "PidsLimit": st.sampled_from((None, 0, -1, 100, 4096)),
    "GroupAdd": st.lists(st.sampled_from(("0", "docker", "1000")), max_size=1),
    "ReadonlyRootfs": st.booleans(),
    "MaskedPaths": st.sampled_from(([], ["/proc/kcore"])),
    "CgroupParent": st.sampled_from(("", "/")),
    "LogConfig": st.fixed_dictionaries({"Type": st.sampled_from(("", "json-file")), "Config": st.just({})}),
    "RestartPolicy": st.fixed_dictionaries(
        {"Name": st.sampled_from(("no", "always")), "MaximumRetryCount": st.just(0)}
    ),
    "VolumesFrom": st.lists(st.sampled_from(("devbox", "rootbox:ro")), max_size=1),
}


@st.composite
def canonical_bodies(draw: Draw) -> dict[str, Any]:
    """A create body as the CLI writes it, over the security-relevant fields."""
    body: dict[str, Any] = {"Image": draw(st.sampled_from(_IMAGES))}
    if draw(st.booleans()):
        body["User"] = draw(st.sampled_from(_USERS))
    body["Cmd"] = ["true"]
    if draw(st.booleans()):
        body["Labels"] = {"team": "a", "Privileged": "true"}  # a map: these keys are data
    if draw(st.booleans()):
        body["ExposedPorts"] = {"80/tcp": {}}
    names = draw(st.lists(st.sampled_from(sorted(_HOST_FIELDS)), max_size=6, unique=True))
    host = {name: draw(_HOST_FIELDS[name]) for name in names}
    keep_empty = draw(st.booleans())  # an empty HostConfig and none at all mean the same
    if host or keep_empty:
        body["HostConfig"] = host
    if draw(st.integers(0, 4)) == 0:
        network = draw(st.sampled_from(("mynet", "host", "bridge")))
        body["NetworkingConfig"] = {"EndpointsConfig": {network: {"Aliases": ["a"]}}}
    return body


# ------------------------------------------------------------------ trees and transforms


def to_tree(value: Any) -> Any:
    """Plain JSON (dicts) → tree of ``Obj``."""
    if isinstance(value, dict):
        return Obj([(k, to_tree(v)) for k, v in value.items()])
    if isinstance(value, list):
        return [to_tree(v) for v in value]
    return value


def _walk_struct_keys(node: Any, rename: Callable[[str], str], is_struct: bool = True) -> Any:
    """Rename the keys of struct objects (not of maps), recursively."""
    if isinstance(node, Obj):
        out = []
        for key, value in node.members:
            kind = _KIND.get(key.lower())
            child: Any
            if isinstance(value, list) and key.lower() in _STRUCT_ITEMS:
                child = [_walk_struct_keys(item, rename) for item in value]
            elif kind == _MAP and isinstance(value, Obj):
                # Map values may themselves be structs (endpoint settings) or lists of structs (port bindings).
                child = Obj([(k, _walk_values(v, rename)) for k, v in value.members])
            else:
                child = _walk_struct_keys(value, rename, kind != _MAP)
            out.append((rename(key) if is_struct else key, child))
        return Obj(out)
    if isinstance(node, list):
        return [_walk_struct_keys(item, rename, is_struct) for item in node]
    return node


def _walk_values(value: Any, rename: Callable[[str], str]) -> Any:
    if isinstance(value, list):
        return [_walk_struct_keys(item, rename) for item in value]
    return _walk_struct_keys(value, rename)


def _recase(draw: Draw, tree: Obj) -> Obj:
    style = draw(st.sampled_from(("lower", "upper", "swap", "random")))
    salt = draw(st.integers(0, 2**16))

    def rename(key: str) -> str:
        if style == "random":  # crc32, not hash(): the same case on every run (hash is salted)
            flips = (zlib.crc32(f"{salt}:{i}:{key}".encode()) & 1 for i in range(len(key)))
            return "".join(c.upper() if flip else c.lower() for c, flip in zip(key, flips, strict=True))
        return {"lower": key.lower(), "upper": key.upper(), "swap": key.swapcase()}[style]

    result: Obj = _walk_struct_keys(tree, rename)
    return result


def _fold(draw: Draw, tree: Obj) -> Obj:
    del draw
    table = str.maketrans({"s": "\u017f", "S": "\u017f", "k": "\u212a", "K": "\u212a"})
    result: Obj = _walk_struct_keys(tree, lambda key: key.translate(table))
    return result


def _host(tree: Obj) -> tuple[int, Obj] | None:
    for i, (key, value) in enumerate(tree.members):
        if key.lower() == "hostconfig" and isinstance(value, Obj):
            return i, value
    return None


def _hoist(draw: Draw, tree: Obj) -> Obj:
    del draw
    found = _host(tree)
    if found is None:
        return tree
    i, host = found
    return Obj(tree.members[:i] + tree.members[i + 1 :] + host.members)


def _split(draw: Draw, tree: Obj) -> Obj:
    found = _host(tree)
    if found is None:
        return tree
    i, host = found
    first = draw(st.lists(st.booleans(), min_size=len(host.members), max_size=len(host.members)))
    a = Obj([m for m, f in zip(host.members, first, strict=True) if f])
    b = Obj([m for m, f in zip(host.members, first, strict=True) if not f])
    key = tree.members[i][0]
    return Obj([*tree.members[:i], (key, a), (key, b), *tree.members[i + 1 :]])


def _decoy(value: Any) -> Any:
    """A different value of the same JSON type (objects: ``{}``, which merges nothing)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return "host" if value != "host" else ""
    if isinstance(value, list):
        return []  # valid for every slice type; a non-empty decoy could be a type error in Go
    if isinstance(value, Obj):
        return Obj([])
    return "decoy"


def _duplicate(draw: Draw, tree: Obj) -> Obj:
    """A decoy member before a real one, in the body or in HostConfig (the later one wins in Go)."""
    found = _host(tree)
    target = tree if found is None or draw(st.booleans()) else found[1]
    if not target.members:
        return tree
    j = draw(st.integers(0, len(target.members) - 1))
    key, value = target.members[j]
    if value is None:
        return tree  # null after a decoy would leave the decoy (null is a no-op in Go)
    spelled = draw(st.sampled_from((key, key.lower(), key.upper())))
    target.members.insert(j, (spelled, _decoy(value)))
    return tree


def _shuffle(draw: Draw, tree: Any) -> Any:
    if isinstance(tree, Obj):
        members = [(k, _shuffle(draw, v)) for k, v in tree.members]
        order = draw(st.permutations(range(len(members))))
        return Obj([members[i] for i in order])
    if isinstance(tree, list):
        return [_shuffle(draw, v) for v in tree]
    return tree


# Order matters: structure first, then spelling, then order, then duplicates (which must stay last).
TRANSFORMS: dict[str, Callable[[Draw, Obj], Obj]] = {
    "hoist": _hoist,
    "split": _split,
    "recase": _recase,
    "fold": _fold,
    "shuffle": _shuffle,
    "duplicate": _duplicate,
}

_WS = st.text(alphabet=" \t\n\r", max_size=3)


def emit(node: Any, draw: Draw | None = None) -> str:
    """Serialise a tree; with ``draw``, random JSON whitespace between tokens."""

    def ws() -> str:
        return "" if draw is None else str(draw(_WS))

    if isinstance(node, Obj):
        inner = ",".join(
            f"{ws()}{json.dumps(k, ensure_ascii=False)}{ws()}:{ws()}{emit(v, draw)}{ws()}" for k, v in node.members
        )
        return "{" + (inner or ws()) + "}"
    if isinstance(node, list):
        return "[" + (",".join(f"{ws()}{emit(v, draw)}{ws()}" for v in node) or ws()) + "]"
    return json.dumps(node, ensure_ascii=False)


_URI_FORMS = ("/v1.41/containers/create", "/containers/create", "/v1.41.0/containers/create",
              "/v1.41/%63ontainers/create", "/v1.41/containers%2Fcreate", "/v1.41/containers/cr%65ate",
              "/%761.41/containers/create", "http://x/v1.41/containers/create",
              "https://docker:2376/containers/create")  # fmt: skip
_CTYPES = ("application/json", "application/json; charset=utf-8", "Application/JSON", "application/json;charset=UTF-8")


@dataclass(frozen=True)
class Variant:
    uri: str
    content_type: str
    body: bytes
    transforms: tuple[str, ...]


@st.composite
def variants(draw: Draw, body: dict[str, Any]) -> Variant:
    """One meaning-preserving rewrite of ``body`` (see the module docstring)."""
    tree: Obj = to_tree(json.loads(json.dumps(body)))
    chosen = draw(st.lists(st.sampled_from(sorted(TRANSFORMS)), unique=True, max_size=4))
    if "hoist" in chosen and "split" in chosen:
        chosen.remove("split")
    applied = [name for name in TRANSFORMS if name in chosen]  # canonical order
    for name in applied:
        tree = TRANSFORMS[name](draw, tree)
    spaced = draw(st.booleans())
    uri = draw(st.sampled_from(_URI_FORMS))
    query = draw(st.sampled_from(("", "?name=c1")))
    ctype = draw(st.sampled_from(_CTYPES))
    names = (*applied, *(["whitespace"] if spaced else []), f"uri={uri}{query}", f"ctype={ctype}")
    return Variant(uri + query, ctype, emit(tree, draw if spaced else None).encode("utf-8"), names)
