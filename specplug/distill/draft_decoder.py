"""A draft decoder for SmolLM2, distilled from the target's greedy answers (issue 11).

Architecture: SmolLM2's own Llama block shapes, 2 layers, tied embedding. The embedding (and so
the LM head, which is the same matrix) is the target's and stays frozen: it is 28 M of the
target's 135 M parameters and the drafter must speak in the target's token space anyway. Only
the two layers and the final norm are trained and shipped; `rebuild_folder` puts them back
beside the target's embedding and tokenizer.

Initialisation: the target's first two layers and its final norm, i.e. the target cut after
layer 2. Measured on held-out teacher answers before training (cross-entropy against the
target's greedy tokens): layers (0, 1) 15.8 nats, (0, 2) 15.0, (1, last) 18.8, (0, last) 69.2
(the last layer expects the large residual norms of layer 29's input). Fine-tuning teaches the
pair to stand in for the 28 layers they replace.

Training: cross-entropy on the target's greedy answer tokens (hard-label distillation: the
drafter learns the target's argmax, which is what greedy verification accepts), on the prompts
of specplug.distill.prompts, AdamW, warmup then cosine. Logits are computed only at answer
positions, since the 49152-row LM head is most of the cost on this CPU.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class DistillRecipe:
    name: str = "smollm2-draft"
    init_layers: tuple[int, ...] = (0, 1)  # target layers the draft layers start from
    epochs: int = 5
    lr: float = 1e-3
    warmup: int = 20
    batch_tokens: int = 2048  # padded tokens per batch
    weight_decay: float = 0.0
    held_out: int = 64  # last samples of the teacher data, scored and never trained on
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def load_target(target_dir: Path):
    import torch
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(target_dir, dtype=torch.float32)


def init_drafter(target, recipe: DistillRecipe):
    """A len(init_layers)-layer copy of the target's block shapes, started from its layers."""
    import copy

    import torch
    from transformers import LlamaForCausalLM

    cfg = copy.deepcopy(target.config)
    L = cfg.num_hidden_layers
    layers = [i % L for i in recipe.init_layers]
    cfg.num_hidden_layers = len(layers)
    cfg.layer_types = None if getattr(cfg, "layer_types", None) is None else cfg.layer_types[: len(layers)]
    torch.manual_seed(recipe.seed)
    draft = LlamaForCausalLM(cfg).float()
    draft.model.embed_tokens.weight.data.copy_(target.model.embed_tokens.weight.data)
    for i, src in enumerate(layers):
        draft.model.layers[i].load_state_dict(target.model.layers[src].state_dict())
    draft.model.norm.load_state_dict(target.model.norm.state_dict())
    draft.model.embed_tokens.weight.requires_grad_(False)
    return draft


def _samples(rows: list[dict]):
    """(input ids, labels) per teacher answer: the labels are the answer tokens, -100 on the prompt."""
    out = []
    for r in rows:
        ids = r["prompt"] + r["answer"]
        labels = [-100] * len(r["prompt"]) + r["answer"]
        out.append((ids[:-1], labels[1:]))
    return out


def length_batches(samples, batch_tokens: int, rng: random.Random):
    """Length-sorted batches of about batch_tokens padded tokens, in a shuffled order."""
    order = sorted(range(len(samples)), key=lambda i: len(samples[i][0]))
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * len(samples[i][0]) > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def _tensors(samples, idx):
    import torch

    n = max(len(samples[i][0]) for i in idx)
    ids = torch.zeros(len(idx), n, dtype=torch.long)
    labels = torch.full((len(idx), n), -100, dtype=torch.long)
    mask = torch.zeros(len(idx), n, dtype=torch.long)
    for row, i in enumerate(idx):
        x, y = samples[i]
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return ids, labels, mask


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warmup, then cosine from ``lr`` down to a tenth of it."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


def fit(model, plan, loss_of, *, lr: float, warmup: int, weight_decay: float, desc: str, progress: bool) -> float:
    """AdamW over ``plan`` (a list of batches) with ``lr_at``'s schedule and clipping at 1; returns seconds.

    ``loss_of(batch)`` gives the loss of one batch. Shared by every distilled drafter.
    """
    import torch
    from tqdm import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    t0 = time.perf_counter()
    bar = tqdm(plan, desc=desc, disable=not progress)
    for step, batch in enumerate(bar):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, len(plan), lr, warmup)
        loss = loss_of(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return time.perf_counter() - t0


def answer_logits(model, ids, labels, mask):
    """Logits at answer positions only, and their labels."""
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = labels != -100
    return model.lm_head(hidden[keep]), labels[keep]


def agreement(model, samples, batch_tokens: int = 4096) -> tuple[float, float]:
    """(top-1 agreement with the target's greedy tokens, mean CE) over the answers of ``samples``:
    the drafter's chance of proposing the target's next token given the true prefix."""
    import torch
    import torch.nn.functional as F

    hits = total = 0
    ce = 0.0
    model.eval()
    with torch.no_grad():
        for idx in length_batches(samples, batch_tokens, random.Random(0)):
            logits, y = answer_logits(model, *_tensors(samples, idx))
            hits += int((logits.argmax(-1) == y).sum())
            ce += float(F.cross_entropy(logits, y, reduction="sum"))
            total += len(y)
    model.train()
    return hits / max(1, total), ce / max(1, total)


def train(target_dir: Path, rows: list[dict], recipe: DistillRecipe, progress: bool = True):
    """Returns (drafter, report dict)."""
    import torch
    import torch.nn.functional as F

    target = load_target(target_dir)
    draft = init_drafter(target, recipe)
    del target
    samples = _samples(rows)
    train_s, held = samples[: -recipe.held_out], samples[-recipe.held_out:]
    before = agreement(draft, held)
    rng = random.Random(recipe.seed)
    plan = [b for _ in range(recipe.epochs) for b in length_batches(train_s, recipe.batch_tokens, rng)]

    def loss_of(idx):
        return F.cross_entropy(*answer_logits(draft, *_tensors(train_s, idx)))

    seconds = fit(draft, plan, loss_of, lr=recipe.lr, warmup=recipe.warmup, weight_decay=recipe.weight_decay,
                  desc=f"distill {recipe.name}", progress=progress)
    after = agreement(draft, held)
    report = {"recipe": recipe.as_dict(), "train_answers": len(train_s), "held_out_answers": len(held),
              "train_answer_tokens": sum(sum(1 for v in y if v != -100) for _, y in train_s),
              "training_seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
              "held_out_top1_agreement": {"init": round(before[0], 4), "trained": round(after[0], 4)},
              "held_out_ce": {"init": round(before[1], 4), "trained": round(after[1], 4)}}
    return draft, report


def trained_state(draft) -> dict:
    """What is shipped: the layers and the final norm (not the frozen embedding)."""
    return {k: v.detach().half().contiguous() for k, v in draft.state_dict().items()
            if not k.startswith("model.embed_tokens") and not k.startswith("lm_head")}


def save_shipped(draft, report: dict, out: Path) -> None:
    from safetensors.torch import save_file

    from specplug.models.smollm2 import sha256_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(trained_state(draft), out / "layers.safetensors")
    report = dict(report, num_hidden_layers=draft.config.num_hidden_layers,
                  files={"layers.safetensors": sha256_file(out / "layers.safetensors")})
    (out / "specplug_distill.json").write_text(json.dumps(report, indent=2) + "\n")
