"""Where model-based proposers find their drafter, and the check that it fits the target.

A drafter is named in the config as a local folder, as a shipped reference model
(``zoo-draft``, ``zoo-dllm``: specplug/zoo), or as a drafter distilled for SmolLM2
(``smollm2-draft``, ``smollm2-dllm``: specplug/distill, its folder rebuilt from the shipped layers
on first use). Its token ids must mean what the target's mean, so before the first draft the
engine adapter hands the proposer the target's folder and vocabulary size
(``Proposer.bind_target``) and ``check_same_tokenizer`` refuses a mismatch, naming both.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from specplug.distill.shipped import DRAFTERS as DISTILLED

ZOO_ALIASES = {"zoo-draft": "draft", "zoo-dllm": "dllm", "zoo-target": "target"}


@dataclass(frozen=True)
class TargetInfo:
    """What a proposer may know about the target model: its folder (None when the engine serves
    something that is not a local folder) and the number of rows of its output layer."""

    model_path: str | None
    vocab_size: int


class DrafterError(ValueError):
    """A drafter that is missing or does not fit the target; the message names both."""


def resolve_drafter(name_or_path: str, key: str, dtype: str = "float32") -> Path:
    """The folder of a drafter named by a config key (a folder, a zoo alias or a distilled
    drafter, whose folder is built in ``dtype``)."""
    if str(name_or_path).lower() in DISTILLED:
        from specplug.distill.shipped import build_drafter

        return build_drafter(str(name_or_path).lower(), dtype)
    alias = ZOO_ALIASES.get(str(name_or_path).lower())
    if alias is not None:
        from specplug.zoo import zoo_model

        return zoo_model(alias)
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise DrafterError(f"{key}: drafter folder not found: {name_or_path!r} (a local folder, or one of "
                           f"{', '.join(sorted([*ZOO_ALIASES, *DISTILLED]))}; no model hub is contacted)")
    return folder


@lru_cache(maxsize=16)
def _vocab(folder: str) -> tuple[tuple[str, int], ...]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return tuple(sorted(tok.get_vocab().items()))


def check_same_tokenizer(drafter: Path, drafter_vocab_rows: int, target: TargetInfo, key: str) -> None:
    """Refuse a drafter whose tokenizer differs from the target's (compared token by token), or
    whose output layer has more rows than the target's (its ids would not exist there)."""
    if target.model_path is None or not Path(target.model_path).is_dir():
        raise DrafterError(f"{key}: cannot check the drafter {drafter} against the target {target.model_path!r}: "
                           "the target is not a local folder with a tokenizer")
    try:
        mine, theirs = _vocab(str(drafter)), _vocab(str(target.model_path))
    except (OSError, ValueError) as e:
        raise DrafterError(f"{key}: cannot read a tokenizer to compare the drafter {drafter} with the target "
                           f"{target.model_path}: {e}") from None
    if mine != theirs:
        diff = sorted(set(mine) ^ set(theirs))[:3]
        raise DrafterError(f"{key}: the drafter {drafter} and the target {target.model_path} have different "
                           f"tokenizers ({len(mine)} vs {len(theirs)} tokens; first differences: {diff}); "
                           "a drafter must share the target's tokenizer")
    if drafter_vocab_rows > target.vocab_size:
        raise DrafterError(f"{key}: the drafter {drafter} has {drafter_vocab_rows} vocabulary rows but the target "
                           f"{target.model_path} has {target.vocab_size}: its ids would not exist there")


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix: how much of a drafter's cache is still committed."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
