"""The shared byte-level BPE tokenizer (``tokenizers``), trained on the corpus's train split.

Byte-level: any text round-trips, no unknown token. ``<mask>`` is for the block-diffusion
drafter; the decoders never see it. Special tokens take ids 0-3 so every model agrees on them.
"""

from __future__ import annotations

import os
from pathlib import Path

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<mask>"]
BOS_ID, EOS_ID, PAD_ID, MASK_ID = range(4)


def train_tokenizer(texts: list[str], vocab_size: int):
    """A ``tokenizers.Tokenizer`` trained on ``texts`` (deterministic for the same texts)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=True)
    tok.train_from_iterator(texts, trainer, length=len(texts))
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def save_for_transformers(tok, out_dir: Path) -> None:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json: what vLLM and
    transformers' AutoTokenizer read."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", mask_token="<mask>")
    fast.save_pretrained(out_dir)


def encode_files(tok, texts: list[str]):
    """One int32 token stream: each file's tokens followed by ``</s>`` (documents separated the
    way the models will see end of text)."""
    import numpy as np

    ids = [np.asarray(e.ids + [EOS_ID], dtype=np.int32) for e in tok.encode_batch(texts)]
    return np.concatenate(ids) if ids else np.zeros(0, np.int32)
