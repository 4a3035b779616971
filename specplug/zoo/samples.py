"""Greedy samples from the shipped models on held-out files, so users can see they are real."""

from __future__ import annotations


def held_out_prompts(tok, num: int, prompt_tokens: int) -> list[list[int]]:
    """The first ``prompt_tokens`` tokens of the first ``num`` held-out files long enough."""
    from specplug.zoo import corpus

    out = []
    for f in corpus.split(corpus.corpus_files())[1]:
        ids = tok(f.text)["input_ids"][:prompt_tokens]
        if len(ids) == prompt_tokens:
            out.append(ids)
        if len(out) == num:
            break
    return out


def decoder_samples(name: str, num: int = 3, prompt_tokens: int = 48, max_tokens: int = 64) -> list[tuple[str, str]]:
    """(prompt text, greedy continuation text) pairs from a shipped decoder (transformers)."""
    import torch
    from transformers import AutoTokenizer

    from specplug.zoo.shipped import load_for_eval, zoo_model

    folder = zoo_model(name)
    tok = AutoTokenizer.from_pretrained(folder)
    model = load_for_eval(folder)
    pairs = []
    for p in held_out_prompts(tok, num, prompt_tokens):
        with torch.no_grad():
            out = model.generate(torch.tensor([p]), max_new_tokens=max_tokens, do_sample=False,
                                 eos_token_id=1, pad_token_id=2)
        pairs.append((tok.decode(p), tok.decode(out[0, len(p):])))
    return pairs


def drafter_samples(num: int = 3, prompt_tokens: int = 48, max_steps: int = 4,
                    threshold: float = 0.9) -> list[tuple[str, str, str, int]]:
    """(prompt, drafted block, true next block, denoising steps) from the shipped dllm drafter."""
    import torch
    from transformers import AutoTokenizer

    from specplug.zoo import corpus, diffusion
    from specplug.zoo.shipped import load_drafter, zoo_model

    folder = zoo_model("dllm")
    tok = AutoTokenizer.from_pretrained(folder)
    model = load_drafter(folder)
    k = model.config.block_size
    out = []
    for f in corpus.split(corpus.corpus_files())[1]:
        ids = tok(f.text)["input_ids"]
        if len(ids) < prompt_tokens + k:
            continue
        cache = model.encode_prefix(torch.tensor([ids[:prompt_tokens]]))
        block, _, steps = diffusion.fill_block(model, cache, k, max_steps, threshold)
        out.append((tok.decode(ids[:prompt_tokens]), tok.decode(block.tolist()),
                    tok.decode(ids[prompt_tokens: prompt_tokens + k]), steps))
        if len(out) == num:
            break
    return out
