"""Fixtures for the update tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from potluck.identity import NodeIdentity
from potluck.updates.codec import encode_update
from tests.updates.builders import build


@pytest.fixture(scope="session")
def identity() -> NodeIdentity:
    return NodeIdentity.generate()


@pytest.fixture
def valid(identity: NodeIdentity) -> Callable[..., bytes]:
    def make(values: str = "int8", **overrides: Any) -> bytes:
        return encode_update(build(identity, **overrides), identity, values)

    return make
