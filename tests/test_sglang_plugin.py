"""specplug's SGLang plugin against the real installed sglang package (0.5.23, CUDA wheel installed
without its dependencies: its registry, server-args resolution and Triton tree kernel import and
run on CPU; its NGRAM worker module does not, it needs the compiled sgl_kernel). Skipped with the
reason where sglang does not import."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: CPU interpreter

import subprocess
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sglang_spec_info = pytest.importorskip(
    "sglang.srt.speculative.spec_info", reason="sglang does not import here (scripts/install.sh installs 0.5.23)")

from specplug.config import SpecplugConfig  # noqa: E402
from specplug.engines.sglang import contract  # noqa: E402
from specplug.engines.sglang.layout import layout_batch  # noqa: E402
from specplug.engines.sglang.settings import CONFIG_ENV  # noqa: E402
from tests.sglang_reference import reconstruct_links  # noqa: E402
from tests.tree_strategies import trees  # noqa: E402

NAMES = ("SPECPLUG_RASD", "SPECPLUG_RECYCLING", "SPECPLUG_SUFFIX")


@pytest.fixture(scope="module")
def registered():
    """SGLang's own plugin loader (entry point group sglang.srt.plugins) registers specplug."""
    from sglang.srt.plugins import load_plugins

    load_plugins()
    from specplug.engines.sglang.plugin import registered_names, registration_error

    assert registration_error() is None, registration_error()
    assert set(NAMES) <= set(registered_names())  # (other test modules may register extra methods)
    return sglang_spec_info.SpeculativeAlgorithm


def test_entry_point_registers_every_method_and_names_resolve(registered):
    for name in NAMES:
        algo = registered.from_string(name.lower())  # SGLang upper-cases names
        assert algo.name == name
        assert algo.is_ngram() and not algo.has_draft_kv() and algo.supports_overlap
        # the four methods CustomSpecAlgo lacks in 0.5.23 answer like the NGRAM enum member
        ngram = registered.NGRAM
        assert algo.carries_draft_hidden_states() == ngram.carries_draft_hidden_states()
        assert algo.need_topk() == ngram.need_topk()
        assert algo.get_platform_worker_cls() is None
        assert callable(algo.create_future_map)
    with pytest.raises(ValueError, match="Unknown speculative algorithm name: SPECPLUG_NOPE"):
        registered.from_string("SPECPLUG_NOPE")


def test_register_is_idempotent_in_one_process(registered):
    from specplug.engines.sglang import plugin

    plugin._state["done"] = False  # as if SGLang's loader ran again in this process
    plugin.register()
    assert plugin.registration_error() is None and set(NAMES) <= set(plugin.registered_names())


def _resolve(monkeypatch, config_env=None, **kwargs):
    from sglang.srt.arg_groups.overrides import resolving_view
    from sglang.srt.arg_groups.speculative_hook import handle_speculative_decoding
    from sglang.srt.server_args import ServerArgs

    if config_env is None:
        monkeypatch.delenv(CONFIG_ENV, raising=False)
    else:
        monkeypatch.setenv(CONFIG_ENV, config_env)
    sa = ServerArgs(model_path="unused-by-resolution", device="cpu", **kwargs)
    handle_speculative_decoding(sa)
    return resolving_view(sa)


def test_server_args_resolution_with_launch_flags(registered, monkeypatch):
    v = _resolve(monkeypatch, speculative_algorithm="specplug_suffix", speculative_num_draft_tokens=9)
    assert v.speculative_algorithm == "SPECPLUG_SUFFIX"
    assert v.speculative_num_draft_tokens == 9
    assert v.speculative_eagle_topk == 1  # suffix default: chains
    assert v.enable_mixed_chunk is False and v.max_running_requests == 48
    assert v.disable_overlap_schedule is True  # on CPU, as SGLang does for NGRAM


def test_server_args_resolution_with_a_specplug_yaml(registered, monkeypatch, tmp_path):
    path = tmp_path / "rec.yaml"
    path.write_text("method: recycling\nnum_speculative_tokens: 6\ntree: true\n")
    v = _resolve(monkeypatch, str(path), speculative_algorithm="SPECPLUG_RECYCLING")
    assert v.speculative_num_draft_tokens == 7 and v.speculative_eagle_topk == 6
    with pytest.raises(Exception, match="names method 'recycling' but the SGLang algorithm is SPECPLUG_RASD"):
        _resolve(monkeypatch, str(path), speculative_algorithm="SPECPLUG_RASD")


