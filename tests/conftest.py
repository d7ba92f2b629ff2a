"""Shared test helpers."""
from __future__ import annotations

import importlib

import pytest


@pytest.fixture
def load_bench():
    """load_bench("state_probe") -> the module benchmarks.state_probe."""
    return lambda name: importlib.import_module(f"benchmarks.{name}")
