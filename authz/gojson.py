"""JSON decoding exactly as the daemon's Go ``encoding/json`` will read it — or refusal.

The daemon decodes request bodies into its API structs with Go's ``encoding/json``. Python's
``json`` reads some documents differently (docker-authz.md 6.2, bypass B4); for every such
document ``loads`` raises ``BodyError`` instead of guessing:

* in an object the daemon decodes into a struct: keys that are not ASCII (Go folds U+017F to
  ``s`` and U+212A to ``k`` when matching fields), and keys that collide case-insensitively or
  repeat (Go matches fields case-insensitively, lets the later key win and *merges* duplicate
  objects; Python keeps only the last value). In an object the daemon decodes into a Go map
  (``Labels``, ``Volumes``, driver options: the ``maps`` paths of ``loads``) keys are kept as sent,
  by Go and by Python alike, so any keys are accepted there;
* ``NaN``/``Infinity``/``-Infinity`` and numbers that overflow a float64 (Go rejects them);
* invalid UTF-8 and lone UTF-16 surrogates in ``\\u`` escapes (Go silently turns both into U+FFFD);
* a UTF-8 BOM, trailing data after the first value, nesting deeper than ``max_depth`` and bodies
  larger than ``max_bytes``.

On every document it accepts, ``loads`` returns exactly what ``json.loads`` returns, except that
objects are ``GoObject`` (a ``dict`` subclass, equal to the plain dict). ``GoObject.field`` then
looks a struct field up the way Go does: case-insensitively, with ``null`` meaning "absent". A map
object whose keys would be wrong for a struct still refuses ``field`` (and the other struct
lookups), so a reader that takes a map for a struct denies rather than guesses.

The ``as_*`` getters convert one decoded value to the Go type of the struct field it fills and
raise ``BodyError`` naming the field when Go would refuse the value (the daemon answers 400, and a
value we cannot read must never lead to an allow).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterator, Set
from typing import Any

from authz.errors import BodyError

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "GoObject",
    "as_bool",
    "as_float",
    "as_int",
    "as_list",
    "as_object",
    "as_opt_bool",
    "as_opt_int",
    "as_str",
    "as_str_list",
    "as_str_map",
    "as_strslice",
    "field_path",
    "loads",
    "loads_object",
]

MAX_BODY_BYTES = 4 * 1024 * 1024  # the daemon's own limit from 29.3.1 on (docker-authz.md 2.7)
MAX_DEPTH = 64  # API bodies nest about 6 deep; Go allows 10000, we need far less
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_BOM = b"\xef\xbb\xbf"
# A \u escape of a UTF-16 surrogate (D800-DFFF). Only bodies containing one need the string walk.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A \u escape of anything above U+007F (or what looks like one after an escaped backslash).
_NON_ASCII_ESCAPE = re.compile(r"\\u(?!00[0-7][0-9a-fA-F])")


def _ascii_keys(text: str) -> bool:
    """Whether every string ``text`` decodes to is ASCII (then no key needs the non-ASCII check)."""
    return text.isascii() and _NON_ASCII_ESCAPE.search(text) is None


class GoObject(dict[str, Any]):
    """A JSON object with its original keys; ``field`` looks up a struct field the way Go does.

    Treat it as read-only: the case-folded index is built once, on the first lookup that needs it.
    Objects made by ``loads`` are guaranteed to have ASCII keys that are unique case-insensitively;
    objects built by hand are checked the first time ``field`` is called.
    """

    __slots__ = ("_folded",)

    _folded: dict[str, str]
    _verified = False  # keys known unique case-insensitively (class-level: set by ``_Decoded``)

    def field(self, name: str, default: Any = None) -> Any:
        """Case-insensitive (ASCII) lookup; ``null`` counts as absent (Go leaves the zero value)."""
        if not self._verified:
            self._index()  # a hand-built object: raises on colliding keys
        value = self.get(name)  # exact spelling: the common case, and unique once checked
        if value is None:
            key = self._index().get(name.lower())
            value = None if key is None else self[key]
        return default if value is None else value

    def fields(self) -> Callable[[str], Any]:
        """``field`` for many lookups in one object: the values are folded once, and each lookup
        is then one dict access (a create body's HostConfig is asked for ~40 fields, most of them
        absent, and ``field`` took a third of classifying a small create)."""
        values = {low: self[key] for low, key in self._index().items()}
        get = values.get

        def field(name: str) -> Any:
            return get(name.lower())  # absent and null alike are None, as for ``field``

        return field

    def folded_keys(self) -> dict[str, str]:
        """Lower-cased key → key, in key order (shared: do not modify)."""
        return self._index()

    def has(self, name: str) -> bool:
        """Whether a key matching ``name`` case-insensitively is present (even with ``null``)."""
        return name.lower() in self._index()

    def _index(self) -> dict[str, str]:
        try:
            folded = self._folded
        except AttributeError:
            folded = {}
        if len(folded) != len(self):
            folded = _fold_keys(list(self), "object")
            self._folded = folded
        return folded


class _Decoded(GoObject):
    """An object ``loads`` made: its keys were checked when it was decoded."""

    __slots__ = ()
    _verified = True


class _MapOnly(GoObject):
    """An object ``loads`` made whose keys Go would match to struct fields differently from us
    (``_key_trouble``): read as it is where the daemon decodes it into a map, refused as a struct."""

    __slots__ = ("_keys",)

    _keys: list[str]  # as sent, repeats included

    def trouble(self, where: str = "object") -> str:
        return _key_trouble(self._keys, where) or f"JSON {where} has keys the daemon reads differently"

    def _index(self) -> dict[str, str]:
        raise BodyError(self.trouble())


def _key_trouble(keys: list[str], where: str) -> str | None:
    """Why Go would fill struct fields from these keys differently from us, or None."""
    if len(set(map(str.lower, keys))) != len(keys):
        # Go lets the later key win and merges duplicate objects; Python keeps the last only.
        seen: dict[str, str] = {}
        for key in keys:
            other = seen.get(key.lower())
            if other is not None:
                return f"JSON {where} has keys {other!r} and {key!r} that the daemon reads as the same field"
            seen[key.lower()] = key
    if not "".join(keys).isascii():
        # Go's case folding maps some non-ASCII letters onto ASCII ones (U+017F → s, U+212A → k).
        bad = next(key for key in keys if not key.isascii())
        return f"JSON {where} has a non-ASCII key {bad!r}: the daemon may fold it onto a field"
    return None


def _fold_keys(keys: list[str], where: str) -> dict[str, str]:
    """Map lower-cased key → key; raise on keys Go would fold or merge differently from us."""
    trouble = _key_trouble(keys, where)
    if trouble is not None:
        raise BodyError(trouble)
    return dict(zip(map(str.lower, keys), keys, strict=True))


def _map_only(pairs: list[tuple[str, Any]], found: list[_MapOnly]) -> _MapOnly:
    obj = _MapOnly(pairs)  # repeated keys: the last wins, as in a Go map
    obj._keys = [key for key, _ in pairs]
    found.append(obj)
    return obj


def _ascii_object_hook(found: list[_MapOnly], pairs: list[tuple[str, Any]]) -> GoObject:
    """An object of a document whose strings are all ASCII (``_ascii_keys``)."""
    obj = _Decoded(pairs)
    if len(obj) != len(pairs):
        return _map_only(pairs, found)  # a repeated key
    keys = "".join(obj)
    if keys.lower() != keys:
        # Some key has capitals: it may collide with another once folded (checked in C), and such
        # objects are structs, whose fields are looked up through the index anyway. Keys without
        # capitals (labels, env, ports) cannot collide: no index is built for them.
        folded = dict(zip(map(str.lower, obj), obj, strict=True))
        if len(folded) != len(pairs):
            return _map_only(pairs, found)
        obj._folded = folded
    return obj


def _object_hook(found: list[_MapOnly], pairs: list[tuple[str, Any]]) -> GoObject:
    obj = _ascii_object_hook(found, pairs)
    if not isinstance(obj, _MapOnly) and not "".join(obj).isascii():
        return _map_only(pairs, found)
    return obj


def _refuse_struct_trouble(value: Any, maps: Set[str]) -> None:
    """Raise for the first ``_MapOnly`` object that is not at one of the ``maps`` paths."""
    stack: list[tuple[Any, str, str]] = [(value, "", "")]  # (value, path as matched, path as sent)
    while stack:
        node, path, shown = stack.pop()
        if isinstance(node, list):
            stack.extend((item, f"{path}[]", f"{shown}[{i}]") for i, item in enumerate(node))
        elif isinstance(node, GoObject):
            is_map = path in maps
            if isinstance(node, _MapOnly) and not is_map:
                raise BodyError(node.trouble(f"object {shown}" if shown else "object"))
            for key, child in node.items():
                sub = f"{path}.*" if is_map else f"{path}.{key.lower()}" if path else key.lower()
                stack.append((child, sub, f"{shown}.{key}" if shown else key))


def _reject_constant(name: str) -> Any:
    # Go's encoding/json has no NaN or Infinity literals.
    raise BodyError(f"JSON body contains {name}, which the daemon rejects")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        # Go refuses a number out of float64 range; Python would silently read infinity.
        raise BodyError(f"JSON number {text[:40]} is out of range")
    return value


def _iter_containers(value: Any) -> Iterator[tuple[Any, int]]:
    """Every list/object in ``value`` with its nesting depth (1 = the value itself)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))


