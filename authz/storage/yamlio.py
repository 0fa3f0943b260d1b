"""Policy YAML in and out: the one place that turns YAML text into mappings and back.

Loading is ``yaml.safe_load`` plus one refusal: a key repeated in one mapping is an error, not
"last one wins" (a second ``alice:`` entry would silently replace the first). Dumping keeps the
key order of ``dump_policy`` and quotes whatever YAML would otherwise read as another type.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import yaml
from yaml.nodes import MappingNode

from authz.errors import PolicyError
from authz.policy.model import Policy
from authz.policy.schema import dump_policy

MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys within one mapping."""


def _construct_mapping(loader: _StrictLoader, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _value in node.value:
        if key_node.tag == _MERGE_TAG:
            continue  # `<<: *anchor` merges are allowed; their keys may be overridden on purpose
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            raise PolicyError("", f"line {key_node.start_mark.line + 1}: a mapping key must be a string") from None
        if duplicate:
            # Fail closed: "last one wins" would hide the first definition from the reviewer.
            raise PolicyError("", f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str | bytes, source: str = "<input>") -> Any:
    """Parse one YAML document; errors become ``PolicyError`` naming ``source`` and the line."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise PolicyError("", f"{source}: larger than {MAX_DOCUMENT_BYTES // (1024 * 1024)} MiB")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except PolicyError as exc:
        raise PolicyError("", f"{source}: {exc.message}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError("", f"{source}:{where} not valid YAML: {problem}") from None


def load_mapping(text: str | bytes, source: str = "<input>") -> dict[str, Any]:
    """``load_yaml`` for documents that must be a mapping (a policy, a role)."""
    doc = load_yaml(text, source)
    if not isinstance(doc, dict):
        raise PolicyError("", f"{source}: expected a YAML mapping at the top, got {type(doc).__name__}")
    return doc


def dump_yaml(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)


def without_builtin_roles(policy: Policy) -> Policy:
    """The policy minus unmodified built-in roles: those exist anyway and must not be frozen."""
    return replace(policy, roles={name: role for name, role in policy.roles.items() if not role.builtin})


def export_document(policy: Policy) -> dict[str, Any]:
    """The policy-v1 mapping an admin edits: stored roles only, so export → apply is a no-op."""
    return dump_policy(without_builtin_roles(policy))


def export_yaml(policy: Policy) -> str:
    return dump_yaml(export_document(policy))
