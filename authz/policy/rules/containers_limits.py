"""Resource limits: ``containers.max_memory``, ``max_cpus``, ``max_pids`` and ``require_limits``.

On create, zero (or absent) means "not set": that is what every ``docker run`` without limit
flags sends. With ``require_limits: true`` each configured maximum must be set; without it an
unset limit is allowed but a set one must stay within the maximum, and explicitly unlimited
values (``PidsLimit -1``, ``CpuQuota -1``, ``MemorySwap -1``) count as above any maximum.
On update, zero means "unchanged" (the daemon copies only non-zero values), so an update can only
be denied for what it sets: above a maximum, or a limit removed (``PidsLimit`` 0 or -1).
CPUs are ``NanoCpus / 1e9`` or ``CpuQuota / CpuPeriod`` (period default 100 ms).

Real-time scheduling is outside that quota: the CFS bandwidth limit that ``--cpus`` sets does not
apply to SCHED_FIFO/SCHED_RR tasks, which run until they yield (the kernel's global RT throttle
leaves 5 % of each CPU). A process may switch itself to real time up to its ``RLIMIT_RTPRIO``
without any capability, so roles with CPU limits (``max_cpus`` or ``require_limits``) may not
raise ``--ulimit rtprio``, nor ask for a real-time budget (``CpuRealtimeRuntime``). The daemon
names the limit ``"RLIMIT_" + strings.ToUpper(Name)``, so the name is compared case-insensitively
and a non-ASCII name is refused (its upper case is not worth guessing). Other ulimits stay the
role's business: memory they pin (``memlock``) is charged to the memory cgroup.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from authz import gojson
from authz.classify.containers import ContainerCreate, ContainerUpdate
from authz.errors import BodyError
from authz.gojson import GoObject, as_int, as_list, as_object, as_opt_int, as_str
from authz.policy.model import ContainerRules
from authz.policy.rules import Violation

__all__ = ["check_build_ulimits", "check_create_limits", "check_update_limits"]

_DEFAULT_CFS_PERIOD = 100_000  # µs: the kernel's default, used when CpuQuota comes without CpuPeriod
_MIN_CFS_PERIOD = 1_000  # µs: the smallest period the kernel accepts
_NANO = 1_000_000_000
_UNLIMITED = float("inf")


def _size(value: int) -> str:
    for unit, factor in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if value % factor == 0:
            return f"{value // factor}{unit}"
    return f"{value} bytes"


def _cpus(text: float) -> str:
    return "unlimited" if text == _UNLIMITED else f"{text:g}"


def _raw_host_config(body: Any) -> GoObject:
    """The HostConfig object the daemon reads fields from (the top level when it is absent, B5).

    Only fields outside the five that ``getHostConfig`` copies from the top level are read here.
    """
    if not isinstance(body, GoObject):
        return GoObject()
    inner = as_object(body.field("HostConfig"), "HostConfig")
    return inner if inner is not None else body


def _memory(rules: ContainerRules, memory: int, swap: int, *, update: bool) -> Iterator[Violation]:
    limit = rules.max_memory
    if memory < 0:
        yield Violation("containers.max_memory", "HostConfig.Memory" if not update else "Memory",
                        f"Memory {memory} is not a valid limit")  # fmt: skip
    if limit is None:
        return
    field = "Memory" if update else "HostConfig.Memory"
    if memory > limit:
        yield Violation("containers.max_memory", field, f"memory limit {_size(memory)} is above the maximum "
                        f"{_size(limit)}; use --memory {_size(limit)} or less")  # fmt: skip
    elif memory == 0 and rules.require_limits and not update:
        yield Violation("containers.require_limits", field, f"a memory limit is required: pass --memory "
                        f"(at most {_size(limit)})")  # fmt: skip
    if swap == -1:
        yield Violation("containers.max_memory", "MemorySwap" if update else "HostConfig.MemorySwap",
                        "unlimited swap (--memory-swap -1) is not allowed when memory is limited; "
                        "set --memory-swap to a size or leave it out")  # fmt: skip


def _cpu_value(nano: int, quota: int, period: int, *, update: bool) -> float | None:
    """CPUs the request grants (``inf`` for unlimited, ``None`` when it sets none)."""
    if nano < 0 or quota < 0 or period < 0:
        return _UNLIMITED  # -1 quota is "no limit"; other negatives the daemon refuses
    if quota > 0:
        # On update a missing period keeps the container's own, which may be as small as 1 ms.
        base = period or (_MIN_CFS_PERIOD if update else _DEFAULT_CFS_PERIOD)
        from_quota = quota / base
        return max(from_quota, nano / _NANO)
    if period > 0 and update:
        return _UNLIMITED  # a new period under the existing quota: the result is unknown
    if nano > 0:
        return nano / _NANO
    return None


def _cpu(rules: ContainerRules, nano: int, quota: int, period: int, *, update: bool) -> Iterator[Violation]:
    limit = rules.max_cpus
    if limit is None:
        return
    cpus = _cpu_value(nano, quota, period, update=update)
    field = "NanoCpus" if nano else "CpuQuota" if quota else "CpuPeriod"
    field = field if update else f"HostConfig.{field}"
    if cpus is None:
        if rules.require_limits and not update:
            yield Violation("containers.require_limits", "HostConfig.NanoCpus",
                            f"a CPU limit is required: pass --cpus (at most {limit:g})")  # fmt: skip
        return
    if cpus > limit:
        hint = " (send CpuPeriod with CpuQuota, or use --cpus)" if update and quota >= 0 else ""
        yield Violation("containers.max_cpus", field, f"CPU limit {_cpus(cpus)} is above the maximum "
                        f"{limit:g}{hint}; use --cpus {limit:g} or less")  # fmt: skip


def _pids(rules: ContainerRules, pids: int | None, *, field: str, require: bool) -> Iterator[Violation]:
    """``pids`` None: not set; <= 0: explicitly unlimited."""
    limit = rules.max_pids
    if limit is None:
        return
    if pids is None:
        if require:
            yield Violation("containers.require_limits", field,
                            f"a process limit is required: pass --pids-limit (at most {limit})")  # fmt: skip
        return
    if pids <= 0:
        yield Violation("containers.max_pids", field, f"PidsLimit {pids} removes the process limit; "
                        f"use --pids-limit {limit} or less")  # fmt: skip
    elif pids > limit:
        yield Violation("containers.max_pids", field, f"process limit {pids} is above the maximum {limit}; "
                        f"use --pids-limit {limit} or less")  # fmt: skip


def _oom(rules: ContainerRules, disable: bool, score_adj: int, *, prefix: str) -> Iterator[Violation]:
    if rules.max_memory is None and not rules.require_limits:
        return
    rule = "containers.max_memory" if rules.max_memory is not None else "containers.require_limits"
    if disable:
        # The OOM killer would then take host processes instead of this container.
        yield Violation(rule, f"{prefix}OomKillDisable", "--oom-kill-disable is not allowed for roles with "
                        "memory limits: an unkillable container can take the host's memory")  # fmt: skip
    if score_adj < 0:
        yield Violation(rule, f"{prefix}OomScoreAdj", f"a negative --oom-score-adj ({score_adj}) shields the "
                        "container from the OOM killer and is not allowed for roles with memory limits")  # fmt: skip


def _cpu_limited_rule(rules: ContainerRules) -> str | None:
    """The rule that limits this role's CPU (named in a real-time violation), or None."""
    if rules.max_cpus is not None:
        return "containers.max_cpus"
    return "containers.require_limits" if rules.require_limits else None


