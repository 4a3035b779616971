"""`specplug zoo build`: corpus -> tokenizer -> each model -> shipped folders, resumable.

Work files (token streams, checkpoints) go under ``<out>/work``, so an interrupted build picks
up where it stopped. At the end each model's checksums are compared with the shipped manifest:
identical with the same torch version and thread count; otherwise the held-out loss must agree
within ``LOSS_TOLERANCE`` (floating-point reductions differ across CPUs and thread counts).
"""

from __future__ import annotations

import math
import platform
from pathlib import Path

import numpy as np

from specplug.zoo import corpus, diffusion, recipes, shipped, tokenizer, train

LOSS_TOLERANCE = 0.03  # relative, for a rebuild on another CPU / torch / thread count


def _streams(work: Path, files):
    """(tokenizer folder, train stream, held-out stream, digest), cached by corpus digest."""
    digest = corpus.corpus_digest(files)
    tok_dir = work / "tokenizer"
    key = work / "tokenizer.digest"
    if not (key.is_file() and key.read_text() == digest and (work / "train.npy").is_file()):
        train_files, held_files = corpus.split(files)
        tok = tokenizer.train_tokenizer([f.text for f in train_files], recipes.VOCAB_SIZE)
        tok_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save_for_transformers(tok, tok_dir)
        np.save(work / "train.npy", tokenizer.encode_files(tok, [f.text for f in train_files]))
        np.save(work / "held_out.npy", tokenizer.encode_files(tok, [f.text for f in held_files]))
        key.write_text(digest)
    return tok_dir, np.load(work / "train.npy"), np.load(work / "held_out.npy"), digest


def build(out: Path, names=tuple(recipes.ALL), steps: int | None = None, threads: int = 2,
          corpus_root: Path | None = None, progress: bool = True, log=print) -> dict:
    """Train the named models into ``out/<name>``; returns {name: manifest}."""
    import torch

    torch.set_num_threads(threads)
    files = corpus.corpus_files(corpus_root)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    tok_dir, train_stream, held_stream, digest = _streams(work, files)
    n_held = sum(f.held_out for f in files)
    log(f"zoo: corpus {len(files)} files ({n_held} held out), digest {digest[:12]}; "
        f"{len(train_stream)} train / {len(held_stream)} held-out tokens")
    manifests = {}
    for name in names:
        recipe = recipes.ALL[name] if steps is None else recipes.scaled(recipes.ALL[name], steps)
        ckpt = work / f"{name}.ckpt"
        if name in recipes.DECODERS:
            model, seconds = train.train_decoder(recipe, train_stream, ckpt, progress=progress)
            export, load, loss_fn, what = shipped.export_decoder, shipped.load_for_eval, None, "next-token"
        else:
            torch.manual_seed(recipe.seed)
            model, seconds = train.train_model(diffusion.BlockDiffusionDrafter(recipe.diffusion_config()),
                                               diffusion.diffusion_loss, recipe, train_stream, ckpt, progress=progress)
            export, load, loss_fn, what = shipped.export_drafter, shipped.load_drafter, diffusion.diffusion_loss, "masked-token"
        info = dict(recipe=recipe.as_dict(), corpus_digest=digest, corpus_files=len(files), held_out_files=n_held,
                    train_tokens=int(len(train_stream)), held_out_tokens=int(len(held_stream)),
                    parameters=sum(p.numel() for p in model.parameters()), train_seconds=round(seconds, 1),
                    threads=threads, torch=torch.__version__, python=platform.python_version(),
                    cpu=platform.processor() or platform.machine())
        folder = out / name
        export(model, tok_dir, folder, info)
        loss = train.held_out_loss(load(folder), held_stream, recipe, loss_fn)  # the model as shipped
        info.update(held_out_loss=round(loss, 4), held_out_loss_kind=what,
                    held_out_perplexity=round(math.exp(loss), 2), uniform_perplexity=recipes.VOCAB_SIZE)
        manifests[name] = shipped.write_manifest(folder, info)
        log(f"zoo: {name}: {info['parameters'] / 1e6:.2f}M parameters, {recipe.steps} steps in "
            f"{seconds / 60:.1f} min, held-out {what} loss {loss:.3f} nats (perplexity {math.exp(loss):.1f}; "
            f"uniform {recipes.VOCAB_SIZE})")
    return manifests


def compare_with_shipped(name: str, manifest: dict) -> str:
    """How a rebuilt model relates to the shipped one (a line for the user)."""
    folder = shipped.SHIPPED_DIR / name
    if not (folder / shipped.MANIFEST).is_file():
        return f"{name}: nothing shipped to compare with"
    ref = shipped.read_manifest(folder)
    if ref["files"] == manifest["files"]:
        return f"{name}: identical to the shipped model (every sha256 matches)"
    if ref["recipe"] != manifest["recipe"] or ref["corpus_digest"] != manifest["corpus_digest"]:
        return f"{name}: different recipe or corpus from the shipped model: not comparable"
    rel = abs(manifest["held_out_loss"] - ref["held_out_loss"]) / ref["held_out_loss"]
    verdict = "within" if rel <= LOSS_TOLERANCE else "OUTSIDE"
    return (f"{name}: weights differ from the shipped ones (torch {manifest['torch']} vs {ref['torch']}, "
            f"{manifest['threads']} vs {ref['threads']} threads); held-out loss {manifest['held_out_loss']} vs "
            f"{ref['held_out_loss']} ({rel:.1%}, {verdict} the {LOSS_TOLERANCE:.0%} tolerance)")
