"""Imports every rule family so that each registers its checks (the engine imports this module)."""

from __future__ import annotations
