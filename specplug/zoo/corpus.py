"""The training corpus: this interpreter's standard library sources, with a fixed held-out split.

License-clean (the PSF license allows it), on every machine with Python, and code: where
SuffixDecoding and Token Recycling shine. Test packages are left out (huge generated literals,
deliberately odd code). The split is by file, decided by a hash of the file's relative path,
so it does not depend on the order files are listed in or on which other files exist.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

HELD_OUT_EVERY = 20  # about 5% of files are held out
_SKIP_DIRS = {"site-packages", "idle_test", "lib2to3", "__pycache__"}


@dataclass(frozen=True)
class CorpusFile:
    relpath: str
    text: str

    @property
    def held_out(self) -> bool:
        return int(hashlib.sha256(self.relpath.encode()).hexdigest(), 16) % HELD_OUT_EVERY == 0


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _skipped(rel: Path) -> bool:
    return any(part in _SKIP_DIRS or part.startswith("test") for part in rel.parts[:-1])


def corpus_files(root: Path | None = None) -> list[CorpusFile]:
    """Every kept ``.py`` file under ``root`` (default: the stdlib), sorted by relative path."""
    root = root or stdlib_root()
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if _skipped(rel):
            continue
        out.append(CorpusFile(rel.as_posix(), p.read_text(encoding="utf-8", errors="replace")))
    return out


def split(files: list[CorpusFile]) -> tuple[list[CorpusFile], list[CorpusFile]]:
    """(train, held_out)."""
    return [f for f in files if not f.held_out], [f for f in files if f.held_out]


def corpus_digest(files: list[CorpusFile]) -> str:
    """sha256 over paths and contents: the models are reproducible only from the same corpus."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.relpath.encode() + b"\0" + f.text.encode("utf-8", "replace") + b"\0")
    return h.hexdigest()
