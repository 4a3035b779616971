"""Tree verification inside one stock vLLM step: the per-step state and the torch pieces.

vLLM schedules a request's speculative tokens as a chain: n tokens after the last committed one,
at consecutive positions, attending causally, verified left to right. specplug hands vLLM a tree
flattened in topological order (parents before children) as those n tokens and fixes up exactly
three things around the stock step (the patches in patches.py call into this module):

1. positions (after ``GPUModelRunner._prepare_inputs``): node i sits at ``prefix + depth(i)``,
   not ``prefix + 1 + i``. KV slots stay the consecutive ones vLLM reserved (slot mapping is
   computed before the positions are rewritten), so siblings never share a slot.
2. attention (around the attention backend's ``forward``): rows of a tree request are recomputed
   with the tree mask: the whole prefix, the root query, and the node's own ancestors and itself.
3. acceptance (after ``GPUModelRunner._sample``): for a tree request the sampled row is replaced
   by the tree verifier's result (accepted path + bonus, in vLLM's [-1]-padded row format), and
   the accepted nodes' KV is moved into the slots of positions ``prefix + 1 .. prefix + k``
   (kernels/kv_compact.py). vLLM then sees "k drafts accepted" and its cache holds exactly the
   committed sequence, as after a chain step; the rejected nodes' slots lie beyond the committed
   length and are overwritten next step (never hashed into the prefix cache).

Greedy requests (exact argmax matching) and plain-temperature sampling requests (sample-and-match,
exact for the deterministic drafts of model-free proposers) get trees; requests that ask for
logprobs or use penalties, top-k/top-p and the like are drafted as chains and go through vLLM's
own rejection sampler unchanged (tree_mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from specplug.tree import DraftTree
from specplug.verify import greedy_verify, recursive_rejection, sample_and_match, target_probs


@dataclass
class TreeRow:
    """One tree request in this step's batch."""

    row: int  # index in the runner's input batch
    req_id: str
    q_start: int  # index of the request's first query token (the root) in the flat batch
    prefix: int  # tokens in the cache before the root (= the root's position)
    tree: DraftTree  # the n scheduled nodes, topological order
    mode: str = "greedy"  # or "sample" (tree_mode)
    mask: torch.Tensor | None = None  # window_mask(tree), built once per step, read by every layer
    # (block row, seq_len, flat KV index, allowed keys): built at the first layer, read by the rest
    # (every layer of one KV cache group has the same block table and layout)
    layer_cache: tuple | None = None
    # Window rows before this one (the root and the tree's leading chain) attend to exactly what
    # the causal mask lets them see, so the backend's own output stands for them (the vLLM adapter
    # lays each tree's lead path first, DraftTree.lead_path_first). Derived from the tree.
    first_masked_row: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.mask is None:
            self.mask = window_mask(self.tree)
        self.first_masked_row = 1 + self.tree.leading_chain()


@dataclass
class StepContext:
    rows: list[TreeRow] = field(default_factory=list)
    slots: dict[int, torch.Tensor] = field(default_factory=dict)  # row -> int64[n + 1] window slots
    attention_layers: int = 0  # layers whose attention applied the tree mask this step
    layout: "CacheLayout | None" = None  # the KV cache layout those layers use


CURRENT = StepContext()  # one model runner per worker process; reset by every _prepare_inputs
LAYOUTS: dict = {}  # (kv heads, block size, head dim, dtype, backend isa) -> CacheLayout
STATS = {"trees": 0, "nodes": 0, "accepted": 0, "sampled": 0, "stochastic": 0}  # worker-wide, logged now and then


