"""Fixtures shared by the whole suite: the real HAProxy builds under test."""

import os
import shutil
from pathlib import Path

import pytest

from .harness import REPO

VENV_BIN = REPO / ".venv" / "bin"


def _haproxy_builds() -> list[Path]:
    """HAPROXY_BIN alone if set; otherwise the default build and 3.4 if present."""
    configured = os.environ.get("HAPROXY_BIN")
    if configured:
        return [Path(configured)]
    builds: list[Path] = []
    default = VENV_BIN / "haproxy"
    if default.exists():
        builds.append(default)
    else:
        found = shutil.which("haproxy")
        if found:
            builds.append(Path(found))
    newest = VENV_BIN / "haproxy-3.4"
    if newest.exists() and all(b.resolve() != newest.resolve() for b in builds):
        builds.append(newest)
    return builds


HAPROXY_BUILDS = _haproxy_builds()


@pytest.fixture(
    scope="session",
    params=HAPROXY_BUILDS or [None],
    ids=[build.name for build in HAPROXY_BUILDS] or ["missing"],
)
def haproxy_bin(request: pytest.FixtureRequest) -> Path:
    """Each HAProxy 3.2+ build under test: HAPROXY_BIN, or .venv's builds."""
    if request.param is None:
        pytest.fail("no HAProxy found: run 'make setup' or set HAPROXY_BIN")
    return Path(request.param)
