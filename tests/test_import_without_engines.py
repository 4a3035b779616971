"""`import specplug` (and the whole core) must work with neither vLLM nor SGLang installed."""

from __future__ import annotations

import subprocess
import sys

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('vllm', 'sglang', 'triton'):
            raise ImportError(f'blocked for this test: {name}')
        return None
sys.meta_path.insert(0, Block())
import specplug, specplug.tree, specplug.verify, specplug.config, specplug.proposers, specplug.cli
import specplug.kernels
from specplug.proposers import available_methods, get_proposer_class
for m in available_methods():
    get_proposer_class(m)
bad = [m for m in sys.modules if m.split('.')[0] in ('vllm', 'sglang', 'triton')]
assert not bad, bad
print('ok', specplug.__version__)
"""


def test_core_imports_without_engines_or_triton():
    out = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_cli_version():
    out = subprocess.run([sys.executable, "-m", "specplug.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("specplug ")


def test_declared_entry_points_import_cleanly():
    """Both engines' plugin entry points resolve and can be called without their engine."""
    from importlib.metadata import entry_points

    targets = {g: e for g in ("vllm.general_plugins", "sglang.srt.plugins")
               for e in entry_points(group=g) if e.name == "specplug"}
    assert set(targets) == {"vllm.general_plugins", "sglang.srt.plugins"}
    targets["sglang.srt.plugins"].load()()
    assert callable(targets["vllm.general_plugins"].load())