def record(num_nodes: int, num_accepted: int, logger, sampled: bool = False, stochastic: bool = False,
           every: int = 256) -> None:
    first = (STATS["trees"] == 0 or (sampled and STATS["sampled"] == 0)
             or (stochastic and STATS["stochastic"] == 0))
    STATS["trees"] += 1
    STATS["sampled"] += int(sampled)
    STATS["stochastic"] += int(stochastic)
    STATS["nodes"] += num_nodes
    STATS["accepted"] += num_accepted
    if first or STATS["trees"] % every == 0:
        t = STATS["trees"]
        logger.info("specplug: tree verification: %d trees verified in this worker (%d of sampling "
                    "requests, %d of them drawn by sampling and verified by recursive rejection), "
                    "%.1f nodes and %.2f accepted per tree", t, STATS["sampled"], STATS["stochastic"],
                    STATS["nodes"] / t, STATS["accepted"] / t)


def is_chain(parents: np.ndarray) -> bool:
    return bool(np.array_equal(parents, np.arange(parents.size) - 1))


def tree_mode(req_id, input_batch, requests) -> str | None:
    """"greedy" or "sample" for requests whose tree this version verifies, else None (chain).

    Only requests whose target distribution at a node depends on the logits there alone: no
    penalties, bias, bad words, allowed tokens, min_tokens, structured output or custom logits
    processors, no logprobs to report, and for sampling plain temperature (no top-k/top-p/min-p,
    whose filtering vLLM's sampler would apply in its own way)."""
    state = (requests or {}).get(req_id)
    sp = getattr(state, "sampling_params", None)
    if sp is None:
        return None
    plain = (sp.logprobs is None and not sp.presence_penalty and not sp.frequency_penalty
             and sp.repetition_penalty == 1.0 and not sp.logit_bias and not getattr(sp, "bad_words", None)
             and not sp.allowed_token_ids and not sp.min_tokens and not getattr(sp, "logits_processors", None)
             and getattr(sp, "structured_outputs", None) is None and not getattr(sp, "thinking_token_budget", None)
             and not getattr(sp, "trace_decode_token_ids", None))
    if not plain:
        return None
    if req_id in getattr(input_batch, "greedy_reqs", ()):
        return "greedy"
    if sp.top_k in (0, -1) and sp.top_p == 1.0 and sp.min_p == 0.0 and sp.temperature > 0:
        return "sample"
    return None


def window_mask(tree: DraftTree) -> torch.Tensor:
    """bool[n + 1, n + 1] over the verify window [root, node 0, ..., node n-1]."""
    n = tree.num_nodes
    m = np.zeros((n + 1, n + 1), dtype=bool)
    m[:, 0] = True
    m[1:, 1:] = tree.ancestor_mask()
    return torch.from_numpy(m)


