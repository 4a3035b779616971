"""The block-diffusion drafter (specplug/zoo/diffusion.py): its attention structure against the
definition, training layout == inference layout, prefix-cache cropping, the denoising loop
against a slow oracle, noise, learning, and export."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from specplug.zoo import diffusion, recipes, shipped, train  # noqa: E402
from specplug.zoo.tokenizer import MASK_ID  # noqa: E402

CFG = diffusion.DiffusionConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                block_size=4)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return diffusion.BlockDiffusionDrafter(CFG).eval()


def test_training_mask_is_the_definition():
    L, B = 12, 4
    m = diffusion.training_mask(L, B)
    for i in range(2 * L):
        for j in range(2 * L):
            qi, kj = i % L, j % L
            if i < L and j < L:  # noised -> noised: same block only
                want = qi // B == kj // B
            elif i < L:  # noised -> clean: strictly earlier blocks
                want = kj < (qi // B) * B
            elif j < L:  # clean never sees noise
                want = False
            else:  # clean -> clean: causal
                want = kj <= qi
            assert bool(m[i, j]) == want, (i, j)


def test_training_logits_of_each_block_equal_the_inference_path(model):
    torch.manual_seed(1)
    L, B = 16, CFG.block_size
    clean = torch.randint(4, CFG.vocab_size, (2, L))
    noised, _ = diffusion.noise_blocks(clean, B, torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model.training_logits(noised, clean)
        for b in range(L // B):
            cache = model.encode_prefix(clean[:, : b * B])
            got = model.block_logits(cache, noised[:, b * B: (b + 1) * B])
            torch.testing.assert_close(got, full[:, b * B: (b + 1) * B], rtol=1e-4, atol=1e-5)


def test_a_cropped_cache_equals_the_shorter_prefix_encoded_afresh(model):
    x = torch.randint(4, CFG.vocab_size, (1, 11))
    with torch.no_grad():
        long, short = model.encode_prefix(x), model.encode_prefix(x[:, :7])
    for (k, v), (k2, v2) in zip(diffusion.crop(long, 7), short):
        torch.testing.assert_close(k, k2, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v, v2, rtol=1e-5, atol=1e-6)


def _oracle_fill(model, prefix, k, max_steps, threshold):
    """The denoising rule, recomputing everything from scratch each step with a mask built here."""
    P = prefix.shape[1]
    block = [MASK_ID] * k
    conf = [0.0] * k
    steps = 0
    while MASK_ID in block:
        steps += 1
        ids = torch.cat([prefix, torch.tensor([block])], dim=1)
        n = P + k
        mask = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n):
            for j in range(n):
                mask[i, j] = j <= i if i < P else True
        with torch.no_grad():
            logits = model._run(ids, torch.arange(n), mask)[0][0, P:]
        logits[:, MASK_ID] = float("-inf")
        probs = logits.softmax(-1)
        opened = [i for i in range(k) if block[i] == MASK_ID]
        take = [i for i in opened if probs[i].max() >= threshold] if steps < max_steps else opened
        if not take:
            take = [max(opened, key=lambda i: probs[i].max())]
        for i in take:
            block[i], conf[i] = int(probs[i].argmax()), float(probs[i].max())
    return block, conf, steps


@pytest.mark.parametrize("k, max_steps, threshold", [(4, 4, 0.9), (6, 2, 0.9), (5, 8, 0.0), (8, 8, 0.05), (3, 1, 1.1)])
def test_fill_block_equals_the_slow_oracle(model, k, max_steps, threshold):
    prefix = torch.randint(4, CFG.vocab_size, (1, 9))
    with torch.no_grad():
        tokens, conf, steps = diffusion.fill_block(model, model.encode_prefix(prefix), k, max_steps, threshold)
    want_tokens, want_conf, want_steps = _oracle_fill(model, prefix, k, max_steps, threshold)
    assert tokens.tolist() == want_tokens and steps == want_steps
    np.testing.assert_allclose(conf.numpy(), want_conf, rtol=1e-4)
    assert MASK_ID not in tokens.tolist() and 1 <= steps <= min(k, max_steps)
    if threshold == 0.0:
        assert steps == 1


def test_noise_masks_between_one_and_all_of_every_block():
    clean = torch.randint(4, 60, (64, 32))
    noised, masked = diffusion.noise_blocks(clean, 8, torch.Generator().manual_seed(0))
    per_block = masked.view(64, 4, 8).sum(-1)
    assert per_block.min() >= 1 and per_block.max() == 8
    assert len(set(per_block.flatten().tolist())) == 8  # every count 1..8 occurs
    assert bool((noised[masked] == MASK_ID).all()) and bool((noised[~masked] == clean[~masked]).all())


def test_training_learns_to_fill_blocks(tmp_path):
    torch.set_num_threads(1)
    r = recipes.scaled(recipes.DLLM, steps=200, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                       block_size=4, seq_len=32, batch_size=8, eval_windows=8, lr=3e-3)
    phrase = np.random.default_rng(0).integers(4, 200, size=29)
    stream = np.tile(phrase, 200).astype(np.int32)
    torch.manual_seed(r.seed)
    m = diffusion.BlockDiffusionDrafter(r.diffusion_config())
    before = train.held_out_loss(m, stream, r, diffusion.diffusion_loss)
    m, _ = train.train_model(m, diffusion.diffusion_loss, r, stream, tmp_path / "d.ckpt", progress=False)
    after = train.held_out_loss(m, stream, r, diffusion.diffusion_loss)
    assert after < 0.25 * before
    with torch.no_grad():  # and it drafts the continuation of the repeated phrase
        prefix = torch.from_numpy(stream[:40].astype(np.int64))[None]
        tokens, _, _ = diffusion.fill_block(m.eval(), m.encode_prefix(prefix), 4, 4, 0.9)
    assert tokens.tolist() == stream[40:44].tolist()


def test_export_and_load_widen_fp16_weights_exactly(model, tmp_path):
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_text("{}")
    manifest = shipped.export_drafter(model, tok_dir, tmp_path / "d", {"x": 1})
    assert shipped.check_folder(tmp_path / "d")["files"] == manifest["files"]
    loaded = shipped.load_drafter(tmp_path / "d")
    assert loaded.config == model.config
    for (n, p), (_, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(p.half().float(), q), n