def _iter_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
        return
    for node, _ in _iter_containers(value) if isinstance(value, dict | list) else ():
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, str):
                yield child


def loads(data: bytes, *, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BODY_BYTES,
          maps: Set[str] = frozenset()) -> Any:  # fmt: skip
    """Decode ``data`` as Go would, or raise ``BodyError`` saying why it cannot be read exactly.

    Objects become ``GoObject``; everything else is what ``json.loads`` returns. ``maps``: the paths
    of the objects the daemon decodes into Go maps, lower-cased, ``.`` between struct fields,
    ``[]`` for an array's elements and ``*`` for a map's values (``"labels"``,
    ``"networkingconfig.endpointsconfig.*.driveropts"``); their keys may be anything.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"gojson.loads expects bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise BodyError(f"JSON body of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    raw = bytes(data)
    if raw.startswith(_BOM):
        # Go reads a BOM as an invalid character; Python's bytes detection would skip it.
        raise BodyError("JSON body starts with a UTF-8 byte-order mark")
    try:
        text = raw.decode("utf-8")  # strict: the daemon would replace bad bytes with U+FFFD
    except UnicodeDecodeError as exc:
        raise BodyError(f"JSON body is not valid UTF-8 (byte {exc.start})") from None
    found: list[_MapOnly] = []
    try:
        value = json.loads(
            text,
            object_pairs_hook=functools.partial(_ascii_object_hook if _ascii_keys(text) else _object_hook, found),
            parse_constant=_reject_constant,
            parse_float=_parse_float,
        )
    except json.JSONDecodeError as exc:
        raise BodyError(f"JSON body is invalid: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BodyError(f"JSON body nests deeper than {max_depth} levels") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python's digit limit
        raise BodyError(f"JSON body is invalid: {exc}") from None
    # Counting brackets is a cheap upper bound on depth; walk the tree only when it is not enough.
    if isinstance(value, dict | list) and text.count("{") + text.count("[") > max_depth:
        for _, depth in _iter_containers(value):
            if depth > max_depth:
                raise BodyError(f"JSON body nests deeper than {max_depth} levels")
    if _SURROGATE_ESCAPE.search(text):
        for string in _iter_strings(value):
            if _SURROGATE.search(string):
                # Go replaces a lone surrogate with U+FFFD; we would compare a different string.
                raise BodyError("JSON string contains a lone UTF-16 surrogate escape")
    if found:
        _refuse_struct_trouble(value, maps)
    return value


def loads_object(data: bytes, *, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BODY_BYTES) -> GoObject:
    """``loads`` for bodies the daemon decodes into a struct: anything but an object is refused."""
    value = loads(data, max_depth=max_depth, max_bytes=max_bytes)
    if not isinstance(value, GoObject):
        raise BodyError(f"JSON body must be an object, not {_json_type(value)}")
    return value


def field_path(obj: Any, *names: str, default: Any = None) -> Any:
    """Follow struct fields ``names`` from ``obj``; absent or ``null`` anywhere gives ``default``.

    A non-object where an object is needed raises ``BodyError`` (the daemon answers 400).
    """
    value = obj
    for i, name in enumerate(names):
        if value is None:
            return default
        where = ".".join(names[:i]) or "body"
        value = as_object(value, where)
        value = None if value is None else value.field(name)
    return default if value is None else value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _wrong(where: str, wanted: str, value: Any) -> BodyError:
    return BodyError(f"{where}: expected {wanted}, got {_json_type(value)}")


def as_opt_bool(value: Any, where: str) -> bool | None:
    """A Go ``*bool``: ``None`` when absent or ``null``."""
    if value is None or isinstance(value, bool):
        return value
    raise _wrong(where, "a boolean", value)


def as_bool(value: Any, where: str, default: bool = False) -> bool:
    """A Go ``bool``: JSON ``true``/``false`` only (Go refuses ``"true"`` and ``1``)."""
    result = as_opt_bool(value, where)
    return default if result is None else result


def as_opt_int(value: Any, where: str, *, minimum: int = INT64_MIN, maximum: int = INT64_MAX) -> int | None:
    """A Go ``*int64`` (or narrower with ``minimum``/``maximum``): ``None`` when absent or ``null``.

    Go parses integer fields from the literal text, so ``1.0`` and ``1e3`` are refused like
    fractions, and values outside the type's range are errors.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(where, "an integer", value)
    if not minimum <= value <= maximum:
        raise BodyError(f"{where}: {value} is out of range [{minimum}, {maximum}]")
    return value