def parse_ulimits(value: Any, where: str) -> list[tuple[str, int, int]]:
    """``[]*units.Ulimit`` as the daemon reads it: (name, soft, hard) per entry."""
    entries = as_list(value, where) or []
    parsed = []
    for index, entry in enumerate(entries):
        at = f"{where}[{index}]"
        item = as_object(entry, at)
        if item is None:  # a nil *Ulimit: the daemon would dereference it
            raise BodyError(f"{at}: null is not a ulimit")
        name = as_str(item.field("Name"), f"{at}.Name")
        if not name.isascii():
            raise BodyError(f"{at}.Name: {name!r} is not an ASCII ulimit name")
        parsed.append((name, as_int(item.field("Soft"), f"{at}.Soft"), as_int(item.field("Hard"), f"{at}.Hard")))
    return parsed


def _realtime_budget(rule: str, runtime: int, field: str) -> Iterator[Violation]:
    if runtime != 0:
        name = field.rpartition(".")[2]
        yield Violation(rule, field, f"a real-time CPU budget ({name} {runtime} µs) is not bounded by the CPU "
                        "limit and is not allowed for roles with CPU limits; leave out --cpu-rt-runtime")  # fmt: skip


def _rtprio(rule: str, ulimits: list[tuple[str, int, int]], field: str) -> Iterator[Violation]:
    for index, (name, soft, hard) in enumerate(ulimits):
        if name.upper() == "RTPRIO" and (soft != 0 or hard != 0):
            yield Violation(rule, f"{field}[{index}]", f"--ulimit {name}={soft}:{hard} lets processes switch to "
                            "real-time scheduling, which the CPU limit does not bound; not allowed for roles with "
                            "CPU limits (leave rtprio at 0)")  # fmt: skip


