"""A request's own context for SuffixDecoding, matched on demand instead of through a trie.

SuffixDecoding's local tree is the suffix trie of the request's prompt + output. Building it
costs O(max_depth) node creations per token (8.5 ms for a 300-token prompt in CPython), paid
inside the engine step for every request, drafting or not. The trie is not needed to draft:

- the trie node of the context's last p tokens is reached by every position j where those p
  tokens end, and its count is the number of such positions;
- its subtree is the trie of the continuations ``tokens[j+1:]`` of those positions, each cut at
  the depth bound (p + length <= max_depth) and at the end of the sequence.

So this keeps only the tokens and, per token value, where it occurs (O(1) per token), finds the
earlier end positions of each context suffix with numpy when a draft is asked for, and builds a
small :class:`ContinuationTrie` over their continuations. Counts, child order (first occurrence
first) and so every draft are those of the full trie (tests/test_suffix.py checks this).
"""

from __future__ import annotations

from collections import Counter

import numpy as np


class ContinuationTrie:
    """The subtree under one suffix match, with the attribute names of ``SuffixTrie`` (node 0 is
    the match) so the same drafting code reads both."""

    def __init__(self, root_count: int):
        self.children: list[dict[int, int] | None] = [None]
        self.count: list[int] = [root_count]
        self.token: list[int] = [-1]

    def kids(self, node: int) -> dict[int, int] | None:
        return self.children[node]

    def add(self, tokens, weight: int = 1) -> None:
        """One continuation, or ``weight`` identical ones."""
        children, count, token = self.children, self.count, self.token
        node = 0
        for t in tokens:
            kids = children[node]
            if kids is None:
                kids = children[node] = {}
            nxt = kids.get(t)
            if nxt is None:
                nxt = kids[t] = len(count)
                children.append(None)
                count.append(0)
                token.append(t)
            count[nxt] += weight
            node = nxt


class LocalContext:
    def __init__(self, max_depth: int, tokens=()):
        self.max_depth = max_depth
        # a prompt in bulk (what append() does per token; a new request's prompt is paid inside
        # the engine step that admits it)
        self.tokens: list[int] = [int(t) for t in tokens]
        self._buf = np.empty(max(64, 2 * len(self.tokens)), np.int64)
        self._where: dict[int, list[int]] = {}  # token -> positions, ascending
        self._buf[: len(self.tokens)] = self.tokens
        where = self._where
        for i, t in enumerate(self.tokens):
            positions = where.get(t)
            if positions is None:
                where[t] = [i]
            else:
                positions.append(i)

    def __len__(self) -> int:
        return len(self.tokens)

    def append(self, token: int) -> None:
        n = len(self.tokens)
        if n == len(self._buf):
            self._buf = np.concatenate([self._buf, np.empty(n, np.int64)])
        self._buf[n] = token
        self.tokens.append(token)
        where = self._where.get(token)
        if where is None:
            self._where[token] = [n]
        else:
            where.append(n)

    def matches(self) -> "Matches":
        """``out[p-1]``: the earlier end positions of the context's last p tokens, for p = 1, 2, ...
        while there are any (p < max_depth: the trie's deepest match still has a child).

        Every earlier occurrence of the last token gets its match length in one numpy pass (a
        window of up to max_depth - 1 tokens before it, compared with the context's tail), instead
        of filtering the occurrences once per length p: a looping context matches at every length,
        and that was two dozen rounds of numpy calls per request per step."""
        n = len(self.tokens)
        if n == 0:
            return Matches(np.zeros(0, np.int64), np.zeros(0, np.int64))
        occ = np.asarray(self._where[self.tokens[-1]][:-1], np.int64)
        longest = min(n, self.max_depth - 1)
        if occ.size == 0 or longest < 1:
            return Matches(np.zeros(0, np.int64), np.zeros(0, np.int64))
        k = np.arange(longest)
        back = occ[:, None] - k[None, :]  # position j - k of each occurrence's window
        same = (back >= 0) & (self._buf[np.maximum(back, 0)] == self._buf[n - 1 - k][None, :])
        return Matches(occ, np.cumprod(same, axis=1).sum(axis=1))

    def continuations(self, occ: np.ndarray, p: int, max_tokens: int) -> ContinuationTrie:
        """The trie under the match of the last p tokens (earlier end positions ``occ``), cut at
        ``max_tokens`` deep: a draft never goes deeper than its budget."""
        n, tokens = len(self.tokens), self.tokens
        trie = ContinuationTrie(int(occ.size) + 1)  # + the occurrence that ends the context
        depth = min(max_tokens, self.max_depth - p)
        # Identical continuations (a looping context repeats one) are added once, weighted; a
        # Counter keeps first-occurrence order, so the children's order, and every draft, is
        # that of adding them one by one.
        windows = Counter(tuple(tokens[j + 1 : min(j + 1 + depth, n)]) for j in occ.tolist())
        for window, weight in windows.items():
            trie.add(window, weight)
        return trie


class Matches:
    """The earlier end positions of the context's last p tokens, indexed ``[p - 1]`` for p = 1 ..
    ``len()`` (ascending positions), from each occurrence's match length; built on demand: a draft
    reads one or two lengths."""

    def __init__(self, positions: np.ndarray, lengths: np.ndarray):
        self._positions, self._lengths = positions, lengths
        self._len = int(lengths.max()) if lengths.size else 0
        # occurrences per match length p (index p - 1): a match of length L is one of every p <= L
        self._sizes = np.cumsum(np.bincount(lengths, minlength=self._len + 1)[::-1])[::-1][1:]

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self._len:
            raise IndexError(i)
        return self._positions[self._lengths > i]

    def size(self, p: int) -> int:
        return int(self._sizes[p - 1])

