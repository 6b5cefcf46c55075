"""Fixtures of the training tests. Their demo stores (`demo_stores`) are made in tests/conftest.py,
once per session for the training tests and the search server's."""
from __future__ import annotations

from tests.conftest import DEMO_EXPERTS as EXPERTS

__all__ = ['EXPERTS']
