"""Depth-bounded suffix trie over token sequences (the data structure of SuffixDecoding,
arXiv 2411.04975), with per-node occurrence counts.

Every suffix of every stored sequence, truncated to ``max_depth`` tokens, is a root path; a
node's count is how many stored (position, sequence) occurrences pass through it. Appending a
token costs O(max_depth): each sequence keeps its *active nodes*, the nodes where the suffixes
that started in its last ``max_depth`` positions currently end.

Tails: where a stored suffix leaves the trie (a new node), the rest of it is a chain that only
this one occurrence passes through. It is kept as a *tail* of that node, a slice of the stored
sequence, and made into nodes one at a time only when something walks below it (another suffix,
a match, a draft). Made in full, text never seen before cost ``max_depth`` nodes per token:
storing a 128-token response took ~0.9 ms inside the engine step and ~3,000 nodes (~0.5 MB), so
the default 10,000 cached responses of fresh text would have held ~5 GB. With tails it is about
one node per token. Every walk goes through ``kids``/``child``, which unfold a tail first, so
counts and children read the same as in the full trie.

Nodes live in flat Python lists (children dicts, counts, depths) indexed by int ids; removed
nodes go to a free list. ``approx_bytes`` is an estimate (documented constants), used to keep the
global cache under a byte cap.
"""

from __future__ import annotations

from collections import deque

# Estimated cost of one node: a dict slot in its parent plus list entries, and an empty children
# dict created lazily. Measured with sys.getsizeof on CPython 3.11 (dict ~64-232 B, list slots 8 B).
NODE_BYTES = 160
TAIL_BYTES = 120  # a dict slot plus a 3-tuple (the sequence itself is counted once, per token)


