"""The distilled SmolLM2 drafters as shipped (only their trained layers) and the full folders
rebuilt from them beside the target's frozen embedding and tokenizer (`specplug models get
smollm2-draft`). Idempotent: a folder whose manifest checks out is returned as it is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from specplug.models.smollm2 import ModelSetupError, build_smollm2, cache_root, manifest_ok, sha256_file

SHIPPED = Path(__file__).parent / "weights"
DLLM_DRAFTERS = ("smollm2-dllm",)  # block-diffusion drafters (specplug.distill.block_drafter)
DRAFTERS = ("smollm2-draft", *DLLM_DRAFTERS)


def shipped_dir(name: str) -> Path:
    folder = SHIPPED / name
    meta = folder / "specplug_distill.json"
    if not meta.is_file():
        raise ModelSetupError(f"{name}: no shipped weights at {folder} (train them: specplug models distill {name})")
    for fname, digest in json.loads(meta.read_text())["files"].items():
        if sha256_file(folder / fname) != digest:
            raise ModelSetupError(f"{name}: {folder / fname} does not match its sha256 in {meta.name}")
    return folder


def build_drafter(name: str = "smollm2-draft", dtype: str = "float32", force: bool = False) -> Path:
    """The drafter's full HF folder in ``dtype`` (the target built first if needed)."""
    if name not in DRAFTERS:
        raise ValueError(f"drafter: must be one of {DRAFTERS}, got {name!r}")
    if name in DLLM_DRAFTERS:
        dtype = "float32"  # the dllm proposer computes in fp32 whatever the target's dtype
    out = cache_root() / "models" / f"{name}-{dtype}"
    if not force and manifest_ok(out):
        return out
    src = shipped_dir(name)
    target = build_smollm2(dtype)
    print(f"[specplug] building {name} ({dtype}) from its shipped layers and {target.name}'s embedding ...", flush=True)
    (assemble_dllm_folder if name in DLLM_DRAFTERS else assemble_folder)(target, src, out, dtype, name)
    print(f"[specplug] {name} ready: {out}", flush=True)
    return out


def assemble_folder(target: Path, src: Path, out: Path, dtype: str, name: str) -> Path:
    """Write a transformers folder: ``target``'s config with the drafter's layer count, its
    embedding and tokenizer files, and the trained weights of ``src``/layers.safetensors."""
    import torch
    from safetensors.torch import load_file

    meta = json.loads((src / "specplug_distill.json").read_text())
    n = meta["num_hidden_layers"]
    cfg = json.loads((target / "config.json").read_text())
    if not cfg.get("tie_word_embeddings"):
        raise ModelSetupError(f"{name}: the target {target} does not tie its embedding and LM head")
    cfg["num_hidden_layers"] = n
    if cfg.get("layer_types"):
        cfg["layer_types"] = cfg["layer_types"][:n]
    cfg["_name_or_path"] = name
    cast = getattr(torch, dtype)
    weights = {k: v.to(cast) for k, v in load_file(src / "layers.safetensors").items()}
    weights["model.embed_tokens.weight"] = load_file(target / "model.safetensors")["model.embed_tokens.weight"].to(cast)
    return _write_folder(target, src, out, dtype, weights, {"config.json": cfg})


def assemble_dllm_folder(target: Path, src: Path, out: Path, dtype: str, name: str) -> Path:
    """Write a block-diffusion drafter folder (what specplug.zoo.shipped.load_drafter reads):
    drafter_config.json, the shipped layers beside ``target``'s embedding, the target's tokenizer."""
    import torch
    from safetensors.torch import load_file

    from specplug.zoo.shipped import DRAFTER_CONFIG

    meta = json.loads((src / "specplug_distill.json").read_text())
    weights = {k: v.to(torch.float32) for k, v in load_file(src / "layers.safetensors").items()}
    weights["embed.weight"] = load_file(target / "model.safetensors")["model.embed_tokens.weight"].to(torch.float32)
    return _write_folder(target, src, out, dtype, weights, {DRAFTER_CONFIG: meta["drafter_config"]})


def _write_folder(target: Path, src: Path, out: Path, dtype: str, weights: dict, configs: dict) -> Path:
    """``weights`` and the ``configs`` (file name -> dict) in a fresh folder beside the target's
    tokenizer files, with a manifest; replaces ``out`` only once complete."""
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
    for fname, cfg in configs.items():
        (tmp / fname).write_text(json.dumps(cfg, indent=2) + "\n")
    for f in target.iterdir():  # tokenizer, chat template, generation config: the target's own
        if f.is_file() and f.name not in ("config.json", "model.safetensors") and not f.name.startswith("specplug_"):
            shutil.copy2(f, tmp / f.name)
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / "specplug_manifest.json").write_text(json.dumps(
        {"source": str(src.name), "target": target.name, "dtype": dtype, "files": files}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def shipped_skip_set(model: str) -> dict | None:
    """The SWIFT skip set searched offline for ``model`` (specplug.distill.swift_search), as
    {"attention": [...], "mlp": [...]}, or None if none is shipped."""
    path = SHIPPED / f"{model}-swift.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return {"attention": data["attention"], "mlp": data["mlp"]}
