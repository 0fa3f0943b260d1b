"""The action vocabulary: one ``resource:verb`` name for what every Engine API route does.

Grammar (policy-v1.md, docker-authz.md 5.2)::

    action   = resource ":" verb          e.g. "container:create", "container:copy-in"
    resource = one of RESOURCES           lower-case word: "container", "image", "system" …
    verb     = [a-z]+ ("-" [a-z]+)*       lower-case words joined by "-"
    pattern  = action | resource ":*" | "*"

A pattern names either one action of the catalogue, every action of one known resource
(``image:*``) or every action (``*``). Nothing else is a pattern: no other wildcards, no unknown
names, no surrounding whitespace, and matching is case-sensitive. ``authz.classify.routes`` maps
every route to a member of ``Action``; the unit tests check that every member is used by a route.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache

__all__ = ["ALL_ACTIONS", "RESOURCES", "Action", "expand", "is_valid_pattern", "matches"]


class Action(StrEnum):
    """Every action a request can be classified as (the value is the ``resource:verb`` name)."""

    # System, debug
    SYSTEM_OPTIONS = "system:options"
    SYSTEM_PING = "system:ping"
    SYSTEM_VERSION = "system:version"
    SYSTEM_INFO = "system:info"
    SYSTEM_EVENTS = "system:events"
    SYSTEM_DF = "system:df"
    SYSTEM_AUTH = "system:auth"
    SYSTEM_DEBUG = "system:debug"
    # Containers
    CONTAINER_LIST = "container:list"
    CONTAINER_CREATE = "container:create"
    CONTAINER_INSPECT = "container:inspect"
    CONTAINER_TOP = "container:top"
    CONTAINER_LOGS = "container:logs"
    CONTAINER_DIFF = "container:diff"
    CONTAINER_EXPORT = "container:export"
    CONTAINER_STATS = "container:stats"
    CONTAINER_ATTACH = "container:attach"
    CONTAINER_COPY_STAT = "container:copy-stat"
    CONTAINER_COPY_OUT = "container:copy-out"
    CONTAINER_COPY_IN = "container:copy-in"
    CONTAINER_START = "container:start"
    CONTAINER_STOP = "container:stop"
    CONTAINER_RESTART = "container:restart"
    CONTAINER_KILL = "container:kill"
    CONTAINER_PAUSE = "container:pause"
    CONTAINER_UNPAUSE = "container:unpause"
    CONTAINER_WAIT = "container:wait"
    CONTAINER_RESIZE = "container:resize"
    CONTAINER_RENAME = "container:rename"
    CONTAINER_UPDATE = "container:update"
    CONTAINER_PRUNE = "container:prune"
    CONTAINER_DELETE = "container:delete"
    CONTAINER_COMMIT = "container:commit"
    CONTAINER_EXEC = "container:exec"
    # Exec instances
    EXEC_START = "exec:start"
    EXEC_RESIZE = "exec:resize"
    EXEC_INSPECT = "exec:inspect"
    # Checkpoints (experimental daemons)
    CHECKPOINT_LIST = "checkpoint:list"
    CHECKPOINT_CREATE = "checkpoint:create"
    CHECKPOINT_DELETE = "checkpoint:delete"
    # Images, distribution
    IMAGE_LIST = "image:list"
    IMAGE_SEARCH = "image:search"
    IMAGE_SAVE = "image:save"
    IMAGE_HISTORY = "image:history"
    IMAGE_INSPECT = "image:inspect"
    IMAGE_ATTESTATIONS = "image:attestations"
    IMAGE_PULL = "image:pull"
    IMAGE_IMPORT = "image:import"
    IMAGE_LOAD = "image:load"
    IMAGE_PUSH = "image:push"
    IMAGE_TAG = "image:tag"
    IMAGE_PRUNE = "image:prune"
    IMAGE_DELETE = "image:delete"
    IMAGE_DISTRIBUTION = "image:distribution"
    IMAGE_BUILD = "image:build"
    # Builder, BuildKit
    BUILD_PRUNE = "build:prune"
    BUILD_CANCEL = "build:cancel"
    BUILD_SESSION = "build:session"
    BUILD_GRPC = "build:grpc"
    # Volumes
    VOLUME_LIST = "volume:list"
    VOLUME_INSPECT = "volume:inspect"
    VOLUME_CREATE = "volume:create"
    VOLUME_UPDATE = "volume:update"
    VOLUME_PRUNE = "volume:prune"
    VOLUME_DELETE = "volume:delete"
    # Networks
    NETWORK_LIST = "network:list"
    NETWORK_INSPECT = "network:inspect"
    NETWORK_CREATE = "network:create"
    NETWORK_CONNECT = "network:connect"
    NETWORK_DISCONNECT = "network:disconnect"
    NETWORK_PRUNE = "network:prune"
    NETWORK_DELETE = "network:delete"
    # Plugins
    PLUGIN_LIST = "plugin:list"
    PLUGIN_INSPECT = "plugin:inspect"
    PLUGIN_PRIVILEGES = "plugin:privileges"
    PLUGIN_INSTALL = "plugin:install"
    PLUGIN_CREATE = "plugin:create"
    PLUGIN_ENABLE = "plugin:enable"
    PLUGIN_DISABLE = "plugin:disable"
    PLUGIN_UPGRADE = "plugin:upgrade"
    PLUGIN_SET = "plugin:set"
    PLUGIN_PUSH = "plugin:push"
    PLUGIN_DELETE = "plugin:delete"
    # Swarm
    SWARM_INIT = "swarm:init"
    SWARM_JOIN = "swarm:join"
    SWARM_LEAVE = "swarm:leave"
    SWARM_INSPECT = "swarm:inspect"
    SWARM_UNLOCKKEY = "swarm:unlockkey"
    SWARM_UPDATE = "swarm:update"
    SWARM_UNLOCK = "swarm:unlock"
    SERVICE_LIST = "service:list"
    SERVICE_INSPECT = "service:inspect"
    SERVICE_CREATE = "service:create"
    SERVICE_UPDATE = "service:update"
    SERVICE_DELETE = "service:delete"
    SERVICE_LOGS = "service:logs"
    NODE_LIST = "node:list"
    NODE_INSPECT = "node:inspect"
    NODE_UPDATE = "node:update"
    NODE_DELETE = "node:delete"
    TASK_LIST = "task:list"
    TASK_INSPECT = "task:inspect"
    TASK_LOGS = "task:logs"
    # S105: "secret" here names the Docker object, not a credential.
    SECRET_LIST = "secret:list"  # noqa: S105
    SECRET_CREATE = "secret:create"  # noqa: S105
    SECRET_INSPECT = "secret:inspect"  # noqa: S105
    SECRET_UPDATE = "secret:update"  # noqa: S105
    SECRET_DELETE = "secret:delete"  # noqa: S105
    CONFIG_LIST = "config:list"
    CONFIG_CREATE = "config:create"
    CONFIG_INSPECT = "config:inspect"
    CONFIG_UPDATE = "config:update"
    CONFIG_DELETE = "config:delete"

    @property
    def resource(self) -> str:
        return self.value.partition(":")[0]

    @property
    def verb(self) -> str:
        return self.value.partition(":")[2]


ALL_ACTIONS: frozenset[str] = frozenset(a.value for a in Action)
RESOURCES: frozenset[str] = frozenset(a.resource for a in Action)


def is_valid_pattern(pattern: str) -> bool:
    """True for an exact catalogue action, ``resource:*`` of a known resource, or ``*``."""
    if not isinstance(pattern, str):
        return False
    if pattern == "*" or pattern in ALL_ACTIONS:
        return True
    resource, sep, verb = pattern.partition(":")
    return sep == ":" and verb == "*" and resource in RESOURCES


def matches(pattern: str, action: str) -> bool:
    """Whether ``pattern`` covers ``action``.

    Fails closed: an invalid pattern matches nothing, and an action outside the catalogue is
    matched by nothing, not even ``*`` (it can only come from a bug, never from a real route).
    """
    if action not in ALL_ACTIONS or not is_valid_pattern(pattern):
        return False
    if pattern == "*":
        return True
    if pattern.endswith(":*"):
        return action.partition(":")[0] == pattern[:-2]
    return pattern == action


def expand(pattern: str) -> frozenset[str]:
    """The catalogue actions a valid pattern covers; ``ValueError`` for an invalid pattern."""
    if not is_valid_pattern(pattern):
        raise ValueError(f"not an action pattern: {pattern!r} (expected resource:verb, resource:* or *)")
    return covered(pattern)


def covered(pattern: str) -> frozenset[str]:
    """The catalogue actions ``pattern`` covers; none for an invalid pattern. Computed once per pattern:
    compiling a policy expands every role's patterns, its ancestors' included (100 roles extending
    ``developer`` took 0.2-0.4 s when matched one action at a time, a stall for the request doing it).
    """
    return _covered(pattern) if isinstance(pattern, str) else frozenset()


@lru_cache(maxsize=4096)
def _covered(pattern: str) -> frozenset[str]:
    return frozenset(a for a in ALL_ACTIONS if matches(pattern, a))