def check_build_ulimits(rules: ContainerRules, ulimits_json: str | None) -> Iterator[Violation]:
    """The ``ulimits`` query parameter of a build (JSON), applied to every ``RUN`` container."""
    rule = _cpu_limited_rule(rules)
    if not ulimits_json or rule is None:
        return
    try:
        value = gojson.loads(ulimits_json.encode())
    except BodyError as exc:
        raise BodyError(f"ulimits query parameter: {exc}") from exc
    yield from _rtprio(rule, parse_ulimits(value, "ulimits"), "ulimits")


def check_create_limits(rules: ContainerRules, view: ContainerCreate, body: Any) -> Iterator[Violation]:
    """Limits of a create; ``body`` is the Go-decoded body (for values the view folds away)."""
    hc = _raw_host_config(body)
    yield from _memory(rules, view.memory, view.memory_swap, update=False)
    yield from _cpu(rules, view.nano_cpus, view.cpu_quota, view.cpu_period, update=False)
    # The view folds PidsLimit <= 0 into "no limit"; an explicit negative asks for unlimited.
    raw_pids = as_opt_int(hc.field("PidsLimit"), "HostConfig.PidsLimit")
    pids = view.pids_limit if raw_pids is None or raw_pids >= 0 else raw_pids
    yield from _pids(rules, pids, field="HostConfig.PidsLimit", require=bool(rules.require_limits))
    score = as_int(hc.field("OomScoreAdj"), "HostConfig.OomScoreAdj")
    yield from _oom(rules, view.oom_kill_disable, score, prefix="HostConfig.")
    rule = _cpu_limited_rule(rules)
    if rule is not None:
        ulimits = parse_ulimits(hc.field("Ulimits"), "HostConfig.Ulimits")
        runtime = as_int(hc.field("CpuRealtimeRuntime"), "HostConfig.CpuRealtimeRuntime")
        yield from _realtime_budget(rule, runtime, "HostConfig.CpuRealtimeRuntime")
        yield from _rtprio(rule, ulimits, "HostConfig.Ulimits")


def check_update_limits(rules: ContainerRules, view: ContainerUpdate) -> Iterator[Violation]:
    """An update may change limits only within the maxima, and never remove them."""
    yield from _memory(rules, view.memory, view.memory_swap, update=True)
    yield from _cpu(rules, view.nano_cpus, view.cpu_quota, view.cpu_period, update=True)
    yield from _pids(rules, view.pids_limit, field="PidsLimit", require=False)
    yield from _oom(rules, bool(view.oom_kill_disable), 0, prefix="")
    # The daemon ignores Ulimits on update; a real-time budget is kept for the next start.
    rule = _cpu_limited_rule(rules)
    if rule is not None:
        yield from _realtime_budget(rule, view.cpu_realtime_runtime, "CpuRealtimeRuntime")
