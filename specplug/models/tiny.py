"""A tiny Llama built locally in seconds, for exactness tests (no hub, no downloads).

Tokenizer: byte-level BPE trained with `tokenizers` on this machine's Python standard library
sources (deterministic: sorted files, fixed vocab). Model: LlamaConfig with random fp32 weights
from a fixed seed; head_dim 32 because vLLM's CPU attention rejects some head sizes (24 fails).
Random weights make acceptance meaningless but exactness sharp: any verification bug shows up as
a different greedy token.
"""

from __future__ import annotations

import json
import os
import sysconfig
from pathlib import Path

from specplug.models.smollm2 import cache_root

TINY_SPEC = dict(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048)


def _corpus_files(limit: int = 200) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.stat().st_size < 200_000)
    return [str(p) for p in files[:limit]]


def build_tiny_llama(out_dir: str | Path | None = None, seed: int = 0, **overrides) -> Path:
    """Build (or reuse) the tiny model folder; returns its path."""
    spec = dict(TINY_SPEC, **overrides)
    out = Path(out_dir) if out_dir else cache_root() / "models" / f"tiny-llama-s{seed}-v{spec['vocab_size']}-l{spec['num_hidden_layers']}"
    marker = out / "specplug_tiny.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"seed": seed, **spec}:
        return out
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec["vocab_size"], special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train(_corpus_files(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(**spec, bos_token_id=0, eos_token_id=1, torch_dtype="float32")
    model = LlamaForCausalLM(cfg)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    model.save_pretrained(out)
    marker.write_text(json.dumps({"seed": seed, **spec}))
    return out
