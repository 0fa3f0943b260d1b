"""Fixtures over the captured daemon payloads (helpers live in tests/support/captures.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from authz.request import DockerRequest
from tests.support.captures import capture_request, load_capture


@pytest.fixture
def load_capture_fn() -> Callable[[str], dict[str, Any]]:
    return load_capture


@pytest.fixture
def capture_request_fn() -> Callable[..., DockerRequest]:
    return capture_request
