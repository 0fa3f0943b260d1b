"""authz.gojson: Go-exact decoding or BodyError (docker-authz.md 6.2, B4)."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz import gojson
from authz.errors import BodyError
from authz.gojson import GoObject

CAPTURES = Path("/work/shared/reference/captures")


def capture_body(name: str) -> bytes:
    wire = json.loads((CAPTURES / name).read_text())["authz_req"]["wire"]
    return base64.b64decode(wire["RequestBody"])


# --- what is accepted, and how it reads ----------------------------------------------------------


def test_objects_are_goobjects_equal_to_plain_dicts() -> None:
    value = gojson.loads(b'{"A": {"b": [1, {"c": null}]}, "d": "x"}')
    assert isinstance(value, GoObject)
    assert isinstance(value["A"], GoObject)
    assert isinstance(value["A"]["b"][1], GoObject)
    assert value == {"A": {"b": [1, {"c": None}]}, "d": "x"}
    assert list(value) == ["A", "d"]  # insertion order kept


def test_field_is_case_insensitive_and_null_is_absent() -> None:
    obj = gojson.loads_object(b'{"hostconfig": {"PRIVILEGED": true, "Memory": null}}')
    hc = obj.field("HostConfig")
    assert hc.field("Privileged") is True
    assert hc.field("Memory") is None
    assert hc.field("Memory", 7) == 7
    assert hc.field("Binds", ()) == ()
    assert hc.has("memory")
    assert not hc.has("Binds")


def test_false_and_zero_are_not_absent() -> None:
    obj = gojson.loads_object(b'{"privileged": false, "Memory": 0, "User": ""}')
    assert obj.field("Privileged", True) is False
    assert obj.field("Memory", 5) == 0
    assert obj.field("User", "x") == ""


def test_hand_built_goobject_is_checked_on_first_lookup() -> None:
    assert GoObject({"Image": "x"}).field("image") == "x"
    with pytest.raises(BodyError, match="same field"):
        GoObject({"Image": "x", "image": "y"}).field("Image")


@pytest.mark.parametrize(
    "data",
    [b"{}", b" \t\r\n{}\n", b"[]", b"0", b"-0", b"1.5e3", b'"\\ud83d\\ude00"', b'"\\u00e9\\/"'],
)
def test_plain_documents_match_json(data: bytes) -> None:
    assert gojson.loads(data) == json.loads(data)


def test_non_ascii_values_are_fine() -> None:
    assert gojson.loads('{"Labels": {"k": "ſ K é"}}'.encode()) == {"Labels": {"k": "ſ K é"}}


# --- Go maps: any keys ----------------------------------------------------------------------------

_MAPS = frozenset(("labels", "hostconfig.mounts[].volumeoptions.labels", "endpoints", "endpoints.*.driveropts"))


@pytest.mark.parametrize(
    "data",
    [
        '{"Labels": {"café": "1"}}',
        '{"Labels": {"Team": "a", "team": "b"}}',
        '{"Labels": {"Privileged": "a", "privileged": "b"}}',
        '{"labels": {"\u017f": "a"}}',  # the struct field is matched case-insensitively, the map's keys are not
        '{"HostConfig": {"Mounts": [{}, {"VolumeOptions": {"Labels": {"Ké": "1", "ké": "2"}}}]}}',
        '{"Endpoints": {"réseau": {"DriverOpts": {"é": "1"}}, "Net": {}, "net": {}}}',
    ],
)
def test_maps_keep_any_keys(data: str) -> None:
    assert gojson.loads(data.encode(), maps=_MAPS) == json.loads(data)


def test_repeated_map_keys_keep_the_last_as_go_maps_do() -> None:
    assert gojson.loads(b'{"Labels": {"a": "1", "a": "2"}}', maps=_MAPS) == {"Labels": {"a": "2"}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"Labels": {"a": {"X": 1, "x": 2}}}', "object Labels.a has keys 'X' and 'x'"),  # a map's value is no map
        ('{"HostConfig": {"Mounts": [{"Type": "bind", "type": "volume"}]}}', "object HostConfig.Mounts[0] has keys"),
        ('{"Endpoints": {"n": {"Aliaſes": ["a"]}}}', "object Endpoints.n has a non-ASCII key 'Aliaſes'"),
        ('{"Labelſ": {"a": "1"}}', "object has a non-ASCII key 'Labelſ'"),
        ('{"Other": {"café": "1"}}', "object Other has a non-ASCII key 'café'"),
    ],
)
def test_structs_next_to_maps_are_still_checked(data: str, message: str) -> None:
    with pytest.raises(BodyError, match=re.escape(message)):
        gojson.loads(data.encode(), maps=_MAPS)


def test_a_map_with_struct_trouble_refuses_struct_lookups() -> None:
    """A reader that takes a map for a struct denies rather than guesses which key Go would use."""
    labels = gojson.loads('{"Labels": {"Team": "a", "team": "b", "café": "c"}}'.encode(), maps=_MAPS).field("Labels")
    assert gojson.as_str_map(labels, "Labels") == {"Team": "a", "team": "b", "café": "c"}
    for lookup in (lambda: labels.field("team"), labels.fields, labels.folded_keys, lambda: labels.has("x")):
        with pytest.raises(BodyError, match="keys 'Team' and 'team'"):
            lookup()


# --- what is refused ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"Privileged": false, "privileged": true}', "same field"),
        (b'{"a": 1, "a": 2}', "same field"),
        (b'{"HostConfig": {"Privileged": true}, "HostConfig": {"Memory": 0}}', "same field"),
        ('{"Bindſ": ["/:/host"]}'.encode(), "non-ASCII"),
        ('{"\u212aernelMemory": 1}'.encode(), "non-ASCII"),
        (b'{"Bind\\u017f": []}', "non-ASCII"),  # escaped keys are decoded before matching
        (b"[NaN]", "NaN"),
        (b'{"Memory": Infinity}', "Infinity"),
        (b"-Infinity", "Infinity"),
        (b"1e400", "out of range"),
        (b"\xef\xbb\xbf{}", "byte-order mark"),
        (b'{"a": "\xff"}', "UTF-8"),
        (b'{"a": "\xed\xa0\x80"}', "UTF-8"),  # a surrogate encoded in UTF-8 (CESU)
        (b'{"a": "\\ud800"}', "surrogate"),
        (b'["\\udc00x"]', "surrogate"),
        (b'"\\ud800\\u0041"', "surrogate"),
        (b"{} {}", "invalid"),
        (b'{"a": 1}x', "invalid"),
        (b"{}\x00", "invalid"),
        (b"", "invalid"),
        (b"{'a': 1}", "invalid"),
        (b'{"a": "\x01"}', "invalid"),  # raw control characters: Go refuses them too
        (b"1" * 5000, "invalid"),  # longer than Python's integer digit limit
    ],
)
def test_ambiguous_documents_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(BodyError, match=message):
        gojson.loads(data)


def test_depth_limit() -> None:
    assert gojson.loads(b"[" * 64 + b"]" * 64, max_depth=64) is not None
    with pytest.raises(BodyError, match="deeper than 64"):
        gojson.loads(b"[" * 65 + b"]" * 65)
    with pytest.raises(BodyError, match="deeper than 3"):
        gojson.loads(b'{"a": {"b": [1]}, "c": [[[]]]}', max_depth=3)
    with pytest.raises(BodyError, match="deeper"):
        gojson.loads(b"[" * 100_000 + b"]" * 100_000, max_bytes=10**6)


def test_many_brackets_in_strings_do_not_count_as_depth() -> None:
    assert gojson.loads(b'["' + b"[{" * 100 + b'"]') == ["[{" * 100]


def test_size_limit() -> None:
    assert gojson.loads(b'"' + b"a" * 98 + b'"', max_bytes=100) == "a" * 98
    with pytest.raises(BodyError, match="exceeds"):
        gojson.loads(b'"' + b"a" * 99 + b'"', max_bytes=100)


def test_loads_object_refuses_other_top_level_values() -> None:
    for data in (b"[]", b"null", b'"x"', b"1", b"true"):
        with pytest.raises(BodyError, match="must be an object"):
            gojson.loads_object(data)


def test_str_input_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        gojson.loads("{}")  # type: ignore[arg-type]


# --- the real differential captures --------------------------------------------------------------


def test_capture_lowercase_keys_are_read_like_go() -> None:
    body = gojson.loads_object(capture_body("json-differential__07_POST_containers-create.json"))
    assert body.field("Image") == "tiny"
    assert gojson.field_path(body, "HostConfig", "Privileged") is True
    assert gojson.field_path(body, "HostConfig", "Binds") == ["/:/host"]


@pytest.mark.parametrize(
    "name",
    [
        "json-differential__10_POST_containers-create.json",  # HostConfig twice (Go merges)
        "json-differential__13_POST_containers-create.json",  # Privileged then privileged
        "json-differential__16_POST_containers-create.json",  # Bindſ
    ],
)
def test_capture_differentials_are_refused(name: str) -> None:
    with pytest.raises(BodyError):
        gojson.loads(capture_body(name))


def test_every_captured_request_body_decodes_or_is_refused_cleanly() -> None:
    decoded = 0
    for path in sorted(CAPTURES.glob("*__*.json")):
        wire = json.loads(path.read_text()).get("authz_req", {}).get("wire", {})
        if "RequestBody" not in wire or "<truncated" in wire["RequestBody"]:
            continue
        raw = base64.b64decode(wire["RequestBody"])
        try:
            value = gojson.loads(raw)
        except BodyError:
            continue
        assert value == json.loads(raw)
        decoded += 1
    assert decoded > 50


# --- helpers -------------------------------------------------------------------------------------


def test_field_path() -> None:
    body = gojson.loads_object(b'{"HostConfig": {"LogConfig": {"Type": "gelf"}}, "N": null}')
    assert gojson.field_path(body, "hostconfig", "logconfig", "type") == "gelf"
    assert gojson.field_path(body, "HostConfig", "Missing", "Type", default="x") == "x"
    assert gojson.field_path(body, "N", "Type") is None
    bad = gojson.loads_object(b'{"HostConfig": "yes"}')
    with pytest.raises(BodyError, match="HostConfig: expected an object, got a string"):
        gojson.field_path(bad, "HostConfig", "Privileged")


def test_typed_getters_accept_go_types() -> None:
    assert gojson.as_bool(True, "x") is True
    assert gojson.as_bool(None, "x") is False
    assert gojson.as_bool(None, "x", True) is True
    assert gojson.as_opt_bool(None, "x") is None
    assert gojson.as_int(-5, "x") == -5
    assert gojson.as_int(None, "x", 3) == 3
    assert gojson.as_int(gojson.INT64_MAX, "x") == gojson.INT64_MAX
    assert gojson.as_opt_int(None, "x") is None
    assert gojson.as_float(2, "x") == 2.0
    assert gojson.as_str("s", "x") == "s"
    assert gojson.as_str(None, "x") == ""
    assert gojson.as_str_list(["a", None], "x") == ("a", "")  # Go: null leaves ""
    assert gojson.as_str_list(None, "x") == ()
    assert gojson.as_strslice("sh -c x", "x") == ("sh -c x",)
    assert gojson.as_strslice(["a"], "x") == ("a",)
    assert gojson.as_str_map({"k": "v", "n": None}, "x") == {"k": "v", "n": ""}
    assert gojson.as_str_map(None, "x") == {}
    assert gojson.as_list(None, "x") is None
    assert gojson.as_object({"a": 1}, "x") == {"a": 1}
    assert gojson.as_object(None, "x") is None


@pytest.mark.parametrize(
    ("getter", "value", "message"),
    [
        (gojson.as_bool, "true", "HostConfig.Privileged: expected a boolean, got a string"),
        (gojson.as_bool, 1, "expected a boolean, got a number"),
        (gojson.as_int, True, "expected an integer, got a boolean"),
        (gojson.as_int, 1.0, "expected an integer, got a number"),  # Go refuses 1.0 for int64
        (gojson.as_int, 1e3, "expected an integer"),
        (gojson.as_int, "1", "expected an integer, got a string"),
        (gojson.as_int, 2**63, "out of range"),
        (gojson.as_int, -(2**63) - 1, "out of range"),
        (gojson.as_float, "1", "expected a number"),
        (gojson.as_str, 1, "expected a string, got a number"),
        (gojson.as_str, ["a"], "expected a string, got an array"),
        (gojson.as_str_list, "a", "expected an array, got a string"),
        (gojson.as_str_list, ["a", 1], r"\[1\]: expected a string"),
        (gojson.as_strslice, 5, "expected an array"),
        (gojson.as_object, [], "expected an object, got an array"),
        (gojson.as_str_map, {"k": 1}, r"\.k: expected a string"),
        (gojson.as_list, {}, "expected an array, got an object"),
    ],
)
def test_typed_getters_refuse_what_go_refuses(getter: Any, value: Any, message: str) -> None:
    with pytest.raises(BodyError, match=message):
        getter(value, "HostConfig.Privileged")


def test_int_bounds_for_narrow_types() -> None:
    assert gojson.as_int(65535, "BlkioWeight", minimum=0, maximum=65535) == 65535
    with pytest.raises(BodyError, match="out of range"):
        gojson.as_int(-1, "BlkioWeight", minimum=0, maximum=65535)


# --- property: BodyError or exactly json.loads ---------------------------------------------------

_TOKENS = [
    "{", "}", "[", "]", ",", ":", " ", "\n", '"a"', '"A"', '"b"', '"\u017f"', '"\\u017f"', '"\\ud800"',
    '"\\udc00"', '"\\ud83d\\ude00"', "1", "-0", "1.5e3", "1e400", "NaN", "-Infinity", "null", "true",
    "false", '"', "\\", "\ufeff", "\x00", "é",
]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20,
)


def _check(data: bytes) -> None:
    try:
        value = gojson.loads(data, max_depth=8)
    except BodyError:
        return
    expected = json.loads(data)
    assert value == expected
    if isinstance(expected, dict):
        assert isinstance(value, GoObject)
    else:
        assert type(value) is type(expected)
    if isinstance(value, float):
        assert not math.isnan(value)


@settings(max_examples=400)
@given(st.binary(max_size=64))
def test_property_random_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=600)
@given(st.lists(st.sampled_from(_TOKENS), max_size=24))
def test_property_token_soup(tokens: list[str]) -> None:
    _check("".join(tokens).encode("utf-8", "surrogatepass"))


@settings(max_examples=300)
@given(json_values, st.booleans())
def test_property_serialised_values(value: Any, ascii_only: bool) -> None:
    _check(json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))


def test_public_surface() -> None:
    assert all(hasattr(gojson, name) for name in gojson.__all__)
    assert {"loads", "loads_object", "GoObject", "field_path", "as_bool", "as_int", "as_str"} <= set(gojson.__all__)