def test_python_config_object_gives_valid_server_args(registered, monkeypatch):
    """``sgl.Engine(model_path=..., **cfg.to_sglang())``: the keywords are ServerArgs fields
    (ServerArgs rejects unknown ones) and resolve to the config's width."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    kwargs = SpecplugConfig(method="rasd", num_speculative_tokens=5).to_sglang()
    assert os.environ[CONFIG_ENV].startswith("{")
    v = _resolve(monkeypatch, os.environ[CONFIG_ENV], **kwargs)
    assert (v.speculative_algorithm, v.speculative_num_draft_tokens) == ("SPECPLUG_RASD", 6)


def test_unsupported_settings_are_refused_by_name(registered, monkeypatch):
    with pytest.raises(ValueError, match="pipeline parallelism"):
        _resolve(monkeypatch, speculative_algorithm="SPECPLUG_SUFFIX", pp_size=2)
    with pytest.raises(ValueError, match="--speculative-num-draft-tokens must be >= 2"):
        _resolve(monkeypatch, speculative_algorithm="SPECPLUG_SUFFIX", speculative_num_draft_tokens=1)


# ---------------------------------------------------------------------- contract
def test_contract_holds_for_the_installed_sglang():
    assert contract.installed_version() == "0.5.23"
    assert contract.contract_errors() == []


def test_contract_names_a_broken_symbol_and_the_version(monkeypatch):
    broken = contract.REQUIREMENTS + (
        contract.Requirement("sglang.srt.speculative.ngram_worker:NGRAMWorker._prepare_draft_tokens",
                             params=("self", "batch", "extra")),
        contract.Requirement("sglang.srt.speculative.ngram_worker:NGRAMWorker.no_such_method"),
        contract.Requirement("sglang.srt.speculative.ngram_worker:NGRAMWorker.clear_cache_pool",
                             source=("self.no_such_attribute",)),
    )
    with pytest.raises(contract.SglangContractError) as e:
        contract.check_contract(broken)
    msg = str(e.value)
    assert "installed sglang 0.5.23" in msg and "nothing was registered" in msg
    assert "NGRAMWorker._prepare_draft_tokens: expected parameters ('self', 'batch', 'extra'), found ('self', 'batch')" in msg
    assert "NGRAMWorker.no_such_method: not defined" in msg
    assert "source no longer contains ['self.no_such_attribute']" in msg
    monkeypatch.setattr(contract, "installed_version", lambda: "0.6.0")
    assert contract.contract_errors()[0].startswith("sglang 0.6.0 is not a supported version (supported: 0.5.23")


def test_worker_init_sets_everything_ngram_workers_init_sets():
    """SpecplugNgramWorker replaces NGRAMWorker.__init__ (which would build the C++ corpus); the
    contract pins the attributes SGLang's __init__ sets, and the replacement sets all of them.
    (Read from source: the worker module imports GPU kernels and cannot be imported on CPU.)"""
    import ast
    from pathlib import Path

    import specplug.engines.sglang as adapter

    tree = ast.parse((Path(adapter.__file__).parent / "worker.py").read_text())
    cls = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "SpecplugNgramWorker")
    init = next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    assert contract.self_assignments(init) >= set(contract.NGRAM_WORKER_ATTRIBUTES)
    mutated = contract.Requirement("sglang.srt.speculative.ngram_worker:NGRAMWorker.__init__",
                                   assigns=tuple(a for a in contract.NGRAM_WORKER_ATTRIBUTES if a != "topk"))
    assert "now also sets ['self.topk']" in contract.check_requirement(mutated)


def test_plugin_refuses_loudly_on_a_contract_mismatch():
    """In a fresh process: a mismatch registers nothing, logs the reason, and SGLang then rejects
    the name with its own error instead of running something else."""
    code = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
from specplug.engines.sglang import contract
contract.REQUIREMENTS = contract.REQUIREMENTS + (contract.Requirement("sglang.srt.speculative.ngram_worker:NGRAMWorker.gone"),)
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
try:
    SpeculativeAlgorithm.from_string("SPECPLUG_SUFFIX")
except ValueError as e:
    print("REFUSED", e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SGLANG_PLUGINS": "specplug"})
    text = out.stdout + out.stderr
    assert "SGLang algorithms not registered" in text and "NGRAMWorker.gone: not defined" in text, text
    assert "REFUSED Unknown speculative algorithm name: SPECPLUG_SUFFIX" in text, text


# ---------------------------------------------------------------------- SGLang's own tree kernel
@pytest.fixture(scope="module")
def sglang_reconstruct():
    """SGLang's Triton `reconstruct_indices_from_tree_mask` (its XPU/CUDA path), run in Triton's CPU
    interpreter. Its module imports the compiled CPU op at top level on non-GPU platforms; that op
    is not used here, so the import gets a placeholder for it."""
    stub_names = [n for n in ("sgl_kernel", "sgl_kernel.speculative") if n not in sys.modules]
    for n in stub_names:
        sys.modules[n] = types.ModuleType(n)
    sys.modules["sgl_kernel.speculative"].reconstruct_indices_from_tree_mask = None
    try:
        from sglang.kernels.ops.speculative import reconstruct_tree
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"sglang's reconstruct_tree module does not import here: {e}")
    finally:
        for n in stub_names:
            sys.modules.pop(n, None)
    return reconstruct_tree.reconstruct_indices_from_tree_mask_triton


@settings(max_examples=25, deadline=None)
@given(batch=st.lists(trees(max_nodes=9, vocab=4), min_size=1, max_size=3), extra=st.integers(1, 3),
       seed=st.integers(0, 1000))
def test_layout_through_sglangs_own_reconstruct_kernel(sglang_reconstruct, batch, extra, seed):
    import torch

    width = max(t.num_nodes for t in batch) + extra
    rng = np.random.default_rng(seed)
    roots = rng.integers(1, 50, size=len(batch))
    seq_lens = torch.tensor(rng.integers(0, 100, size=len(batch)), dtype=torch.int64)
    tokens, mask = layout_batch(roots, batch, width)
    bs = len(batch)
    positions = torch.empty(bs * width, dtype=torch.int64)
    r_index, r_next, r_sib = (torch.empty((bs, width), dtype=torch.int64) for _ in range(3))
    sglang_reconstruct(torch.from_numpy(mask).to(torch.bool), seq_lens, positions, r_index, r_next, r_sib, bs, width)
    for b, tree in enumerate(batch):
        pos, _, nxt, sib = reconstruct_links(mask.reshape(bs, width, width)[b], int(seq_lens[b]), width)
        assert positions[b * width : (b + 1) * width].tolist() == pos.tolist()
        assert r_next[b].tolist() == nxt.tolist() and r_sib[b].tolist() == sib.tolist()
        assert r_index[b].tolist() == list(range(b * width, (b + 1) * width))
        # and positions are specplug's tree depths
        assert positions[b * width + 1 : b * width + 1 + tree.num_nodes].tolist() == \
            (int(seq_lens[b]) + tree.depths()).tolist()


# ---------------------------------------------------------------------- SGLang's own NGRAM corpus
@pytest.fixture(scope="module")
def ngram_corpus_cls():
    """SGLang's NgramCorpus: the C++ trie its NGRAM worker drafts from (host-only C++, JIT-built
    with tvm-ffi in ~20 s; it warns that it cannot detect a CUDA architecture)."""
    try:
        from sglang.srt.speculative.cpp_ngram.ngram_corpus import NgramCorpus

        NgramCorpus(max_trie_depth=4, draft_token_num=4)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"SGLang's NgramCorpus does not build here: {type(e).__name__}: {e}")
    return NgramCorpus


def _strip_trailing_padding(tokens, parent, mask, width):
    """Trailing nodes that are token 0 under node 0 with no children (SGLang's padding)."""
    n = width
    while n > 1 and tokens[n - 1] == 0 and parent[n - 1] == 0 and not mask[n:, n - 1].any():
        n -= 1
    return n


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.integers(2, 12), vocab=st.integers(2, 6))
def test_specplug_layout_is_byte_identical_to_what_sglangs_ngram_corpus_emits(ngram_corpus_cls, seed, width, vocab):
    """SGLang's own drafter and specplug's layout agree on the format NGRAMWorker consumes: take the
    tree SGLang's NgramCorpus drafts for a context, lay it out with specplug's layout_request, and
    get SGLang's tokens and mask back exactly (dtypes, node order, padding)."""
    from specplug.engines.sglang.layout import layout_request
    from specplug.tree import DraftTree

    rng = np.random.default_rng(seed)
    corpus = ngram_corpus_cls(max_trie_depth=8, min_bfs_breadth=1, max_bfs_breadth=4, draft_token_num=width)
    seqs = [rng.integers(1, vocab + 1, size=int(rng.integers(5, 60))).tolist() for _ in range(3)]
    corpus.batch_put(seqs)
    corpus.synchronize()
    contexts = [s[-8:] for s in seqs]
    tokens, mask = corpus.batch_get([f"r{i}" for i in range(3)], contexts, [len(s) for s in seqs])
    assert tokens.shape == (3 * width,) and mask.shape == (3 * width * width,)
    tokens, mask = tokens.reshape(3, width), mask.reshape(3, width, width)
    for b in range(3):
        assert tokens[b, 0] == contexts[b][-1]  # node 0 is the last token
        _, parent, _, _ = reconstruct_links(mask[b], 0, width)
        n = _strip_trailing_padding(tokens[b], parent, mask[b], width)
        tree = DraftTree(tokens[b, 1:n], parent[1:n] - 1)
        ours_t, ours_m = layout_request(int(tokens[b, 0]), tree, width)
        assert ours_t.dtype == tokens.dtype and ours_m.dtype == mask.dtype
        assert ours_t.tolist() == tokens[b].tolist()
        assert ours_m.tolist() == mask[b].tolist()
