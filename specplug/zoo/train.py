"""Training a decoder from scratch: AdamW, warmup then cosine decay, random windows of the
train stream, checkpoints to resume from, held-out loss at the end.

Deterministic for a fixed seed, torch version and thread count: the batches come from a seeded
generator that is checkpointed with the weights, so a resumed run draws the same batches as an
uninterrupted one.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from specplug.zoo.recipes import DecoderRecipe


def lr_at(step: int, recipe: DecoderRecipe) -> float:
    """Linear warmup, then cosine from lr down to lr/10 at the last step."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(t, 1.0))))


def new_decoder(recipe: DecoderRecipe):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(recipe.seed)
    cfg = LlamaConfig(**recipe.llama_config())
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).float()


def _optimizer(model, recipe: DecoderRecipe):
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.95))


def _batch(stream, recipe: DecoderRecipe, gen):
    import torch

    starts = torch.randint(0, len(stream) - recipe.seq_len - 1, (recipe.batch_size,), generator=gen).numpy()
    idx = starts[:, None] + np.arange(recipe.seq_len + 1)[None, :]
    return torch.from_numpy(stream[idx].astype(np.int64))


def causal_lm_loss(model, tokens):
    import torch.nn.functional as F

    logits = model(input_ids=tokens[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))


def held_out_loss(model, stream, recipe, loss_fn=None) -> float:
    """Mean loss (nats) over the first ``eval_windows`` non-overlapping windows of the held-out
    stream; ``loss_fn(model, batch, generator)`` defaults to next-token loss. The generator is
    freshly seeded, so losses that draw noise score every model on the same noise."""
    import torch

    n = min(recipe.eval_windows, (len(stream) - 1) // recipe.seq_len)
    if n == 0:
        raise ValueError("held-out stream shorter than one window")
    windows = torch.from_numpy(np.stack([stream[i * recipe.seq_len: (i + 1) * recipe.seq_len + 1]
                                         for i in range(n)]).astype(np.int64))
    gen = torch.Generator().manual_seed(1234)
    loss_fn = loss_fn or (lambda m, batch, g: causal_lm_loss(m, batch))
    model.eval()
    total = 0.0
    with torch.no_grad():
        for chunk in windows.split(16):
            total += float(loss_fn(model, chunk, gen)) * len(chunk)
    model.train()
    return total / n


def train_decoder(recipe: DecoderRecipe, train_stream, checkpoint: Path, progress: bool = True,
                  checkpoint_every: int = 100):
    """Train (or resume from ``checkpoint``) and return (model, training seconds over all calls)."""
    return train_model(new_decoder(recipe), lambda m, batch, gen: causal_lm_loss(m, batch), recipe,
                       train_stream, checkpoint, progress, checkpoint_every)


def train_model(model, loss_fn, recipe, train_stream, checkpoint: Path, progress: bool = True,
                checkpoint_every: int = 100):
    """The loop every zoo model shares. ``loss_fn(model, batch, generator)``: the generator is
    the one batches come from (checkpointed), for losses that draw noise."""
    import torch
    from tqdm import tqdm

    opt = _optimizer(model, recipe)
    gen = torch.Generator().manual_seed(recipe.seed)
    start, spent = 0, 0.0
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        if state["recipe"] == recipe.as_dict():
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            start, spent = state["step"], state["seconds"]
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(start, recipe.steps), desc=f"train {recipe.name}", disable=not progress,
               initial=start, total=recipe.steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, recipe)
        loss = loss_fn(model, _batch(train_stream, recipe, gen), gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if done % checkpoint_every == 0 or done == recipe.steps:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"recipe": recipe.as_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "generator": gen.get_state(), "step": done,
                        "seconds": spent + time.perf_counter() - t0}, tmp)
            tmp.replace(checkpoint)
    return model, spent + time.perf_counter() - t0
