"""``authz.blocking``: the hand-off a worker's loop sets runs once, on its own thread only."""

from __future__ import annotations

import threading

from authz.blocking import about_to_wait, set_hand_off


def test_the_hand_off_runs_once_and_only_on_the_thread_that_set_it() -> None:
    calls: list[str] = []
    set_hand_off(lambda: calls.append(threading.current_thread().name))
    try:
        finished: list[bool] = []
        other = threading.Thread(target=lambda: (about_to_wait(), finished.append(True)), name="other")
        other.start()
        other.join()
        assert finished == [True]
        assert calls == []  # another thread has no hand-off of its own
        about_to_wait()
        about_to_wait()  # the loop is already handed over: a second wait hands nothing
        assert calls == [threading.current_thread().name]
    finally:
        set_hand_off(None)
