"""The Proposer protocol: what every method implements, engine-agnostic.

Engines call, per request: ``start`` when it arrives, ``propose`` once per decode step for the
batch, ``observe`` after verification with the tokens that were committed, ``stop`` when it
finishes or is aborted. Proposers never import an engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from specplug.tree import DraftTree


class ProposerOptions(BaseModel):
    """Base for each method's options: unknown keys are errors that name the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class ReqState:
    """What a proposer may read about one request at draft time.

    token_ids: prompt + output so far; the last entry is the root of the next draft tree.
    """

    req_id: str
    token_ids: np.ndarray
    num_prompt_tokens: int
    tenant: str | None = None


@dataclass
class Budget:
    """How much a proposer may draft for one request this step.

    max_nodes: node cap (chain length when ``tree`` is False). 0 means draft nothing.
    tree: whether the engine will verify a tree; if False only the best path is used, so a
          proposer may return a chain directly.
    temperature: > 0 when the engine verifies this request's tree by sampling with plain
          temperature and accepts stochastic trees (recursive rejection against their
          ``draft_probs``); a proposer that samples its drafts may then sample at it. 0: greedy,
          or the engine verifies deterministic drafts only.
    """

    max_nodes: int
    tree: bool = True
    temperature: float = 0.0


@dataclass
class VerifyInfo:
    """Verification outcome fed back to learning proposers (Token Recycling).

    tree: the verified tree; accepted_nodes: its accepted node indices in path order;
    topk_tokens: int32[n+1, k] the target's top-k at the root (row 0) and each node, or None
    where the engine cannot provide it.
    """

    tree: DraftTree
    accepted_nodes: list[int] = field(default_factory=list)
    topk_tokens: np.ndarray | None = None
    root_token: int | None = None


class TargetKV(Protocol):
    """The target's keys and values of committed tokens, as an engine adapter exposes them
    (specplug/engines/vllm/target_kv.py). Reading never changes the engine's cache."""

    num_layers: int
    dtype: object  # the cache's torch dtype

    def read(self, req_id: str, start: int, end: int) -> list[tuple[object, object]] | None:
        """Per layer (k, v), each a float32 tensor [kv_heads, end - start, head_dim] (keys after
        RoPE) of positions start..end-1 of ``req_id``; None when the engine cannot say."""


class Proposer(ABC):
    """Base class: one subclass per method, registered by name in ``specplug.proposers``."""

    name: ClassVar[str]
    Options: ClassVar[type[ProposerOptions]]
    # Whether this proposer learns from target top-k (VerifyInfo.topk_tokens).
    needs_topk: ClassVar[bool] = False

    def __init__(self, options: ProposerOptions, num_speculative_tokens: int):
        self.options = options
        self.num_speculative_tokens = num_speculative_tokens

    def bind_target(self, target) -> None:
        """The engine adapter names the target model (``specplug.proposers.drafters.TargetInfo``)
        before the first request; proposers with a drafter refuse one that does not fit it."""

    # Whether this proposer drafts against the target's own keys and values (bind_target_kv)
    # with the target's own weights (bind_target_model).
    reads_target_kv: ClassVar[bool] = False
    uses_target_model: ClassVar[bool] = False

    def bind_target_model(self, decoder) -> None:
        """For ``uses_target_model`` proposers: the served model, wrapped by the engine adapter
        as a ``specplug.proposers.layer_skip_lm.SkipDecoder``."""

    def bind_target_kv(self, reader: "TargetKV") -> None:
        """For ``reads_target_kv`` proposers: the engine adapter's read-only view of the target's
        KV cache, so the proposer need not recompute the committed tokens' keys and values."""

    def start(self, req_id: str, prompt_ids, tenant: str | None = None) -> None:
        """A request arrives (or a req_id is reused: forget its previous state first)."""

    @abstractmethod
    def propose(self, batch: list[ReqState], budget: list[Budget]) -> list[DraftTree]:
        """One draft tree per request (possibly empty), each within its budget."""

    def observe(self, req_id: str, accepted_ids: list[int], info: VerifyInfo | None = None) -> None:
        """Tokens committed for ``req_id`` this step (accepted drafts + the bonus token)."""

    def stop(self, req_id: str) -> None:
        """The request finished or was aborted."""
