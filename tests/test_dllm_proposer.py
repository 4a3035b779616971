"""dLLM block drafting: the drafter's incremental prefix cache (extend, crop) equals encoding the
prefix afresh, and every step's draft equals ``fill_block`` on a freshly encoded prefix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specplug.config import SpecplugConfig
from specplug.proposers import Budget, ReqState
from specplug.proposers.drafters import DrafterError, TargetInfo
from specplug.zoo import diffusion


def test_extending_the_prefix_cache_equals_encoding_it_afresh():
    torch.manual_seed(0)
    model = diffusion.BlockDiffusionDrafter(diffusion.DiffusionConfig(vocab_size=64, hidden_size=32, num_heads=2,
                                                                      intermediate_size=48, num_layers=2)).eval()
    x = torch.randint(4, 64, (1, 19))
    with torch.no_grad():
        whole = model.encode_prefix(x)
        grown = model.extend_prefix(model.extend_prefix(model.encode_prefix(x[:, :5]), x[:, 5:6]), x[:, 6:])
    for (k, v), (k2, v2) in zip(whole, grown):
        torch.testing.assert_close(k, k2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v, v2, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def proposer():
    return SpecplugConfig(method="dllm", num_speculative_tokens=8,
                          dllm={"draft_model": "zoo-dllm", "max_steps": 3, "threshold": 0.5}).build_proposer()


def test_each_draft_equals_fill_block_on_a_fresh_prefix(proposer):
    from transformers import AutoTokenizer

    from specplug.zoo import zoo_model
    from specplug.zoo.samples import held_out_prompts

    p = held_out_prompts(AutoTokenizer.from_pretrained(zoo_model("target")), 1, 48)[0]
    steps = [p[:30], p[:34], p[:32] + [9, 10], p[:40], p[:12], [5, 6]]  # grow, diverge, shrink, restart
    for ids, k in zip(steps, (8, 4, 8, 3, 8, 2)):
        tree = proposer.propose([ReqState("r", np.asarray(ids), 10)], [Budget(k, tree=False)])[0]
        with torch.no_grad():
            want, conf, _ = diffusion.fill_block(proposer.model, proposer.model.encode_prefix(torch.tensor([ids])),
                                                 k, 3, 0.5)
        assert tree.chain_tokens() == want.tolist()
        np.testing.assert_allclose(tree.scores, conf.numpy(), rtol=1e-4, atol=1e-5)
        assert proposer._caches["r"][0][0][0].shape[2] == len(ids)  # the cache holds exactly the context
    proposer.stop("r")
    assert "r" not in proposer._caches


def test_the_block_size_caps_the_draft(proposer):
    tree = proposer.propose([ReqState("b", np.asarray([5, 6, 7]), 3)], [Budget(32, tree=True)])[0]
    assert tree.num_nodes == proposer.block == 8
    assert (tree.parents == np.arange(-1, 7)).all()  # a chain even where trees are verified
    assert diffusion.MASK_ID not in tree.tokens.tolist()


def test_a_decoder_folder_is_not_a_diffusion_drafter_and_tokenizers_must_match(proposer):
    from specplug.models.tiny import build_tiny_llama
    from specplug.zoo import zoo_model

    with pytest.raises(DrafterError, match=r"dllm\.draft_model: .*draft has no drafter_config.json"):
        SpecplugConfig(method="dllm", dllm={"draft_model": "zoo-draft"}).build_proposer()
    proposer.bind_target(TargetInfo(str(zoo_model("target")), 4096))
    with pytest.raises(DrafterError, match=r"dllm\.draft_model: the drafter .*dllm and the target .* have different"):
        proposer.bind_target(TargetInfo(str(build_tiny_llama()), 4096))