@dataclass
class CacheLayout:
    """Where a backend's cache-write kernel puts element (slot offset s, dim d) of a block.

    A paged cache block of one KV head holds block_size x D values, but a CPU backend may lay them
    out in an ISA-specific order (tiles, transposes). ``perm[s * D + d]`` is the flat index of
    (s, d) inside the block's [block_size * D] region, learned once by writing known values with
    the backend's own cache-write kernel (``probe``), so reading and moving KV never assumes a
    layout the kernel does not use.
    """

    perm_k: torch.Tensor  # int64[block_size * D]
    perm_v: torch.Tensor
    block_size: int
    head_dim: int

    @classmethod
    def probe(cls, write, num_kv_heads: int, block_size: int, head_dim: int, dtype, split_kv) -> "CacheLayout":
        """write(key, value, kv_cache, slot_mapping): the backend's cache update."""
        D, bs = head_dim, block_size
        perms = []
        for values in (lambda s, d: s, lambda s, d: d):  # small integers: exact in any float dtype
            grid = torch.tensor([[values(s_, d_) for d_ in range(D)] for s_ in range(bs)], dtype=torch.float32)
            kv = torch.full((1, num_kv_heads, bs, 2 * D), -1.0, dtype=dtype)
            x = grid[:, None, :].expand(bs, num_kv_heads, D).to(dtype).contiguous()
            write(x, x, kv, torch.arange(bs, dtype=torch.int64))
            perms.append([part.view(1, num_kv_heads, bs * D)[0, 0].float() for part in split_kv(kv)])
        out = []
        for which in range(2):  # keys, values
            slot_of, dim_of = perms[0][which].long(), perms[1][which].long()
            flat = slot_of * D + dim_of
            perm = torch.full((bs * D,), -1, dtype=torch.int64)
            perm[flat] = torch.arange(bs * D)
            if (perm < 0).any() or not torch.equal(torch.sort(flat).values, torch.arange(bs * D)):
                raise RuntimeError("specplug tree verification: the attention backend's KV cache layout is not "
                                   "a per-block permutation of (slot, dim); cannot read or move its KV")
            out.append(perm)
        layout = cls(out[0], out[1], bs, D)
        layout._self_check(write, num_kv_heads, dtype, split_kv)
        return layout

    def _self_check(self, write, num_kv_heads, dtype, split_kv) -> None:
        g = torch.Generator().manual_seed(0)
        k = torch.randn(2 * self.block_size, num_kv_heads, self.head_dim, generator=g).to(dtype)
        v = torch.randn(2 * self.block_size, num_kv_heads, self.head_dim, generator=g).to(dtype)
        kv = torch.zeros(3, num_kv_heads, self.block_size, 2 * self.head_dim, dtype=dtype)
        slots = torch.arange(2 * self.block_size, dtype=torch.int64) + self.block_size  # blocks 1, 2
        write(k, v, kv, slots)
        kc, vc = split_kv(kv)
        blocks = torch.tensor([1, 2])
        if not (torch.equal(self.gather(kc, blocks, 2 * self.block_size, keys=True), k)
                and torch.equal(self.gather(vc, blocks, 2 * self.block_size, keys=False), v)):
            raise RuntimeError("specplug tree verification: reading the backend's KV cache back did not return "
                               "what its cache-write kernel stored; refusing to verify trees")

    def gather(self, cache: torch.Tensor, block_row: torch.Tensor, seq_len: int, keys: bool,
               start: int = 0) -> torch.Tensor:
        """[seq_len - start, H, D]: positions start..seq_len-1 from one half of the cache
        ([num_blocks, H, block_size, D] view), one indexing op that touches only those slots."""
        nb, h = cache.shape[0], cache.shape[1]
        bs, D = self.block_size, self.head_dim
        pos = torch.arange(start, seq_len)
        blocks = block_row.long()[pos // bs]  # [n]
        within = (self.perm_k if keys else self.perm_v).view(bs, D)[pos % bs]  # [n, D] flat offsets
        return cache.view(nb, h, bs * D)[blocks[:, None, None], torch.arange(h)[None, :, None], within[:, None, :]]

    def kv_index(self, block_row: torch.Tensor, start: int, end: int, num_heads: int) -> torch.Tensor:
        """Flat indices [2, n, H, D] (keys, values) of positions start..end-1 into a whole layer
        cache [num_blocks, H, block_size, 2D] flattened: per (block, head) block_size*D keys then
        as many values (the packing ``split_kv`` views). One index serves every layer of the same
        shape, where ``gather`` is called per layer and half."""
        bs, D, H = self.block_size, self.head_dim, num_heads
        pos = torch.arange(start, end)
        base = (block_row.long()[pos // bs] * H)[:, None] + torch.arange(H)[None, :]  # [n, H]: (block, head)
        within = torch.stack([self.perm_k.view(bs, D)[pos % bs], self.perm_v.view(bs, D)[pos % bs] + bs * D])
        return base[None, :, :, None] * (2 * bs * D) + within[:, :, None, :]

    def move(self, cache: torch.Tensor, src: int, dst: int, keys: bool) -> None:
        """Copy one slot's [H, D] from slot ``src`` to slot ``dst`` in place."""
        nb, h = cache.shape[0], cache.shape[1]
        bs, D = self.block_size, self.head_dim
        perm = (self.perm_k if keys else self.perm_v).view(bs, D)
        flat = cache.view(nb, h, bs * D)
        flat[dst // bs][:, perm[dst % bs]] = flat[src // bs][:, perm[src % bs]]


def tree_attention(query: torch.Tensor, kv_cache: torch.Tensor, row: TreeRow, block_row: torch.Tensor,
                   seq_len: int, scale: float, layout: CacheLayout) -> torch.Tensor:
    """Attention of the last r window rows of ``row``'s tree with the tree mask, read from one
    layer's paged cache.

    query: [r, Hq, D]; kv_cache: the layer's whole cache [num_blocks, Hkv, bs, 2D], laid out as
    ``layout`` says; block_row: the request's block table row; seq_len: prefix + window. Returns
    [r, Hq, D]: float32 softmax, output in the query's dtype. The flat key/value index and the
    row mask are built at the first layer of a step and reused by the others
    (``TreeRow.layer_cache``): one indexing op per layer."""
    rows = query.shape[0]
    cached = row.layer_cache
    if (cached is None or cached[1] != seq_len or cached[3].shape[0] != rows
            or not torch.equal(cached[0], block_row)):
        cached = row.layer_cache = (block_row.clone(), seq_len,
                                    layout.kv_index(block_row, 0, seq_len, kv_cache.shape[1]),
                                    allowed_keys(row.mask, rows, seq_len))
    kv = kv_cache.view(-1)[cached[2]]  # [2, seq_len, Hkv, D]
    return masked_attention(query, kv[0], kv[1], cached[3], scale)


def allowed_keys(mask: torch.Tensor, rows: int, seq_len: int) -> torch.Tensor:
    """bool [rows, seq_len]: which keys the last ``rows`` window rows see (the whole prefix, and
    their ancestors in the window ``mask``)."""
    w = mask.shape[0]
    allowed = torch.ones(rows, seq_len, dtype=torch.bool)
    allowed[:, seq_len - w:] = mask[w - rows:]
    return allowed


def masked_attention(query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """query [r, Hq, D] against keys/values [L, Hkv, D] where ``allowed`` [r, L]; float32 softmax,
    output in the query's dtype."""
    k, v = k.float(), v.float()
    rep = query.shape[1] // k.shape[1]
    if rep > 1:  # grouped-query attention: each KV head serves `rep` query heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = torch.einsum("qhd,khd->hqk", query.float(), k) * scale
    scores = scores.masked_fill(~allowed[None], float("-inf"))
    out = torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), v)
    return out.to(query.dtype)


def accept(tree: DraftTree, window_logits: torch.Tensor, mode: str, temperature: float = 1.0,
           generator: torch.Generator | None = None) -> tuple[list[int], list[int]]:
    """(accepted node ids, committed tokens = their tokens + the bonus/correction) from the
    logits of the window rows [root, node 0, ..., node n-1].

    greedy: the longest path of argmax tokens. sample (specplug/verify.py), with the request's own
    seeded generator (if any) supplying the uniforms: for deterministic drafts sample-and-match
    (at each node draw y ~ softmax(logits / T), descend if a child holds y, else emit y); for a
    stochastic tree, whose children were drawn from ``draft_probs`` without replacement in index
    order, recursive rejection.
    """
    if mode == "greedy":
        res = greedy_verify(tree, window_logits)
    else:
        probs = target_probs(window_logits, temperature=temperature)
        uniforms = torch.rand(tree.num_nodes + 1, 2, generator=generator, dtype=torch.float64)
        res = (sample_and_match if tree.deterministic else recursive_rejection)(tree, probs, uniforms)
    return res.accepted_nodes, res.tokens


def compact_kv(kv_caches: list[torch.Tensor], moves: list[tuple[int, int]], split_kv, layout: CacheLayout) -> None:
    """Move accepted nodes' KV to the chain slots in every layer: ``moves`` is the list of
    (src slot, dst slot) in increasing depth, which never reads a slot it already wrote
    (kernels/kv_compact.py explains why; that kernel does the same for plain GPU layouts)."""
    seen = set()
    for cache in kv_caches:
        if cache is None or cache.data_ptr() in seen:  # a cache shared by layers moves once
            continue
        seen.add(cache.data_ptr())
        for part, keys in zip(split_kv(cache), (True, False)):
            for src, dst in moves:
                if src != dst:
                    layout.move(part, src, dst, keys)