class SuffixTrie:
    def __init__(self, max_depth: int):
        if max_depth < 1:
            raise ValueError(f"max_depth: must be >= 1, got {max_depth}")
        self.max_depth = max_depth
        self.children: list[dict[int, int] | None] = [{}]
        self.count: list[int] = [0]
        self.depth: list[int] = [0]
        self.parent: list[int] = [-1]
        self.token: list[int] = [-1]
        self._free: list[int] = []
        self.tail: dict[int, tuple[list[int], int, int]] = {}  # node -> (seq, start, end): module doc
        self.num_nodes = 1
        self.version = 0  # bumped on removal: cached node ids may be stale
        # seq_id -> (tokens, active node ids)
        self._seqs: dict[object, tuple[list[int], deque]] = {}

    # ------------------------------------------------------------------ structure
    def _new_node(self, parent: int, token: int) -> int:
        if self._free:
            n = self._free.pop()
            self.children[n] = None
            self.count[n] = 0
            self.depth[n] = self.depth[parent] + 1
            self.parent[n] = parent
            self.token[n] = token
        else:
            n = len(self.count)
            self.children.append(None)
            self.count.append(0)
            self.depth.append(self.depth[parent] + 1)
            self.parent.append(parent)
            self.token.append(token)
        self.tail.pop(n, None)
        kids = self.children[parent]
        if kids is None:
            kids = self.children[parent] = {}
        kids[token] = n
        self.num_nodes += 1
        return n

    def _unfold(self, node: int) -> None:
        """Make the first token of ``node``'s tail a node (count 1); the rest becomes its tail."""
        seq, start, end = self.tail.pop(node)
        nxt = self._new_node(node, seq[start])
        self.count[nxt] = 1
        if end - start > 1:
            self.tail[nxt] = (seq, start + 1, end)

    def kids(self, node: int) -> dict[int, int] | None:
        """``node``'s children (token -> node), its tail unfolded first."""
        if node in self.tail:
            self._unfold(node)
        return self.children[node]

    def child(self, node: int, token: int) -> int:
        kids = self.kids(node)
        return -1 if kids is None else kids.get(token, -1)

    def substrings(self) -> dict[tuple[int, ...], int]:
        """Every root path (stored substring) with its count; unfolds every tail (tests)."""
        out, stack = {}, [(0, ())]
        while stack:
            node, path = stack.pop()
            for tok, c in (self.kids(node) or {}).items():
                out[path + (tok,)] = self.count[c]
                stack.append((c, path + (tok,)))
        return out

    # ------------------------------------------------------------------ sequences
    def has(self, seq_id) -> bool:
        return seq_id in self._seqs

    def sequence(self, seq_id) -> list[int]:
        return self._seqs[seq_id][0]

    def add_sequence(self, seq_id, tokens=(), final: bool = False) -> None:
        """Store a whole sequence: each suffix walked down from the root once, leaving a tail
        where it leaves the trie (module doc). The same counts as appending token by token, with
        the per-node work inlined: this runs at the end of every request, inside the engine step.
        ``final``: the sequence will not be extended, so its last suffixes get tails too."""
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id!r} is already stored")
        seq = [int(t) for t in tokens]
        n, max_depth = len(seq), self.max_depth
        children, count, tail = self.children, self.count, self.tail
        active = deque()
        for start in range(n):
            node, stop = 0, min(n, start + max_depth)
            # the last max_depth suffixes may still grow (append): their nodes are made in full
            growing = stop - start < max_depth and not final
            for i in range(start, stop):
                if node in tail:
                    self._unfold(node)
                kids = children[node]
                nxt = None if kids is None else kids.get(seq[i])
                if nxt is None:
                    nxt = self._new_node(node, seq[i])
                    if not growing and i + 1 < stop:
                        count[nxt] = 1
                        tail[nxt] = (seq, i + 1, stop)
                        break
                count[nxt] += 1
                node = nxt
            if growing:
                active.appendleft(node)  # still growing: appending more tokens extends it
        self._seqs[seq_id] = (seq, None if final else active)

    def extend(self, seq_id, tokens) -> None:
        for t in tokens:
            self.append(seq_id, int(t))

    def append(self, seq_id, token: int) -> None:
        """O(max_depth): extend every suffix that started in the last max_depth positions."""
        seq, active = self._seqs[seq_id]
        if active is None:
            raise ValueError(f"sequence {seq_id!r} was stored as final: it cannot be extended")
        seq.append(token)
        active.appendleft(0)  # the suffix starting at this token
        count, children, max_depth = self.count, self.children, self.max_depth
        for i in range(len(active)):
            node = active[i]
            kids = self.kids(node)
            nxt = -1 if kids is None else kids.get(token, -1)
            if nxt < 0:
                nxt = self._new_node(node, token)
            count[nxt] += 1
            active[i] = nxt
        if len(active) and self.depth[active[-1]] >= max_depth:
            active.pop()  # that suffix reached the depth bound

    def active_nodes(self, seq_id) -> deque:
        """Nodes of the suffixes of ``seq_id`` that end at its last token, shortest first."""
        return self._seqs[seq_id][1]

    def remove_sequence(self, seq_id) -> None:
        """Decrement every occurrence the sequence contributed; free nodes whose count hits 0."""
        seq, _ = self._seqs.pop(seq_id)
        count, children, tail = self.count, self.children, self.tail
        dead = []
        for start in range(len(seq)):
            node = 0
            for tok in seq[start : start + self.max_depth]:
                if node in tail:
                    # only the occurrence that left the tail passes below it (any other walk
                    # would have unfolded it): the rest of this suffix is that tail
                    del tail[node]
                    break
                node = children[node][tok]
                count[node] -= 1
                if count[node] == 0:
                    dead.append(node)
        # a zero-count node's whole subtree is zero too; free deepest first so parents go last
        for n in sorted(dead, key=lambda n: -self.depth[n]):
            del children[self.parent[n]][self.token[n]]
            self.parent[n] = -1
            self._free.append(n)
            self.num_nodes -= 1
        self.version += 1

    @property
    def num_sequences(self) -> int:
        return len(self._seqs)

    def approx_bytes(self) -> int:
        return (self.num_nodes * NODE_BYTES + len(self.tail) * TAIL_BYTES
                + 8 * sum(len(s) for s, _ in self._seqs.values()))

    # ------------------------------------------------------------------ matching
    def extend_match(self, match: list[int], token: int) -> list[int]:
        """``match`` (as returned by ``match``) after one more context token: the node of
        context[-(p+1):] is the child, by the new token, of the node of the old context[-p:]."""
        new = []
        first = self.child(0, token)
        if first >= 0:
            new.append(first)
            for node in match:
                if self.depth[node] >= self.max_depth:
                    break
                nxt = self.child(node, token)
                if nxt < 0:
                    break
                new.append(nxt)
        return new

    def match(self, context, max_len: int) -> list[int]:
        """Node ids of context[-p:] for p = 1..max_len while they exist (stops at the first miss:
        a longer suffix cannot match if a shorter one does not)."""
        out = []
        n = len(context)
        for p in range(1, min(max_len, n) + 1):
            node = 0
            for tok in context[n - p :]:
                node = self.child(node, int(tok))
                if node < 0:
                    return out
            out.append(node)
        return out
