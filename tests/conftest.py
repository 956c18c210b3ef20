"""Fixtures shared by the whole suite: the real HAProxy binary and Pebble."""

import os
import shutil
from pathlib import Path

import pytest

from .harness import REPO


def _tool(variable: str, name: str) -> Path:
    configured = os.environ.get(variable)
    candidate = Path(configured) if configured else REPO / ".venv" / "bin" / name
    if not candidate.exists():
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} not found: run 'make setup' or set {variable}")
        candidate = Path(found)
    return candidate


@pytest.fixture(scope="session")
def haproxy_bin() -> Path:
    """The HAProxy 3.2+ binary under test (HAPROXY_BIN or .venv/bin/haproxy)."""
    return _tool("HAPROXY_BIN", "haproxy")
