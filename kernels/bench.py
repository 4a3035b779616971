"""Micro-benchmark: Triton tree-verification kernels vs the torch reference (per-request loop)
vs the vectorised torch version. Not a test.

    python -m specplug.kernels.bench --device cuda --batch 64 --nodes 64 --vocab 32000

On CPU the kernels run in Triton's interpreter, where timings mean nothing: with --device cpu the
script checks equality only and says so. On CUDA it prints median milliseconds (CUDA events,
warm-ups, fresh random data for every repeat, never zeros) and speed ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np
import torch


def _trees(batch, nodes, vocab, rng):
    from specplug.tree import DraftTree

    trees = []
    for _ in range(batch):
        parents, tokens, used = [], [], {}
        for i in range(nodes):
            p = int(rng.integers(-1, i)) if i else -1
            taken = used.setdefault(p, set())
            t = int(rng.integers(0, vocab))
            while t in taken:
                t = int(rng.integers(0, vocab))
            taken.add(t)
            parents.append(p)
            tokens.append(t)
        trees.append(DraftTree(tokens, parents))
    return trees


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--nodes", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.batch, args.nodes, args.vocab, args.repeats = min(args.batch, 4), min(args.nodes, 16), min(args.vocab, 512), 1
        print("device cpu: Triton interpreter; checking equality only (interpreter timings are meaningless); "
              f"shapes reduced to batch {args.batch}, nodes {args.nodes}, vocab {args.vocab}")
    from specplug.kernels import torch_batched, tree_greedy_verify, tree_sample_match_verify
    from specplug.kernels._launch import tree_tensors
    from specplug.verify import greedy_verify_batch, sample_and_match_batch

    rng = np.random.default_rng(0)
    dev = args.device
    timings = {k: [] for k in ("greedy/reference", "greedy/torch-batched", "greedy/triton",
                                "sample/reference", "sample/torch-batched", "sample/triton")}

    def timed(key, fn):
        if dev == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            out = fn()
            e.record()
            torch.cuda.synchronize()
            timings[key].append(s.elapsed_time(e))
        else:
            out = fn()
        return out

    for rep in range(args.repeats + (3 if dev == "cuda" else 0)):
        trees = _trees(args.batch, args.nodes, min(args.vocab, 1000), rng)
        tok, par, n = (t.to(dev) for t in tree_tensors(trees, args.nodes))
        logits = torch.randn(args.batch, args.nodes + 1, args.vocab, device=dev)
        probs = torch.softmax(logits, -1)
        uni = torch.rand(args.batch, args.nodes + 1, 2, device=dev, dtype=torch.float64)
        ref_g = timed("greedy/reference", lambda: greedy_verify_batch(trees, logits))
        tb_g = timed("greedy/torch-batched", lambda: torch_batched.greedy_verify(logits, tok, par, n))
        tr_g = timed("greedy/triton", lambda: tree_greedy_verify(logits, tok, par, n))
        ref_s = timed("sample/reference", lambda: sample_and_match_batch(trees, probs, uni))
        tb_s = timed("sample/torch-batched", lambda: torch_batched.sample_match_verify(probs, uni, tok, par, n))
        tr_s = timed("sample/triton", lambda: tree_sample_match_verify(probs, uni, tok, par, n))
        for a, b_ in ((ref_g, tr_g), (ref_g, tb_g), (ref_s, tr_s), (ref_s, tb_s)):
            assert torch.equal(a.tokens, b_.tokens.cpu()), "kernel output differs from the reference"
        if dev == "cuda" and rep < 3:
            for v in timings.values():
                v.clear()
    print(f"equal to the reference on {args.repeats} random batches "
          f"(batch {args.batch}, {args.nodes}-node trees, vocab {args.vocab})")
    if dev == "cuda":
        print(f"{'kernel':<24}{'median ms':>12}{'vs reference':>14}")
        for kind in ("greedy", "sample"):
            ref = statistics.median(timings[f"{kind}/reference"])
            for impl in ("reference", "torch-batched", "triton"):
                m = statistics.median(timings[f"{kind}/{impl}"])
                print(f"{kind + '/' + impl:<24}{m:>12.3f}{ref / m:>13.1f}x")


if __name__ == "__main__":
    main()
