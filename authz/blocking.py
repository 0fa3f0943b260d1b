"""Code about to wait on something outside the process says so first.

A plugin worker serves its connections from one thread (``authz.loop_worker``). A request whose
decision waits (for SQLite's write lock, a PostgreSQL round trip, the daemon's answer to an image
lookup, a group fsync) would hold up every other connection of that worker, and an image lookup
could even wait on itself: the daemon authorizes the lookup through this same plugin, perhaps on
a connection the waiting thread serves. So such code calls ``about_to_wait()`` before it waits,
and the worker hands its loop to another thread. Anywhere else (the CLI, tests, the thread per
connection worker) no hand-off is set and the call does nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

_local = threading.local()


def about_to_wait() -> None:
    """Run this thread's hand-off, once: the first wait of a request frees the loop for good."""
    hand_off: Callable[[], None] | None = getattr(_local, "hand_off", None)
    if hand_off is not None:
        _local.hand_off = None
        hand_off()


def set_hand_off(hand_off: Callable[[], None] | None) -> None:
    """What ``about_to_wait`` runs on this thread (None: nothing)."""
    _local.hand_off = hand_off
