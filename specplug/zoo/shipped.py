"""The shipped model folders: export (fp16 weights, fp32 compute, sha256 manifest) and the
checked loader.

Weights are stored in fp16 to keep the repository small; config.json says float32, so vLLM and
transformers compute in fp32 on the exactly widened weights. The held-out loss in the manifest
is measured on those widened weights, i.e. on the model as shipped.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from specplug.models.smollm2 import sha256_file

SHIPPED_DIR = Path(__file__).parent / "weights"
NAMES = ("target", "draft", "dllm")
DRAFTER_CONFIG = "drafter_config.json"
MANIFEST = "specplug_zoo.json"


class ZooError(RuntimeError):
    """A shipped model is missing or does not match its manifest; the message says what to do."""


def export_decoder(model, tokenizer_dir: Path, out_dir: Path, info: dict) -> dict:
    """Write an HF folder vLLM serves: config (float32), fp16 safetensors, tokenizer files,
    and the manifest (``info`` + every file's sha256). Returns the manifest."""
    import copy

    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    half = copy.deepcopy(model).to(torch.float16)
    half.save_pretrained(out_dir, safe_serialization=True)
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("torch_dtype", None)
    cfg["dtype"] = "float32"  # compute dtype; the fp16 weights widen exactly
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return _finish(out_dir, tokenizer_dir, info)


def _finish(out_dir: Path, tokenizer_dir: Path, info: dict) -> dict:
    for f in sorted(Path(tokenizer_dir).iterdir()):
        (out_dir / f.name).write_bytes(f.read_bytes())
    return write_manifest(out_dir, info)


def write_manifest(out_dir: Path, info: dict) -> dict:
    """``info`` + the sha256 of every file in ``out_dir`` (the weights are not rewritten)."""
    files = {f.name: sha256_file(f) for f in sorted(out_dir.iterdir()) if f.name != MANIFEST}
    manifest = dict(info, files=files)
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def export_drafter(model, tokenizer_dir: Path, out_dir: Path, info: dict) -> dict:
    """The block-diffusion drafter: fp16 safetensors + drafter_config.json + tokenizer + manifest."""
    import torch
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()},
              out_dir / "model.safetensors")
    (out_dir / DRAFTER_CONFIG).write_text(json.dumps(model.config.as_dict(), indent=2, sort_keys=True) + "\n")
    return _finish(out_dir, tokenizer_dir, info)


def load_drafter(folder: Path):
    """The block-diffusion drafter as shipped (fp16 weights widened to fp32)."""
    import torch
    from safetensors.torch import load_file

    from specplug.zoo.diffusion import BlockDiffusionDrafter, DiffusionConfig

    model = BlockDiffusionDrafter(DiffusionConfig(**json.loads((folder / DRAFTER_CONFIG).read_text())))
    model.load_state_dict({k: v.to(torch.float32) for k, v in load_file(folder / "model.safetensors").items()})
    return model.eval()


def load_for_eval(folder: Path):
    """The model as shipped (fp16 weights widened to fp32), for held-out loss and samples."""
    import torch
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def check_folder(folder: Path) -> dict:
    """The manifest, after checking every listed file's sha256; ZooError names the first bad file."""
    if not (folder / MANIFEST).is_file():
        raise ZooError(f"{folder}: no {MANIFEST}: the model was not built; run `specplug zoo build`")
    manifest = read_manifest(folder)
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise ZooError(f"{path} is missing; reinstall specplug or run `specplug zoo build --install`")
        got = sha256_file(path)
        if got != digest:
            raise ZooError(f"{path}: sha256 {got[:12]}... does not match the manifest's {digest[:12]}...; "
                           "reinstall specplug or run `specplug zoo build --install`")
    return manifest


@lru_cache(maxsize=None)
def zoo_model(name: str) -> Path:
    """The checked folder of a shipped reference model ("target", "draft" or "dllm")."""
    if name not in NAMES:
        raise ZooError(f"unknown zoo model {name!r}; shipped: {', '.join(NAMES)}")
    folder = SHIPPED_DIR / name
    check_folder(folder)
    return folder