def as_int(value: Any, where: str, default: int = 0, *, minimum: int = INT64_MIN, maximum: int = INT64_MAX) -> int:
    """A Go ``int64`` (see ``as_opt_int``); ``default`` when absent or ``null``."""
    result = as_opt_int(value, where, minimum=minimum, maximum=maximum)
    return default if result is None else result


def as_float(value: Any, where: str, default: float = 0.0) -> float:
    """A Go ``float64``: any JSON number."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(where, "a number", value)
    return float(value)


def as_str(value: Any, where: str, default: str = "") -> str:
    """A Go ``string``: a JSON string only (Go refuses numbers and booleans)."""
    if value is None:
        return default
    if not isinstance(value, str):
        raise _wrong(where, "a string", value)
    return value


# Views walk every element of the lists they read (binds, mounts, devices …). Without a bound, a
# 4 MiB body of 500,000 tiny binds costs seconds of CPU per request while dockerd waits for us.
MAX_ITEMS = 4096


def as_list(value: Any, where: str) -> list[Any] | None:
    """A Go slice: ``None`` when absent or ``null`` (a nil slice), else the JSON array."""
    if value is None:
        return None
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise BodyError(f"{where} has {len(value)} entries; the plugin judges at most {MAX_ITEMS}")
        return value
    raise _wrong(where, "an array", value)


def as_str_list(value: Any, where: str) -> tuple[str, ...]:
    """A Go ``[]string``; ``null`` elements become ``""`` as in Go (null leaves the zero value)."""
    items = as_list(value, where)
    if items is None:
        return ()
    return tuple(as_str(item, f"{where}[{i}]") for i, item in enumerate(items))


def as_strslice(value: Any, where: str) -> tuple[str, ...]:
    """A ``strslice.StrSlice`` (``Cmd``, ``Entrypoint``): a string or an array of strings."""
    if isinstance(value, str):
        return (value,)
    return as_str_list(value, where)


def as_object(value: Any, where: str) -> GoObject | None:
    """A Go struct or map: ``None`` when absent or ``null``, else the ``GoObject``."""
    if value is None or isinstance(value, GoObject):
        return value
    if isinstance(value, dict):  # a plain dict built by hand (tests, callers): give it field()
        obj = GoObject(value)
        obj._index()
        return obj
    raise _wrong(where, "an object", value)


def as_str_map(value: Any, where: str) -> dict[str, str]:
    """A Go ``map[string]string`` (``Labels``, ``Sysctls``, driver options); null values → ``""``."""
    obj = as_object(value, where)
    if obj is None:
        return {}
    if len(obj) > MAX_ITEMS:
        raise BodyError(f"{where} has {len(obj)} entries; the plugin judges at most {MAX_ITEMS}")
    return {key: as_str(item, f"{where}.{key}") for key, item in obj.items()}
