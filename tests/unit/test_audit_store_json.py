"""The audit shipper's JSON column text (``audit_store._json_text``): orjson for the common
shapes, the column type's own encoder for everything else; both read back as the same values."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from authz.storage.audit_store import _json_text

_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
_VALUES = st.recursive(
    _LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12
)


@given(st.lists(st.text()) | _VALUES)
def test_the_text_reads_back_as_json_dumps_would_have_written_it(value: Any) -> None:
    text = _json_text(value)
    expected = json.dumps(value)
    if text != expected:  # orjson wrote it: compact, non-ASCII raw; the same value once read
        assert (type(value) is list and all(type(item) is str for item in value)) or value == {}
        assert json.loads(text) == json.loads(expected)


def test_orjson_writes_roles_warnings_and_an_empty_detail() -> None:
    assert _json_text(["developer", "équipe"]) == '["developer","équipe"]'
    assert _json_text([]) == "[]"
    assert _json_text({}) == "{}"


def test_what_orjson_would_write_differently_goes_to_the_standard_encoder() -> None:
    assert _json_text({"n": 2**70}) == '{"n": 1180591620717411303424}'  # orjson refuses it
    assert _json_text([math.nan]) == "[NaN]"  # orjson would write null
    assert _json_text({"query": {"all": "1"}}) == '{"query": {"all": "1"}}'
    assert _json_text(("a",)) == '["a"]'
    assert _json_text(None) == "null"
